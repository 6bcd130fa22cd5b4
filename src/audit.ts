import { mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import pino, { type Logger } from 'pino';
import type { Reason } from './errors.js';

/**
 * The audit log: one JSON line per decision and one per close, with stable
 * field names. Records are handed to the writer before the client is
 * answered; `flushSync` runs before exit so none is lost on SIGTERM/SIGINT.
 */

export type Proto = 'connect' | 'http' | 'socks' | 'tcp';

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
}

export type CloseReason =
  | 'client_closed'
  | 'upstream_closed'
  | 'client_error'
  | 'upstream_error'
  | 'idle_timeout'
  | 'shutdown'
  | 'done';

export interface Closed {
  dest_ip?: string;
  bytes_up: number;
  bytes_down: number;
  duration_ms: number;
  close_reason: CloseReason;
}

export class Audit {
  private readonly stream: pino.DestinationStream & { flushSync(): void; end(): void };
  private readonly log: Logger;

  constructor(file: string) {
    // Opened synchronously: a path that cannot be written stops start-up, and
    // a flush right after start has a file to flush to.
    let fd = 1;
    if (file !== '-') {
      mkdirSync(dirname(file), { recursive: true });
      fd = openSync(file, 'a');
    }
    this.stream = pino.destination({ fd, sync: false }) as never;
    this.log = pino(
      {
        base: null,
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
      },
      this.stream,
    );
  }

  denied(a: Attempt, f: { reason: Reason; enforced: boolean; rule?: string; dest_ip?: string; range?: string; error?: string }): void {
    this.log.info({ event: 'egress.denied', ...a, ...f });
  }

  failed(a: Attempt, f: { reason: Reason; rule?: string; dest_ip?: string; error?: string }): void {
    this.log.info({ event: 'egress.failed', ...a, ...f });
  }

  allowed(a: Attempt, f: { rule?: string; dest_ip?: string }): void {
    this.log.info({ event: 'egress.allowed', ...a, ...f });
  }

  closed(a: Attempt, f: Closed): void {
    this.log.info({ event: 'egress.closed', ...a, ...f });
  }

  /** Write everything buffered, synchronously (shutdown, tests). */
  flushSync(): void {
    this.stream.flushSync();
  }

  close(): void {
    this.flushSync();
    this.stream.end();
  }
}
