import { z } from 'zod';
import { canonicalIp, parseCidr } from '../net/ip.js';
import { compilePattern } from '../policy/patterns.js';

/**
 * Value types of the configuration (durations, sizes, addresses, ports,
 * CIDRs, hostname patterns): parsed and compiled here, with messages in
 * the project's words, for schema.ts and the modules that own a section.
 */

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * `250ms`, `10s`, `5m`, `1h`, or 0. A bare number other than 0 is refused:
 * `keepalive: 30` would otherwise be 30 ms where 30 s was meant.
 */
export function parseDuration(v: number | string): number | null {
  if (typeof v === 'number') return v === 0 ? 0 : null;
  const m = /^(\d+)(ms|s|m|h)?$/.exec(v.trim());
  if (!m || (m[2] === undefined && Number(m[1]) !== 0)) return null;
  return Number(m[1]) * UNITS[m[2] ?? 'ms']!;
}

function durationProblem(v: unknown): string {
  const bare = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : undefined;
  if (bare !== undefined && Number.isInteger(bare) && bare > 0) {
    // Small numbers were most likely meant as seconds, large ones as milliseconds.
    const write = bare < 1000 ? `${bare}s or ${bare * 1000}ms` : `${bare}ms${bare % 1000 === 0 ? ` or ${bare / 1000}s` : ''}`;
    return `${bare} has no unit: write ${write} (units ms, s, m, h; only 0 may be bare)`;
  }
  return `expected a duration such as 250ms, 10s, 5m or 1h (or 0), got ${JSON.stringify(v)}`;
}

export const duration = (min = 0) =>
  z.unknown().transform((v, ctx) => {
    const ms = typeof v === 'number' || typeof v === 'string' ? parseDuration(v) : null;
    if (ms === null) {
      ctx.addIssue({ code: 'custom', message: durationProblem(v) });
      return z.NEVER;
    }
    if (ms < min) {
      ctx.addIssue({ code: 'custom', message: `must be at least ${min} ms` });
      return z.NEVER;
    }
    return ms;
  });

const SIZE_UNITS: Record<string, number> = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, kb: 1000, mb: 1000 ** 2, gb: 1000 ** 3 };

/** `512B`, `64KiB`, `1MiB`, `1GiB` (or kB, MB, GB), or 0; a bare number other than 0 is refused. */
export function parseSize(v: number | string): number | null {
  if (typeof v === 'number') return v === 0 ? 0 : null;
  const m = /^(\d+)\s*([A-Za-z]+)?$/.exec(v.trim());
  if (!m) return null;
  if (m[2] === undefined) return Number(m[1]) === 0 ? 0 : null;
  const unit = SIZE_UNITS[m[2].toLowerCase()];
  return unit === undefined ? null : Number(m[1]) * unit;
}

/** A size key (for `limits:` and the like): bytes after parsing. */
export const size = (min = 0, max = Number.MAX_SAFE_INTEGER) =>
  z.unknown().transform((v, ctx) => {
    const bytes = typeof v === 'number' || typeof v === 'string' ? parseSize(v) : null;
    if (bytes === null) {
      const bare = typeof v === 'number' || (typeof v === 'string' && /^\s*\d+\s*$/.test(v)) ? Number(v) : undefined;
      ctx.addIssue({
        code: 'custom',
        message:
          bare !== undefined && bare > 0
            ? `${bare} has no unit: write ${bare}B, or e.g. ${bare}KiB (units B, KiB, MiB, GiB, kB, MB, GB; only 0 may be bare)`
            : `expected a size such as 64KiB, 1MiB or 512B (or 0), got ${JSON.stringify(v)}`,
      });
      return z.NEVER;
    }
    if (bytes < min || bytes > max) {
      ctx.addIssue({ code: 'custom', message: bytes < min ? `must be at least ${min} bytes` : `must be at most ${max} bytes` });
      return z.NEVER;
    }
    return bytes;
  });

export interface ListenAddress {
  host: string;
  port: number;
  text: string;
}

/** `ip:port` or `[v6]:port`; port 0 picks a free port. */
export function parseListenAddress(text: string): ListenAddress | null {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text.trim());
  if (!m) return null;
  const ip = canonicalIp(m[1] ?? m[2]!);
  const port = Number(m[3]);
  if (!ip || (m[1] !== undefined) !== (ip.family === 6) || port > 65535) return null;
  return { host: ip.ip, port, text };
}

export const listenAddress = z.string().transform((v, ctx) => {
  const a = parseListenAddress(v);
  if (!a) ctx.addIssue({ code: 'custom', message: `expected "ip:port" or "[ipv6]:port", got ${JSON.stringify(v)}` });
  return a ?? z.NEVER;
});

/** A limit: a whole number, 0 = none. */
export const count = z.number().int('must be a whole number').min(0, 'must be 0 (no limit) or more');

export const port = z.number().int().min(1, 'ports are 1-65535').max(65535, 'ports are 1-65535');

export const cidr = z.string().transform((v, ctx) => {
  try {
    return parseCidr(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

export const pattern = z.string().transform((v, ctx) => {
  try {
    return compilePattern(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});
