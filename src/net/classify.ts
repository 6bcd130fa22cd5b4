import { numberToV4, parseCidr, v4ToNumber, v6ToBigInt } from './ip.js';
import { IPV4_REGISTRY, IPV6_REGISTRY, LOCAL_ROWS, type SpecialRange } from './special-registry.js';

/**
 * Address classification: which special-purpose range an address lies in,
 * from the IANA special-purpose registries (special-registry.ts: every row
 * that is not globally reachable is denied; the most specific row decides).
 * `range: null` means an ordinary public address.
 *
 * Addresses that embed an IPv4 address are judged by it:
 * - IPv4-mapped (::ffff:0:0/96) and -translated (::ffff:0:0:0/96): judged
 *   and dialled as the IPv4 address.
 * - NAT64 64:ff9b::/96 (globally reachable): judged as the IPv4 address,
 *   dialled as IPv6 (the network translates).
 * - Local-use NAT64 64:ff9b:1::/48 (not globally reachable) and the
 *   deprecated IPv4-compatible ::/96: denied, named by the embedded IPv4
 *   address's range when it has one (`nat64_local`, `deprecated`
 *   otherwise); the embedded address is what allow_ranges and ip_ranges
 *   are tested against.
 * - 6to4 (2002::/16) and Teredo (2001::/32, the client address is the
 *   inverted last 32 bits): denied whatever they embed, because what lies
 *   behind the tunnel is not something the policy can see; the IPv4
 *   endpoint is given as `embedded` (for explanations). allow_ranges must
 *   list the IPv6 address itself to allow one.
 */

export type { SpecialRange } from './special-registry.js';

export interface Classified {
  /** The special range, or null for a public address. */
  range: SpecialRange | null;
  /** The address the policy judges: the embedded IPv4 address where there is one. */
  effective: string;
  /** The address to dial: mapped/compatible forms are dialled as IPv4. */
  dial: string;
  /** 6to4 and Teredo: the IPv4 address the tunnel leads to (informational). */
  embedded?: string;
}

interface Entry<T> {
  start: T;
  end: T;
  bits: number;
  range: SpecialRange | null;
}

/** Registry rows and local rows, most specific first: the first that contains an address decides. */
function table(family: 4 | 6): Entry<bigint>[] {
  const rows = [
    ...(family === 4 ? IPV4_REGISTRY : IPV6_REGISTRY).flatMap((r) => r.blocks.map((block) => ({ block, range: r.range }))),
    ...LOCAL_ROWS,
  ];
  return rows
    .map(({ block, range }) => ({ c: parseCidr(block), range }))
    .filter(({ c }) => c.family === family)
    .map(({ c, range }) => ({ start: c.start, end: c.end, bits: Number(c.text.split('/')[1] ?? (family === 4 ? 32 : 128)), range }))
    .sort((a, b) => b.bits - a.bits);
}

const v4Table: Entry<number>[] = table(4).map((e) => ({ ...e, start: Number(e.start), end: Number(e.end) }));
const v6Table = table(6);

const LOW32 = (1n << 32n) - 1n;
const prefix = (cidr: string) => parseCidr(cidr);
const MAPPED = prefix('::ffff:0:0/96');
const TRANSLATED = prefix('::ffff:0:0:0/96');
const NAT64 = prefix('64:ff9b::/96');
const NAT64_LOCAL = prefix('64:ff9b:1::/48');
const SIX_TO_FOUR = prefix('2002::/16');
const TEREDO = prefix('2001::/32');
const inside = (n: bigint, c: { start: bigint; end: bigint }) => n >= c.start && n <= c.end;

export function classifyV4(n: number): SpecialRange | null {
  for (const r of v4Table) if (n >= r.start && n <= r.end) return r.range;
  return null;
}

function classifyV6(n: bigint): SpecialRange | null {
  for (const r of v6Table) if (n >= r.start && n <= r.end) return r.range;
  return null;
}

/** Classify a canonical IP address (as produced by canonicalIp or a resolver). */
export function classify(ip: string): Classified {
  const n4 = v4ToNumber(ip);
  if (n4 !== null) return { range: classifyV4(n4), effective: ip, dial: ip };
  const n6 = v6ToBigInt(ip);
  if (n6 === null) throw new TypeError(`not an IP address: ${ip}`);
  const low = Number(n6 & LOW32);
  // IPv4-compatible ::/96, except :: and ::1 (their own registry rows).
  if (n6 > 1n && n6 <= LOW32) return embeddedV4(low, 'deprecated', true, ip);
  if (inside(n6, MAPPED) || inside(n6, TRANSLATED)) return embeddedV4(low, null, true, ip);
  if (inside(n6, NAT64)) return embeddedV4(low, null, false, ip);
  if (inside(n6, NAT64_LOCAL)) return embeddedV4(low, 'nat64_local', false, ip);
  if (inside(n6, SIX_TO_FOUR)) return tunnelled(Number((n6 >> 80n) & LOW32), 'ipv6_6to4', ip);
  if (inside(n6, TEREDO)) return tunnelled(~low >>> 0, 'ipv6_teredo', ip);
  return { range: classifyV6(n6), effective: ip, dial: ip };
}

/** Judged as the embedded IPv4 address; `otherwise`: the range when that address is public. */
function embeddedV4(n: number, otherwise: SpecialRange | null, dialV4: boolean, ip: string): Classified {
  const v4 = numberToV4(n);
  return { range: classifyV4(n) ?? otherwise, effective: v4, dial: dialV4 ? v4 : ip };
}

/** 6to4 and Teredo: always denied as the tunnel they are, with the IPv4 endpoint they lead to. */
function tunnelled(client: number, range: SpecialRange, ip: string): Classified {
  return { range, effective: ip, dial: ip, embedded: numberToV4(client) };
}
