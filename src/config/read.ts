import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

/**
 * Every file a configuration is built from is read through here (the
 * config file, `file:` ranges, `ranges.ca`). A cluster's primary records
 * what one load read and sends the bytes to its workers, which build their
 * configuration from exactly those bytes: every worker runs the policy the
 * primary validated, even if a file changes on disk meanwhile. Loading is
 * synchronous, so one module-level scope is enough.
 */

export type FileSnapshot = [path: string, data: Uint8Array][];

let recording: Map<string, Buffer> | undefined;
let replaying: Map<string, Uint8Array> | undefined;

export function readConfigFile(path: string): Buffer;
export function readConfigFile(path: string, encoding: 'utf8'): string;
export function readConfigFile(path: string, encoding?: 'utf8'): Buffer | string {
  const at = resolve(path);
  let data: Buffer;
  if (replaying) {
    const kept = replaying.get(at);
    if (!kept) throw Object.assign(new Error(`ENOENT: not in the configuration the primary sent: ${path}`), { code: 'ENOENT' });
    data = Buffer.from(kept.buffer, kept.byteOffset, kept.byteLength);
  } else {
    data = readFileSync(path);
    recording?.set(at, data);
  }
  return encoding ? data.toString(encoding) : data;
}

/** Run a load and keep the bytes of every file it read. */
export function recordReads<T>(load: () => T): { value: T; files: FileSnapshot } {
  const files = new Map<string, Buffer>();
  recording = files;
  try {
    return { value: load(), files: [...files] };
  } finally {
    recording = undefined;
  }
}

/** Run a load against recorded files instead of the disk. */
export function replayReads<T>(files: FileSnapshot, load: () => T): T {
  replaying = new Map(files);
  try {
    return load();
  } finally {
    replaying = undefined;
  }
}
