import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import { describe, expect, it } from 'vitest';
import { EgressError, REASONS } from '../../src/errors.js';
import { classify, type SpecialRange } from '../../src/net/classify.js';
import { normalizeHost, parseAbsoluteUrl, parseHostPort, isValidName, type Target } from '../../src/policy/hostport.js';
import { compilePattern, HostMatcher } from '../../src/policy/patterns.js';

/**
 * Property tests (fast-check): the target parsers fail only with
 * `bad_request`, and what they accept is canonical; the hostname matcher
 * agrees with an independent reference; address classification agrees with
 * ipaddr.js wherever both name the same range.
 */

const RUNS = 3000;

/**
 * [min, max] share of generated cases each parser property must see
 * accepted (see tally): about half and twice what the generators give today
 * (~20%, ~27%, ~20%, ~16% and ~92%), so a parser that starts refusing, or
 * accepting, nearly everything fails.
 */
const SHARE = {
  anyHost: [0.1, 0.5],
  mutatedHost: [0.12, 0.6],
  hostPort: [0.08, 0.5],
  url: [0.07, 0.4],
  spelled: [0.7, 1],
} as const;

// ---------------------------------------------------------------------------
// Parsers

/** Call a parser: either a value, or an EgressError with reason bad_request — nothing else. */
function outcome<T>(f: () => T): { ok: true; value: T } | { ok: false } {
  try {
    return { ok: true, value: f() };
  } catch (err) {
    if (!(err instanceof EgressError)) throw new Error(`threw ${String(err)} (not an EgressError)`);
    if (err.reason !== 'bad_request') throw new Error(`reason ${err.reason}, expected bad_request`);
    if (!(err.reason in REASONS)) throw new Error(`unknown reason ${err.reason}`);
    return { ok: false };
  }
}

/** What parsers hand to the policy is canonical: a valid name or an IP's canonical text, and a fixed point. */
function checkCanonical(t: { host: string; family?: 4 | 6 }): void {
  if (t.family === undefined) {
    expect(isValidName(t.host), t.host).toBe(true);
    expect(t.host).toBe(t.host.toLowerCase());
    expect(t.host.length).toBeLessThanOrEqual(253);
  } else {
    expect(classify(t.host)).toBeDefined(); // throws on a non-address
    expect(t.host.includes('%')).toBe(false);
  }
  const again = normalizeHost(t.family === 6 ? `[${t.host}]` : t.host);
  expect(again).toEqual(t.family === undefined ? { host: t.host } : { host: t.host, family: t.family });
}

/**
 * How many generated cases a parser accepted: a property whose checks run
 * only on accepted input would pass if the parser refused everything, so each
 * such property requires a share of its cases to be accepted (and, where
 * random input is mostly garbage, a share refused).
 */
function tally() {
  const t = {
    runs: 0,
    accepted: 0,
    /** Record one case's outcome; returns it. */
    see(ok: boolean): boolean {
      t.runs++;
      if (ok) t.accepted++;
      return ok;
    },
    expectAccepted(min: number, max = 1): void {
      const share = t.accepted / t.runs;
      expect(t.runs).toBeGreaterThan(0);
      expect(share, `${t.accepted} of ${t.runs} accepted`).toBeGreaterThanOrEqual(min);
      expect(share, `${t.accepted} of ${t.runs} accepted`).toBeLessThanOrEqual(max);
    },
  };
  return t;
}

function checkTarget(t: Target): void {
  checkCanonical(t);
  expect(Number.isInteger(t.port) && t.port >= 1 && t.port <= 65535).toBe(true);
}

