import type { Gateway } from '../gateway.js';
import type { Logger } from '../log.js';

/**
 * Graceful drain (`shutdown:`), on the first SIGTERM or SIGINT:
 * - at once the gateway is `draining` (readiness turns 503) and HTTP
 *   answers carry `Connection: close`; idle keep-alive connections close;
 * - after `shutdown.delay` the listeners stop accepting;
 * - open tunnels and requests go on until they end or `drain_timeout`
 *   passes; then whatever is left is closed (`close_reason: shutdown`) and
 *   the audit log flushed.
 * A second signal cuts the wait short. With nothing open when the listeners
 * stop, the gateway closes at once.
 */

export type DrainEnd = 'drained' | 'timeout' | 'signal';

/** How often the drain checks for the last connection, and logs what remains. */
const CHECK_MS = 50;
const REPORT_MS = 5000;
/** setTimeout's longest delay; a longer one would fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export class Drain {
  private done: Promise<DrainEnd> | undefined;
  private end: ((why: DrainEnd) => void) | undefined;

  constructor(
    private readonly gw: Gateway,
    private readonly log?: Logger,
  ) {}

  get started(): boolean {
    return this.done !== undefined;
  }

  /** The first signal starts the drain, a second one ends it now. Resolves once the gateway is closed. */
  signal(signal: string): Promise<DrainEnd> {
    if (this.done) {
      this.log?.info({ signal }, 'second signal: closing everything now');
      this.end?.('signal');
      return this.done;
    }
    this.done = this.run(signal);
    return this.done;
  }

  private async run(signal: string): Promise<DrainEnd> {
    const gw = this.gw;
    const { delay, drain_timeout } = gw.config.shutdown;
    const timers: NodeJS.Timeout[] = [];
    const why = await new Promise<DrainEnd>((resolve) => {
      this.end = resolve;
      gw.drain();
      this.log?.info({ signal, delay_ms: delay, drain_timeout_ms: drain_timeout, tunnels: gw.tunnels.size, connections: gw.connections }, 'drain started');
      const stopAccepting = () => {
        gw.stopAccepting();
        this.log?.info({ tunnels: gw.tunnels.size, connections: gw.connections }, 'listeners stopped accepting');
        timers.push(setTimeout(() => resolve('timeout'), Math.min(drain_timeout, MAX_TIMER_MS)));
        timers.push(
          setInterval(() => {
            if (gw.connections === 0 && gw.pending === 0) resolve('drained');
          }, CHECK_MS),
        );
        timers.push(setInterval(() => this.log?.info({ tunnels: gw.tunnels.size, connections: gw.connections }, 'draining: connections remain'), REPORT_MS));
        if (gw.connections === 0 && gw.pending === 0) resolve('drained');
      };
      if (delay > 0) timers.push(setTimeout(stopAccepting, Math.min(delay, MAX_TIMER_MS)));
      else stopAccepting();
    });
    for (const t of timers) clearTimeout(t);
    const left = { tunnels: gw.tunnels.size, connections: gw.connections };
    const message = { drained: 'drain ended: every connection has finished', timeout: 'drain ended: drain_timeout reached, closing what is left', signal: 'drain ended by a second signal, closing what is left' }[why];
    this.log?.info({ reason: why, ...left }, message);
    await gw.close();
    return why;
  }
}
