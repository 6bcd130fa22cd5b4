import { describe, it, expect } from 'vitest';
import { EgressError } from '../../src/errors.js';
import { formatAuthority, normalizeHost, parseAbsoluteUrl, parseHost, parseHostPort, parsePort } from '../../src/policy/hostport.js';

/** Assert that `fn` throws an EgressError with reason bad_request (and return it). */
function expectBadRequest(fn: () => unknown, message?: RegExp): EgressError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, 'expected a throw').toBeInstanceOf(EgressError);
  const e = caught as EgressError;
  expect(e.reason).toBe('bad_request');
  if (message) expect(e.message).toMatch(message);
  return e;
}

const label = (n: number, c = 'a') => c.repeat(n);

describe('normalizeHost: IPv4 literal forms', () => {
  // Every form a resolver (inet_aton / WHATWG host parser) accepts is reduced
  // to the dotted quad and judged as that address.
  const cases: [string, string][] = [
    ['127.0.0.1', '127.0.0.1'],
    ['2130706433', '127.0.0.1'],
    ['0x7f000001', '127.0.0.1'],
    ['0X7F000001', '127.0.0.1'],
    ['017700000001', '127.0.0.1'],
    ['0177.0.0.1', '127.0.0.1'],
    ['0177.0.0.01', '127.0.0.1'],
    ['127.1', '127.0.0.1'],
    ['127.0.1', '127.0.0.1'],
    ['127.0.0.1.', '127.0.0.1'],
    ['0x7f.1', '127.0.0.1'],
    ['0x7f.0.0.1', '127.0.0.1'],
    ['0x7f.0.0.1.', '127.0.0.1'],
    ['0x7f.0.01', '127.0.0.1'],
    ['0177.0x0.0.1', '127.0.0.1'],
    ['0x7F.000.0X0.1', '127.0.0.1'],
    ['2130706433.', '127.0.0.1'],
    ['127.1.', '127.0.0.1'],
    ['01.02.03.04', '1.2.3.4'],
    ['0x1.0x2.0x3.0x4', '1.2.3.4'],
    ['1.2.3', '1.2.0.3'],
    ['10.1', '10.0.0.1'],
    ['0xffffffff', '255.255.255.255'],
    ['4294967295', '255.255.255.255'],
    ['037777777777', '255.255.255.255'],
    ['0', '0.0.0.0'],
    ['0.0.0.0', '0.0.0.0'],
    ['999', '0.0.3.231'],
    ['157.240.1.1', '157.240.1.1'],
    // Fullwidth digits and ideographic full stops are mapped by IDNA first.
    ['１２７．０．０．１', '127.0.0.1'],
    ['127。0。0。1', '127.0.0.1'],
    ['０x7f.0.0.1', '127.0.0.1'],
  ];
  it.each(cases)('%j → %s', (raw, ip) => {
    expect(normalizeHost(raw)).toEqual({ host: ip, family: 4 });
  });

  const bad = [
    '4294967296', // 2^32
    '0x100000000',
    '256.0.0.1',
    '1.2.3.256',
    '1.2.3.4.5',
    '127.0.0.1..',
    '1.2.3.08', // 08 is not octal
    '12345678901',
    '1.2.65536',
    '1.16777216',
  ];
  it.each(bad)('rejects %j', (raw) => {
    expectBadRequest(() => normalizeHost(raw));
  });
});

