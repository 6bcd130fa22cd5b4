import pino, { type Logger } from 'pino';

/** Operational log (start, listening addresses, errors): JSON lines on stderr. */
export function createLogger(level = process.env.WA_EGRESS_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ fd: 2, sync: true }));
}

export type { Logger };
