import type { SummaryResult, Table } from './summary.js';

/** Numbers and sizes as people read them, shared by the text summary and the HTML report. */

export function count(n: number): string {
  return n.toLocaleString('en-US');
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** The titled tables of a summary, in display order; `bytes` marks a table of byte counts. */
export function tables(s: SummaryResult): { id: string; title: string; table: Table; bytes?: boolean }[] {
  return [
    { id: 'denials-by-reason', title: 'Denials by reason', table: s.denials_by_reason },
    { id: 'would-deny-by-reason', title: 'Report mode: would deny, by reason', table: s.would_deny_by_reason },
    { id: 'failures-by-reason', title: 'Failures by reason', table: s.failures_by_reason },
    { id: 'top-denied-destinations', title: 'Top denied destinations', table: s.top_denied_destinations },
    { id: 'top-clients', title: 'Top clients (connection attempts)', table: s.top_clients },
    { id: 'top-denied-clients', title: 'Top denied clients', table: s.top_denied_clients },
    { id: 'top-users', title: 'Top users', table: s.top_users },
    { id: 'top-destinations-by-bytes', title: 'Top destinations by bytes', table: s.top_destinations_by_bytes, bytes: true },
  ];
}

function inputLine(s: SummaryResult): string {
  const i = s.input;
  const files = i.sources.map((x) => `${x.name}${x.gzip ? ' (gzip)' : ''}${x.error ? ` [broke off: ${x.error}]` : ''}`).join(', ');
  return `${count(i.records)} records from ${files || 'no input'}; ${count(i.malformed)} malformed line${i.malformed === 1 ? '' : 's'}, ${count(i.ignored)} other JSON line${i.ignored === 1 ? '' : 's'} skipped`;
}

/** The plain-text summary. */
export function formatSummary(s: SummaryResult): string {
  const out: string[] = [];
  out.push(`Input:       ${inputLine(s)}`);
  for (const e of s.input.examples) out.push(`             malformed: ${e.source}:${e.line}: ${e.problem}`);
  if (s.window.since || s.window.until) {
    out.push(`Window:      ${s.window.since ?? '…'} to ${s.window.until ?? '…'} (${count(s.outside)} records outside)`);
  }
  out.push(`Time range:  ${s.first ? `${s.first} to ${s.last}` : 'no records'}`);
  out.push(
    `Connections: ${count(s.attempts)} attempts: ${count(s.events.allowed)} allowed, ${count(s.denied)} denied, ${count(s.events.failed)} failed` +
      (s.would_deny ? `; report mode would have denied ${count(s.would_deny)}` : ''),
  );
  out.push(`Bytes:       ${bytes(s.bytes.up)} up, ${bytes(s.bytes.down)} down (${count(s.events.closed)} closed connections)`);
  for (const t of tables(s)) {
    if (t.table.rows.length === 0) continue;
    out.push('', `${t.title}${t.table.error ? ` (approximate: counts may be low by up to ${count(t.table.error)})` : ''}`);
    const width = Math.max(...t.table.rows.map((r) => r.key.length));
    for (const r of t.table.rows) out.push(`  ${r.key.padEnd(width)}  ${t.bytes ? bytes(r.count) : count(r.count)}`);
  }
  return `${out.join('\n')}\n`;
}