describe('normalizeHost: IPv6 literals', () => {
  const cases: [string, string][] = [
    ['[::1]', '::1'],
    ['[::]', '::'],
    ['[0:0:0:0:0:0:0:1]', '::1'],
    ['[::ffff:127.0.0.1]', '::ffff:7f00:1'],
    ['[0:0:0:0:0:ffff:127.0.0.1]', '::ffff:7f00:1'],
    ['[::FFFF:7F00:1]', '::ffff:7f00:1'],
    ['[::ffff:0:127.0.0.1]', '::ffff:0:7f00:1'],
    // IPv4-compatible (RFC 4291 2.2.3): `::` then the 32 bits, not mapped.
    ['[::127.0.0.1]', '::7f00:1'],
    ['[64:ff9b::127.0.0.1]', '64:ff9b::7f00:1'],
    ['[2001:DB8:0:0:0:0:0:1]', '2001:db8::1'],
    ['[2001:0db8:0000:0000:0000:0000:0000:0001]', '2001:db8::1'],
    ['[2a03:2880:f12f:83:face:b00c:0:25de]', '2a03:2880:f12f:83:face:b00c:0:25de'],
    ['[1:0:0:2:0:0:0:3]', '1:0:0:2::3'],
    ['[fe80::1]', 'fe80::1'],
  ];
  it.each(cases)('%s → %s', (raw, ip) => {
    expect(normalizeHost(raw)).toEqual({ host: ip, family: 6 });
  });

  const bad: [string, RegExp][] = [
    ['[fe80::1%eth0]', /IPv6/],
    ['[fe80::1%25eth0]', /IPv6/],
    ['[::1%2]', /IPv6/],
    ['::1', /brackets/],
    ['2001:db8::1', /brackets/],
    ['::ffff:127.0.0.1', /brackets/],
    ['[::1', /unterminated/],
    ['[::1]x', /unterminated|IPv6/],
    ['[]', /IPv6/],
    ['[127.0.0.1]', /IPv6/],
    ['[v1.x]', /IPv6/],
    ['[1::2::3]', /IPv6/],
    ['[::ffff:1.2.3]', /IPv6/],
    ['[::ffff:0x7f.0.0.1]', /IPv6/], // no resolver accepts hex inside IPv6
    ['[::ffff:0127.0.0.1]', /IPv6/],
    ['[::00001]', /IPv6/],
    ['[1:2:3:4:5:6:7:8:9]', /IPv6/],
  ];
  it.each(bad)('rejects %j', (raw, message) => {
    expectBadRequest(() => normalizeHost(raw), message);
  });
});

describe('normalizeHost: names', () => {
  const cases: [string, string][] = [
    ['example.com', 'example.com'],
    ['WWW.Example.COM', 'www.example.com'],
    ['g.WhatsApp.net', 'g.whatsapp.net'],
    ['www.example.com.', 'www.example.com'],
    ['G.WHATSAPP.NET.', 'g.whatsapp.net'],
    ['localhost', 'localhost'],
    ['a_b.example.com', 'a_b.example.com'],
    ['media-sin6-1.cdn.whatsapp.net', 'media-sin6-1.cdn.whatsapp.net'],
    ['0xg.com', '0xg.com'],
    // IDN → punycode
    ['bücher.de', 'xn--bcher-kva.de'],
    ['BÜCHER.de', 'xn--bcher-kva.de'],
    ['xn--bcher-kva.de', 'xn--bcher-kva.de'],
    ['XN--BCHER-KVA.DE', 'xn--bcher-kva.de'],
    ['ß.de', 'xn--zca.de'],
    ['exa\u0301mple.com', 'xn--exmple-qta.com'],
    // Cyrillic "а" (U+0430) in place of Latin "a"
    ['whats\u0430pp.net', 'xn--whatspp-6fg.net'],
    // Fullwidth letters and dots are mapped to ASCII by IDNA
    ['ｗｈａｔｓａｐｐ．ｎｅｔ', 'whatsapp.net'],
    ['a。b．c', 'a.b.c'],
    ['a｡b', 'a.b'],
    // Ignorable code points vanish under IDNA mapping
    ['a\u00adb.com', 'ab.com'],
  ];
  it.each(cases)('%j → %s', (raw, name) => {
    expect(normalizeHost(raw)).toEqual({ host: name });
  });

  it('the Cyrillic look-alike is not the real name', () => {
    const fake = normalizeHost('whats\u0430pp.net').host;
    expect(fake).not.toBe('whatsapp.net');
    expect(fake).toMatch(/^xn--/);
    expect(normalizeHost('whatsapp.net').host).toBe('whatsapp.net');
  });

  it('names carry no family', () => {
    expect(normalizeHost('example.com').family).toBeUndefined();
  });

  const bad: [string, RegExp?][] = [
    ['', /empty/],
    ['.'],
    ['..'],
    ['.a'],
    ['a..b'],
    ['www.example.com..'],
    ['a%2eb', /character/],
    ['exa%6dple.com', /character/],
    ['127.0.0.1%20', /character/],
    ['a@b', /character/],
    ['user@example.com', /character/],
    ['a#b', /character/],
    ['a\\b', /character/],
    ['a/b', /character/],
    ['a b', /character/],
    ['a\tb', /character/],
    ['a\nb', /character/],
    ['a\rb', /character/],
    ['a\u0000b', /character/],
    ['\u0000', /character/],
    ['a\u007fb', /character/],
    ['*.example.com', /character/],
    ['a,b', /character/],
    ['a?b', /character/],
    ['a<b', /character/],
    ['a|b', /character/],
    ['a^b', /character/],
    ['"a"', /character/],
    ['a\u00a0b.com'],
    ['a\u3000b.com'],
    ['a／b.com'], // fullwidth solidus maps to "/"
    ['a＠b.com'], // fullwidth commercial at
    ['a％2eb.com'], // fullwidth percent
    ['xn--zz.com'], // bad punycode
    ['a.b.c.1'], // a numeric last label is an IPv4 address, and this one is not valid
    ['x'.repeat(1100)],
  ];
  it.each(bad)('rejects %j', (raw, message) => {
    expectBadRequest(() => normalizeHost(raw), message);
  });
});

