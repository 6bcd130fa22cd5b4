import { afterEach, describe, expect, it, vi } from 'vitest';
import { Resolver } from '../../src/net/resolve.js';
import { startDns } from '../fixtures/dns-server.js';
import { connectVia, startGateway, startTcpServer, type TestServer } from '../helpers.js';

/** Resolution through `dns.servers` (a DNS server this test starts; never the system resolver). */

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function setup(table: Parameters<typeof startDns>[0], policy: Record<string, unknown>, silent: string[] = [], dnsExtra: object = {}) {
  const dns = await startDns(table, { silent });
  const echo: TestServer = await startTcpServer('127.0.0.1');
  const gw = await startGateway({
    policy: { allow_ranges: ['127.0.0.1/32'], ...policy, rules: (policy.rules as object[]).map((r) => ({ ports: [echo.port], ...r })) },
    dns: { servers: [dns.server], ...dnsExtra },
    // Generous: only the silent name ever waits for it.
    timeouts: { dns: '2s' },
  });
  cleanup.push(() => dns.close(), () => echo.close(), () => gw.close());
  return { dns, echo, gw };
}

describe('DNS through dns.servers', () => {
  it('resolves an allowed name and dials the address it checked', async () => {
    const { gw, echo, dns } = await setup({ 'g.whatsapp.net': { A: ['127.0.0.1'] } }, { rules: [{ name: 'r', hosts: ['g.whatsapp.net'] }] });
    const { client, status } = await connectVia(gw.port, `G.WhatsApp.NET.:${echo.port}`, 'hi');
    expect(status).toBe(200);
    expect((await client.bytes(2)).toString()).toBe('hi');
    client.destroy();
    expect(dns.count('g.whatsapp.net', 'A')).toBe(1);
    expect(gw.audit()[0]).toMatchObject({ event: 'egress.allowed', dest_host: 'g.whatsapp.net', dest_ip: '127.0.0.1' });
  });

  it('allows a name through ip_ranges when the address it resolves to is listed', async () => {
    const { gw, echo } = await setup({ 'x.fbcdn.example': { A: ['127.0.0.1'] } }, { rules: [{ name: 'ranges', ip_ranges: ['127.0.0.1/32'] }] });
    const { client, status } = await connectVia(gw.port, `x.fbcdn.example:${echo.port}`);
    expect(status).toBe(200);
    client.destroy();
  });

  it('answers 403 host_not_allowed, not dns_failed, for an unlisted name that does not resolve', async () => {
    const { gw, echo } = await setup({}, { rules: [{ name: 'ranges', ip_ranges: ['157.240.0.0/16'] }] });
    const { status, headers } = await connectVia(gw.port, `nowhere.example:${echo.port}`);
    expect(status).toBe(403);
    expect(headers['x-wa-egress-reason']).toBe('host_not_allowed');
  });

  it('sends no query for an unlisted name when no rule has ip_ranges', async () => {
    const { gw, echo, dns } = await setup({}, { rules: [{ name: 'r', hosts: ['g.whatsapp.net'] }] });
    const { status } = await connectVia(gw.port, `secret-bits.attacker.example:${echo.port}`);
    expect(status).toBe(403);
    expect(dns.queries).toHaveLength(0);
  });

  it('with dns.resolve_unlisted false, sends no query for an unlisted name even when ip_ranges exist', async () => {
    const { gw, echo, dns } = await setup(
      { 'secret-bits.attacker.example': { A: ['127.0.0.1'] }, 'g.whatsapp.net': { A: ['127.0.0.1'] } },
      { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ip_ranges: ['127.0.0.1/32'] }] },
      [],
      { resolve_unlisted: false },
    );
    const denied = await connectVia(gw.port, `secret-bits.attacker.example:${echo.port}`);
    expect(denied.status).toBe(403);
    expect(denied.headers['x-wa-egress-reason']).toBe('host_not_allowed');
    expect(dns.queries).toHaveLength(0);
    // A listed name is still resolved, and IP literals still meet ip_ranges.
    const allowed = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(allowed.status).toBe(200);
    allowed.client.destroy();
    const literal = await connectVia(gw.port, `127.0.0.1:${echo.port}`);
    expect(literal.status).toBe(200);
    literal.client.destroy();
    expect(dns.queries.map((q) => q.name)).not.toContain('secret-bits.attacker.example');
  });

  it('answers 502 dns_failed for a listed name that does not resolve (NXDOMAIN and timeout)', async () => {
    const { gw, echo } = await setup({}, { rules: [{ name: 'r', hosts: ['*.whatsapp.net'] }] }, ['slow.whatsapp.net']);
    for (const name of ['missing.whatsapp.net', 'slow.whatsapp.net']) {
      const { status, headers } = await connectVia(gw.port, `${name}:${echo.port}`);
      expect(status, name).toBe(502);
      expect(headers['x-wa-egress-reason']).toBe('dns_failed');
    }
    expect(gw.audit().map((r) => [r.event, r.reason])).toEqual([
      ['egress.failed', 'dns_failed'],
      ['egress.failed', 'dns_failed'],
    ]);
  });

  it('checks every address: a name that resolves only to denied addresses is special_range', async () => {
    // Answers in special ranges only (denied, never dialled).
    const { gw, echo } = await setup({ 'g.whatsapp.net': { A: ['127.0.0.2', '10.1.2.3'], AAAA: ['::1'] } }, { rules: [{ name: 'r', hosts: ['g.whatsapp.net'] }] });
    const { status, headers } = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(status).toBe(403);
    expect(headers['x-wa-egress-reason']).toBe('special_range');
    expect(echo.connections).toBe(0);
  });

  it('dials only checked addresses when some answers are denied', async () => {
    const { gw, echo } = await setup({ 'g.whatsapp.net': { A: ['127.0.0.2', '127.0.0.1'] } }, { rules: [{ name: 'r', hosts: ['g.whatsapp.net'] }] });
    const { client, status } = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(status).toBe(200);
    client.destroy();
    expect(gw.audit()[0]).toMatchObject({ event: 'egress.allowed', dest_ip: '127.0.0.1' });
  });

  it('caches answers for their TTL and shares one query among concurrent lookups', async () => {
    const { gw, echo, dns } = await setup({ 'g.whatsapp.net': { A: ['127.0.0.1'], ttl: 60 } }, { rules: [{ name: 'r', hosts: ['g.whatsapp.net'] }] });
    const tunnels = await Promise.all([1, 2, 3].map(() => connectVia(gw.port, `g.whatsapp.net:${echo.port}`)));
    const later = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    for (const t of [...tunnels, later]) {
      expect(t.status).toBe(200);
      t.client.destroy();
    }
    expect(dns.count('g.whatsapp.net', 'A')).toBe(1);
  });

  it('resolves once per connection, so a rebinding answer cannot slip past the check', async () => {
    // First answer allowed (127.0.0.1), every later one denied (127.0.0.2), TTL 0.
    const { gw, echo, dns } = await setup(
      { 'g.whatsapp.net': (n: number) => ({ A: [n <= 1 ? '127.0.0.1' : '127.0.0.2'], ttl: 0 }) },
      { rules: [{ name: 'r', hosts: ['g.whatsapp.net'] }] },
    );
    const first = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(first.status).toBe(200);
    first.client.destroy();
    const second = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(second.status).toBe(403);
    expect(second.headers['x-wa-egress-reason']).toBe('special_range');
    expect(echo.connections).toBe(1);
    expect(dns.count('g.whatsapp.net', 'A')).toBe(2);
  });

  it('caps a cached answer at 300 s, whatever its TTL says', async () => {
    const { gw, echo, dns } = await setup({ 'g.whatsapp.net': { A: ['127.0.0.1'], ttl: 86_400 } }, { rules: [{ name: 'r', hosts: ['g.whatsapp.net'] }] });
    const open = async () => {
      const t = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
      expect(t.status).toBe(200);
      t.client.destroy();
    };
    await open();
    expect(dns.count('g.whatsapp.net', 'A')).toBe(1);
    // Only Date is faked: sockets and timers run as usual.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 299_000);
    await open();
    expect(dns.count('g.whatsapp.net', 'A')).toBe(1);
    vi.setSystemTime(Date.now() + 2_000);
    await open();
    expect(dns.count('g.whatsapp.net', 'A')).toBe(2);
  });

  it('holds at most 10,000 names in the cache, dropping the oldest first', { timeout: 120_000 }, async () => {
    const dns = await startDns((name) => (name.endsWith('.cache.example') ? { A: ['127.0.0.1'], ttl: 300 } : undefined));
    cleanup.push(() => dns.close());
    const resolver = new Resolver({ hosts: new Map(), servers: [dns.server], timeoutMs: 10_000 });
    const name = (i: number) => `n${i}.cache.example`;
    const N = 10_001;
    for (let i = 0; i < N; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, N - i) }, (_, j) => resolver.resolve(name(i + j))));
    }
    expect(dns.count(name(0), 'A')).toBe(1);
    // The newest 10,000 are answered from the cache; the first was dropped for the last.
    expect(resolver.known(name(1))).toEqual(['127.0.0.1']);
    expect(resolver.known(name(N - 1))).toEqual(['127.0.0.1']);
    expect(resolver.known(name(0))).toBeUndefined();
    await resolver.resolve(name(0));
    expect(dns.count(name(0), 'A')).toBe(2);
    expect(dns.count(name(N - 1), 'A')).toBe(1);
  });
});
