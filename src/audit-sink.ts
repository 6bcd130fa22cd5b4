import { AuditFile } from './audit-file.js';
import type { Logger } from './log.js';

/**
 * Where formatted audit lines go. A single process (and a cluster's
 * primary) writes them itself with FileSink; a cluster worker hands them to
 * the primary (ops/worker.ts), so one process writes the log and records
 * of different workers never interleave.
 */
export interface AuditSink {
  /** One JSON line, newline included. */
  write(line: string): void;
  /** False while the destination fails to take writes (records wait). */
  readonly writable: boolean;
  /** A reload's audit settings. */
  configure(file: string, onError: OnError): void;
  stats(): AuditStats;
  /** Write everything waiting, now (a crash, tests). */
  flushSync(): void;
  /** Reopen the file by its name (logrotate moved it). */
  reopen(): void;
  /** Write everything and close. */
  close(): void;
}

export type OnError = 'deny' | 'continue';

export interface AuditStats {
  written: number;
  waitingLines: number;
  waitingBytes: number;
  dropped: number;
  replaced: number;
  reopenFailures: number;
}

/** The audit destination (`audit.file`: a path, or `-` for stdout), kept across reloads. */
export class FileSink implements AuditSink {
  private out: AuditFile;
  /** Destinations replaced by a reload that still had records to write. */
  private readonly previous: AuditFile[] = [];
  /** Lines written to destinations a reload replaced (stats count on across a switch). */
  private writtenBefore = 0;
  private replacedBefore = 0;
  private reopenFailuresBefore = 0;
  dropped = 0;

  constructor(
    private file: string,
    private onError: OnError,
    private readonly log?: Logger,
    /** Called when the destination starts or stops failing (a cluster's primary tells its workers). */
    private readonly onWritable?: (writable: boolean) => void,
  ) {
    this.out = this.openFile(file);
  }

  write(line: string): void {
    this.out.write(line);
  }

  private openFile(file: string): AuditFile {
    const log = this.log;
    return new AuditFile(file, {
      onError: (err) => {
        log?.error(
          { err: err.code ?? err.message, on_error: this.onError },
          this.onError === 'deny' ? 'audit log cannot be written: refusing new connections' : 'audit log cannot be written',
        );
        this.onWritable?.(false);
      },
      onRecover: () => {
        log?.info('audit log writable again');
        this.onWritable?.(this.writable);
        // After flush() has returned: an old destination a reload replaced is done once written.
        queueMicrotask(() => this.retire());
      },
      onDrop: () => log?.error({ dropped: ++this.dropped }, 'audit record dropped: too many records waiting'),
      onReplaced: (reopened, err) => {
        if (reopened) return void log?.warn({ file }, 'audit file was deleted or replaced: reopened the path');
        log?.error({ file, err: err?.code ?? err?.message, on_error: this.onError }, 'audit file was deleted or replaced and cannot be reopened');
        this.onWritable?.(this.writable);
      },
    });
  }

  /**
   * A new destination is opened first (on failure this throws and the old
   * one stays); then every record waiting for the old one is written to it
   * and it is closed, and the next record goes to the new one: none is lost
   * or written twice.
   */
  configure(file: string, onError: OnError): void {
    if (file !== this.file) {
      const next = this.openFile(file);
      const old = this.out;
      this.out = next;
      // An old destination that cannot take its records now keeps them and
      // its retry timer; it is closed with the audit log.
      if (old.flush() === 'done') {
        this.closeOld(old);
      } else {
        this.previous.push(old);
        this.log?.error({ file: this.file }, 'the old audit destination cannot be written yet; its records wait for it');
      }
      this.file = file;
      this.log?.info({ file }, 'audit destination changed');
      this.onWritable?.(this.writable);
    }
    this.onError = onError;
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
      this.log?.info({ file: old.path }, 'the old audit destination has written its records and is closed');
    }
  }

  get writable(): boolean {
    return !this.out.failing;
  }

  stats(): AuditStats {
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

  flushSync(): void {
    for (const out of this.previous) out.flushSync(0);
    this.out.flushSync(0);
  }

  /** Keeps the old file if the new one cannot be opened. */
  reopen(): void {
    try {
      this.out.reopen();
      this.log?.info({ file: this.file }, 'audit file reopened');
    } catch (err) {
      this.log?.error({ err }, 'cannot reopen the audit file; still writing to the old one');
    }
  }

  close(): void {
    for (const out of [...this.previous, this.out]) {
      if (!out.close()) this.log?.error({ file: out.path }, 'audit records could not be written before exit');
    }
  }
}
