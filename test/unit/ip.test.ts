import fc from 'fast-check';
import { describe, it, expect } from 'vitest';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadRangeFile } from '../../src/config/ranges.js';
import { bigIntToV6, canonicalIp, CidrSet, numberToV4, parseCidr, v4ToNumber, v6ToBigInt } from '../../src/net/ip.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
const CIDR_FIXTURE = join(ROOT, 'test/fixtures/whatsapp_cidr_ipv4.txt');

describe('v4ToNumber / numberToV4', () => {
  it.each([
    ['0.0.0.0', 0],
    ['0.0.0.1', 1],
    ['1.2.3.4', 0x01020304],
    ['127.0.0.1', 0x7f000001],
    ['128.0.0.0', 0x80000000],
    ['157.240.1.1', 0x9df00101],
    ['255.255.255.255', 0xffffffff],
  ])('%s ↔ %d', (text, n) => {
    expect(v4ToNumber(text)).toBe(n);
    expect(numberToV4(n)).toBe(text);
  });

  it.each(['', '1.2.3', '1.2.3.4.5', '01.2.3.4', '1.2.3.04', '0x1.2.3.4', '256.0.0.0', '1.2.3.-1', ' 1.2.3.4', '1.2.3.4 ', '2130706433', '1.2.3.4.', '::1', '1..2.3'])(
    'rejects non-canonical %j',
    (text) => {
      expect(v4ToNumber(text)).toBeNull();
    },
  );

  it('agrees with the dotted-quad grammar on any string of digits and dots', () => {
    // The grammar it implements: four octets 0-255, no leading zeros.
    const octet = '(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
    const grammar = new RegExp(`^${octet}\\.${octet}\\.${octet}\\.${octet}$`);
    const reference = (s: string) => {
      const m = grammar.exec(s);
      return m ? ((+m[1]! << 24) >>> 0) + (+m[2]! << 16) + (+m[3]! << 8) + +m[4]! : null;
    };
    const text = fc.oneof(
      fc.ipV4().map((ip) => ip),
      fc.string({ unit: fc.constantFrom('0', '1', '2', '5', '9', '.', '.', 'a', ' ', '-'), maxLength: 18 }),
      fc.array(fc.integer({ min: 0, max: 999 }), { minLength: 1, maxLength: 5 }).map((xs) => xs.join('.')),
    );
    fc.assert(fc.property(text, (s) => v4ToNumber(s) === reference(s)), { numRuns: 20_000 });
  });
});

describe('v6ToBigInt / bigIntToV6 / canonicalIp', () => {
  it.each([
    ['::', 0n, '::'],
    ['::1', 1n, '::1'],
    ['::ffff:127.0.0.1', 0xffff7f000001n, '::ffff:7f00:1'],
    ['0:0:0:0:0:ffff:127.0.0.1', 0xffff7f000001n, '::ffff:7f00:1'],
    // IPv4-compatible (RFC 4291 2.2.3): the dotted quad is the low 32 bits, not a mapped address
    ['::127.0.0.1', 0x7f000001n, '::7f00:1'],
    ['::0.0.0.2', 2n, '::2'],
    ['::ffff:0:127.0.0.1', 0xffff00007f000001n, '::ffff:0:7f00:1'],
    ['64:ff9b::157.240.1.1', (0x64ff9bn << 96n) | 0x9df00101n, '64:ff9b::9df0:101'],
    ['2001:DB8::1', (0x20010db8n << 96n) | 1n, '2001:db8::1'],
    ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', (1n << 128n) - 1n, 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
    ['1:0:0:2:0:0:0:3', null, '1:0:0:2::3'],
    ['1:0:0:2:0:0:3:4', null, '1::2:0:0:3:4'],
    ['1:0:2:3:4:5:6:7', null, '1:0:2:3:4:5:6:7'],
  ] as [string, bigint | null, string][])('%s', (text, n, canonical) => {
    const v = v6ToBigInt(text);
    expect(v).not.toBeNull();
    if (n !== null) expect(v).toBe(n);
    expect(bigIntToV6(v!)).toBe(canonical);
    expect(canonicalIp(text)).toEqual({ ip: canonical, family: 6 });
  });

  it.each([
    'fe80::1%eth0',
    'fe80::1%1',
    '1::2::3',
    '1:2:3:4:5:6:7:8:9',
    '::00001',
    '::ffff:1.2.3',
    '::ffff:01.2.3.4',
    '::ffff:0x7f.0.0.1',
    '::ffff:256.0.0.1',
    '1:2:3:4:5:6:7:1.2.3.4',
    '1.2.3.4::',
    '::1.2.3.4:5',
    ':::1',
    '[::1]',
    'g::1',
    '',
  ])('rejects %j', (text) => {
    expect(v6ToBigInt(text)).toBeNull();
    expect(canonicalIp(text)).toBeNull();
  });

  it('canonicalIp: IPv4 is strict dotted quad only', () => {
    expect(canonicalIp('157.240.1.1')).toEqual({ ip: '157.240.1.1', family: 4 });
    expect(canonicalIp('0177.0.0.1')).toBeNull();
    expect(canonicalIp('127.1')).toBeNull();
    expect(canonicalIp('2130706433')).toBeNull();
    expect(canonicalIp('example.com')).toBeNull();
  });
});

