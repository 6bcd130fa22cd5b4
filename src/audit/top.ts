/**
 * Heavy hitters in bounded memory. Counts are exact while at most
 * 2 × capacity distinct keys have been seen; past that the table is pruned
 * to its `capacity` largest entries whenever it fills, and `floor` (the
 * largest count ever pruned) bounds how much any count may be under its true
 * value. A key whose true count exceeds `floor` is never missing from the top.
 */
export class TopN {
  private readonly counts = new Map<string, number>();
  /** The largest count pruned so far: 0 while every count is exact. */
  floor = 0;
  /** Distinct keys seen, counted until the first prune (then a lower bound). */
  distinct = 0;

  constructor(private readonly capacity = 2000) {}

  add(key: string, weight = 1): void {
    const n = this.counts.get(key);
    if (n !== undefined) {
      this.counts.set(key, n + weight);
      return;
    }
    if (this.counts.size >= 2 * this.capacity) this.prune();
    this.distinct++;
    this.counts.set(key, weight);
  }

  private prune(): void {
    const sorted = [...this.counts].sort((a, b) => b[1] - a[1]);
    for (const [key, n] of sorted.slice(this.capacity)) {
      if (n > this.floor) this.floor = n;
      this.counts.delete(key);
    }
  }

  /** The `n` largest, largest first (ties by key, so output is stable). */
  top(n: number): { key: string; count: number }[] {
    return [...this.counts]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .slice(0, n)
      .map(([key, count]) => ({ key, count }));
  }

  get approximate(): boolean {
    return this.floor > 0;
  }
}
