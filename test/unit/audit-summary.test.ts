import { describe, expect, it } from 'vitest';
import { Timeline } from '../../src/audit/timeline.js';
import { TopN } from '../../src/audit/top.js';
import { parseTime } from '../../src/audit/summary.js';
import { parseLine } from '../../src/audit/record.js';

describe('TopN', () => {
  it('is exact while the distinct keys fit', () => {
    const t = new TopN(10);
    for (let i = 0; i < 20; i++) for (let k = 0; k <= i; k++) t.add(`k${i}`);
    expect(t.approximate).toBe(false);
    expect(t.top(3)).toEqual([
      { key: 'k19', count: 20 },
      { key: 'k18', count: 19 },
      { key: 'k17', count: 18 },
    ]);
    expect(t.distinct).toBe(20);
  });

  it('keeps the heavy hitters among many distinct keys, with a bound on the error', () => {
    const t = new TopN(50);
    for (let i = 0; i < 100_000; i++) {
      t.add(`noise-${i}`);
      if (i % 10 === 0) t.add('heavy');
      if (i % 20 === 0) t.add('second', 2);
    }
    const top = t.top(2);
    expect(top.map((r) => r.key)).toEqual(['heavy', 'second']);
    expect(t.approximate).toBe(true);
    // Counts are never over the truth, and at most `floor` under it.
    expect(top[0]!.count).toBeLessThanOrEqual(10_000);
    expect(top[0]!.count).toBeGreaterThanOrEqual(10_000 - t.floor);
  });
});

describe('Timeline', () => {
  it('widens its interval and keeps every count, in any order of arrival', () => {
    const tl = new Timeline();
    const start = Date.parse('2026-11-01T00:00:00Z');
    let total = 0;
    for (let i = 0; i < 3000; i++) {
      tl.add(start + ((i * 7919) % 3000) * 60_000, i % 3 === 0 ? 'denied' : 'allowed');
      total++;
    }
    const buckets = tl.list();
    expect(tl.width).toBe(15 * 60_000);
    expect(buckets.length).toBeLessThanOrEqual(400);
    expect(buckets.reduce((n, b) => n + b.allowed + b.denied + b.failed, 0)).toBe(total);
    expect(buckets[0]!.start).toBe(start);
  });
});

describe('parseLine and parseTime', () => {
  it('tells records, malformed lines and other JSON apart', () => {
    expect(parseLine('{"event":"egress.denied","time":"2026-11-25T17:25:53.378Z","reason":"loop"}')).toMatchObject({ ms: Date.parse('2026-11-25T17:25:53.378Z') });
    expect(parseLine('{"event":"egress.denied"')).toEqual({ malformed: 'not JSON' });
    expect(parseLine('[1,2]')).toEqual({ malformed: 'not a JSON object' });
    expect(parseLine('{"event":"egress.allowed","time":"yesterday"}')).toEqual({ malformed: 'record without a valid time' });
    expect(parseLine('{"level":30,"msg":"listening"}')).toEqual({ ignored: true });
  });

  it('reads ISO times and spans ago', () => {
    const now = Date.parse('2026-11-25T12:00:00Z');
    expect(parseTime('2026-11-25', now)).toBe(Date.parse('2026-11-25T00:00:00Z'));
    expect(parseTime('2026-11-25T10:00:00Z', now)).toBe(now - 2 * 3_600_000);
    expect(parseTime('24h', now)).toBe(now - 86_400_000);
    expect(parseTime('7d', now)).toBe(now - 7 * 86_400_000);
    expect(parseTime('yesterday', now)).toBeNull();
    expect(parseTime('12', now)).toBeNull();
  });
});
