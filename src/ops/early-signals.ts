import type { Logger } from '../log.js';

/**
 * Signals that arrive while `serve` starts. Until a handler is installed a
 * SIGTERM's default action ends the process at once, without the drain or
 * its records, and "listening" is logged before start-up is over: so from
 * the first line on, SIGTERM and SIGINT are held and acted on once the
 * gateway runs (a second one exits at once), and SIGHUP (nothing to
 * reload yet) is logged and ignored.
 */
export class EarlySignals {
  private pending: string | undefined;
  private readonly handlers: [NodeJS.Signals, () => void][];

  constructor(log: Logger) {
    const stop = (signal: NodeJS.Signals) => () => {
      // A second one: start-up may be stuck (a range list that does not come); give up.
      if (this.pending) {
        log.warn({ signal }, 'second signal while starting: exiting');
        process.exit(1);
      }
      this.pending = signal;
      log.info({ signal }, 'signal while starting: stopping once started');
    };
    this.handlers = [
      ['SIGTERM', stop('SIGTERM')],
      ['SIGINT', stop('SIGINT')],
      ['SIGHUP', () => log.warn('SIGHUP while starting: the configuration is being loaded already')],
    ];
    for (const [signal, handler] of this.handlers) process.on(signal, handler);
  }

  /** The gateway's own handlers are installed: stop holding; the stop signal that came meanwhile, if any. */
  release(): string | undefined {
    for (const [signal, handler] of this.handlers) process.removeListener(signal, handler);
    return this.pending;
  }
}
