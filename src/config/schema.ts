import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { CidrSet, canonicalIp, parseCidr, type Cidr } from '../net/ip.js';
import type { KeepAlive } from '../net/keepalive.js';
import { normalizeHost, parseHostPort } from '../policy/hostport.js';
import { HostMatcher, type CompiledPattern } from '../policy/patterns.js';
import type { Rule } from '../policy/policy.js';
import { checkClientRefs, clientsSchema, forwardClients } from './clients.js';
import { BUILTIN_RANGES, loadRangeFile } from './ranges.js';
import { parseDnsSource, parseUrlSource, type RangeSource } from '../ranges/source.js';
import { checkRouteNames, defaultRouteSchema, routesSchema, upstreamsSchema } from '../upstream/config.js';
import { cidr, count, duration, listenAddress, parseListenAddress, pattern, port, size, type ListenAddress } from './fields.js';
import { readConfigFile } from './read.js';

export { parseDuration, parseListenAddress, parseSize, size, type ListenAddress } from './fields.js';

/**
 * The one configuration schema. Unknown keys are rejected everywhere; values
 * are compiled here (patterns, CIDRs, range files, durations) so every error
 * carries the key path it came from. `baseDir` anchors `file:` paths.
 */

// ---------------------------------------------------------------- keepalive

/**
 * TCP keepalive and TCP_USER_TIMEOUT values. The kernel counts keepalive in
 * whole seconds, and Node turns anything under a second into "unset" (the
 * kernel's two hours), so sub-second values are errors rather than surprises.
 */
const KEEPALIVE_MAX_S = 32767;
const seconds = (opts: { off?: boolean; whole?: boolean; maxMs?: number }) =>
  duration().superRefine((ms, ctx) => {
    if (opts.off && ms === 0) return;
    const off = opts.off ? ' (or 0: off)' : '';
    if (ms < 1000) ctx.addIssue({ code: 'custom', message: `must be at least 1s${off}: the kernel counts these in seconds, got ${ms} ms` });
    else if (opts.whole && ms % 1000 !== 0) ctx.addIssue({ code: 'custom', message: `must be whole seconds (the kernel counts them in seconds), got ${ms} ms` });
    else if (opts.maxMs !== undefined && ms > opts.maxMs) ctx.addIssue({ code: 'custom', message: `must be at most ${opts.maxMs / 1000}s` });
  });

/** Chosen to ride out a minute-long outage (failover, NAT refresh) and still find a dead peer in 90 s. */
export const KEEPALIVE_DEFAULTS = { idle: 30_000, interval: 10_000, count: 6 } as const;