/** Characters that matter in authorities, for mutations. */
const NASTY = [
  '@', '#', '%', '%2e', '%00', '\\', '/', '?', ' ', '\t', '\0', '\r', '\n', '.', '..', ':', '[', ']', '*', ',', ';', '"', '<', '>', '^', '`', '{', '|', '}', '~',
  '0x', '0', '00', '8', '9', 'ff', '255', '256', '4294967295', '4294967296',
  '\u0430', // Cyrillic а
  '\uff0e', '\u3002', '\uff61', // fullwidth/ideographic dots
  '\u00ad', '\u200b', '\u200d', '\ufeff', // soft hyphen, zero-width
  '\uff10', '\uff58', 'ß', 'İ', 'ﬀ', '\u0301', '\ud800', '\udfff', 'xn--', '-', '_', '::', '::ffff:', '%25eth0', '%eth0',
];

const VALID_AUTHORITIES = [
  'g.whatsapp.net:443',
  'G.WhatsApp.NET.:5222',
  'media-sin6-1.cdn.whatsapp.net:443',
  '127.0.0.1:80',
  '2130706433:1',
  '0x7f000001:443',
  '0177.0.0.1:443',
  '127.1:443',
  '[::1]:443',
  '[::ffff:127.0.0.1]:443',
  '[64:ff9b::7f00:1]:443',
  '[2001:db8::1]:65535',
  'xn--bcher-kva.de:443',
  'bücher.de:443',
  'a.b-c_d.example:8080',
];

/** A valid authority with a few random edits (insert, delete, replace, duplicate). */
const mutatedAuthority = fc
  .tuple(
    fc.constantFrom(...VALID_AUTHORITIES),
    fc.array(
      fc.tuple(fc.constantFrom('insert', 'delete', 'replace', 'dup'), fc.nat(), fc.oneof(fc.constantFrom(...NASTY), fc.string({ unit: 'binary', maxLength: 3 }))),
      { minLength: 1, maxLength: 5 },
    ),
  )
  .map(([base, edits]) => {
    let s = base;
    for (const [op, at, text] of edits) {
      const i = s.length ? at % (s.length + 1) : 0;
      if (op === 'insert') s = s.slice(0, i) + text + s.slice(i);
      else if (op === 'delete') s = s.slice(0, i) + s.slice(i + 1 + (at % 3));
      else if (op === 'replace') s = s.slice(0, i) + text + s.slice(i + text.length);
      else s = s.slice(0, i) + s.slice(i, i + 4) + s.slice(i);
    }
    return s;
  });

const anyString = fc.oneof(
  fc.string({ maxLength: 300 }),
  fc.string({ unit: 'binary', maxLength: 300 }),
  fc.string({ unit: 'grapheme', maxLength: 100 }),
  fc.string({ unit: fc.constantFrom(...'0123456789abcdefx.:[]%@'.split('')), maxLength: 40 }),
  mutatedAuthority,
);

