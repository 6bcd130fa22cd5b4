import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMap, isNode, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { configErrorMap, knownKeys, nearest } from './messages.js';
import { readConfigFile } from './read.js';
import { configSchema, type Config } from './schema.js';

/** The configuration shipped with the package: the WhatsApp policy. */
export const DEFAULT_CONFIG = resolve(dirname(fileURLToPath(import.meta.url)), '../../config/default.yaml');

/** A validated configuration with what is needed to point at its keys. */
export interface ConfigSource {
  config: Config;
  file: string;
  /** The file's text, and the document as plain data before validation. */
  text: string;
  raw: unknown;
  /** An issue at a key path, with the file line and column where the key is. */
  at(path: (string | number)[], message: string): ConfigIssue;
}

/** Read, parse and validate a config file; throws ConfigError listing every problem. */
export function loadConfigFile(path: string): Config {
  return loadConfigSource(path).config;
}

/** As loadConfigFile, keeping the document to locate later findings (config check, serve's start-up checks). */
export function loadConfigSource(path: string): ConfigSource {
  let text: string;
  try {
    text = readConfigFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError([{ path: '', file: path, message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? err}` }]);
  }
  return parseConfigSource(text, path);
}

/** Validate YAML text; `file` anchors relative paths and names the file in errors. */
export function parseConfig(text: string, file: string): Config {
  return parseConfigSource(text, file).config;
}

export function parseConfigSource(text: string, file: string): ConfigSource {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  if (doc.errors.length) {
    throw new ConfigError(
      doc.errors.map((e) => {
        // With prettyErrors off the error carries offsets only.
        const pos = e.linePos?.[0] ?? lines.linePos(e.pos[0]);
        return { path: '', file, line: pos?.line, column: pos?.col, message: e.message.split('\n')[0]! };
      }),
    );
  }
  const raw: unknown = doc.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError([{ ...locate([], doc, lines, file, false), message: 'expected a mapping of keys (listen:, policy:, ...) at the top of the file' }]);
  }
  const schema = configSchema(dirname(resolve(file)));
  const result = schema.safeParse(raw, { error: configErrorMap });
  if (result.success) {
    return { config: result.data, file, text, raw, at: (path, message) => ({ ...locate(path, doc, lines, file, false), message }) };
  }
  throw new ConfigError(result.error.issues.flatMap((i) => toIssues(i, doc, lines, file, schema)));
}

function toIssues(issue: z.core.$ZodIssue, doc: Document, lines: LineCounter, file: string, schema: z.core.$ZodType): ConfigIssue[] {
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeys(schema, issue.path);
    return issue.keys.map((key) => {
      const guess = nearest(key, known);
      return { ...locate([...issue.path, key], doc, lines, file, true), message: `unknown key${guess ? ` (did you mean ${guess}?)` : ''}` };
    });
  }
  return [{ ...locate(issue.path, doc, lines, file, false), message: issue.message }];
}

function locate(path: PropertyKey[], doc: Document, lines: LineCounter, file: string, atKey: boolean): ConfigIssue {
  const text = formatPath(path);
  // The deepest node the path reaches; for unknown keys, the key itself.
  for (let n = path.length; n >= 0; n--) {
    const at = path.slice(0, n) as (string | number)[];
    let offset: number | undefined;
    if (atKey && n === path.length && n > 0) {
      const parent = doc.getIn(at.slice(0, -1), true);
      const pair = isMap(parent) ? parent.items.find((p) => isNode(p.key) && (p.key as { value?: unknown }).value === at.at(-1)) : undefined;
      offset = isNode(pair?.key) ? pair.key.range?.[0] : undefined;
    } else {
      const node = n === 0 ? doc.contents : doc.getIn(at, true);
      offset = isNode(node) ? node.range?.[0] : undefined;
    }
    if (offset !== undefined) {
      const { line, col } = lines.linePos(offset);
      return { path: text, file, line, column: col, message: '' };
    }
  }
  return { path: text, file, message: '' };
}

export function formatPath(path: PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else if (/^[A-Za-z_][\w-]*$/.test(String(p))) out += out ? `.${String(p)}` : String(p);
    else out += `[${JSON.stringify(String(p))}]`;
  }
  return out;
}

/** One-line summary for `config check` and the start-up log. */
export function summarize(c: Config): string {
  const rules = c.policy.rules;
  const patterns = rules.reduce((n, r) => n + r.patterns, 0);
  const cidrs = rules.reduce((n, r) => n + r.cidrs, 0);
  const sources = rules.reduce((n, r) => n + r.sources.length, 0);
  const ports = [...new Set(rules.flatMap((r) => [...r.ports]))].sort((a, b) => a - b);
  const listeners =
    [
      c.listen.proxy && `proxy ${c.listen.proxy.text}`,
      c.listen.socks && `socks ${c.listen.socks.text}`,
      c.listen.transparent && `transparent ${c.listen.transparent.text}`,
      ...c.listen.forwards.map((f) => `${f.name} ${f.listen.text}`),
      c.listen.admin && `admin ${c.listen.admin.text}`,
    ]
      .filter(Boolean)
      .join(', ') || 'none';
  return (
    `${rules.length} rule${rules.length === 1 ? '' : 's'}, ${patterns} host pattern${patterns === 1 ? '' : 's'}, ` +
    `${cidrs} CIDR${cidrs === 1 ? '' : 's'}${sources ? ` + ${sources} url:/dns: source${sources === 1 ? '' : 's'}` : ''}, ports ${ports.join(',') || 'none'}; mode ${c.policy.mode}; listen ${listeners}${c.workers === 1 ? '' : `; workers ${c.workers}`}`
  );
}
