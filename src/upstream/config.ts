import { z } from 'zod';
import { normalizeHost } from '../policy/hostport.js';
import { pattern, port } from '../config/fields.js';
import { HostMatcher } from '../policy/patterns.js';

/**
 * `upstreams:`, `routes:` and `default_route:`. Parent URLs carry their
 * credentials; every message about one names it by its redacted form, so a
 * password never reaches an error, a log line or a record.
 */

export type UpstreamKind = 'http' | 'socks5' | 'socks5h';

export interface Upstream {
  name: string;
  kind: UpstreamKind;
  /** Canonical name or IP (IPv6 without brackets). */
  host: string;
  /** Set when `host` is an IP literal (no lookup needed). */
  family?: 4 | 6;
  port: number;
  username?: string;
  password?: string;
  /** Per-upstream budget for the TCP connect and the parent's handshake; the gateway's `timeouts.connect` when unset. */
  connectTimeoutMs?: number;
  /** The URL with any password replaced: the only form messages may show. */
  display: string;
}

/** `via:` entry that dials the checked address itself. */
export const DIRECT = 'direct';

const SCHEMES: Record<string, UpstreamKind> = { 'http:': 'http', 'socks5:': 'socks5', 'socks5h:': 'socks5h' };

/** Parse an upstream URL; the Error's message never contains the password. */
export function parseUpstreamUrl(name: string, text: string): Upstream {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // The text is not shown: what is there may be a password.
    throw new Error('not a URL: expected scheme://[user:password@]host:port');
  }
  // WHATWG URLs drop a scheme's default port (http's 80): an explicit :80 is still a port.
  const port = url.port ? Number(url.port) : url.protocol === 'http:' && /:80\/?$/.test(text) ? 80 : 0;
  const display = `${url.protocol}//${url.username ? `${url.username}${url.password ? ':***' : ''}@` : ''}${url.hostname}${port ? `:${port}` : ''}`;
  const kind = SCHEMES[url.protocol];
  if (!kind) throw new Error(`${display}: the scheme must be http://, socks5:// or socks5h://`);
  if (!url.hostname) throw new Error(`${display}: no host`);
  if (!port) throw new Error(`${display}: the port is required (e.g. :3128 or :1080)`);
  if ((url.pathname !== '' && url.pathname !== '/') || url.search || url.hash) throw new Error(`${display}: a parent URL has no path, query or fragment`);
  let host: string;
  let family: 4 | 6 | undefined;
  try {
    ({ host, family } = normalizeHost(url.hostname));
  } catch (err) {
    throw new Error(`${display}: ${(err as Error).message}`);
  }
  const decode = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      throw new Error(`${display}: bad percent-encoding in the credentials`);
    }
  };
  const username = url.username ? decode(url.username) : undefined;
  const password = url.password ? decode(url.password) : undefined;
  if (password !== undefined && username === undefined) throw new Error(`${display}: a password needs a user name`);
  const long = (v?: string) => Buffer.byteLength(v ?? '') > 255;
  if (kind !== 'http' && (long(username) || long(password))) throw new Error(`${display}: SOCKS5 user names and passwords are at most 255 bytes (RFC 1929)`);
  return { name, kind, host, family, port, username, password, display };
}

/** `upstreams:`; `duration` is the config's duration parser (schema.ts), so units read alike everywhere. */
export const upstreamsSchema = (duration: z.ZodType<number, unknown>) => {
  const upstream = z.strictObject({
    url: z.string({ error: 'expected the parent URL, e.g. "http://user:pass@parent:3128" or "socks5h://parent:1080"' }),
    connect_timeout: duration.optional(),
  });
  return z.record(z.string(), upstream).transform((rec, ctx) => {
    const out = new Map<string, Upstream>();
    for (const [name, u] of Object.entries(rec)) {
      if (!/^[A-Za-z0-9_.-]+$/.test(name)) ctx.addIssue({ code: 'custom', path: [name], message: 'names are letters, digits, "_", "-" and "."' });
      else if (name === DIRECT) ctx.addIssue({ code: 'custom', path: [name], message: `"${DIRECT}" is reserved: it means no parent` });
      try {
        out.set(name, { ...parseUpstreamUrl(name, u.url), connectTimeoutMs: u.connect_timeout });
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: [name, 'url'], message: (err as Error).message });
      }
    }
    return out;
  });
};

/** One upstream name, or a list tried in order. */
const via = z.union([z.string(), z.array(z.string()).min(1, 'list at least one upstream')], {
  error: 'expected an upstream name, "direct", or a list of them',
}).transform((v) => (Array.isArray(v) ? v : [v]));

export const routeSchema = z
  .strictObject({
    match: z
      .strictObject({ hosts: z.array(pattern).min(1).optional(), ports: z.array(port).min(1).optional() })
      .refine((m) => m.hosts !== undefined || m.ports !== undefined, { message: 'a match needs hosts and/or ports' }),
    via,
    resolve: z.enum(['local', 'parent']).default('parent'),
  })
  .transform((r) => ({
    hosts: r.match.hosts ? new HostMatcher(r.match.hosts) : null,
    ports: r.match.ports ? new Set(r.match.ports) : null,
    via: r.via,
    resolve: r.resolve,
  }));

export type RouteConfig = z.output<typeof routeSchema>;

export const routesSchema = z.array(routeSchema).default([]);
export const defaultRouteSchema = via.default([DIRECT]);

/** Every `via` names `direct` or a key of `upstreams`. */
export function checkRouteNames(
  c: { upstreams: Map<string, Upstream>; routes: RouteConfig[]; default_route: string[] },
  ctx: z.RefinementCtx,
): void {
  const check = (names: string[], path: (string | number)[]) =>
    names.forEach((n, i) => {
      if (n !== DIRECT && !c.upstreams.has(n)) {
        const known = [...c.upstreams.keys()];
        ctx.addIssue({
          code: 'custom',
          path: names.length > 1 ? [...path, i] : path,
          message: `unknown upstream "${n}" (${known.length ? `known: ${known.join(', ')}, or ` : 'no upstreams are defined; use '}"${DIRECT}")`,
        });
      }
    });
  c.routes.forEach((r, i) => check(r.via, ['routes', i, 'via']));
  check(c.default_route, ['default_route']);
}