describe('parsers never throw past their boundary', () => {
  it('normalizeHost: a canonical host or bad_request, on arbitrary strings', () => {
    const t = tally();
    fc.assert(
      fc.property(anyString, (s) => {
        const r = outcome(() => normalizeHost(s));
        t.see(r.ok);
        if (r.ok) checkCanonical(r.value);
      }),
      { numRuns: RUNS },
    );
    t.expectAccepted(SHARE.anyHost[0], SHARE.anyHost[1]);
  });

  it('normalizeHost: on the host part of mutated authorities', () => {
    const t = tally();
    fc.assert(
      fc.property(mutatedAuthority, (s) => {
        const host = s.startsWith('[') ? s.slice(0, s.indexOf(']') + 1) || s : s.slice(0, Math.max(0, s.lastIndexOf(':')));
        const r = outcome(() => normalizeHost(host));
        t.see(r.ok);
        if (r.ok) checkCanonical(r.value);
      }),
      { numRuns: RUNS },
    );
    t.expectAccepted(SHARE.mutatedHost[0], SHARE.mutatedHost[1]);
  });

  it('parseHostPort: a canonical target or bad_request, with and without a default port', () => {
    const t = tally();
    fc.assert(
      fc.property(anyString, fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }), (s, def) => {
        const r = outcome(() => parseHostPort(s, def));
        t.see(r.ok);
        if (r.ok) checkTarget(r.value);
      }),
      { numRuns: RUNS },
    );
    t.expectAccepted(SHARE.hostPort[0], SHARE.hostPort[1]);
  });

  it('parseAbsoluteUrl: a canonical target and an origin-form path, or bad_request', () => {
    const url = fc.oneof(
      anyString.map((s) => `http://${s}`),
      fc.tuple(mutatedAuthority, fc.string({ unit: 'binary', maxLength: 20 })).map(([a, p]) => `http://${a}/${p}`),
      fc.tuple(fc.constantFrom('http://', 'HTTP://', 'hTtP://', 'http:/', 'http:', 'https://', '//', 'http:\\\\'), mutatedAuthority, fc.constantFrom('', '/', '/x?y#z', '#@127.0.0.2/', '?@x', '\\@127.0.0.2/')).map((p) => p.join('')),
    );
    const t = tally();
    fc.assert(
      fc.property(url, (u) => {
        const r = outcome(() => parseAbsoluteUrl(u));
        t.see(r.ok);
        if (!r.ok) return;
        checkTarget(r.value.target);
        expect(r.value.path.startsWith('/')).toBe(true);
        expect(r.value.path.includes('#')).toBe(false);
        // The authority sent upstream names the judged target.
        const back = parseHostPort(r.value.authority, 80);
        expect(back).toEqual(r.value.target);
      }),
      { numRuns: RUNS },
    );
    t.expectAccepted(SHARE.url[0], SHARE.url[1]);
  });

  it('what parseHostPort accepts, the WHATWG URL parser reads as the same host and port (no parser differential)', () => {
    let accepted = 0;
    fc.assert(
      fc.property(mutatedAuthority, (a) => {
        const r = outcome(() => parseHostPort(a));
        if (!r.ok) return;
        accepted++;
        const t = r.value;
        const u = new URL(`http://${a}/`);
        const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname.replace(/\.$/, '');
        const canonical = t.family === 6 ? ipaddr.parse(host).toString() : host;
        expect(canonical, a).toBe(t.family === 6 ? ipaddr.parse(t.host).toString() : t.host);
        expect(Number(u.port || 80), a).toBe(t.port);
      }),
      { numRuns: RUNS },
    );
    // Not vacuous: a fair share of the mutations still parse.
    expect(accepted).toBeGreaterThan(RUNS / 20);
  });

  it('every IPv4 form fast-check generates (decimal, hex, octal, short) is judged as the address an independent inet_aton reads', () => {
    fc.assert(
      fc.property(fc.ipV4Extended(), fc.boolean(), (s, dot) => {
        const expected = refInetAton(s);
        expect(expected, s).not.toBeNull();
        expect(normalizeHost(dot ? `${s}.` : s), s).toEqual({ host: expected, family: 4 });
      }),
      { numRuns: RUNS },
    );
  });

  it('every IPv6 form fast-check generates is judged as the address ipaddr.js reads', () => {
    fc.assert(
      fc.property(fc.ipV6(), (s) => {
        const r = normalizeHost(`[${s}]`);
        expect(r.family).toBe(6);
        expect(v6Number(r.host)).toBe(v6Number(s));
      }),
      { numRuns: RUNS },
    );
  });
});

