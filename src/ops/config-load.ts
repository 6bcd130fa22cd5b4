import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse } from 'yaml';
import { parseConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { configChannel, type ConfigEvent } from '../events.js';

/**
 * A configuration load as operations see it: the validated configuration,
 * the hash of what it was read from, and the one place a load (at start or
 * on reload) is published on configChannel, so each is counted once.
 */

export interface LoadedConfig {
  config: Config;
  /** sha256 of the configuration text and of every file it names. */
  hash: string;
}

/** Read and validate a configuration file (throws ConfigError listing every problem), and hash what was read. */
export function loadConfig(file: string): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([{ path: '', file, message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? err}` }]);
  }
  const config = parseConfig(text, file);
  return { config, hash: configHash(text, file) };
}

/** The hash of a configuration's text and of the range files (`file:`) it names, in order. */
export function configHash(text: string, file: string): string {
  const h = createHash('sha256').update(text);
  for (const path of namedFiles(text, dirname(resolve(file)))) {
    h.update(`\0${path}\0`);
    try {
      h.update(readFileSync(path));
    } catch {
      h.update('\0unreadable');
    }
  }
  return h.digest('hex');
}

function namedFiles(text: string, baseDir: string): string[] {
  const doc = parse(text) as { policy?: { rules?: { ip_ranges?: unknown[] }[] } } | null;
  const out: string[] = [];
  for (const rule of doc?.policy?.rules ?? []) {
    for (const r of rule?.ip_ranges ?? []) {
      if (typeof r !== 'string' || !r.startsWith('file:')) continue;
      const f = r.slice('file:'.length);
      out.push(isAbsolute(f) ? f : resolve(baseDir, f));
    }
  }
  return out;
}

let current: ConfigEvent | undefined;

/** The configuration in force: the last load that succeeded. */
export function configInForce(): ConfigEvent | undefined {
  return current;
}

/** Publish a load's outcome: `ok` with the loaded hash, or why it was refused. */
export function publishConfigLoad(result: ConfigEvent['result'], loaded?: LoadedConfig): void {
  const event: ConfigEvent = result === 'ok' && loaded ? { result, hash: loaded.hash, loadedAt: Date.now() / 1000 } : { result };
  if (event.result === 'ok') current = event;
  configChannel.publish(event);
}
