import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { DEFAULT_CONFIG, parseConfig, parseConfigSource } from '../../src/config/load.js';
import { notes, warnings } from '../../src/config/preflight.js';
import { parseSize, size } from '../../src/config/schema.js';
import { ConfigError, type ConfigIssue } from '../../src/errors.js';
import { compilePattern, HostMatcher } from '../../src/policy/patterns.js';

/** What a new operator meets first in a config: units, messages, builtin: data, pattern notation, warnings. */

const dir = mkdtempSync(join(tmpdir(), 'wa-egress-first-hour-'));
const file = join(dir, 'config.yaml');
const y = (...lines: string[]) => `${lines.join('\n')}\n`;
const HEAD = ['listen:', '  proxy: "127.0.0.1:3128"'];
const RULE = ['policy:', '  rules:', '    - name: r', '      hosts: ["a.example.com"]', '      ports: [443]'];

function issues(text: string): ConfigIssue[] {
  try {
    parseConfig(text, file);
  } catch (err) {
    if (err instanceof ConfigError) return err.issues;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('durations and sizes need a unit', () => {
  it.each([
    ['keepalive: 30', 'keepalive', /30 has no unit: write 30s or 30000ms/],
    ['timeouts:\n  connect: 500', 'timeouts.connect', /500 has no unit: write 500s or 500000ms/],
    ['timeouts:\n  idle: "90"', 'timeouts.idle', /90 has no unit/],
    ['timeouts:\n  handshake: 15000', 'timeouts.handshake', /15000 has no unit: write 15000ms or 15s/],
  ])('%j', (extra, path, message) => {
    const found = issues(y(...HEAD, ...RULE, extra));
    expect(found).toHaveLength(1);
    expect(found[0]!.path).toBe(path);
    expect(found[0]!.message).toMatch(message);
  });

  it('0 needs no unit', () => {
    const c = parseConfig(y(...HEAD, ...RULE, 'keepalive: 0', 'timeouts:', '  idle: 0'), file);
    expect(c.keepalive.idle).toBe(0);
    expect(c.timeouts.idle).toBe(0);
  });

  it('sizes: units, and a bare number other than 0 is an error', () => {
    expect(parseSize('64KiB')).toBe(65_536);
    expect(parseSize('1MiB')).toBe(1_048_576);
    expect(parseSize('512B')).toBe(512);
    expect(parseSize('2kB')).toBe(2000);
    expect(parseSize(0)).toBe(0);
    expect(parseSize(4096)).toBeNull();
    expect(parseSize('4096')).toBeNull();
    expect(parseSize('1.5MiB')).toBeNull();
    const schema = z.strictObject({ max: size(1) });
    const bare = schema.safeParse({ max: 4096 });
    expect(bare.success).toBe(false);
    expect(bare.error!.issues[0]!.message).toMatch(/4096 has no unit: write 4096B/);
    expect(schema.parse({ max: '16KiB' }).max).toBe(16_384);
    expect(schema.safeParse({ max: '10 parsecs' }).error!.issues[0]!.message).toMatch(/expected a size such as 64KiB/);
  });
});

describe('messages are in the project\'s words', () => {
  const raw = /Invalid input|Invalid option|received undefined|Too small|expected object|expected string/;

  it('a missing policy says what is expected', () => {
    const found = issues(y(...HEAD));
    expect(found.map((i) => [i.path, i.message])).toEqual([['policy', expect.stringMatching(/^required: the policy section, with policy\.rules/)]]);
  });

  it('a missing listen says what is expected', () => {
    const found = issues(y(...RULE));
    expect(found[0]!.message).toMatch(/^required: the listen section/);
  });

  it.each([
    ['wrong types', y('listen:', '  proxy: 3128', 'policy:', '  mode: strict', '  rules:', '    - name: 5', '      hosts: "a.com"', '      ports: ["https"]', 'dns:', '  resolve_unlisted: "no"', '  hosts: {"a.com": 5}', 'audit:', '  on_error: maybe', '  file: ""')],
    ['a list where a mapping goes', y('listen: []', 'policy: [1]', 'timeouts: 5')],
    ['nothing where a value goes', y('listen:', '  proxy:', 'policy:', '  rules:', '    -', 'keepalive:')],
    ['a forward without its keys', y('listen:', '  forwards:', '    - name: chatd', ...RULE)],
  ])('%s', (_name, text) => {
    const found = issues(text);
    expect(found.length).toBeGreaterThan(0);
    for (const i of found) {
      expect(i.message, `${i.path}: ${i.message}`).not.toMatch(raw);
      expect(i.path).not.toBe('');
    }
  });

  it('names the choices and what was given', () => {
    const [i] = issues(y(...HEAD, ...RULE, '  mode: strict'));
    expect(i!.message).toBe('expected one of "enforce", "report", got text "strict"');
    const [p] = issues(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: [a.com]', '      ports: ["https"]'));
    expect(p!.message).toBe('expected a number, got text "https"');
    const [f] = issues(y('listen:', '  forwards:', '    - name: chatd', '      listen: "127.0.0.1:5222"', ...RULE));
    expect(f!.path).toBe('listen.forwards[0].to');
    expect(f!.message).toMatch(/^required: the "host:port"/);
  });

  it('an unknown key near a known one suggests it, at any depth', () => {
    const found = issues(y(...HEAD, ...RULE, '      port: [80]', 'dns:', '  resolve_unlistd: false', 'timeout:', '  idle: 0s', 'colour: red'));
    expect(found.map((i) => [i.path, i.message])).toEqual([
      ['policy.rules[0].port', 'unknown key (did you mean ports?)'],
      ['dns.resolve_unlistd', 'unknown key (did you mean resolve_unlisted?)'],
      ['timeout', 'unknown key (did you mean timeouts?)'],
      ['colour', 'unknown key'],
    ]);
  });

  it('the top of the file must be a mapping', () => {
    expect(issues('- a\n- b\n')[0]!.message).toMatch(/expected a mapping of keys/);
  });
});

describe('builtin: range lists', () => {
  it('builtin:whatsapp loads the bundled vendor list from anywhere', () => {
    const elsewhere = join(dir, 'elsewhere');
    mkdirSync(elsewhere, { recursive: true });
    copyFileSync(DEFAULT_CONFIG, join(elsewhere, 'default.yaml'));
    const c = parseConfig(readFileSync(join(elsewhere, 'default.yaml'), 'utf8'), join(elsewhere, 'default.yaml'));
    expect(c.policy.rules[0]!.cidrs).toBe(229);
  });

  it('an unknown builtin name lists the known ones', () => {
    const [i] = issues(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      ip_ranges: ["builtin:nope"]', '      ports: [443]'));
    expect(i!.path).toBe('policy.rules[0].ip_ranges[0]');
    expect(i!.message).toMatch(/no built-in range list "nope"; built-in lists: builtin:whatsapp/);
  });

  it('an unknown source prefix is named as such; IPv6 with letters is still a CIDR', () => {
    const [i] = issues(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      ip_ranges: ["http://example.com/ranges.txt"]', '      ports: [443]'));
    expect(i!.message).toMatch(/"http:" is not a range source; sources: file:, builtin:/);
    const c = parseConfig(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      ip_ranges: ["face:b00c::/32", "fe80::/10"]', '      ports: [443]'), file);
    expect(c.policy.rules[0]!.cidrs).toBe(2);
  });

  it('the bundled policy refuses names no rule lists without a DNS query', () => {
    expect(parseConfig(readFileSync(DEFAULT_CONFIG, 'utf8'), DEFAULT_CONFIG).dns.resolve_unlisted).toBe(false);
  });
});

describe('pattern notation', () => {
  const m = (p: string, n: string) => new HostMatcher([compilePattern(p)]).matches(n);

  it('"*.*.example.io" is two labels', () => {
    expect(compilePattern('*.*.example.io').kind).toBe('glob');
    expect(m('*.*.example.io', 'a.b.example.io')).toBe(true);
    expect(m('*.*.example.io', 'a.example.io')).toBe(false);
    expect(m('*.*.example.io', 'a.b.c.example.io')).toBe(false);
  });

  it('glob: and vendor: prefixes always win', () => {
    expect(compilePattern('glob:a.*.b.com').kind).toBe('glob');
    expect(m('glob:a.*.b.com', 'a.x.b.com')).toBe(true);
    expect(m('glob:a.*.b.com', 'a.x.y.b.com')).toBe(false);
    expect(compilePattern('vendor:a.*.b.com').kind).toBe('vendor');
    expect(m('vendor:a.*.b.com', 'a.x.y.b.com')).toBe(true);
    expect(compilePattern('glob:a.*.b.com').ambiguous).toBeUndefined();
    expect(() => compilePattern('vendor:*.b.com')).toThrow(/only appears as "\.\*"/);
    expect(() => compilePattern('vendor:a.b.com')).toThrow(/needs "\.\*"/);
    expect(() => compilePattern('glob:')).toThrow(/empty pattern/);
    expect(() => compilePattern('glob:**')).toThrow(/every name/);
  });

  it('an unprefixed pattern both notations read is marked, and read by the documented rule', () => {
    expect(compilePattern('a.*.b.com')).toMatchObject({ kind: 'vendor', ambiguous: true });
    // A glob read first could never be a vendor pattern (its "*" is not part of ".*").
    expect(compilePattern('*.b.*.c')).toMatchObject({ kind: 'glob' });
    expect(compilePattern('*.b.*.c').ambiguous).toBeUndefined();
    // "media-" cannot be a hostname label, so the glob reading does not compete.
    expect(compilePattern('media-.*.cdn.whatsapp.net').ambiguous).toBe(false);
    expect(compilePattern('.*.cdn.whatsapp.net').ambiguous).toBe(false);
    expect(compilePattern('*.example.org').ambiguous).toBeUndefined();
  });

  it('config check notes say how each ambiguous pattern was read, at its key', () => {
    const loaded = parseConfigSource(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: ["a.*.b.com", "*.b.*.c", "glob:x.*.y.com", "g.example.com"]', '      ports: [443]'), file);
    const n = notes(loaded);
    expect(n.map((i) => i.path)).toEqual(['policy.rules[0].hosts[0]']);
    expect(n[0]!.message).toMatch(/"a\.\*\.b\.com" read in the vendor's notation.*write "glob:a\.\*\.b\.com"/);
    expect(n[0]!.line).toBe(6);
  });

  it('a mixed pattern asks for a prefix', () => {
    expect(() => compilePattern('a*.*.example.com')).toThrow(/write "glob:a\*\.\*\.example\.com" or "vendor:a\*\.\*\.example\.com"/);
  });
});

describe('warnings', () => {
  const warn = (...lines: string[]) => warnings(parseConfigSource(y(...HEAD, ...lines), file));

  it('ip_ranges entirely inside special ranges are dead, unless allow_ranges exempts them', () => {
    const w = warn('policy:', '  rules:', '    - name: r', '      hosts: [a.com]', '      ip_ranges: ["10.0.0.0/8", "8.8.8.0/24", "::ffff:192.168.1.0/120", "127.0.0.1"]', '      ports: [443]', '  allow_ranges: ["127.0.0.0/8"]');
    expect(w.map((i) => i.path)).toEqual(['policy.rules[0].ip_ranges[0]', 'policy.rules[0].ip_ranges[2]']);
    expect(w[0]!.message).toMatch(/10\.0\.0\.0\/8 lies inside a special range \(private\).*never allow a connection/);
    expect(w[0]!.line).toBe(7);
  });

  it('a range file partly inside special ranges says how many', () => {
    writeFileSync(join(dir, 'mixed.txt'), '8.8.8.0/24\n192.168.0.0/16\n169.254.0.0/16\n');
    const w = warn('policy:', '  rules:', '    - name: r', '      hosts: [a.com]', '      ip_ranges: ["file:mixed.txt"]', '      ports: [443]');
    expect(w).toHaveLength(1);
    expect(w[0]!.message).toMatch(/2 of the 3 ranges of file:mixed\.txt lie \(first: 192\.168\.0\.0\/16\)/);
  });

  it('a rule with only dead ranges, and a policy where no rule can allow', () => {
    const w = warn('policy:', '  rules:', '    - name: lan', '      ip_ranges: ["192.168.0.0/16"]', '      ports: [443]');
    expect(w.map((i) => [i.path, i.message])).toEqual([
      ['policy.rules[0].ip_ranges[0]', expect.stringMatching(/private/)],
      ['policy.rules[0]', 'rule "lan" can never allow a connection: all its ip_ranges are special addresses and it has no hosts'],
      ['policy.rules', 'no rule can allow a connection: every connection is denied'],
    ]);
  });

  it('a policy without rules allows nothing', () => {
    expect(warn('policy: {}').map((i) => i.message)).toEqual(['policy.rules is empty: every connection is denied']);
    expect(warn('policy:', '  mode: report').map((i) => i.message)[0]).toMatch(/report mode lets every connection through/);
  });

  it('the bundled policy and a plain rule have none', () => {
    expect(warnings(parseConfigSource(readFileSync(DEFAULT_CONFIG, 'utf8'), DEFAULT_CONFIG))).toEqual([]);
    expect(warn(...RULE)).toEqual([]);
  });
});