/** The WHATWG/inet_aton IPv4 reading, written independently: null when not an IPv4 literal. */
function refInetAton(input: string): string | null {
  let parts = input.split('.');
  if (parts.length > 1 && parts.at(-1) === '') parts = parts.slice(0, -1);
  if (parts.length === 0 || parts.length > 4) return null;
  const nums: number[] = [];
  for (const p of parts) {
    let digits = p;
    let radix = 10;
    if (/^0x/i.test(p)) {
      digits = p.slice(2);
      radix = 16;
    } else if (p.length > 1 && p.startsWith('0')) {
      digits = p.slice(1);
      radix = 8;
    }
    const valid = radix === 16 ? /^[0-9a-f]*$/i : radix === 8 ? /^[0-7]*$/ : /^[0-9]+$/;
    if (!valid.test(digits)) return null;
    nums.push(digits === '' ? 0 : parseInt(digits, radix));
  }
  const last = nums.pop()!;
  if (nums.some((n) => n > 255)) return null;
  if (last >= 256 ** (4 - nums.length)) return null;
  let value = last;
  nums.forEach((n, i) => (value += n * 256 ** (3 - i)));
  return [24, 16, 8, 0].map((s) => Math.floor(value / 2 ** s) % 256).join('.');
}

/**
 * An IPv6 address as a number. A trailing dotted quad is turned into two hex
 * groups first: ipaddr.js reads `::a.b.c.d` as IPv4-mapped, but RFC 4291
 * 2.2.3 makes it the low 32 bits (`::` + a.b.c.d, IPv4-compatible).
 */
