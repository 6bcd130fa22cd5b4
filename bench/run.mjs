#!/usr/bin/env node
// wa-egress benchmark: the same load through direct (no proxy: the limit),
// wa-egress (one process, and two workers under either cluster scheduling
// policy), squid, tinyproxy, proxy-chain and `proxy`, side by side; then raw
// TCP forwards: wa-egress's forward listeners beside HAProxy and socat.
//
//   node bench/run.mjs            full run (a few minutes); writes bench/RESULTS.md and bench/results.json
//   node bench/run.mjs --smoke    seconds; direct and wa-egress only, tiny counts, no apt-get;
//                                 writes into a temp dir unless --out is given
//
// Options: --peers a,b,...  --out DIR  --duration SECONDS (per measurement)  --rounds N  --tunnels 2000,5000,9000
//          --clients N  --sinks N  --no-install  --profile (wa-egress under --cpu-prof)  --keep (temp dir)
//          --phases memory,throughput,handshakes,latency,dns,forward (a subset, while working on one figure)
//          --forward-peers a,b,... (the forward phase's peers: direct, wa-egress, wa-egress-w2, haproxy,
//          haproxy-splice, socat; bench/forward.mjs)  --no-primary-profile
//          --idle SECONDS (how long idle tunnels rest before RSS is read; 30 in a full run)
//
// Needs `npm run build` first (wa-egress runs as `node dist/cli.js serve`).
// Only loopback is used: every listener binds 127.0.0.1.

import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { auditSettled, auditWorkers, Child, foreignMeter, median, ownCpuSeconds, percentile, round, settleRss, sleep, slope, spread, sum, treeCpuSeconds, treeFdCount, treeRssKiB, treeThreads } from './lib.mjs';
import { phaseForward } from './forward.mjs';
import { ALL_PEERS, FORWARD_PEERS, waEgressW2 } from './peers.mjs';
import { summarizeProfile, topEntries } from './profile-summary.mjs';
import { renderMarkdown } from './report.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');

const { values: opt } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    peers: { type: 'string' },
    out: { type: 'string' },
    duration: { type: 'string' },
    rounds: { type: 'string' },
    tunnels: { type: 'string' },
    clients: { type: 'string' },
    sinks: { type: 'string' },
    'no-install': { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    phases: { type: 'string' },
    idle: { type: 'string' },
    'forward-peers': { type: 'string' },
    'forward-conns': { type: 'string' },
    'no-primary-profile': { type: 'boolean', default: false },
  },
});

const SMOKE = opt.smoke;
const P = SMOKE
  ? {
      durationMs: 500,
      warmupMs: 150,
      latencyCount: 150,
      latencyMs: 1000,
      tunnels: [30, 60, 120],
      clients: 2,
      sinks: 1,
      concurrency: 4,
      openConcurrency: 8,
      policySeconds: 0.2,
      dnsNames: 20,
      rounds: 1,
      settleMaxMs: 300,
      idleMs: 200,
      forwardConns: [20, 40, 80],
    }
  : {
      durationMs: 2500,
      warmupMs: 1000,
      latencyCount: 3000,
      latencyMs: 2500,
      rounds: 3,
      tunnels: [2000, 5000, 9000],
      clients: 2,
      sinks: 2,
      concurrency: 8,
      openConcurrency: 32,
      policySeconds: 2,
      dnsNames: 1000,
      settleMaxMs: 5000,
      idleMs: 30_000,
      forwardConns: [1000, 2500, 4000],
    };
if (opt.duration) P.durationMs = Number(opt.duration) * 1000;
if (opt.rounds) P.rounds = Number(opt.rounds);
if (opt.tunnels) P.tunnels = opt.tunnels.split(',').map(Number);
if (opt.clients) P.clients = Number(opt.clients);
if (opt.sinks) P.sinks = Number(opt.sinks);
if (opt.idle) P.idleMs = Number(opt.idle) * 1000;
if (opt['forward-conns']) P.forwardConns = opt['forward-conns'].split(',').map(Number);

const peerNames = opt.peers ? opt.peers.split(',') : SMOKE ? ['direct', 'wa-egress', 'wa-egress-w2'] : ALL_PEERS.map((p) => p.name);
const unknown = peerNames.filter((n) => !ALL_PEERS.some((p) => p.name === n));
if (unknown.length) {
  process.stderr.write(`bench: unknown peer(s) ${unknown.join(', ')}; known: ${ALL_PEERS.map((p) => p.name).join(', ')}\n`);
  process.exit(2);
}
if (!peerNames.includes('direct')) peerNames.unshift('direct'); // every ratio needs the limit
const install = !SMOKE && !opt['no-install'];
const PHASES = ['memory', 'throughput', 'handshakes', 'latency', 'dns', 'forward'];
const phases = new Set(opt.phases ? opt.phases.split(',') : PHASES);
const unknownPhases = [...phases].filter((p) => !PHASES.includes(p));
if (unknownPhases.length) {
  process.stderr.write(`bench: unknown phase(s) ${unknownPhases.join(', ')}; known: ${PHASES.join(', ')}\n`);
  process.exit(2);
}