describe('parseCidr', () => {
  it.each([
    ['10.0.0.0/8', 4, 0x0a000000n, 0x0affffffn],
    ['0.0.0.0/0', 4, 0n, 0xffffffffn],
    ['157.240.0.0/16', 4, 0x9df00000n, 0x9df0ffffn],
    ['31.13.64.60/31', 4, 0x1f0d403cn, 0x1f0d403dn],
    ['1.2.3.4/32', 4, 0x01020304n, 0x01020304n],
    ['1.2.3.4', 4, 0x01020304n, 0x01020304n],
    ['  1.2.3.0/24  ', 4, 0x01020300n, 0x010203ffn],
    ['::/0', 6, 0n, (1n << 128n) - 1n],
    ['::1', 6, 1n, 1n],
    ['::1/128', 6, 1n, 1n],
    ['2001:db8::/32', 6, 0x20010db8n << 96n, (0x20010db8n << 96n) | ((1n << 96n) - 1n)],
    ['2a03:2880::/29', 6, 0x2a032880n << 96n, (0x2a032887n << 96n) | ((1n << 96n) - 1n)],
    ['2a03:2880::1', 6, (0x2a032880n << 96n) | 1n, (0x2a032880n << 96n) | 1n],
    ['::ffff:10.0.0.0/104', 6, 0xffff0a000000n, 0xffff0affffffn],
  ] as [string, 4 | 6, bigint, bigint][])('%j', (text, family, start, end) => {
    const c = parseCidr(text);
    expect(c.family).toBe(family);
    expect(c.start).toBe(start);
    expect(c.end).toBe(end);
    expect(c.text).toBe(text.trim());
  });

  it.each([
    ['157.240.1.1/16', '157.240.0.0/16'],
    ['10.1.2.3/8', '10.0.0.0/8'],
    ['1.2.3.4/24', '1.2.3.0/24'],
    ['1.2.3.5/31', '1.2.3.4/31'],
    ['0.0.0.1/0', '0.0.0.0/0'],
    ['2001:db8::1/32', '2001:db8::/32'],
    ['2a03:2880:f12f::/29', '2a03:2880::/29'],
    ['::1/0', '::/0'],
  ])('%s: host bits set, suggests %s', (text, suggestion) => {
    expect(() => parseCidr(text)).toThrow(/host bits are set/);
    expect(() => parseCidr(text)).toThrow(`did you mean ${suggestion}?`);
  });

  it.each([
    ['1.2.3.4/33', /prefix length must be 0-32/],
    ['1.2.3.4/-1', /prefix length/],
    ['1.2.3.4/', /prefix length/],
    ['1.2.3.4/8/8', /prefix length/],
    ['1.2.3.4/ 8', /prefix length/],
    ['1.2.3.4/1000', /prefix length/],
    ['1.2.3.4/0x8', /prefix length/],
    ['::/129', /prefix length must be 0-128/],
    ['::/1280', /prefix length/],
    ['0177.0.0.1', /not an IP address/],
    ['0177.0.0.0/8', /not an IP address/],
    ['010.0.0.0/8', /not an IP address/],
    ['127.1', /not an IP address/],
    ['2130706433', /not an IP address/],
    ['0x7f000001/32', /not an IP address/],
    ['1.2.3', /not an IP address/],
    ['256.0.0.0/8', /not an IP address/],
    ['fe80::%eth0/64', /not an IP address/],
    ['[::1]/128', /not an IP address/],
    ['example.com', /not an IP address/],
    ['/8', /not an IP address/],
    ['', /not an IP address/],
  ])('%j is rejected', (text, message) => {
    expect(() => parseCidr(text)).toThrow(message);
  });
});

