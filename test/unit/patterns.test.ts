import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { loadConfigFile } from '../../src/config/load.js';
import { normalizeHost } from '../../src/policy/hostport.js';
import { compilePattern, HostMatcher } from '../../src/policy/patterns.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
const DEFAULT_YAML = join(ROOT, 'config/default.yaml');
const DOMAIN_LIST = join(ROOT, 'test/fixtures/whatsapp_domainlist.txt');

function matcher(...patterns: string[]): HostMatcher {
  return new HostMatcher(patterns.map(compilePattern));
}

function matches(pattern: string, name: string): boolean {
  return matcher(pattern).matches(name);
}

// ---------------------------------------------------------------------------
// An independent reference matcher: plain string logic, written from the spec.
// ---------------------------------------------------------------------------

const HOST_CHAR = new Set('abcdefghijklmnopqrstuvwxyz0123456789-_.');

/** Vendor notation: `.*` is one or more hostname characters; everything else literal. */
function refVendor(pattern: string, name: string): boolean {
  const parts = pattern.split('.*');
  const first = parts[0]!;
  if (!name.startsWith(first)) return false;
  // Try every placement of the remaining literal parts, each after a gap of >= 1 host characters.
  const place = (k: number, at: number): boolean => {
    if (k === parts.length) return at === name.length;
    const lit = parts[k]!;
    for (let j = at + 1; j + lit.length <= name.length; j++) {
      if (!HOST_CHAR.has(name[j - 1]!)) return false; // gap characters must be hostname characters
      if (name.startsWith(lit, j) && place(k + 1, j + lit.length)) return true;
    }
    return false;
  };
  return place(1, first.length);
}

/** One glob label against one name label: `*` any run (none included), `?` one character. */
function refLabel(p: string, l: string): boolean {
  if (p === '') return l === '';
  if (p[0] === '*') {
    for (let k = 0; k <= l.length; k++) if (refLabel(p.slice(1), l.slice(k))) return true;
    return false;
  }
  if (l === '') return false;
  return (p[0] === '?' || p[0] === l[0]) && refLabel(p.slice(1), l.slice(1));
}

/** Glob: `*` is one whole label, `**` one or more labels; `*` and `?` within a label. */
function refGlob(pattern: string, name: string): boolean {
  const p = pattern.split('.');
  const n = name.split('.');
  const go = (i: number, j: number): boolean => {
    if (i === p.length) return j === n.length;
    if (j === n.length) return false;
    if (p[i] === '**') {
      for (let k = j + 1; k <= n.length; k++) if (go(i + 1, k)) return true;
      return false;
    }
    if (p[i] === '*') return n[j] !== '' && go(i + 1, j + 1);
    return refLabel(p[i]!, n[j]!) && go(i + 1, j + 1);
  };
  return go(0, 0);
}

function refMatch(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase().replace(/\.$/, '');
  if (p.includes('.*')) return refVendor(p, name);
  if (/[*?]/.test(p)) return refGlob(p, name);
  return p === name;
}

// ---------------------------------------------------------------------------

describe('compilePattern: kinds', () => {
  it.each([
    ['g.whatsapp.net', 'exact'],
    ['G.WhatsApp.NET.', 'exact'],
    ['bücher.de', 'exact'],
    ['.*.cdn.whatsapp.net', 'vendor'],
    ['media-.*.cdn.whatsapp.net', 'vendor'],
    ['media..*.fna.whatsapp.net', 'vendor'],
    ['*.example.org', 'glob'],
    ['**.example.net', 'glob'],
    ['foo*.example.com', 'glob'],
    ['{a,b}.example.com', 'glob'],
    ['[ab].example.com', 'glob'],
    ['?.example.com', 'glob'],
  ])('%j is %s', (p, kind) => {
    expect(compilePattern(p).kind).toBe(kind);
  });

  it('keeps the source as written and canonicalises exact names', () => {
    const c = compilePattern('G.WhatsApp.NET.');
    expect(c.source).toBe('G.WhatsApp.NET.');
    expect(c.name).toBe('g.whatsapp.net');
  });

  it('compiles IDN patterns to punycode', () => {
    expect(compilePattern('bücher.de').name).toBe('xn--bcher-kva.de');
    expect(compilePattern('whats\u0430pp.net').name).toBe('xn--whatspp-6fg.net');
    expect(matches('*.bücher.de', 'shop.xn--bcher-kva.de')).toBe(true);
    expect(matches('.*.bücher.de', 'a.b.xn--bcher-kva.de')).toBe(true);
    expect(matches('bücher.de', 'xn--bcher-kva.de')).toBe(true);
    expect(matches('bücher.de', 'bucher.de')).toBe(false);
  });

  it('a Cyrillic look-alike pattern does not match the Latin name, nor the reverse', () => {
    expect(matches('whats\u0430pp.net', 'whatsapp.net')).toBe(false);
    expect(matches('whatsapp.net', normalizeHost('whats\u0430pp.net').host)).toBe(false);
    expect(matches('whats\u0430pp.net', normalizeHost('whats\u0430pp.net').host)).toBe(true);
    expect(matches('.*.whats\u0430pp.net', 'a.whatsapp.net')).toBe(false);
  });
});

