#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { fail, type Command } from './commands/command.js';
import { auditReport } from './commands/audit-report.js';
import { auditSummary } from './commands/audit-summary.js';
import { checkNetworkCommand } from './commands/check-network.js';
import { configCheck } from './commands/config-check.js';
import { exportCommand } from './commands/export.js';
import { health } from './commands/health.js';
import { passwd } from './commands/passwd.js';
import { policyExplain } from './commands/policy-explain.js';
import { policySuggest } from './commands/policy-suggest.js';
import { policyTest } from './commands/policy-test.js';
import { serve } from './commands/serve.js';

/** argv → the command it names → run. One file per verb lives in commands/. */

const COMMANDS: readonly Command[] = [serve, configCheck, exportCommand, policySuggest, policyExplain, policyTest, auditSummary, auditReport, checkNetworkCommand, passwd, health];

function mainHelp(): string {
  return `Usage: wa-egress <command> [options]

An egress gateway: an HTTP proxy (CONNECT and absolute-form HTTP), a SOCKS5
proxy and raw TCP forward listeners that let clients reach only the
destinations the policy allows. Every connection is audited: allowed ones
(with bytes and duration when they close) as well as refusals.

Commands:
${COMMANDS.map((c) => `  ${c.summary}`).join('\n')}

Options:
  -h, --help                show help for a command
  -v, --version             print the version

Run "wa-egress help COMMAND" (or "wa-egress COMMAND --help") for a command's
options; "wa-egress help serve" lists the signals serve handles.
`;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** The command whose words start `argv` (longest first), and the rest of argv. */
function find(argv: string[]): { command: Command; rest: string[] } | undefined {
  const byLength = [...COMMANDS].sort((a, b) => b.words.length - a.words.length);
  for (const command of byLength) {
    if (command.words.every((w, i) => argv[i] === w)) return { command, rest: argv.slice(command.words.length) };
  }
  return undefined;
}

/** Help for a command group (`wa-egress config`): its commands' helps. */
function groupHelp(word: string): string | undefined {
  const members = COMMANDS.filter((c) => c.words.length > 1 && c.words[0] === word);
  return members.length ? members.map((c) => c.help).join('\n') : undefined;
}

async function main(argv: string[]): Promise<void> {
  const [first, ...rest] = argv;
  if (first === '-v' || first === '--version') return void process.stdout.write(`${version()}\n`);
  if (first === undefined || first === '-h' || first === '--help') return void process.stdout.write(mainHelp());
  if (first === 'help') {
    if (rest.length === 0) return void process.stdout.write(mainHelp());
    const found = find(rest);
    const text = found?.command.help ?? groupHelp(rest[0]!);
    if (!text) fail(`unknown command "${rest.join(' ')}"`, mainHelp());
    return void process.stdout.write(text);
  }
  const found = find(argv);
  if (found) return found.command.run(found.rest);
  const group = groupHelp(first);
  if (group) {
    if (rest.includes('--help') || rest.includes('-h')) return void process.stdout.write(group);
    fail(rest.length ? `unknown command "${first} ${rest[0]}"` : `"${first}" needs a subcommand`, group);
  }
  fail(`unknown command "${first}"`, mainHelp());
}

main(process.argv.slice(2)).catch((err: Error) => {
  fail(err.message);
});
