import cluster from 'node:cluster';
import { loadConfigSource } from '../config/load.js';
import { replayReads } from '../config/read.js';
import type { AuditSink, AuditStats, OnError } from '../audit-sink.js';
import { Gateway } from '../gateway.js';
import type { Logger } from '../log.js';
import type { ConfigBytes, FromWorker, ToWorker } from './cluster-messages.js';
import { Drain } from './drain.js';
import { Metrics } from './metrics.js';
import { recheckAfterReload } from './recheck.js';

/**
 * A cluster worker (`workers:` above 1): it serves the listeners with the
 * configuration the primary validated and sent, and takes its orders
 * (drain, reload) from the primary only: signals sent to the whole process
 * group (a terminal's Ctrl-C, a hangup) reach the primary too, which
 * relays them once. Its audit lines go to the primary, which writes them.
 */

/** To the primary; `done` once written (or at once when the primary is gone: nobody reads any more). */
function send(message: FromWorker, done: () => void = () => {}): void {
  if (!process.connected) return done();
  process.send!(message, undefined, undefined, () => done());
}

/** Audit lines, handed to the primary once per turn of the event loop (one message for many records). */
class PrimarySink implements AuditSink {
  private lines: string[] = [];
  private scheduled = false;
  /** As the primary last said. */
  writable = true;
  private readonly sendNow = () => {
    this.scheduled = false;
    if (this.lines.length === 0) return;
    const lines = this.lines;
    this.lines = [];
    send({ t: 'lines', lines });
  };

  write(line: string): void {
    this.lines.push(line);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.sendNow);
    }
  }

  /** The primary owns the destination. */
  configure(_file: string, _onError: OnError): void {}
  reopen(): void {}

  /** The primary counts what it writes. */
  stats(): AuditStats {
    return { written: 0, waitingLines: this.lines.length, waitingBytes: 0, dropped: 0, replaced: 0, reopenFailures: 0 };
  }

  flushSync(): void {
    this.sendNow();
  }

  close(): void {
    this.sendNow();
  }
}

function configOf(bytes: ConfigBytes) {
  return replayReads(bytes.snapshot, () => loadConfigSource(bytes.file)).config;
}

export function runWorker(log: Logger): void {
  const sink = new PrimarySink();
  let gw: Gateway | undefined;
  let drain: Drain | undefined;
  let metrics: Metrics | undefined;
  // Orders come from the primary; these would otherwise end the process.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGUSR1'] as const) process.on(signal, () => log.debug({ signal }, 'signal ignored: the primary relays it'));

  const exit = (code: number) => send({ t: 'closed' }, () => process.exit(code));
  const startDrain = (signal: string) => {
    if (!gw) return void process.exit(0);
    const first = !drain;
    drain ??= new Drain(gw, log);
    if (first) send({ t: 'draining' });
    drain.signal(signal).then(
      () => exit(0),
      (err) => {
        log.error({ err }, 'error while stopping');
        exit(1);
      },
    );
  };

  process.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'start':
        return void start(m);
      case 'apply':
        return void apply(m.seq, m);
      case 'own':
        return gw?.setOwnAddresses(m.own);
      case 'audit':
        sink.writable = m.writable;
        return;
      case 'drain':
        return startDrain(m.signal);
      case 'metrics':
        metrics ??= gw && new Metrics({ gateway: gw });
        if (!metrics) return send({ t: 'metrics', seq: m.seq, metrics: [] });
        return void metrics.registry.getMetricsAsJSON().then((json) => send({ t: 'metrics', seq: m.seq, metrics: json }));
    }
  });
  send({ t: 'hello' });
  // The primary is gone (killed): nobody writes the records or relays orders any more.
  process.on('disconnect', () => {
    log.error('the primary is gone: closing');
    process.exit(1);
  });

  async function start(m: Extract<ToWorker, { t: 'start' }>): Promise<void> {
    sink.writable = m.writable;
    try {
      gw = await Gateway.start(configOf(m), log, { sink, idPrefix: m.idPrefix });
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { listener?: string; address?: string; port?: number };
      send({ t: 'failed', error: { message: e.message, code: e.code, listener: e.listener, address: e.address, port: e.port } }, () => process.exit(1));
      return;
    }
    gw.setOwnAddresses(m.own);
    // Counting from the start when the primary serves /metrics.
    if (m.metrics) metrics = new Metrics({ gateway: gw });
    send({ t: 'ready' });
  }

  async function apply(seq: number, bytes: ConfigBytes): Promise<void> {
    let problems: string[];
    try {
      const config = configOf(bytes);
      problems = gw ? await gw.apply(config) : [];
      send({ t: 'applied', seq, problems });
      if (gw) await recheckAfterReload(gw, config, log);
    } catch (err) {
      log.error({ err }, 'reload failed in this worker; its running configuration stays');
      send({ t: 'applied', seq, problems: [`worker ${cluster.worker?.id}: ${(err as Error).message}`] });
    }
  }

  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception');
    sink.flushSync();
    exit(1);
  });
}
