import { domainToASCII } from 'node:url';
import picomatch from 'picomatch';
import { isValidName } from './hostport.js';

/**
 * Hostname patterns, compiled once at load.
 *
 * - The vendor's notation: `.*` stands for one or more hostname characters
 *   (dots included) and every other `.` is literal, so `.*.cdn.whatsapp.net`
 *   matches `a.b.cdn.whatsapp.net` but not `evilcdn.whatsapp.net`.
 * - A glob over labels: `*` is exactly one label, `**` one or more labels;
 *   `?`, `[...]` and `{a,b}` work within a label (picomatch, with `.` playing
 *   the role of `/`).
 * - A plain name matches itself only.
 *
 * `glob:` and `vendor:` prefixes choose the notation outright. Unprefixed, a
 * pattern that starts with `*` or holds `**`, `?`, `[` or `{` is a glob; else
 * one holding `.*` is the vendor's; else any `*` makes a glob. A vendor
 * pattern that would also be a valid glob is marked `ambiguous` so
 * `config check` can say how it was read. Names given to `matches` must
 * already be canonical (see hostport.ts).
 */

export type PatternKind = 'exact' | 'vendor' | 'glob';

export interface CompiledPattern {
  source: string;
  kind: PatternKind;
  /** Canonical name for `exact`. */
  name?: string;
  regex?: RegExp;
  /** Vendor notation: the literal text a matching name must start and end with. */
  prefix?: string;
  suffix?: string;
  glob?: (slashed: string) => boolean;
  /** Unprefixed, read in the vendor's notation, and a valid glob too. */
  ambiguous?: boolean;
}

const HOST_CHARS = '[a-z0-9_.-]+';
const GLOB_LABEL = /^(\*\*|[a-z0-9_\-*?[\]{},!]+)$/;

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');
}

/** Lower-case ASCII form of a pattern; IDN labels become punycode. */
function toAscii(pattern: string): string {
  let p = pattern.trim();
  if (p.endsWith('.')) p = p.slice(0, -1);
  // eslint-disable-next-line no-control-regex
  if (/^[\u0000-\u007f]*$/.test(p)) return p.toLowerCase();
  const ascii = domainToASCII(p);
  if (!ascii) throw new Error(`"${pattern}" is not a valid internationalised name`);
  return ascii;
}

/** Compile one pattern; throws an Error that says what is wrong with it. */
export function compilePattern(pattern: string): CompiledPattern {
  if (typeof pattern !== 'string' || pattern.trim() === '') throw new Error('empty pattern');
  const prefix = /^(glob|vendor):/.exec(pattern.trim())?.[1] as 'glob' | 'vendor' | undefined;
  const body = prefix ? pattern.trim().slice(prefix.length + 1) : pattern;
  if (body.trim() === '') throw new Error(`"${pattern}": empty pattern after "${prefix}:"`);
  const p = toAscii(body);
  if (p.replace(/[*.?]/g, '') === '') {
    throw new Error(`"${pattern}" would match every name; list the domains you mean`);
  }
  if (prefix === 'vendor') return vendorPattern(pattern, p);
  if (prefix === 'glob') return globPattern(pattern, p);
  if (p.includes('.*') && !GLOB_FIRST.test(p)) {
    const parts = p.split('.*');
    if (parts.some((part) => part.includes('*'))) {
      throw new Error(
        `"${pattern}" mixes the vendor's ".*" notation with glob "*": write "glob:${body}" or "vendor:${body}" to say which`,
      );
    }
    return { ...vendorPattern(pattern, p), ambiguous: plausibleGlob(p) && readsAs(() => globPattern(pattern, p)) };
  }
  // (A glob read first is never a valid vendor pattern: its "*" would not be part of ".*".)
  if (/[*?[\]{}]/.test(p)) return globPattern(pattern, p);
  if (!isValidName(p)) throw new Error(`"${pattern}" is not a valid hostname`);
  return { source: pattern, kind: 'exact', name: p };
}

