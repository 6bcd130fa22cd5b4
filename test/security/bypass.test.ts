import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { decide, decisionContext, type DecisionContext } from '../../src/decide.js';
import { POLICY_REASONS, type Reason } from '../../src/errors.js';
import { classify } from '../../src/net/classify.js';
import { SelfAddresses } from '../../src/net/self.js';
import { normalizeHost, parseHostPort } from '../../src/policy/hostport.js';
import { startDns, type TestDns } from '../fixtures/dns-server.js';
import { eventually, RawClient, startGateway, startGatewayOnPorts, type AuditRecord, type TestGateway } from '../helpers.js';
import { exchange, mark, parseHead, recordsOf, socksExchange, startSinkAndOrigin, waitRecords, type Origin, type Sink, type SocksAddress } from './support.js';

/**
 * Bypass corpus. A gateway allows g.whatsapp.net (mapped to 127.0.0.1) with
 * `allow_ranges: [127.0.0.1/32]`; a sink listens on 127.0.0.2 — loopback,
 * outside allow_ranges, so denied — on the rule's port, and an HTTP origin on
 * 127.0.0.1 on the same port. Every way of writing or reaching 127.0.0.2 must
 * end in a denial (403) or a 400, with an audit record, and the sink must
 * never see a connection. Two policies run the whole corpus:
 *
 * - `names`: hosts only, so an IP literal can only be `ip_not_allowed`;
 * - `ranges`: a second rule whose ip_ranges hold 127.0.0.0/8, 6to4 and Teredo,
 *   so an IP literal gets past the rules and only the special-range check
 *   (the address normalisation and classification under test) stops it.
 */

type PolicyName = 'names' | 'ranges';
const POLICIES: PolicyName[] = ['names', 'ranges'];

let sink: Sink;
let origin: Origin;
let P: number;

beforeAll(async () => {
  ({ sink, origin, port: P } = await startSinkAndOrigin());
});
afterAll(async () => {
  await sink?.close();
  await origin?.close();
});
// Each test answers for its own connections: one bypass fails that test, not every later one.
beforeEach(() => {
  if (sink) sink.connections = 0;
});

const LOOKALIKE = 'g.whats\u0430pp.net'; // Cyrillic а (U+0430)
const FULLWIDTH_DOT = '\uff0e';

/** Forward listeners of the corpus gateways: name → `to`. */
const FORWARDS = (port: number): Record<string, string> => ({
  'fwd-literal': `127.0.0.2:${port}`,
  'fwd-decimal': `2130706434:${port}`,
  'fwd-hex': `0x7f000002:${port}`,
  'fwd-short': `127.2:${port}`,
  'fwd-mapped': `[::ffff:127.0.0.2]:${port}`,
  'fwd-evil': `g.whatsapp.net.evil.example:${port}`,
  'fwd-lookalike': `${LOOKALIKE.replaceAll('.', FULLWIDTH_DOT)}:${port}`,
  'fwd-ok': `g.whatsapp.net:${port}`,
  'fwd-fullwidth': `g${FULLWIDTH_DOT}whatsapp${FULLWIDTH_DOT}net:${port}`,
});

function corpusConfig(policy: PolicyName, port: number, extra: { servers?: string[] } = {}): Record<string, unknown> {
  const rules: Record<string, unknown>[] = [{ name: 'wa', hosts: ['g.whatsapp.net', 'mixed.whatsapp.net', 'denied-only.whatsapp.net'], ports: [port] }];
  if (policy === 'ranges') rules.push({ name: 'lo', ip_ranges: ['127.0.0.0/8', '2002::/16', '2001::/32'], ports: [port] });
  return {
    listen: {
      proxy: '127.0.0.1:0',
      socks: '127.0.0.1:0',
      forwards: Object.entries(FORWARDS(port)).map(([name, to]) => ({ name, listen: '127.0.0.1:0', to })),
    },
    policy: { rules, allow_ranges: ['127.0.0.1/32'] },
    dns: {
      hosts: {
        'g.whatsapp.net': '127.0.0.1',
        // An allowed name with a denied address first: only the allowed one is dialled.
        'mixed.whatsapp.net': ['127.0.0.2', '::ffff:127.0.0.2', '127.0.0.1'],
        'denied-only.whatsapp.net': ['127.0.0.2', '::ffff:127.0.0.2'],
        // Look-alikes of the allowed name, resolving to the denied address.
        'g.whatsapp.net.evil.example': '127.0.0.2',
        'evilg.whatsapp.net': '127.0.0.2',
        'g-whatsapp.net': '127.0.0.2',
        'whatsapp.net': '127.0.0.2',
        'a.g.whatsapp.net': '127.0.0.2',
        [LOOKALIKE]: '127.0.0.2',
      },
      // Nothing listens on port 9: every other name fails to resolve at once.
      ...(extra.servers ? { servers: extra.servers } : {}),
    },
    timeouts: { dns: '500ms', connect: '2s', handshake: '3s' },
  };
}

/** The invariant of every denial case, whatever the listener. */
function expectRefusal(records: AuditRecord[], status: number, reason: string | undefined): AuditRecord {
  expect([400, 403]).toContain(status);
  const denied = records.filter((r) => r.event === 'egress.denied');
  expect(denied, JSON.stringify(records)).toHaveLength(1);
  // Nothing was let through or dialled.
  expect(records.filter((r) => r.event !== 'egress.denied'), JSON.stringify(records)).toEqual([]);
  const rec = denied[0]!;
  expect(rec.enforced).toBe(true);
  if (reason !== undefined) expect(rec.reason).toBe(reason);
  if (status === 400) expect(rec.reason).toBe('bad_request');
  else expect(POLICY_REASONS.has(rec.reason as Reason) || rec.reason === 'loop').toBe(true);
  expect(sink.connections).toBe(0);
  return rec;
}

async function viaConnect(gw: TestGateway, authority: string | Buffer) {
  const line = Buffer.concat([Buffer.from('CONNECT '), Buffer.from(authority), Buffer.from(' HTTP/1.1\r\n\r\n')]);
  const since = mark(gw);
  const r = await exchange(gw.port, line);
  expect(r.closed).toBe(true);
  const h = parseHead(r.data);
  const records = await waitRecords(gw, r.client, since);
  const rec = expectRefusal(records, h.status, h.reason);
  expect(rec).toMatchObject({ listener: 'proxy', proto: 'connect' });
  return { status: h.status, rec };
}

