import { promises as dns } from 'node:dns';
import { EgressError } from '../errors.js';

/**
 * Name resolution with static overrides. Answers are canonical IP strings;
 * the caller checks every one and dials only those, never the name.
 * With `servers` set, queries go to those servers only (c-ares, off Node's
 * thread pool); otherwise the system resolver (getaddrinfo) answers.
 */

export interface ResolverOptions {
  /** Canonical name → canonical addresses, consulted before DNS. */
  hosts: ReadonlyMap<string, readonly string[]>;
  servers: readonly string[];
  timeoutMs: number;
}

export class Resolver {
  private readonly hosts: ReadonlyMap<string, readonly string[]>;
  private readonly dns: dns.Resolver | null;
  private readonly timeoutMs: number;

  constructor(opts: ResolverOptions) {
    this.hosts = opts.hosts;
    this.timeoutMs = opts.timeoutMs;
    if (opts.servers.length) {
      // Two tries share the budget; c-ares doubles the timeout on each retry.
      this.dns = new dns.Resolver({ timeout: Math.max(1, Math.floor(opts.timeoutMs / 3)), tries: 2 });
      this.dns.setServers([...opts.servers]);
    } else {
      this.dns = null;
    }
  }

  /** Addresses for a canonical name (IPv4 first); throws EgressError('dns_failed'). */
  async resolve(name: string): Promise<string[]> {
    const fixed = this.hosts.get(name);
    if (fixed) return [...fixed];
    let addresses: string[];
    try {
      addresses = await withTimeout(this.dns ? this.query(this.dns, name) : this.system(name), this.timeoutMs, name);
    } catch (err) {
      if (err instanceof EgressError) throw err;
      throw new EgressError('dns_failed', `cannot resolve ${name}: ${(err as NodeJS.ErrnoException).code ?? err}`, {
        cause: err,
      });
    }
    if (addresses.length === 0) throw new EgressError('dns_failed', `no addresses for ${name}`);
    return addresses;
  }

  private async query(r: dns.Resolver, name: string): Promise<string[]> {
    const [a, aaaa] = await Promise.allSettled([r.resolve4(name), r.resolve6(name)]);
    if (a.status === 'rejected' && aaaa.status === 'rejected') throw a.reason;
    return [...(a.status === 'fulfilled' ? a.value : []), ...(aaaa.status === 'fulfilled' ? aaaa.value : [])];
  }

  private async system(name: string): Promise<string[]> {
    const answers = await dns.lookup(name, { all: true, order: 'ipv4first' });
    return answers.map((a) => a.address);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, name: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new EgressError('dns_failed', `DNS timeout for ${name} after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
