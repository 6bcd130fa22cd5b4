// Shared helpers for the benchmark: child processes with a request/response
// IPC channel, free ports, waiting for a listener, and /proc readings of a
// whole process tree (RSS and CPU time).

import { fork } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import net from 'node:net';

export const CLK_TCK = 100; // USER_HZ on Linux (getconf CLK_TCK)

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A port free on 127.0.0.1 for a peer whose config must name its port
 * (squid, haproxy...). Chosen below the kernel's ephemeral range, where no
 * port-0 bind lands, so it cannot be taken by a test or a client socket
 * running beside the bench between this check and the peer's bind.
 */
export async function freePort() {
  let lo = 32768;
  try {
    lo = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || lo;
  } catch {
    // not Linux: the default range's start
  }
  const top = Math.min(lo, 32768);
  const base = Math.max(1024, top - 12_000);
  for (let i = 0; i < 50; i++) {
    const port = base + Math.floor(Math.random() * (top - base));
    const free = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port below the ephemeral range');
}

/** Resolve once something accepts TCP connections on host:port. */
export async function waitForPort(port, host = '127.0.0.1', timeoutMs = 15_000, isAlive = () => true) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, host);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (!isAlive()) throw new Error(`process exited before listening on ${host}:${port}`);
    if (Date.now() > deadline) throw new Error(`nothing listening on ${host}:${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
 * A forked Node child that answers `{id, op, ...}` messages with
 * `{id, ok, result|error}`; its first message is `{ready, ...info}`.
 */
export class Child {
  static async fork(script, args = [], { execArgv = [], env } = {}) {
    const proc = fork(script, args, {
      execArgv,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: env ?? process.env,
    });
    const c = new Child(proc);
    c.info = await new Promise((resolve, reject) => {
      const onExit = (code) => reject(new Error(`${script} exited with ${code} before it was ready`));
      proc.once('exit', onExit);
      proc.once('message', (m) => {
        proc.removeListener('exit', onExit);
        if (m && m.ready) resolve(m);
        else reject(new Error(`${script}: unexpected first message ${JSON.stringify(m)}`));
      });
    });
    proc.on('message', (m) => c.onMessage(m));
    return c;
  }

  constructor(proc) {
    this.proc = proc;
    this.pid = proc.pid;
    this.seq = 0;
    this.pending = new Map();
    this.exited = false;
    proc.on('exit', (code, signal) => {
      this.exited = true;
      for (const { reject } of this.pending.values()) reject(new Error(`child ${this.pid} exited (${code ?? signal})`));
      this.pending.clear();
    });
  }

  onMessage(m) {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.ok) p.resolve(m.result);
    else p.reject(new Error(m.error));
  }

  call(op, args = {}) {
    if (this.exited) return Promise.reject(new Error(`child ${this.pid} has exited`));
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.proc.send({ id, op, ...args });
    });
  }

  async stop() {
    if (this.exited) return;
    const gone = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(t);
  }
}

/** The child side of `Child`: register handlers, then announce readiness. */
export function serveIpc(handlers, info = {}) {
  process.on('message', async (m) => {
    const h = handlers[m.op];
    if (!h) return process.send({ id: m.id, ok: false, error: `unknown op ${m.op}` });
    try {
      process.send({ id: m.id, ok: true, result: await h(m) });
    } catch (err) {
      process.send({ id: m.id, ok: false, error: String(err?.stack ?? err) });
    }
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ ready: true, ...info });
}

// ---------------------------------------------------------------- /proc

function childrenOf(pid) {
  const out = [];
  let tasks;
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    try {
      const text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (text) out.push(...text.split(/\s+/).map(Number));
    } catch {
      // task gone, or the kernel lacks the children file: fall back below
    }
  }
  return out;
}

/** Parent map from /proc/<pid>/stat, for kernels without task/<tid>/children. */
function allParents() {
  const parents = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parents.set(Number(name), Number(rest[1]));
    } catch {
      // gone
    }
  }
  return parents;
}

/** The pid and all its descendants. */
export function processTree(pid) {
  const tree = [pid];
  let viaChildren = true;
  for (let i = 0; i < tree.length; i++) {
    const kids = childrenOf(tree[i]);
    if (i === 0 && kids.length === 0) viaChildren = false;
    tree.push(...kids);
  }
  if (viaChildren) return [...new Set(tree)];
  // Either no children, or no children file: check with the parent map.
  const parents = allParents();
  const out = [pid];
  for (let i = 0; i < out.length; i++) for (const [p, pp] of parents) if (pp === out[i]) out.push(p);
  return [...new Set(out)];
}

function statusField(pid, field) {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** VmRSS of the whole tree, KiB. */
export function treeRssKiB(pid) {
  return processTree(pid).reduce((sum, p) => sum + statusField(p, 'VmRSS'), 0);
}

/** Threads of the whole tree. */
export function treeThreads(pid) {
  return processTree(pid).reduce((sum, p) => sum + statusField(p, 'Threads'), 0);
}

/** utime+stime (+ reaped children's) of the whole tree, seconds. */
export function treeCpuSeconds(pid) {
  let ticks = 0;
  for (const p of processTree(pid)) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields 14..17 of stat; f[0] is field 3
      ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    } catch {
      // gone
    }
  }
  return ticks / CLK_TCK;
}

/** utime+stime of one process alone (its threads, not its children), seconds. */
export function ownCpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/**
 * PSS of the whole tree, KiB: each page shared by several processes counts
 * once in all, split among them (RSS counts it in each). Fairer than RSS for
 * a peer that forks a process per connection (socat).
 */
export function treePssKiB(pid) {
  let kib = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${p}/smaps_rollup`, 'utf8'));
      if (m) kib += Number(m[1]);
    } catch {
      // gone, or no smaps_rollup
    }
  }
  return kib;
}