async function viaHttp(gw: TestGateway, url: string | Buffer, hostHeader = 'g.whatsapp.net') {
  const line = Buffer.concat([Buffer.from('GET '), Buffer.from(url), Buffer.from(` HTTP/1.1\r\nHost: ${hostHeader}\r\nConnection: close\r\n\r\n`)]);
  const before = origin.requests.length;
  const since = mark(gw);
  const r = await exchange(gw.port, line);
  expect(r.closed).toBe(true);
  const h = parseHead(r.data);
  const records = await waitRecords(gw, r.client, since);
  const rec = expectRefusal(records, h.status, h.reason);
  expect(rec).toMatchObject({ listener: 'proxy', proto: 'http' });
  expect(origin.requests.length).toBe(before);
  return { status: h.status, rec };
}

/** SOCKS reply codes: 0x02 policy denial, 0x01 a malformed target; both are refusals. */
async function viaSocks(gw: TestGateway, addr: SocksAddress, port = P) {
  const since = mark(gw);
  const r = await socksExchange(gw.gw.address('socks').port, addr, port);
  expect(r.closed).toBe(true);
  const records = await waitRecords(gw, r.client, since);
  const status = r.reply === 0x02 ? 403 : 400;
  if (r.reply !== null) expect([0x01, 0x02]).toContain(r.reply);
  const rec = expectRefusal(records, status, undefined);
  expect(rec).toMatchObject({ listener: 'socks', proto: 'socks' });
  return { reply: r.reply, rec };
}

/** A SOCKS address for a host as written in a URL authority. */
function socksAddr(host: string): SocksAddress {
  return { atyp: 3, name: host };
}

// ---------------------------------------------------------------------------
// The corpus

/** Every form of 127.0.0.2 a resolver or URL parser accepts, and what it must be judged as. */
const V4_FORMS: [string, string][] = [
  ['127.0.0.2', '127.0.0.2'],
  ['2130706434', '127.0.0.2'], // decimal
  ['0x7f000002', '127.0.0.2'], // hex
  ['0X7F000002', '127.0.0.2'],
  ['0x00007f000002', '127.0.0.2'],
  ['017700000002', '127.0.0.2'], // octal, whole
  ['0177.0.0.2', '127.0.0.2'], // octal octet
  ['0177.0000.0000.0002', '127.0.0.2'],
  ['127.2', '127.0.0.2'], // short forms
  ['127.0.2', '127.0.0.2'],
  ['0x7f.2', '127.0.0.2'],
  ['0x7f.0.0.02', '127.0.0.2'], // mixed
  ['0x7f.0x0.0x0.0x2', '127.0.0.2'],
  ['0177.0x0.2', '127.0.0.2'],
  ['127.000.000.002', '127.0.0.2'],
  ['127.0.0.2.', '127.0.0.2'], // trailing dot
  ['2130706434.', '127.0.0.2'],
  ['0x7f000002.', '127.0.0.2'],
  ['0177.0.0.2.', '127.0.0.2'],
];

/** IPv6 forms that embed 127.0.0.2 (judged as it), and tunnel prefixes denied outright. */
const V6_FORMS: [string, string, string][] = [
  // [bracketed host, canonical dest_host, range]
  ['[::ffff:7f00:2]', '::ffff:7f00:2', 'loopback'],
  ['[::FFFF:7F00:2]', '::ffff:7f00:2', 'loopback'],
  ['[0:0:0:0:0:ffff:127.0.0.2]', '::ffff:7f00:2', 'loopback'],
  ['[0000:0000:0000:0000:0000:ffff:7f00:0002]', '::ffff:7f00:2', 'loopback'],
  ['[::ffff:127.0.0.2]', '::ffff:7f00:2', 'loopback'],
  ['[::ffff:0:7f00:2]', '::ffff:0:7f00:2', 'loopback'], // IPv4-translated (SIIT)
  ['[::ffff:0:127.0.0.2]', '::ffff:0:7f00:2', 'loopback'],
  ['[::127.0.0.2]', '::7f00:2', 'loopback'], // IPv4-compatible
  ['[::7f00:2]', '::7f00:2', 'loopback'],
  ['[64:ff9b::7f00:2]', '64:ff9b::7f00:2', 'loopback'], // NAT64
  ['[64:ff9b::127.0.0.2]', '64:ff9b::7f00:2', 'loopback'],
  ['[2002:7f00:2::1]', '2002:7f00:2::1', 'ipv6_6to4'], // 6to4 for 127.0.0.2
  ['[2002:7f00:0002:0:0:0:0:1]', '2002:7f00:2::1', 'ipv6_6to4'],
  ['[2001:0:7f00:2::80ff:fffd]', '2001:0:7f00:2::80ff:fffd', 'ipv6_teredo'], // Teredo: server and client 127.0.0.2
  ['[2001::80ff:fffd]', '2001::80ff:fffd', 'ipv6_teredo'],
];

/** Names that are not the allowed name: [name, canonical, maps to 127.0.0.2 in dns.hosts]. */
const NAME_FORMS: [string, string, boolean][] = [
  ['g.whatsapp.net.evil.example', 'g.whatsapp.net.evil.example', true],
  ['G.WhatsApp.NET.Evil.Example', 'g.whatsapp.net.evil.example', true],
  ['g.whatsapp.net.evil.example.', 'g.whatsapp.net.evil.example', true],
  ['evilg.whatsapp.net', 'evilg.whatsapp.net', true],
  ['EvilG.WhatsApp.Net.', 'evilg.whatsapp.net', true],
  ['g-whatsapp.net', 'g-whatsapp.net', true],
  ['whatsapp.net', 'whatsapp.net', true],
  ['a.g.whatsapp.net', 'a.g.whatsapp.net', true],
  ['g.xn--whatspp-6fg.net', 'g.xn--whatspp-6fg.net', true], // the Cyrillic look-alike's ASCII form
  ['g.whatsapp.net.127.0.0.2.nip.example', 'g.whatsapp.net.127.0.0.2.nip.example', false],
  ['evil.example', 'evil.example', false],
  [`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(48)}.evil.example`, '', false], // exactly 253 bytes
];

