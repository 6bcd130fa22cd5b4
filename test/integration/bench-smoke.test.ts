import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cleanEnv } from '../helpers.js';

/**
 * The benchmark's smoke mode (direct, wa-egress and wa-egress-w2, then the
 * forward phase with direct and wa-egress; tiny counts, seconds),
 * so that bench/ cannot rot. The full run (`npm run bench`) is not part of
 * the test suite.
 */

const ROOT = resolve(import.meta.dirname, '../..');

interface Peer {
  status: string;
  reason?: string;
  errors?: Record<string, string>;
  throughput?: { tunnels_1: { mib_per_s: number }; tunnels_8: { mib_per_s: number }; cpu_s_per_gib: number | null };
  handshakes?: { count: number; per_sec: number; errors: number };
  latency?: { samples: number; p50_ms: number; p99_ms: number; errors: number };
  memory?: { points: { target: number; tunnels: number; rss_kib: number; fds: number }[]; slope_kib_per_tunnel: number | null };
  dns?: { count: number; per_sec: number; errors: number; queries_per_handshake: number };
  ratios?: Record<string, { vs_direct: number | null }>;
  spread?: { sched: string; workers: number; total: Record<string, number>; share: string };
}

interface ForwardPeer {
  status: string;
  reason?: string;
  errors?: Record<string, string>;
  throughput?: { conns_1: { mib_per_s: number }; conns_8: { mib_per_s: number }; cpu_s_per_gib: number | null };
  connections?: { count: number; per_sec: number; errors: number };
  memory?: { points: { target: number; conns: number; rss_kib: number; fds: number }[]; slope_kib_per_conn: number | null };
}

interface Results {
  mode: string;
  machine: { nproc: number; cpu_model: string; kernel: string };
  versions: Record<string, string>;
  policy: {
    names: number;
    cidrs: number;
    decide: { per_sec: number; p99_ns: number };
    hostname: { per_sec: number; p99_ns: number };
    verdicts: Record<string, number>;
  };
  peers: Record<string, Peer>;
  forward: { peers: Record<string, ForwardPeer> };
}

function runBench(out: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [join(ROOT, 'bench/run.mjs'), '--smoke', '--out', out], {
      cwd: ROOT,
      // No proxy variables: the bench's clients talk to its own peers on loopback only.
      env: cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', fail);
    child.on('exit', (code) => done({ code, stdout, stderr }));
  });
}