/** Busy CPU time of the whole machine (all cores), seconds. */
export function machineBusySeconds() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal ...
  return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / CLK_TCK;
}

/** Open file descriptors of the whole tree (a cluster's workers, socat's forked relays). */
export function treeFdCount(pid) {
  return processTree(pid).reduce((n, p) => n + fdCount(p), 0);
}

/** Open file descriptors of one process. */
export function fdCount(pid) {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------- stats

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/** Least-squares slope of y over x. */
export function slope(points) {
  const n = points.length;
  if (n < 2) return NaN;
  const mx = points.reduce((s, p) => s + p.x, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.x - mx) * (p.y - my);
    den += (p.x - mx) ** 2;
  }
  return den === 0 ? NaN : num / den;
}

export const sum = (xs) => xs.reduce((a, b) => a + b, 0);
export const round = (x, d = 2) => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : null);
export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};
/** The lowest and highest of the rounds, when there are several. */
export const spread = (xs) => (xs.length > 1 ? [round(Math.min(...xs), 1), round(Math.max(...xs), 1)] : undefined);

/** RSS of the tree once it has stopped changing (at most maxMs). */
export async function settleRss(pid, maxMs) {
  await sleep(Math.min(500, maxMs));
  const end = Date.now() + maxMs;
  let prev = treeRssKiB(pid);
  let stable = 0;
  while (Date.now() < end) {
    await sleep(250);
    const cur = treeRssKiB(pid);
    stable = Math.abs(cur - prev) <= prev * 0.005 ? stable + 1 : 0;
    prev = cur;
    if (stable >= 2) break;
  }
  return prev;
}

/** CPU used on the machine by processes outside this bench: other work skews every figure. */
export function foreignMeter() {
  const t0 = Date.now();
  const busy0 = machineBusySeconds();
  const own0 = treeCpuSeconds(process.pid);
  return () => ({
    wall: (Date.now() - t0) / 1000,
    foreign: Math.max(0, machineBusySeconds() - busy0 - (treeCpuSeconds(process.pid) - own0)),
  });
}

// ---------------------------------------------------------------- audit log

/** Size of the audit file once the primary has written what it was sent (it writes in batches). */
export async function auditSettled(file) {
  const size = () => {
    try {
      return statSync(file).size;
    } catch {
      return 0;
    }
  };
  let last = size();
  for (let i = 0, stable = 0; i < 50 && stable < 3; i++) {
    await sleep(100);
    const cur = size();
    stable = cur === last ? stable + 1 : 0;
    last = cur;
  }
  return last;
}

/** Connections each worker took between two offsets of the audit file: the workerId of `<boot>.<workerId>-<seq>`. */
export function auditWorkers(file, from, to) {
  const counts = {};
  if (to <= from) return counts;
  const buf = Buffer.alloc(to - from);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, buf, 0, buf.length, from);
  } finally {
    closeSync(fd);
  }
  for (const line of buf.toString('utf8').split('\n')) {
    if (!line.includes('"egress.allowed"')) continue;
    let rec;
    try {
      rec = JSON.parse(line);
    } catch {
      continue; // a line cut at either end
    }
    if (rec.event !== 'egress.allowed') continue;
    const m = /\.(\d+)-\d+$/.exec(String(rec.id));
    const w = m ? m[1] : 'unknown';
    counts[w] = (counts[w] ?? 0) + 1;
  }
  return counts;
}

