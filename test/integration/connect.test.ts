import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { auditBarrier, connectVia, curl, eventually, RawClient, startClosedPort, startGateway, startGatewayOnPorts, startTcpServer, type TestGateway, type TestServer } from '../helpers.js';

const run = promisify(execFile);

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function setup(extra: Record<string, unknown> = {}, echoHost = '127.0.0.1'): Promise<{ gw: TestGateway; echo: TestServer }> {
  const echo = await startTcpServer(echoHost);
  const { policy, dns, ...rest } = extra as { policy?: Record<string, unknown>; dns?: Record<string, unknown> };
  const gw = await startGateway({
    policy: {
      rules: [{ name: 'chat', hosts: ['g.whatsapp.net', '.*.cdn.whatsapp.net', 'ten.example'], ports: [echo.port] }],
      allow_ranges: ['127.0.0.1/32', '::1/128'],
      ...policy,
    },
    dns: {
      hosts: { 'g.whatsapp.net': '127.0.0.1', 'media.cdn.whatsapp.net': '127.0.0.1', 'ten.example': '127.0.0.2', 'v6.whatsapp.net': '::1' },
      ...dns,
    },
    timeouts: { dns: '300ms', connect: '2s' },
    ...rest,
  });
  cleanup.push(() => echo.close(), () => gw.close());
  return { gw, echo };
}