describe('bench --smoke', () => {
  it('runs direct, wa-egress and two workers through every phase and writes sane results', { timeout: 150_000 }, async () => {
    const out = mkdtempSync(join(tmpdir(), 'wa-egress-bench-smoke-test-'));
    onTestFinished(() => rmSync(out, { recursive: true, force: true }));
    const { code, stdout, stderr } = await runBench(out);
    expect(code, stderr).toBe(0);
    expect(stdout.trim()).toBe(join(out, 'results.json'));

    const r = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as Results;
    expect(r.mode).toBe('smoke');
    expect(r.machine.nproc).toBeGreaterThan(0);
    expect(Object.keys(r.peers)).toEqual(['direct', 'wa-egress', 'wa-egress-w2']);

    // The policy microbenchmark on the real data.
    expect(r.policy.names).toBe(2094);
    expect(r.policy.cidrs).toBe(229);
    // Rates are the benchmark's business, not a test's: that it measured something is enough here.
    expect(r.policy.decide.per_sec).toBeGreaterThan(0);
    expect(r.policy.hostname.per_sec).toBeGreaterThan(0);
    expect(r.policy.verdicts.allow_by_hostname).toBeGreaterThan(0);

    for (const name of ['direct', 'wa-egress', 'wa-egress-w2']) {
      const p = r.peers[name]!;
      expect(p.status, `${name}: ${p.reason}`).toBe('ok');
      expect(p.errors, name).toBeUndefined();
      expect(p.throughput!.tunnels_1.mib_per_s, name).toBeGreaterThan(0);
      expect(p.throughput!.tunnels_8.mib_per_s, name).toBeGreaterThan(0);
      expect(p.handshakes!.count, name).toBeGreaterThan(0);
      expect(p.handshakes!.errors, name).toBe(0);
      expect(p.latency!.samples, name).toBeGreaterThan(10);
      expect(p.latency!.p99_ms, name).toBeGreaterThanOrEqual(p.latency!.p50_ms);
      expect(p.latency!.errors, name).toBe(0);
      expect(p.dns!.count, name).toBeGreaterThan(0);
      expect(p.dns!.errors, name).toBe(0);
    }

    const w = r.peers['wa-egress']!;
    // Idle tunnels: all opened and held, two descriptors each in the proxy.
    expect(w.memory!.points).toHaveLength(3);
    for (const pt of w.memory!.points) {
      expect(pt.tunnels).toBe(pt.target);
      expect(pt.rss_kib).toBeGreaterThan(0);
      expect(pt.fds).toBeGreaterThanOrEqual(2 * pt.tunnels);
    }
    expect(Number.isFinite(w.memory!.slope_kib_per_tunnel)).toBe(true);
    expect(w.throughput!.cpu_s_per_gib).toBeGreaterThan(0);
    // wa-egress resolves through the bench DNS server, A and AAAA, and caches the
    // answers for their TTL: at most two queries per handshake, fewer once cached.
    expect(w.dns!.queries_per_handshake).toBeGreaterThanOrEqual(0);
    expect(w.dns!.queries_per_handshake).toBeLessThanOrEqual(2);
    expect(w.ratios!['handshakes.per_sec']!.vs_direct).toBeGreaterThan(0);

    // Two workers, round robin: the audit ids name the worker of every connection, and both took some.
    const w2 = r.peers['wa-egress-w2']!;
    expect(w2.spread!.sched).toBe('rr');
    expect(Object.keys(w2.spread!.total).sort()).toEqual(['1', '2']);
    const spreadTotal = Object.values(w2.spread!.total).reduce((a, b) => a + b, 0);
    // Each counted handshake left its record (the warm-up's last and those in flight at the end may add a few).
    expect(spreadTotal).toBeGreaterThanOrEqual(Math.floor(0.9 * w2.handshakes!.count));
    for (const n of Object.values(w2.spread!.total)) expect(n).toBeGreaterThan(0);
    expect(w2.spread!.share).toMatch(/^\d+\/\d+$/);

    // The forward phase: direct and wa-egress's forward listeners.
    expect(Object.keys(r.forward.peers)).toEqual(['direct', 'wa-egress']);
    for (const name of ['direct', 'wa-egress']) {
      const f = r.forward.peers[name]!;
      expect(f.status, `${name}: ${f.reason}`).toBe('ok');
      expect(f.errors, name).toBeUndefined();
      expect(f.throughput!.conns_1.mib_per_s, name).toBeGreaterThan(0);
      expect(f.throughput!.conns_8.mib_per_s, name).toBeGreaterThan(0);
      expect(f.connections!.count, name).toBeGreaterThan(0);
      expect(f.connections!.errors, name).toBe(0);
    }
    const fw = r.forward.peers['wa-egress']!;
    expect(fw.memory!.points).toHaveLength(3);
    for (const pt of fw.memory!.points) {
      expect(pt.conns).toBe(pt.target);
      expect(pt.fds).toBeGreaterThanOrEqual(2 * pt.conns);
    }

    const md = readFileSync(join(out, 'RESULTS.md'), 'utf8');
    expect(md).toContain('# wa-egress benchmark results');
    expect(md).toContain('| wa-egress |');
    expect(md).toContain('### Raw TCP forwards');
    expect(md).toContain('#### Spread: connections per worker');
    expect(existsSync(join(out, 'results.json'))).toBe(true);
  });
});