describe('CidrSet', () => {
  it('an empty set holds nothing', () => {
    const s = new CidrSet([]);
    expect(s.empty).toBe(true);
    expect(s.count).toBe(0);
    expect(s.has('1.2.3.4')).toBe(false);
    expect(s.has('::1')).toBe(false);
  });

  it('IPv4 boundaries', () => {
    const s = CidrSet.parse(['10.0.0.0/8', '192.168.1.0/24', '1.2.3.4', '0.0.0.0/32', '255.255.255.255/32']);
    expect(s.empty).toBe(false);
    expect(s.count).toBe(5);
    const table: [string, boolean][] = [
      ['9.255.255.255', false],
      ['10.0.0.0', true],
      ['10.128.0.1', true],
      ['10.255.255.255', true],
      ['11.0.0.0', false],
      ['192.168.0.255', false],
      ['192.168.1.0', true],
      ['192.168.1.255', true],
      ['192.168.2.0', false],
      ['1.2.3.3', false],
      ['1.2.3.4', true],
      ['1.2.3.5', false],
      ['0.0.0.0', true],
      ['0.0.0.1', false],
      ['255.255.255.254', false],
      ['255.255.255.255', true],
    ];
    for (const [ip, expected] of table) expect(s.has(ip), ip).toBe(expected);
  });

  it('IPv4 ranges that overlap, nest or touch are merged without losing addresses', () => {
    const s = CidrSet.parse(['10.0.0.0/24', '10.0.1.0/24', '10.0.0.128/25', '10.0.0.0/16', '10.0.3.0/24', '10.2.0.0/16', '10.1.0.0/16', '20.0.0.0/8', '20.1.2.0/24']);
    expect(s.count).toBe(9);
    const table: [string, boolean][] = [
      ['9.255.255.255', false],
      ['10.0.0.0', true],
      ['10.0.255.255', true],
      ['10.1.0.0', true],
      ['10.2.255.255', true],
      ['10.3.0.0', false],
      ['19.255.255.255', false],
      ['20.0.0.0', true],
      ['20.1.2.3', true],
      ['20.255.255.255', true],
      ['21.0.0.0', false],
    ];
    for (const [ip, expected] of table) expect(s.has(ip), ip).toBe(expected);
  });

  it('the order of the ranges does not matter', () => {
    const list = ['20.0.0.0/8', '1.0.0.0/24', '10.0.0.0/8', '10.0.0.0/16', '3.3.3.3', '2001:db8::/32', '::1'];
    const a = CidrSet.parse(list);
    const b = CidrSet.parse([...list].reverse());
    for (const ip of ['1.0.0.0', '1.0.0.255', '1.0.1.0', '3.3.3.3', '3.3.3.4', '10.9.9.9', '20.0.0.1', '2001:db8::5', '::1', '::2']) {
      expect(a.has(ip), ip).toBe(b.has(ip));
    }
  });

  it('IPv6 boundaries and merging', () => {
    const s = CidrSet.parse(['2001:db8::/32', '2001:db8:1::/48', '2001:db9::/32', '2a03:2880::/29', '::1', 'fe80::/64']);
    const table: [string, boolean][] = [
      ['2001:db7:ffff:ffff:ffff:ffff:ffff:ffff', false],
      ['2001:db8::', true],
      ['2001:db8:1::1', true],
      ['2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', true],
      ['2001:db9::', true],
      ['2001:db9:ffff:ffff:ffff:ffff:ffff:ffff', true],
      ['2001:dba::', false],
      ['2a03:287f:ffff:ffff:ffff:ffff:ffff:ffff', false],
      ['2a03:2880::', true],
      ['2a03:2887:ffff:ffff:ffff:ffff:ffff:ffff', true],
      ['2a03:2888::', false],
      ['::', false],
      ['::1', true],
      ['::2', false],
      ['fe80::', true],
      ['fe80::ffff:ffff:ffff:ffff', true],
      ['fe80:0:0:1::', false],
    ];
    for (const [ip, expected] of table) expect(s.has(ip), ip).toBe(expected);
  });

  it('keeps the families apart', () => {
    const v4 = CidrSet.parse(['0.0.0.0/0']);
    expect(v4.has('8.8.8.8')).toBe(true);
    expect(v4.has('::1')).toBe(false);
    expect(v4.has('::ffff:808:808')).toBe(false); // callers pass the embedded IPv4 address, not the mapped one
    const v6 = CidrSet.parse(['::/0']);
    expect(v6.has('::1')).toBe(true);
    expect(v6.has('8.8.8.8')).toBe(false);
  });

  it('/0 ranges hold every address of their family', () => {
    const s = CidrSet.parse(['0.0.0.0/0', '::/0']);
    for (const ip of ['0.0.0.0', '255.255.255.255', '127.0.0.1', '::', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff']) expect(s.has(ip), ip).toBe(true);
  });

  it('non-canonical text is not an address in the set', () => {
    const s = CidrSet.parse(['127.0.0.0/8']);
    expect(s.has('127.1')).toBe(false);
    expect(s.has('0177.0.0.1')).toBe(false);
    expect(s.has('example.com')).toBe(false);
  });

  describe('the vendor list (test/fixtures/whatsapp_cidr_ipv4.txt)', () => {
    const cidrs = loadRangeFile(CIDR_FIXTURE);
    const set = new CidrSet(cidrs);
    /** Reference: a linear scan over the parsed ranges. */
    const inAny = (ip: string) => {
      const n = BigInt(v4ToNumber(ip)!);
      return cidrs.some((c) => c.start <= n && n <= c.end);
    };

    it('loads all 229 CIDRs, all IPv4', () => {
      expect(cidrs).toHaveLength(229);
      expect(set.count).toBe(229);
      expect(cidrs.every((c) => c.family === 4)).toBe(true);
    });

    it('holds the first and last address of every range, and agrees with a linear scan just outside', () => {
      for (const c of cidrs) {
        const first = numberToV4(Number(c.start));
        const last = numberToV4(Number(c.end));
        expect(set.has(first), c.text).toBe(true);
        expect(set.has(last), c.text).toBe(true);
        if (c.start > 0n) {
          const before = numberToV4(Number(c.start - 1n));
          expect(set.has(before), before).toBe(inAny(before));
        }
        if (c.end < 0xffffffffn) {
          const after = numberToV4(Number(c.end + 1n));
          expect(set.has(after), after).toBe(inAny(after));
        }
      }
    });

    it('agrees with a linear scan on spread-out addresses', () => {
      let inside = 0;
      for (let i = 0; i < 20_000; i++) {
        // A deterministic walk over the address space, denser around the vendor's blocks.
        const n = i < 10_000 ? (i * 429_497) >>> 0 : (0x9df00000 + (i - 10_000) * 37) >>> 0;
        const ip = numberToV4(n);
        const expected = inAny(ip);
        if (set.has(ip) !== expected) expect.fail(`${ip}: expected ${expected}`);
        if (expected) inside++;
      }
      expect(inside).toBeGreaterThan(0);
    });

    it.each([
      ['157.240.1.1', false], // the list holds single hosts, not 157.240.0.0/16
      ['157.240.1.60', true],
      ['157.240.1.61', true],
      ['157.240.1.62', false],
      ['157.240.2.53', true],
      ['31.13.64.59', false],
      ['31.13.64.60', true],
      ['31.13.64.61', true],
      ['3.33.221.48', true],
      ['3.33.221.49', false],
      ['8.8.8.8', false],
      ['127.0.0.1', false],
    ])('%s → %s', (ip, expected) => {
      expect(set.has(ip)).toBe(expected);
      expect(inAny(ip)).toBe(expected);
    });
  });
});
