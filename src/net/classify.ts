import { numberToV4, parseCidr, v4ToNumber, v6ToBigInt } from './ip.js';

/**
 * Address classification: which special-purpose range an address lies in.
 * `range: null` means an ordinary public address. Addresses that embed an
 * IPv4 address (mapped, translated, compatible, NAT64) are classified as the
 * embedded IPv4 address, which is also what the policy's ranges are tested
 * against; 6to4 and Teredo are denied outright because the IPv4 endpoint they
 * tunnel to is not something the policy can see.
 */

export type SpecialRange =
  | 'unspecified'
  | 'private'
  | 'shared_cgnat'
  | 'loopback'
  | 'link_local'
  | 'ietf_protocol'
  | 'documentation'
  | 'benchmarking'
  | 'multicast'
  | 'reserved'
  | 'unique_local'
  | 'discard_only'
  | 'ipv6_6to4'
  | 'ipv6_teredo';

export interface Classified {
  /** The special range, or null for a public address. */
  range: SpecialRange | null;
  /** The address the policy judges: the embedded IPv4 address where there is one. */
  effective: string;
  /** The address to dial: mapped/compatible forms are dialled as IPv4. */
  dial: string;
}

const V4_TABLE: [string, SpecialRange][] = [
  ['0.0.0.0/8', 'unspecified'],
  ['10.0.0.0/8', 'private'],
  ['100.64.0.0/10', 'shared_cgnat'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link_local'],
  ['172.16.0.0/12', 'private'],
  ['192.0.0.0/24', 'ietf_protocol'],
  ['192.0.2.0/24', 'documentation'],
  ['192.168.0.0/16', 'private'],
  ['198.18.0.0/15', 'benchmarking'],
  ['198.51.100.0/24', 'documentation'],
  ['203.0.113.0/24', 'documentation'],
  ['224.0.0.0/4', 'multicast'],
  ['240.0.0.0/4', 'reserved'],
];

// Checked in order after the embedded-IPv4 prefixes below.
const V6_TABLE: [string, SpecialRange][] = [
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['fc00::/7', 'unique_local'],
  ['fe80::/10', 'link_local'],
  ['ff00::/8', 'multicast'],
  ['2001:db8::/32', 'documentation'],
  ['100::/64', 'discard_only'],
  ['2002::/16', 'ipv6_6to4'],
  ['2001::/32', 'ipv6_teredo'],
];

/** Prefixes whose low 32 bits are an IPv4 address; `dialV4`: dial that IPv4 address. */
const EMBEDDED: { prefix: string; dialV4: boolean }[] = [
  { prefix: '::ffff:0:0/96', dialV4: true }, // IPv4-mapped
  { prefix: '::ffff:0:0:0/96', dialV4: true }, // IPv4-translated (SIIT)
  { prefix: '64:ff9b::/96', dialV4: false }, // NAT64: the network translates it
];

const v4Table = V4_TABLE.map(([cidr, range]) => {
  const c = parseCidr(cidr);
  return { start: Number(c.start), end: Number(c.end), range };
});
const v6Table = V6_TABLE.map(([cidr, range]) => ({ ...parseCidr(cidr), range }));
const embedded = EMBEDDED.map((e) => ({ ...parseCidr(e.prefix), dialV4: e.dialV4 }));
const COMPAT_END = (1n << 32n) - 1n; // ::/96 IPv4-compatible (except :: and ::1, tabled above)

export function classifyV4(n: number): SpecialRange | null {
  for (const r of v4Table) if (n >= r.start && n <= r.end) return r.range;
  return null;
}

/** Classify a canonical IP address (as produced by canonicalIp or a resolver). */
export function classify(ip: string): Classified {
  const n4 = v4ToNumber(ip);
  if (n4 !== null) return { range: classifyV4(n4), effective: ip, dial: ip };
  const n6 = v6ToBigInt(ip);
  if (n6 === null) throw new TypeError(`not an IP address: ${ip}`);
  if (n6 > 1n && n6 <= COMPAT_END) return embeddedV4(Number(n6), true, ip);
  for (const e of embedded) {
    if (n6 >= e.start && n6 <= e.end) return embeddedV4(Number(n6 & COMPAT_END), e.dialV4, ip);
  }
  for (const r of v6Table) if (n6 >= r.start && n6 <= r.end) return { range: r.range, effective: ip, dial: ip };
  return { range: null, effective: ip, dial: ip };
}

function embeddedV4(n: number, dialV4: boolean, ip: string): Classified {
  const v4 = numberToV4(n);
  return { range: classifyV4(n), effective: v4, dial: dialV4 ? v4 : ip };
}