/** Authorities (host:port, port given by the function) that must be refused as malformed. */
const MALFORMED: [string, (p: number) => string][] = [
  ['percent-encoded dot', (p) => `g%2ewhatsapp.net:${p}`],
  ['percent-encoded address', (p) => `127%2e0%2e0%2e2:${p}`],
  ['percent-encoded digits', (p) => `%31%32%37.0.0.2:${p}`],
  ['percent-encoded NUL', (p) => `g.whatsapp.net%00.127.0.0.2:${p}`],
  ['userinfo naming the allowed host', (p) => `g.whatsapp.net@127.0.0.2:${p}`],
  ['userinfo with port', (p) => `g.whatsapp.net:${p}@127.0.0.2:${p}`],
  ['@ after the address', (p) => `127.0.0.2@g.whatsapp.net:${p}`],
  ['fragment', (p) => `127.0.0.2:${p}#g.whatsapp.net`],
  ['fragment before @', (p) => `g.whatsapp.net#@127.0.0.2:${p}`],
  ['backslash', (p) => `g.whatsapp.net\\@127.0.0.2:${p}`],
  ['backslash as separator', (p) => `g.whatsapp.net\\.127.0.0.2:${p}`],
  ['slash', (p) => `g.whatsapp.net/127.0.0.2:${p}`],
  ['question mark', (p) => `127.0.0.2?g.whatsapp.net:${p}`],
  ['space', (p) => `g.whatsapp.net 127.0.0.2:${p}`],
  ['tab', (p) => `g.whatsapp.net\t127.0.0.2:${p}`],
  ['NUL byte', (p) => `g.whatsapp.net\0.127.0.0.2:${p}`],
  ['NUL before the port', (p) => `127.0.0.2\0:${p}`],
  ['double trailing dot', (p) => `g.whatsapp.net..:${p}`],
  ['empty label', (p) => `g..whatsapp.net:${p}`],
  ['leading dot', (p) => `.g.whatsapp.net:${p}`],
  ['name ending in a number', (p) => `g.whatsapp.net.127.0.0.2:${p}`],
  ['too many IPv4 parts', (p) => `127.0.0.0.2:${p}`],
  ['IPv4 number out of range', (p) => `4294967298:${p}`],
  ['IPv4 octet out of range', (p) => `127.0.0.258:${p}`],
  ['zone ID (encoded)', (p) => `[::ffff:127.0.0.2%25eth0]:${p}`],
  ['zone ID', (p) => `[::ffff:127.0.0.2%eth0]:${p}`],
  ['zone ID on link-local', (p) => `[fe80::1%25lo]:${p}`],
  ['unbracketed IPv6', (p) => `::ffff:127.0.0.2:${p}`],
  ['unterminated IPv6', (p) => `[::ffff:127.0.0.2:${p}`],
  ['IPv4 in brackets', (p) => `[127.0.0.2]:${p}`],
  ['label over 63 bytes', (p) => `${'a'.repeat(64)}.g.whatsapp.net:${p}`],
  ['name over 253 bytes', (p) => `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(49)}.evil.example:${p}`], // 254 bytes
  ['name over 253 bytes ending in the allowed name', (p) => `${'a.'.repeat(120)}g.whatsapp.net:${p}`],
  ['port with a sign', (p) => `127.0.0.2:+${p}`],
  ['port twice', (p) => `127.0.0.2:${p}:${p}`],
  ['port 0', () => `127.0.0.2:0`],
  ['no port', () => `127.0.0.2`],
];

/** MALFORMED cases whose host part alone (as SOCKS carries it, without the port) is a valid address. */
const SOCKS_VALID_HOST = new Set(['fragment', 'port with a sign', 'port 0', 'no port']);