describe('normalizeHost: the fast path for canonical names', () => {
  /** The outcome of one normaliser: its result, or the message of its bad_request. */
  const outcome = (f: () => unknown) => {
    try {
      return { ok: f() };
    } catch (err) {
      if (!(err instanceof EgressError)) throw err;
      return { bad: err.message };
    }
  };
  it('gives what the full parse gives, for names near the canonical form', () => {
    // Letters that make IPv4 forms (x, digits), punycode prefixes, hyphens,
    // underscores, dots, upper case: strings on both sides of the fast path.
    const pieces = ['a', 'b', 'x', 'n', 'z', '0', '1', '9', '0x', 'xn--', '-', '_', '.', '..', 'A', 'X', 'f', 'ü', '%', 'bcher-kva', 'é'];
    let seed = 12345;
    const next = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let i = 0; i < 20_000; i++) {
      let raw = '';
      const len = 1 + next(12);
      for (let j = 0; j < len; j++) raw += pieces[next(pieces.length)];
      expect(outcome(() => normalizeHost(raw)), raw).toEqual(outcome(() => parseHost(raw)));
    }
    for (const raw of ['xn--zz.com', 'a.xn--zz', 'xn--bcher-kva.de', 'a.b.c.1', 'a.0x1', 'a.0x', 'a.0xg', '1.2.b', '0x7f.1', 'a-.b', '-a.b_', label(63), `${label(63)}.${label(63)}.${label(63)}.${label(61)}`, `${label(63)}.${label(63)}.${label(63)}.${label(62)}`, label(64)]) {
      expect(outcome(() => normalizeHost(raw)), raw).toEqual(outcome(() => parseHost(raw)));
    }
  });
});

describe('normalizeHost: length limits', () => {
  const n253 = [label(63), label(63), label(63), label(61)].join('.');
  const n254 = `${n253}a`;
  const l63 = `${label(63)}.example.com`;
  const l64 = `${label(64)}.example.com`;

  it('the limits are as described', () => {
    expect(n253.length).toBe(253);
    expect(n254.length).toBe(254);
  });
  it('accepts a 253-byte name', () => {
    expect(normalizeHost(n253)).toEqual({ host: n253 });
  });
  it('accepts a 253-byte name with its trailing dot (254 characters)', () => {
    expect(normalizeHost(`${n253}.`)).toEqual({ host: n253 });
  });
  it('accepts a 253-byte name written in upper case', () => {
    expect(normalizeHost(n253.toUpperCase())).toEqual({ host: n253 });
  });
  it('rejects a 254-byte name', () => {
    expectBadRequest(() => normalizeHost(n254), /253/);
    expectBadRequest(() => normalizeHost(`${n254}.`), /253/);
  });
  it('accepts a 63-byte label', () => {
    expect(normalizeHost(l63)).toEqual({ host: l63 });
    expect(normalizeHost(label(63))).toEqual({ host: label(63) });
  });
  it('rejects a 64-byte label', () => {
    expectBadRequest(() => normalizeHost(l64), /63/);
    expectBadRequest(() => normalizeHost(`a.${label(64)}`), /63/);
  });
  it('measures IDN names in their ASCII (punycode) form', () => {
    // 60 × "ü" is 60 characters but a much longer punycode label.
    expectBadRequest(() => normalizeHost(`${'ü'.repeat(60)}.de`));
    // Short enough in Unicode and in punycode.
    expect(normalizeHost(`${'ü'.repeat(5)}.de`).host).toMatch(/^xn--[a-z0-9-]+\.de$/);
  });
});

