// The forward phase of the benchmark: raw TCP forwards side by side:
// wa-egress's `listen.forwards` (one process and two workers), HAProxy in
// `mode tcp` with and without splice, socat, and direct (no forward: the
// limit). Peers are in bench/peers.mjs (FORWARD_PEERS); run.mjs calls
// `phaseForward` after the CONNECT phases and puts its result in
// results.forward; report.mjs renders it.
//
// Every forward peer listens once per sink listener it relays to: the two
// load sinks' `source` (throughput) and `close` (connections per second)
// listeners, and the `echo` listener of a sink of its own (idle connections,
// each peer with its own holder client too, so that no process nears the
// descriptor cap).

import { join } from 'node:path';
import {
  Child,
  foreignMeter,
  median,
  round,
  settleRss,
  sleep,
  slope,
  spread,
  sum,
  treeCpuSeconds,
  treeFdCount,
  treePssKiB,
  treeRssKiB,
  treeThreads,
} from './lib.mjs';
import { FORWARD_PEERS } from './peers.mjs';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** The load a forward peer relays: index i of a peer's ports relays to targets[i]. */
function targetsFor(env, memSink) {
  const t = [];
  env.sinks.forEach((s) => t.push({ kind: 'source', port: s.info.ports.source }));
  env.sinks.forEach((s) => t.push({ kind: 'close', port: s.info.ports.close }));
  if (memSink) t.push({ kind: 'echo', port: memSink.info.ports.echo });
  return t;
}

const portsOf = (run, kind) => run.targets.flatMap((t, i) => (t.kind === kind ? [run.ports[i]] : []));
const addr = (port) => ({ host: '127.0.0.1', port, addr: '127.0.0.1' });

async function throughput(run, ctx) {
  const { env, P } = ctx;
  const sources = portsOf(run, 'source');
  const out = { cpu_s: 0, bytes: 0 };
  for (const streams of [1, 8]) {
    const targets = Array.from({ length: streams }, (_, i) => addr(sources[i % sources.length]));
    const procs = streams === 1 ? 1 : Math.min(2, env.clients.length);
    const groups = Array.from({ length: procs }, (_, k) => targets.filter((_, i) => i % procs === k));
    const cpu0 = run.pid ? treeCpuSeconds(run.pid) : 0;
    const rs = await Promise.all(groups.map((g, k) => env.clients[k].call('throughput', { proxy: null, targets: g, durationMs: P.durationMs })));
    const cpu1 = run.pid ? treeCpuSeconds(run.pid) : 0;
    const window = Math.max(...rs.map((r) => r.seconds));
    out[`conns_${streams}`] = sum(rs.map((r) => r.bytes)) / MiB / window;
    out.cpu_s += cpu1 - cpu0;
    out.bytes += sum(rs.map((r) => r.totalBytes));
  }
  ctx.log(`  forward throughput: 1 connection ${out.conns_1.toFixed(0)} MiB/s, 8 connections ${out.conns_8.toFixed(0)} MiB/s`);
  return out;
}

/** Connections per second: open, one byte up and echoed, the sink closes. */
async function connections(run, ctx, warm) {
  const { env, P } = ctx;
  const targets = portsOf(run, 'close').map(addr);
  const go = (durationMs) =>
    Promise.all(
      env.clients.map((c, k) =>
        c.call('handshakes', { proxy: null, targets, concurrency: P.concurrency, durationMs, payloadSize: 1, offset: k * 7919 }),
      ),
    );
  if (!warm) await go(P.warmupMs);
  const cpu0 = run.pid ? treeCpuSeconds(run.pid) : 0;
  const rs = await go(P.durationMs);
  const cpu_s = run.pid ? treeCpuSeconds(run.pid) - cpu0 : 0;
  const count = sum(rs.map((r) => r.count));
  const r = {
    count,
    per_sec: count / (Math.max(...rs.map((x) => x.elapsedMs)) / 1000),
    errors: sum(rs.map((x) => x.errors)),
    first_error: rs.find((x) => x.firstError)?.firstError,
    cpu_s,
  };
  ctx.log(`  forward connections: ${r.per_sec.toFixed(0)}/s${r.errors ? `, ${r.errors} errors (${r.first_error})` : ''}`);
  return r;
}

/**
 * Idle connections through every forward peer at once, at each count in
 * P.forwardConns; RSS (and PSS, which counts a page shared by socat's
 * forked relays once) after all have rested P.idleMs.
 */
