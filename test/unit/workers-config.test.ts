import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfigSource, parseConfig } from '../../src/config/load.js';
import { recordReads, replayReads } from '../../src/config/read.js';
import { ConfigError } from '../../src/errors.js';
import { cgroupQuota, cpuBudget, workerCount } from '../../src/ops/cpus.js';

/** `workers:` values, `auto` bounded by a cgroup CPU quota, and the byte-exact configuration a worker is sent. */

const LISTEN = 'listen: { proxy: "127.0.0.1:0" }\n';
const BASE = `${LISTEN}policy: { rules: [] }\n`;
const tmp = () => mkdtempSync(join(tmpdir(), 'wa-egress-workers-'));

describe('workers:', () => {
  it('is 1 by default, a whole number from 1 to 64, or auto', () => {
    expect(parseConfig(BASE, '/tmp/c.yaml').workers).toBe(1);
    expect(parseConfig(`${BASE}workers: 4`, '/tmp/c.yaml').workers).toBe(4);
    expect(parseConfig(`${BASE}workers: auto`, '/tmp/c.yaml').workers).toBe('auto');
    for (const bad of ['0', '65', '1.5', 'many', '"2"']) {
      try {
        parseConfig(`${BASE}workers: ${bad}`, '/tmp/c.yaml');
        expect.unreachable(bad);
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as ConfigError).issues[0]).toMatchObject({ path: 'workers', message: 'expected a whole number from 1 to 64, or auto' });
      }
    }
  });

  it('the TPROXY listener is served by one process: workers above 1 with it are refused at the key', () => {
    const tproxy = `listen: { transparent: "127.0.0.1:0", transparent_mode: tproxy }\npolicy: { rules: [] }\n`;
    expect(parseConfig(`${tproxy}workers: 1`, '/tmp/c.yaml').workers).toBe(1);
    expect(parseConfig(`listen: { transparent: "127.0.0.1:0" }\npolicy: { rules: [] }\nworkers: 2`, '/tmp/c.yaml').workers).toBe(2);
    for (const w of ['2', 'auto']) {
      expect(() => parseConfig(`${tproxy}workers: ${w}`, '/tmp/c.yaml')).toThrow(/workers: listen\.transparent_mode: tproxy is served by one process/);
    }
  });

  it('auto: one per usable core, bounded by the cgroup v2 or v1 CPU quota (rounded up)', () => {
    const v2 = tmp();
    writeFileSync(join(v2, 'cpu.max'), '150000 100000\n');
    expect(cgroupQuota(v2)).toBe(1.5);
    expect(cpuBudget(v2)).toBe(Math.min(availableParallelism(), 2));
    writeFileSync(join(v2, 'cpu.max'), 'max 100000\n');
    expect(cgroupQuota(v2)).toBeUndefined();
    expect(cpuBudget(v2)).toBe(availableParallelism());
    writeFileSync(join(v2, 'cpu.max'), '50000 100000\n');
    expect(cpuBudget(v2)).toBe(1);

    const v1 = tmp();
    mkdirSync(join(v1, 'cpu'));
    writeFileSync(join(v1, 'cpu', 'cpu.cfs_quota_us'), '-1\n');
    writeFileSync(join(v1, 'cpu', 'cpu.cfs_period_us'), '100000\n');
    expect(cgroupQuota(v1)).toBeUndefined();
    writeFileSync(join(v1, 'cpu', 'cpu.cfs_quota_us'), '100000\n');
    expect(cpuBudget(v1)).toBe(1);
    expect(cgroupQuota(join(v1, 'none'))).toBeUndefined();

    expect(workerCount('auto', () => 3)).toBe(3);
    expect(workerCount(5, () => 3)).toBe(5);
    rmSync(v1, { recursive: true });
    rmSync(v2, { recursive: true });
  });

  it('a worker builds its configuration from the bytes the primary read, whatever the disk holds by then', () => {
    const dir = tmp();
    const file = join(dir, 'config.yaml');
    writeFileSync(join(dir, 'ranges.txt'), '203.0.113.0/24\n');
    writeFileSync(file, LISTEN + 'policy:\n  rules:\n    - name: r\n      ip_ranges: [file:ranges.txt]\n      ports: [443]\n');
    const { value, files } = recordReads(() => loadConfigSource(file));
    expect(files.map(([p]) => p)).toEqual(expect.arrayContaining([file, join(dir, 'ranges.txt')]));
    writeFileSync(join(dir, 'ranges.txt'), '198.51.100.0/24\n');
    rmSync(file);
    const replayed = replayReads(files, () => loadConfigSource(file)).config;
    expect(replayed.policy.rules[0]!.cidrs).toBe(value.config.policy.rules[0]!.cidrs);
    expect(replayed.policy.rules[0]!.fixed.map((c) => c.text)).toEqual(['203.0.113.0/24']);
    // Nothing is recorded or replayed outside the scope.
    expect(() => loadConfigSource(file)).toThrow(ConfigError);
    rmSync(dir, { recursive: true });
  });
});
