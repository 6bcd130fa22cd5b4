import pino, { type Logger } from 'pino';

/**
 * Operational log (start, listening addresses, warnings, errors): JSON lines
 * on stderr, with `"level":"info"` as the audit log writes it.
 * WA_EGRESS_LOG_LEVEL picks what is written (trace, debug, info, warn,
 * error, fatal, silent); an unknown name is reported and info is used.
 */
export function createLogger(level = process.env.WA_EGRESS_LOG_LEVEL ?? 'info', bindings: Record<string, unknown> = {}): Logger {
  const known = level in pino.levels.values || level === 'silent';
  const log = pino(
    { level: known ? level : 'info', base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
    pino.destination({ fd: 2, sync: true }),
  );
  if (!known) log.warn({ WA_EGRESS_LOG_LEVEL: level }, 'unknown log level; using info (levels: trace, debug, info, warn, error, fatal, silent)');
  return log;
}

export type { Logger };
