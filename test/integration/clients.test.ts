import { execFile } from 'node:child_process';
import net, { type Socket } from 'node:net';
import { promisify } from 'node:util';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { CLI, cleanEnv, eventually, startGateway, testConfig, writeTestConfig, startTcpServer, type TestGateway, type TestServer } from '../helpers.js';

/**
 * clients.allow on real sockets: listeners on 127.0.0.2 reached from source
 * 127.0.0.2 or 127.0.0.1 (`localAddress`), for HTTP, SOCKS5 and forward
 * listeners, the default list, and `config check`.
 */

const run = (cmd: string, args: string[]) => promisify(execFile)(cmd === 'node' ? process.execPath : cmd, args, { env: cleanEnv() });

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function echoServer(): Promise<TestServer> {
  const echo = await startTcpServer('127.0.0.1');
  cleanup.push(() => echo.close());
  return echo;
}

async function gateway(config: Record<string, unknown>): Promise<TestGateway> {
  const g = await startGateway({ dns: { hosts: { 'echo.test': '127.0.0.1' } }, ...config });
  cleanup.push(() => g.close());
  return g;
}

const rules = (port: number) => ({ rules: [{ name: 'echo', hosts: ['echo.test'], ports: [port] }], allow_ranges: ['127.0.0.1/32'] });

/** Connect from `from` to `host:port`; resolves with everything received until the gateway closes. */
function exchange(port: number, host: string, from: string, send: Buffer | string): Promise<{ data: Buffer; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect({ port, host, localAddress: from }, () => s.write(send));
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => {});
    s.on('close', () => resolve({ data: Buffer.concat(chunks), socket: s }));
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`no close within 5 s; got ${JSON.stringify(Buffer.concat(chunks).toString('latin1'))}`));
    }, 5000);
    s.on('close', () => clearTimeout(t));
  });
}

/** A CONNECT through the proxy from `from`; the status line and, once established, an echo. */
async function connectFrom(port: number, host: string, from: string, target: string): Promise<{ status: number; text: string }> {
  const s = net.connect({ port, host, localAddress: from });
  s.on('error', () => {});
  let data = '';
  s.on('data', (d: Buffer) => (data += d.toString('latin1')));
  await new Promise((r) => s.once('connect', r));
  s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  await eventually(() => data.includes('\r\n\r\n') || s.destroyed);
  const status = Number(data.split(' ')[1]);
  if (status === 200) {
    s.write('ping');
    await eventually(() => data.endsWith('ping'));
  }
  s.destroy();
  return { status, text: data };
}

describe('clients.allow on the HTTP listener', () => {
  it('refuses a source outside the list with 403 client_not_allowed and one record, before reading the request', async () => {
    const echo = await echoServer();
    const g = await gateway({ listen: { proxy: '127.0.0.2:0' }, clients: { allow: ['127.0.0.1/32'] }, policy: rules(echo.port) });
    const port = g.gw.address('proxy').port;
    const { data } = await exchange(port, '127.0.0.2', '127.0.0.2', `CONNECT echo.test:${echo.port} HTTP/1.1\r\n\r\n`);
    const text = data.toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(text).toContain('X-Wa-Egress-Reason: client_not_allowed\r\n');
    expect(text).not.toContain('Retry-After');
    expect(echo.connections).toBe(0);
    const records = g.audit();
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ event: 'egress.denied', reason: 'client_not_allowed', listener: 'proxy', proto: 'http', enforced: true });
    expect(records[0]!.client).toMatch(/^127\.0\.0\.2:\d+$/);
    // Refused at accept: no destination was read from the request.
    expect(records[0]).not.toHaveProperty('dest_host');

    // The listed source is served.
    expect(await connectFrom(port, '127.0.0.2', '127.0.0.1', `echo.test:${echo.port}`)).toMatchObject({ status: 200 });
  });

  it('by default serves loopback (Squid localnet and loopback)', async () => {
    const echo = await echoServer();
    const g = await gateway({ listen: { proxy: '127.0.0.2:0' }, policy: rules(echo.port) });
    const r = await connectFrom(g.gw.address('proxy').port, '127.0.0.2', '127.0.0.2', `echo.test:${echo.port}`);
    expect(r.status).toBe(200);
    expect(g.audit().find((x) => x.event === 'egress.allowed')).toMatchObject({ client: expect.stringMatching(/^127\.0\.0\.2:/) });
  });

  it('refuses a source an entry lists only for users, when there are no credentials to offer (forward listener)', async () => {
    const echo = await echoServer();
    const g = await gateway({
      listen: { proxy: '127.0.0.1:0', forwards: [{ name: 'fwd', listen: '127.0.0.2:0', to: `echo.test:${echo.port}` }] },
      clients: {
        allow: [{ cidr: '127.0.0.2/32', users: ['u'] }, '127.0.0.1/32'],
        users: [{ name: 'u', password_hash: 'scrypt:N=1024,r=8,p=1:AAAAAAAAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }],
      },
      policy: rules(echo.port),
    });
    const port = g.gw.address('fwd').port;
    const refused = await exchange(port, '127.0.0.2', '127.0.0.2', 'ping');
    expect(refused.data.length).toBe(0);
    expect(g.audit()).toEqual([expect.objectContaining({ event: 'egress.denied', reason: 'client_not_allowed', listener: 'fwd', proto: 'tcp' })]);
  });
});