function v6Number(s: string): bigint {
  const m = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (m) {
    const [a, b, c, d] = m.slice(2).map(Number) as [number, number, number, number];
    s = `${m[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  return ipaddr.IPv6.parse(s).parts.reduce((n, p) => (n << 16n) | BigInt(p), 0n);
}

// ---------------------------------------------------------------------------
// Hostname matching: an independent reference

const HOST_CHARS = /^[a-z0-9_.-]$/;

/**
 * Vendor notation, by dynamic programming over (literal part, position):
 * the name is part0 gap part1 gap … partN, each gap one or more hostname
 * characters (dots included).
 */
function refVendor(pattern: string, name: string): boolean {
  const parts = pattern.split('.*');
  // reach[i] = set of positions in `name` where parts[0..i] (with gaps) can end.
  let reach = new Set<number>();
  if (name.startsWith(parts[0]!)) reach.add(parts[0]!.length);
  for (let k = 1; k < parts.length; k++) {
    const lit = parts[k]!;
    const next = new Set<number>();
    for (const start of reach) {
      for (let g = start + 1; g + lit.length <= name.length; g++) {
        if (!HOST_CHARS.test(name[g - 1]!)) break;
        if (name.slice(g, g + lit.length) === lit) next.add(g + lit.length);
      }
    }
    reach = next;
  }
  return reach.has(name.length);
}

/** One label against a glob label: `*` any run of characters, `?` exactly one. By DP. */
function refLabel(p: string, l: string): boolean {
  // m[i][j]: p[0..i) matches l[0..j)
  let prev = new Array<boolean>(l.length + 1).fill(false);
  prev[0] = true;
  for (let i = 1; i <= p.length; i++) {
    const cur = new Array<boolean>(l.length + 1).fill(false);
    const c = p[i - 1]!;
    cur[0] = c === '*' && prev[0]!;
    for (let j = 1; j <= l.length; j++) {
      if (c === '*') cur[j] = prev[j]! || cur[j - 1]!;
      else cur[j] = prev[j - 1]! && (c === '?' || c === l[j - 1]);
    }
    prev = cur;
  }
  return prev[l.length]!;
}

/** Glob over labels: `**` one or more whole labels, any other label matched by refLabel. */
function refGlob(pattern: string, name: string): boolean {
  const p = pattern.split('.');
  const n = name.split('.');
  let reach = new Set<number>([0]);
  for (const label of p) {
    const next = new Set<number>();
    for (const j of reach) {
      if (label === '**') for (let k = j + 1; k <= n.length; k++) next.add(k);
      else if (j < n.length && refLabel(label, n[j]!)) next.add(j + 1);
    }
    reach = next;
  }
  return reach.has(n.length);
}

/** The spec: `.*` anywhere → vendor notation; else `*`/`?` → glob; else the name itself. */
function refMatches(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase();
  if (p.includes('.*')) return refVendor(p, name);
  if (/[*?]/.test(p)) return refGlob(p, name);
  return p === name;
}

const LABEL_CHARS = 'abx0-_'.split('');
const label = fc.string({ unit: fc.constantFrom(...LABEL_CHARS), minLength: 1, maxLength: 3 });
const name = fc.array(label, { minLength: 1, maxLength: 5 }).map((l) => l.join('.'));

type PatternSpec = { kind: 'exact'; labels: string[] } | { kind: 'vendor'; parts: string[] } | { kind: 'glob'; labels: string[] };

const exactSpec = fc.array(label, { minLength: 1, maxLength: 4 }).map((labels): PatternSpec => ({ kind: 'exact', labels }));
// Literal parts of a vendor pattern: hostname characters, dots included.
const vendorPart = fc.string({ unit: fc.constantFrom(...'abx0-.'.split('')), maxLength: 4 });
const vendorSpec = fc
  .tuple(fc.oneof(fc.constant(''), vendorPart), fc.array(vendorPart, { minLength: 1, maxLength: 3 }))
  .map(([first, rest]): PatternSpec => ({ kind: 'vendor', parts: [first, ...rest] }));
// Glob labels; one starting with `*` only first (after a dot it would read `.*`, the vendor notation).
const innerGlobLabel = fc.oneof(label, label.map((l) => `${l}*`), label.map((l) => `${l[0]}?${l.slice(1)}`), fc.constant('?'), label.map((l) => `${l}*${l}`));
const globSpec = fc
  .tuple(fc.constantFrom('*', '**', '*a', '*x?', null), fc.array(innerGlobLabel, { minLength: 1, maxLength: 3 }))
  .map(([head, labels]): PatternSpec => ({ kind: 'glob', labels: head ? [head, ...labels] : labels }));

function render(spec: PatternSpec): string {
  if (spec.kind === 'vendor') return spec.parts.join('.*');
  return spec.labels.join('.');
}

function compiles(pattern: string): boolean {
  try {
    compilePattern(pattern);
    return true;
  } catch {
    return false;
  }
}

const pattern = fc
  .oneof(exactSpec, vendorSpec, globSpec)
  .map(render)
  // Not a trailing dot (compilePattern drops one), and what the config accepts.
  .filter((p) => !p.endsWith('.') && compiles(p));

/** A name built to fit the pattern (wildcards filled in from `fill`), so that matches are common. */
function instance(p: string, fill: string[]): string {
  let i = 0;
  const next = () => fill[i++ % fill.length]!;
  if (p.includes('.*')) return p.split('.*').reduce((acc, part) => `${acc}${next()}${part}`);
  return p
    .split('.')
    .map((l) => {
      if (l === '**') return fill.length % 2 ? next() : `${next()}.${next()}`;
      return l.replaceAll('*', () => (i++ % 3 === 0 ? '' : next())).replaceAll('?', () => next()[0]!);
    })
    .join('.');
}

const nameFor = (p: string) =>
  fc.oneof(
    name,
    fc.array(label, { minLength: 1, maxLength: 4 }).map((fill) => instance(p, fill)),
  ).filter((n) => isValidName(n));

describe('hostname matcher agrees with the reference', () => {
  it('the reference itself reads the README table right', () => {
    const rows: [string, string, boolean][] = [
      ['g.whatsapp.net', 'g.whatsapp.net', true],
      ['g.whatsapp.net', 'evilg.whatsapp.net', false],
      ['.*.cdn.whatsapp.net', 'a.b.cdn.whatsapp.net', true],
      ['.*.cdn.whatsapp.net', 'cdn.whatsapp.net', false],
      ['.*.cdn.whatsapp.net', 'evilcdn.whatsapp.net', false],
      ['media-.*.cdn.whatsapp.net', 'media-sin6-1.cdn.whatsapp.net', true],
      ['media..*.fna.whatsapp.net', 'media.fada1-1.fna.whatsapp.net', true],
      ['media..*.fna.whatsapp.net', 'media-x.fna.whatsapp.net', false],
      ['*.example.org', 'a.example.org', true],
      ['*.example.org', 'example.org', false],
      ['*.example.org', 'a.b.example.org', false],
      ['**.example.net', 'a.b.example.net', true],
      ['**.example.net', 'example.net', false],
    ];
    for (const [p, n, m] of rows) expect(refMatches(p, n), `${p} ${n}`).toBe(m);
  });

  it('one pattern: compilePattern + HostMatcher vs the reference', () => {
    const seen = { vendor: 0, glob: 0, exact: 0, match: 0 };
    fc.assert(
      fc.property(
        pattern.chain((p) => fc.tuple(fc.constant(p), nameFor(p))),
        ([p, n]) => {
          const expected = refMatches(p, n);
          seen[compilePattern(p).kind]++;
          if (expected) seen.match++;
          expect(new HostMatcher([compilePattern(p)]).matches(n), `${p} ~ ${n}`).toBe(expected);
        },
      ),
      { numRuns: 5000 },
    );
    // Every kind is exercised, and matches are not rare.
    expect(seen.vendor).toBeGreaterThan(500);
    expect(seen.glob).toBeGreaterThan(500);
    expect(seen.exact).toBeGreaterThan(500);
    expect(seen.match).toBeGreaterThan(500);
  });

  it('several patterns in one matcher: matches iff some pattern does', () => {
    fc.assert(
      fc.property(
        fc.array(pattern, { minLength: 1, maxLength: 4 }).chain((ps) => fc.tuple(fc.constant(ps), fc.oneof(...ps.map(nameFor)))),
        ([ps, n]) => {
          const m = new HostMatcher(ps.map(compilePattern));
          expect(m.matches(n), `${JSON.stringify(ps)} ~ ${n}`).toBe(ps.some((p) => refMatches(p, n)));
        },
      ),
      { numRuns: 3000 },
    );
  });

  it('case and one trailing dot in a pattern do not change what it matches', () => {
    fc.assert(
      fc.property(
        pattern.chain((p) => fc.tuple(fc.constant(p), nameFor(p))),
        ([p, n]) => {
          const expected = refMatches(p, n);
          expect(new HostMatcher([compilePattern(`${p.toUpperCase()}.`)]).matches(n)).toBe(expected);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('a name matched by a pattern is matched in every spelling normalizeHost reduces to it', () => {
    const t = tally();
    fc.assert(
      fc.property(
        pattern.chain((p) => fc.tuple(fc.constant(p), nameFor(p), fc.constantFrom('upper', 'dot', 'fullwidth', 'ideographic'))),
        ([p, n, how]) => {
          const spelled = how === 'upper' ? n.toUpperCase() : how === 'dot' ? `${n}.` : n.replaceAll('.', how === 'fullwidth' ? '\uff0e' : '\u3002');
          const r = outcome(() => normalizeHost(spelled));
          // Labels starting or ending with `-`, or with `--` in places, may be
          // refused by IDNA: that is a refusal, fine. A name whose last label
          // is a number (`a.0xa`, `12`) is an IPv4 literal to every URL parser.
          t.see(r.ok && r.value.family === undefined);
          if (!r.ok || r.value.family !== undefined) return;
          expect(r.value.host, spelled).toBe(n);
          expect(new HostMatcher([compilePattern(p)]).matches(r.value.host)).toBe(refMatches(p, n));
        },
      ),
      { numRuns: 2000 },
    );
    t.expectAccepted(SHARE.spelled[0], SHARE.spelled[1]);
  });
});

// ---------------------------------------------------------------------------
// Address classification vs ipaddr.js

/** ipaddr.js range names → the core's, where both name the same range. */
const SAME_V4: Record<string, SpecialRange> = {
  unspecified: 'unspecified',
  private: 'private',
  loopback: 'loopback',
  linkLocal: 'link_local',
  multicast: 'multicast',
  carrierGradeNat: 'shared_cgnat',
};
const SAME_V6: Record<string, SpecialRange> = {
  unspecified: 'unspecified',
  loopback: 'loopback',
  linkLocal: 'link_local',
  multicast: 'multicast',
  uniqueLocal: 'unique_local',
  discard: 'discard_only',
  '6to4': 'ipv6_6to4',
  teredo: 'ipv6_teredo',
};
/** ipaddr.js "reserved" (IPv4) spans several of the core's ranges (and 192.88.99/24, which the core does not list). */
const V4_RESERVED_IN_CORE: (SpecialRange | null)[] = ['ietf_protocol', 'documentation', 'benchmarking', 'reserved'];

const V4_CIDRS = [
  '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.0.0.0/24', '192.0.2.0/24',
  '192.88.99.0/24', '192.168.0.0/16', '198.18.0.0/15', '198.51.100.0/24', '203.0.113.0/24', '224.0.0.0/4', '240.0.0.0/4',
  '255.255.255.255/32', '192.175.48.0/24', '192.52.193.0/24',
  // Neighbours of special ranges.
  '100.0.0.0/8', '172.0.0.0/8', '192.0.0.0/16', '198.0.0.0/8', '223.255.255.0/24',
];
const V6_CIDRS = [
  '::/128', '::1/128', '::/96', '::ffff:0:0/96', '::ffff:0:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48', '100::/64', '2001::/32', '2001::/23',
  '2001:2::/48', '2001:db8::/32', '2002::/16', 'fc00::/7', 'fe80::/10', 'fec0::/10', 'ff00::/8', '2a03:2880::/32', '::/8',
];

function inCidr(cidr: string, rand: bigint): string {
  const [base, len] = ipaddr.parseCIDR(cidr);
  if (base.kind() === 'ipv4') {
    const width = 32 - len;
    const start = (base as ipaddr.IPv4).octets.reduce((n, o) => n * 256 + o, 0);
    const host = width === 0 ? 0 : Number(rand % (1n << BigInt(width)));
    const n = start + host;
    return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
  }
  const width = 128 - len;
  const start = (base as ipaddr.IPv6).parts.reduce((n, p) => (n << 16n) | BigInt(p), 0n);
  const n = start + (width === 0 ? 0n : rand % (1n << BigInt(width)));
  const parts: number[] = [];
  for (let i = 7; i >= 0; i--) parts.push(Number((n >> BigInt(i * 16)) & 0xffffn));
  return new ipaddr.IPv6(parts).toString();
}

const rand128 = fc.bigInt({ min: 0n, max: (1n << 128n) - 1n });
const v4Address = fc.oneof(
  fc.integer({ min: 0, max: 2 ** 32 - 1 }).map((n) => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.')),
  fc.tuple(fc.constantFrom(...V4_CIDRS), rand128).map(([c, r]) => inCidr(c, r)),
);
const v6Address = fc.oneof(
  rand128.map((n) => inCidr('::/0', n)),
  fc.tuple(fc.constantFrom(...V6_CIDRS), rand128).map(([c, r]) => inCidr(c, r)),
  // Embedded forms of special IPv4 addresses.
  fc.tuple(fc.constantFrom('::ffff:0:0/96', '::ffff:0:0:0/96', '64:ff9b::/96', '::/96'), v4Address).map(([c, v4]) => {
    const n = ipaddr.IPv4.parse(v4).octets.reduce((a, o) => a * 256 + o, 0);
    return inCidr(c, BigInt(n));
  }),
);

describe('classify agrees with ipaddr.js range()', () => {
  it('IPv4: the same range wherever both name it', () => {
    fc.assert(
      fc.property(v4Address, (ip) => {
        const theirs = ipaddr.IPv4.parse(ip).range();
        const ours = classify(ip).range;
        if (theirs in SAME_V4) expect(ours, `${ip}: ipaddr ${theirs}`).toBe(SAME_V4[theirs]);
        for (const [name, core] of Object.entries(SAME_V4)) if (ours === core && name !== theirs) expect.fail(`${ip}: core ${ours}, ipaddr ${theirs}`);
        // The registry marks PCP and TURN anycast (192.0.0.9, 192.0.0.10) globally reachable inside 192.0.0.0/24.
        const reachable = ip === '192.0.0.9' || ip === '192.0.0.10';
        if (reachable) expect(ours, ip).toBeNull();
        else if (theirs === 'reserved' && !ipaddr.IPv4.parse(ip).match(ipaddr.IPv4.parse('192.88.99.0'), 24)) expect(V4_RESERVED_IN_CORE, ip).toContain(ours);
        if (theirs === 'broadcast') expect(ours).toBe('reserved');
        // Every range the core lists is one ipaddr.js names too: its plain unicast is public for the core.
        if (theirs === 'unicast') expect(ours, ip).toBeNull();
      }),
      { numRuns: 20000 },
    );
  });

  it('IPv6: the same range wherever both name it', () => {
    fc.assert(
      fc.property(v6Address, (ip) => {
        const addr = ipaddr.IPv6.parse(ip);
        const theirs = addr.range();
        const c = classify(ip);
        if (theirs in SAME_V6) expect(c.range, `${ip}: ipaddr ${theirs}`).toBe(SAME_V6[theirs]);
        for (const [name, core] of Object.entries(SAME_V6)) {
          if (c.range === core && c.effective === ip && name !== theirs) expect.fail(`${ip}: core ${c.range}, ipaddr ${theirs}`);
        }
        // 2001:db8::/32: ipaddr.js files it under "reserved", the core under "documentation".
        if (addr.match(ipaddr.IPv6.parse('2001:db8::'), 32)) expect(c.range).toBe('documentation');
      }),
      { numRuns: 20000 },
    );
  });

  it('IPv4-mapped, -translated and NAT64 (64:ff9b::/96) addresses: the embedded IPv4 address decides, as ipaddr.js classifies it', () => {
    fc.assert(
      fc.property(fc.constantFrom('::ffff:0:0/96', '::ffff:0:0:0/96', '64:ff9b::/96'), v4Address, (prefix, v4) => {
        const n = ipaddr.IPv4.parse(v4).octets.reduce((a, o) => a * 256 + o, 0);
        const ip = inCidr(prefix, BigInt(n));
        const c = classify(ip);
        expect(c.effective).toBe(v4);
        expect(c.range).toBe(classify(v4).range);
        const theirs = ipaddr.IPv4.parse(v4).range();
        if (theirs in SAME_V4) expect(c.range, `${ip} (${v4}: ${theirs})`).toBe(SAME_V4[theirs]);
        // ipaddr.js agrees that the v6 form is a wrapper of that very address.
        if (prefix === '::ffff:0:0/96') expect(ipaddr.IPv6.parse(ip).toIPv4Address().toString()).toBe(v4);
      }),
      { numRuns: 5000 },
    );
  });

  it('the core classifies every address, in any spelling, the same way', () => {
    fc.assert(
      fc.property(v6Address, (ip) => {
        const addr = ipaddr.IPv6.parse(ip);
        const spellings = [addr.toNormalizedString(), addr.toNormalizedString().replace(/\b0\b/g, '0000'), addr.toRFC5952String(), ip.toUpperCase()];
        const first = classify(ip);
        const same = (a: string, b: string) => (a.includes(':') && b.includes(':') ? v6Number(a) === v6Number(b) : a === b);
        for (const s of spellings) {
          const c = classify(s);
          expect(c.range, s).toBe(first.range);
          expect(same(c.effective, first.effective), s).toBe(true);
          expect(same(c.dial, first.dial), s).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
  });
});
