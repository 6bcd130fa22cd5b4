import { parseArgs } from 'node:util';
import { ConfigError } from '../errors.js';
import { explain, formatExplanation, loadExplainer, type Explainer } from '../explain/explain.js';
import type { Pins } from '../explain/pins.js';
import { fail, type Command } from './command.js';

const help = `Usage: wa-egress policy explain HOST:PORT [options]

Judge a destination as the gateway would (normalisation, hostname patterns,
DNS with dns.hosts, address classification, loop check) and print the
verdict, the rule and the pattern or range that matched, every address with
its verdict, and the reason code. Says whether the verdict needed DNS.

Options:
  -c, --config FILE      configuration (default: the bundled WhatsApp policy)
      --dns-hosts FILE   pinned DNS answers, /etc/hosts format (ADDRESS NAME...)
      --offline          never query DNS: names not in dns.hosts or
                         --dns-hosts do not resolve
      --user NAME        judge it for the proxy user NAME of clients.users
                         (only its rules apply: user_not_allowed names a
                         rule outside them that would allow it)
      --json             print the explanation as JSON
  -h, --help             show this help

Exit status: 0 allowed, 1 denied or failed, 2 bad usage or configuration.
`;

export const dnsOptions = {
  config: { type: 'string', short: 'c' },
  'dns-hosts': { type: 'string' },
  offline: { type: 'boolean' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Load the explainer or exit 2 with the configuration's problems. */
export async function explainerOrExit(values: { config?: string; offline?: boolean; 'dns-hosts'?: string }, pins?: Pins): Promise<Explainer> {
  try {
    return await loadExplainer({ config: values.config, offline: values.offline, dnsHosts: values['dns-hosts'], pins });
  } catch (err) {
    process.stderr.write(`wa-egress: ${err instanceof ConfigError ? `invalid configuration:\n${err.message}` : (err as Error).message}\n`);
    process.exit(2);
  }
}

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { ...dnsOptions, user: { type: 'string' } } });
  if (values.help) return void process.stdout.write(help);
  if (positionals.length !== 1) fail('expected: policy explain HOST:PORT', help);
  const ex = await explainerOrExit(values);
  const user = values.user;
  if (user !== undefined && !ex.config.clients.users.some((u) => u.name === user)) {
    const known = ex.config.clients.users.map((u) => u.name);
    process.stderr.write(`wa-egress: --user ${user}: no such user in clients.users${known.length ? ` (${known.join(', ')})` : ' (it lists none)'}\n`);
    process.exit(2);
  }
  const e = await explain(ex, positionals[0]!, user);
  process.stdout.write(values.json ? `${JSON.stringify(e, null, 2)}\n` : formatExplanation(e));
  process.exitCode = e.verdict === 'allow' ? 0 : 1;
}

export const policyExplain: Command = {
  words: ['policy', 'explain'],
  summary: 'policy explain HOST:PORT  what the policy does with a destination, and why',
  help,
  run,
};
