import type { Config } from '../config/schema.js';
import { bigIntToV6, CidrSet, numberToV4, v4ToNumber, v6ToBigInt, type Cidr } from '../net/ip.js';
import type { PasswordHash } from './password.js';

/**
 * Who may use the gateway, compiled once per configuration load: the source
 * ranges each listener admits at accept, the users allowed from a source,
 * and the proxy users with their hashes. Listeners ask; nothing here reads
 * a socket.
 */

export interface ProxyUser {
  name: string;
  hash: PasswordHash;
  /** The policy rules this user may use; null: all. */
  rules: readonly string[] | null;
}

/** Users allowed from one source: every configured user, some, or none. */
export type UsersFrom = 'any' | ReadonlySet<string> | null;

/**
 * A socket's remote address as the allow-lists judge it: canonical text, an
 * IPv4-mapped IPv6 address (a dual-stack listener's IPv4 client) as its IPv4
 * address, without a zone. Null when it is not an address at all.
 */
export function sourceIp(address: string | undefined): string | null {
  if (!address) return null;
  if (v4ToNumber(address) !== null) return address;
  const n = v6ToBigInt(address.split('%', 1)[0]!);
  if (n === null) return null;
  if (n >> 32n === 0xffffn) return numberToV4(Number(n & 0xffffffffn));
  return bigIntToV6(n);
}

interface Entry {
  set: CidrSet;
  users: ReadonlySet<string>;
}

export class ClientAccess {
  /** Entries that name no users: any client (and any user) from these. */
  private readonly open: CidrSet;
  /** Entries that name users: only those users from these. */
  private readonly restricted: readonly Entry[];
  private readonly forwards = new Map<string, CidrSet>();
  readonly users: ReadonlyMap<string, ProxyUser>;

  constructor(config: Pick<Config, 'clients' | 'listen'>) {
    const { allow, users } = config.clients;
    this.open = new CidrSet(allow.filter((e) => !e.users).map((e) => e.cidr));
    this.restricted = allow.filter((e) => e.users).map((e) => ({ set: new CidrSet([e.cidr]), users: new Set(e.users) }));
    this.users = new Map(users.map((u) => [u.name, { name: u.name, hash: u.password_hash, rules: u.rules ?? null }]));
    for (const f of config.listen.forwards) if (f.clients) this.forwards.set(f.name, new CidrSet(f.clients));
  }

  /** Whether proxy requests must authenticate (users are configured). */
  get authRequired(): boolean {
    return this.users.size > 0;
  }

  /**
   * Whether a connection from `address` may be served at all. A forward
   * listener uses its own list, or else the entries that need no user (it
   * carries no credentials); HTTP and SOCKS admit every listed range.
   */
  admits(address: string | undefined, forward?: string): boolean {
    const ip = sourceIp(address);
    if (ip === null) return false;
    if (forward !== undefined) return (this.forwards.get(forward) ?? this.open).has(ip);
    return this.open.has(ip) || this.restricted.some((e) => e.set.has(ip));
  }

  /** The users that may authenticate from `address`. */
  usersFrom(address: string | undefined): UsersFrom {
    const ip = sourceIp(address);
    if (ip === null) return null;
    if (this.open.has(ip)) return 'any';
    let names: Set<string> | null = null;
    for (const e of this.restricted) {
      if (!e.set.has(ip)) continue;
      names ??= new Set();
      for (const n of e.users) names.add(n);
    }
    return names;
  }
}

/** True for a CIDR that holds every address of its family (`0.0.0.0/0`, `::/0`). */
function everything(c: Cidr): boolean {
  return c.start === 0n && c.end === (c.family === 4 ? 0xffffffffn : (1n << 128n) - 1n);
}

const isLoopback = (host: string) => host === '::1' || host.startsWith('127.');

/**
 * `config check` and start-up warnings: a listener on a non-loopback address
 * that serves every source without credentials is an open relay to every
 * allowed destination.
 */
export function clientWarnings(config: Pick<Config, 'clients' | 'listen'>): { path: (string | number)[]; message: string }[] {
  const out: { path: (string | number)[]; message: string }[] = [];
  const openAll = config.clients.allow.filter((e) => !e.users && everything(e.cidr)).map((e) => e.cidr.text);
  const noAuth = config.clients.users.length === 0;
  const { proxy, socks, forwards } = config.listen;
  const listeners: { name: string; path: (string | number)[]; host: string; text: string; open: string[] }[] = [];
  if (proxy && noAuth) listeners.push({ name: 'proxy', path: ['listen', 'proxy'], ...proxy, open: openAll });
  if (socks && noAuth) listeners.push({ name: 'socks', path: ['listen', 'socks'], ...socks, open: openAll });
  forwards.forEach((f, i) =>
    listeners.push({ name: f.name, path: ['listen', 'forwards', i, 'listen'], ...f.listen, open: f.clients ? f.clients.filter(everything).map((c) => c.text) : openAll }),
  );
  for (const l of listeners) {
    if (l.open.length === 0 || isLoopback(l.host)) continue;
    out.push({
      path: l.path,
      message: `listener "${l.name}" on ${l.text} serves any source (${l.open.join(', ')}) without credentials: an open relay to every allowed destination`,
    });
  }
  return out;
}
