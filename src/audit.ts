import pino, { type Logger } from 'pino';
import { FileSink, type AuditSink, type AuditStats, type OnError } from './audit-sink.js';
import type { Reason } from './errors.js';
import { auditChannel } from './events.js';

/**
 * The audit log: one JSON line per decision and one per close, with stable
 * field names. Records are handed to the writer before the client is
 * answered; `flushSync` runs before exit so none is lost on SIGTERM/SIGINT.
 */

export type Proto = 'connect' | 'http' | 'socks' | 'tcp' | 'transparent';

/** Who asked for what: the fields every record of one attempt shares. */
export interface Attempt {
  id: string;
  client: string;
  listener: string;
  proto: Proto;
  dest_host?: string;
  dest_port?: number;
  method?: string;
  /** For HTTP: the request's number on its client connection. */
  request?: number;
  /** The upstream parent (its key in `upstreams:`) the connection goes through. */
  via?: string;
  /** The proxy user (its name; never a password), once authenticated. */
  user?: string;
}

/** `ip:port`, IPv6 as `[ip]:port`: how records name an endpoint. */
export function formatClient(address: string | undefined, port: number | undefined): string {
  if (!address) return 'unknown';
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

export type CloseReason =
  | 'client_closed'
  | 'upstream_closed'
  | 'client_error'
  | 'upstream_error'
  /** That leg's peer stopped answering (ETIMEDOUT: keepalive probes or TCP_USER_TIMEOUT gave up). */
  | 'client_timeout'
  | 'upstream_timeout'
  | 'idle_timeout'
  | 'shutdown'
  | 'policy_changed'
  | 'done';

export interface Closed {
  dest_ip?: string;
  bytes_up: number;
  bytes_down: number;
  duration_ms: number;
  close_reason: CloseReason;
  /** HTTP: the status code the client was sent (the origin's, or the proxy's own error answer). */
  status?: number;
  /** Why the exchange ended early, when the client was told (the same code as its X-Wa-Egress-Reason). */
  reason?: Reason;
  error?: string;
}

export interface AuditOptions {
  file: string;
  /** `deny`: refuse new connections while records cannot be written; `continue`: keep serving. */
  onError: OnError;
  log?: Logger;
  /** Where lines go; by default a FileSink on `file` (a cluster worker passes its pipe to the primary). */
  sink?: AuditSink;
}

/**
 * pino's isoTime, built once per millisecond (a connection's records often
 * share one) from a prefix formatted once per second: toISOString() is the
 * costliest part of a record's header, and only the milliseconds change.
 */
let lastMs = 0;
let lastTime = '';
let secondStart = 0;
/** `,"time":"YYYY-MM-DDTHH:MM:SS.` of the second that starts at secondStart. */
let secondPrefix = '';
function isoTime(): string {
  const now = Date.now();
  if (now !== lastMs) {
    lastMs = now;
    let ms = now - secondStart;
    if (ms < 0 || ms >= 1000) {
      secondStart = now - (now % 1000);
      ms = now - secondStart;
      // toISOString ends in "sss" + "Z"; the prefix keeps everything before the milliseconds.
      secondPrefix = `,"time":"${new Date(secondStart).toISOString().slice(0, -4)}`;
    }
    lastTime = `${secondPrefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z"`;
  }
  return lastTime;
}

/** Every record object, before it is written, to auditChannel (metrics count decisions from it). */
function publish(record: object): void {
  if (auditChannel.hasSubscribers) auditChannel.publish(record);
}

/**
 * Characters JSON may carry raw that line-based tools read as line breaks
 * or controls: DEL and C1 controls (U+0085 NEL among them), U+2028/U+2029,
 * and lone surrogates (not encodable as UTF-8). pino already escapes C0
 * controls. Outside strings a JSON line has none of these, so escaping
 * them wherever they occur keeps the JSON equivalent and every record one
 * line.
 */
const UNSAFE = /[\u007f-\u009f\u2028\u2029]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

export function escapeLine(line: string): string {
  UNSAFE.lastIndex = 0;
  if (!UNSAFE.test(line)) return line;
  return line.replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export class Audit {
  private readonly sink: AuditSink;
  private onError: OnError;
  private readonly log: Logger;

  constructor(opts: AuditOptions) {
    this.sink = opts.sink ?? new FileSink(opts.file, opts.onError, opts.log);
    this.onError = opts.onError;
    const sink = this.sink;
    const dest = { write: (line: string) => sink.write(escapeLine(line)) };
    // Records are published by the methods below, not from a pino logMethod
    // hook: the hook's wrapper copies the arguments of every call.
    this.log = pino({ base: null, timestamp: isoTime, formatters: { level: (label) => ({ level: label }) } }, dest);
  }

  /** A reload's audit settings: a new destination is opened before the old one is let go (see FileSink). */
  configure(file: string, onError: OnError): void {
    this.sink.configure(file, onError);
    this.onError = onError;
  }

  /** False while the destination fails to take writes; records wait in memory. */
  get writable(): boolean {
    return this.sink.writable;
  }

  /** Whether new connections may be served (records can be written, or the operator said continue). */
  get accepting(): boolean {
    return this.sink.writable || this.onError === 'continue';
  }

  /** Records dropped because too many were waiting. */
  get dropped(): number {
    return this.sink.stats().dropped;
  }

  denied(a: Attempt, f: { reason: Reason; enforced: boolean; rule?: string; dest_ip?: string; range?: string; error?: string }): void {
    this.record({ event: 'egress.denied', ...a, ...f });
  }

  failed(a: Attempt, f: { reason: Reason; rule?: string; dest_ip?: string; error?: string }): void {
    this.record({ event: 'egress.failed', ...a, ...f });
  }

  /** `local`: the proxy answers the request itself (Max-Forwards: 0); nothing is dialled. */
  allowed(a: Attempt, f: { rule?: string; dest_ip?: string; local?: boolean }): void {
    this.record({ event: 'egress.allowed', ...a, ...f });
  }

  closed(a: Attempt, f: Closed): void {
    this.record({ event: 'egress.closed', ...a, ...f });
  }

  private record(r: object): void {
    publish(r);
    this.log.info(r);
  }

  /** Records written, waiting (lines and bytes) and dropped, for metrics. */
  stats(): AuditStats {
    return this.sink.stats();
  }

  /** Write everything waiting, now (tests, a crash). */
  flushSync(): void {
    this.sink.flushSync();
  }

  /** Reopen the file by name (logrotate moved it); keeps the old one if the new cannot be opened. */
  reopen(): void {
    this.sink.reopen();
  }

  /** Write everything and close the file. */
  close(): void {
    this.sink.close();
  }
}
