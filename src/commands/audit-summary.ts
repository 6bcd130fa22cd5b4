import { parseArgs } from 'node:util';
import { formatSummary } from '../audit/format.js';
import { unreadable } from '../audit/read.js';
import { parseTime, summarize, type SummaryOptions, type SummaryResult } from '../audit/summary.js';
import { fail, type Command } from './command.js';

const help = `Usage: wa-egress audit summary [FILE...] [options]

Summarise audit logs: totals, time range, allowed/denied/failed, denials by
reason, top denied destinations, top clients and users, bytes. Reads stdin
when no FILE is given. Files may be plain or gzip (told apart by content);
rotated files named in any order are read in time order. Malformed lines are
counted and reported, never fatal. Memory stays constant whatever the size.

Options:
      --since TIME   only records at or after TIME: ISO 8601
                     (2026-11-25, 2026-11-25T17:00:00Z) or a span ago (90m, 24h, 7d)
      --until TIME   only records before TIME
      --top N        rows per table (default 10)
      --json         print the summary as JSON
  -h, --help         show this help
`;

export const auditOptions = {
  since: { type: 'string' },
  until: { type: 'string' },
  top: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** The summary the shared options and file arguments ask for; bad usage exits via fail(). */
export async function summaryFromArgs(values: { since?: string; until?: string; top?: string }, files: string[], help: string): Promise<SummaryResult> {
  const opts: SummaryOptions = {};
  for (const key of ['since', 'until'] as const) {
    const text = values[key];
    if (text === undefined) continue;
    const ms = parseTime(text);
    if (ms === null) fail(`--${key}: expected an ISO 8601 date or time, or a span such as 24h, got ${JSON.stringify(text)}`, help);
    opts[key] = ms;
  }
  if (values.top !== undefined) {
    if (!/^\d{1,4}$/.test(values.top) || Number(values.top) < 1) fail(`--top: expected a number from 1 to 9999, got ${JSON.stringify(values.top)}`);
    opts.top = Number(values.top);
  }
  if ((files.length === 0 || files.includes('-')) && process.stdin.isTTY) {
    fail('no audit FILE given and stdin is a terminal: name files, or pipe records in', help);
  }
  const problem = unreadable(files);
  if (problem) fail(problem);
  return summarize(files, opts);
}

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: auditOptions });
  if (values.help) return void process.stdout.write(help);
  const s = await summaryFromArgs(values, positionals, help);
  process.stdout.write(values.json ? `${JSON.stringify(s, null, 2)}\n` : formatSummary(s));
}

export const auditSummary: Command = {
  words: ['audit', 'summary'],
  summary: 'audit summary [FILE...]   totals, denials by reason, top destinations and clients',
  help,
  run,
};
