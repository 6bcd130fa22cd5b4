import { closeSync, fstatSync, fsyncSync, statSync, writeSync } from 'node:fs';
import { openAuditPath } from './audit-path.js';
import { auditSinkChannel, type AuditSinkEvent } from './events.js';

/**
 * Where audit lines go: a file (appended) or stdout. Lines are batched and
 * written synchronously at most `BATCH_MS` after the first of them waits (at
 * once past `BATCH_BYTES`), so a failure is known within milliseconds,
 * nothing is ever "in flight" when the process must exit, and a failed
 * write keeps its lines to try again. The window lets a busy gateway write
 * many connections' records with one system call, not one or two each. Memory for waiting lines is
 * bounded; past the bound a line is dropped and reported, never silently.
 * Lines wait as strings and are encoded once per batch (not a buffer per
 * record); a batch a write took only part of waits as bytes, so a partial
 * write resumes at the exact byte it stopped at, even inside a multi-byte
 * character.
 *
 * Every `WATCH_MS` the path is compared with the open file (device and
 * inode): a file deleted or replaced under the gateway is noticed and the
 * path reopened; while it cannot be, records wait and the writer is failing
 * (so `audit.on_error` applies), and the watch keeps trying.
 */

export interface AuditFileEvents {
  /** A write failed (ENOSPC, EPIPE, ...): lines wait in memory. */
  onError(err: NodeJS.ErrnoException): void;
  /** A write succeeded after failures. */
  onRecover(): void;
  /** A line was dropped because too much was waiting. */
  onDrop(): void;
  /** The path no longer names the open file (deleted or replaced); `reopened`: writing to the new one. */
  onReplaced?(reopened: boolean, err?: NodeJS.ErrnoException): void;
}

/** Bytes of records that may wait to be written; past it each one is dropped and counted (a cluster worker's unsent records too). */
export const MAX_WAITING = 64 * 1024 * 1024;
const BATCH_MS = 5;
const BATCH_BYTES = 64 * 1024;
const RETRY_MS = 1000;
const EAGAIN_MS = 5;
const WATCH_MS = 1000;

export class AuditFile {
  private fd: number;
  /** Lines not yet encoded, in order after `rest`. */
  private lines: string[] = [];
  /** The encoded batch not yet (or only partly) written: it goes first. */
  private rest: Buffer | undefined;
  /** Counters for metrics: lines written, and lines and bytes waiting. */
  written = 0;
  waitingLines = 0;
  waitingBytes = 0;
  private batch: NodeJS.Timeout | undefined;
  private readonly onBatch = () => {
    this.batch = undefined;
    this.flush();
  };
  private retry: NodeJS.Timeout | undefined;
  private watch: NodeJS.Timeout | undefined;
  /** The path was replaced and could not be reopened: the open file is not the audit file any more. */
  private lost: NodeJS.ErrnoException | undefined;
  failing = false;
  /** Times the path was found deleted or replaced (for metrics). */
  replaced = 0;
  /** Failed attempts to reopen a replaced path (for metrics). */
  reopenFailures = 0;

  constructor(
    readonly path: string,
    private readonly events: AuditFileEvents,
  ) {
    this.fd = AuditFile.open(path);
    if (this.fd !== 1) this.watch = setInterval(() => this.check(), WATCH_MS).unref();
  }

  /**
   * Opened synchronously: a path that cannot be opened is an error now, not
   * later (AuditPathError, in the words `config check` uses for the same path).
   */
  private static open(path: string): number {
    if (path === '-') return 1;
    return openAuditPath(path);
  }

  /** pino's destination interface. */
  write(line: string): boolean {
    const bytes = Buffer.byteLength(line);
    if (this.waitingBytes + bytes > MAX_WAITING) {
      this.events.onDrop();
      return false;
    }
    this.lines.push(line);
    this.waitingBytes += bytes;
    this.waitingLines++;
    // While failing, or waiting out a full pipe, the retry timer writes them.
    if (this.failing || this.retry) return true;
    if (this.waitingBytes >= BATCH_BYTES) this.flush();
    else this.batch ??= setTimeout(this.onBatch, BATCH_MS);
    return true;
  }

