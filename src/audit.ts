import pino, { type Logger } from 'pino';
import { AuditFile } from './audit-file.js';
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
  onError: 'deny' | 'continue';
  log?: Logger;
}

/** pino's isoTime, formatted once per millisecond: a connection's records often share one. */
let lastMs = 0;
let lastTime = '';
function isoTime(): string {
  const now = Date.now();
  if (now !== lastMs) {
    lastMs = now;
    lastTime = `,"time":"${new Date(now).toISOString()}"`;
  }
  return lastTime;
}

/** Every record object, before it is written, to auditChannel (metrics count decisions from it). */
function publish(this: Logger, args: Parameters<Logger['info']>, method: (...a: typeof args) => void): void {
  if (auditChannel.hasSubscribers && typeof args[0] === 'object') auditChannel.publish(args[0]);
  method.apply(this, args);
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
  private out: AuditFile;
  /** Destinations replaced by a reload that still had records to write. */
  private readonly previous: AuditFile[] = [];
  /** Lines written to destinations a reload replaced (stats count on across a switch). */
  private writtenBefore = 0;
  private replacedBefore = 0;
  private reopenFailuresBefore = 0;
  private readonly log: Logger;
  dropped = 0;

  constructor(private readonly opts: AuditOptions) {
    this.out = this.openFile(opts.file);
    // Through `this.out`, so a reload can switch files between two records.
    const dest = { write: (line: string) => this.out.write(escapeLine(line)) };
    this.log = pino({ base: null, timestamp: isoTime, formatters: { level: (label) => ({ level: label }) }, hooks: { logMethod: publish } }, dest);
  }

  private openFile(file: string): AuditFile {
    const log = this.opts.log;
    return new AuditFile(file, {
      onError: (err) =>
        log?.error(
          { err: err.code ?? err.message, on_error: this.opts.onError },
          this.opts.onError === 'deny' ? 'audit log cannot be written: refusing new connections' : 'audit log cannot be written',
        ),
      onRecover: () => {
        log?.info('audit log writable again');
        // After flush() has returned: an old destination a reload replaced is done once written.
        queueMicrotask(() => this.retire());
      },
      onDrop: () => log?.error({ dropped: ++this.dropped }, 'audit record dropped: too many records waiting'),
      onReplaced: (reopened, err) =>
        reopened
          ? log?.warn({ file }, 'audit file was deleted or replaced: reopened the path')
          : log?.error(
              { file, err: err?.code ?? err?.message, on_error: this.opts.onError },
              'audit file was deleted or replaced and cannot be reopened',
            ),
    });
  }

  /**
   * A reload's audit settings. A new destination is opened first (on
   * failure this throws and the old one stays); then every record waiting
   * for the old one is written to it and it is closed, and the next record
   * goes to the new one: none is lost or written twice.
   */
  configure(file: string, onError: 'deny' | 'continue'): void {
    if (file !== this.opts.file) {
      const next = this.openFile(file);
      const old = this.out;
      this.out = next;
      // An old destination that cannot take its records now keeps them and
      // its retry timer; it is closed with the audit log.
      if (old.flush() === 'done') {
        this.closeOld(old);
      } else {
        this.previous.push(old);
        this.opts.log?.error({ file: this.opts.file }, 'the old audit destination cannot be written yet; its records wait for it');
      }
      this.opts.file = file;
      this.opts.log?.info({ file }, 'audit destination changed');
    }
    this.opts.onError = onError;
  }

  /** Close a replaced destination; its counts go on in stats(). */
  private closeOld(old: AuditFile): void {
    old.close();
    this.writtenBefore += old.written;
    this.replacedBefore += old.replaced;
    this.reopenFailuresBefore += old.reopenFailures;
  }

  /** Replaced destinations that have written what they held are closed (their path watch stops with them). */
  private retire(): void {
    for (const old of [...this.previous]) {
      if (old.failing || old.waitingLines > 0) continue;
      this.previous.splice(this.previous.indexOf(old), 1);
      this.closeOld(old);
      this.opts.log?.info({ file: old.path }, 'the old audit destination has written its records and is closed');
    }
  }

  /** False while the destination fails to take writes; records wait in memory. */
  get writable(): boolean {
    return !this.out.failing;
  }

  /** Whether new connections may be served (records can be written, or the operator said continue). */
  get accepting(): boolean {
    return this.writable || this.opts.onError === 'continue';
  }

  denied(a: Attempt, f: { reason: Reason; enforced: boolean; rule?: string; dest_ip?: string; range?: string; error?: string }): void {
    this.log.info({ event: 'egress.denied', ...a, ...f });
  }

  failed(a: Attempt, f: { reason: Reason; rule?: string; dest_ip?: string; error?: string }): void {
    this.log.info({ event: 'egress.failed', ...a, ...f });
  }

  /** `local`: the proxy answers the request itself (Max-Forwards: 0); nothing is dialled. */
  allowed(a: Attempt, f: { rule?: string; dest_ip?: string; local?: boolean }): void {
    this.log.info({ event: 'egress.allowed', ...a, ...f });
  }

  closed(a: Attempt, f: Closed): void {
    this.log.info({ event: 'egress.closed', ...a, ...f });
  }

  /** Records written, waiting (lines and bytes) and dropped, for metrics. */
  stats(): { written: number; waitingLines: number; waitingBytes: number; dropped: number; replaced: number; reopenFailures: number } {
    const all = [...this.previous, this.out];
    const sum = (f: (o: AuditFile) => number) => all.reduce((n, o) => n + f(o), 0);
    return {
      written: this.writtenBefore + sum((o) => o.written),
      waitingLines: sum((o) => o.waitingLines),
      waitingBytes: sum((o) => o.waitingBytes),
      dropped: this.dropped,
      replaced: this.replacedBefore + sum((o) => o.replaced),
      reopenFailures: this.reopenFailuresBefore + sum((o) => o.reopenFailures),
    };
  }

  /** Write everything waiting, now (tests, a crash). */
  flushSync(): void {
    for (const out of this.previous) out.flushSync(0);
    this.out.flushSync(0);
  }

  /** Reopen the file by name (logrotate moved it); keeps the old one if the new cannot be opened. */
  reopen(): void {
    try {
      this.out.reopen();
      this.opts.log?.info({ file: this.opts.file }, 'audit file reopened');
    } catch (err) {
      this.opts.log?.error({ err }, 'cannot reopen the audit file; still writing to the old one');
    }
  }

  /** Write everything and close the file. */
  close(): void {
    for (const out of [...this.previous, this.out]) {
      if (!out.close()) this.opts.log?.error({ file: out.path }, 'audit records could not be written before exit');
    }
  }
}