describe('parsePort', () => {
  it.each([
    ['1', 1],
    ['80', 80],
    ['443', 443],
    ['65535', 65535],
    ['00443', 443],
  ])('%j → %d', (text, port) => {
    expect(parsePort(text)).toBe(port);
  });
  it.each(['', '0', '00000', '65536', '99999', '123456', '+1', '-1', '1a', 'a', ' 443', '443 ', '4 43', '1e3', '0x50', '٤٤٣', '1.0'])(
    'rejects %j',
    (text) => {
      expectBadRequest(() => parsePort(text));
    },
  );
});

describe('parseHostPort', () => {
  const ok: [string, { host: string; port: number; family?: 4 | 6 }][] = [
    ['example.com:443', { host: 'example.com', port: 443 }],
    ['Example.COM:5222', { host: 'example.com', port: 5222 }],
    ['example.com.:443', { host: 'example.com', port: 443 }],
    ['example.com:1', { host: 'example.com', port: 1 }],
    ['example.com:65535', { host: 'example.com', port: 65535 }],
    ['127.0.0.1:443', { host: '127.0.0.1', port: 443, family: 4 }],
    ['2130706433:443', { host: '127.0.0.1', port: 443, family: 4 }],
    ['0x7f000001:443', { host: '127.0.0.1', port: 443, family: 4 }],
    ['0177.0.0.1:443', { host: '127.0.0.1', port: 443, family: 4 }],
    ['127.1:443', { host: '127.0.0.1', port: 443, family: 4 }],
    ['127.0.0.1.:443', { host: '127.0.0.1', port: 443, family: 4 }],
    ['[::1]:443', { host: '::1', port: 443, family: 6 }],
    ['[::ffff:127.0.0.1]:80', { host: '::ffff:7f00:1', port: 80, family: 6 }],
    ['[0:0:0:0:0:ffff:127.0.0.1]:80', { host: '::ffff:7f00:1', port: 80, family: 6 }],
    ['bücher.de:443', { host: 'xn--bcher-kva.de', port: 443 }],
  ];
  it.each(ok)('%j', (authority, target) => {
    const got = parseHostPort(authority);
    expect(got).toEqual(target);
  });

  it('uses the default port when none is given', () => {
    expect(parseHostPort('example.com', 80)).toEqual({ host: 'example.com', port: 80 });
    expect(parseHostPort('[::1]', 80)).toEqual({ host: '::1', port: 80, family: 6 });
    // An explicit port wins over the default.
    expect(parseHostPort('example.com:8080', 80)).toEqual({ host: 'example.com', port: 8080 });
  });

  const bad: [string, RegExp?][] = [
    ['example.com', /missing port/],
    ['[::1]', /missing port/],
    ['example.com:', /port/],
    ['example.com:0', /port/],
    ['example.com:00', /port/],
    ['example.com:65536', /port/],
    ['example.com:123456', /port/],
    ['example.com:+1', /port/],
    ['example.com:-1', /port/],
    ['example.com:1a', /port/],
    ['example.com:http', /port/],
    ['example.com: 443', /port/],
    ['example.com:443 ', /port/],
    [':443', /empty/],
    ['[::1]443'],
    ['[::1]:'],
    ['[::1]:443:'],
    ['[::1:443'],
    ['::1:443', /brackets/],
    ['1::1', /brackets/],
    ['2001:db8::1:443', /brackets/],
    ['example.com:443:1'],
    ['user@example.com:443', /userinfo/],
    ['user:pw@example.com:443'],
    ['@example.com:443'],
    ['example.com#x:443'],
    ['exa%6dple.com:443'],
    ['exa\\mple.com:443'],
    ['exa mple.com:443'],
    ['exa\u0000mple.com:443'],
    ['[fe80::1%eth0]:443'],
    ['[fe80::1%25eth0]:443'],
    ['4294967296:443'],
  ];
  it.each(bad)('rejects %j', (authority, message) => {
    expectBadRequest(() => parseHostPort(authority), message);
  });

  it('rejects a bad host even when a default port is given', () => {
    expectBadRequest(() => parseHostPort('a b', 80));
    expectBadRequest(() => parseHostPort('::1', 80), /brackets/);
  });
});