/** Unprefixed patterns read as globs even when they hold `.*`. */
const GLOB_FIRST = /^\*|\*\*|[?[\]{}]/;

/** A glob reading only competes when its literal labels could be hostname labels (`media-` cannot). */
function plausibleGlob(p: string): boolean {
  return p.split('.').every((l) => /[*?[\]{}]/.test(l) || /^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$/.test(l));
}

function readsAs(other: () => CompiledPattern): boolean {
  try {
    other();
    return true;
  } catch {
    return false;
  }
}

function vendorPattern(pattern: string, p: string): CompiledPattern {
  const parts = p.split('.*');
  for (const part of parts) {
    if (part.includes('*')) throw new Error(`"${pattern}": in the vendor's notation "*" only appears as ".*"`);
    if (!/^[a-z0-9_.-]*$/.test(part)) throw new Error(`"${pattern}" has a character that is not valid in a hostname`);
  }
  if (parts.length === 1) throw new Error(`"${pattern}": a vendor pattern needs ".*"`);
  return {
    source: pattern,
    kind: 'vendor',
    regex: new RegExp(`^${parts.map(escapeRegex).join(HOST_CHARS)}$`),
    prefix: parts[0],
    suffix: parts.at(-1),
  };
}

function globPattern(pattern: string, p: string): CompiledPattern {
  const labels = p.split('.');
  for (const label of labels) {
    if (!GLOB_LABEL.test(label)) throw new Error(`"${pattern}": bad label "${label}" in glob`);
    if (label.includes('**') && label !== '**') throw new Error(`"${pattern}": "**" must be a whole label`);
  }
  // picomatch's `**` also matches zero segments; ours means one or more labels.
  const slashed = labels.map((l) => (l === '**' ? '*/**' : l)).join('/');
  let glob: (s: string) => boolean;
  try {
    glob = picomatch(slashed, { dot: true, nonegate: true, noextglob: true });
  } catch (err) {
    throw new Error(`"${pattern}": ${(err as Error).message}`);
  }
  return { source: pattern, kind: 'glob', glob };
}

/** One rule's `hosts`, compiled: a set lookup for names, then the patterns. */
export class HostMatcher {
  private readonly exact = new Set<string>();
  // Vendor patterns are tried only on names with their literal ends: most
  // names fail a string comparison instead of a regex.
  private readonly vendor: { prefix: string; suffix: string; regex: RegExp }[] = [];
  private readonly globs: ((s: string) => boolean)[] = [];
  readonly size: number;
  /** Kept for `matching` (policy explain); the hot path uses the indexes above. */
  private readonly compiled: readonly CompiledPattern[];

  constructor(patterns: CompiledPattern[]) {
    this.compiled = patterns;
    for (const p of patterns) {
      if (p.kind === 'exact') this.exact.add(p.name!);
      else if (p.kind === 'vendor') this.vendor.push({ prefix: p.prefix!, suffix: p.suffix!, regex: p.regex! });
      else this.globs.push(p.glob!);
    }
    this.size = patterns.length;
  }

  /** The plain names among the patterns (what `export --resolve` can look up). */
  exactNames(): string[] {
    return [...this.exact];
  }

  matches(name: string): boolean {
    if (this.exact.has(name)) return true;
    for (const v of this.vendor) {
      if (name.endsWith(v.suffix) && name.startsWith(v.prefix) && v.regex.test(name)) return true;
    }
    if (this.globs.length) {
      const slashed = name.replaceAll('.', '/');
      for (const g of this.globs) if (g(slashed)) return true;
    }
    return false;
  }

  /** The first pattern (as written) that matches the canonical name, or undefined: for explaining a decision. */
  matching(name: string): string | undefined {
    const slashed = name.replaceAll('.', '/');
    for (const p of this.compiled) {
      const hit = p.kind === 'exact' ? p.name === name : p.kind === 'vendor' ? p.regex!.test(name) : p.glob!(slashed);
      if (hit) return p.source;
    }
    return undefined;
  }
}
