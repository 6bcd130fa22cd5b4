import { randomBytes } from 'node:crypto';
import cluster, { type Worker } from 'node:cluster';
import type { AddressInfo } from 'node:net';
import { AggregatorRegistry, Counter, Gauge } from 'prom-client';
import { FileSink } from '../audit-sink.js';
import type { ConfigSource } from '../config/load.js';
import type { FileSnapshot } from '../config/read.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import { AdminPlace } from './admin.js';
import type { ConfigBytes, FromWorker, MetricsJson, ToWorker } from './cluster-messages.js';
import { fromSource, publishConfigLoad } from './config-load.js';
import { workerCount } from './cpus.js';
import { MAX_TIMER_MS } from './drain.js';
import { Metrics } from './metrics.js';
import { Reloader, type ReloadTarget } from './reload.js';
import { startFailure } from './startup.js';

/**
 * `workers:` above 1: this process is the cluster's primary. It never
 * proxies. It validates the configuration (at start and on every reload)
 * and sends the bytes it read to every worker, so all run the same policy
 * and a configuration it refuses reaches none; it writes the audit log
 * (one writer: records of different workers never interleave, on a pipe
 * either); it serves the admin listener (/metrics sums the workers', /readyz
 * is 503 while any worker is not serving); it relays signals; and it
 * replaces a worker that dies. Listeners are shared with node:cluster: the
 * primary accepts and hands each connection to the next worker in turn
 * (round robin; NODE_CLUSTER_SCHED_POLICY=none lets the workers accept).
 */

/** How long a worker may take to answer a metrics scrape. */
const SCRAPE_MS = 5000;
/** A worker that dies sooner after its start is restarted after a growing delay (a crash loop). */
const HEALTHY_MS = 10_000;
const BACKOFF_MS = [0, 1000, 2000, 5000, 10_000, 30_000];
/** Beyond the drain's own bound: then workers still running are killed. */
const DRAIN_SLACK_MS = 30_000;

interface Member {
  worker: Worker;
  startedAt: number;
  ready: boolean;
  draining: boolean;
  /** Leaving on purpose (a drain, fewer workers): its exit is not a death. */
  leaving: boolean;
  /** Both exit and disconnect: every message it sent has been read. */
  gone: Promise<void>;
  /** The configuration it was sent last. */
  hash?: string;
  /** Its last metrics (a scrape's answer, or its goodbye). */
  metrics?: MetricsJson;
}

export interface PrimaryStart {
  loaded: ConfigSource;
  hash: string;
  snapshot: FileSnapshot;
}

