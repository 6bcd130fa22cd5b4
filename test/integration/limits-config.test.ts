import net, { type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { Metrics } from '../../src/ops/metrics.js';
import { connectVia, eventually, RawClient, startGateway, startTcpServer, type TestGateway, type TestServer } from '../helpers.js';
import { parseProm } from './prom.js';

/**
 * `limits:`: connections per client (429 client_limit), in all (503
 * over_capacity with Retry-After; SOCKS general failure; forwards closed),
 * request head size (431 head_too_large), and handshake slots under 2,000
 * slowloris clients. Every refusal has its audit record and its metric.
 */

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function setup(limits: Record<string, number | string>, extra: Record<string, unknown> = {}): Promise<{ gw: TestGateway; echo: TestServer; metrics: Metrics }> {
  const echo = await startTcpServer();
  cleanup.push(() => echo.close());
  const gw = await startGateway({
    listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0', forwards: [{ name: 'chat', listen: '127.0.0.1:0', to: `g.whatsapp.net:${echo.port}` }] },
    policy: { rules: [{ name: 'wa', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' }, servers: ['127.0.0.1:9'] },
    limits,
    ...extra,
  });
  cleanup.push(() => gw.close());
  const metrics = new Metrics({ gateway: gw.gw, audit: gw.gw.audit, config: true });
  cleanup.push(() => metrics.close());
  return { gw, echo, metrics };
}

async function refusals(metrics: Metrics, reason: string): Promise<number> {
  let n = 0;
  for (const [k, v] of parseProm(await metrics.text())) {
    if (k.startsWith('wa_egress_decisions_total{') && k.includes(`reason="${reason}"`)) n += v;
  }
  return n;
}

/** The status line of a CONNECT sent from another loopback source address (another client). */
function connectFrom(port: number, localAddress: string, authority: string): Promise<{ status: string; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress }, () => socket.write(`CONNECT ${authority} HTTP/1.1\r\n\r\n`));
    let data = '';
    socket.on('data', (d) => {
      data += d.toString('latin1');
      if (data.includes('\r\n')) resolve({ status: data.split('\r\n', 1)[0]!, socket });
    });
    socket.once('error', reject);
  });
}

const socksConnect = (port: number) => Buffer.from([5, 1, 0, 5, 1, 0, 3, 14, ...Buffer.from('g.whatsapp.net'), port >> 8, port & 255]);

