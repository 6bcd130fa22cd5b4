import { networkInterfaces } from 'node:os';
import { classify } from './classify.js';
import { canonicalIp } from './ip.js';

/**
 * The proxy's own listening sockets, so that a destination that would loop
 * back into the proxy is refused (`loop`) whatever `allow_ranges` says.
 * A wildcard listener (0.0.0.0 or ::) covers every local address on its port.
 */
export class SelfAddresses {
  private readonly exact = new Set<string>();
  private readonly wildcardPorts = new Set<number>();
  private readonly ports = new Set<number>();
  private local: Set<string> | null = null;
  private localAt = 0;

  add(address: string, port: number): void {
    const ip = canonicalIp(address)?.ip ?? address;
    this.ports.add(port);
    if (ip === '0.0.0.0' || ip === '::') this.wildcardPorts.add(port);
    else this.exact.add(`${classify(ip).dial}|${port}`);
  }

  clear(): void {
    this.exact.clear();
    this.wildcardPorts.clear();
    this.ports.clear();
  }

  /** Does dialling `ip:port` (a checked dial address) reach one of our listeners? */
  has(ip: string, port: number): boolean {
    if (!this.ports.has(port)) return false;
    if (this.exact.has(`${ip}|${port}`)) return true;
    // Connecting to 0.0.0.0 or :: reaches the local host, and so any listener.
    if (classify(ip).range === 'unspecified') return true;
    return this.wildcardPorts.has(port) && this.isLocal(ip);
  }

  private isLocal(ip: string): boolean {
    const c = classify(ip);
    if (c.range === 'loopback' || c.range === 'unspecified') return true;
    // Interface addresses change rarely; re-read them at most once a second.
    const now = Date.now();
    if (!this.local || now - this.localAt > 1000) {
      this.local = new Set();
      for (const list of Object.values(networkInterfaces())) {
        for (const a of list ?? []) this.local.add(canonicalIp(a.address.split('%')[0]!)?.ip ?? a.address);
      }
      this.localAt = now;
    }
    return this.local.has(ip);
  }
}
