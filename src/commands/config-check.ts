import { parseArgs } from 'node:util';
import { loadConfigSource, summarize, type ConfigSource } from '../config/load.js';
import { keepAliveSettings } from '../config/schema.js';
import { BIND_NOTE, notes, startProblems, warnings } from '../config/preflight.js';
import { ConfigError, formatIssue, type ConfigIssue } from '../errors.js';
import { transparentUnavailable } from '../inbound/transparent.js';
import { keepAliveWarning } from '../net/keepalive.js';
import { fetchSources } from '../ranges/check.js';
import { fail, type Command } from './command.js';

const help = `Usage: wa-egress config check [--fetch] FILE

Validate a configuration file the way serve reads it at start: every key,
the range files it names, and whether audit.file can be written (probed,
nothing left behind). Exit 0 with a one-line summary, or exit 1 listing every
problem as file:line:column: key.path: message on stderr. \`url:\` and \`dns:\`
range entries are checked for form only, unless --fetch.

Also printed (exit code still 0):
  warning:  rules that cannot work (ip_ranges only in special ranges that
            policy.allow_ranges does not exempt) and a policy that allows nothing
  note:     how a pattern both notations could read was read (glob or the
            vendor's ".*")
Listener addresses are not bound by a check: serve reports one in use.

Options:
      --fetch  also fetch every url: list and resolve every dns: name once
  -h, --help   show this help
`;

function withTag(issue: ConfigIssue, tag: string): string {
  return formatIssue({ ...issue, message: `${tag}: ${issue.message}` });
}

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { help: { type: 'boolean', short: 'h' }, fetch: { type: 'boolean' } },
  });
  if (values.help) return void process.stdout.write(help);
  if (positionals.length !== 1) fail('expected: config check FILE', help);
  const file = positionals[0]!;
  let loaded: ConfigSource;
  try {
    loaded = loadConfigSource(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
  const problems = startProblems(loaded);
  if (problems.length) {
    process.stderr.write(`${problems.map(formatIssue).join('\n')}\n`);
    process.exit(1);
  }
  if (values.fetch) {
    const { lines, failed } = await fetchSources(loaded.config);
    for (const line of lines) process.stdout.write(`${line}\n`);
    if (failed) fail(`${failed} range source${failed === 1 ? '' : 's'} failed`);
  }
  const lines = [
    `${file}: OK: ${summarize(loaded.config)} (${BIND_NOTE})`,
    ...warnings(loaded).map((w) => withTag(w, 'warning')),
    ...notes(loaded).map((n) => withTag(n, 'note')),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  const warning = keepAliveWarning(keepAliveSettings(loaded.config));
  if (warning) process.stderr.write(`warning: ${warning}\n`);
  // The addon is this host's: a config checked elsewhere may still serve where it is built.
  const transparent = loaded.config.listen.transparent && transparentUnavailable(loaded.config.listen.transparent);
  if (transparent) process.stderr.write(`warning: ${transparent}; serve does not start on this host\n`);
}

export const configCheck: Command = {
  words: ['config', 'check'],
  summary: 'config check FILE         validate a configuration file as serve would read it',
  help,
  run,
};