  /** Write what is waiting; on failure keep it and try again later. */
  flush(): 'done' | 'again' | 'failed' {
    if (this.batch) {
      clearTimeout(this.batch);
      this.batch = undefined;
    }
    while (this.rest || this.lines.length) {
      // Everything waiting, as one buffer: kept in `rest` until written.
      const batch = this.encode();
      let n: number;
      try {
        if (this.lost) throw this.lost;
        n = this.writeFd(this.fd, batch);
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        // A full pipe is back-pressure, not a failure.
        this.later(e.code === 'EAGAIN' ? EAGAIN_MS : RETRY_MS);
        if (e.code === 'EAGAIN') return 'again';
        if (!this.failing) {
          this.failing = true;
          this.events.onError(e);
        }
        return 'failed';
      }
      const rest = batch.subarray(n);
      this.rest = rest.length ? rest : undefined;
      this.waitingBytes = rest.length;
      // Every line ends in a newline: a line cut short is still waiting.
      const left = countNewlines(rest);
      this.written += this.waitingLines - left;
      this.waitingLines = left;
    }
    if (this.failing) {
      this.failing = false;
      clearTimeout(this.retry);
      this.retry = undefined;
      this.events.onRecover();
    }
    return 'done';
  }

  /**
   * The waiting lines appended to `rest`, which then holds all that waits.
   * (Every line ends in a newline, so joining them pairs no surrogates that
   * encoding them one by one would not.)
   */
  private encode(): Buffer {
    if (this.lines.length) {
      const fresh = Buffer.from(this.lines.length === 1 ? this.lines[0]! : this.lines.join(''));
      this.lines = [];
      this.rest = this.rest ? Buffer.concat([this.rest, fresh]) : fresh;
    }
    return this.rest!;
  }

  /** The one system call that writes (a seam for tests that inject short writes). */
  protected writeFd(fd: number, data: Buffer): number {
    return writeSync(fd, data);
  }

  /** Whether the path still names the open file; if not, reopen it (see the class comment). */
  check(): void {
    if (this.fd === 1) return;
    if (!this.lost) {
      try {
        const open = fstatSync(this.fd);
        const now = statSync(this.path);
        if (open.dev === now.dev && open.ino === now.ino) return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return;
      }
      this.replaced++;
      publish('replaced');
    }
    let next: number;
    try {
      next = AuditFile.open(this.path);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      this.reopenFailures++;
      publish('reopen_failed');
      const first = !this.lost;
      this.lost = e;
      if (first) this.events.onReplaced?.(false, e);
      if (!this.failing) {
        this.failing = true;
        this.events.onError(e);
      }
      return;
    }
    // What waits goes to the new file: the old one is gone from the path.
    const old = this.fd;
    this.fd = next;
    this.lost = undefined;
    closeQuietly(old);
    publish('reopened');
    this.events.onReplaced?.(true);
    this.flush();
  }

  private later(ms: number): void {
    this.retry ??= setTimeout(() => {
      this.retry = undefined;
      this.flush();
    }, ms).unref();
  }

  /**
   * Write everything now (shutdown). Waits through a full pipe for up to
   * `ms`; returns false if lines could not be written.
   */
  flushSync(ms = 5000): boolean {
    const deadline = Date.now() + ms;
    for (;;) {
      const result = this.flush();
      if (result !== 'again') return result === 'done';
      if (Date.now() > deadline) return false;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, EAGAIN_MS);
    }
  }

  /** Reopen by path (after logrotate moved the file); the old file gets what was waiting. */
  reopen(): void {
    if (this.path === '-') return;
    const next = AuditFile.open(this.path);
    this.flush();
    const old = this.fd;
    this.fd = next;
    closeQuietly(old);
    // The path had been lost (see check): what waited goes to the new file.
    if (this.lost) {
      this.lost = undefined;
      this.flush();
    }
  }

  close(): boolean {
    clearTimeout(this.retry);
    clearInterval(this.watch);
    const ok = this.flushSync();
    if (this.fd !== 1) {
      try {
        fsyncSync(this.fd);
      } catch {
        // Not every destination can be synced.
      }
      closeQuietly(this.fd);
    }
    return ok;
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Already closed.
  }
}

function countNewlines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(10); i >= 0; i = b.indexOf(10, i + 1)) n++;
  return n;
}

function publish(state: AuditSinkEvent['state']): void {
  if (auditSinkChannel.hasSubscribers) auditSinkChannel.publish({ state } satisfies AuditSinkEvent);
}