describe('compilePattern: errors', () => {
  const matchEverything = ['*', '**', '.*', '*.', '.*.*', '*.*', '**.*', '?', '.', '..*', '***'];
  it.each(matchEverything)('%j would match every name', (p) => {
    expect(() => compilePattern(p)).toThrow(/every name|mixes/);
  });
  it.each(['*', '**', '.*'])('%j is rejected as matching every name', (p) => {
    expect(() => compilePattern(p)).toThrow(/would match every name/);
  });

  // Unprefixed, a pattern that starts with "*" or holds "**" is a glob even
  // when it holds ".*" (README: Patterns); one that would read ".*" in the
  // vendor's notation and still has a glob "*" is refused.
  it.each(['a*.*.example.com', 'x-*.*.example.com'])('%j mixes ".*" with glob "*"', (p) => {
    expect(() => compilePattern(p)).toThrow(/mixes/);
  });
  it.each([
    ['*.cdn.*', 'a.cdn.b', 'cdn.b'],
    ['*.b.*.c', 'a.b.x.c', 'a.b.x.y.c'],
    ['*.*.example.com', 'a.b.example.com', 'a.example.com'],
    ['a.**.b.com', 'a.x.y.b.com', 'a.b.com'],
    ['**.*.example.com', 'x.y.example.com', 'y.example.com'],
  ])('%j is a glob', (p, yes, no) => {
    expect(compilePattern(p).kind).toBe('glob');
    expect(matches(p, yes)).toBe(true);
    expect(matches(p, no)).toBe(false);
  });

  it.each(['', '   '])('%j is an empty pattern', (p) => {
    expect(() => compilePattern(p)).toThrow(/empty/);
  });

  it.each([
    ['a b.com', /not a valid hostname/],
    ['a/b.com', /not a valid hostname/],
    ['a..b.com', /not a valid hostname/],
    ['!a.example.com', /not a valid hostname/],
    ['@(a|b).com', /not a valid hostname/],
    [`${'a'.repeat(64)}.com`, /not a valid hostname/],
    ['*..com', /bad label/],
    ['*. example.com', /bad label/],
    ['foo**.example.com', /whole label/],
    ['.*.exa mple.com', /not valid in a hostname/],
    ['.*.exa/mple.com', /not valid in a hostname/],
  ])('%j is rejected (%s)', (p, message) => {
    expect(() => compilePattern(p)).toThrow(message);
  });
});