describe.each(POLICIES)('bypass corpus (%s policy)', (policyName) => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway(corpusConfig(policyName, P));
  });
  afterAll(async () => {
    await gw?.close();
    expect(sink.connections).toBe(0);
  });

  const literalReason = policyName === 'ranges' ? 'special_range' : 'ip_not_allowed';

  describe('controls: the allowed name reaches the origin on 127.0.0.1, never the sink', () => {
    const allowed = ['g.whatsapp.net', 'G.WHATSAPP.NET', 'g.whatsapp.net.', 'mixed.whatsapp.net'];
    for (const host of allowed) {
      it(`CONNECT ${host}`, async () => {
        const before = origin.connections;
        const since = mark(gw);
        const client = await RawClient.connect(gw.port);
        client.write(`CONNECT ${host}:${P} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
        const { status } = await client.head();
        expect(status).toBe(200);
        await client.waitClosed();
        expect(client.text).toContain('origin');
        expect(origin.connections).toBe(before + 1);
        const recs = recordsOf(gw, client.socket, since);
        expect(recs.find((r) => r.event === 'egress.allowed')).toMatchObject({ dest_ip: '127.0.0.1', rule: 'wa' });
        expect(sink.connections).toBe(0);
      });
    }
    if (policyName === 'ranges') {
      it('CONNECT 127.0.0.1 and [::ffff:127.0.0.1] (inside allow_ranges) are allowed', async () => {
        for (const host of ['127.0.0.1', '2130706433', '[::ffff:127.0.0.1]']) {
          const client = await RawClient.connect(gw.port);
          client.write(`CONNECT ${host}:${P} HTTP/1.1\r\n\r\n`);
          expect((await client.head()).status).toBe(200);
          client.destroy();
        }
        expect(sink.connections).toBe(0);
      });
    }
    it('SOCKS g.whatsapp.net', async () => {
      const r = await socksExchange(gw.gw.address('socks').port, socksAddr('g.whatsapp.net'), P, { open: true });
      expect(r.reply).toBe(0);
      expect(sink.connections).toBe(0);
    });
    it('SOCKS g．whatsapp．net, ｇ.whatsapp.net and a trailing 。 as UTF-8 are the allowed name (IDNA mapping, as for CONNECT), never the sink', async () => {
      for (const host of [`g${FULLWIDTH_DOT}whatsapp${FULLWIDTH_DOT}net`, 'ｇ.whatsapp.net', 'G.WHATSAPP.NET\u3002']) {
        const before = origin.connections;
        const since = mark(gw);
        const r = await socksExchange(gw.gw.address('socks').port, { atyp: 3, name: Buffer.from(host, 'utf8') }, P, { open: true });
        expect(r.reply, host).toBe(0);
        const recs = await waitRecords(gw, r.client, since);
        expect(recs.find((x) => x.event === 'egress.allowed'), host).toMatchObject({ dest_host: 'g.whatsapp.net', dest_ip: '127.0.0.1', rule: 'wa' });
        await eventually(() => origin.connections === before + 1);
      }
      expect(sink.connections).toBe(0);
    });
  });

  describe('IPv4 literal forms of 127.0.0.2', () => {
    for (const [host, as] of V4_FORMS) {
      it(`CONNECT ${host}`, async () => {
        const { rec } = await viaConnect(gw, `${host}:${P}`);
        expect(rec).toMatchObject({ reason: literalReason, dest_host: as, dest_port: P });
        if (policyName === 'ranges') expect(rec).toMatchObject({ range: 'loopback', dest_ip: '127.0.0.2', rule: 'lo' });
      });
      it(`HTTP http://${host}/`, async () => {
        const { rec } = await viaHttp(gw, `http://${host}:${P}/`);
        expect(rec).toMatchObject({ reason: literalReason, dest_host: as, dest_port: P });
      });
      it(`SOCKS name ${host}`, async () => {
        const { reply, rec } = await viaSocks(gw, socksAddr(host));
        expect(reply).toBe(0x02);
        expect(rec).toMatchObject({ reason: literalReason, dest_host: as });
      });
    }
    it('SOCKS IPv4 address 127.0.0.2', async () => {
      const { reply, rec } = await viaSocks(gw, { atyp: 1, ip: '127.0.0.2' });
      expect(reply).toBe(0x02);
      expect(rec).toMatchObject({ reason: literalReason, dest_host: '127.0.0.2' });
    });
  });

  describe('IPv6 forms embedding 127.0.0.2, and 6to4/Teredo: denied before any dial', () => {
    for (const [host, as, range] of V6_FORMS) {
      const reason = policyName === 'ranges' ? 'special_range' : 'ip_not_allowed';
      it(`CONNECT ${host}`, async () => {
        const { status, rec } = await viaConnect(gw, `${host}:${P}`);
        expect(status).toBe(403);
        expect(rec).toMatchObject({ reason, dest_host: as, dest_port: P });
        if (policyName === 'ranges') expect(rec.range).toBe(range);
        // Denied before any dial: the only record is the denial (expectRefusal), and the sink saw nothing.
      });
      it(`HTTP http://${host}/`, async () => {
        const { status, rec } = await viaHttp(gw, `http://${host}:${P}/`);
        expect(status).toBe(403);
        expect(rec).toMatchObject({ reason, dest_host: as });
      });
      it(`SOCKS IPv6 address ${host}`, async () => {
        const n = v6(as);
        const { reply, rec } = await viaSocks(gw, { atyp: 4, ip: n });
        expect(reply).toBe(0x02);
        expect(rec).toMatchObject({ reason, dest_host: as });
      });
      it(`SOCKS name ${host}`, async () => {
        const { reply, rec } = await viaSocks(gw, socksAddr(host));
        expect(reply).toBe(0x02);
        expect(rec).toMatchObject({ reason, dest_host: as });
      });
    }
  });

  describe('names that are not the allowed name', () => {
    for (const [host, canonical, mapped] of NAME_FORMS) {
      // Unmatched names: no rule could allow them (names) or they resolve to
      // 127.0.0.2 (special_range) or not at all (host_not_allowed).
      const reason = policyName === 'ranges' && mapped ? 'special_range' : 'host_not_allowed';
      const label = host.length > 60 ? `${host.slice(0, 20)}…(${host.length} bytes)` : host;
      it(`CONNECT ${label}`, async () => {
        const { rec } = await viaConnect(gw, `${host}:${P}`);
        expect(rec.reason).toBe(reason);
        if (canonical) expect(rec.dest_host).toBe(canonical);
        if (reason === 'special_range') expect(rec.dest_ip).toBe('127.0.0.2');
      });
      it(`HTTP ${label}`, async () => {
        const { rec } = await viaHttp(gw, `http://${host}:${P}/`);
        expect(rec.reason).toBe(reason);
      });
      it(`SOCKS ${label}`, async () => {
        const { reply, rec } = await viaSocks(gw, socksAddr(host));
        expect(reply).toBe(0x02);
        expect(rec.reason).toBe(reason);
      });
    }
    it('an allowed name whose every address is denied: special_range', async () => {
      const { rec } = await viaConnect(gw, `denied-only.whatsapp.net:${P}`);
      expect(rec).toMatchObject({ reason: 'special_range', rule: 'wa', range: 'loopback', dest_ip: '127.0.0.2' });
    });
  });

  describe('Unicode look-alikes and fullwidth dots', () => {
    // On the wire, Node's HTTP parser refuses non-ASCII request targets (400);
    // SOCKS carries the raw bytes. Either way nothing reaches 127.0.0.2.
    const unicode = [LOOKALIKE, `${LOOKALIKE}.`, LOOKALIKE.replaceAll('.', FULLWIDTH_DOT), `127${FULLWIDTH_DOT}0${FULLWIDTH_DOT}0${FULLWIDTH_DOT}2`, '１２７.０.０.２', 'ｇ.whatsapp.net.evil.example'];
    for (const host of unicode) {
      it(`CONNECT ${host}`, async () => {
        await viaConnect(gw, Buffer.from(`${host}:${P}`, 'utf8'));
      });
      it(`HTTP ${host}`, async () => {
        await viaHttp(gw, Buffer.from(`http://${host}:${P}/`, 'utf8'));
      });
      it(`SOCKS ${host} (UTF-8 bytes)`, async () => {
        await viaSocks(gw, { atyp: 3, name: Buffer.from(host, 'utf8') });
      });
    }

    it('at the decision level: IDNA maps a look-alike to its own punycode name, which the rule does not match', async () => {
      const ctx = contextOf(gw);
      const lookalikes = [LOOKALIKE, LOOKALIKE.toUpperCase(), LOOKALIKE.replaceAll('.', FULLWIDTH_DOT), `${LOOKALIKE}.`, LOOKALIKE.replaceAll('.', '\u3002')];
      for (const host of lookalikes) {
        const target = parseHostPort(`${host}:${P}`);
        expect(target.host).toBe('g.xn--whatspp-6fg.net');
        const d = await decide(ctx, target);
        expect(d.verdict, host).toBe('deny');
        expect(d.verdict === 'deny' && d.reason, `${host} ${JSON.stringify(d)}`).toBe(policyName === 'ranges' ? 'special_range' : 'host_not_allowed');
      }
    });

    it('at the decision level: a fullwidth-dotted allowed name is the allowed name, dialled only at 127.0.0.1', async () => {
      const ctx = contextOf(gw);
      for (const host of [`g${FULLWIDTH_DOT}whatsapp${FULLWIDTH_DOT}net`, 'ｇ.ｗｈａｔｓａｐｐ.ｎｅｔ', 'g\u3002whatsapp\u3002net', 'g.whats\u00adapp.net']) {
        const d = await decide(ctx, parseHostPort(`${host}:${P}`));
        expect(d.verdict, host).toBe('allow');
        expect(d.addresses).toEqual(['127.0.0.1']);
      }
      // …and fullwidth forms of the denied address are that address.
      for (const host of [`127${FULLWIDTH_DOT}0${FULLWIDTH_DOT}0${FULLWIDTH_DOT}2`, '１２７.０.０.２', '０ｘ７ｆ０００００２']) {
        expect(normalizeHost(host)).toEqual({ host: '127.0.0.2', family: 4 });
        const d = await decide(ctx, parseHostPort(`${host}:${P}`));
        expect(d.verdict, host).toBe('deny');
        expect(d.verdict === 'deny' && d.reason).toBe(literalReason);
      }
    });
  });

  describe('malformed authorities: 400', () => {
    for (const [name, authority] of MALFORMED) {
      it(`CONNECT: ${name}`, async () => {
        const { status, rec } = await viaConnect(gw, authority(P));
        expect(status).toBe(400);
        expect(rec.reason).toBe('bad_request');
      });
      it(`HTTP: ${name}`, async () => {
        // In a URL some of these end the authority early (`#`, `/`, `?`):
        // then the shortened authority is judged; still never a way through.
        await viaHttp(gw, `http://${authority(P)}/`);
      });
      it(`SOCKS: ${name}`, async () => {
        // SOCKS carries the host alone (its port is a separate field): the
        // part before the last colon is what the gateway sees.
        const a = authority(P);
        const colon = a.lastIndexOf(':');
        const host = colon > 0 && !a.endsWith(']') ? a.slice(0, colon) : a;
        expect(Buffer.byteLength(host)).toBeLessThanOrEqual(255);
        const { reply, rec } = await viaSocks(gw, socksAddr(host));
        if (SOCKS_VALID_HOST.has(name)) {
          // What is left is a plain 127.0.0.2: a policy denial.
          expect(reply).toBe(0x02);
          expect(rec).toMatchObject({ reason: literalReason, dest_host: '127.0.0.2' });
        } else {
          expect(reply).toBe(0x01);
          expect(rec.reason).toBe('bad_request');
        }
      });
    }
  });

  describe('forward listeners with a denied target', () => {
    const denied: [string, string][] = [
      ['fwd-literal', '127.0.0.2'],
      ['fwd-decimal', '127.0.0.2'],
      ['fwd-hex', '127.0.0.2'],
      ['fwd-short', '127.0.0.2'],
      ['fwd-mapped', '::ffff:7f00:2'],
      ['fwd-evil', 'g.whatsapp.net.evil.example'],
      ['fwd-lookalike', 'g.xn--whatspp-6fg.net'],
    ];
    for (const [name, destHost] of denied) {
      it(`${name} closes the connection at once, audited`, async () => {
        const since = mark(gw);
        const r = await exchange(gw.gw.address(name).port, 'hello upstream');
        expect(r.closed).toBe(true);
        expect(r.data.length).toBe(0);
        const recs = await waitRecords(gw, r.client, since);
        const rec = expectRefusal(recs, 403, undefined);
        expect(rec).toMatchObject({ listener: name, proto: 'tcp', dest_host: destHost, dest_port: P });
        const isName = /[a-z]/.test(destHost) && !destHost.includes(':');
        if (policyName === 'ranges') expect(rec.reason).toBe('special_range');
        else expect(rec.reason).toBe(isName ? 'host_not_allowed' : 'ip_not_allowed');
      });
    }
    for (const name of ['fwd-ok', 'fwd-fullwidth']) {
      it(`${name} (the allowed name) reaches the origin, not the sink`, async () => {
        const before = origin.connections;
        const r = await exchange(gw.gw.address(name).port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
        expect(r.data.toString()).toContain('origin');
        expect(origin.connections).toBe(before + 1);
        expect(sink.connections).toBe(0);
      });
    }
  });
});

