import cluster from 'node:cluster';
import type { AddressInfo } from 'node:net';
import { loadConfigSource } from '../config/load.js';
import { replayReads } from '../config/read.js';
import { MAX_WAITING } from '../audit-file.js';
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

/**
 * Audit lines, handed to the primary once per turn of the event loop (one
 * message for many records). What the IPC channel has not yet written
 * counts as waiting, bounded as the audit file's queue is: a primary that cannot keep up (a stdout pipe nobody
 * reads) does not make the worker's memory grow without bound.
 */
class PrimarySink implements AuditSink {
  private lines: string[] = [];
  private bytes = 0;
  private inFlight = 0;
  private inFlightLines = 0;
  private dropped = 0;
  private scheduled = false;
  /** As the primary last said. */
  writable = true;
  constructor(private readonly log: Logger) {}
  private readonly sendNow = () => {
    this.scheduled = false;
    if (this.lines.length === 0) return;
    const { lines, bytes } = this;
    this.lines = [];
    this.bytes = 0;
    this.inFlight += bytes;
    this.inFlightLines += lines.length;
    send({ t: 'lines', lines }, () => {
      this.inFlight -= bytes;
      this.inFlightLines -= lines.length;
    });
  };

  write(line: string): void {
    if (this.inFlight + this.bytes + line.length > MAX_WAITING) {
      this.log.error({ dropped: ++this.dropped }, 'audit record dropped: too many records waiting for the primary');
      return;
    }
    this.lines.push(line);
    this.bytes += line.length;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.sendNow);
    }
  }

  /** The primary owns the destination. */
  configure(_file: string, _onError: OnError): void {}
  reopen(): void {}

  /** The primary counts what it writes; this is what has not reached it yet. */
  stats(): AuditStats {
    return {
      written: 0,
      waitingLines: this.lines.length + this.inFlightLines,
      waitingBytes: this.bytes + this.inFlight,
      dropped: this.dropped,
      replaced: 0,
      reopenFailures: 0,
    };
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
  const sink = new PrimarySink(log);
  let gw: Gateway | undefined;
  let drain: Drain | undefined;
  let metrics: Metrics | undefined;
  // Orders come from the primary; these would otherwise end the process.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGUSR1'] as const) process.on(signal, () => log.debug({ signal }, 'signal ignored: the primary relays it'));

  let own: AddressInfo[] = [];
  // The last counts go with the goodbye, so the primary's sums do not go back.
  const exit = async (code: number) => {
    const last = metrics ? await metrics.registry.getMetricsAsJSON().catch(() => undefined) : undefined;
    send({ t: 'closed', metrics: last }, () => process.exit(code));
  };
  const startDrain = (signal: string) => {
    if (!gw) return void process.exit(0);
    const first = !drain;
    drain ??= new Drain(gw, log);
    if (first) send({ t: 'draining' });
    drain.signal(signal).then(
      () => exit(0),
      (err) => {
        log.error({ err }, 'error while stopping');
        return exit(1);
      },
    );
  };

  process.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'start':
        return void start(m);
      case 'apply':
        return void apply(m.seq, m);
      case 'recheck':
        if (gw) void recheckAfterReload(gw, gw.config, log).catch((err) => log.error({ err }, 'recheck of open tunnels failed'));
        return;
      case 'own':
        // Kept for a gateway still starting, too.
        own = m.own;
        return gw?.setOwnAddresses(own);
      case 'audit':
        sink.writable = m.writable;
        return;
      case 'drain':
        return startDrain(m.signal);
      case 'metrics':
        metrics ??= gw && new Metrics({ gateway: gw, audit: sink });
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
    own = m.own;
    try {
      gw = await Gateway.start(configOf(m), log, { sink, idPrefix: m.idPrefix });
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { listener?: string; address?: string; port?: number };
      send({ t: 'failed', error: { message: e.message, code: e.code, listener: e.listener, address: e.address, port: e.port } }, () => process.exit(1));
      return;
    }
    gw.setOwnAddresses(own);
    // Counting from the start when the primary serves /metrics.
    if (m.metrics) metrics = new Metrics({ gateway: gw, audit: sink });
    send({ t: 'ready' });
  }

  /** A reload: its problems, or why it failed here (then this worker still runs what it ran, and the primary takes the others back). Tunnels are rechecked once every worker has it ('recheck'). */
  async function apply(seq: number, bytes: ConfigBytes): Promise<void> {
    try {
      const problems = gw ? await gw.apply(configOf(bytes)) : [];
      send({ t: 'applied', seq, problems });
    } catch (err) {
      log.error({ err }, 'reload failed in this worker; its running configuration stays');
      send({ t: 'applied', seq, problems: [], failed: `worker ${cluster.worker?.id}: ${(err as Error).message}` });
    }
  }

  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception');
    sink.flushSync();
    void exit(1);
  });
}