const forwardPeerNames = opt['forward-peers'] ? opt['forward-peers'].split(',') : SMOKE ? ['direct', 'wa-egress'] : FORWARD_PEERS.map((p) => p.name);
const unknownFwd = forwardPeerNames.filter((n) => !FORWARD_PEERS.some((p) => p.name === n));
if (unknownFwd.length) {
  process.stderr.write(`bench: unknown forward peer(s) ${unknownFwd.join(', ')}; known: ${FORWARD_PEERS.map((p) => p.name).join(', ')}\n`);
  process.exit(2);
}
if (!forwardPeerNames.includes('direct')) forwardPeerNames.unshift('direct');

const outDir = opt.out ?? (SMOKE ? mkdtempSync(join(os.tmpdir(), 'wa-egress-bench-smoke-')) : here);
mkdirSync(outDir, { recursive: true });

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const started = Date.now();
const log = (msg) => process.stderr.write(`[bench ${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

if (!existsSync(join(root, 'dist/cli.js'))) {
  process.stderr.write('bench: dist/cli.js is missing; run `npm run build` first\n');
  process.exit(2);
}

// Everything we start, so that an interrupted run leaves nothing behind.
const children = new Set();
const stopAll = () => {
  for (const c of children) {
    try {
      if (c.kill) c.kill();
      else (c.proc ?? c.child)?.kill('SIGKILL');
    } catch {
      // gone
    }
  }
};
process.on('exit', stopAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    stopAll();
    process.exit(130);
  });
}

const tmp = mkdtempSync(join(os.tmpdir(), 'wa-egress-bench-'));
chmodSync(tmp, 0o755); // squid and tinyproxy run as unprivileged users below it

// ------------------------------------------------------------------ machine
function machine() {
  const mem = /MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'));
  const nofile = /Max open files\s+(\S+)\s+(\S+)/.exec(readFileSync('/proc/self/limits', 'utf8'));
  let model = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) model = m[1].trim();
  } catch {
    // keep os.cpus()
  }
  return {
    nproc: os.availableParallelism?.() ?? os.cpus().length,
    cpu_model: model,
    memory_gib: mem ? Math.round((Number(mem[1]) / MiB) * 10) / 10 : null,
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    nofile_soft: nofile?.[1],
    nofile_hard: nofile?.[2],
    loadavg_at_start: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

// ------------------------------------------------------------------ phases

function latencyStats(latUs) {
  const s = Float64Array.from(latUs).sort();
  return {
    samples: s.length,
    p50_ms: round(percentile(s, 50) / 1000, 4),
    p99_ms: round(percentile(s, 99) / 1000, 4),
    mean_ms: round(sum(s) / s.length / 1000, 4),
  };
}

/**
 * Idle tunnels, every peer side by side: each has its own holder client and
 * echo sink (so no process nears the descriptor cap). At each level every
 * peer is brought to that many tunnels, then all stay idle together for
 * `idleMs` before RSS is read: a gateway holds tunnels for days, and a
 * Node.js heap only gives back what the opening burst allocated once V8's
 * memory reducer runs, some twenty seconds after allocation stops. RSS right
 * after opening is kept too.
 */
async function phaseMemory(runs, env) {
  const measured = runs.filter((r) => r.proc.pid);
  const state = new Map();
  for (const run of measured) {
    state.set(run, { baseline: await settleRss(run.proc.pid, P.settleMaxMs), points: [], opened: 0, errors: 0, firstError: undefined, mem: env.memory.get(run.peer.name) });
  }
  for (const level of P.tunnels) {
    for (const run of measured) {
      if (run.proc.child && run.proc.child.exitCode !== null) continue;
      const st = state.get(run);
      const { client, sink } = st.mem;
      const targets = [{ host: run.penv.targetHost, port: sink.info.ports.echo, addr: '127.0.0.1' }];
      log(`${run.peer.name}: ${level} idle tunnels`);
      try {
        const r = await client.call('open', { proxy: run.proxy, targets, count: Math.max(0, level - st.opened), concurrency: P.openConcurrency });
        st.errors += r.errors;
        st.firstError ??= r.firstError;
        const status = await client.call('status');
        st.opened = status.held;
        st.points.push({ target: level, tunnels: status.held, rss_open_kib: await settleRss(run.proc.pid, P.settleMaxMs), dropped: status.dropped });
      } catch (err) {
        run.res.errors.memory ??= err.message.split('\n')[0];
      }
    }
    await sleep(P.idleMs);
    for (const run of measured) {
      const st = state.get(run);
      const pt = st.points.at(-1);
      if (!pt || pt.target !== level) continue;
      pt.rss_kib = treeRssKiB(run.proc.pid);
      // Tunnels that closed while idle are not counted as held (nor hidden).
      const after = await st.mem.client.call('status').catch(() => null);
      if (after) {
        pt.tunnels = after.held;
        pt.dropped = after.dropped;
        st.opened = after.held;
      }
      pt.fds = treeFdCount(run.proc.pid);
      pt.threads = treeThreads(run.proc.pid);
      log(
        `  ${run.peer.name}: ${pt.tunnels} idle tunnels: RSS ${(pt.rss_open_kib / 1024).toFixed(1)} MiB when opened, ` +
          `${(pt.rss_kib / 1024).toFixed(1)} MiB after ${P.idleMs / 1000} s idle, ${pt.fds} fds` +
          `${pt.dropped ? `, ${pt.dropped} closed while idle` : ''}${st.errors ? `, ${st.errors} errors (${st.firstError})` : ''}`,
      );
    }
  }
  for (const run of measured) {
    const st = state.get(run);
    await st.mem.sink.call('closeEcho').catch(() => {});
    await st.mem.client.call('release', {}).catch(() => {});
    const pts = st.points.filter((p) => p.rss_kib !== undefined);
    if (pts.length < 2) continue;
    const k = slope(pts.map((p) => ({ x: p.tunnels, y: p.rss_kib })));
    const kOpen = slope(pts.map((p) => ({ x: p.tunnels, y: p.rss_open_kib })));
    const last = pts.at(-1);
    run.res.memory = {
      baseline_rss_kib: st.baseline,
      idle_s: P.idleMs / 1000,
      points: pts,
      slope_kib_per_tunnel: round(k, 3),
      slope_when_opened_kib_per_tunnel: round(kOpen, 3),
      projected_50k_mib: round((last.rss_kib + k * (50_000 - last.tunnels)) / 1024, 1),
      errors: st.errors,
      first_error: st.firstError,
    };
  }
}

// The phases below return raw figures for one round; `aggregate` combines
// the rounds (medians of rates, pooled latency samples, summed CPU and bytes).

async function phaseThroughput(env, proxy, pid, workers) {
  const out = { cpu_s: 0, bytes: 0, primary_cpu_s: 0 };
  for (const streams of [1, 8]) {
    const targets = Array.from({ length: streams }, (_, i) => {
      const s = env.sinks[i % env.sinks.length];
      return { host: env.targetHost, port: s.info.ports.source, addr: '127.0.0.1' };
    });
    const procs = streams === 1 ? 1 : Math.min(2, env.clients.length);
    const groups = Array.from({ length: procs }, (_, k) => targets.filter((_, i) => i % procs === k));
    const cpu0 = pid ? treeCpuSeconds(pid) : 0;
    const own0 = workers > 1 ? ownCpuSeconds(pid) : 0;
    const rs = await Promise.all(groups.map((g, k) => env.clients[k].call('throughput', { proxy, targets: g, durationMs: P.durationMs })));
    const cpu1 = pid ? treeCpuSeconds(pid) : 0;
    if (workers > 1) out.primary_cpu_s += ownCpuSeconds(pid) - own0;
    const window = Math.max(...rs.map((r) => r.seconds));
    out[`tunnels_${streams}`] = sum(rs.map((r) => r.bytes)) / MiB / window;
    out.cpu_s += cpu1 - cpu0;
    out.bytes += sum(rs.map((r) => r.totalBytes));
  }
  log(`  throughput: 1 tunnel ${out.tunnels_1.toFixed(0)} MiB/s, 8 tunnels ${out.tunnels_8.toFixed(0)} MiB/s`);
  return out;
}

async function handshakes(env, proxy, targets, durationMs, { dnsServer } = {}) {
  const rs = await Promise.all(
    env.clients.map((c, k) =>
      c.call('handshakes', { proxy, targets, concurrency: P.concurrency, durationMs, offset: k * 7919, dnsServer }),
    ),
  );
  const count = sum(rs.map((r) => r.count));
  const seconds = Math.max(...rs.map((r) => r.elapsedMs)) / 1000;
  return {
    count,
    per_sec: count / seconds,
    errors: sum(rs.map((r) => r.errors)),
    first_error: rs.find((r) => r.firstError)?.firstError,
    latUs: rs.flatMap((r) => r.latUs),
  };
}

async function phaseHandshakes(env, proxy, proc, warm) {
  const { pid, workers = 1, auditFile } = proc;
  const targets = env.sinks.map((s) => ({ host: env.targetHost, port: s.info.ports.close, addr: '127.0.0.1' }));
  if (!warm) await handshakes(env, proxy, targets, P.warmupMs); // JIT, pools, caches
  const spreadOf = workers > 1 && auditFile;
  const from = spreadOf ? await auditSettled(auditFile) : 0;
  const cpu0 = pid ? treeCpuSeconds(pid) : 0;
  const own0 = workers > 1 ? ownCpuSeconds(pid) : 0;
  const r = await handshakes(env, proxy, targets, P.durationMs);
  r.cpu_s = pid ? treeCpuSeconds(pid) - cpu0 : 0;
  if (workers > 1) r.primary_cpu_s = ownCpuSeconds(pid) - own0;
  if (spreadOf) r.workers = auditWorkers(auditFile, from, await auditSettled(auditFile));
  log(
    `  handshakes: ${r.per_sec.toFixed(0)}/s${r.errors ? `, ${r.errors} errors (${r.first_error})` : ''}` +
      `${r.workers ? `; per worker ${Object.entries(r.workers).map(([w, n]) => `${w}: ${n}`).join(', ')}` : ''}`,
  );
  return r;
}

async function phaseLatency(env, proxy, pid, warm) {
  const target = { host: env.targetHost, port: env.sinks[0].info.ports.close, addr: '127.0.0.1' };
  if (!warm) await env.clients[0].call('latency', { proxy, target, count: 100, durationMs: 1000 });
  const r = await env.clients[0].call('latency', { proxy, target, count: P.latencyCount, durationMs: P.latencyMs });
  const s = latencyStats(r.latUs);
  log(`  latency (one at a time): p50 ${s.p50_ms} ms, p99 ${s.p99_ms} ms over ${s.samples}`);
  return r;
}

async function phaseDns(env, proxy, peer, warm) {
  const ports = env.sinks.map((s) => s.info.ports.close);
  const targets = Array.from({ length: P.dnsNames }, (_, i) => ({ host: `n${i}.${env.dnsZone}`, port: ports[i % ports.length], addr: null }));
  const dnsServer = peer === 'direct' ? env.dnsServer : undefined;
  if (!warm) await handshakes(env, proxy, targets, P.warmupMs, { dnsServer });
  const q0 = (await env.dns.call('queries')).queries;
  const r = await handshakes(env, proxy, targets, P.durationMs, { dnsServer });
  r.queries = (await env.dns.call('queries')).queries - q0;
  delete r.latUs;
  log(`  DNS handshakes: ${r.per_sec.toFixed(0)}/s, ${(r.queries / Math.max(1, r.count)).toFixed(2)} queries each${r.errors ? `, ${r.errors} errors (${r.first_error})` : ''}`);
  return r;
}

/** Which peers can take part in the DNS phase, and why not. */
function dnsSupport(peer, env) {
  if (peer === 'direct') return { ok: true, how: 'the client resolves through the bench DNS server (A and AAAA), then connects' };
  if (peer.startsWith('wa-egress')) return { ok: true, how: 'dns.servers points at the bench DNS server' };
  if (peer === 'squid') {
    return env.dnsServer.endsWith(':53')
      ? { ok: true, how: 'dns_nameservers 127.0.0.1 (the bench DNS server on port 53)' }
      : { ok: false, reason: 'the bench DNS server could not bind port 53, and squid takes no port in dns_nameservers' };
  }
  return { ok: false, reason: 'resolves with the system resolver only (/etc/resolv.conf); cannot be pointed at the bench DNS server without changing the machine' };
}

/** Combine the rounds of one peer into its reported figures. */
function aggregate(run) {
  const { raw, res, proc } = run;
  const hasPid = Boolean(proc.pid);
  if (raw.throughput.length) {
    const t = raw.throughput;
    const cpu = sum(t.map((x) => x.cpu_s));
    const bytes = sum(t.map((x) => x.bytes));
    res.throughput = {
      tunnels_1: { mib_per_s: round(median(t.map((x) => x.tunnels_1)), 1), rounds: spread(t.map((x) => x.tunnels_1)) },
      tunnels_8: { mib_per_s: round(median(t.map((x) => x.tunnels_8)), 1), rounds: spread(t.map((x) => x.tunnels_8)) },
      cpu_s_per_gib: hasPid ? round(cpu / (bytes / GiB), 3) : null,
      gib_moved: round(bytes / GiB, 2),
    };
    if (proc.workers > 1) res.throughput.primary_cpu_s_per_gib = round(sum(t.map((x) => x.primary_cpu_s)) / (bytes / GiB), 4);
  }
  if (raw.handshakes.length) {
    const h = raw.handshakes;
    const count = sum(h.map((x) => x.count));
    res.handshakes = {
      per_sec: round(median(h.map((x) => x.per_sec)), 0),
      rounds: spread(h.map((x) => x.per_sec)),
      count,
      errors: sum(h.map((x) => x.errors)),
      first_error: h.find((x) => x.first_error)?.first_error,
      cpu_us_per_handshake: hasPid ? round((sum(h.map((x) => x.cpu_s)) * 1e6) / count, 1) : null,
      under_load: latencyStats(h.flatMap((x) => x.latUs)),
    };
    if (proc.workers > 1) {
      // The primary's own share of the tree's CPU, and how the connections spread over the workers.
      const primary = sum(h.map((x) => x.primary_cpu_s ?? 0));
      res.handshakes.primary_cpu_us_per_handshake = round((primary * 1e6) / count, 1);
      res.handshakes.workers_cpu_us_per_handshake = round(((sum(h.map((x) => x.cpu_s)) - primary) * 1e6) / count, 1);
      const per = h.filter((x) => x.workers);
      if (per.length) {
        const total = {};
        for (const x of per) for (const [w, n] of Object.entries(x.workers)) total[w] = (total[w] ?? 0) + n;
        // Worker ids start at 1; one that took nothing still shows (as 0).
        const share = (c) => {
          const n = sum(Object.values(c));
          const ids = new Set([...Array.from({ length: proc.workers }, (_, i) => String(i + 1)), ...Object.keys(c)]);
          return [...ids]
            .sort((a, b) => Number(a) - Number(b))
            .map((w) => round((100 * (c[w] ?? 0)) / Math.max(1, n), 0))
            .join('/');
        };
        res.spread = { sched: proc.sched, workers: proc.workers, total, share: share(total), rounds: per.map((x) => ({ counts: x.workers, share: share(x.workers) })) };
      }
    }
  }
  if (raw.latency.length) {
    const l = raw.latency;
    res.latency = {
      ...latencyStats(l.flatMap((x) => x.latUs)),
      rounds_p50_ms: l.map((x) => latencyStats(x.latUs).p50_ms),
      errors: sum(l.map((x) => x.errors)),
      first_error: l.find((x) => x.firstError)?.firstError,
    };
  }
  if (raw.dns.length) {
    const d = raw.dns;
    const count = sum(d.map((x) => x.count));
    res.dns = {
      per_sec: round(median(d.map((x) => x.per_sec)), 0),
      rounds: spread(d.map((x) => x.per_sec)),
      count,
      errors: sum(d.map((x) => x.errors)),
      first_error: d.find((x) => x.first_error)?.first_error,
      dns_queries: sum(d.map((x) => x.queries)),
      queries_per_handshake: round(sum(d.map((x) => x.queries)) / Math.max(1, count), 3),
      how: run.dnsHow,
    };
  } else if (run.dnsSkipped) res.dns = { skipped: run.dnsSkipped };
  res.foreign_cpu_cores = round(run.foreign / Math.max(1e-9, run.wall), 2);
  if (res.foreign_cpu_cores > 0.1) log(`${res.name}: other processes used ${res.foreign_cpu_cores} cores on average while it was measured`);
  delete res.name;
}

/** Run one phase of one peer, recording an error instead of stopping the bench. */
async function guarded(run, name, fn) {
  if (run.proc.child && run.proc.child.exitCode !== null) {
    run.res.errors[name] ??= `the proxy process exited (${run.proc.child.exitCode})`;
    return null;
  }
  try {
    return await fn();
  } catch (err) {
    run.res.errors[name] ??= err.message.split('\n')[0];
    log(`  ${name} failed: ${run.res.errors[name]}`);
    return null;
  }
}

async function startPeer(peer, env) {
  const res = { status: 'ok', version: peer.version(), name: peer.name, errors: {} };
  let proc;
  try {
    proc = await peer.start(env);
  } catch (err) {
    return { res: { status: 'failed', reason: `start: ${err.message}`, version: res.version } };
  }
  if (proc.child) children.add(proc);
  res.target_host = proc.targetHost;
  const dns = dnsSupport(peer.name, env);
  return {
    peer,
    proc,
    res,
    penv: { ...env, targetHost: proc.targetHost },
    proxy: proc.port ? { host: '127.0.0.1', port: proc.port } : null,
    raw: { throughput: [], handshakes: [], latency: [], dns: [] },
    dnsHow: dns.ok ? dns.how : undefined,
    dnsSkipped: dns.ok ? undefined : dns.reason,
    foreign: 0,
    wall: 0,
  };
}

/** One round of the load phases for one peer. */
async function peerRound(run, round) {
  const { penv, proxy, proc, raw, peer } = run;
  const warm = round > 0;
  const meter = foreignMeter();
  const add = (list, r) => r && list.push(r);
  if (phases.has('throughput')) add(raw.throughput, await guarded(run, 'throughput', () => phaseThroughput(penv, proxy, proc.pid, proc.workers)));
  if (phases.has('handshakes')) add(raw.handshakes, await guarded(run, 'handshakes', () => phaseHandshakes(penv, proxy, proc, warm)));
  if (phases.has('latency')) add(raw.latency, await guarded(run, 'latency', () => phaseLatency(penv, proxy, proc.pid, warm)));
  if (run.dnsHow && phases.has('dns')) add(raw.dns, await guarded(run, 'dns', () => phaseDns(penv, proxy, peer.name, warm)));
  const m = meter();
  run.foreign += m.foreign;
  run.wall += m.wall;
}

async function stopPeer(run) {
  if (run.proc.pid) {
    run.res.final_rss_kib = treeRssKiB(run.proc.pid);
    run.res.cpu_s_total = round(treeCpuSeconds(run.proc.pid), 2);
  }
  await run.proc.stop();
  children.delete(run.proc);
  if (Object.keys(run.res.errors).length === 0) delete run.res.errors;
}

// ------------------------------------------------------------------ ratios

function ratios(results) {
  const get = (peer, path) => path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), results.peers[peer]);
  const metrics = {
    'throughput.tunnels_1.mib_per_s': { better: 'higher', direct: true },
    'throughput.tunnels_8.mib_per_s': { better: 'higher', direct: true },
    'throughput.cpu_s_per_gib': { better: 'lower', direct: false },
    'handshakes.per_sec': { better: 'higher', direct: true },
    'latency.added_p50_ms': { better: 'lower', direct: false },
    'latency.added_p99_ms': { better: 'lower', direct: false },
    'memory.slope_kib_per_tunnel': { better: 'lower', direct: false },
    'memory.projected_50k_mib': { better: 'lower', direct: false },
    'dns.per_sec': { better: 'higher', direct: true },
  };
  const directLat = results.peers.direct?.latency;
  for (const [name, r] of Object.entries(results.peers)) {
    if (r.latency && directLat && name !== 'direct') {
      r.latency.added_p50_ms = round(r.latency.p50_ms - directLat.p50_ms, 4);
      r.latency.added_p99_ms = round(r.latency.p99_ms - directLat.p99_ms, 4);
    }
  }
  for (const name of Object.keys(results.peers)) {
    const r = results.peers[name];
    if (r.status !== 'ok') continue;
    r.ratios = {};
    for (const [path, m] of Object.entries(metrics)) {
      const v = get(name, path);
      if (typeof v !== 'number') continue;
      const d = m.direct ? get('direct', path) : undefined;
      const s = name === 'squid' ? undefined : get('squid', path);
      r.ratios[path] = {
        vs_direct: typeof d === 'number' && d !== 0 ? round(v / d, 3) : null,
        vs_squid: typeof s === 'number' && s !== 0 ? round(v / s, 3) : name === 'squid' ? 1 : null,
        better: m.better,
      };
    }
  }
}

function targets(results) {
  const w = results.peers['wa-egress'];
  const sq = results.peers.squid?.status === 'ok' ? results.peers.squid : null;
  if (!w || w.status !== 'ok') return [];
  const rt = (p) => w.ratios?.[p] ?? {};
  const list = [];
  const add = (target, value, pass) => list.push({ target, value, pass: pass === null ? null : Boolean(pass) });
  const ge = (x, y) => (typeof x === 'number' && typeof y === 'number' ? x >= y : null);
  const le = (x, y) => (typeof x === 'number' && typeof y === 'number' ? x <= y : null);
  for (const n of [1, 8]) {
    const p = `throughput.tunnels_${n}.mib_per_s`;
    add(`throughput (${n} tunnel${n > 1 ? 's' : ''}) ≥ 1.0× squid`, rt(p).vs_squid, sq ? ge(rt(p).vs_squid, 1) : null);
    add(`throughput (${n} tunnel${n > 1 ? 's' : ''}) ≥ 0.75× direct`, rt(p).vs_direct, ge(rt(p).vs_direct, 0.75));
  }
  add('CONNECT handshakes/s ≥ squid', rt('handshakes.per_sec').vs_squid, sq ? ge(rt('handshakes.per_sec').vs_squid, 1) : null);
  add('CONNECT handshakes/s ≥ 0.75× direct', rt('handshakes.per_sec').vs_direct, ge(rt('handshakes.per_sec').vs_direct, 0.75));
  add('added handshake latency p50 ≤ 0.1 ms', w.latency?.added_p50_ms, le(w.latency?.added_p50_ms, 0.1));
  add('added handshake latency p99 ≤ 1 ms', w.latency?.added_p99_ms, le(w.latency?.added_p99_ms, 1));
  add('≤ 5 KiB RSS per idle tunnel', w.memory?.slope_kib_per_tunnel, le(w.memory?.slope_kib_per_tunnel, 5));
  add('≤ 250 MiB projected for 50,000 idle tunnels', w.memory?.projected_50k_mib, le(w.memory?.projected_50k_mib, 250));
  const pol = results.policy;
  add('≥ 1,000,000 hostname-rule decisions/s', round(pol?.hostname?.per_sec, 0), ge(pol?.hostname?.per_sec, 1e6));
  add('hostname decision ≤ 1 µs (p99)', pol?.hostname ? round(pol.hostname.p99_ns / 1000, 3) : null, pol?.hostname ? pol.hostname.p99_ns <= 1000 : null);
  add('full decide() ≥ 1,000,000/s', round(pol?.decide?.per_sec, 0), ge(pol?.decide?.per_sec, 1e6));
  return list;
}

/** The targets of issue 11 (scale out): handshakes at squid's cost, forwards at HAProxy's speed. */
function targetsScaleOut(results) {
  const list = [];
  const ok = (n) => (results.peers[n]?.status === 'ok' ? results.peers[n] : null);
  const sq = ok('squid');
  const add = (target, value, against, pass) => list.push({ target, value, against, pass: pass === null ? null : Boolean(pass) });
  const cmp = (x, y, f) => (typeof x === 'number' && typeof y === 'number' && y !== 0 ? { ratio: round(x / y, 3), pass: f(x / y) } : { ratio: null, pass: null });
  for (const name of ['wa-egress', 'wa-egress-w2', 'wa-egress-w2-none']) {
    const w = ok(name);
    if (!w) continue;
    const cpu = cmp(w.handshakes?.cpu_us_per_handshake, sq?.handshakes?.cpu_us_per_handshake, (r) => r <= 1);
    add(`CONNECT handshake CPU µs ≤ squid (${name})`, { ours: w.handshakes?.cpu_us_per_handshake, theirs: sq?.handshakes?.cpu_us_per_handshake }, 'squid', cpu.pass);
    list.at(-1).ratio = cpu.ratio;
    const hs = cmp(w.handshakes?.per_sec, sq?.handshakes?.per_sec, (r) => r >= 1);
    add(`CONNECT handshakes/s ≥ squid (${name})`, { ours: w.handshakes?.per_sec, theirs: sq?.handshakes?.per_sec }, 'squid', hs.pass);
    list.at(-1).ratio = hs.ratio;
  }
  const fwd = results.forward?.peers ?? {};
  const hap = ['haproxy', 'haproxy-splice'].filter((n) => fwd[n]?.status === 'ok');
  for (const name of ['wa-egress', 'wa-egress-w2']) {
    const w = fwd[name]?.status === 'ok' ? fwd[name] : null;
    if (!w) continue;
    for (const n of [1, 8]) {
      const path = `conns_${n}`;
      const best = hap.length ? Math.max(...hap.map((h) => fwd[h].throughput?.[path]?.mib_per_s ?? -Infinity)) : undefined;
      const bestName = hap.find((h) => fwd[h].throughput?.[path]?.mib_per_s === best);
      const c = cmp(w.throughput?.[path]?.mib_per_s, Number.isFinite(best) ? best : undefined, (r) => r >= 1);
      add(`forward throughput, ${n} connection${n > 1 ? 's' : ''}, ≥ HAProxy's best (${name})`, { ours: w.throughput?.[path]?.mib_per_s, theirs: Number.isFinite(best) ? best : null }, bestName ?? 'haproxy', c.pass);
      list.at(-1).ratio = c.ratio;
    }
  }
  return list;
}