const keepaliveIdle = seconds({ off: true, maxMs: KEEPALIVE_MAX_S * 1000 });
const keepaliveObject = z.strictObject({
  idle: keepaliveIdle.prefault(`${KEEPALIVE_DEFAULTS.idle}ms`),
  interval: seconds({ whole: true, maxMs: KEEPALIVE_MAX_S * 1000 }).prefault(`${KEEPALIVE_DEFAULTS.interval}ms`),
  count: z
    .number({ error: 'expected a whole number of probes' })
    .int('must be a whole number')
    .min(1, 'must be at least 1')
    .max(127, "must be at most 127 (the kernel's limit)")
    .default(KEEPALIVE_DEFAULTS.count),
});
/** `keepalive: 30s` (idle, with the default interval and count) or `{idle, interval, count}`. */
const keepalive = z.unknown().transform((v, ctx): z.output<typeof keepaliveObject> => {
  const plain = typeof v === 'string' || typeof v === 'number';
  if (!plain && (typeof v !== 'object' || v === null || Array.isArray(v))) {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as 30s, or {idle, interval, count}, got ${JSON.stringify(v)}` });
    return z.NEVER;
  }
  const r = plain ? keepaliveIdle.safeParse(v) : keepaliveObject.safeParse(v);
  if (r.success) return typeof r.data === 'number' ? { ...KEEPALIVE_DEFAULTS, idle: r.data } : r.data;
  for (const issue of r.error.issues) ctx.addIssue(issue as Parameters<typeof ctx.addIssue>[0] & object);
  return z.NEVER;
});

/** The settings the keepalive sweep applies to both legs of every tunnel. */
export function keepAliveSettings(c: Config): KeepAlive {
  return { idleMs: c.keepalive.idle, intervalMs: c.keepalive.interval, count: c.keepalive.count, userTimeoutMs: c.timeouts.user_timeout };
}

const dnsServer = z.string().refine((v) => canonicalIp(v) !== null || parseListenAddress(v) !== null, {
  error: (i) => `expected "ip", "ip:port" or "[ipv6]:port", got ${JSON.stringify(i.input)}`,
});

/** `host:port` a forward listener sends every connection to; the port is required. */
const forwardTarget = z.string().transform((v, ctx) => {
  try {
    return parseHostPort(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `expected "host:port" or "[ipv6]:port": ${(err as Error).message}` });
    return z.NEVER;
  }
});

const forward = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'names are letters, digits, "_", "-" and "."'),
  listen: listenAddress,
  to: forwardTarget,
  clients: forwardClients,
});

type Listeners = {
  proxy?: ListenAddress;
  socks?: ListenAddress;
  transparent?: ListenAddress;
  transparent_mode?: 'redirect' | 'tproxy';
  admin?: ListenAddress;
  forwards: { name: string; listen: ListenAddress }[];
};

/** At least one listener; no two on the same address; unique listener names. */
function checkListeners(l: Listeners, ctx: z.RefinementCtx): void {
  const all: { path: (string | number)[]; name: string; at: ListenAddress }[] = [];
  if (l.proxy) all.push({ path: ['proxy'], name: 'proxy', at: l.proxy });
  if (l.socks) all.push({ path: ['socks'], name: 'socks', at: l.socks });
  if (l.transparent) all.push({ path: ['transparent'], name: 'transparent', at: l.transparent });
  l.forwards.forEach((f, i) => all.push({ path: ['forwards', i, 'listen'], name: f.name, at: f.listen }));
  const proxying = all.length;
  // The admin listener never proxies: it does not count as one, but may not share an address.
  if (l.admin) all.push({ path: ['admin'], name: 'admin', at: l.admin });
  if (proxying === 0) {
    ctx.addIssue({ code: 'custom', message: 'at least one listener is needed (listen.proxy, listen.socks, listen.transparent or listen.forwards)' });
  }
  if (l.transparent_mode === 'tproxy' && !l.transparent) {
    ctx.addIssue({ code: 'custom', path: ['transparent_mode'], message: 'tproxy is the mode of listen.transparent, which is not set' });
  }
  const wildcard = (h: string) => h === '0.0.0.0' || h === '::';
  all.forEach((a, i) => {
    for (const b of all.slice(0, i)) {
      if (a.at.port !== 0 && a.at.port === b.at.port && (a.at.host === b.at.host || wildcard(a.at.host) || wildcard(b.at.host))) {
        ctx.addIssue({ code: 'custom', path: a.path, message: `${a.at.text} overlaps listener "${b.name}" (${b.at.text})` });
      }
    }
  });
  const names = new Set(['proxy', 'socks', 'transparent', 'admin']);
  l.forwards.forEach((f, i) => {
    if (names.has(f.name)) ctx.addIssue({ code: 'custom', path: ['forwards', i, 'name'], message: `duplicate listener name "${f.name}"` });
    names.add(f.name);
  });
}

/** A rule's entries as compiled, for `config check`'s notes and warnings. */
export interface RuleSource {
  hosts: CompiledPattern[];
  /** Per `ip_ranges` entry: its CIDRs, or the feed (`url:`, `dns:`) that keeps them current. */
  ipRanges: (Cidr[] | RangeSource)[];
}

function builtinRanges(name: string): Cidr[] {
  const path = BUILTIN_RANGES[name];
  if (!path) throw new Error(`no built-in range list "${name}"; built-in lists: ${Object.keys(BUILTIN_RANGES).map((n) => `builtin:${n}`).join(', ')}`);
  return loadRangeFile(path);
}

export function configSchema(baseDir: string) {
  /**
   * A CIDR or an address, or a prefixed entry: `file:path` (text or zip,
   * relative to the config file), `builtin:NAME` (a list the package ships,
   * valid wherever the config file is), `url:https://…` or `dns:HOSTNAME`
   * (kept current by the range feeds). One parser per prefix.
   */
  const RANGE_PREFIXES: readonly [prefix: string, parse: (rest: string) => Cidr[] | RangeSource][] = [
    ['file:', (file) => loadRangeFile(isAbsolute(file) ? file : resolve(baseDir, file))],
    ['builtin:', builtinRanges],
    ['url:', parseUrlSource],
    ['dns:', parseDnsSource],
  ];
  const ipRange = z.string({ error: 'expected a CIDR, an address, or file:, builtin:, url: or dns: entry' }).transform((v, ctx): Cidr[] | RangeSource => {
    const prefixed = RANGE_PREFIXES.find(([prefix]) => v.startsWith(prefix));
    try {
      return prefixed ? prefixed[1](v.slice(prefixed[0].length)) : [parseCidr(v)];
    } catch (err) {
      // "http://…" or "files:…" is more likely a mistyped prefix than a bad CIDR ("fe80::/10" is a CIDR).
      const unknown = !prefixed && /^([a-z]+):/.exec(v)?.[1];
      const known = RANGE_PREFIXES.map(([prefix]) => prefix).join(', ');
      const hint = unknown && !/^[0-9a-f]{1,4}:/i.test(v) ? ` ("${unknown}:" is not a range source; sources: ${known})` : '';
      ctx.addIssue({ code: 'custom', message: `${(err as Error).message}${hint}` });
      return z.NEVER;
    }
  });

  const rule = z
    .strictObject({
      name: z.string().min(1),
      hosts: z.array(pattern).default([]),
      ip_ranges: z.array(ipRange).default([]),
      ports: z
        .array(port, { error: (i) => (i.input === undefined ? 'a rule needs ports' : undefined) })
        .min(1, 'a rule needs at least one port'),
      require_sni: z.boolean().default(false),
      match_dns: z.boolean().default(false),
    })
    .refine((r) => r.hosts.length > 0 || r.ip_ranges.length > 0, {
      message: 'a rule needs hosts and/or ip_ranges',
    })
    .refine((r) => !r.match_dns || r.hosts.some((p) => p.kind === 'exact'), {
      path: ['match_dns'],
      message: 'match_dns follows the addresses of the rule\'s plain hostnames, and this rule has none (patterns have no addresses)',
    })
    .transform(
      (r): Rule & { patterns: number; cidrs: number; fixed: Cidr[]; sources: RangeSource[]; source: RuleSource } => {
        const fixed = r.ip_ranges.filter((e): e is Cidr[] => Array.isArray(e)).flat();
        const sources = r.ip_ranges.filter((e): e is RangeSource => !Array.isArray(e));
        // match_dns: each plain name's current addresses, kept as a dns: entry is (ranges/feeds.ts).
        if (r.match_dns) {
          for (const p of r.hosts) {
            if (p.kind !== 'exact' || sources.some((s) => s.kind === 'dns' && s.host === p.name)) continue;
            sources.push({ kind: 'dns', text: `dns:${p.name}`, host: p.name! });
          }
        }
        return {
          requireSni: r.require_sni,
          name: r.name,
          ports: new Set(r.ports),
          hosts: r.hosts.length ? new HostMatcher(r.hosts) : null,
          // With sources, the range feeds replace this set as their lists change.
          ranges: fixed.length || sources.length ? new CidrSet(fixed) : null,
          patterns: r.hosts.length,
          cidrs: fixed.length,
          fixed,
          sources,
          source: { hosts: r.hosts, ipRanges: r.ip_ranges },
        };
      },
    );

  const dnsHosts = z.record(z.string(), z.union([z.string(), z.array(z.string()).min(1)], { error: 'expected an IP address or a list of them' })).transform((rec, ctx) => {
    const map = new Map<string, string[]>();
    for (const [key, value] of Object.entries(rec)) {
      let name: string;
      try {
        const n = normalizeHost(key);
        if (n.family !== undefined) throw new Error('an IP address cannot be a key');
        name = n.host;
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: [key], message: `bad hostname: ${(err as Error).message}` });
        continue;
      }
      if (map.has(name)) {
        ctx.addIssue({ code: 'custom', path: [key], message: `names the same host as another key (${name})` });
        continue;
      }
      const addresses: string[] = [];
      for (const [i, a] of (Array.isArray(value) ? value : [value]).entries()) {
        const ip = canonicalIp(a);
        if (ip) addresses.push(ip.ip);
        else ctx.addIssue({ code: 'custom', path: Array.isArray(value) ? [key, i] : [key], message: `not an IP address: ${JSON.stringify(a)}` });
      }
      map.set(name, addresses);
    }
    return map;
  });

  return z.strictObject({
    listen: z
      .strictObject({
        proxy: listenAddress.optional(),
        socks: listenAddress.optional(),
        transparent: listenAddress.optional(),
        /** How connections reach listen.transparent: REDIRECT/DNAT (SO_ORIGINAL_DST) or TPROXY (the local address). */
        transparent_mode: z.enum(['redirect', 'tproxy']).default('redirect'),
        admin: listenAddress.optional(),
        forwards: z.array(forward).default([]),
      })
      .superRefine(checkListeners),
    policy: z.strictObject({
      mode: z.enum(['enforce', 'report']).default('enforce'),
      rules: z
        .array(rule)
        .default([])
        .superRefine((rules, ctx) => {
          const seen = new Set<string>();
          rules.forEach((r, i) => {
            if (seen.has(r.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate rule name "${r.name}"` });
            seen.add(r.name);
          });
        }),
      allow_ranges: z.array(cidr).default([]).transform((c) => new CidrSet(c)),
      require_sni: z.boolean().default(false),
    }),
    dns: z
      .strictObject({
        hosts: dnsHosts.prefault({}),
        servers: z.array(dnsServer).default([]),
        resolve_unlisted: z.boolean().default(true),
      })
      .prefault({}),
    timeouts: z
      .strictObject({
        connect: duration(1).prefault('10s'),
        idle: duration().prefault(0),
        handshake: duration(1).prefault('10s'),
        dns: duration(1).prefault('5s'),
        user_timeout: seconds({ off: true, maxMs: 2_147_483_000 }).prefault(0),
      })
      .prefault({}),
    keepalive: keepalive.prefault('30s'),
    ranges: rangeFeeds(baseDir),
    limits: z
      .strictObject({
        max_connections: count.default(0),
        max_connections_per_client: count.default(0),
        max_handshakes: count.default(1000),
        max_head_bytes: size(1024, 1024 * 1024).prefault('16KiB'),
      })
      .prefault({}),
    shutdown: z
      .strictObject({ delay: duration().prefault('0s'), drain_timeout: duration().prefault('5m') })
      .prefault({}),
    reload: z
      .strictObject({ watch: z.boolean().default(false), recheck_tunnels: z.boolean().default(false) })
      .prefault({}),
    audit: z
      .strictObject({ file: z.string().min(1).default('-'), on_error: z.enum(['deny', 'continue']).default('deny') })
      .prefault({})
      .transform((a) => ({ ...a, file: a.file === '-' || isAbsolute(a.file) ? a.file : resolve(baseDir, a.file) })),
    // Parent proxies (src/upstream/): which destinations leave through which parent.
    upstreams: upstreamsSchema(duration(1)).prefault({}),
    routes: routesSchema,
    default_route: defaultRouteSchema,
    clients: clientsSchema,
    /** Processes serving the listeners: 1 (this one), N, or auto (one per CPU the process may use). */
    workers: z
      .unknown()
      .transform((v, ctx): number | 'auto' => {
        if (v === 'auto' || (typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_WORKERS)) return v;
        ctx.addIssue({ code: 'custom', message: `expected a whole number from 1 to ${MAX_WORKERS}, or auto` });
        return z.NEVER;
      })
      .default(1),
  })
    .superRefine(checkRouteNames)
    .superRefine(checkClientRefs)
    .superRefine((c, ctx) => {
      // Node's cluster would look a worker's listening descriptor up in the primary; the IP_TRANSPARENT socket is the worker's own.
      if (c.listen.transparent && c.listen.transparent_mode === 'tproxy' && c.workers !== 1) {
        ctx.addIssue({ code: 'custom', path: ['workers'], message: 'listen.transparent_mode: tproxy is served by one process: set workers: 1 (the redirect mode works with workers)' });
      }
    });
}

/** More would only contend for the cores (and the primary's audit writer). */
export const MAX_WORKERS = 64;

/** How `url:` and `dns:` range entries are kept current (src/ranges/feeds.ts). */
function rangeFeeds(baseDir: string) {
  const path = z.string().min(1).transform((p) => (isAbsolute(p) ? p : resolve(baseDir, p)));
  return z
    .strictObject({
      cache_dir: path.optional(),
      refresh: duration(100).prefault('1h'),
      dns_refresh: duration(100).prefault('60s'),
      timeout: duration(1).prefault('30s'),
      max_shrink: z.number().min(0).max(1).default(0.5),
      ca: path
        .transform((p, ctx) => {
          try {
            const pem = readConfigFile(p, 'utf8');
            if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
            return pem;
          } catch (err) {
            ctx.addIssue({ code: 'custom', message: `${p}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
            return z.NEVER;
          }
        })
        .optional(),
    })
    .prefault({});
}

export type RangesConfig = z.output<ReturnType<typeof rangeFeeds>>;

export type Config = z.output<ReturnType<typeof configSchema>>;
