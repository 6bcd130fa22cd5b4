import { bigIntToV6, numberToV4, type Cidr, type Family } from '../net/ip.js';

/**
 * The fewest CIDRs that cover exactly the addresses of a list: overlapping
 * and adjacent ranges merged into intervals, each interval cut into the
 * largest aligned blocks. IPv4 and IPv6 are kept apart. Exact arithmetic on
 * bigints; `cidr-tools` was the candidate library, but its current majors
 * need Node 22 (this package supports 20) and the merge is a dozen lines.
 */

export interface Aggregated {
  v4: string[];
  v6: string[];
}

export function aggregate(cidrs: Iterable<Cidr>): Aggregated {
  const list = [...cidrs];
  return { v4: blocks(4, merge(list.filter((c) => c.family === 4))), v6: blocks(6, merge(list.filter((c) => c.family === 6))) };
}

/** Sorted, disjoint, non-adjacent [start, end] intervals. */
export function merge(cidrs: readonly Cidr[]): [bigint, bigint][] {
  const sorted = [...cidrs].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const out: [bigint, bigint][] = [];
  for (const c of sorted) {
    const last = out.at(-1);
    if (last && c.start <= last[1] + 1n) {
      if (c.end > last[1]) last[1] = c.end;
    } else {
      out.push([c.start, c.end]);
    }
  }
  return out;
}

function blocks(family: Family, intervals: [bigint, bigint][]): string[] {
  const width = family === 4 ? 32 : 128;
  const out: string[] = [];
  for (const [first, last] of intervals) {
    let start = first;
    while (start <= last) {
      // The largest block aligned at `start` that ends within the interval.
      let bits = 0;
      while (bits < width && ((start >> BigInt(bits)) & 1n) === 0n && start + (1n << BigInt(bits + 1)) - 1n <= last) bits++;
      out.push(`${family === 4 ? numberToV4(Number(start)) : bigIntToV6(start)}/${width - bits}`);
      start += 1n << BigInt(bits);
    }
  }
  return out;
}