async function memory(runs, ctx) {
  const { P, log } = ctx;
  const measured = runs.filter((r) => r.pid);
  for (const run of measured) run.mem.state = { baseline: await settleRss(run.pid, P.settleMaxMs), points: [], errors: 0 };
  for (const level of P.forwardConns) {
    for (const run of measured) {
      const st = run.mem.state;
      if (run.child && run.child.exitCode !== null) continue;
      log(`${run.name} (forward): ${level} idle connections`);
      try {
        const held = (await run.mem.client.call('status')).held;
        const r = await run.mem.client.call('open', {
          proxy: null,
          targets: portsOf(run, 'echo').map(addr),
          count: Math.max(0, level - held),
          concurrency: P.openConcurrency,
        });
        st.errors += r.errors;
        st.firstError ??= r.firstError;
        const status = await run.mem.client.call('status');
        st.points.push({ target: level, conns: status.held, rss_open_kib: await settleRss(run.pid, P.settleMaxMs) });
      } catch (err) {
        run.res.errors.memory ??= err.message.split('\n')[0];
      }
    }
    await sleep(P.idleMs);
    for (const run of measured) {
      const pt = run.mem.state.points.at(-1);
      if (!pt || pt.target !== level) continue;
      pt.rss_kib = treeRssKiB(run.pid);
      pt.pss_kib = treePssKiB(run.pid);
      const after = await run.mem.client.call('status').catch(() => null);
      if (after) pt.conns = after.held;
      pt.fds = treeFdCount(run.pid);
      pt.threads = treeThreads(run.pid);
      log(`  ${run.name} (forward): ${pt.conns} idle connections: RSS ${(pt.rss_kib / 1024).toFixed(1)} MiB, PSS ${(pt.pss_kib / 1024).toFixed(1)} MiB`);
    }
  }
  for (const run of measured) {
    await run.mem.sink.call('closeEcho').catch(() => {});
    await run.mem.client.call('release', {}).catch(() => {});
    const st = run.mem.state;
    const pts = st.points.filter((p) => p.rss_kib !== undefined);
    if (pts.length < 2) continue;
    run.res.memory = {
      baseline_rss_kib: st.baseline,
      idle_s: P.idleMs / 1000,
      points: pts,
      slope_kib_per_conn: round(slope(pts.map((p) => ({ x: p.conns, y: p.rss_kib }))), 3),
      pss_slope_kib_per_conn: round(slope(pts.map((p) => ({ x: p.conns, y: p.pss_kib }))), 3),
      slope_when_opened_kib_per_conn: round(slope(pts.map((p) => ({ x: p.conns, y: p.rss_open_kib }))), 3),
      errors: st.errors,
      first_error: st.firstError,
    };
  }
}

function aggregate(run) {
  const { raw, res } = run;
  const hasPid = Boolean(run.pid);
  if (raw.throughput.length) {
    const t = raw.throughput;
    res.throughput = {
      conns_1: { mib_per_s: round(median(t.map((x) => x.conns_1)), 1), rounds: spread(t.map((x) => x.conns_1)) },
      conns_8: { mib_per_s: round(median(t.map((x) => x.conns_8)), 1), rounds: spread(t.map((x) => x.conns_8)) },
      cpu_s_per_gib: hasPid ? round(sum(t.map((x) => x.cpu_s)) / (sum(t.map((x) => x.bytes)) / GiB), 3) : null,
      gib_moved: round(sum(t.map((x) => x.bytes)) / GiB, 2),
    };
  }
  if (raw.connections.length) {
    const c = raw.connections;
    const count = sum(c.map((x) => x.count));
    res.connections = {
      per_sec: round(median(c.map((x) => x.per_sec)), 0),
      rounds: spread(c.map((x) => x.per_sec)),
      count,
      errors: sum(c.map((x) => x.errors)),
      first_error: c.find((x) => x.first_error)?.first_error,
      cpu_us_per_conn: hasPid ? round((sum(c.map((x) => x.cpu_s)) * 1e6) / Math.max(1, count), 1) : null,
    };
  }
  res.foreign_cpu_cores = round(run.foreign / Math.max(1e-9, run.wall), 2);
}