/** Where a sample of the primary's profile belongs, from its stack (innermost first). */
function primaryCategory(labels) {
  const has = (re) => labels.some((l) => re.test(l));
  if (labels[0] === '(idle)') return '(idle)';
  if (has(/round_robin_handle/)) return 'round-robin handoff: accept, send the connection to a worker, take its ack';
  if (has(/dist\/audit-/)) return 'audit log: write the records the workers sent';
  if (has(/channel\.onread|parseChannelMessages|onInternalMessage|dist\/ops\/cluster\.js/)) return 'IPC from the workers: read, decode, dispatch';
  if (labels[0] === '(garbage collector)') return 'garbage collector';
  if (labels[0] === '(program)') return '(program): native code outside JavaScript';
  return 'other';
}

/**
 * A CPU profile of a two-worker cluster's primary under the handshake load:
 * a separate wa-egress-w2 started with --cpu-prof (its workers inherit the
 * flag and are profiled too; only the primary's profile is summarised), a
 * warm-up and one measurement, then stopped so that it writes its profile.
 */
async function profilePrimary(env) {
  const dir = join(tmp, 'primary-profile');
  const profileDir = join(dir, 'profiles');
  mkdirSync(profileDir, { recursive: true });
  chmodSync(dir, 0o755);
  const penv = { ...env, dir, profileDir, targetHost: 'sink.bench' };
  const proc = await waEgressW2.start(penv);
  children.add(proc);
  const proxy = { host: '127.0.0.1', port: proc.port };
  const targets = env.sinks.map((s) => ({ host: 'sink.bench', port: s.info.ports.close, addr: '127.0.0.1' }));
  try {
    await handshakes(penv, proxy, targets, P.warmupMs);
    const own0 = ownCpuSeconds(proc.pid);
    const fromUs = Number(process.hrtime.bigint() / 1000n);
    const r = await handshakes(penv, proxy, targets, P.durationMs);
    const toUs = Number(process.hrtime.bigint() / 1000n);
    const primaryCpu = ownCpuSeconds(proc.pid) - own0;
    await proc.stop();
    children.delete(proc);
    const mine = readdirSync(proc.profileDir).filter((f) => f.includes(`.${proc.pid}.`));
    if (!mine.length) return { error: `no profile of the primary (pid ${proc.pid}) in ${proc.profileDir}` };
    const prof = JSON.parse(readFileSync(join(proc.profileDir, mine[0]), 'utf8'));
    // Only the measured window: not the start (module loading) nor the warm-up.
    const inWindow = prof.startTime <= toUs && prof.endTime >= fromUs;
    const { totalUs, self, incl, categories } = summarizeProfile(prof, { ...(inWindow ? { fromUs, toUs } : {}), categorize: primaryCategory });
    const idle = self.get('(idle)') ?? 0;
    const busy = totalUs - idle;
    const entry = ([fn, us]) => ({ fn, ms: round(us / 1000, 1), pct_of_busy: round((100 * us) / Math.max(1, busy), 1) });
    const out = {
      window: inWindow ? 'the measured handshakes only' : 'the whole process (its clock did not match the bench\'s)',
      handshakes: r.count,
      per_sec: round(r.per_sec, 0),
      primary_cpu_us_per_handshake: round((primaryCpu * 1e6) / Math.max(1, r.count), 1),
      sampled_s: round(totalUs / 1e6, 2),
      busy_s: round(busy / 1e6, 2),
      categories: topEntries(categories, 10, (k) => k !== '(idle)').map(([fn, us]) => ({ ...entry([fn, us]), category: fn, fn: undefined })),
      self_top: topEntries(self, 12, (k) => k !== '(idle)').map(entry),
      dist_top: topEntries(incl, 8, (k) => k.includes('dist/')).map(entry),
    };
    log(`primary profile: ${out.busy_s} s busy of ${out.sampled_s} s; top: ${out.self_top.slice(0, 3).map((e) => `${e.fn} ${e.pct_of_busy}%`).join(', ')}`);
    return out;
  } finally {
    if (children.has(proc)) {
      await proc.stop();
      children.delete(proc);
    }
  }
}

