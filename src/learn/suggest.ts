import { getDomain } from 'tldts';
import { aggregate } from '../export/aggregate.js';
import { parseCidr, type Cidr, type Family } from '../net/ip.js';

/**
 * From destinations seen to the fewest readable rules that allow them:
 * plain names; `*.P` where at least `siblings` names sit one label below P;
 * `**.P` where `*.P` was earned and more names lie deeper (or `siblings`
 * patterns lie below P); never a pattern wider than the registered domain
 * (Public Suffix List, private suffixes included, so `*.s3.amazonaws.com` is
 * never proposed for three buckets). IP literals become their /32 (/128), or
 * their /24 (/64) when `siblings` addresses share it, aggregated. One rule
 * per domain (ICANN suffixes only, so the buckets share a rule) and port
 * set, and one per port set for addresses.
 */

export interface Destination {
  /** Canonical name or address. */
  host: string;
  family?: Family;
  port: number;
  count: number;
}

export interface SuggestedRule {
  name: string;
  hosts: { entry: string; covers: string[] }[];
  ip_ranges: string[];
  ports: number[];
  records: number;
  /** Distinct host:port pairs seen. */
  destinations: string[];
}

interface Unit {
  entry: string;
  /** The name itself, or P of `*.P` / `**.P`. */
  base: string;
  kind: 'exact' | 'one' | 'many';
  names: Set<string>;
}

const labels = (s: string) => s.split('.').length;
const below = (name: string, p: string) => name.endsWith(`.${p}`);
const depth = (u: Unit, p: string) => labels(u.base) - labels(p) + (u.kind === 'exact' ? 0 : 1);

/** Patterns covering the names of one registered domain. */
export function generalise(names: readonly string[], domain: string, siblings: number): Unit[] {
  let units: Unit[] = names.map((n) => ({ entry: n, base: n, kind: 'exact', names: new Set([n]) }));
  // Every suffix of a name at or below the registered domain, deepest first.
  const parents = [...new Set(names.flatMap((n) => suffixes(n).filter((p) => p === domain || below(p, domain))))].sort(
    (a, b) => labels(b) - labels(a) || a.localeCompare(b),
  );
  for (const p of parents) {
    const direct = units.filter((u) => u.kind === 'exact' && labels(u.base) === labels(p) + 1 && below(u.base, p));
    if (direct.length >= siblings) units = replace(units, direct, { entry: `*.${p}`, base: p, kind: 'one' });
  }
  // `**.P` where `*.P` was earned and more lies deeper, or where enough patterns lie below P.
  for (const p of parents) {
    const under = units.filter((u) => (u.kind === 'exact' ? below(u.base, p) : u.base === p ? u.kind === 'one' : below(u.base, p)));
    const earned = under.some((u) => u.kind === 'one' && u.base === p) && new Set(under.map((u) => depth(u, p))).size > 1;
    if (earned || under.filter((u) => u.kind !== 'exact').length >= siblings) {
      units = replace(units, under, { entry: `**.${p}`, base: p, kind: 'many' });
    }
  }
  return units.sort((a, b) => a.entry.localeCompare(b.entry));
}

function replace(units: Unit[], gone: Unit[], unit: Omit<Unit, 'names'>): Unit[] {
  const names = new Set(gone.flatMap((u) => [...u.names]));
  return [...units.filter((u) => !gone.includes(u)), { ...unit, names }];
}

/** `a.b.c` → `b.c`, `c`. */
function suffixes(name: string): string[] {
  const parts = name.split('.');
  return parts.slice(1).map((_, i) => parts.slice(i + 1).join('.'));
}

const portKey = (ports: Iterable<number>) => [...ports].sort((a, b) => a - b).join('-');
const destinationText = (d: Destination) => `${d.family === 6 ? `[${d.host}]` : d.host}:${d.port}`;

