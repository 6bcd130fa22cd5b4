import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { explain, formatExplanation } from '../explain/explain.js';
import { mismatch, parseTestFile } from '../explain/expectations.js';
import { fail, type Command } from './command.js';
import { dnsOptions, explainerOrExit } from './policy-explain.js';

const help = `Usage: wa-egress policy test FILE [options]

Check a policy against expectations, one a line:

  allow g.whatsapp.net:5222
  allow graph.facebook.com:443 rule whatsapp
  deny  evil.example:443
  deny  10.1.2.3:443 reason ip_not_allowed
  dns   157.240.0.53 media.cdn.whatsapp.net   # pin a DNS answer

"#" starts a comment. "deny" holds for any outcome that does not let the
connection through; "reason" and "rule" narrow it. In report mode the
policy's enforce-mode verdict is checked. Each mismatch is printed with what
"policy explain" says about it.

Options:
  -c, --config FILE      configuration (default: the bundled WhatsApp policy)
      --dns-hosts FILE   pinned DNS answers, /etc/hosts format (ADDRESS NAME...)
      --offline          never query DNS (recommended in CI): names not in
                         dns.hosts, --dns-hosts or the file's dns lines do not resolve
      --json             print the results as JSON
  -h, --help             show this help

Exit status: 0 every expectation holds, 1 any mismatch, 2 bad usage, test
file or configuration.
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: dnsOptions });
  if (values.help) return void process.stdout.write(help);
  if (positionals.length !== 1) fail('expected: policy test FILE', help);
  const file = positionals[0]!;
  let tests;
  try {
    tests = parseTestFile(readFileSync(file, 'utf8'), file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    process.stderr.write(`wa-egress: ${e.code ? `${file}: cannot read: ${e.code}` : e.message}\n`);
    process.exit(2);
  }
  // The file's dns lines pin answers too, over --dns-hosts (the file is more specific).
  const ex = await explainerOrExit(values, tests.pins);

  const results = [];
  for (const e of tests.expectations) {
    const x = await explain(ex, e.destination);
    results.push({ line: e.line, expectation: e.text, ok: mismatch(e, x) === undefined, problem: mismatch(e, x), explanation: x });
  }
  const failed = results.filter((r) => !r.ok);
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ file, passed: results.length - failed.length, failed: failed.length, results }, null, 2)}\n`);
  } else {
    for (const r of failed) {
      process.stdout.write(`${file}:${r.line}: FAIL: ${r.expectation}: ${r.problem}\n`);
      process.stdout.write(formatExplanation(r.explanation).replace(/^(?=.)/gm, '    '));
    }
    const needDns = results.filter((r) => r.explanation.dns.needed).length;
    process.stdout.write(
      `${file}: ${results.length - failed.length} of ${results.length} expectations hold` +
        `${failed.length ? `, ${failed.length} failed` : ''}; ${needDns} needed DNS` +
        `${values.offline ? ' (offline: pinned answers only)' : ''}\n`,
    );
  }
  process.exitCode = failed.length ? 1 : 0;
}

export const policyTest: Command = {
  words: ['policy', 'test'],
  summary: 'policy test FILE          check a policy against allow/deny expectations',
  help,
  run,
};
