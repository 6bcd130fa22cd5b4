import { describe, it, expect } from 'vitest';
import { classify, classifyV4, type SpecialRange } from '../../src/net/classify.js';
import { canonicalIp, v4ToNumber } from '../../src/net/ip.js';

/** Classify an address as written, after canonicalising it as the proxy does. */
function cls(text: string) {
  const c = canonicalIp(text);
  if (!c) throw new Error(`test bug: ${text} is not an IP address`);
  return classify(c.ip);
}

type Row = {
  cidr: string;
  range: SpecialRange;
  first: string;
  last: string;
  /** Neighbours just outside the range, with their own class (null = public). */
  outside: [string, SpecialRange | null][];
  inside?: string[];
};

// Every special IPv4 range in the spec, with its first and last address and
// the addresses just outside it.
const V4: Row[] = [
  { cidr: '0.0.0.0/8', range: 'unspecified', first: '0.0.0.0', last: '0.255.255.255', outside: [['1.0.0.0', null]], inside: ['0.0.0.1', '0.1.2.3'] },
  { cidr: '10.0.0.0/8', range: 'private', first: '10.0.0.0', last: '10.255.255.255', outside: [['9.255.255.255', null], ['11.0.0.0', null]], inside: ['10.1.2.3'] },
  { cidr: '100.64.0.0/10', range: 'shared_cgnat', first: '100.64.0.0', last: '100.127.255.255', outside: [['100.63.255.255', null], ['100.128.0.0', null]], inside: ['100.100.100.100'] },
  { cidr: '127.0.0.0/8', range: 'loopback', first: '127.0.0.0', last: '127.255.255.255', outside: [['126.255.255.255', null], ['128.0.0.0', null]], inside: ['127.0.0.1', '127.0.1.1', '127.1.2.3'] },
  { cidr: '169.254.0.0/16', range: 'link_local', first: '169.254.0.0', last: '169.254.255.255', outside: [['169.253.255.255', null], ['169.255.0.0', null]], inside: ['169.254.169.254'] },
  { cidr: '172.16.0.0/12', range: 'private', first: '172.16.0.0', last: '172.31.255.255', outside: [['172.15.255.255', null], ['172.32.0.0', null]], inside: ['172.20.1.1'] },
  { cidr: '192.0.0.0/24', range: 'ietf_protocol', first: '192.0.0.0', last: '192.0.0.255', outside: [['191.255.255.255', null], ['192.0.1.0', null]], inside: ['192.0.0.8', '192.0.0.170'] },
  { cidr: '192.0.2.0/24', range: 'documentation', first: '192.0.2.0', last: '192.0.2.255', outside: [['192.0.1.255', null], ['192.0.3.0', null]], inside: ['192.0.2.1'] },
  { cidr: '192.168.0.0/16', range: 'private', first: '192.168.0.0', last: '192.168.255.255', outside: [['192.167.255.255', null], ['192.169.0.0', null]], inside: ['192.168.1.1'] },
  { cidr: '198.18.0.0/15', range: 'benchmarking', first: '198.18.0.0', last: '198.19.255.255', outside: [['198.17.255.255', null], ['198.20.0.0', null]], inside: ['198.19.0.1'] },
  { cidr: '198.51.100.0/24', range: 'documentation', first: '198.51.100.0', last: '198.51.100.255', outside: [['198.51.99.255', null], ['198.51.101.0', null]] },
  { cidr: '203.0.113.0/24', range: 'documentation', first: '203.0.113.0', last: '203.0.113.255', outside: [['203.0.112.255', null], ['203.0.114.0', null]] },
  { cidr: '224.0.0.0/4', range: 'multicast', first: '224.0.0.0', last: '239.255.255.255', outside: [['223.255.255.255', null], ['240.0.0.0', 'reserved']], inside: ['224.0.0.251', '239.1.2.3'] },
  { cidr: '240.0.0.0/4', range: 'reserved', first: '240.0.0.0', last: '255.255.255.255', outside: [['239.255.255.255', 'multicast']], inside: ['255.255.255.254', '250.1.2.3'] },
];