// ------------------------------------------------------------------ main

async function main() {
  const results = {
    date: new Date().toISOString(),
    mode: SMOKE ? 'smoke' : 'full',
    machine: machine(),
    params: { ...P },
    versions: {},
    peers: {},
  };
  log(`${results.mode} run; peers: ${peerNames.join(', ')}; temp dir ${tmp}`);

  log('policy microbenchmark');
  try {
    const out = execFileSync(process.execPath, [join(here, 'policy.mjs'), '--seconds', String(P.policySeconds)], {
      encoding: 'utf8',
      maxBuffer: 16 * MiB,
    });
    results.policy = JSON.parse(out.trim().split('\n').at(-1));
    log(
      `  decide: ${Math.round(results.policy.decide.per_sec)}/s (p99 ${results.policy.decide.p99_ns} ns); ` +
        `hostname: ${Math.round(results.policy.hostname.per_sec)}/s (p99 ${results.policy.hostname.p99_ns} ns)`,
    );
  } catch (err) {
    results.policy = { error: err.message.split('\n')[0] };
    log(`  failed: ${results.policy.error}`);
  }

  const env = { dir: tmp, dnsZone: 'dns.bench', profileDir: opt.profile ? join(outDir, 'profiles') : undefined };
  if (env.profileDir) mkdirSync(env.profileDir, { recursive: true });
  env.sinks = await Promise.all(Array.from({ length: P.sinks }, () => Child.fork(join(here, 'sink.mjs'))));
  env.sinks.forEach((c) => children.add(c));
  env.memory = new Map();
  if (phases.has('memory')) {
    for (const name of peerNames.filter((n) => n !== 'direct')) {
      const [client, sink] = await Promise.all([Child.fork(join(here, 'client.mjs')), Child.fork(join(here, 'sink.mjs'))]);
      children.add(client);
      children.add(sink);
      env.memory.set(name, { client, sink });
    }
  }
  env.sinkPorts = [...env.sinks, ...[...env.memory.values()].map((m) => m.sink)].flatMap((s) => Object.values(s.info.ports));
  env.dns = await Child.fork(join(here, 'dns-server.mjs'), [env.dnsZone, '300', SMOKE ? '0' : '53']);
  children.add(env.dns);
  env.dnsServer = env.dns.info.server;
  env.clients = await Promise.all(Array.from({ length: P.clients }, () => Child.fork(join(here, 'client.mjs'))));
  env.clients.forEach((c) => children.add(c));
  log(`${P.sinks} sink process(es), ${P.clients} client process(es), DNS server ${env.dnsServer}`);

  // Every available peer is started up front (idle ones cost no CPU). Memory
  // is measured on each in turn while it is fresh; then the load phases run
  // in rounds that visit every peer, so that other work on the machine
  // spreads over all of them alike; the rounds are combined.
  const runs = [];
  for (const name of peerNames) {
    const peer = ALL_PEERS.find((p) => p.name === name);
    const avail = peer.available({ install, log });
    results.versions[name] = avail.ok ? peer.version() : `not available: ${avail.reason}`;
    if (!avail.ok) {
      results.peers[name] = { status: 'skipped', reason: avail.reason };
      log(`${name}: skipped (${avail.reason})`);
      continue;
    }
    const run = await startPeer(peer, env);
    results.peers[name] = run.res;
    if (run.res.status !== 'ok') log(`${name}: ${run.res.status}: ${run.res.reason}`);
    else {
      log(`${name}: ${results.versions[name]}${run.proc.pid ? `, pid ${run.proc.pid}, port ${run.proc.port}` : ''}`);
      runs.push(run);
    }
  }
  if (phases.has('memory')) {
    log(`idle tunnels: ${P.tunnels.join(', ')}, ${P.idleMs / 1000} s idle at each`);
    await phaseMemory(runs, env);
  }
  for (let round = 0; round < P.rounds; round++) {
    for (const run of runs) {
      log(`${run.peer.name}: round ${round + 1} of ${P.rounds}`);
      await peerRound(run, round);
    }
  }
  for (const run of runs) {
    aggregate(run);
    await stopPeer(run);
  }
  if (!SMOKE && !opt['no-primary-profile'] && phases.has('handshakes') && runs.some((r) => r.peer.name === 'wa-egress-w2')) {
    log('wa-egress-w2 under --cpu-prof: the primary\'s CPU under the handshake load');
    try {
      results.primary_profile = await profilePrimary(env);
    } catch (err) {
      results.primary_profile = { error: err.message.split('\n')[0] };
      log(`  failed: ${results.primary_profile.error}`);
    }
  }
  if (phases.has('forward')) {
    log(`forward listeners: ${forwardPeerNames.join(', ')}`);
    results.forward = await phaseForward({ P, env, log, children, install, peerNames: forwardPeerNames, here });
    for (const [n, p] of Object.entries(results.forward.peers)) results.versions[`forward ${n}`] = p.version;
  }
  results.versions.node = process.version;
  results.machine.loadavg_at_end = os.loadavg().map((x) => Math.round(x * 100) / 100);

  for (const c of [...env.clients, ...env.sinks, ...[...env.memory.values()].flatMap((m) => [m.client, m.sink]), env.dns]) {
    await c.stop();
    children.delete(c);
  }

  ratios(results);
  results.targets = targets(results);
  results.targets_scale_out = targetsScaleOut(results);
  results.elapsed_s = round((Date.now() - started) / 1000, 1);
  if (env.profileDir) results.profiles = readdirSync(env.profileDir).map((f) => join(env.profileDir, f));

  writeFileSync(join(outDir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(join(outDir, 'RESULTS.md'), renderMarkdown(results));
  log(`wrote ${join(outDir, 'RESULTS.md')} and results.json in ${results.elapsed_s} s`);
  if (!opt.keep) rmSync(tmp, { recursive: true, force: true });
  else log(`kept ${tmp}`);
  process.stdout.write(`${join(outDir, 'results.json')}\n`);
}

main().catch((err) => {
  process.stderr.write(`bench: ${err.stack ?? err}\n`);
  stopAll();
  process.exit(1);
});
