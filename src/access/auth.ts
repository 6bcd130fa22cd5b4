import { createHmac, randomBytes } from 'node:crypto';
import { bigIntToV6, v6ToBigInt } from '../net/ip.js';
import { sourceIp, type ClientAccess } from './clients.js';
import { hashPassword, parsePasswordHash, verifyPassword, type PasswordHash } from './password.js';

/**
 * Proxy users' credentials checked against their scrypt hashes. A verified
 * credential is remembered (keyed by an HMAC under a per-process secret, so
 * no password is kept), so a keep-alive client pays scrypt once, not per
 * request. Attempts that need scrypt run one at a time per source, and a
 * source that keeps failing waits longer before each answer: a client cannot
 * guess passwords at line rate, and many connections at once buy it nothing.
 */

export interface AuthFailure {
  ok: false;
  reason: 'auth_required' | 'auth_failed';
  detail: string;
  /** The name tried, when it is a configured user (an unknown name is not echoed: it may be a password). */
  user?: string;
}

export type AuthOutcome = { ok: true; user: string } | AuthFailure;

/** Verified credentials remembered. */
const CACHE_SIZE = 1024;
/** Sources whose failures are remembered; the oldest is forgotten past this. */
const MAX_SOURCES = 4096;
/** Attempts one source may have waiting for their turn. */
const MAX_WAITING = 256;
/** A source's failures are forgotten after this long without one. */
const FORGET_MS = 15 * 60_000;
/** Failures answered at once: a mistyped password costs nothing. */
const FREE_FAILURES = 3;
const MAX_DELAY_MS = 5000;

/** The wait before answering a source's `failures`th failure: 0, then 100 ms doubling up to 5 s. */
export function failureDelay(failures: number): number {
  return failures <= FREE_FAILURES ? 0 : Math.min(MAX_DELAY_MS, 100 * 2 ** (failures - FREE_FAILURES - 1));
}

interface SourceState {
  failures: number;
  last: number;
  waiting: number;
  /** The end of the last attempt in line. */
  tail: Promise<unknown>;
}

/** Credentials from a `Proxy-Authorization: Basic` value; null when malformed. */
export function parseBasic(header: string): { user: string; password: string } | null {
  const m = /^basic[ \t]+([A-Za-z0-9+/=_-]+)[ \t]*$/i.exec(header);
  if (!m) return null;
  const text = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  return colon < 0 ? null : { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

export class Authenticator {
  private readonly secret = randomBytes(32);
  private readonly cache = new Map<string, { user: string; hash: string }>();
  private readonly sources = new Map<string, SourceState>();
  /** scrypt verifications run (a cached credential needs none): for metrics and tests. */
  verifications = 0;
  /** Checked for unknown names, so they take as long as a wrong password. */
  private dummy: Promise<PasswordHash> | undefined;

  /** Check a `Proxy-Authorization` header value (undefined: none sent). */
  basic(access: ClientAccess, source: string | undefined, header: string | undefined): Promise<AuthOutcome> {
    if (header === undefined) return Promise.resolve({ ok: false, reason: 'auth_required', detail: 'Proxy-Authorization: Basic is required' });
    const c = parseBasic(header);
    if (!c) return this.check(access, source, '', null);
    return this.check(access, source, c.user, c.password);
  }

  /** Check a user name and password (`password` null: the credentials were malformed). */
  async check(access: ClientAccess, source: string | undefined, name: string, password: string | null): Promise<AuthOutcome> {
    const user = access.users.get(name);
    const from = access.usersFrom(source);
    // A user an allow entry does not list for this source fails like a wrong password (no scrypt spent).
    const permitted = user !== undefined && (from === 'any' || from?.has(user.name) === true);
    const key = password === null ? '' : this.key(name, password);
    if (permitted && password !== null && this.cached(key, user.hash.text)) return { ok: true, user: user.name };

    const state = this.state(sourceKey(source));
    if (state.waiting >= MAX_WAITING) return this.failed(state, user?.name, 'too many authentications waiting from this source');
    state.waiting++;
    const turn = state.tail.then(async (): Promise<AuthOutcome> => {
      // An attempt ahead in line may have verified the same credential.
      if (permitted && password !== null && this.cached(key, user.hash.text)) return { ok: true, user: user.name };
      if (password === null) return this.failed(state, undefined, 'malformed Basic credentials');
      if (!user) {
        this.verifications++;
        await verifyPassword(password, await this.dummyHash());
        return this.failed(state, undefined, 'unknown user or wrong password');
      }
      if (!permitted) return this.failed(state, user.name, `user "${user.name}" may not connect from this address (clients.allow)`);
      this.verifications++;
      if (!(await verifyPassword(password, user.hash))) return this.failed(state, user.name, 'unknown user or wrong password');
      this.remember(key, user.name, user.hash.text);
      return { ok: true, user: user.name };
    });
    state.tail = turn.catch(() => undefined);
    try {
      return await turn;
    } finally {
      state.waiting--;
    }
  }

  /** Failures counted against a source (an IPv6 source by its /64). */
  failures(source: string | undefined): number {
    return this.sources.get(sourceKey(source))?.failures ?? 0;
  }

  /** Count a failure and answer it after the source's delay. */
  private async failed(state: SourceState, user: string | undefined, detail: string): Promise<AuthOutcome> {
    state.failures++;
    state.last = Date.now();
    const ms = failureDelay(state.failures);
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
    return user === undefined ? { ok: false, reason: 'auth_failed', detail } : { ok: false, reason: 'auth_failed', detail, user };
  }

  private state(key: string): SourceState {
    let s = this.sources.get(key);
    if (s && s.waiting === 0 && Date.now() - s.last > FORGET_MS) s.failures = 0;
    if (!s) {
      if (this.sources.size >= MAX_SOURCES) {
        // Forget the oldest source that has nothing in line.
        for (const [k, v] of this.sources) {
          if (v.waiting === 0) {
            this.sources.delete(k);
            break;
          }
        }
      }
      s = { failures: 0, last: 0, waiting: 0, tail: Promise.resolve() };
    } else {
      this.sources.delete(key); // re-inserted last: the map's order is least recently used first
    }
    this.sources.set(key, s);
    return s;
  }

  private key(name: string, password: string): string {
    return createHmac('sha256', this.secret).update(name).update('\0').update(password).digest('base64');
  }

  private cached(key: string, hash: string): boolean {
    const hit = this.cache.get(key);
    // A reload that changed the user's hash leaves the old entry unmatched.
    if (!hit || hit.hash !== hash) return false;
    this.cache.delete(key);
    this.cache.set(key, hit);
    return true;
  }

  private remember(key: string, user: string, hash: string): void {
    if (this.cache.size >= CACHE_SIZE) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(key, { user, hash });
  }

  private dummyHash(): Promise<PasswordHash> {
    this.dummy ??= hashPassword(randomBytes(16).toString('hex')).then(parsePasswordHash);
    return this.dummy;
  }
}

/** Failures are counted per address, an IPv6 source per /64 (one host often holds a whole /64). */
function sourceKey(address: string | undefined): string {
  const ip = sourceIp(address);
  if (ip === null) return 'unknown';
  const n = ip.includes(':') ? v6ToBigInt(ip) : null;
  return n === null ? ip : `${bigIntToV6((n >> 64n) << 64n)}/64`;
}