/** `started` is called once the primary's signal handlers are in place; it returns a stop signal that came before. */
export async function runPrimary(start: PrimaryStart, log: Logger, started: () => string | undefined): Promise<void> {
  const { loaded } = start;
  let config: Config = loaded.config;
  let bytes: ConfigBytes = { file: loaded.file, snapshot: start.snapshot, hash: start.hash };
  const boot = randomBytes(3).toString('hex');
  const members = new Map<number, Member>();
  let wanted = workerCount(config.workers);
  let draining = false;
  let crashes = 0;
  let own: AddressInfo[] = [];
  /** A worker that did not exit cleanly during the stop: the primary's exit code says so. */
  let unclean = false;
  /** Counters and histograms of workers gone: sums of counters never go back when one leaves. */
  let retired: MetricsJson[] = [];

  let sink: FileSink;
  try {
    sink = new FileSink(config.audit.file, config.audit.on_error, log, (writable) => broadcast({ t: 'audit', writable }));
  } catch (err) {
    return startFailure(loaded, err, log);
  }

  const restarts = new Counter({ name: 'wa_egress_worker_restarts_total', help: 'Workers that died and were replaced', registers: [] });
  // A worker may be on its way out: a message it can no longer take is not an error of the primary's.
  const unsent = () => {};
  const sendTo = (m: Member, message: ToWorker) => {
    if (m.worker.isConnected()) m.worker.send(message, undefined, undefined, unsent);
  };
  function broadcast(message: ToWorker): void {
    for (const m of members.values()) sendTo(m, message);
  }

  // Replies to the primary's questions (reloads, scrapes), by sequence number.
  let seq = 0;
  const waiting = new Map<number, { left: Set<number>; answers: unknown[]; done: (answers: unknown[]) => void }>();
  function ask(make: (seq: number) => ToWorker, timeoutMs?: number): Promise<unknown[]> {
    const n = ++seq;
    const asked = [...members.values()].filter((m) => m.ready && m.worker.isConnected());
    if (asked.length === 0) return Promise.resolve([]);
    return new Promise((resolve) => {
      const entry = { left: new Set(asked.map((m) => m.worker.id)), answers: [] as unknown[], done: resolve };
      waiting.set(n, entry);
      for (const m of asked) sendTo(m, make(n));
      if (timeoutMs) setTimeout(() => finish(n), timeoutMs).unref();
    });
  }
  function answer(id: number, n: number, value: unknown): void {
    const entry = waiting.get(n);
    if (!entry?.left.delete(id)) return;
    entry.answers.push(value);
    if (entry.left.size === 0) finish(n);
  }
  function finish(n: number): void {
    const entry = waiting.get(n);
    if (!entry) return;
    waiting.delete(n);
    entry.done(entry.answers);
  }
  /** A worker that left answers no more questions. */
  function forget(id: number): void {
    for (const [n, entry] of waiting) if (entry.left.delete(id) && entry.left.size === 0) finish(n);
  }

  /** A worker gone: its counters and histograms stay in the sums (its gauges go with it). */
  function retire(m: Member): void {
    // (prom-client's types say a numeric enum; the JSON holds the type's name.)
    const kept = m.metrics?.filter((x) => ['counter', 'histogram'].includes(x.type as unknown as string));
    if (kept?.length) retired.push(kept);
  }

  /** Workers not on their way out. */
  const staying = () => [...members.values()].filter((m) => !m.leaving);

  cluster.setupPrimary({ serialization: 'advanced' });
  let first: { resolve: () => void; reject: (err: unknown) => void } | undefined;

  function fork(): Member {
    const worker = cluster.fork();
    let exited = false;
    let disconnected = false;
    let settle: () => void = () => {};
    const gone = new Promise<void>((r) => (settle = r));
    const m: Member = { worker, startedAt: Date.now(), ready: false, draining: false, leaving: draining, gone };
    members.set(worker.id, m);
    const check = () => exited && disconnected && settle();
    worker.on('disconnect', () => ((disconnected = true), check()));
    worker.on('error', (err) => log.debug({ err, worker: worker.id }, 'worker channel error'));
    worker.on('exit', (code, signal) => {
      exited = true;
      members.delete(worker.id);
      forget(worker.id);
      retire(m);
      check();
      if (draining && (code !== 0 || signal)) unclean = true;
      if (m.leaving || draining) return;
      if (first) return first.reject(new Error(`worker ${worker.id} exited while starting (code ${code}, signal ${signal})`));
      restarts.inc();
      const quick = Date.now() - m.startedAt < HEALTHY_MS;
      crashes = quick ? crashes + 1 : 0;
      const delay = BACKOFF_MS[Math.min(crashes, BACKOFF_MS.length - 1)]!;
      log.error({ worker: worker.id, worker_pid: worker.process.pid, code, signal, restart_in_ms: delay }, 'worker died; starting another');
      setTimeout(() => void (draining || staying().length >= wanted || fork()), delay);
    });
    worker.on('message', (msg: FromWorker) => {
      switch (msg.t) {
        case 'hello':
          // A drain or a resize while it was loading (its order came before it listened): it leaves unstarted.
          if (draining || m.leaving) return sendTo(m, { t: 'drain', signal: 'stop' });
          m.hash = bytes.hash;
          return sendTo(m, { t: 'start', ...bytes, idPrefix: `${boot}.${worker.id}`, own, writable: sink.writable, metrics: config.listen.admin !== undefined });
        case 'lines':
          for (const line of msg.lines) sink.write(line);
          return;
        case 'ready':
          m.ready = true;
          // A reload while it was starting reached the others only: it catches up (no answer is awaited).
          if (m.hash !== bytes.hash) {
            m.hash = bytes.hash;
            sendTo(m, { t: 'apply', seq: 0, ...bytes });
          }
          log.info({ worker: worker.id, worker_pid: worker.process.pid }, 'worker serving');
          if (first && [...members.values()].filter((x) => x.ready).length >= wanted) first.resolve();
          return;
        case 'failed':
          if (first) return first.reject(Object.assign(new Error(msg.error.message), msg.error));
          return void log.error({ worker: worker.id, err: msg.error }, 'worker could not start');
        case 'applied':
          if (msg.seq === 0 && msg.failed) {
            // A catch-up it could not apply: it drains, and its replacement starts with the configuration in force.
            log.error({ worker: worker.id, error: msg.failed }, 'worker cannot apply the configuration in force; replacing it');
            return sendTo(m, { t: 'drain', signal: 'reload' });
          }
          return answer(worker.id, msg.seq, msg);
        case 'metrics':
          m.metrics = msg.metrics;
          return answer(worker.id, msg.seq, msg.metrics);
        case 'draining':
          m.draining = true;
          return;
        case 'closed':
          if (msg.metrics) m.metrics = msg.metrics;
          return;
      }
    });
    return m;
  }

  log.info({ workers: wanted }, `starting ${wanted} workers`);
  try {
    await new Promise<void>((resolve, reject) => {
      first = { resolve, reject };
      for (let i = 0; i < wanted; i++) fork();
    });
  } catch (err) {
    draining = true;
    for (const m of members.values()) m.worker.process.kill('SIGKILL');
    sink.close();
    return startFailure(loaded, err, log);
  } finally {
    first = undefined;
  }

  /** Serving: a worker listens and none drains but those leaving on purpose (a replacement may be starting). */
  const ready = () => !draining && staying().some((m) => m.ready) && staying().every((m) => !m.draining);
  const ownMetrics = new Metrics({ audit: sink, config: true });
  ownMetrics.registry.registerMetric(restarts);
  new Gauge({
    name: 'wa_egress_workers',
    help: 'Worker processes, by state: serving, starting, draining',
    labelNames: ['state'],
    registers: [ownMetrics.registry],
    collect() {
      const n = { serving: 0, starting: 0, draining: 0 };
      for (const m of members.values()) n[m.draining || m.leaving ? 'draining' : m.ready ? 'serving' : 'starting']++;
      for (const [state, v] of Object.entries(n)) this.set({ state }, v);
    },
  });
  const clusterMetrics = {
    contentType: ownMetrics.contentType,
    text: async () => {
      // Answers land in each member's `metrics`; one that did not answer in time counts with its last.
      await ask((n) => ({ t: 'metrics', seq: n }), SCRAPE_MS);
      if (retired.length > 1) retired = [await AggregatorRegistry.aggregate(retired).getMetricsAsJSON()];
      const workers = [...members.values()].flatMap((m) => (m.metrics ? [m.metrics] : []));
      return AggregatorRegistry.aggregate([await ownMetrics.registry.getMetricsAsJSON(), ...retired, ...workers]).metrics();
    },
    close: () => {},
  };
  const admin = new AdminPlace(() => clusterMetrics, ready, (added, removed) => {
    own = own.filter((a) => a !== removed);
    if (added) own.push(added);
    broadcast({ t: 'own', own });
  }, log);
  try {
    await admin.start(config.listen.admin);
  } catch (err) {
    draining = true;
    broadcast({ t: 'drain', signal: 'SIGTERM' });
    broadcast({ t: 'drain', signal: 'SIGTERM' });
    await Promise.all([...members.values()].map((m) => m.gone));
    sink.close();
    return startFailure(loaded, Object.assign(err as Error, { listener: 'admin' }), log);
  }
  publishConfigLoad('ok', { hash: start.hash });

  /** More workers, or fewer (the newest drain and leave). */
  const resize = (count: number) => {
    if (count === wanted || draining) return;
    log.info({ from: wanted, to: count }, 'workers: changing the number of workers');
    wanted = count;
    const live = staying();
    for (let i = live.length; i < count; i++) fork();
    for (const m of live.slice(count).reverse()) {
      m.leaving = true;
      sendTo(m, { t: 'drain', signal: 'reload' });
    }
  };

  const target: ReloadTarget = {
    async apply(next) {
      // A cluster stays a cluster until restarted, also with workers: 1.
      if (next.config.listen.transparent && next.config.listen.transparent_mode === 'tproxy') {
        throw new Error('listen.transparent_mode: tproxy is served by one process, and this gateway runs workers: restart it with workers: 1');
      }
      // Workers that start meanwhile get `bytes` at their hello (or catch up at ready).
      const putInForce = (b: ConfigBytes) => {
        bytes = b;
        for (const m of members.values()) if (m.ready) m.hash = b.hash;
        return ask((n) => ({ t: 'apply', seq: n, ...b })) as Promise<Extract<FromWorker, { t: 'applied' }>[]>;
      };
      const was = bytes;
      const answers = await putInForce({ file: next.file, snapshot: next.snapshot, hash: next.hash });
      const failed = answers.flatMap((a) => (a.failed ? [a.failed] : []));
      if (failed.length) {
        // Refused by one, refused by all: those that took it go back.
        await putInForce(was);
        throw new Error(`${failed.join('; ')}; every worker keeps the running configuration`);
      }
      const problems: string[] = [];
      try {
        sink.configure(next.config.audit.file, next.config.audit.on_error);
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        problems.push(`audit.file: cannot open ${next.config.audit.file}: ${e.code ?? e.message}`);
        log.error({ err, file: next.config.audit.file }, 'cannot open the new audit destination; still writing to the old one');
      }
      config = next.config;
      await admin.move(next.config.listen.admin);
      resize(workerCount(next.config.workers));
      return [...new Set([...problems, ...answers.flatMap((a) => a.problems)])];
    },
    // Every worker has it: now open tunnels may be judged by it (reload.recheck_tunnels).
    settle: async () => broadcast({ t: 'recheck' }),
  };
  const reloader = new Reloader(target, fromSource(loaded), log);

  let stopping: Promise<void> | undefined;
  const stop = (signal: string) => {
    if (stopping) {
      log.info({ signal }, 'second signal: the workers close everything now');
      return broadcast({ t: 'drain', signal });
    }
    log.info({ signal, workers: members.size }, 'stopping: draining every worker');
    draining = true;
    reloader.stop();
    // Those already leaving (fewer workers) drain on as they were: this is not their second signal.
    for (const m of members.values()) if (!m.leaving) sendTo(m, { t: 'drain', signal });
    const { delay, drain_timeout } = config.shutdown;
    const guard = setTimeout(() => {
      for (const m of members.values()) {
        log.error({ worker: m.worker.id, worker_pid: m.worker.process.pid }, 'worker still running after the drain: killing it');
        m.worker.process.kill('SIGKILL');
      }
    }, Math.min(delay + drain_timeout + DRAIN_SLACK_MS, MAX_TIMER_MS));
    guard.unref();
    stopping = (async () => {
      await Promise.all([...members.values()].map((m) => m.gone));
      clearTimeout(guard);
      sink.close();
      await admin.close();
      log.info('every worker has stopped');
      process.exit(unclean ? 1 : 0);
    })();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    if (draining) return void log.warn('SIGHUP while draining: not reloading');
    log.info({ signal: 'SIGHUP' }, 'reloading the configuration');
    void reloader.request('SIGHUP');
  });
  process.on('SIGUSR1', () => sink.reopen());
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception in the primary');
    sink.flushSync();
    process.exit(1);
  });
  const pending = started();
  if (pending) stop(pending);
}