export function suggest(seen: readonly Destination[], opts: { siblings: number; taken?: ReadonlySet<string> }): SuggestedRule[] {
  const rules: SuggestedRule[] = [];
  const byName = seen.filter((d) => d.family === undefined);
  const byDomain = new Map<string, Destination[]>();
  for (const d of byName) {
    const domain = getDomain(d.host) ?? d.host;
    let list = byDomain.get(domain);
    if (!list) byDomain.set(domain, (list = []));
    list.push(d);
  }
  for (const [domain, list] of byDomain) {
    // Patterns stop at the registered domain, private suffixes counted.
    const byLimit = new Map<string, string[]>();
    for (const host of new Set(list.map((d) => d.host))) {
      const limit = getDomain(host, { allowPrivateDomains: true }) ?? host;
      byLimit.set(limit, [...(byLimit.get(limit) ?? []), host]);
    }
    const units = [...byLimit].flatMap(([limit, names]) => generalise(names, limit, opts.siblings));
    // Group the domain's entries by the ports their names were seen on.
    const groups = new Map<string, { units: Unit[]; ports: Set<number> }>();
    for (const u of units) {
      const ports = new Set(list.filter((d) => u.names.has(d.host)).map((d) => d.port));
      const key = portKey(ports);
      const g = groups.get(key) ?? { units: [], ports };
      g.units.push(u);
      groups.set(key, g);
    }
    for (const g of groups.values()) {
      const covered = list.filter((d) => g.units.some((u) => u.names.has(d.host)) && g.ports.has(d.port));
      rules.push({
        name: groups.size > 1 ? `${domain}-${portKey(g.ports)}` : domain,
        hosts: g.units.map((u) => ({ entry: u.entry, covers: u.kind === 'exact' ? [] : [...u.names].sort() })),
        ip_ranges: [],
        ports: [...g.ports].sort((a, b) => a - b),
        records: covered.reduce((n, d) => n + d.count, 0),
        destinations: covered.map(destinationText).sort(),
      });
    }
  }
  rules.push(...addressRules(seen.filter((d) => d.family !== undefined), opts.siblings));
  const taken = new Set(opts.taken);
  for (const r of rules.sort((a, b) => b.records - a.records || a.name.localeCompare(b.name))) {
    let name = r.name;
    for (let i = 2; taken.has(name); i++) name = `${r.name}-${i}`;
    taken.add(name);
    r.name = name;
  }
  return rules;
}

function addressRules(seen: readonly Destination[], siblings: number): SuggestedRule[] {
  // Each address → its block: the /24 (/64) when enough neighbours were seen, else itself.
  const prefixOf = (d: Destination) => {
    const c = parseCidr(d.host);
    const bits = d.family === 4 ? 8n : 64n;
    const start = (c.start >> bits) << bits;
    return `${d.family}:${start}`;
  };
  const neighbours = new Map<string, Set<string>>();
  for (const d of seen) neighbours.set(prefixOf(d), (neighbours.get(prefixOf(d)) ?? new Set()).add(d.host));
  const blockOf = (d: Destination): Cidr => {
    const c = parseCidr(d.host);
    if (neighbours.get(prefixOf(d))!.size < siblings) return c;
    const bits = d.family === 4 ? 8n : 64n;
    const start = (c.start >> bits) << bits;
    return { family: c.family, start, end: start | ((1n << bits) - 1n), text: '' };
  };
  const byPorts = new Map<string, Destination[]>();
  const portsOf = new Map<string, Set<number>>();
  for (const d of seen) portsOf.set(d.host, (portsOf.get(d.host) ?? new Set()).add(d.port));
  for (const d of seen) {
    const key = portKey(portsOf.get(d.host)!);
    byPorts.set(key, [...(byPorts.get(key) ?? []), d]);
  }
  return [...byPorts].map(([key, list]) => {
    const { v4, v6 } = aggregate(list.map(blockOf));
    return {
      name: byPorts.size > 1 ? `addresses-${key}` : 'addresses',
      hosts: [],
      ip_ranges: [...v4, ...v6],
      ports: key.split('-').map(Number),
      records: list.reduce((n, d) => n + d.count, 0),
      destinations: list.map(destinationText).sort(),
    };
  });
}