// ---------------------------------------------------------------------------
// The classifier on the embedded forms (unit level)

describe('classify: embedded IPv4 and tunnel prefixes for 127.0.0.2', () => {
  const rows: [string, string | null, string][] = [
    // [address, range, effective]
    ['::ffff:7f00:2', 'loopback', '127.0.0.2'],
    ['::ffff:0:7f00:2', 'loopback', '127.0.0.2'],
    ['::7f00:2', 'loopback', '127.0.0.2'],
    ['64:ff9b::7f00:2', 'loopback', '127.0.0.2'],
    ['2002:7f00:2::', 'ipv6_6to4', '2002:7f00:2::'],
    ['2002:7f00:2::1', 'ipv6_6to4', '2002:7f00:2::1'],
    ['2001:0:7f00:2::80ff:fffd', 'ipv6_teredo', '2001:0:7f00:2::80ff:fffd'],
    ['2001::80ff:fffd', 'ipv6_teredo', '2001::80ff:fffd'],
    // A public IPv4 address behind 6to4/Teredo is still not something the policy can see.
    ['2002:9df0:1::1', 'ipv6_6to4', '2002:9df0:1::1'],
    ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'ipv6_teredo', '2001:0:4136:e378:8000:63bf:3fff:fdd2'],
  ];
  for (const [ip, range, effective] of rows) {
    it(`${ip} → ${range}`, () => {
      const c = classify(ip);
      expect(c.range).toBe(range);
      expect(c.effective).toBe(effective);
    });
  }
  it('every IPv6 form in the corpus classifies as special', () => {
    for (const [, as, range] of V6_FORMS) expect(classify(as).range, as).toBe(range);
    for (const [, as] of V4_FORMS) expect(classify(as).range).toBe('loopback');
  });
});

// ---------------------------------------------------------------------------
// DNS rebinding

