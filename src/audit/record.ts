import type { Attempt, Audit, Closed } from '../audit.js';

/**
 * The audit record as read back: the shapes the writer (src/audit.ts)
 * produces, derived from its method signatures so that writer and readers
 * share one schema.
 */

type Fields<M extends 'denied' | 'failed' | 'allowed'> = Parameters<Audit[M]>[1];

interface Common extends Attempt {
  level?: string;
  time: string;
  /** The authenticated user, when the listener knows one. */
  user?: string;
}

export type DeniedRecord = Common & Fields<'denied'> & { event: 'egress.denied' };
export type FailedRecord = Common & Fields<'failed'> & { event: 'egress.failed' };
export type AllowedRecord = Common & Fields<'allowed'> & { event: 'egress.allowed' };
export type ClosedRecord = Common & Closed & { event: 'egress.closed' };
export type AuditRecord = DeniedRecord | FailedRecord | AllowedRecord | ClosedRecord;

export const EVENTS: ReadonlySet<string> = new Set(['egress.denied', 'egress.failed', 'egress.allowed', 'egress.closed']);

export type Parsed = { record: AuditRecord; ms: number } | { malformed: string } | { ignored: true };

/**
 * One line: an audit record (with its time in ms), a malformed line (not a
 * JSON object, or a record without a usable time), or another JSON line
 * (an operational log line in the same stream) to skip.
 */
export function parseLine(line: string): Parsed {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return { malformed: 'not JSON' };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { malformed: 'not a JSON object' };
  const r = v as Record<string, unknown>;
  if (typeof r.event !== 'string' || !EVENTS.has(r.event)) return { ignored: true };
  const ms = typeof r.time === 'string' ? Date.parse(r.time) : typeof r.time === 'number' ? r.time : NaN;
  if (!Number.isFinite(ms)) return { malformed: 'record without a valid time' };
  return { record: r as unknown as AuditRecord, ms };
}