const V6: Row[] = [
  { cidr: '::/128', range: 'unspecified', first: '::', last: '::', outside: [] },
  { cidr: '::1/128', range: 'loopback', first: '::1', last: '::1', outside: [] },
  { cidr: 'fc00::/7', range: 'unique_local', first: 'fc00::', last: 'fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', outside: [['fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'], ['fe00::', 'reserved']], inside: ['fd12:3456:789a::1'] },
  { cidr: 'fe80::/10', range: 'link_local', first: 'fe80::', last: 'febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff', outside: [['fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'], ['fec0::', 'site_local']], inside: ['fe80::1'] },
  { cidr: 'ff00::/8', range: 'multicast', first: 'ff00::', last: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', outside: [['feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'site_local']], inside: ['ff02::1', 'ff05::1:3'] },
  { cidr: '2001:db8::/32', range: 'documentation', first: '2001:db8::', last: '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', outside: [['2001:db7:ffff:ffff:ffff:ffff:ffff:ffff', null], ['2001:db9::', null]], inside: ['2001:db8::1'] },
  { cidr: '100::/64', range: 'discard_only', first: '100::', last: '100::ffff:ffff:ffff:ffff', outside: [['ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'], ['100:0:0:1::', 'dummy']], inside: ['100::1'] },
];

describe('classify: special IPv4 ranges', () => {
  for (const row of V4) {
    describe(row.cidr, () => {
      it.each([row.first, row.last, ...(row.inside ?? [])])(`%s is ${row.range}`, (ip) => {
        expect(cls(ip)).toEqual({ range: row.range, effective: ip, dial: ip });
        expect(classifyV4(v4ToNumber(ip)!)).toBe(row.range);
      });
      if (row.outside.length) {
        it.each(row.outside)('%s (outside) is %s', (ip, range) => {
          expect(cls(ip)).toEqual({ range, effective: ip, dial: ip });
        });
      }
    });
  }

  it('255.255.255.255 (broadcast) is denied as reserved', () => {
    expect(cls('255.255.255.255').range).toBe('reserved');
  });
});

describe('classify: special IPv6 ranges', () => {
  for (const row of V6) {
    describe(row.cidr, () => {
      it.each([row.first, row.last, ...(row.inside ?? [])])(`%s is ${row.range}`, (ip) => {
        const canonical = canonicalIp(ip)!.ip;
        expect(cls(ip)).toEqual({ range: row.range, effective: canonical, dial: canonical });
      });
      if (row.outside.length) {
        it.each(row.outside)('%s (outside) is %s', (ip, range) => {
          const canonical = canonicalIp(ip)!.ip;
          expect(cls(ip)).toEqual({ range, effective: canonical, dial: canonical });
        });
      }
    });
  }

  it('classifies the uncompressed spellings the same way', () => {
    expect(cls('0:0:0:0:0:0:0:0').range).toBe('unspecified');
    expect(cls('0000:0000:0000:0000:0000:0000:0000:0001').range).toBe('loopback');
    expect(cls('FE80::1').range).toBe('link_local');
    expect(cls('2001:0DB8::1').range).toBe('documentation');
  });
});

describe('classify: public addresses', () => {
  it.each(['157.240.1.1', '157.240.0.0', '31.13.64.1', '8.8.8.8', '1.1.1.1', '1.0.0.0', '223.255.255.255', '100.128.0.0', '172.32.0.0', '192.169.0.0'])(
    '%s is public',
    (ip) => {
      expect(cls(ip)).toEqual({ range: null, effective: ip, dial: ip });
    },
  );
  it.each(['2a03:2880::1', '2a03:2880:f12f:83:face:b00c:0:25de', '2606:4700::1111', '2001:4860:4860::8888', '2000::', '3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'])(
    '%s is public',
    (ip) => {
      expect(cls(ip)).toEqual({ range: null, effective: ip, dial: ip });
    },
  );
});

