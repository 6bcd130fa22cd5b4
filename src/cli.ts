#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_CONFIG, loadConfigFile, summarize } from './config/load.js';
import { ConfigError } from './errors.js';
import { Gateway } from './gateway.js';
import { createLogger } from './log.js';

/** argv → load config → start. Nothing else lives here. */

const HELP: Record<string, string> = {
  main: `Usage: wa-egress <command> [options]

An egress gateway: an HTTP CONNECT and HTTP proxy that lets clients reach
only the destinations its policy allows, and audits every refusal.

Commands:
  serve [--config FILE]     run the gateway (default: the bundled WhatsApp policy)
  config check FILE         validate a configuration file

Options:
  -h, --help                show help for a command
  -v, --version             print the version
`,
  serve: `Usage: wa-egress serve [--config FILE]

Run the gateway. Without --config the bundled config/default.yaml is used:
the WhatsApp Business API policy, listening on 0.0.0.0:3128, audit on stdout.

Options:
  -c, --config FILE   configuration file (YAML)
  -h, --help          show this help

Signals: SIGTERM and SIGINT flush the audit log and exit with code 0.
Operational logs go to stderr; audit records go where audit.file says.
`,
  config: `Usage: wa-egress config check FILE

Validate a configuration file: exit 0 with a one-line summary, or exit 1
listing every problem with its key path and file line.

Options:
  -h, --help   show this help
`,
};

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function fail(message: string, help?: string): never {
  process.stderr.write(`wa-egress: ${message}\n${help ? `\n${help}` : ''}`);
  process.exit(1);
}

async function serve(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) return void process.stdout.write(HELP.serve);
  const log = createLogger();
  const file = values.config ?? DEFAULT_CONFIG;
  let config;
  try {
    config = loadConfigFile(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const issue of err.issues) log.error({ ...issue }, 'config error');
    process.stderr.write(`wa-egress: invalid configuration:\n${err.message}\n`);
    process.exit(1);
  }
  log.info({ config: file, summary: summarize(config) }, 'configuration loaded');
  const gw = await Gateway.start(config, log);
  if (gw.fdLimit) {
    log.info({ fd_soft: gw.fdLimit.soft, fd_hard: gw.fdLimit.hard, max_client_connections: gw.fdLimit.clientBudget }, 'open-file limit');
  }

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    gw.close().then(
      () => process.exit(0),
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

function configCheck(args: string[]): void {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { help: { type: 'boolean', short: 'h' } } });
  if (values.help) return void process.stdout.write(HELP.config);
  if (positionals[0] !== 'check' || positionals.length !== 2) fail('expected: config check FILE', HELP.config);
  try {
    const config = loadConfigFile(positionals[1]!);
    process.stdout.write(`${positionals[1]}: OK: ${summarize(config)}\n`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'config':
      return configCheck(rest);
    case '-v':
    case '--version':
      return void process.stdout.write(`${version()}\n`);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      return void process.stdout.write(HELP.main);
    default:
      fail(`unknown command "${command}"`, HELP.main);
  }
}

main(process.argv.slice(2)).catch((err: Error) => {
  fail(err.message);
});
