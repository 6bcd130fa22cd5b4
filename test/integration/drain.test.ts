import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { eventually, RawClient, startTcpServer, type TestServer } from '../helpers.js';
import { connectTunnel, NO_DNS, perTest, refused, reload, roundTrip, serve, socksTunnel, writeConfig, type Served } from './serve-child.js';

/**
 * Graceful drain on a real `wa-egress serve` child and real signals: tunnels
 * of every listener live through a reload and a SIGTERM until
 * `shutdown.drain_timeout`, a second signal ends the drain, HTTP keep-alive
 * connections are let go, and the process exits 0 with its records flushed.
 */

const { defer, echoServer } = perTest();

/** Proxy, SOCKS and a forward to a.test; a.test and b.test are the echo on 127.0.0.1. */
function config(echoPort: number, extra: Record<string, unknown> = {}, hosts = ['a.test', 'b.test'], ports: number[] = [echoPort]) {
  return {
    listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0', forwards: [{ name: 'chatd', listen: '127.0.0.1:0', to: `a.test:${echoPort}` }] },
    policy: { rules: [{ name: 'chat', hosts, ports }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: { 'a.test': '127.0.0.1', 'b.test': '127.0.0.1' }, servers: [NO_DNS] },
    audit: { file: 'audit.log' },
    ...extra,
  };
}

async function start(cfg: object): Promise<Served> {
  const { dir, file } = writeConfig(cfg);
  return serve(file, dir, ['proxy', 'socks', 'chatd']);
}

async function threeTunnels(s: Served, echoPort: number): Promise<RawClient[]> {
  const connect = await connectTunnel(s.port('proxy'), `a.test:${echoPort}`);
  expect(connect.status).toBe(200);
  const socks = await socksTunnel(s.port('socks'), 'a.test', echoPort);
  expect(socks.reply).toBe(0);
  const forward = await RawClient.connect(s.port('chatd'));
  const tunnels = [connect.client, socks.client, forward];
  for (const t of tunnels) expect(await roundTrip(t, 'before')).toBe(true);
  return tunnels;
}

describe('graceful drain', () => {
  it('keeps CONNECT, SOCKS and forward tunnels through a SIGHUP reload and a SIGTERM until drain_timeout, then closes them (shutdown)', async () => {
    const echo = await echoServer();
    const cfg = config(echo.port, { shutdown: { drain_timeout: '5s' } });
    const s = await start(cfg);
    const tunnels = await threeTunnels(s, echo.port);

    // A reload that no longer allows a.test: new connections are refused, open tunnels stay.
    s.rewrite(config(echo.port, { shutdown: { drain_timeout: '5s' } }, ['b.test']));
    expect((await reload(s)).msg).toBe('configuration reloaded');
    expect((await connectTunnel(s.port('proxy'), `a.test:${echo.port}`)).status).toBe(403);
    for (const t of tunnels) expect(await roundTrip(t, 'across the reload')).toBe(true);

    const n = s.logs().length;
    s.child.kill('SIGTERM');
    await s.waitLog((l) => l.msg === 'listeners stopped accepting', n);
    expect(await refused(s.port('proxy'))).toBe(true);
    expect(await refused(s.port('socks'))).toBe(true);
    expect(await refused(s.port('chatd'))).toBe(true);
    for (const t of tunnels) expect(await roundTrip(t, 'while draining')).toBe(true);

    expect(await s.exited).toBe(0);
    for (const t of tunnels) await t.waitClosed();
    expect(s.logs().find((l) => l.msg.startsWith('drain ended'))).toMatchObject({ reason: 'timeout', tunnels: 3 });
    const closed = s.audit().filter((r) => r.event === 'egress.closed');
    expect(closed.map((r) => r.listener).sort()).toEqual(['chatd', 'proxy', 'socks']);
    const sent = 'before'.length + 'across the reload'.length + 'while draining'.length;
    for (const r of closed) expect(r).toMatchObject({ close_reason: 'shutdown', dest_host: 'a.test', dest_ip: '127.0.0.1', bytes_up: sent, bytes_down: sent });
  });

  it('ends the drain at once on a second signal, still flushing and exiting 0', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port, { shutdown: { drain_timeout: '10m' } }));
    const tunnels = await threeTunnels(s, echo.port);
    let n = s.logs().length;
    s.child.kill('SIGTERM');
    await s.waitLog((l) => l.msg === 'listeners stopped accepting', n);
    for (const t of tunnels) expect(await roundTrip(t, 'draining')).toBe(true);
    n = s.logs().length;
    s.child.kill('SIGINT');
    expect(await s.exited).toBe(0);
    expect(s.logs().slice(n).find((l) => l.msg.startsWith('drain ended'))).toMatchObject({ reason: 'signal', tunnels: 3 });
    const closed = s.audit().filter((r) => r.event === 'egress.closed');
    expect(closed).toHaveLength(3);
    expect(closed.every((r) => r.close_reason === 'shutdown')).toBe(true);
  });

  it('lets HTTP requests in flight finish with Connection: close, closes idle keep-alive connections, keeps a CONNECT that followed a request', async () => {
    const echo = await echoServer();
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    let slowArrived = false;
    const origin = http.createServer((req, res) => {
      if (req.url === '/slow') {
        slowArrived = true;
        void held.then(() => res.end('slow body'));
      } else {
        res.end('fast');
      }
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', () => r()));
    defer(() => new Promise<void>((r) => origin.close(() => r())));
    const originPort = (origin.address() as AddressInfo).port;
    const s = await start(config(echo.port, {}, ['a.test', 'b.test'], [echo.port, originPort]));
    const proxy = s.port('proxy');
    const get = (path: string) => `GET http://a.test:${originPort}${path} HTTP/1.1\r\nHost: a.test\r\n\r\n`;

    // A: a keep-alive connection, idle after one request.
    const idle = await RawClient.connect(proxy);
    idle.write(get('/fast'));
    expect((await idle.head()).headers.connection).toBe('keep-alive');
    await idle.bytes(4);
    // B: a request whose answer is held by the origin.
    const busy = await RawClient.connect(proxy);
    busy.write(get('/slow'));
    await eventually(() => slowArrived);
    // C: a request, then a CONNECT on the same connection (served by Node's HTTP parser).
    const tunnel = await RawClient.connect(proxy);
    tunnel.write(get('/fast'));
    await tunnel.head();
    await tunnel.bytes(4);
    tunnel.data = Buffer.alloc(0);
    tunnel.write(`CONNECT a.test:${echo.port} HTTP/1.1\r\nHost: a.test\r\n\r\n`);
    expect((await tunnel.head()).status).toBe(200);

    s.child.kill('SIGTERM');
    await idle.waitClosed();
    expect(await roundTrip(tunnel, 'still here')).toBe(true);
    release();
    const answer = await busy.head();
    expect(answer.status).toBe(200);
    expect(answer.headers.connection).toBe('close');
    await busy.waitClosed();
    expect(busy.text).toBe('slow body');
    // The last connection goes: the drain is over at once.
    tunnel.destroy();
    expect(await s.exited).toBe(0);
    expect(s.logs().find((l) => l.msg.startsWith('drain ended'))).toMatchObject({ reason: 'drained', tunnels: 0, connections: 0 });
    const slow = s.audit().find((r) => r.event === 'egress.closed' && r.proto === 'http' && r.bytes_down === 'slow body'.length);
    expect(slow).toMatchObject({ close_reason: 'done' });
  });

  it('keeps accepting during shutdown.delay, answering with Connection: close', async () => {
    const echo = await echoServer();
    const origin = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', () => r()));
    defer(() => new Promise<void>((r) => origin.close(() => r())));
    const originPort = (origin.address() as AddressInfo).port;
    const s = await start(config(echo.port, { shutdown: { delay: '10m' } }, ['a.test'], [echo.port, originPort]));
    const n = s.logs().length;
    s.child.kill('SIGTERM');
    await s.waitLog((l) => l.msg === 'drain started', n);
    const c = await RawClient.connect(s.port('proxy'));
    c.write(`GET http://a.test:${originPort}/ HTTP/1.1\r\nHost: a.test\r\n\r\n`);
    const answer = await c.head();
    expect(answer.status).toBe(200);
    expect(answer.headers.connection).toBe('close');
    await c.waitClosed();
    const forward = await RawClient.connect(s.port('chatd'));
    expect(await roundTrip(forward, 'accepted while delayed')).toBe(true);
    expect(s.logs().some((l) => l.msg === 'listeners stopped accepting')).toBe(false);
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
  });
});

