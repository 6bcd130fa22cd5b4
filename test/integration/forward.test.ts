import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { startDns } from '../fixtures/dns-server.js';
import { eventually, RawClient, startBlackhole, startGateway, startTcpServer, type TestServer } from '../helpers.js';

/** Raw TCP forward listeners: a fixed target, judged and dialled afresh on every connection. */

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function forwardGateway(to: string, echo: TestServer, extra: { hosts?: Record<string, unknown>; servers?: string[] } = {}) {
  const gw = await startGateway({
    listen: { forwards: [{ name: 'chatd', listen: '127.0.0.1:0', to }] },
    policy: { rules: [{ name: 'chat', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.0/8'] },
    dns: { hosts: extra.hosts ?? { 'g.whatsapp.net': '127.0.0.1' }, ...(extra.servers ? { servers: extra.servers } : {}) },
    timeouts: { dns: '300ms', connect: '2s' },
  });
  cleanup.push(() => gw.close());
  return { gw, port: gw.gw.address('chatd').port };
}

describe('forward listeners', () => {
  it('tunnels every connection to the fixed target and audits it as proto tcp', async () => {
    const echo = await startTcpServer();
    cleanup.push(() => echo.close());
    const { gw, port } = await forwardGateway(`g.whatsapp.net:${echo.port}`, echo);
    const client = await RawClient.connect(port);
    client.write('chat bytes');
    expect((await client.bytes(10)).toString()).toBe('chat bytes');
    client.socket.end();
    await client.waitClosed();
    const records = await eventually(() => {
      const r = gw.audit();
      return r.length === 2 && r;
    });
    expect(records[0]).toMatchObject({ event: 'egress.allowed', listener: 'chatd', proto: 'tcp', dest_host: 'g.whatsapp.net', dest_port: echo.port, dest_ip: '127.0.0.1', rule: 'chat' });
    expect(records[1]).toMatchObject({ event: 'egress.closed', listener: 'chatd', bytes_up: 10, bytes_down: 10, close_reason: 'client_closed' });
  });

  it('closes a denied connection at once, with an egress.denied record', async () => {
    const echo = await startTcpServer();
    cleanup.push(() => echo.close());
    const { gw, port } = await forwardGateway(`evil.example:${echo.port}`, echo);
    const client = await RawClient.connect(port);
    client.write('should go nowhere');
    await client.waitClosed();
    expect(client.data.length).toBe(0);
    expect(echo.connections).toBe(0);
    expect(gw.audit()).toEqual([expect.objectContaining({ event: 'egress.denied', listener: 'chatd', proto: 'tcp', reason: 'host_not_allowed', enforced: true })]);
  });

  it('tries the next address when the first refuses', async () => {
    const echo = await startTcpServer('127.0.0.1');
    cleanup.push(() => echo.close());
    const { gw, port } = await forwardGateway(`g.whatsapp.net:${echo.port}`, echo, { hosts: { 'g.whatsapp.net': ['127.0.0.3', '127.0.0.1'] } });
    const client = await RawClient.connect(port);
    client.write('x');
    expect((await client.bytes(1)).toString()).toBe('x');
    client.destroy();
    expect(gw.audit()[0]).toMatchObject({ event: 'egress.allowed', dest_ip: '127.0.0.1' });
  });

  it('tries the next address when the first times out, within timeouts.connect overall', async () => {
    const blackhole = await startBlackhole(); // 127.0.0.1:P never answers a SYN
    const echo = await startTcpServer('127.0.0.2', undefined, blackhole.port); // 127.0.0.2:P echoes
    cleanup.push(() => blackhole.close(), () => echo.close());
    const { gw, port } = await forwardGateway(`g.whatsapp.net:${blackhole.port}`, echo, { hosts: { 'g.whatsapp.net': ['127.0.0.1', '127.0.0.2'] } });
    const client = await RawClient.connect(port);
    client.write('late');
    expect((await client.bytes(4)).toString()).toBe('late');
    client.destroy();
    // One record for the connection: the address that answered, no failure for the one that did not.
    expect(gw.audit()[0]).toMatchObject({ event: 'egress.allowed', dest_ip: '127.0.0.2' });
    expect(gw.audit().filter((r) => r.event === 'egress.failed')).toEqual([]);
  });

  it('resolves on every connection, so a DNS change applies to the next one', async () => {
    const echo = await startTcpServer();
    const dns = await startDns({ 'g.whatsapp.net': (n) => ({ A: [n <= 1 ? '127.0.0.1' : '127.0.0.2'], ttl: 0 }) });
    cleanup.push(() => echo.close(), () => dns.close());
    const gw = await startGateway({
      listen: { forwards: [{ name: 'chatd', listen: '127.0.0.1:0', to: `g.whatsapp.net:${echo.port}` }] },
      policy: { rules: [{ name: 'chat', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { servers: [dns.server] },
    });
    cleanup.push(() => gw.close());
    const port = gw.gw.address('chatd').port;
    const first = await RawClient.connect(port);
    first.write('1');
    await first.bytes(1);
    first.destroy();
    const second = await RawClient.connect(port);
    await second.waitClosed();
    expect(echo.connections).toBe(1);
    // Two A queries (one per connection), whatever the resolver resent or asked for AAAA.
    expect(dns.count('g.whatsapp.net', 'A')).toBe(2);
    expect(gw.audit().find((r) => r.event === 'egress.denied')).toMatchObject({ reason: 'special_range', dest_ip: '127.0.0.2' });
  });

  it('preserves half-close and moves a large transfer intact', async () => {
    const size = 16 * 1024 * 1024;
    const server = await startTcpServer('127.0.0.1', (s) => {
      const hash = createHash('sha256');
      let n = 0;
      s.on('data', (d) => {
        n += d.length;
        hash.update(d);
      });
      s.on('end', () => s.end(`${n} ${hash.digest('hex')}`));
    });
    cleanup.push(() => server.close());
    const { port } = await forwardGateway(`g.whatsapp.net:${server.port}`, server);
    const payload = randomBytes(size);
    const sock = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let reply = '';
    sock.on('data', (d) => (reply += d));
    const ended = new Promise((r) => sock.on('end', r));
    sock.end(payload);
    await ended;
    expect(reply).toBe(`${size} ${createHash('sha256').update(payload).digest('hex')}`);
    sock.destroy();
  });
});

describe('forward listener configuration', () => {
  const base = (listen: string) => `listen:\n${listen}policy:\n  rules:\n    - name: r\n      hosts: [g.whatsapp.net]\n      ports: [5222]\n`;

  it('rejects two listeners on the same address', () => {
    const text = base('  proxy: "0.0.0.0:5222"\n  forwards:\n    - name: chatd\n      listen: "127.0.0.1:5222"\n      to: "g.whatsapp.net:5222"\n');
    expect(() => parseConfig(text, '/tmp/c.yaml')).toThrow(ConfigError);
    try {
      parseConfig(text, '/tmp/c.yaml');
    } catch (err) {
      expect((err as ConfigError).message).toMatch(/listen\.forwards\[0\]\.listen: 127\.0\.0\.1:5222 overlaps listener "proxy"/);
    }
  });

  it('rejects a forward target without a port, naming the key and line', () => {
    const text = base('  forwards:\n    - name: chatd\n      listen: "127.0.0.1:5222"\n      to: "g.whatsapp.net"\n');
    expect(() => parseConfig(text, '/tmp/c.yaml')).toThrow(/\/tmp\/c\.yaml:5:11: listen\.forwards\[0\]\.to: .*missing port/);
  });

  it('rejects duplicate listener names', () => {
    const text = base(
      '  forwards:\n    - name: chatd\n      listen: "127.0.0.1:5222"\n      to: "g.whatsapp.net:5222"\n    - name: chatd\n      listen: "127.0.0.1:8443"\n      to: "g.whatsapp.net:443"\n',
    );
    expect(() => parseConfig(text, '/tmp/c.yaml')).toThrow(/listen\.forwards\[1\]\.name: duplicate listener name "chatd"/);
  });
});
