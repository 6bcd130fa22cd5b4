import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse } from 'yaml';
import { loadConfigSource, type ConfigSource } from '../config/load.js';
import { startProblems } from '../config/preflight.js';
import { recordReads, type FileSnapshot } from '../config/read.js';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { configChannel, type ConfigEvent } from '../events.js';

/**
 * A configuration load as operations see it: the validated configuration,
 * the files it was built from (the config file, then every file it names:
 * `file:` range files, `ranges.ca`), the hash of what was read, and the one
 * place a load (at start or on reload) is published on configChannel, so
 * each is counted once. Reload (reload.ts) watches `files`.
 */

export interface LoadedConfig {
  config: Config;
  /** The config file as given. */
  file: string;
  /** The config file and the files it names, absolute. */
  files: string[];
  /** sha256 of the configuration text and of every file it names. */
  hash: string;
}

/**
 * Read and validate a configuration file as serve's start does (the schema,
 * then the start-up checks such as a usable audit path): throws ConfigError
 * listing every problem, and hashes what was read.
 */
export function loadConfig(file: string): LoadedConfig & { source: ConfigSource; snapshot: FileSnapshot } {
  const { value: source, files: snapshot } = recordReads(() => loadConfigSource(file));
  const problems = startProblems(source);
  if (problems.length) throw new ConfigError(problems);
  return { ...fromSource(source), source, snapshot };
}

/** The files and hash of a configuration already read. */
export function fromSource(source: ConfigSource): LoadedConfig {
  const named = namedFiles(source.text, dirname(resolve(source.file)));
  return { config: source.config, file: source.file, files: [resolve(source.file), ...named], hash: hashOf(source.text, named) };
}

/** The hash of a configuration's text and of the files it names (`file:` ranges, `ranges.ca`), in order. */
export function configHash(text: string, file: string): string {
  return hashOf(text, namedFiles(text, dirname(resolve(file))));
}

function hashOf(text: string, named: readonly string[]): string {
  const h = createHash('sha256').update(text);
  for (const path of named) {
    h.update(`\0${path}\0`);
    try {
      h.update(readFileSync(path));
    } catch {
      h.update('\0unreadable');
    }
  }
  return h.digest('hex');
}

/**
 * The files a config file names, read without validating it (an invalid
 * configuration's range files are watched too: fixing one reloads).
 */
export function filesOf(file: string): string[] {
  try {
    return [resolve(file), ...namedFiles(readFileSync(file, 'utf8'), dirname(resolve(file)))];
  } catch {
    return [resolve(file)];
  }
}

/** The `file:` entries of every rule's `ip_ranges` and `ranges.ca`, resolved as the schema resolves them. */
function namedFiles(text: string, baseDir: string): string[] {
  let doc: { policy?: { rules?: { ip_ranges?: unknown[] }[] }; ranges?: { ca?: unknown } } | null;
  try {
    doc = parse(text) as typeof doc;
  } catch {
    return [];
  }
  const named: unknown[] = [];
  for (const rule of doc?.policy?.rules ?? []) {
    for (const r of rule?.ip_ranges ?? []) {
      if (typeof r === 'string' && r.startsWith('file:')) named.push(r.slice('file:'.length));
    }
  }
  named.push(doc?.ranges?.ca);
  const out = new Set<string>();
  for (const f of named) if (typeof f === 'string' && f) out.add(isAbsolute(f) ? f : resolve(baseDir, f));
  return [...out];
}

let current: ConfigEvent | undefined;

/** The configuration in force: the last load that succeeded. */
export function configInForce(): ConfigEvent | undefined {
  return current;
}

/** Publish a load's outcome: `ok` with the loaded hash, or why it was refused. */
export function publishConfigLoad(result: ConfigEvent['result'], loaded?: Pick<LoadedConfig, 'hash'>): void {
  const event: ConfigEvent = result === 'ok' && loaded ? { result, hash: loaded.hash, loadedAt: Date.now() / 1000 } : { result };
  if (event.result === 'ok') current = event;
  configChannel.publish(event);
}