describe('limits', () => {
  it('max_connections_per_client: 429 client_limit with a record and a metric; other clients and later connections are served', async () => {
    const { gw, echo, metrics } = await setup({ max_connections_per_client: 2 });
    const a = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    const b = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect([a.status, b.status]).toEqual([200, 200]);

    const c = await RawClient.connect(gw.port);
    c.write(`CONNECT g.whatsapp.net:${echo.port} HTTP/1.1\r\n\r\n`);
    const refused = await c.head();
    expect(refused.status).toBe(429);
    expect(refused.headers['x-wa-egress-reason']).toBe('client_limit');
    expect(refused.headers['retry-after']).toMatch(/^\d+$/);
    await c.waitClosed();
    const record = await eventually(() => gw.audit().find((r) => r.reason === 'client_limit'));
    expect(record).toMatchObject({ event: 'egress.denied', listener: 'proxy', enforced: true });
    expect(await refusals(metrics, 'client_limit')).toBe(1);

    // Another source address is another client.
    const other = await connectFrom(gw.port, '127.0.0.2', `g.whatsapp.net:${echo.port}`);
    expect(other.status).toBe('HTTP/1.1 200 Connection established');
    other.socket.destroy();

    // The tunnels still carry data; once one closes, the client may open another.
    a.client.write('ping');
    expect((await a.client.bytes(4)).toString()).toBe('ping');
    b.client.destroy();
    await eventually(() => gw.gw.admission.connections <= 1);
    const d = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(d.status).toBe(200);
    a.client.destroy();
    d.client.destroy();
  });

  it('max_connections: 503 over_capacity with Retry-After, SOCKS general failure, forward closed; each with a record and a metric', async () => {
    const { gw, echo, metrics } = await setup({ max_connections: 2 });
    const socksPort = gw.gw.address('socks').port;
    const chatPort = gw.gw.address('chat').port;
    const t = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(t.status).toBe(200);
    const f = await RawClient.connect(chatPort);
    f.write('fwd');
    expect((await f.bytes(3)).toString()).toBe('fwd');

    const http = await RawClient.connect(gw.port);
    http.write(`CONNECT g.whatsapp.net:${echo.port} HTTP/1.1\r\n\r\n`);
    const refused = await http.head();
    expect(refused.status).toBe(503);
    expect(refused.headers['x-wa-egress-reason']).toBe('over_capacity');
    expect(refused.headers['retry-after']).toMatch(/^\d+$/);

    const socks = await RawClient.connect(socksPort);
    socks.write(socksConnect(echo.port));
    await socks.waitClosed();
    // "No authentication", then the reply: general failure (0x01).
    expect([...socks.data.subarray(0, 4)]).toEqual([5, 0, 5, 1]);

    const fwd = await RawClient.connect(chatPort);
    fwd.write('x');
    await fwd.waitClosed();
    expect(fwd.data.length).toBe(0);

    const records = await eventually(() => {
      const r = gw.audit().filter((x) => x.reason === 'over_capacity');
      return r.length >= 3 ? r : undefined;
    });
    expect(records.map((r) => r.listener).sort()).toEqual(['chat', 'proxy', 'socks']);
    for (const r of records) expect(r).toMatchObject({ event: 'egress.denied', enforced: true });
    expect(await refusals(metrics, 'over_capacity')).toBe(3);
    // The open tunnels were never touched.
    t.client.write('still');
    expect((await t.client.bytes(5)).toString()).toBe('still');
    t.client.destroy();
    f.destroy();
  });

  it('max_head_bytes: a larger head gets 431 head_too_large, on the CONNECT fast path and in Node’s parser alike', async () => {
    const { gw, echo, metrics } = await setup({ max_head_bytes: '2KiB' });
    const big = 'a'.repeat(3000);
    const connect = await RawClient.connect(gw.port);
    connect.write(`CONNECT g.whatsapp.net:${echo.port} HTTP/1.1\r\nX-Big: ${big}\r\n\r\n`);
    const r1 = await connect.head();
    expect(r1.status).toBe(431);
    expect(r1.headers['x-wa-egress-reason']).toBe('head_too_large');
    const get = await RawClient.connect(gw.port);
    get.write(`GET http://g.whatsapp.net:${echo.port}/ HTTP/1.1\r\nX-Big: ${big}\r\n\r\n`);
    expect((await get.head()).status).toBe(431);
    // Under the limit: served.
    const ok = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`, '');
    expect(ok.status).toBe(200);
    ok.client.destroy();
    const fits = await RawClient.connect(gw.port);
    fits.write(`CONNECT g.whatsapp.net:${echo.port} HTTP/1.1\r\nX-Fits: ${'a'.repeat(1500)}\r\n\r\n`);
    expect((await fits.head()).status).toBe(200);
    fits.destroy();
    const records = await eventually(() => {
      const r = gw.audit().filter((x) => x.reason === 'head_too_large');
      return r.length >= 2 ? r : undefined;
    });
    expect(records[0]).toMatchObject({ event: 'egress.denied', listener: 'proxy', enforced: true });
    expect(await refusals(metrics, 'head_too_large')).toBe(2);
  });

  it('max_head_bytes from a reload applies to the next connection, in Node’s parser too', async () => {
    const origin = await startTcpServer('127.0.0.1', (s) => s.once('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok')));
    cleanup.push(() => origin.close());
    const { gw } = await setup({ max_head_bytes: '2KiB' }, { policy: { rules: [{ name: 'wa', hosts: ['g.whatsapp.net'], ports: [origin.port] }], allow_ranges: ['127.0.0.1/32'] } });
    const get = async () => {
      const c = await RawClient.connect(gw.port);
      c.write(`GET http://g.whatsapp.net:${origin.port}/ HTTP/1.1\r\nHost: g.whatsapp.net\r\nX-Big: ${'a'.repeat(3000)}\r\n\r\n`);
      const { status } = await c.head();
      c.destroy();
      return status;
    };
    expect(await get()).toBe(431);
    const config = gw.gw.config;
    expect(await gw.gw.apply({ ...config, limits: { ...config.limits, max_head_bytes: 8192 } })).toEqual([]);
    expect(await get()).toBe(200);
    expect(await gw.gw.apply({ ...config, limits: { ...config.limits, max_head_bytes: 2048 } })).toEqual([]);
    expect(await get()).toBe(431);
  });

  it('2,000 slowloris clients hold at most max_handshakes slots: tunnels and a well-behaved client are still served', { timeout: 60_000 }, async () => {
    const { gw, echo, metrics } = await setup({}, { timeouts: { handshake: '60s' } });
    const socksPort = gw.gw.address('socks').port;
    const MAX = 1000; // the default
    const existing = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(existing.status).toBe(200);

    const slow: Socket[] = [];
    const timers: NodeJS.Timeout[] = [];
    cleanup.push(() => {
      timers.forEach(clearInterval);
      slow.forEach((s) => s.destroy());
    });
    const head = Buffer.from(`CONNECT g.whatsapp.net:${echo.port} HTTP/1.1\r\nX-Slow: ${'a'.repeat(200)}`);
    const greeting = Buffer.from([5, 1, 0]);
    const open = (port: number, first: Buffer) =>
      new Promise<void>((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1' });
        slow.push(s);
        s.on('error', () => {});
        s.once('connect', () => {
          s.write(first.subarray(0, 1));
          let i = 1;
          // One more byte a second: never a complete head.
          const t = setInterval(() => i < first.length - 1 && s.writable && s.write(first.subarray(i, ++i)), 1000);
          timers.push(t);
          s.once('close', () => clearInterval(t));
          resolve();
        });
        s.once('close', () => resolve());
      });
    // 1,800 on the HTTP listener, 200 on SOCKS, in batches (the accept queue is 511 deep).
    for (let b = 0; b < 20; b++) {
      await Promise.all(Array.from({ length: 100 }, () => (b % 10 === 9 ? open(socksPort, greeting) : open(gw.port, head))));
      expect(gw.gw.admission.handshakes).toBeLessThanOrEqual(MAX);
    }
    await eventually(() => gw.gw.admission.handshakes === MAX);

    // While they press: the existing tunnel carries data, a new CONNECT and a new SOCKS tunnel are served.
    existing.client.write('ping');
    expect((await existing.client.bytes(4)).toString()).toBe('ping');
    for (let i = 0; i < 3; i++) {
      const c = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
      expect(c.status).toBe(200);
      c.client.write('pong');
      expect((await c.client.bytes(4)).toString()).toBe('pong');
      c.client.destroy();
      const s = await RawClient.connect(socksPort);
      s.write(Buffer.from([5, 1, 0]));
      await s.bytes(2);
      s.write(socksConnect(echo.port).subarray(3));
      await s.bytes(2 + 10);
      expect(s.data[3]).toBe(0);
      s.destroy();
    }
    expect(gw.gw.admission.handshakes).toBeLessThanOrEqual(MAX);

    // The oldest were dropped, each with its record; those that remain are still held.
    const dropped = await eventually(() => {
      const r = gw.audit().filter((x) => x.reason === 'over_capacity');
      return r.length >= 1000 ? r : undefined;
    });
    expect(dropped.every((r) => r.event === 'egress.denied' && (r.listener === 'proxy' || r.listener === 'socks'))).toBe(true);
    expect(await refusals(metrics, 'over_capacity')).toBe(dropped.length);
    expect(parseProm(await metrics.text()).get('wa_egress_handshakes_in_progress')).toBeLessThanOrEqual(MAX);
    expect(slow.filter((s) => !s.destroyed && s.readyState === 'open').length).toBeGreaterThanOrEqual(MAX - 10);
    existing.client.destroy();
  });
});

