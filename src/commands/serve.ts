import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { summarize } from '../config/load.js';
import { keepAliveSettings } from '../config/schema.js';
import { serveConfigPath } from '../config/serve-path.js';
import { Gateway } from '../gateway.js';
import { createLogger } from '../log.js';
import { keepaliveMode } from '../native/sockopt.js';
import { describeKeepAlive, keepAliveWarning } from '../net/keepalive.js';
import { AdminPlace } from '../ops/admin.js';
import { runPrimary } from '../ops/cluster.js';
import { workerCount } from '../ops/cpus.js';
import { Metrics } from '../ops/metrics.js';
import { runWorker } from '../ops/worker.js';
import { fromSource, publishConfigLoad } from '../ops/config-load.js';
import { Drain } from '../ops/drain.js';
import { EarlySignals } from '../ops/early-signals.js';
import { gatewayTarget, Reloader } from '../ops/reload.js';
import { loadForServe, startFailure } from '../ops/startup.js';
import type { Command } from './command.js';

const help = `Usage: wa-egress serve [--config FILE]

Run the gateway: the HTTP proxy (CONNECT and absolute-form HTTP), the SOCKS5
listener and raw TCP forward listeners the configuration names. Without
--config, WA_EGRESS_CONFIG names the file; without either,
/etc/wa-egress/config.yaml is read when it exists, else the bundled
config/default.yaml: the WhatsApp Business API policy, listening on
0.0.0.0:3128, audit on stdout. The configuration is
checked as \`config check\` checks it; any problem (a bad key, an audit path
that cannot be written, a listener that cannot bind) is printed as
file:line:column: key.path: message, and the exit code is 1.

Options:
  -c, --config FILE   configuration file (YAML; default: see above)
  -h, --help          show this help

Signals:
  SIGTERM, SIGINT   drain: stop accepting after shutdown.delay, let open
                    tunnels and requests finish (up to shutdown.drain_timeout),
                    close the rest (each gets a close record), write every
                    waiting audit record, exit 0; a second signal closes
                    everything at once (still writing the records, exit 0)
  SIGHUP            reload the configuration, checked as at start (an invalid
                    one is logged and the running one stays; open tunnels are
                    kept)
  SIGUSR1           reopen audit.file by its name (after logrotate moved it)
A SIGTERM or SIGINT while starting is acted on once the gateway runs (a
second one exits at once, code 1).
With workers: above 1 this process is the primary and relays each signal to
every worker; the workers ignore signals sent to them.

Operational logs go to stderr as JSON lines (WA_EGRESS_LOG_LEVEL: debug, info,
warn, error; default info); audit records go where audit.file says.
As a service, run node directly (exec node .../dist/cli.js serve): npx runs
the gateway as a child, and signalling npx's PID can leave it running.
`;

async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) return void process.stdout.write(help);
  // A cluster worker (workers: above 1) gets its configuration from the primary.
  if (cluster.isWorker) return runWorker(createLogger(undefined, { worker: cluster.worker!.id }));
  const log = createLogger();
  const early = new EarlySignals(log);
  const file = serveConfigPath(values.config);
  const start = loadForServe(file, log);
  const { loaded, hash } = start;
  const config = loaded.config;
  log.info({ config: file, summary: summarize(config), hash }, 'configuration loaded');
  const keepAlive = keepAliveSettings(config);
  log.info({ keepalive_mode: keepaliveMode() }, describeKeepAlive(keepAlive));
  const warning = keepAliveWarning(keepAlive);
  if (warning) log.warn({ keepalive_mode: 'node' }, warning);
  if (workerCount(config.workers) > 1) return runPrimary(start, log, () => early.release());

  const gw = await Gateway.start(config, log).catch((err: unknown) => startFailure(loaded, err, log));
  // /readyz: listening and not draining.
  const ready = () => gw.listening && !gw.draining;
  const metrics = () => new Metrics({ gateway: gw, audit: gw.audit, config: true });
  const admin = new AdminPlace(metrics, ready, (added, removed) => {
    if (removed) gw.removeOwnAddress(removed);
    if (added) gw.addOwnAddress(added);
  }, log);
  await admin.start(config.listen.admin).catch(async (err: Error) => {
    await gw.close();
    return startFailure(loaded, Object.assign(err, { listener: 'admin' }), log);
  });
  publishConfigLoad('ok', { hash });
  if (gw.fdLimit) {
    log.info({ fd_soft: gw.fdLimit.soft, fd_hard: gw.fdLimit.hard, max_client_connections: gw.fdLimit.clientBudget }, 'open-file limit');
  }
  if (config.workers !== 1) log.info({ workers: config.workers }, 'workers: one CPU, so this process serves alone');

  const reloader = new Reloader(gatewayTarget(gw, log), fromSource(loaded), log, async (next) => {
    await admin.move(next.listen.admin);
    if (workerCount(next.workers) > 1) log.warn({ workers: next.workers }, 'workers: a gateway started with one process stays one; restart it to run workers');
  });
  const drain = new Drain(gw, log);
  const stop = (signal: string) => {
    if (!drain.started) {
      log.info({ signal }, 'stopping');
      reloader.stop();
    }
    drain.signal(signal).then(
      async () => {
        await admin.close();
        process.exit(0);
      },
      (err) => {
        log.error({ err }, 'error while stopping');
        gw.audit.flushSync();
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    if (drain.started) return void log.warn('SIGHUP while draining: not reloading');
    log.info({ signal: 'SIGHUP' }, 'reloading the configuration');
    void reloader.request('SIGHUP');
  });
  // logrotate's move-and-signal: reopen the audit file by its name.
  process.on('SIGUSR1', () => gw.audit.reopen());
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception');
    gw.audit.flushSync();
    process.exit(1);
  });
  const pending = early.release();
  if (pending) stop(pending);
}

export const serve: Command = { words: ['serve'], summary: 'serve [--config FILE]     run the gateway (default: the bundled WhatsApp policy)', help, run };