describe('the spec pattern table', () => {
  const table: [string, string, boolean][] = [
    // vendor notation
    ['.*.cdn.whatsapp.net', 'a.cdn.whatsapp.net', true],
    ['.*.cdn.whatsapp.net', 'a.b.cdn.whatsapp.net', true],
    ['.*.cdn.whatsapp.net', 'media-sin6-1.cdn.whatsapp.net', true],
    ['.*.cdn.whatsapp.net', 'scontent.xx.fbcdn.cdn.whatsapp.net', true],
    ['.*.cdn.whatsapp.net', 'cdn.whatsapp.net', false],
    ['.*.cdn.whatsapp.net', 'evilcdn.whatsapp.net', false],
    ['.*.cdn.whatsapp.net', 'a.cdn.whatsapp.net.evil.example', false],
    ['.*.cdn.whatsapp.net', 'a.cdn.whatsapp.network', false],
    ['.*.cdn.whatsapp.net', 'a.cdnxwhatsapp.net', false],
    ['.*.cdn.whatsapp.net', 'axcdnxwhatsappxnet', false],
    ['.*.cdn.whatsapp.net', 'a.cdn.whatsapp.com', false],
    ['media-.*.cdn.whatsapp.net', 'media-sin6-1.cdn.whatsapp.net', true],
    ['media-.*.cdn.whatsapp.net', 'media-a.b.cdn.whatsapp.net', true],
    ['media-.*.cdn.whatsapp.net', 'media-.cdn.whatsapp.net', false],
    ['media-.*.cdn.whatsapp.net', 'xmedia-a.cdn.whatsapp.net', false],
    ['media-.*.cdn.whatsapp.net', 'media.cdn.whatsapp.net', false],
    ['media-.*.cdn.whatsapp.net', 'mediax-a.cdn.whatsapp.net', false],
    ['media..*.fna.whatsapp.net', 'media.fada1-1.fna.whatsapp.net', true],
    ['media..*.fna.whatsapp.net', 'media.a.b.fna.whatsapp.net', true],
    ['media..*.fna.whatsapp.net', 'media.fna.whatsapp.net', false],
    ['media..*.fna.whatsapp.net', 'mediax.fna.whatsapp.net', false],
    ['media..*.fna.whatsapp.net', 'mediaxa.fna.whatsapp.net', false],
    ['media..*.fna.whatsapp.net', 'xmedia.a.fna.whatsapp.net', false],
    ['media..*.fna.whatsapp.net', 'media.a.fnaxwhatsapp.net', false],
    // globs
    ['*.example.org', 'a.example.org', true],
    ['*.example.org', 'www.example.org', true],
    ['*.example.org', 'example.org', false],
    ['*.example.org', 'a.b.example.org', false],
    ['*.example.org', 'aexample.org', false],
    ['*.example.org', 'a.example.org.evil.example', false],
    ['*.example.org', 'a.example.net', false],
    ['**.example.net', 'a.example.net', true],
    ['**.example.net', 'a.b.example.net', true],
    ['**.example.net', 'a.b.c.d.example.net', true],
    ['**.example.net', 'example.net', false],
    ['**.example.net', 'aexample.net', false],
    ['**.example.net', 'a.example.net.evil.example', false],
    // "a.*.example.com" contains ".*": vendor notation, "a" then one or more characters.
    ['a.*.example.com', 'a.b.example.com', true],
    ['a.*.example.com', 'ab.example.com', true],
    ['a.*.example.com', 'a.example.com', false],
    ['a.*.example.com', 'b.b.example.com', false],
    ['*.b.example.com', 'a.b.example.com', true],
    ['*.b.example.com', 'b.example.com', false],
    ['**.b.example.com', 'x.y.b.example.com', true],
    ['foo*.example.com', 'foo.example.com', true],
    ['foo*.example.com', 'foobar.example.com', true],
    ['foo*.example.com', 'foo.bar.example.com', false],
    ['{a,b}.example.com', 'b.example.com', true],
    ['{a,b}.example.com', 'c.example.com', false],
    ['[ab].example.com', 'a.example.com', true],
    ['[ab].example.com', 'c.example.com', false],
    ['?.example.com', 'x.example.com', true],
    ['?.example.com', 'xy.example.com', false],
    ['*.Example.ORG', 'a.example.org', true],
    // plain names
    ['g.whatsapp.net', 'g.whatsapp.net', true],
    ['G.WhatsApp.Net', 'g.whatsapp.net', true],
    ['g.whatsapp.net.', 'g.whatsapp.net', true],
    ['g.whatsapp.net', 'a.g.whatsapp.net', false],
    ['g.whatsapp.net', 'g.whatsapp.net.evil.example', false],
    ['g.whatsapp.net', 'evilg.whatsapp.net', false],
    ['g.whatsapp.net', 'whatsapp.net', false],
    ['g.whatsapp.net', 'gxwhatsapp.net', false],
  ];
  it.each(table)('%s vs %s → %s', (pattern, name, expected) => {
    expect(matches(pattern, name)).toBe(expected);
    // The reference agrees on every row (it has no braces or classes), so the
    // row tests the spec, not the regex.
    if (!/[[{]/.test(pattern)) expect(refMatch(pattern, name)).toBe(expected);
  });
});

describe('HostMatcher', () => {
  it('combines exact names, vendor patterns and globs', () => {
    const m = matcher('g.whatsapp.net', '.*.cdn.whatsapp.net', 'media..*.fna.whatsapp.net', '*.example.org', '**.example.net');
    expect(m.size).toBe(5);
    const yes = ['g.whatsapp.net', 'a.cdn.whatsapp.net', 'media.x.fna.whatsapp.net', 'a.example.org', 'a.b.example.net'];
    const no = ['whatsapp.net', 'cdn.whatsapp.net', 'media.fna.whatsapp.net', 'example.org', 'a.b.example.org', 'example.net', 'evil.example'];
    for (const n of yes) expect(m.matches(n), n).toBe(true);
    for (const n of no) expect(m.matches(n), n).toBe(false);
  });

  it('keeps each vendor pattern anchored when several are combined', () => {
    const m = matcher('a.*.one.com', '.*.two.com');
    expect(m.matches('a.x.one.com')).toBe(true);
    expect(m.matches('x.two.com')).toBe(true);
    expect(m.matches('a.x.one.com.x.two.org')).toBe(false);
    expect(m.matches('a.x.one.community')).toBe(false);
    expect(m.matches('x.two.com.evil')).toBe(false);
    expect(m.matches('b.x.one.com')).toBe(false);
  });

  it('is stable over repeated calls (no regex state)', () => {
    const m = matcher('.*.cdn.whatsapp.net', 'media-.*.cdn.whatsapp.net');
    for (let i = 0; i < 5; i++) {
      expect(m.matches('a.cdn.whatsapp.net')).toBe(true);
      expect(m.matches('cdn.whatsapp.net')).toBe(false);
    }
  });

  it('an empty matcher matches nothing', () => {
    const m = new HostMatcher([]);
    expect(m.size).toBe(0);
    expect(m.matches('example.com')).toBe(false);
  });

  it('agrees with the reference on generated names', () => {
    const patterns = ['.*.cdn.whatsapp.net', 'media-.*.cdn.whatsapp.net', 'media..*.fna.whatsapp.net', 'x.*.y.*.z.com', '*.example.org', '**.example.net', 'a.*.b.com', 'g.whatsapp.net'];
    const parts = ['a', 'b', 'media', 'media-', 'x', 'y', 'z', 'cdn', 'fna', 'whatsapp', 'net', 'com', 'example', 'org', 'g', '-1', ''];
    const names = new Set<string>();
    // Names of 1..4 labels, and labels joined without dots, from the parts above.
    for (const a of parts) for (const b of parts) for (const c of parts) {
      for (const sep of ['.', '']) {
        const n = [a, b, c].filter(Boolean).join(sep);
        for (const suffix of ['', '.cdn.whatsapp.net', '.fna.whatsapp.net', '.example.org', '.example.net', '.z.com', '.b.com', '.whatsapp.net']) {
          const name = `${n}${suffix}`.replace(/^\./, '');
          if (name) names.add(name);
        }
      }
    }
    const compiled = patterns.map((p) => [p, matcher(p)] as const);
    let checked = 0;
    for (const name of names) {
      let canonical: string;
      try {
        const h = normalizeHost(name);
        if (h.family !== undefined) continue;
        canonical = h.host;
      } catch {
        continue;
      }
      for (const [p, m] of compiled) {
        if (m.matches(canonical) !== refMatch(p, canonical)) expect.fail(`${p} vs ${canonical}`);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(10_000);
  });
});

describe('the default policy against the vendor domain list', () => {
  const names = readFileSync(DOMAIN_LIST, 'utf8')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const config = loadConfigFile(DEFAULT_YAML);
  const rules = config.policy.rules;
  // The patterns as written in the file, read independently of the schema.
  const raw = parseYaml(readFileSync(DEFAULT_YAML, 'utf8')) as { policy: { rules: { name: string; hosts?: string[] }[] } };
  const allPatterns = raw.policy.rules.flatMap((r) => r.hosts ?? []);
  const anyRule = (n: string) => rules.some((r) => r.hosts?.matches(n));
  const anyRef = (n: string) => allPatterns.some((p) => refMatch(p, n));

  it('loads the whole list (2,094 names), all already canonical', () => {
    expect(names).toHaveLength(2094);
    for (const n of names) expect(normalizeHost(n), n).toEqual({ host: n });
  });

  it('has the expected rules and patterns', () => {
    expect(rules.map((r) => r.name)).toEqual(['whatsapp', 'whatsapp-images']);
    expect(allPatterns).toHaveLength(13);
    expect(rules.map((r) => r.hosts?.size)).toEqual([10, 3]);
  });

  it('each rule agrees with the reference matcher on every name', () => {
    raw.policy.rules.forEach((r, i) => {
      const m = rules[i]!.hosts!;
      const mismatches = names.filter((n) => m.matches(n) !== (r.hosts ?? []).some((p) => refMatch(p, n)));
      expect(mismatches, r.name).toEqual([]);
    });
  });

  it('every name under .cdn.whatsapp.net (with a label before) is allowed', () => {
    const cdn = names.filter((n) => n.endsWith('.cdn.whatsapp.net') && n.length > '.cdn.whatsapp.net'.length);
    expect(cdn.length).toBe(167);
    // In the list but not under the suffix: the bare name and a look-alike.
    expect(names).toContain('cdn.whatsapp.net');
    expect(names).toContain('www-cdn.whatsapp.net');
    expect(anyRule('cdn.whatsapp.net')).toBe(false);
    expect(anyRule('www-cdn.whatsapp.net')).toBe(false);
    for (const n of cdn) expect(anyRule(n), n).toBe(true);
  });

  it('every media.<x>.fna.whatsapp.net name is allowed, other .fna names are not', () => {
    const fna = names.filter((n) => n.endsWith('.fna.whatsapp.net'));
    expect(fna.length).toBe(1706);
    expect(fna.filter((n) => n.startsWith('media.')).length).toBe(993);
    for (const n of fna) expect(anyRule(n), n).toBe(n.startsWith('media.'));
  });

  it('the exact names are allowed and nothing else under whatsapp.net/com is', () => {
    const exact = new Set(['g.whatsapp.net', 'graph.facebook.com', 'graph.whatsapp.com', 'mmg.whatsapp.net', 'pps.whatsapp.net', 'static.whatsapp.net', 'v.whatsapp.net', 'docker.whatsapp.biz', 'dl.bintray.com', 'akamai.bintray.com']);
    for (const n of names) {
      const byPattern = (n.endsWith('.cdn.whatsapp.net') || (n.startsWith('media.') && n.endsWith('.fna.whatsapp.net')) || exact.has(n));
      expect(anyRule(n), n).toBe(byPattern);
      expect(anyRef(n), n).toBe(byPattern);
    }
  });

  it.each([
    'whatsapp.net',
    'whatsapp.com',
    'web.whatsapp.com',
    'www.whatsapp.com',
    'cdn.whatsapp.net',
    'fna.whatsapp.net',
    'media.fna.whatsapp.net',
    'mmg.whatsapp.com',
    'v.whatsapp.com',
    'media.whatsapp.com',
    'evilcdn.whatsapp.net',
    'g.whatsapp.net.evil.example',
    'evilg.whatsapp.net',
    'a.g.whatsapp.net',
    'a.cdn.whatsapp.net.evil.example',
    'docker.whatsapp.biz.evil.example',
    'whats\u0430pp.net',
  ])('denies %s', (name) => {
    const n = normalizeHost(name).host;
    expect(anyRule(n)).toBe(false);
    expect(anyRef(n)).toBe(false);
  });

  it.each([
    ['g.whatsapp.net', 'whatsapp'],
    ['G.WhatsApp.NET.', 'whatsapp'],
    ['media-sin6-1.cdn.whatsapp.net', 'whatsapp'],
    ['media.fada1-1.fna.whatsapp.net', 'whatsapp'],
    ['a.b.cdn.whatsapp.net', 'whatsapp'],
    ['graph.facebook.com', 'whatsapp'],
    ['docker.whatsapp.biz', 'whatsapp-images'],
    ['dl.bintray.com', 'whatsapp-images'],
    ['akamai.bintray.com', 'whatsapp-images'],
  ])('allows %s (rule %s)', (name, rule) => {
    const n = normalizeHost(name).host;
    expect(rules.find((r) => r.hosts?.matches(n))?.name).toBe(rule);
  });

  it('the count of allowed names in the list is stable', () => {
    const allowed = names.filter(anyRule);
    expect(allowed.length).toBe(names.filter(anyRef).length);
    // 167 under .cdn, 993 media.*.fna, and g/pps/static/graph.whatsapp.com (grep -E count).
    expect(allowed.length).toBe(1164);
  });
});