describe('DNS rebinding: an allowed name answers 127.0.0.1, then 127.0.0.2 (TTL 0)', () => {
  let dns: TestDns;
  let gw: TestGateway;
  // Each name rebinds on its own and is used by one test only: the first A
  // query of a name gets the allowed address, every later one the denied
  // (the fixture counts per type and does not count a resolver's resend).
  const names = ['connect.whatsapp.net', 'http.whatsapp.net', 'socks.whatsapp.net', 'fwd.whatsapp.net'];
  /** The second answer came from the DNS server, not from a cache. */
  const expectAsked = (name: string) => expect(dns.count(name, 'A'), name).toBe(2);
  beforeAll(async () => {
    const table = Object.fromEntries(names.map((n) => [n, (k: number) => ({ A: [k <= 1 ? '127.0.0.1' : '127.0.0.2'], ttl: 0 })]));
    dns = await startDns(table);
    gw = await startGateway({
      listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0', forwards: [{ name: 'fwd', listen: '127.0.0.1:0', to: `fwd.whatsapp.net:${P}` }] },
      policy: { rules: [{ name: 'wa', hosts: names, ports: [P] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { servers: [dns.server] },
      timeouts: { dns: '1s', connect: '2s' },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await dns?.close();
  });

  it('CONNECT: the first tunnel reaches 127.0.0.1 (the checked address, not a second lookup); the second is denied', async () => {
    const before = origin.connections;
    const first = await RawClient.connect(gw.port);
    first.write(`CONNECT connect.whatsapp.net:${P} HTTP/1.1\r\n\r\n`);
    expect((await first.head()).status).toBe(200);
    await eventually(() => origin.connections === before + 1);
    first.destroy();
    const { status, rec } = await viaConnect(gw, `connect.whatsapp.net:${P}`);
    expect(status).toBe(403);
    expect(rec).toMatchObject({ reason: 'special_range', dest_ip: '127.0.0.2', range: 'loopback' });
    expect(sink.connections).toBe(0);
    expectAsked('connect.whatsapp.net');
  });

  it('HTTP keep-alive: the second request on the same connection is judged on the new answer', async () => {
    const since = mark(gw);
    const c = await RawClient.connect(gw.port);
    const client = `127.0.0.1:${c.socket.localPort}`;
    c.write(`GET http://http.whatsapp.net:${P}/one HTTP/1.1\r\n\r\n`);
    const one = await c.head();
    expect(one.status).toBe(200);
    await c.bytes(6);
    c.data = Buffer.alloc(0);
    c.write(`GET http://http.whatsapp.net:${P}/two HTTP/1.1\r\n\r\n`);
    const two = await c.head();
    expect(two.status).toBe(403);
    expect(two.headers['x-wa-egress-reason']).toBe('special_range');
    c.destroy();
    const recs = recordsOf(gw, client, since);
    expect(recs.find((r) => r.event === 'egress.denied')).toMatchObject({ request: 2, reason: 'special_range', dest_ip: '127.0.0.2' });
    expect(sink.connections).toBe(0);
    expectAsked('http.whatsapp.net');
  });

  it('SOCKS: the second connection is refused (0x02)', async () => {
    const socksPort = gw.gw.address('socks').port;
    const first = await socksExchange(socksPort, socksAddr('socks.whatsapp.net'), P, { open: true });
    expect(first.reply).toBe(0);
    const { reply, rec } = await viaSocks(gw, socksAddr('socks.whatsapp.net'));
    expect(reply).toBe(0x02);
    expect(rec).toMatchObject({ reason: 'special_range', dest_ip: '127.0.0.2' });
    expectAsked('socks.whatsapp.net');
  });

  it('forward listener: the second connection is closed at once', async () => {
    const port = gw.gw.address('fwd').port;
    const first = await exchange(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(first.data.toString()).toContain('origin');
    const since = mark(gw);
    const second = await exchange(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(second.closed).toBe(true);
    expect(second.data.length).toBe(0);
    const recs = await waitRecords(gw, second.client, since);
    expect(expectRefusal(recs, 403, 'special_range')).toMatchObject({ listener: 'fwd', dest_ip: '127.0.0.2' });
    expectAsked('fwd.whatsapp.net');
  });

  it('DNS answers that spell a denied address another way (mapped, NAT64, compatible, 0.0.0.0) are denied', async () => {
    const answers: Record<string, { A?: string[]; AAAA?: string[] }> = {
      'mapped.whatsapp.net': { AAAA: ['::ffff:127.0.0.2'] },
      'nat64.whatsapp.net': { AAAA: ['64:ff9b::7f00:2'] },
      'compat.whatsapp.net': { AAAA: ['::127.0.0.2'] },
      'zero.whatsapp.net': { A: ['0.0.0.0'] },
      'both.whatsapp.net': { A: ['127.0.0.2'], AAAA: ['::ffff:7f00:2', '::1'] },
      'sixtofour.whatsapp.net': { AAAA: ['2002:7f00:2::1'] },
    };
    const dns2 = await startDns(Object.fromEntries(Object.entries(answers).map(([n, a]) => [n, { ...a, ttl: 0 }])));
    const gw2 = await startGateway({
      policy: { rules: [{ name: 'wa', hosts: Object.keys(answers), ports: [P] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { servers: [dns2.server] },
      timeouts: { dns: '1s', connect: '1s' },
    });
    try {
      for (const name of Object.keys(answers)) {
        const { status, rec } = await viaConnect(gw2, `${name}:${P}`);
        expect(status, name).toBe(403);
        expect(rec, name).toMatchObject({ reason: 'special_range', rule: 'wa' });
      }
    } finally {
      await gw2.close();
      await dns2.close();
    }
    expect(sink.connections).toBe(0);
  });

});

// ---------------------------------------------------------------------------
// Loops: the gateway's own listeners, in every spelling, whatever allow_ranges says

describe('loops: a destination that is one of the gateway\'s own listeners', () => {
  let gw: TestGateway;
  let ports: { proxy: number; socks: number; fwd: number };
  beforeAll(async () => {
    // The forward listener points at the proxy: the config names the ports.
    const started = await startGatewayOnPorts(3, ([proxy, socks, fwd]) => ({
      listen: { proxy: `127.0.0.1:${proxy}`, socks: `127.0.0.1:${socks}`, forwards: [{ name: 'fwd', listen: `127.0.0.1:${fwd}`, to: `g.whatsapp.net:${proxy}` }] },
      // Everything on loopback is allowed by the rules and exempt from the special-range deny:
      // only the loop check stands between a client and the gateway itself.
      policy: { rules: [{ name: 'all', hosts: ['g.whatsapp.net'], ip_ranges: ['127.0.0.0/8', '0.0.0.0/8', '::/127'], ports: [proxy, socks, fwd] }], allow_ranges: ['127.0.0.0/8', '0.0.0.0/8', '::/127'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    }));
    gw = started.gw;
    const [proxy, socks, fwd] = started.ports as [number, number, number];
    ports = { proxy, socks, fwd };
  });
  afterAll(async () => {
    await gw?.close();
  });

  const forms = ['127.0.0.1', '127.1', '2130706433', '0x7f000001', '0177.0.0.1', '127.0.0.1.', '[::ffff:127.0.0.1]', '[::ffff:7f00:1]', '[::127.0.0.1]', '[::ffff:0:127.0.0.1]', '0.0.0.0', '0', '[::]', '[::ffff:0.0.0.0]', 'g.whatsapp.net'];
  for (const form of forms) {
    for (const listener of ['proxy', 'socks', 'fwd'] as const) {
      it(`CONNECT ${form} on the ${listener} port → loop`, async () => {
        const since = mark(gw);
        const r = await exchange(gw.port, `CONNECT ${form}:${ports[listener]} HTTP/1.1\r\n\r\n`);
        const h = parseHead(r.data);
        expect(h.status).toBe(403);
        expect(h.reason).toBe('loop');
        // One record, ours: the gateway never connected to itself.
        const all = gw.audit().slice(since);
        expect(all, JSON.stringify(all)).toEqual([expect.objectContaining({ event: 'egress.denied', reason: 'loop', client: r.client })]);
      });
    }
  }
  it('SOCKS and a forward listener pointed at the proxy: loop', async () => {
    const since = mark(gw);
    const s = await socksExchange(ports.socks, { atyp: 1, ip: '127.0.0.1' }, ports.socks);
    expect(s.reply).toBe(0x02);
    const f = await exchange(ports.fwd, 'x');
    expect(f.closed).toBe(true);
    const all = gw.audit().slice(since);
    expect(all.map((r) => `${r.listener}:${r.reason}`)).toEqual(['socks:loop', 'fwd:loop']);
  });
});

// ---------------------------------------------------------------------------
// HTTP framing: Host header vs URL, smuggling, pipelining

describe('HTTP framing', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway(corpusConfig('ranges', P));
  });
  afterAll(async () => {
    await gw?.close();
    expect(sink.connections).toBe(0);
  });

  it('absolute-form: a denied URL with the allowed Host header is denied (the URL decides)', async () => {
    for (const url of [`http://127.0.0.2:${P}/`, `http://evilg.whatsapp.net:${P}/`, `http://2130706434:${P}/`]) {
      const { status } = await viaHttp(gw, url, `g.whatsapp.net:${P}`);
      expect(status).toBe(403);
    }
  });

  it('absolute-form: the allowed URL with a denied Host header goes to the URL, with Host rewritten', async () => {
    for (const host of [`127.0.0.2:${P}`, `2130706434:${P}`, 'evil.example']) {
      const before = origin.requests.length;
      const r = await exchange(gw.port, `GET http://g.whatsapp.net:${P}/x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
      expect(parseHead(r.data).status).toBe(200);
      expect(origin.requests.length).toBe(before + 1);
      expect(origin.requests.at(-1)).toMatchObject({ url: '/x', host: `g.whatsapp.net:${P}` });
    }
    expect(sink.connections).toBe(0);
  });

  it('absolute-form: the scheme is case-insensitive and still judged; other spellings are refused', async () => {
    for (const url of [`HTTP://127.0.0.2:${P}/`, `hTtP://0x7f000002:${P}/`]) expect((await viaHttp(gw, url)).status).toBe(403);
    for (const url of [`http:/127.0.0.2:${P}/`, `http:\\\\127.0.0.2:${P}/`, `//127.0.0.2:${P}/`, `https://127.0.0.2:${P}/`, `http://127.0.0.2:${P}\\@g.whatsapp.net/`, `/127.0.0.2:${P}/`]) {
      expect((await viaHttp(gw, url)).status, url).toBe(400);
    }
  });

  it('CONNECT: the target decides, never the Host header', async () => {
    const before = origin.connections;
    const c = await RawClient.connect(gw.port);
    c.write(`CONNECT g.whatsapp.net:${P} HTTP/1.1\r\nHost: 127.0.0.2:${P}\r\n\r\n`);
    expect((await c.head()).status).toBe(200);
    await eventually(() => origin.connections === before + 1);
    c.destroy();
    const since = mark(gw);
    const r = await exchange(gw.port, `CONNECT 127.0.0.2:${P} HTTP/1.1\r\nHost: g.whatsapp.net:${P}\r\n\r\n`);
    expect(parseHead(r.data).status).toBe(403);
    expectRefusal(await waitRecords(gw, r.client, since), 403, 'special_range');
  });

  // Each hides a request for the denied address behind a framing ambiguity.
  const smuggled = `GET http://127.0.0.2:${'PORT'}/ HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n`;
  const shapes: [string, (p: number) => string][] = [
    [
      'Content-Length with Transfer-Encoding',
      (p) => {
        const s = smuggled.replace('PORT', String(p));
        return `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nContent-Length: ${s.length + 5}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${s}`;
      },
    ],
    [
      'Transfer-Encoding with Content-Length (reversed order)',
      (p) => {
        const s = smuggled.replace('PORT', String(p));
        return `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${(s.length).toString(16)}\r\n${s}\r\n0\r\n\r\n`;
      },
    ],
    [
      'duplicate Content-Length',
      (p) => {
        const s = smuggled.replace('PORT', String(p));
        return `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: ${s.length}\r\n\r\n${s}`;
      },
    ],
    [
      'Content-Length list',
      (p) => {
        const s = smuggled.replace('PORT', String(p));
        return `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nContent-Length: 0, ${s.length}\r\n\r\n${s}`;
      },
    ],
    ['obsolete line folding', (p) => `GET http://g.whatsapp.net:${p}/ HTTP/1.1\r\nX-A: a\r\n Host: 127.0.0.2\r\n\r\n`],
    ['obsolete line folding of Transfer-Encoding', (p) => `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nTransfer-Encoding: x\r\n chunked\r\nContent-Length: 3\r\n\r\nabc`],
    ['bare LF', (p) => `GET http://g.whatsapp.net:${p}/ HTTP/1.1\nHost: x\n\nGET http://127.0.0.2:${p}/ HTTP/1.1\n\n`],
    ['bare LF after the request line', (p) => `GET http://g.whatsapp.net:${p}/ HTTP/1.1\nHost: x\r\n\r\n`],
    ['bare CR', (p) => `GET http://g.whatsapp.net:${p}/ HTTP/1.1\rHost: x\r\n\r\n`],
    ['Transfer-Encoding not ending in chunked', (p) => `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`],
    ['space before the header colon', (p) => `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc`],
  ];
  for (const [name, request] of shapes) {
    it(`${name}: 400 bad_request, nothing dialled`, async () => {
      const before = origin.connections;
      const r = await exchange(gw.port, request(P));
      const h = parseHead(r.data);
      expect(h.status, h.text).toBe(400);
      expect(h.reason).toBe('bad_request');
      // Only one answer: the smuggled request is never read as a second one.
      expect(r.data.toString('latin1').match(/HTTP\/1\.1 \d{3}/g)).toHaveLength(1);
      const recs = await waitRecords(gw, r.client);
      expect(recs).toEqual([expect.objectContaining({ event: 'egress.denied', reason: 'bad_request', enforced: true })]);
      expect(origin.connections).toBe(before);
      expect(sink.connections).toBe(0);
    });
  }

  it('CONNECT to the denied address pipelined after an allowed GET on the same connection', async () => {
    const since = mark(gw);
    const c = await RawClient.connect(gw.port);
    const client = `127.0.0.1:${c.socket.localPort}`;
    c.write(`GET http://g.whatsapp.net:${P}/first HTTP/1.1\r\n\r\nCONNECT 127.0.0.2:${P} HTTP/1.1\r\n\r\n`);
    await c.waitClosed();
    // The CONNECT is judged on its own and denied; nothing reaches the sink.
    expect(c.text).toMatch(/HTTP\/1\.1 403 [^\r]*\r\n[^]*X-Wa-Egress-Reason: special_range/);
    const recs = await eventually(() => {
      const r = recordsOf(gw, client, since);
      return r.some((x) => x.proto === 'connect') && r;
    });
    expect(recs.filter((r) => r.event === 'egress.denied')).toEqual([expect.objectContaining({ proto: 'connect', reason: 'special_range', dest_host: '127.0.0.2' })]);
    expect(recs.filter((r) => r.event === 'egress.allowed').every((r) => r.dest_ip === '127.0.0.1')).toBe(true);
    expect(sink.connections).toBe(0);
  });

  it('CONNECT to the denied address pipelined after a denied GET: both denied and audited', async () => {
    const since = mark(gw);
    const c = await RawClient.connect(gw.port);
    const client = `127.0.0.1:${c.socket.localPort}`;
    c.write(`GET http://evil.example:${P}/ HTTP/1.1\r\n\r\nCONNECT 0x7f000002:${P} HTTP/1.1\r\n\r\n`);
    await c.waitClosed();
    expect(c.text).toContain('X-Wa-Egress-Reason: special_range');
    const recs = await eventually(() => {
      const r = recordsOf(gw, client, since);
      return r.length >= 2 && r;
    });
    expect(recs.map((r) => `${r.proto}:${r.reason}`).sort()).toEqual(['connect:special_range', 'http:host_not_allowed']);
    expect(sink.connections).toBe(0);
  });

  // Node hands over a pipelined CONNECT as soon as it is parsed; the proxy
  // makes it wait for the answer to the request before it, so answers stay
  // in order and nothing from one destination lands in a tunnel to another.
  it('answers a pipelined CONNECT only after the earlier request (responses in order)', async () => {
    for (const second of [`CONNECT 127.0.0.2:${P}`, `CONNECT g.whatsapp.net:${P}`]) {
      const c = await RawClient.connect(gw.port);
      c.write(`GET http://evil.example:${P}/ HTTP/1.1\r\n\r\n${second} HTTP/1.1\r\n\r\n`);
      // Both answers are in once the second one's head (its reason, or the tunnel's status) is.
      await eventually(() => /special_range|Connection established/.test(c.text) || c.ended || c.closed);
      c.destroy();
      const statuses = c.text.match(/HTTP\/1\.1 \d{3}/g) ?? [];
      // The GET's 403 host_not_allowed first, then the CONNECT's answer.
      expect(statuses[0], c.text).toBe('HTTP/1.1 403');
      expect(c.text.indexOf('host_not_allowed'), c.text).toBeGreaterThanOrEqual(0);
      expect(c.text.indexOf('host_not_allowed')).toBeLessThan(c.text.search(/special_range|Connection established/));
    }
  });

  it('a second CONNECT sent in the same packet as an allowed one goes into the tunnel, not to the policy or the sink', async () => {
    const before = origin.connections;
    const since = mark(gw);
    const c = await RawClient.connect(gw.port);
    const client = `127.0.0.1:${c.socket.localPort}`;
    c.write(`CONNECT g.whatsapp.net:${P} HTTP/1.1\r\n\r\nCONNECT 127.0.0.2:${P} HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect((await c.head()).status).toBe(200);
    // The origin on 127.0.0.1 gets the second CONNECT as tunnel bytes (and hangs up on it).
    await eventually(() => origin.connections === before + 1);
    await c.waitClosed();
    const recs = recordsOf(gw, client, since);
    expect(recs.filter((r) => r.event === 'egress.denied')).toEqual([]);
    expect(recs.filter((r) => r.event === 'egress.allowed')).toEqual([expect.objectContaining({ dest_ip: '127.0.0.1' })]);
    expect(sink.connections).toBe(0);
  });
});

// ---------------------------------------------------------------------------

function v6(ip: string): bigint {
  // Only canonical forms from the table above; expand `::`.
  const [head, tail] = ip.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const parts = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return parts.reduce((n, p) => (n << 16n) | BigInt(parseInt(p, 16)), 0n);
}

function contextOf(gw: TestGateway): DecisionContext {
  return decisionContext(gw.gw.config, new SelfAddresses());
}