describe('parseAbsoluteUrl', () => {
  const ok: [string, { host: string; port: number; family?: 4 | 6 }, string, string][] = [
    ['http://example.com/', { host: 'example.com', port: 80 }, 'example.com', '/'],
    ['http://example.com', { host: 'example.com', port: 80 }, 'example.com', '/'],
    ['http://example.com:80/', { host: 'example.com', port: 80 }, 'example.com', '/'],
    ['http://example.com:8080/a/b', { host: 'example.com', port: 8080 }, 'example.com:8080', '/a/b'],
    ['http://example.com/a/b?x=1&y=2', { host: 'example.com', port: 80 }, 'example.com', '/a/b?x=1&y=2'],
    ['http://example.com?q=1', { host: 'example.com', port: 80 }, 'example.com', '/?q=1'],
    ['http://example.com:81?q=1', { host: 'example.com', port: 81 }, 'example.com:81', '/?q=1'],
    ['http://example.com/p#frag', { host: 'example.com', port: 80 }, 'example.com', '/p'],
    ['http://example.com/p?q=1#frag', { host: 'example.com', port: 80 }, 'example.com', '/p?q=1'],
    ['http://example.com?q=1#frag', { host: 'example.com', port: 80 }, 'example.com', '/?q=1'],
    ['http://example.com#frag', { host: 'example.com', port: 80 }, 'example.com', '/'],
    ['http://example.com/#', { host: 'example.com', port: 80 }, 'example.com', '/'],
    ['HTTP://Example.COM/Path?Q=1#frag', { host: 'example.com', port: 80 }, 'example.com', '/Path?Q=1'],
    ['hTtP://example.com', { host: 'example.com', port: 80 }, 'example.com', '/'],
    ['http://example.com./', { host: 'example.com', port: 80 }, 'example.com', '/'],
    ['http://example.com/@x', { host: 'example.com', port: 80 }, 'example.com', '/@x'],
    ['http://[::1]:8080/x', { host: '::1', port: 8080, family: 6 }, '[::1]:8080', '/x'],
    ['http://[::1]/', { host: '::1', port: 80, family: 6 }, '[::1]', '/'],
    ['http://[::ffff:127.0.0.1]/', { host: '::ffff:7f00:1', port: 80, family: 6 }, '[::ffff:7f00:1]', '/'],
    ['http://2130706433/', { host: '127.0.0.1', port: 80, family: 4 }, '127.0.0.1', '/'],
    ['http://0x7f.1:8080/', { host: '127.0.0.1', port: 8080, family: 4 }, '127.0.0.1:8080', '/'],
    ['http://bücher.de/', { host: 'xn--bcher-kva.de', port: 80 }, 'xn--bcher-kva.de', '/'],
  ];
  it.each(ok)('%s', (url, target, authority, path) => {
    expect(parseAbsoluteUrl(url)).toEqual({ target, authority, path });
  });

  const bad: [string, RegExp?][] = [
    ['https://example.com/', /http:\/\//],
    ['HTTPS://example.com/', /http:\/\//],
    ['ftp://example.com/', /http:\/\//],
    ['ws://example.com/', /http:\/\//],
    ['/path', /http:\/\//],
    ['//example.com/', /http:\/\//],
    ['http:/example.com/', /http:\/\//],
    ['http:example.com', /http:\/\//],
    ['example.com:80', /http:\/\//],
    ['http:///', /empty/],
    ['http://', /empty/],
    ['http://user@example.com/', /userinfo/],
    ['http://user:pw@example.com/', /userinfo/],
    ['http://a@b@example.com/', /userinfo/],
    ['http://example.com:0/', /port/],
    ['http://example.com:65536/', /port/],
    ['http://example.com:/', /port/],
    ['http://example.com:+80/', /port/],
    ['http://example.com:8o/', /port/],
    ['http://::1/', /brackets/],
    ['http://[::1/'],
    ['http://[fe80::1%25eth0]/'],
    ['http://exa%6dple.com/', /character/],
    ['http://exa\\mple.com/'],
    ['http://exa mple.com/'],
    ['http://exa\u0000mple.com/'],
    ['http://4294967296/'],
  ];
  it.each(bad)('rejects %j', (url, message) => {
    expectBadRequest(() => parseAbsoluteUrl(url), message);
  });
});

describe('formatAuthority', () => {
  it('brackets IPv6 and omits the port on request', () => {
    expect(formatAuthority({ host: '::1', port: 443, family: 6 })).toBe('[::1]:443');
    expect(formatAuthority({ host: '::1', port: 80, family: 6 }, true)).toBe('[::1]');
    expect(formatAuthority({ host: '127.0.0.1', port: 443, family: 4 })).toBe('127.0.0.1:443');
    expect(formatAuthority({ host: 'example.com', port: 5222 })).toBe('example.com:5222');
    expect(formatAuthority({ host: 'example.com', port: 80 }, true)).toBe('example.com');
  });
});
