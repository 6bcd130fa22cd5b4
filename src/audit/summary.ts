import type { AuditRecord } from './record.js';
import { newStats, readAudit, type ReadStats } from './read.js';
import { Timeline, type Bucket } from './timeline.js';
import { TopN } from './top.js';

/**
 * The aggregation behind `audit summary` and `audit report`, in constant
 * memory: plain counters, bounded top-N tables (top.ts) and a bounded
 * timeline (timeline.ts), whatever the size of the log.
 */

export interface Ranked {
  key: string;
  count: number;
}

export interface Table {
  rows: Ranked[];
  /** Counts may be low by at most this much (0: exact). */
  error: number;
  /** Distinct keys seen (a lower bound when `error` > 0). */
  distinct: number;
}

export interface SummaryResult {
  window: { since?: string; until?: string };
  first?: string;
  last?: string;
  records: number;
  /** Records outside --since/--until. */
  outside: number;
  events: { allowed: number; denied: number; failed: number; closed: number };
  /** Connection attempts judged: allowed + denied (enforced) + failed. */
  attempts: number;
  /** Enforced denials; report mode's would-be denials are counted apart. */
  denied: number;
  would_deny: number;
  bytes: { up: number; down: number };
  denials_by_reason: Table;
  would_deny_by_reason: Table;
  failures_by_reason: Table;
  top_denied_destinations: Table;
  top_clients: Table;
  top_denied_clients: Table;
  top_users: Table;
  top_destinations_by_bytes: Table;
  timeline: { width_ms: number; buckets: Bucket[] };
  input: ReadStats;
}

export interface SummaryOptions {
  since?: number;
  until?: number;
  /** Rows per table. */
  top?: number;
}

/** `host:port`, IPv6 literals in brackets. */
function destination(r: AuditRecord): string {
  const host = r.dest_host ?? r.dest_ip ?? '?';
  return `${host.includes(':') ? `[${host}]` : host}:${r.dest_port ?? '?'}`;
}

/** The client's address without its port. */
function clientIp(client: string): string {
  if (client.startsWith('[')) return client.slice(1, client.indexOf(']'));
  const colon = client.lastIndexOf(':');
  return colon < 0 ? client : client.slice(0, colon);
}

export class Summary {
  private first = Infinity;
  private last = -Infinity;
  private records = 0;
  private outside = 0;
  private readonly events = { allowed: 0, denied: 0, failed: 0, closed: 0 };
  private denied = 0;
  private wouldDeny = 0;
  private up = 0;
  private down = 0;
  private readonly byReason = new TopN(200);
  private readonly wouldByReason = new TopN(200);
  private readonly failByReason = new TopN(200);
  private readonly deniedDest = new TopN();
  private readonly clients = new TopN();
  private readonly deniedClients = new TopN();
  private readonly users = new TopN();
  private readonly bytesDest = new TopN();
  private readonly timeline = new Timeline();

  constructor(private readonly opts: SummaryOptions = {}) {}

  add(r: AuditRecord, ms: number): void {
    if ((this.opts.since !== undefined && ms < this.opts.since) || (this.opts.until !== undefined && ms >= this.opts.until)) {
      this.outside++;
      return;
    }
    this.records++;
    if (ms < this.first) this.first = ms;
    if (ms > this.last) this.last = ms;
    const client = typeof r.client === 'string' ? clientIp(r.client) : 'unknown';
    switch (r.event) {
      case 'egress.allowed':
        this.events.allowed++;
        this.attempt(r, client);
        this.timeline.add(ms, 'allowed');
        break;
      case 'egress.denied':
        this.events.denied++;
        this.deniedDest.add(destination(r));
        if (r.enforced === false) {
          this.wouldDeny++;
          this.wouldByReason.add(String(r.reason));
          break;
        }
        this.denied++;
        this.byReason.add(String(r.reason));
        this.deniedClients.add(client);
        this.attempt(r, client);
        this.timeline.add(ms, 'denied');
        break;
      case 'egress.failed':
        this.events.failed++;
        this.failByReason.add(String(r.reason));
        this.attempt(r, client);
        this.timeline.add(ms, 'failed');
        break;
      case 'egress.closed': {
        this.events.closed++;
        const bytes = (Number(r.bytes_up) || 0) + (Number(r.bytes_down) || 0);
        this.up += Number(r.bytes_up) || 0;
        this.down += Number(r.bytes_down) || 0;
        if (bytes > 0) this.bytesDest.add(destination(r), bytes);
        break;
      }
    }
  }

  private attempt(r: AuditRecord, client: string): void {
    this.clients.add(client);
    if (typeof r.user === 'string') this.users.add(r.user);
  }

  result(input: ReadStats): SummaryResult {
    const n = this.opts.top ?? 10;
    const table = (t: TopN): Table => ({ rows: t.top(n), error: t.floor, distinct: t.distinct });
    const iso = (ms: number | undefined) => (ms === undefined || !Number.isFinite(ms) ? undefined : new Date(ms).toISOString());
    return {
      window: { since: iso(this.opts.since), until: iso(this.opts.until) },
      first: iso(this.first),
      last: iso(this.last),
      records: this.records,
      outside: this.outside,
      events: { ...this.events },
      attempts: this.events.allowed + this.denied + this.events.failed,
      denied: this.denied,
      would_deny: this.wouldDeny,
      bytes: { up: this.up, down: this.down },
      denials_by_reason: table(this.byReason),
      would_deny_by_reason: table(this.wouldByReason),
      failures_by_reason: table(this.failByReason),
      top_denied_destinations: table(this.deniedDest),
      top_clients: table(this.clients),
      top_denied_clients: table(this.deniedClients),
      top_users: table(this.users),
      top_destinations_by_bytes: table(this.bytesDest),
      timeline: { width_ms: this.timeline.width, buckets: this.timeline.list() },
      input,
    };
  }
}

/** Summarise the named files (none: stdin). */
export async function summarize(files: readonly string[], opts: SummaryOptions = {}): Promise<SummaryResult> {
  const stats = newStats();
  const s = new Summary(opts);
  for await (const { record, ms } of readAudit(files, stats)) s.add(record, ms);
  return s.result(stats);
}

/**
 * A --since/--until value: an ISO 8601 date or time (`2026-11-25`,
 * `2026-11-25T17:00:00Z`), or a span before `now` (`90m`, `24h`, `7d`).
 * Returns ms since the epoch, or null.
 */
export function parseTime(text: string, now = Date.now()): number | null {
  const m = /^(\d+)(s|m|h|d)$/.exec(text.trim());
  if (m) return now - Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd'];
  if (!/^\d{4}-\d{2}-\d{2}/.test(text.trim())) return null;
  const ms = Date.parse(text.trim());
  return Number.isFinite(ms) ? ms : null;
}
