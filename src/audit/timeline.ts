/**
 * Counts per time interval in bounded memory: the interval starts at one
 * minute and grows through round widths (each a multiple of the last, so
 * buckets merge exactly) whenever more than MAX_BUCKETS would be needed.
 * Records may arrive in any order.
 */

const MIN = 60_000;
const WIDTHS = [MIN, 5 * MIN, 15 * MIN, 60 * MIN, 3 * 60 * MIN, 6 * 60 * MIN, 12 * 60 * MIN, 24 * 60 * MIN, 7 * 24 * 60 * MIN];
const MAX_BUCKETS = 400;

export type Series = 'allowed' | 'denied' | 'failed';
export const SERIES: readonly Series[] = ['allowed', 'denied', 'failed'];

export interface Bucket {
  /** Interval start, ms since the epoch. */
  start: number;
  allowed: number;
  denied: number;
  failed: number;
}

export class Timeline {
  private level = 0;
  private buckets = new Map<number, Bucket>();

  get width(): number {
    return WIDTHS[this.level]!;
  }

  add(ms: number, series: Series): void {
    const key = Math.floor(ms / this.width);
    const b = this.buckets.get(key);
    if (b) {
      b[series]++;
      return;
    }
    const fresh = { start: key * this.width, allowed: 0, denied: 0, failed: 0 };
    fresh[series]++;
    this.buckets.set(key, fresh);
    if (this.buckets.size > MAX_BUCKETS && this.level < WIDTHS.length - 1) this.widen();
  }

  private widen(): void {
    while (this.buckets.size > MAX_BUCKETS && this.level < WIDTHS.length - 1) {
      this.level++;
      const merged = new Map<number, Bucket>();
      for (const b of this.buckets.values()) {
        const key = Math.floor(b.start / this.width);
        const m = merged.get(key) ?? { start: key * this.width, allowed: 0, denied: 0, failed: 0 };
        m.allowed += b.allowed;
        m.denied += b.denied;
        m.failed += b.failed;
        merged.set(key, m);
      }
      this.buckets = merged;
    }
  }

  /** Every interval from the first to the last, empty ones included. */
  list(): Bucket[] {
    if (this.buckets.size === 0) return [];
    const keys = [...this.buckets.keys()];
    const first = Math.min(...keys);
    const last = Math.max(...keys);
    const out: Bucket[] = [];
    for (let k = first; k <= last; k++) out.push(this.buckets.get(k) ?? { start: k * this.width, allowed: 0, denied: 0, failed: 0 });
    return out;
  }
}