describe('limits configuration', () => {
  const base = { listen: { proxy: '127.0.0.1:3128' }, policy: { rules: [] } };
  const problems = (extra: Record<string, unknown>) => {
    try {
      parseConfig(JSON.stringify({ ...base, ...extra }), '/tmp/c.yaml');
    } catch (err) {
      if (err instanceof ConfigError) return err.issues.map((i) => `${i.path}: ${i.message}`);
      throw err;
    }
    return [];
  };

  it('has the documented defaults', () => {
    const c = parseConfig(JSON.stringify(base), '/tmp/c.yaml');
    expect(c.limits).toEqual({ max_connections: 0, max_connections_per_client: 0, max_handshakes: 1000, max_head_bytes: 16384 });
    expect(c.listen.admin).toBeUndefined();
  });

  it('names the key and the problem', () => {
    expect(problems({ limits: { max_handshakes: -1 } })).toEqual([expect.stringMatching(/^limits\.max_handshakes: .*0/)]);
    expect(problems({ limits: { max_connections: 1.5 } })).toEqual([expect.stringMatching(/^limits\.max_connections: .*whole/)]);
    expect(problems({ limits: { max_head_bytes: '100B' } })).toEqual([expect.stringMatching(/^limits\.max_head_bytes: .*1024/)]);
    expect(problems({ limits: { max_conns: 1 } })).toEqual(['limits.max_conns: unknown key']);
  });

  it('listen.admin: an address of its own, and not a proxying listener', () => {
    expect(problems({ listen: { proxy: '127.0.0.1:3128', admin: '127.0.0.1:3128' } })).toEqual([expect.stringMatching(/^listen\.admin: .*overlaps listener "proxy"/)]);
    expect(problems({ listen: { proxy: '127.0.0.1:3128', admin: '0.0.0.0:3128' } })).toHaveLength(1);
    expect(problems({ listen: { admin: '127.0.0.1:9090' } })).toEqual([expect.stringMatching(/at least one listener/)]);
    expect(problems({ listen: { proxy: '127.0.0.1:3128', admin: 'localhost:9090' } })).toEqual([expect.stringMatching(/^listen\.admin: /)]);
    expect(problems({ listen: { proxy: '127.0.0.1:3128', admin: '127.0.0.1:9090' } })).toEqual([]);
  });
});
