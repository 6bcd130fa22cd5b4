import { parseArgs } from 'node:util';
import { DEFAULT_CONFIG, summarize } from '../config/load.js';
import { keepAliveSettings } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { Gateway } from '../gateway.js';
import { createLogger } from '../log.js';
import { keepaliveMode } from '../native/sockopt.js';
import { describeKeepAlive, keepAliveWarning } from '../net/keepalive.js';
import { startAdmin, type Admin } from '../ops/admin.js';
import { loadConfig, publishConfigLoad, type LoadedConfig } from '../ops/config-load.js';
import type { Command } from './command.js';

const help = `Usage: wa-egress serve [--config FILE]

Run the gateway. Without --config the bundled config/default.yaml is used:
the WhatsApp Business API policy, listening on 0.0.0.0:3128, audit on stdout.

Options:
  -c, --config FILE   configuration file (YAML)
  -h, --help          show this help

Signals: SIGTERM and SIGINT flush the audit log and exit with code 0.
Operational logs go to stderr; audit records go where audit.file says.
`;

async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) return void process.stdout.write(help);
  const log = createLogger();
  const file = values.config ?? DEFAULT_CONFIG;
  let loaded: LoadedConfig;
  try {
    loaded = loadConfig(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const issue of err.issues) log.error({ ...issue }, 'config error');
    process.stderr.write(`wa-egress: invalid configuration:\n${err.message}\n`);
    process.exit(1);
  }
  const { config } = loaded;
  log.info({ config: file, summary: summarize(config), hash: loaded.hash }, 'configuration loaded');
  const keepAlive = keepAliveSettings(config);
  log.info({ keepalive_mode: keepaliveMode() }, describeKeepAlive(keepAlive));
  const warning = keepAliveWarning(keepAlive);
  if (warning) log.warn({ keepalive_mode: 'node' }, warning);
  const gw = await Gateway.start(config, log);
  let admin: Admin | undefined;
  if (config.listen.admin) {
    admin = await startAdmin(gw, config.listen.admin, () => gw.listening, log).catch(async (err: Error) => {
      await gw.close();
      throw new Error(`listen.admin ${config.listen.admin!.text}: ${err.message}`);
    });
    gw.addOwnAddress(admin.address());
  }
  publishConfigLoad('ok', loaded);
  if (gw.fdLimit) {
    log.info({ fd_soft: gw.fdLimit.soft, fd_hard: gw.fdLimit.hard, max_client_connections: gw.fdLimit.clientBudget }, 'open-file limit');
  }

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    gw.close().then(
      async () => {
        await admin?.close();
        process.exit(0);
      },
      (err) => {
        log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  // logrotate's move-and-signal: reopen the audit file by its name.
  process.on('SIGUSR1', () => gw.audit.reopen());
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception');
    gw.audit.flushSync();
    process.exit(1);
  });
}

export const serve: Command = { words: ['serve'], summary: 'serve [--config FILE]     run the gateway (default: the bundled WhatsApp policy)', help, run };
