import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { classify } from './classify.js';
import { bigIntToV6, canonicalIp } from './ip.js';

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
      this.local = localAddresses();
      this.localAt = now;
    }
    return this.local.has(ip);
  }
}

/**
 * Every address this host (its network namespace) accepts connections on.
 * libuv's list leaves out interfaces not both UP and RUNNING, and a link
 * just brought up is RUNNING only after the kernel's link watch (up to a
 * second later), or never while its carrier is down, although its
 * addresses already accept local connections: on Linux the kernel's own
 * tables are read as well (the IPv4 local routes, the IPv6 address list).
 */
export function localAddresses(): Set<string> {
  const local = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) local.add(canonicalIp(a.address.split('%')[0]!)?.ip ?? a.address);
  }
  if (process.platform !== 'linux') return local;
  // "|-- 10.0.0.1" followed by "/32 host LOCAL": a local IPv4 address.
  let last: string | undefined;
  for (const line of readProc('/proc/net/fib_trie')) {
    const node = /\|-- (\S+)/.exec(line);
    if (node) last = node[1];
    else if (last && /\/32 host LOCAL/.test(line)) local.add(last);
  }
  // 32 hex digits, then index, prefix length, scope, flags, name.
  for (const line of readProc('/proc/net/if_inet6')) {
    const hex = /^([0-9a-f]{32})\s/.exec(line)?.[1];
    if (hex) local.add(bigIntToV6(BigInt(`0x${hex}`)));
  }
  return local;
}

function readProc(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').split('\n');
  } catch {
    return [];
  }
}
