import { createReadStream, statSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { parseLine, type AuditRecord } from './record.js';

/**
 * Streaming reader of audit logs: files (plain or gzip, told apart by their
 * magic bytes, not their names) or stdin, line by line in bounded memory.
 * Rotated files named in any order are read in time order (by each file's
 * first record). Malformed lines are counted, with a few kept as examples,
 * never fatal.
 */

/** A line longer than this is malformed; its bytes are skipped, not buffered. */
const MAX_LINE = 1 << 20;
const EXAMPLES = 5;

export interface SourceStats {
  name: string;
  gzip: boolean;
  lines: number;
  records: number;
  malformed: number;
  /** A stream that broke off (a truncated or corrupt gzip): what was read before counts. */
  error?: string;
}

export interface ReadStats {
  sources: SourceStats[];
  lines: number;
  records: number;
  malformed: number;
  /** JSON lines that are not audit records (operational logs in the same stream). */
  ignored: number;
  examples: { source: string; line: number; problem: string }[];
}

export function newStats(): ReadStats {
  return { sources: [], lines: 0, records: 0, malformed: 0, ignored: 0, examples: [] };
}

/** `raw`, gunzipped when it starts with the gzip magic bytes. */
async function decoded(raw: Readable): Promise<{ stream: Readable; gzip: boolean }> {
  const first = await new Promise<Buffer | null>((resolve, reject) => {
    const onReadable = () => {
      const chunk = raw.read() as Buffer | null;
      if (chunk === null && !raw.readableEnded) return;
      cleanup();
      resolve(chunk);
    };
    const onEnd = () => (cleanup(), resolve(null));
    const onError = (err: Error) => (cleanup(), reject(err));
    const cleanup = () => {
      raw.off('readable', onReadable);
      raw.off('end', onEnd);
      raw.off('error', onError);
    };
    raw.on('readable', onReadable);
    raw.once('end', onEnd);
    raw.once('error', onError);
  });
  if (first === null) return { stream: raw, gzip: false };
  raw.unshift(first);
  const gzip = first.length >= 2 && first[0] === 0x1f && first[1] === 0x8b;
  return { stream: gzip ? raw.pipe(createGunzip()) : raw, gzip };
}

/** Lines of a byte stream (LF or CRLF), each at most MAX_LINE bytes. */
async function* lines(stream: Readable): AsyncGenerator<string | null> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let overlong = false;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      if (nl < 0) {
        if (!overlong) {
          pending.push(chunk.subarray(start));
          pendingBytes += chunk.length - start;
          if (pendingBytes > MAX_LINE) {
            overlong = true;
            pending = [];
          }
        }
        break;
      }
      if (overlong) {
        yield null;
      } else {
        const piece = chunk.subarray(start, nl);
        const buf = pending.length ? Buffer.concat([...pending, piece]) : piece;
        yield buf.length > MAX_LINE ? null : buf.toString('utf8', 0, buf.at(-1) === 13 ? buf.length - 1 : buf.length);
      }
      pending = [];
      pendingBytes = 0;
      overlong = false;
      start = nl + 1;
    }
  }
  if (overlong) yield null;
  else if (pendingBytes) yield Buffer.concat(pending).toString('utf8');
}

function open(name: string): Readable {
  return name === '-' ? process.stdin : createReadStream(name, { highWaterMark: 256 * 1024 });
}

/** The time of a file's first record (reading at most a few thousand lines), or Infinity. */
async function firstTime(name: string): Promise<number> {
  const raw = open(name);
  try {
    const { stream } = await decoded(raw);
    let n = 0;
    for await (const line of lines(stream)) {
      if (line !== null) {
        const p = parseLine(line);
        if ('record' in p) return p.ms;
      }
      if (++n > 5000) break;
    }
    return Infinity;
  } finally {
    raw.destroy();
  }
}

/** Files in the order to read them: by their first record's time (stdin stays where it was named). */
export async function timeOrder(names: readonly string[]): Promise<string[]> {
  if (names.includes('-')) return [...names];
  const times = await Promise.all(names.map(async (n) => ({ n, t: await firstTime(n) })));
  return times.sort((a, b) => a.t - b.t).map((x) => x.n);
}

/** Why `names` cannot be read (a missing file, a directory), before any is opened; undefined when all can. */
export function unreadable(names: readonly string[]): string | undefined {
  for (const f of names) {
    if (f === '-') continue;
    try {
      if (!statSync(f).isFile()) return `${f}: not a file`;
    } catch (err) {
      return `${f}: cannot read: ${(err as NodeJS.ErrnoException).code ?? err}`;
    }
  }
  return undefined;
}

/** Every record of `names` ('-' is stdin; none means stdin), in time order of files. */
export async function* readAudit(names: readonly string[], stats: ReadStats): AsyncGenerator<{ record: AuditRecord; ms: number }> {
  const ordered = names.length ? await timeOrder(names) : ['-'];
  for (const name of ordered) {
    const raw = open(name);
    const { stream, gzip } = await decoded(raw);
    const s: SourceStats = { name: name === '-' ? 'stdin' : name, gzip, lines: 0, records: 0, malformed: 0 };
    stats.sources.push(s);
    const bad = (problem: string) => {
      s.malformed++;
      stats.malformed++;
      if (stats.examples.length < EXAMPLES) stats.examples.push({ source: s.name, line: s.lines, problem });
    };
    try {
      yield* sourceRecords(stream, s, stats, bad);
    } catch (err) {
      s.error = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    } finally {
      raw.destroy();
    }
  }
}

async function* sourceRecords(
  stream: Readable,
  s: SourceStats,
  stats: ReadStats,
  bad: (problem: string) => void,
): AsyncGenerator<{ record: AuditRecord; ms: number }> {
  for await (const line of lines(stream)) {
    s.lines++;
    stats.lines++;
    if (line === null) {
      bad(`line longer than ${MAX_LINE} bytes`);
      continue;
    }
    if (line.trim() === '') continue;
    const p = parseLine(line);
    if ('malformed' in p) bad(p.malformed);
    else if ('ignored' in p) stats.ignored++;
    else {
      s.records++;
      stats.records++;
      yield p;
    }
  }
}
