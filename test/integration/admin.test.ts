import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { createAdminServer } from '../../src/ops/admin.js';
import { startDns, type TestDns } from '../fixtures/dns-server.js';
import { parseProm } from './prom.js';
import { connectVia, eventually, RawClient, startGateway, startTcpServer, type TestServer } from '../helpers.js';

/**
 * The admin listener of a real gateway process: /metrics read with curl
 * and parsed as Prometheus text, counters read before and after traffic,
 * /healthz, /readyz, 404, 405, its own limits, and no proxying.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const run = promisify(execFile);

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function curl(url: string, ...args: string[]): Promise<{ status: number; body: string }> {
  const { stdout } = await run('curl', ['-q', '-s', '-S', '-w', '\n%{http_code}', ...args, url], { env: { PATH: process.env.PATH } });
  const i = stdout.lastIndexOf('\n');
  return { status: Number(stdout.slice(i + 1)), body: stdout.slice(0, i) };
}

interface Proc {
  child: ChildProcess;
  admin: number;
  proxy: number;
  socks: number;
  fwd: number;
  configText: string;
  metrics(): Promise<Map<string, number>>;
}

async function startProcess(echo: TestServer, dns: TestDns): Promise<Proc> {
  const dir = mkdtempSync(join(tmpdir(), 'wa-egress-admin-'));
  const file = join(dir, 'config.yaml');
  const configText = stringify({
    listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0', admin: '127.0.0.1:0', forwards: [{ name: 'chat', listen: '127.0.0.1:0', to: `g.whatsapp.net:${echo.port}` }] },
    policy: { rules: [{ name: 'wa', hosts: ['g.whatsapp.net', 'q.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' }, servers: [dns.server] },
    audit: { file: 'audit.log' },
  });
  writeFileSync(file, configText);
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file], { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH } });
  cleanup.push(() => {
    child.kill('SIGKILL');
  });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const port = (name: string) =>
    eventually(() => {
      const line = err.split('\n').find((l) => l.includes('"listening"') && l.includes(`"listener":"${name}"`));
      return line ? Number(/:(\d+)"/.exec(line)![1]) : undefined;
    }, 10_000);
  const admin = await port('admin');
  const p: Proc = {
    child,
    admin,
    proxy: await port('proxy'),
    socks: await port('socks'),
    fwd: await port('chat'),
    configText,
    async metrics() {
      const r = await curl(`http://127.0.0.1:${admin}/metrics`);
      expect(r.status).toBe(200);
      return parseProm(r.body);
    },
  };
  return p;
}

/** Poll an asynchronous condition (a hang guard, not a timing assertion). */
async function until(fn: () => Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('admin listener', () => {
  it('serves metrics that move with traffic, health, readiness, 404 and 405', { timeout: 30_000 }, async () => {
    const echo = await startTcpServer();
    cleanup.push(() => echo.close());
    const dns = await startDns({ 'q.whatsapp.net': { A: ['127.0.0.1'], ttl: 0 } });
    cleanup.push(() => dns.close());
    const p = await startProcess(echo, dns);
    const base = `http://127.0.0.1:${p.admin}`;

    const before = await p.metrics();
    // Default process metrics and the loaded configuration's hash.
    expect(before.has('process_cpu_user_seconds_total')).toBe(true);
    const hash = createHash('sha256').update(p.configText).digest('hex');
    expect(before.get(`wa_egress_config_info{hash="${hash}"}`)).toBe(1);
    expect(before.get('wa_egress_config_loads_total{result="ok"}')).toBe(1);
    expect(before.get('wa_egress_config_loaded_timestamp_seconds')).toBeGreaterThan(0);
    expect(before.get('wa_egress_tunnels_open{listener="proxy"}')).toBe(0);

    // Traffic: a CONNECT tunnel to a name resolved by DNS, carrying data (held
    // open), a forward tunnel, a denial.
    const { client, status } = await connectVia(p.proxy, `q.whatsapp.net:${echo.port}`);
    expect(status).toBe(200);
    client.write('ping-through-connect');
    await client.bytes(20);
    const denied = await curl(`http://evil.example:${echo.port}/`, '-x', `http://127.0.0.1:${p.proxy}`);
    expect(denied.status).toBe(403);
    const fwd = await RawClient.connect(p.fwd);
    fwd.write('fwd');
    await fwd.bytes(3);

    const open = await p.metrics();
    expect(open.get('wa_egress_tunnels_open{listener="proxy"}')).toBe(1);
    expect(open.get('wa_egress_tunnels_open{listener="chat"}')).toBe(1);
    expect(open.get('wa_egress_connections_open{listener="proxy"}')).toBeGreaterThanOrEqual(1);
    // Bytes of a tunnel count while it is open.
    expect(open.get('wa_egress_bytes_total{listener="proxy",direction="up"}')).toBeGreaterThanOrEqual(20);
    expect(open.get('wa_egress_bytes_total{listener="proxy",direction="down"}')).toBeGreaterThanOrEqual(20);
    expect(open.get('wa_egress_bytes_total{listener="chat",direction="up"}')).toBe(3);
    expect(open.get('wa_egress_connections_accepted_total{listener="proxy"}')).toBe((before.get('wa_egress_connections_accepted_total{listener="proxy"}') ?? 0) + 2);
    expect(open.get('wa_egress_decisions_total{listener="proxy",decision="allowed",rule="wa",reason="",enforced=""}')).toBe(1);
    expect(open.get('wa_egress_decisions_total{listener="proxy",decision="denied",rule="",reason="host_not_allowed",enforced="true"}')).toBe(1);
    expect(open.get('wa_egress_decisions_total{listener="chat",decision="allowed",rule="wa",reason="",enforced=""}')).toBe(1);
    expect(open.get('wa_egress_dns_lookup_duration_seconds_count{result="ok"}')).toBe(1);
    expect(open.get('wa_egress_dial_duration_seconds_count{result="ok"}')).toBe(2);
    expect(open.get('wa_egress_audit_records_written_total')).toBeGreaterThan(before.get('wa_egress_audit_records_written_total')!);

    client.destroy();
    fwd.destroy();
    // Close records are written from 'close' events: poll the scrape until both tunnels are gone.
    let after = await p.metrics();
    await until(async () => {
      after = await p.metrics();
      return after.get('wa_egress_tunnels_open{listener="proxy"}') === 0 && after.get('wa_egress_tunnels_open{listener="chat"}') === 0;
    });
    expect(after.get('wa_egress_tunnel_duration_seconds_count{listener="proxy"}')).toBe(1);
    expect(after.get('wa_egress_tunnel_duration_seconds_count{listener="chat"}')).toBe(1);
    expect(after.get('wa_egress_closed_total{listener="proxy",close_reason="client_closed"}')).toBe(1);
    // Closed tunnels' bytes stay counted.
    expect(after.get('wa_egress_bytes_total{listener="proxy",direction="up"}')).toBe(open.get('wa_egress_bytes_total{listener="proxy",direction="up"}'));
    // No label carries a host or client address.
    for (const k of after.keys()) expect(k).not.toMatch(/evil|whatsapp|127\.0\.0\.1/);

    expect(await curl(`${base}/healthz`)).toMatchObject({ status: 200 });
    expect(await curl(`${base}/readyz`)).toMatchObject({ status: 200 });
    expect((await curl(`${base}/nope`)).status).toBe(404);
    expect((await curl(`${base}/metrics`, '-X', 'POST')).status).toBe(405);
    expect((await curl(`${base}/healthz`, '-X', 'DELETE')).status).toBe(405);
    // It never proxies: an absolute-form request or a CONNECT to it goes nowhere.
    expect((await curl(`http://127.0.0.1:${echo.port}/`, '-x', base)).status).toBe(404);
    const c = await RawClient.connect(p.admin);
    c.write(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\n\r\n`);
    expect((await c.head()).status).toBe(405);
    expect(echo.connections).toBe(2);
    p.child.kill('SIGTERM');
    expect(await new Promise((r) => p.child.once('exit', r))).toBe(0);
  });

  it('drops a client that trickles its request head, and still answers others', { timeout: 30_000 }, async () => {
    const server = createAdminServer({ metrics: { text: async () => 'x 1\n', contentType: 'text/plain' }, ready: () => true });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanup.push(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
    const port = (server.address() as AddressInfo).port;
    const slow = await RawClient.connect(port);
    slow.write('GET /metrics HTTP/1.1\r\nX-Slow: ');
    const timer = setInterval(() => !slow.closed && slow.write('a'), 200);
    cleanup.push(() => clearInterval(timer));
    expect((await curl(`http://127.0.0.1:${port}/metrics`)).body).toBe('x 1\n');
    await slow.waitClosed(15_000);
    clearInterval(timer);
    // A head over its small size limit is refused.
    const big = await RawClient.connect(port);
    big.write(`GET /healthz HTTP/1.1\r\nX-Big: ${'a'.repeat(8000)}\r\n\r\n`);
    await big.waitClosed();
    expect(big.text).toMatch(/^HTTP\/1\.1 431 /);
  });

  it('holds at most 64 connections; once they go, it answers again', async () => {
    const server = createAdminServer({ metrics: { text: async () => 'x 1\n', contentType: 'text/plain' }, ready: () => true });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanup.push(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
    const port = (server.address() as AddressInfo).port;
    const held = await Promise.all(Array.from({ length: 64 }, () => RawClient.connect(port)));
    const connections = () => new Promise<number>((r) => server.getConnections((_e, n) => r(n)));
    await until(async () => (await connections()) === 64);
    const over = await RawClient.connect(port);
    over.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await over.waitClosed();
    expect(over.data.length).toBe(0);
    for (const h of held) h.destroy();
    await until(async () => (await connections()) === 0);
    expect((await curl(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
  });

  it('is one of the gateway’s own addresses: the proxy will not reach it', async () => {
    // The admin socket is bound first, so a rule can name its port.
    const server = createAdminServer({ metrics: { text: async () => '', contentType: 'text/plain' }, ready: () => true });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanup.push(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
    const adminPort = (server.address() as AddressInfo).port;
    const gw = await startGateway({
      policy: { rules: [{ name: 'any', ip_ranges: ['127.0.0.1/32'], ports: [adminPort] }], allow_ranges: ['127.0.0.1/32'] },
    });
    cleanup.push(() => gw.close());
    gw.gw.addOwnAddress(server.address() as AddressInfo);
    const loop = await connectVia(gw.port, `127.0.0.1:${adminPort}`);
    expect(loop.status).toBe(403);
    expect(loop.headers['x-wa-egress-reason']).toBe('loop');
    loop.client.destroy();
  });

  it('readyz follows the readiness it is given', async () => {
    let ready = true;
    const server = createAdminServer({ metrics: { text: async () => '', contentType: 'text/plain' }, ready: () => ready });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanup.push(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
    const port = (server.address() as AddressInfo).port;
    const get = (path: string) =>
      new Promise<number>((done, fail) => http.get({ port, host: '127.0.0.1', path, agent: false }, (res) => (res.resume(), done(res.statusCode!))).on('error', fail));
    expect(await get('/readyz')).toBe(200);
    ready = false;
    expect(await get('/readyz')).toBe(503);
    expect(await get('/healthz')).toBe(200);
    expect(await get('/readyz?verbose')).toBe(503);
  });
});
