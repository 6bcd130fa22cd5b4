import { parseArgs } from 'node:util';
import { loadConfigFile, summarize } from '../config/load.js';
import { keepAliveSettings } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { keepAliveWarning } from '../net/keepalive.js';
import { fetchSources } from '../ranges/check.js';
import { fail, type Command } from './command.js';

const help = `Usage: wa-egress config check [--fetch] FILE

Validate a configuration file: exit 0 with a one-line summary, or exit 1
listing every problem with its key path and file line. \`url:\` and \`dns:\`
range entries are checked for form only, unless --fetch.

Options:
      --fetch  also fetch every url: list and resolve every dns: name once
  -h, --help   show this help
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { help: { type: 'boolean', short: 'h' }, fetch: { type: 'boolean' } },
  });
  if (values.help) return void process.stdout.write(help);
  if (positionals.length !== 1) fail('expected: config check FILE', help);
  try {
    const config = loadConfigFile(positionals[0]!);
    if (values.fetch) {
      const { lines, failed } = await fetchSources(config);
      for (const line of lines) process.stdout.write(`${line}\n`);
      if (failed) fail(`${failed} range source${failed === 1 ? '' : 's'} failed`);
    }
    process.stdout.write(`${positionals[0]}: OK: ${summarize(config)}\n`);
    const warning = keepAliveWarning(keepAliveSettings(config));
    if (warning) process.stderr.write(`warning: ${warning}\n`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
}

export const configCheck: Command = { words: ['config', 'check'], summary: 'config check FILE         validate a configuration file', help, run };
