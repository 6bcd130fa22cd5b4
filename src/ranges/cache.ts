import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Validators } from './fetch.js';

/**
 * The last good copy of each `url:` list on disk (`ranges.cache_dir`): the
 * body as fetched and its validators, so a restart without network uses it
 * and the first request can be conditional. Written to a temporary name and
 * renamed, so a crash never leaves half a list.
 */

export interface CachedList {
  body: Buffer;
  validators: Validators;
  /** When it was fetched (ms since the epoch). */
  fetchedAt: number;
}

function base(dir: string, url: string): string {
  return join(dir, createHash('sha256').update(url).digest('hex').slice(0, 32));
}

export async function readCached(dir: string, url: string): Promise<CachedList | undefined> {
  const b = base(dir, url);
  try {
    const meta = JSON.parse(await readFile(`${b}.json`, 'utf8')) as { url: string; validators: Validators; fetchedAt: number };
    if (meta.url !== url) return undefined;
    return { body: await readFile(`${b}.body`), validators: meta.validators ?? {}, fetchedAt: meta.fetchedAt };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export async function writeCached(dir: string, url: string, list: CachedList): Promise<void> {
  await mkdir(dir, { recursive: true });
  const b = base(dir, url);
  const tmp = `.${process.pid}.tmp`;
  await writeFile(`${b}.body${tmp}`, list.body);
  await rename(`${b}.body${tmp}`, `${b}.body`);
  await writeFile(`${b}.json${tmp}`, JSON.stringify({ url, validators: list.validators, fetchedAt: list.fetchedAt }));
  await rename(`${b}.json${tmp}`, `${b}.json`);
}
