import { strToU8, zipSync } from 'fflate';
import { describe, expect, it } from 'vitest';
import { parseList } from '../../src/ranges/parse.js';
import { parseSelector, select } from '../../src/ranges/selector.js';
import { parseDnsSource, parseUrlSource } from '../../src/ranges/source.js';

const texts = (body: string | Buffer, selector?: string) =>
  parseList(Buffer.from(body), selector ? parseSelector(selector) : null, 'list').map((c) => c.text);

describe('JSON selector', () => {
  const doc = {
    prefixes: [
      { ip_prefix: '192.0.2.0/24', service: 'A' },
      { ip_prefix: '198.51.100.0/24', service: 'B' },
    ],
    ipv6_prefixes: [{ ipv6_prefix: '2001:db8::/32' }],
    nested: { 'odd key': ['203.0.113.0/24'] },
  };
  it.each([
    ['$.prefixes[*].ip_prefix', ['192.0.2.0/24', '198.51.100.0/24']],
    ['$.prefixes[1].ip_prefix', ['198.51.100.0/24']],
    ['$.prefixes[?service=A].ip_prefix', ['192.0.2.0/24']],
    ['$.prefixes[*].ip_prefix|$.ipv6_prefixes[*].ipv6_prefix', ['192.0.2.0/24', '198.51.100.0/24', '2001:db8::/32']],
    ["$.nested['odd key']", ['203.0.113.0/24']],
    ['$.nested.*', ['203.0.113.0/24']],
    ['$.missing[*].x', []],
  ])('%s', (sel, expected) => {
    expect(select(doc, parseSelector(sel))).toEqual(expected);
  });

  it('refuses what it cannot read, saying where', () => {
    expect(() => parseSelector('prefixes')).toThrow('must start with "$"');
    expect(() => parseSelector('$.a[')).toThrow('cannot read "["');
    expect(() => select(doc, parseSelector('$.prefixes[*]'))).toThrow('reached a value that is not a string: {"ip_prefix"');
  });
});

describe('downloaded lists', () => {
  it('reads text, zip, a JSON array, and JSON through a selector', () => {
    expect(texts('# c\n192.0.2.0/24\r\n\n2001:db8::1\n')).toEqual(['192.0.2.0/24', '2001:db8::1']);
    expect(texts(Buffer.from(zipSync({ 'a.txt': strToU8('192.0.2.0/24\n') })))).toEqual(['192.0.2.0/24']);
    expect(texts('["192.0.2.0/24"]')).toEqual(['192.0.2.0/24']);
    expect(texts('{"p":[{"c":"192.0.2.0/24"}]}', '$.p[*].c')).toEqual(['192.0.2.0/24']);
  });

  it.each([
    ['', 'the list is empty'],
    ['# only comments\n', 'the list is empty'],
    ['192.0.2.0/24\n0.0.0.0/0\n', '0.0.0.0/0 covers every address'],
    ['::/0\n', 'covers every address'],
    ['192.0.2.1/24\n', 'host bits are set'],
    ['{"a":1}', 'needs a selector'],
    ['{"a":', 'not valid JSON'],
  ])('refuses %j', (body, message) => {
    expect(() => texts(body)).toThrow(message);
  });

  it('refuses a selected value that is not a CIDR', () => {
    expect(() => texts('{"p":["192.0.2.0/24","nope"]}', '$.p')).toThrow('value 2: "nope" is not an IP address or CIDR');
  });
});

describe('entries', () => {
  it('url: needs https and a readable selector', () => {
    expect(parseUrlSource('https://example.com/r.json#$.a[*]')).toMatchObject({ url: 'https://example.com/r.json', selector: { text: '$.a[*]' } });
    expect(() => parseUrlSource('http://example.com/')).toThrow('https:// only');
    expect(() => parseUrlSource('https://u:p@example.com/')).toThrow('credentials');
    expect(() => parseUrlSource('nope')).toThrow('not a URL');
  });

  it('dns: takes a hostname, normalised', () => {
    expect(parseDnsSource('Chat.Example.COM.')).toMatchObject({ host: 'chat.example.com' });
    expect(() => parseDnsSource('192.0.2.1')).toThrow('no dns: prefix');
    expect(() => parseDnsSource('bad name')).toThrow('dns:bad name');
  });
});
