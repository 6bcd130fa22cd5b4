import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { reportHtml } from '../audit/report-html.js';
import { fail, type Command } from './command.js';
import { auditOptions, summaryFromArgs } from './audit-summary.js';

const help = `Usage: wa-egress audit report --out FILE [FILE...] [options]

Write the audit summary as one self-contained HTML page: a timeline of
allowed, denied and failed connection attempts and the summary's tables.
No external script, style or font: it opens on an air-gapped machine, on a
phone or a desktop. Input as for "audit summary" (stdin when no FILE).

Options:
  -o, --out FILE     the HTML file to write ("-" for stdout); required
      --since TIME   only records at or after TIME (ISO 8601, or 24h, 7d ago)
      --until TIME   only records before TIME
      --top N        rows per table (default 10)
  -h, --help         show this help
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...auditOptions, out: { type: 'string', short: 'o' } },
  });
  if (values.help) return void process.stdout.write(help);
  if (!values.out) fail('--out FILE is required', help);
  if (values.json) fail('--json is for "audit summary"; the report is HTML', help);
  const s = await summaryFromArgs(values, positionals, help);
  const html = reportHtml(s);
  if (values.out === '-') return void process.stdout.write(html);
  try {
    writeFileSync(values.out, html);
  } catch (err) {
    fail(`${values.out}: cannot write: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  process.stderr.write(`wrote ${values.out}: ${s.input.records} records, ${s.input.malformed} malformed lines\n`);
}

export const auditReport: Command = {
  words: ['audit', 'report'],
  summary: 'audit report --out FILE   the summary as a self-contained HTML page with a timeline',
  help,
  run,
};
