import ipaddr from 'ipaddr.js';

/**
 * Addresses as numbers, and sets of CIDR ranges with O(log n) lookup.
 * IPv4 is a uint32 number, IPv6 a 128-bit bigint; a set keeps sorted,
 * merged intervals per family so 229 vendor ranges cost one binary search.
 */

export type Family = 4 | 6;

/**
 * Strict dotted-quad IPv4 (no octal, hex or short forms: four decimal
 * octets 0-255 without leading zeros) to uint32, or null. A character loop,
 * not a regex: every decision parses each address it judges.
 */
export function v4ToNumber(s: string): number | null {
  const len = s.length;
  if (len < 7 || len > 15) return null;
  let n = 0;
  let octets = 0;
  let i = 0;
  while (i < len) {
    let c = s.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return null;
    let octet = c;
    let digits = 1;
    while (++i < len && (c = s.charCodeAt(i) - 48) >= 0 && c <= 9) {
      if (octet === 0 || ++digits > 3) return null; // leading zero, or too long
      octet = octet * 10 + c;
    }
    if (octet > 255) return null;
    n = n * 256 + octet;
    octets++;
    if (i === len) break;
    if (s.charCodeAt(i) !== 46 || octets === 4 || ++i === len) return null; // '.' between octets only
  }
  return octets === 4 ? n : null;
}

export function numberToV4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** A valid IPv6 literal without zone to bigint, or null. */
export function v6ToBigInt(s: string): bigint | null {
  if (s.includes('%')) return null;
  // A trailing dotted quad (RFC 4291 2.2.3) is parsed here: ipaddr.js reads
  // `::a.b.c.d` as IPv4-mapped (it is IPv4-compatible, `::` + 32 bits) and
  // accepts hex or leading-zero octets that no resolver does.
  const dot = s.indexOf('.');
  if (dot >= 0) {
    const colon = s.lastIndexOf(':');
    if (colon < 0 || colon > dot) return null;
    const v4 = v4ToNumber(s.slice(colon + 1));
    if (v4 === null) return null;
    s = `${s.slice(0, colon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  if (!ipaddr.IPv6.isValid(s)) return null;
  let n = 0n;
  for (const p of ipaddr.IPv6.parse(s).parts) n = (n << 16n) | BigInt(p);
  return n;
}

export function bigIntToV6(n: bigint): string {
  const parts: number[] = [];
  for (let i = 7; i >= 0; i--) parts.push(Number((n >> BigInt(i * 16)) & 0xffffn));
  return new ipaddr.IPv6(parts).toString();
}

/** Canonical text of an IP literal (RFC 5952 for IPv6), or null if it is not one. */
export function canonicalIp(s: string): { ip: string; family: Family } | null {
  if (v4ToNumber(s) !== null) return { ip: s, family: 4 };
  const n = v6ToBigInt(s);
  return n === null ? null : { ip: bigIntToV6(n), family: 6 };
}

export interface Cidr {
  family: Family;
  start: bigint;
  end: bigint;
  text: string;
}

/**
 * Parse `a.b.c.d/n`, `v6/n` or a bare address (a /32 or /128). Throws an
 * Error whose message says what is wrong; host bits set is an error because
 * `157.240.1.1/16` is more likely a typo than a wish for 157.240.0.0/16.
 */
export function parseCidr(text: string): Cidr {
  const s = text.trim();
  const slash = s.indexOf('/');
  const addr = slash < 0 ? s : s.slice(0, slash);
  const lenText = slash < 0 ? undefined : s.slice(slash + 1);
  let family: Family;
  let value: bigint;
  const v4 = v4ToNumber(addr);
  if (v4 !== null) {
    family = 4;
    value = BigInt(v4);
  } else {
    const v6 = v6ToBigInt(addr);
    if (v6 === null) throw new Error(`"${text}" is not an IP address or CIDR`);
    family = 6;
    value = v6;
  }
  const width = family === 4 ? 32 : 128;
  let bits = width;
  if (lenText !== undefined) {
    if (!/^\d{1,3}$/.test(lenText) || +lenText > width) {
      throw new Error(`"${text}": prefix length must be 0-${width}`);
    }
    bits = +lenText;
  }
  const hostMask = (1n << BigInt(width - bits)) - 1n;
  if ((value & hostMask) !== 0n) {
    const base = value & ~hostMask;
    const fixed = family === 4 ? numberToV4(Number(base)) : bigIntToV6(base);
    throw new Error(`"${text}": host bits are set (did you mean ${fixed}/${bits}?)`);
  }
  return { family, start: value, end: value | hostMask, text: s };
}

/** Sorted, merged intervals of one family. */
class Intervals {
  private starts: bigint[] = [];
  private ends: bigint[] = [];
  // IPv4 fast path: the same intervals as plain numbers.
  private starts4: Float64Array = new Float64Array(0);
  private ends4: Float64Array = new Float64Array(0);

  build(cidrs: Cidr[]): void {
    const sorted = [...cidrs].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    const starts: bigint[] = [];
    const ends: bigint[] = [];
    for (const c of sorted) {
      const last = ends.length - 1;
      if (last >= 0 && c.start <= ends[last]! + 1n) {
        if (c.end > ends[last]!) ends[last] = c.end;
      } else {
        starts.push(c.start);
        ends.push(c.end);
      }
    }
    this.starts = starts;
    this.ends = ends;
    this.starts4 = Float64Array.from(starts, Number);
    this.ends4 = Float64Array.from(ends, Number);
  }

  get size(): number {
    return this.starts.length;
  }

  hasNumber(n: number): boolean {
    const s = this.starts4;
    let lo = 0;
    let hi = s.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (s[mid]! <= n) lo = mid + 1;
      else hi = mid - 1;
    }
    return hi >= 0 && n <= this.ends4[hi]!;
  }

  hasBigInt(n: bigint): boolean {
    const s = this.starts;
    let lo = 0;
    let hi = s.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (s[mid]! <= n) lo = mid + 1;
      else hi = mid - 1;
    }
    return hi >= 0 && n <= this.ends[hi]!;
  }
}

export class CidrSet {
  private readonly v4 = new Intervals();
  private readonly v6 = new Intervals();
  /** How many ranges were added (before merging), for summaries. */
  readonly count: number;
  /** The ranges as given, for `matching` (policy explain); lookups use the merged intervals. */
  private readonly list: readonly Cidr[];

  constructor(cidrs: Iterable<Cidr>) {
    const list = [...cidrs];
    this.list = list;
    this.count = list.length;
    this.v4.build(list.filter((c) => c.family === 4));
    this.v6.build(list.filter((c) => c.family === 6));
  }

  static parse(texts: string[]): CidrSet {
    return new CidrSet(texts.map(parseCidr));
  }

  get empty(): boolean {
    return this.v4.size === 0 && this.v6.size === 0;
  }

  /** `ip` must be canonical text (as produced by canonicalIp or classify). */
  has(ip: string): boolean {
    const n = v4ToNumber(ip);
    if (n !== null) return this.v4.hasNumber(n);
    if (this.v6.size === 0) return false;
    const b = v6ToBigInt(ip);
    return b !== null && this.v6.hasBigInt(b);
  }

  /** The first range (as written) holding canonical `ip`, or undefined: for explaining a decision. */
  matching(ip: string): string | undefined {
    const n4 = v4ToNumber(ip);
    const family: Family = n4 !== null ? 4 : 6;
    const n = n4 !== null ? BigInt(n4) : v6ToBigInt(ip);
    if (n === null) return undefined;
    return this.list.find((c) => c.family === family && n >= c.start && n <= c.end)?.text;
  }
}