describe('clients and reload', () => {
  it('a reloaded clients.allow applies to the next connection', async () => {
    const echo = await echoServer();
    const g = await gateway({ listen: { proxy: '127.0.0.2:0' }, clients: { allow: ['127.0.0.1/32'] }, policy: rules(echo.port) });
    const port = g.gw.address('proxy').port;
    expect((await connectFrom(port, '127.0.0.2', '127.0.0.2', `echo.test:${echo.port}`)).status).toBe(403);
    const next = parseConfig(
      stringify(await testConfig({ listen: { proxy: '127.0.0.2:0' }, dns: { hosts: { 'echo.test': '127.0.0.1' } }, clients: { allow: ['127.0.0.2/32'] }, policy: rules(echo.port) })),
      join(g.dir, 'config.yaml'),
    );
    const problems = await g.gw.apply(next);
    expect(problems).toEqual([]);
    expect((await connectFrom(port, '127.0.0.2', '127.0.0.2', `echo.test:${echo.port}`)).status).toBe(200);
    expect((await connectFrom(port, '127.0.0.2', '127.0.0.1', `echo.test:${echo.port}`)).status).toBe(403);
  });
});

describe('clients on forward listeners', () => {
  it('a forward listener with its own list closes other sources, with one record each', async () => {
    const echo = await echoServer();
    const g = await gateway({
      listen: { proxy: '127.0.0.1:0', forwards: [{ name: 'fwd', listen: '127.0.0.2:0', to: `echo.test:${echo.port}`, clients: ['127.0.0.1/32'] }] },
      // The global list admits 127.0.0.2; the forward's own list does not.
      clients: { allow: ['127.0.0.0/8'] },
      policy: rules(echo.port),
    });
    const port = g.gw.address('fwd').port;
    const refused = await exchange(port, '127.0.0.2', '127.0.0.2', 'ping');
    expect(refused.data.length).toBe(0);
    expect(echo.connections).toBe(0);
    const denied = g.audit().filter((r) => r.event === 'egress.denied');
    expect(denied).toEqual([expect.objectContaining({ reason: 'client_not_allowed', listener: 'fwd', proto: 'tcp' })]);

    const s = net.connect({ port, host: '127.0.0.2', localAddress: '127.0.0.1' });
    let got = '';
    s.on('data', (d: Buffer) => (got += d));
    s.write('ping');
    await eventually(() => got === 'ping');
    s.destroy();
  });
});

describe('clients.allow on the SOCKS listener', () => {
  it('answers a source outside the list with reply 0x02 (not allowed) and one record', async () => {
    const echo = await echoServer();
    const g = await gateway({ listen: { socks: '127.0.0.2:0' }, clients: { allow: ['127.0.0.1/32'] }, policy: rules(echo.port) });
    const port = g.gw.address('socks').port;
    const { data } = await exchange(port, '127.0.0.2', '127.0.0.2', Buffer.from([5, 1, 0]));
    // "No authentication", then the reply to the request it has not sent yet: 0x02.
    expect([...data]).toEqual([5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
    expect(g.audit()).toEqual([expect.objectContaining({ event: 'egress.denied', reason: 'client_not_allowed', proto: 'socks' })]);

    // The socks client reads it as "not allowed"; from a listed source it connects.
    await expect(
      SocksClient.createConnection({
        proxy: { host: '127.0.0.2', port, type: 5 },
        command: 'connect',
        destination: { host: 'echo.test', port: echo.port },
        timeout: 5000,
        socket_options: { localAddress: '127.0.0.2' },
      } as Parameters<typeof SocksClient.createConnection>[0]),
    ).rejects.toThrow(/NotAllowed|not allowed|rejected/i);
    const ok = await SocksClient.createConnection({
      proxy: { host: '127.0.0.2', port, type: 5 },
      command: 'connect',
      destination: { host: 'echo.test', port: echo.port },
      timeout: 5000,
      socket_options: { localAddress: '127.0.0.1' },
    } as Parameters<typeof SocksClient.createConnection>[0]);
    ok.socket.destroy();
  });
});

describe('config check and clients', () => {
  const write = async (config: Record<string, unknown>) => (await writeTestConfig(config)).file;
  const policy = { rules: [{ name: 'chat', hosts: ['a.test'], ports: [443] }] };

  it('warns about an open list on a listener bound beyond loopback', async () => {
    const file = await write({ listen: { proxy: '0.0.0.0:3128' }, policy, clients: { allow: ['0.0.0.0/0', '::/0'] } });
    const r = await run('node', [CLI, 'config', 'check', file]);
    expect(r.stdout).toContain(': OK:');
    expect(r.stdout).toMatch(/:\d+:\d+: listen\.proxy: warning: listener "proxy" on 0\.0\.0\.0:3128 serves any source \(0\.0\.0\.0\/0, ::\/0\) without credentials/);
    const quiet = await run('node', [CLI, 'config', 'check', await write({ listen: { proxy: '0.0.0.0:3128' }, policy })]);
    expect(quiet.stdout + quiet.stderr).not.toContain('warning: listener');
  });

  it('names the key of an unknown user and of an unknown rule', async () => {
    const file = await write({
      listen: { proxy: '127.0.0.1:3128' },
      policy,
      clients: {
        allow: [{ cidr: '10.0.0.0/8', users: ['ghost'] }],
        users: [{ name: 'coreapp', password_hash: 'scrypt:N=1024,r=8,p=1:AAAAAAAAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', rules: ['chats'] }],
      },
    });
    const r = await run('node', [CLI, 'config', 'check', file]).catch((e: { code: number; stderr: string }) => e);
    expect((r as { code: number }).code).toBe(1);
    expect(r.stderr).toMatch(/clients\.allow\[0\]\.users\[0\]: no user named "ghost" in clients\.users/);
    expect(r.stderr).toMatch(/clients\.users\[0\]\.rules\[0\]: no policy rule named "chats"/);
  });
});
