import { closeSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Where audit lines go: a file (appended) or stdout. Lines are batched and
 * written synchronously at most `BATCH_MS` after the first of them waits (at
 * once past `BATCH_BYTES`), so a failure is known within milliseconds,
 * nothing is ever "in flight" when the process must exit, and a failed
 * write keeps its lines to try again. The window lets a busy gateway write
 * many connections' records with one system call, not one or two each. Memory for waiting lines is
 * bounded; past the bound a line is dropped and reported, never silently.
 */

export interface AuditFileEvents {
  /** A write failed (ENOSPC, EPIPE, ...): lines wait in memory. */
  onError(err: NodeJS.ErrnoException): void;
  /** A write succeeded after failures. */
  onRecover(): void;
  /** A line was dropped because too much was waiting. */
  onDrop(): void;
}

const MAX_WAITING = 64 * 1024 * 1024;
const BATCH_MS = 5;
const BATCH_BYTES = 64 * 1024;
const RETRY_MS = 1000;
const EAGAIN_MS = 5;

export class AuditFile {
  private fd: number;
  private waiting: string[] = [];
  /** Counters for metrics: lines written, and lines and bytes (UTF-16 units) waiting. */
  written = 0;
  waitingLines = 0;
  waitingBytes = 0;
  private batch: NodeJS.Timeout | undefined;
  private readonly onBatch = () => {
    this.batch = undefined;
    this.flush();
  };
  private retry: NodeJS.Timeout | undefined;
  failing = false;

  constructor(
    readonly path: string,
    private readonly events: AuditFileEvents,
  ) {
    this.fd = AuditFile.open(path);
  }

  /** Opened synchronously: a path that cannot be opened is an error now, not later. */
  private static open(path: string): number {
    if (path === '-') return 1;
    mkdirSync(dirname(path), { recursive: true });
    return openSync(path, 'a');
  }

  /** pino's destination interface. */
  write(line: string): boolean {
    if (this.waitingBytes + line.length > MAX_WAITING) {
      this.events.onDrop();
      return false;
    }
    this.waiting.push(line);
    this.waitingBytes += line.length;
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
    while (this.waiting.length) {
      const batch = Buffer.from(this.waiting.join(''));
      let n: number;
      try {
        n = writeSync(this.fd, batch);
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
      const rest = batch.subarray(n).toString();
      this.waiting = rest ? [rest] : [];
      this.waitingBytes = rest.length;
      // Every line ends in a newline: a line cut short is still waiting.
      const left = rest ? rest.split('\n').length - 1 : 0;
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
  }

  close(): boolean {
    clearTimeout(this.retry);
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
