import { promises as dns } from 'node:dns';
import { EgressError } from '../errors.js';
import { dnsChannel } from '../events.js';

/**
 * Name resolution with static overrides. Answers are canonical IP strings;
 * the caller checks every one and dials only those, never the name.
 * With `servers` set, queries go to those servers only (c-ares, off Node's
 * thread pool) and answers are cached for their TTL (bounded in time and
 * entries; TTL 0 is never cached); otherwise the system resolver
 * (getaddrinfo) answers, uncached. Concurrent lookups of one name share a query.
 * A and AAAA are asked together; once one has answered, the other gets a
 * short resolution delay (RFC 8305 §3) and, if still silent, the answer
 * that arrived is used alone instead of waiting out the timeout.
 */

const MAX_CACHED = 10_000;
const MAX_TTL_S = 300;
/** RFC 8305 §3's recommended resolution delay. */
export const RESOLUTION_DELAY_MS = 50;

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
  private readonly cache = new Map<string, { addresses: string[]; expires: number }>();
  private readonly pending = new Map<string, Promise<string[]>>();

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

  /** Addresses known without a query (static hosts, or a live cache entry); never to be modified. */
  known(name: string): readonly string[] | undefined {
    const fixed = this.hosts.get(name);
    if (fixed) return fixed;
    const hit = this.cache.get(name);
    return hit && hit.expires > Date.now() ? hit.addresses : undefined;
  }

  /** When the cached answer for `name` expires (ms since the epoch), if there is one. */
  expiresAt(name: string): number | undefined {
    return this.cache.get(name)?.expires;
  }

  /** Addresses for a canonical name (IPv4 first); throws EgressError('dns_failed'). */
  async resolve(name: string): Promise<readonly string[]> {
    const known = this.known(name);
    if (known) return known;
    let query = this.pending.get(name);
    if (!query) {
      query = withTimeout(this.dns ? this.query(this.dns, name) : this.system(name), this.timeoutMs, name);
      this.pending.set(name, query);
      if (dnsChannel.hasSubscribers) timeQuery(query);
      void query.finally(() => this.pending.delete(name)).catch(() => {});
    }
    let addresses: readonly string[];
    try {
      addresses = await query;
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
    const a = settle(r.resolve4(name, { ttl: true }));
    const aaaa = settle(r.resolve6(name, { ttl: true }));
    const both = Promise.all([a.done, aaaa.done]);
    // The first answer with addresses, or both failed...
    await Promise.race([both, a.answered, aaaa.answered]);
    // ...then the other gets the resolution delay.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([both, new Promise((r) => (timer = setTimeout(r, RESOLUTION_DELAY_MS)))]);
    clearTimeout(timer);
    if (!a.value && !aaaa.value) throw a.error ?? aaaa.error;
    const answers = [...(a.value ?? []), ...(aaaa.value ?? [])];
    const addresses = answers.map((x) => x.address);
    const ttl = Math.min(MAX_TTL_S, ...answers.map((x) => x.ttl));
    if (answers.length && ttl > 0) {
      this.cache.delete(name);
      if (this.cache.size >= MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(name, { addresses, expires: Date.now() + ttl * 1000 });
    }
    return addresses;
  }

  private async system(name: string): Promise<string[]> {
    const answers = await dns.lookup(name, { all: true, order: 'ipv4first' });
    return answers.map((a) => a.address);
  }
}

/** Publish a real query's duration and outcome (not static or cached answers, not waiters on a shared query). */
function timeQuery(query: Promise<unknown>): void {
  const t0 = performance.now();
  const done = (ok: boolean) => dnsChannel.publish({ ms: performance.now() - t0, ok });
  query.then(
    () => done(true),
    () => done(false),
  );
}

interface Settling<T> {
  value?: T;
  error?: unknown;
  /** Settles when the query does, either way. */
  done: Promise<void>;
  /** Resolves only when the query answers with at least one record. */
  answered: Promise<void>;
}

function settle<T extends unknown[]>(p: Promise<T>): Settling<T> {
  const s = {} as Settling<T>;
  let answered!: () => void;
  s.answered = new Promise<void>((r) => (answered = r));
  s.done = p.then(
    (v) => {
      s.value = v;
      if (v.length) answered();
    },
    (err: unknown) => {
      s.error = err;
    },
  );
  return s;
}

function withTimeout<T>(p: Promise<T>, ms: number, name: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new EgressError('dns_failed', `DNS timeout for ${name} after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
