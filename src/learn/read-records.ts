import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { createInterface } from 'node:readline';
import { createGunzip } from 'node:zlib';

/**
 * Reads audit logs as `audit.ts` writes them: one JSON object a line, from
 * files (plain, or gzip as logrotate leaves them: recognised by their first
 * bytes) or `-` for stdin. Lines that are not JSON objects are counted,
 * not fatal: a log cut mid-line by a crash is still worth reading.
 * (A reader of its own for `policy suggest`; the `audit` commands' reader
 * in src/audit/ may replace it.)
 */

export type AuditLine = Record<string, unknown>;

export interface ReadStats {
  lines: number;
  bad: number;
}

export async function* readRecords(files: readonly string[], stats: ReadStats): AsyncGenerator<AuditLine> {
  for (const file of files) {
    for await (const line of lines(file)) {
      if (line.trim() === '') continue;
      stats.lines++;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch {
        stats.bad++;
        continue;
      }
      if (v === null || typeof v !== 'object' || Array.isArray(v)) stats.bad++;
      else yield v as AuditLine;
    }
  }
}

async function* lines(file: string): AsyncGenerator<string> {
  const raw: Readable = file === '-' ? process.stdin : createReadStream(file);
  const opened = await peek(raw, file);
  if (opened.empty) return;
  const input = opened.gzip ? opened.stream.pipe(createGunzip()) : opened.stream;
  yield* createInterface({ input, crlfDelay: Infinity });
}

/** The stream with its first chunk put back, and whether it starts like gzip. */
function peek(stream: Readable, file: string): Promise<{ stream: Readable; gzip: boolean; empty: boolean }> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => reject(new Error(`cannot read ${file}: ${err.code ?? err.message}`));
    stream.once('error', onError);
    stream.once('readable', () => {
      const head = stream.read() as Buffer | null;
      stream.removeListener('error', onError);
      if (head) stream.unshift(head);
      resolve({ stream, gzip: head !== null && head[0] === 0x1f && head[1] === 0x8b, empty: head === null });
    });
  });
}