/** Ratios of every forward peer to HAProxy (without splice) and to the better HAProxy, and to direct. */
function forwardRatios(peers) {
  const get = (o, path) => path.split('.').reduce((x, k) => (x == null ? undefined : x[k]), o);
  const metrics = {
    'throughput.conns_1.mib_per_s': 'higher',
    'throughput.conns_8.mib_per_s': 'higher',
    'throughput.cpu_s_per_gib': 'lower',
    'connections.per_sec': 'higher',
    'connections.cpu_us_per_conn': 'lower',
    'memory.slope_kib_per_conn': 'lower',
  };
  const hap = ['haproxy', 'haproxy-splice'].filter((n) => peers[n]?.status === 'ok');
  for (const [name, r] of Object.entries(peers)) {
    if (r.status !== 'ok') continue;
    r.ratios = {};
    for (const [path, better] of Object.entries(metrics)) {
      const v = get(r, path);
      if (typeof v !== 'number') continue;
      const h = get(peers.haproxy, path);
      const hs = hap.map((n) => get(peers[n], path)).filter((x) => typeof x === 'number');
      const best = hs.length ? (better === 'higher' ? Math.max(...hs) : Math.min(...hs)) : undefined;
      const d = get(peers.direct, path);
      const q = (x) => (typeof x === 'number' && x !== 0 ? round(v / x, 3) : null);
      r.ratios[path] = { vs_haproxy: q(h), vs_haproxy_best: q(best), vs_direct: q(d), better };
    }
  }
}

/**
 * The whole forward phase. ctx: { P, env (sinks, clients, dir, dnsZone...),
 * log, children (the run's set of things to kill on exit), install, peerNames }.
 */
export async function phaseForward(ctx) {
  const { P, env, log, children, install, peerNames } = ctx;
  const out = { peers: {}, params: { conns: P.forwardConns, idle_s: P.idleMs / 1000 } };
  const runs = [];
  for (const peer of FORWARD_PEERS.filter((p) => peerNames.includes(p.name))) {
    const avail = peer.available({ install, log });
    if (!avail.ok) {
      out.peers[peer.name] = { status: 'skipped', reason: avail.reason, version: `not available: ${avail.reason}` };
      log(`${peer.name} (forward): skipped (${avail.reason})`);
      continue;
    }
    const res = { status: 'ok', version: peer.version(), errors: {} };
    out.peers[peer.name] = res;
    let mem;
    if (peer.name !== 'direct') {
      const [client, sink] = await Promise.all([Child.fork(join(ctx.here, 'client.mjs')), Child.fork(join(ctx.here, 'sink.mjs'))]);
      children.add(client);
      children.add(sink);
      mem = { client, sink };
    }
    const targets = targetsFor(env, mem?.sink);
    let proc;
    try {
      proc = await peer.start(env, targets);
    } catch (err) {
      out.peers[peer.name] = { status: 'failed', reason: `start: ${err.message}`, version: res.version };
      log(`${peer.name} (forward): failed to start: ${err.message}`);
      for (const c of mem ? [mem.client, mem.sink] : []) {
        await c.stop();
        children.delete(c);
      }
      continue;
    }
    if (proc.child) children.add(proc);
    log(`${peer.name} (forward): ${res.version}${proc.pid ? `, pid ${proc.pid}` : ''}`);
    runs.push({
      name: peer.name,
      proc,
      pid: proc.pid,
      child: proc.child,
      ports: proc.ports,
      targets,
      mem,
      res,
      raw: { throughput: [], connections: [] },
      foreign: 0,
      wall: 0,
    });
  }

  const guarded = async (run, name, fn) => {
    if (run.child && run.child.exitCode !== null) {
      run.res.errors[name] ??= `the forward process exited (${run.child.exitCode})`;
      return null;
    }
    try {
      return await fn();
    } catch (err) {
      run.res.errors[name] ??= err.message.split('\n')[0];
      log(`  forward ${name} failed: ${run.res.errors[name]}`);
      return null;
    }
  };

  log(`forward: idle connections ${P.forwardConns.join(', ')}, ${P.idleMs / 1000} s idle at each`);
  await memory(runs, ctx);
  for (let r = 0; r < P.rounds; r++) {
    for (const run of runs) {
      log(`${run.name} (forward): round ${r + 1} of ${P.rounds}`);
      const meter = foreignMeter();
      const t = await guarded(run, 'throughput', () => throughput(run, ctx));
      if (t) run.raw.throughput.push(t);
      const c = await guarded(run, 'connections', () => connections(run, ctx, r > 0));
      if (c) run.raw.connections.push(c);
      const m = meter();
      run.foreign += m.foreign;
      run.wall += m.wall;
    }
  }
  for (const run of runs) {
    aggregate(run);
    if (run.res.foreign_cpu_cores > 0.1) log(`${run.name} (forward): other processes used ${run.res.foreign_cpu_cores} cores on average`);
    if (run.pid) run.res.cpu_s_total = round(treeCpuSeconds(run.pid), 2);
    await run.proc.stop();
    children.delete(run.proc);
    for (const c of run.mem ? [run.mem.client, run.mem.sink] : []) {
      await c.stop();
      children.delete(c);
    }
    if (Object.keys(run.res.errors).length === 0) delete run.res.errors;
  }
  forwardRatios(out.peers);
  return out;
}