describe('classify: IPv6 addresses that embed an IPv4 address', () => {
  // [written form, range, effective (the IPv4 address), dial]
  const rows: [string, SpecialRange | null, string, string][] = [
    // IPv4-mapped ::ffff:0:0/96: judged and dialled as IPv4
    ['::ffff:127.0.0.1', 'loopback', '127.0.0.1', '127.0.0.1'],
    ['::ffff:7f00:1', 'loopback', '127.0.0.1', '127.0.0.1'],
    ['0:0:0:0:0:ffff:127.0.0.1', 'loopback', '127.0.0.1', '127.0.0.1'],
    ['::ffff:10.0.0.1', 'private', '10.0.0.1', '10.0.0.1'],
    ['::ffff:192.168.1.1', 'private', '192.168.1.1', '192.168.1.1'],
    ['::ffff:169.254.169.254', 'link_local', '169.254.169.254', '169.254.169.254'],
    ['::ffff:100.64.0.1', 'shared_cgnat', '100.64.0.1', '100.64.0.1'],
    ['::ffff:224.0.0.1', 'multicast', '224.0.0.1', '224.0.0.1'],
    ['::ffff:0.0.0.0', 'unspecified', '0.0.0.0', '0.0.0.0'],
    ['::ffff:255.255.255.255', 'reserved', '255.255.255.255', '255.255.255.255'],
    ['::ffff:157.240.1.1', null, '157.240.1.1', '157.240.1.1'],
    ['::ffff:9df0:101', null, '157.240.1.1', '157.240.1.1'],
    // IPv4-translated ::ffff:0:0:0/96 (SIIT): dialled as IPv4
    ['::ffff:0:7f00:1', 'loopback', '127.0.0.1', '127.0.0.1'],
    ['::ffff:0:127.0.0.1', 'loopback', '127.0.0.1', '127.0.0.1'],
    ['::ffff:0:a00:1', 'private', '10.0.0.1', '10.0.0.1'],
    ['::ffff:0:9df0:101', null, '157.240.1.1', '157.240.1.1'],
    // IPv4-compatible ::/96 (except :: and ::1, deprecated): named by the embedded address's range
    ['::7f00:1', 'loopback', '127.0.0.1', '127.0.0.1'],
    ['::127.0.0.1', 'loopback', '127.0.0.1', '127.0.0.1'],
    ['0:0:0:0:0:0:127.0.0.1', 'loopback', '127.0.0.1', '127.0.0.1'],
    ['::a00:1', 'private', '10.0.0.1', '10.0.0.1'],
    ['::2', 'unspecified', '0.0.0.2', '0.0.0.2'],
    ['::0.0.0.2', 'unspecified', '0.0.0.2', '0.0.0.2'],
    ['::ffff', 'unspecified', '0.0.255.255', '0.0.255.255'],
    // ... and denied as deprecated when the embedded address is public
    ['::9df0:101', 'deprecated', '157.240.1.1', '157.240.1.1'],
    ['::ffff:ffff', 'reserved', '255.255.255.255', '255.255.255.255'],
    // NAT64 64:ff9b::/96: judged as the IPv4 address, dialled as IPv6 (the network translates)
    ['64:ff9b::7f00:1', 'loopback', '127.0.0.1', '64:ff9b::7f00:1'],
    ['64:ff9b::127.0.0.1', 'loopback', '127.0.0.1', '64:ff9b::7f00:1'],
    ['64:ff9b::a00:1', 'private', '10.0.0.1', '64:ff9b::a00:1'],
    ['64:ff9b::', 'unspecified', '0.0.0.0', '64:ff9b::'],
    ['64:ff9b::9df0:101', null, '157.240.1.1', '64:ff9b::9df0:101'],
    ['64:ff9b::157.240.1.1', null, '157.240.1.1', '64:ff9b::9df0:101'],
  ];
  it.each(rows)('%s → %s as %s, dial %s', (written, range, effective, dial) => {
    expect(cls(written)).toEqual({ range, effective, dial });
  });

  // Just outside the embedding prefixes: not embedded IPv4 addresses (and,
  // outside 2000::/3, reserved).
  it.each([
    '::1:0:0', // ::/96 ends at ::ffff:ffff
    '::fffe:7f00:1', // not ::ffff:0:0/96
    '::1:ffff:7f00:1',
    '::ffff:1:7f00:1', // not ::ffff:0:0:0/96
    '::1:0:0:0',
    '64:ff9b::1:0:0', // beyond 64:ff9b::/96
    '64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff',
  ])('%s is not an embedded IPv4 address', (ip) => {
    const canonical = canonicalIp(ip)!.ip;
    expect(cls(ip)).toEqual({ range: 'reserved', effective: canonical, dial: canonical });
  });

  it(':: and ::1 stay IPv6 (not 0.0.0.0 and 0.0.0.1)', () => {
    expect(cls('::')).toEqual({ range: 'unspecified', effective: '::', dial: '::' });
    expect(cls('::1')).toEqual({ range: 'loopback', effective: '::1', dial: '::1' });
  });

  it('the embedded address is judged by the IPv4 table for every special IPv4 range', () => {
    for (const row of V4) {
      for (const ip of [row.first, row.last]) {
        const n = v4ToNumber(ip)!;
        const hex = `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
        for (const v6 of [`::ffff:${hex}`, `::ffff:0:${hex}`, `64:ff9b::${hex}`]) {
          const c = cls(v6);
          expect(c.range, v6).toBe(row.range);
          expect(c.effective, v6).toBe(ip);
        }
      }
    }
  });
});

describe('classify: input', () => {
  it.each(['example.com', '', '1.2.3', '::ffff:1.2.3', '0177.0.0.1', 'fe80::1%eth0', '[::1]'])('throws on %j', (s) => {
    expect(() => classify(s)).toThrow(TypeError);
  });
});