describe('CONNECT', () => {
  it('tunnels to an allowed name and echoes data both ways', async () => {
    const { gw, echo } = await setup();
    const { client, status } = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(status).toBe(200);
    client.write('hello chatd');
    expect((await client.bytes(11)).toString()).toBe('hello chatd');
    client.socket.end();
    await client.waitClosed();
    const records = await eventually(() => {
      const r = gw.audit();
      return r.some((x) => x.event === 'egress.closed') && r;
    });
    const allowed = records.find((r) => r.event === 'egress.allowed')!;
    expect(allowed).toMatchObject({
      listener: 'proxy',
      proto: 'connect',
      dest_host: 'g.whatsapp.net',
      dest_port: echo.port,
      dest_ip: '127.0.0.1',
      rule: 'chat',
    });
    expect(allowed.client).toMatch(/^127\.0\.0\.1:\d+$/);
    const closed = records.find((r) => r.event === 'egress.closed')!;
    expect(closed).toMatchObject({ id: allowed.id, bytes_up: 11, bytes_down: 11, close_reason: 'client_closed' });
    expect(typeof closed.duration_ms).toBe('number');
  });

  it('forwards bytes the client sent right after the request head', async () => {
    const { gw, echo } = await setup();
    const { client, status } = await connectVia(gw.port, `media.cdn.whatsapp.net:${echo.port}`, 'early-bytes');
    expect(status).toBe(200);
    expect((await client.bytes(11)).toString()).toBe('early-bytes');
    client.destroy();
  });

  it('accepts IPv6 listeners and [v6]:port targets', async () => {
    const echo = await startTcpServer('::1');
    const gw = await startGateway({
      listen: { proxy: '[::1]:0' },
      policy: { rules: [{ name: 'v6', ip_ranges: ['::1/128'], hosts: ['v6.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['::1/128'] },
      dns: { hosts: { 'v6.whatsapp.net': '::1' } },
    });
    cleanup.push(() => echo.close(), () => gw.close());
    for (const target of [`[::1]:${echo.port}`, `v6.whatsapp.net:${echo.port}`]) {
      const client = await RawClient.connect(gw.port, '::1');
      client.write(`CONNECT ${target} HTTP/1.1\r\n\r\nping`);
      expect((await client.head()).status).toBe(200);
      expect((await client.bytes(4)).toString()).toBe('ping');
      client.destroy();
    }
    await eventually(() => gw.audit().filter((r) => r.event === 'egress.allowed').length === 2);
    expect(gw.audit()[0]!.client).toMatch(/^\[::1\]:\d+$/);
  });

  it.each([
    ['evil.example.com:PORT', 403, 'host_not_allowed'],
    ['g.whatsapp.net.evil.example:PORT', 403, 'host_not_allowed'],
    ['evilg.whatsapp.net:PORT', 403, 'host_not_allowed'],
    ['cdn.whatsapp.net:PORT', 403, 'host_not_allowed'],
    ['g.whatsapp.net:1', 403, 'port_not_allowed'],
    ['127.0.0.1:PORT', 403, 'ip_not_allowed'],
    ['ten.example:PORT', 403, 'special_range'],
    ['unmapped.cdn.whatsapp.net:PORT', 502, 'dns_failed'],
    ['g.whatsapp.net', 400, 'bad_request'],
    ['g.whatsapp.net:0', 400, 'bad_request'],
    ['g.whatsapp.net:65536', 400, 'bad_request'],
    ['::1:PORT', 400, 'bad_request'],
    ['user@g.whatsapp.net:PORT', 400, 'bad_request'],
    ['g.whats%61pp.net:PORT', 400, 'bad_request'],
    ['g.whatsapp.net:+PORT', 400, 'bad_request'],
  ])('%s → %i %s', async (target, status, reason) => {
    const { gw, echo } = await setup();
    const authority = target.replace('PORT', String(echo.port));
    const client = await RawClient.connect(gw.port);
    client.write(`CONNECT ${authority} HTTP/1.1\r\n\r\n`);
    const head = await client.head();
    expect(head.status).toBe(status);
    expect(head.headers['x-wa-egress-reason']).toBe(reason);
    await client.waitClosed();
    const records = gw.audit();
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({
      event: status === 502 ? 'egress.failed' : 'egress.denied',
      listener: 'proxy',
      proto: 'connect',
      reason,
    });
    if (status === 403) expect(records[0]!.enforced).toBe(true);
    expect(echo.connections).toBe(0);
  });

  it('answers 403 special_range with the range in the audit record', async () => {
    const { gw, echo } = await setup();
    const { status } = await connectVia(gw.port, `ten.example:${echo.port}`);
    expect(status).toBe(403);
    expect(gw.audit()[0]).toMatchObject({ reason: 'special_range', range: 'loopback', dest_ip: '127.0.0.2', rule: 'chat' });
  });

  it('judges every IP literal form as the address it names', async () => {
    const echo = await startTcpServer('127.0.0.1');
    const gw = await startGateway({
      policy: { rules: [{ name: 'lo', ip_ranges: ['127.0.0.0/8'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
    });
    cleanup.push(() => echo.close(), () => gw.close());
    const allowed = ['2130706433', '0x7f000001', '0177.0.0.1', '127.1', '127.0.0.1.', '[::ffff:127.0.0.1]', '[0:0:0:0:0:ffff:7f00:1]'];
    for (const host of allowed) {
      const { client, status } = await connectVia(gw.port, `${host}:${echo.port}`, 'x');
      expect(status, host).toBe(200);
      expect((await client.bytes(1)).toString()).toBe('x');
      client.destroy();
    }
    const denied = ['2130706434', '0x7f000002', '0177.0.0.2', '127.2', '127.0.0.2.', '[::ffff:127.0.0.2]', '[::ffff:7f00:2]'];
    const before = echo.connections;
    for (const host of denied) {
      const { status, headers } = await connectVia(gw.port, `${host}:${echo.port}`);
      expect(status, host).toBe(403);
      expect(headers['x-wa-egress-reason']).toBe('special_range');
    }
    expect(echo.connections).toBe(before);
    const records = await eventually(() => {
      const r = gw.audit().filter((x) => x.event === 'egress.denied');
      return r.length === denied.length && r;
    });
    for (const r of records) expect(r.dest_ip).toBe('127.0.0.2');
  });

  it('refuses a destination that is the proxy itself (loop), whatever allow_ranges says', async () => {
    const { gw, ports } = await startGatewayOnPorts(1, ([port]) => ({
      listen: { proxy: `127.0.0.1:${port}` },
      policy: { rules: [{ name: 'self', ip_ranges: ['127.0.0.0/8'], hosts: ['g.whatsapp.net'], ports: [port] }], allow_ranges: ['127.0.0.0/8'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    }));
    cleanup.push(() => gw.close());
    const port = ports[0]!;
    for (const t of [`127.0.0.1:${port}`, `g.whatsapp.net:${port}`, `0x7f000001:${port}`, `[::ffff:127.0.0.1]:${port}`]) {
      const { status, headers } = await connectVia(port, t);
      expect(status, t).toBe(403);
      expect(headers['x-wa-egress-reason']).toBe('loop');
    }
    expect(gw.audit().map((r) => r.reason)).toEqual(['loop', 'loop', 'loop', 'loop']);
  });

  it('treats a wildcard listener as every local address on its port', async () => {
    const { gw, ports } = await startGatewayOnPorts(1, ([port]) => ({
      listen: { proxy: `0.0.0.0:${port}` },
      policy: { rules: [{ name: 'self', ip_ranges: ['127.0.0.0/8'], ports: [port] }], allow_ranges: ['127.0.0.0/8'] },
    }));
    cleanup.push(() => gw.close());
    const port = ports[0]!;
    const { status, headers } = await connectVia(port, `127.0.0.9:${port}`);
    expect(status).toBe(403);
    expect(headers['x-wa-egress-reason']).toBe('loop');
  });
});

describe('tunnel behaviour', () => {
  it('preserves half-close: the client ends its side and still receives the reply', async () => {
    // A server that answers only after the client has finished sending.
    const server = await startTcpServer('127.0.0.1', (s) => {
      const chunks: Buffer[] = [];
      s.on('data', (d) => chunks.push(d));
      s.on('end', () => {
        setTimeout(() => s.end(`got ${Buffer.concat(chunks).length} bytes`), 50);
      });
    });
    const gw = await startGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [server.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    });
    cleanup.push(() => server.close(), () => gw.close());
    const { client, status } = await connectVia(gw.port, `g.whatsapp.net:${server.port}`);
    expect(status).toBe(200);
    client.write('x'.repeat(1000));
    client.socket.end();
    await eventually(() => client.ended);
    expect(client.text).toBe('got 1000 bytes');
    await client.waitClosed();
    const closed = await eventually(() => gw.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ bytes_up: 1000, bytes_down: 14, close_reason: 'client_closed' });
  });

  it('turns TCP keepalive on for both legs of a tunnel, as the kernel sees them', async () => {
    const { gw, echo } = await setup({ keepalive: '7s' });
    const { client, status } = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(status).toBe(200);
    const ours = client.socket.localPort;
    // `ss -o` shows a keepalive timer on a socket that has SO_KEEPALIVE set.
    const legs = async () => {
      // Only this test's sockets: a busy machine's full list can be megabytes.
      const { stdout } = await run('ss', ['-tnoH', 'state', 'established', `( sport = :${gw.port} or dport = :${echo.port} )`], { maxBuffer: 16 * 1024 * 1024 });
      const lines = stdout.split('\n');
      const clientLeg = lines.find((l) => new RegExp(`127\\.0\\.0\\.1:${gw.port}\\s+127\\.0\\.0\\.1:${ours}\\b`).test(l));
      const upstreamLeg = lines.find((l) => new RegExp(`127\\.0\\.0\\.1:\\d+\\s+127\\.0\\.0\\.1:${echo.port}\\b`).test(l));
      return { clientLeg, upstreamLeg };
    };
    // Switched on within a second or so (src/net/keepalive.ts).
    let seen = await legs();
    for (let i = 0; i < 50 && !(seen.clientLeg?.includes('timer:(keepalive') && seen.upstreamLeg?.includes('timer:(keepalive')); i++) {
      await new Promise((r) => setTimeout(r, 100));
      seen = await legs();
    }
    expect(seen.clientLeg).toMatch(/timer:\(keepalive,/);
    expect(seen.upstreamLeg).toMatch(/timer:\(keepalive,/);
    client.destroy();
  });

  it('an upstream that hangs up first: the tunnel ends with close_reason upstream_closed, on every listener', async () => {
    // Answers one message, then closes its side.
    const server = await startTcpServer('127.0.0.1', (s) => s.once('data', (d) => s.end(`bye ${d}`)));
    const gw = await startGateway({
      listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0', forwards: [{ name: 'fwd', listen: '127.0.0.1:0', to: `g.whatsapp.net:${server.port}` }] },
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [server.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    });
    cleanup.push(() => server.close(), () => gw.close());
    const viaConnect = (await connectVia(gw.port, `g.whatsapp.net:${server.port}`)).client;
    const viaSocks = await RawClient.connect(gw.gw.address('socks').port);
    viaSocks.write(Buffer.from([5, 1, 0, 5, 1, 0, 3, 14, ...Buffer.from('g.whatsapp.net'), server.port >> 8, server.port & 255]));
    await viaSocks.bytes(12);
    viaSocks.data = Buffer.alloc(0);
    const viaFwd = await RawClient.connect(gw.gw.address('fwd').port);
    for (const [c, listener] of [[viaConnect, 'proxy'], [viaSocks, 'socks'], [viaFwd, 'fwd']] as const) {
      c.write('hi');
      // The upstream's FIN reaches the client; the client then closes its side too.
      await eventually(() => c.ended);
      expect(c.text, listener).toBe('bye hi');
      c.socket.end();
      await eventually(() => c.closed);
    }
    const closed = await eventually(() => {
      const r = gw.audit().filter((x) => x.event === 'egress.closed');
      return r.length === 3 && r;
    });
    expect(closed.map((r) => `${r.listener}:${r.close_reason}`).sort()).toEqual(['fwd:upstream_closed', 'proxy:upstream_closed', 'socks:upstream_closed']);
    for (const r of closed) expect(r).toMatchObject({ bytes_up: 2, bytes_down: 6 });
  });

  it('propagates a FIN that arrives while the upstream is being dialled', async () => {
    const server = await startTcpServer('127.0.0.1', (s) => {
      const chunks: Buffer[] = [];
      s.on('data', (d) => chunks.push(d));
      s.on('end', () => s.end(`echo:${Buffer.concat(chunks)}`));
    });
    const dns = await import('../fixtures/dns-server.js');
    // A slow DNS answer keeps the dial pending while the client's FIN arrives.
    const slow = await dns.startDns({ 'g.whatsapp.net': { A: ['127.0.0.1'] } });
    const gw = await startGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [server.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { servers: [slow.server] },
    });
    cleanup.push(() => server.close(), () => slow.close(), () => gw.close());
    const client = await RawClient.connect(gw.port);
    client.socket.end(`CONNECT g.whatsapp.net:${server.port} HTTP/1.1\r\n\r\nlast words`);
    expect((await client.head()).status).toBe(200);
    await eventually(() => client.ended);
    expect(client.text).toBe('echo:last words');
    const closed = await eventually(() => gw.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ bytes_up: 10, close_reason: 'client_closed' });
  });

  it('moves a large transfer intact with back-pressure (slow reader)', async () => {
    const size = 64 * 1024 * 1024;
    const payload = randomBytes(1024 * 1024);
    const server = await startTcpServer('127.0.0.1', (s) => {
      let sent = 0;
      const pump = () => {
        while (sent < size) {
          sent += payload.length;
          if (!s.write(payload)) return void s.once('drain', pump);
        }
        s.end();
      };
      pump();
    });
    const gw = await startGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [server.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    });
    cleanup.push(() => server.close(), () => gw.close());
    const sock = net.connect(gw.port, '127.0.0.1');
    sock.write(`CONNECT g.whatsapp.net:${server.port} HTTP/1.1\r\n\r\n`);
    let received = 0;
    let headDone = false;
    let maxRss = 0;
    const startRss = process.memoryUsage().rss;
    const hash = (await import('node:crypto')).createHash('sha256');
    await new Promise<void>((resolve, reject) => {
      sock.on('data', (d: Buffer) => {
        if (!headDone) {
          const i = d.indexOf('\r\n\r\n');
          expect(d.subarray(0, 12).toString()).toBe('HTTP/1.1 200');
          headDone = true;
          d = d.subarray(i + 4);
        }
        received += d.length;
        hash.update(d);
        // Read slowly: pause now and then so the proxy must hold back the sender.
        if (received % (8 * 1024 * 1024) < d.length) {
          sock.pause();
          maxRss = Math.max(maxRss, process.memoryUsage().rss);
          setTimeout(() => sock.resume(), 100);
        }
      });
      sock.on('end', () => resolve());
      sock.on('error', reject);
    });
    expect(received).toBe(size);
    const expected = (await import('node:crypto')).createHash('sha256');
    for (let i = 0; i < size / payload.length; i++) expected.update(payload);
    expect(hash.digest('hex')).toBe(expected.digest('hex'));
    // The proxy runs in this process: without back-pressure it would have
    // buffered most of the 64 MiB while the reader was paused.
    expect(maxRss - startRss).toBeLessThan(48 * 1024 * 1024);
    sock.destroy();
  });

  it('cuts an idle tunnel when timeouts.idle is set, with a close record that says so', async () => {
    const { gw, echo } = await setup({ timeouts: { idle: '300ms', dns: '300ms' } });
    const { client, status } = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(status).toBe(200);
    client.write('a');
    await client.bytes(1);
    await client.waitClosed();
    const closed = await eventually(() => gw.audit().find((r) => r.event === 'egress.closed'));
    expect(closed.close_reason).toBe('idle_timeout');
  });

  it('tries the next address when the first refuses', async () => {
    const echo = await startTcpServer('127.0.0.1');
    const gw = await startGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.0/8'] },
      dns: { hosts: { 'g.whatsapp.net': ['127.0.0.3', '127.0.0.1'] } },
    });
    cleanup.push(() => echo.close(), () => gw.close());
    // 127.0.0.3 has no listener on the echo port (the echo binds 127.0.0.1 only).
    const { client, status } = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(status).toBe(200);
    client.write('ok');
    expect((await client.bytes(2)).toString()).toBe('ok');
    client.destroy();
    expect(gw.audit().find((r) => r.event === 'egress.allowed')!.dest_ip).toBe('127.0.0.1');
  });

  it('answers 502 connect_failed when the destination refuses', async () => {
    const closed = await startClosedPort();
    cleanup.push(async () => closed.close());
    const port = closed.port;
    const gw = await startGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    });
    cleanup.push(() => gw.close());
    const { status, headers } = await connectVia(gw.port, `g.whatsapp.net:${port}`);
    expect(status).toBe(502);
    expect(headers['x-wa-egress-reason']).toBe('connect_failed');
    expect(gw.audit()[0]).toMatchObject({ event: 'egress.failed', reason: 'connect_failed', rule: 'r' });
  });

  it('works with curl -p -x (https_proxy style tunnelling)', async () => {
    const http = await import('node:http');
    const origin = http.createServer((_req, res) => res.end('hello through the tunnel'));
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', () => r()));
    const port = (origin.address() as net.AddressInfo).port;
    cleanup.push(() => new Promise((r) => origin.close(() => r())));
    const gw = await startGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    });
    cleanup.push(() => gw.close());
    const proxy = `http://127.0.0.1:${gw.port}`;
    const ok = await curl(['-s', '-p', '-x', proxy, `http://g.whatsapp.net:${port}/`]);
    expect(ok.stdout).toBe('hello through the tunnel');
    const denied = await curl(['-s', '-p', '-x', proxy, '-o', '/dev/null', '-w', '%{http_connect}', `http://evil.example:${port}/`]);
    expect(denied.code).toBe(56); // CURLE_RECV_ERROR: the proxy refused the CONNECT
    expect(denied.stdout).toBe('403');
  });
});


describe('CONNECT read without Node’s HTTP parser, and handed to it', () => {
  it('a complete CONNECT head in the first packet is served by the plain listener, not an HTTP socket', async () => {
    const { gw, echo } = await setup();
    const { client, status } = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`, 'early bytes');
    expect(status).toBe(200);
    await eventually(() => client.text === 'early bytes');
    const [tunnel] = [...gw.gw.tunnels];
    // Node's HTTP server marks the sockets it parses as its own.
    expect((tunnel!.client as unknown as { server: unknown }).server).not.toBeInstanceOf(http.Server);
    client.destroy();
  });

  it('a head that arrives in pieces goes to Node’s parser and tunnels the same', async () => {
    const { gw, echo } = await setup();
    const client = await RawClient.connect(gw.port);
    client.write('CONNECT g.whatsapp.net:');
    await new Promise((r) => setTimeout(r, 50));
    client.write(`${echo.port} HTTP/1.1\r\nHost: g\r\n\r\nafter`);
    expect((await client.head()).status).toBe(200);
    await eventually(() => client.text === 'after');
    const [tunnel] = [...gw.gw.tunnels];
    expect((tunnel!.client as unknown as { server: unknown }).server).toBeInstanceOf(http.Server);
    client.destroy();
    const closed = await eventually(() => gw.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ proto: 'connect', dest_host: 'g.whatsapp.net', bytes_up: 5 });
  });

  it('a connection that sends nothing is answered 408 and audited handshake_timeout', async () => {
    const { gw } = await setup({ timeouts: { handshake: '300ms' } });
    const client = await RawClient.connect(gw.port);
    await client.waitClosed();
    expect(client.text).toMatch(/^HTTP\/1.1 408 /);
    const rec = await eventually(() => gw.audit()[0]);
    expect(rec).toMatchObject({ event: 'egress.denied', reason: 'handshake_timeout', listener: 'proxy', enforced: true });
  });

  it('a connection closed before any byte leaves no record', async () => {
    const { gw } = await setup();
    const client = await RawClient.connect(gw.port);
    client.socket.end();
    await client.waitClosed();
    // The gateway has seen the close; a later connection's record comes first.
    expect(await auditBarrier(gw)).toEqual([]);
  });
});
