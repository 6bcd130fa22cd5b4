import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { SocksClient, type SocksClientOptions } from 'socks';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword, parsePasswordHash, verifyPassword } from '../../src/access/password.js';
import { CLI, cleanEnv, curl, eventually, RawClient, spawnServe, startGateway, startTcpServer, writeTestConfig, type TestGateway, type TestServer } from '../helpers.js';

/**
 * Proxy users on real sockets: Basic Proxy-Authorization on CONNECT (both
 * parsing paths) and absolute-form requests, with curl and raw bytes; RFC
 * 1929 with the socks client and raw bytes; per-user rules; users allowed
 * per source range; the failure throttle; passwords in no record or log;
 * `wa-egress passwd`.
 */

const hasCurl = ['/usr/bin/curl', '/usr/local/bin/curl', '/bin/curl'].some((p) => existsSync(p));
if (!hasCurl) console.warn('curl not installed: the curl tests of auth.test.ts are skipped');

const PASSWORD = 'Tr0ub4dor&3-pw';
const OPS_PASSWORD = 'ops:with:colons';
// Cheap parameters: these tests are about behaviour, not strength.
const FAST = { N: 1024, r: 8, p: 1 };
let coreappHash: string;
let opsHash: string;

beforeAll(async () => {
  coreappHash = await hashPassword(PASSWORD, FAST);
  opsHash = await hashPassword(OPS_PASSWORD, FAST);
});

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

interface Env {
  g: TestGateway;
  echo: TestServer;
  origin: { port: number; urls: string[] };
  socksPort: number;
}

/**
 * An echo (chat.test) and an HTTP origin (web.test) on loopback, and a
 * gateway with HTTP and SOCKS listeners; coreapp may use only the chat rule,
 * ops every rule, and from 127.0.0.2 only ops may log in.
 */
async function setup(extra: Record<string, unknown> = {}): Promise<Env> {
  const echo = await startTcpServer('127.0.0.1');
  cleanup.push(() => echo.close());
  const urls: string[] = [];
  const server = http.createServer((req, res) => {
    urls.push(req.url ?? '');
    res.setHeader('x-saw-proxy-authorization', String(req.headers['proxy-authorization'] ?? 'none'));
    res.end(`hello ${req.url}`);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanup.push(() => new Promise<void>((r) => server.close(() => r())));
  const originPort = (server.address() as AddressInfo).port;
  const g = await startGateway({
    listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0' },
    dns: { hosts: { 'chat.test': '127.0.0.1', 'web.test': '127.0.0.1' } },
    policy: {
      rules: [
        { name: 'chat', hosts: ['chat.test'], ports: [echo.port, originPort] },
        { name: 'web', hosts: ['web.test'], ports: [echo.port, originPort] },
      ],
      allow_ranges: ['127.0.0.1/32'],
    },
    clients: {
      allow: ['127.0.0.1/32', { cidr: '127.0.0.2/32', users: ['ops'] }],
      users: [
        { name: 'coreapp', password_hash: coreappHash, rules: ['chat'] },
        { name: 'ops', password_hash: opsHash },
      ],
    },
    ...extra,
  });
  cleanup.push(() => g.close());
  return { g, echo, origin: { port: originPort, urls }, socksPort: g.gw.address('socks').port };
}

const curlQuiet = (args: string[]) => curl(['-s', '-S', ...args]);

/** A CONNECT written raw; `split` sends the head in two writes, so Node's parser (not the fast path) reads it. */
async function rawConnect(port: number, target: string, auth?: string, opts: { split?: boolean; from?: string } = {}) {
  const client = await RawClient.connect(port);
  if (opts.from) throw new Error('use connectFrom');
  const head = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${auth ? `Proxy-Authorization: ${auth}\r\n` : ''}\r\n`;
  if (opts.split) {
    client.write(head.slice(0, 12));
    await new Promise((r) => setTimeout(r, 50));
    client.write(head.slice(12));
  } else client.write(head);
  const res = await client.head();
  return { client, ...res };
}

describe('HTTP proxy users: CONNECT', () => {
  for (const split of [false, true]) {
    const path = split ? "Node's parser" : 'the fast path';
    it(`missing → 407 auth_required with the challenge, wrong → 407 auth_failed, right → tunnel with user in the records (${path})`, async () => {
      const { g, echo } = await setup();
      const target = `chat.test:${echo.port}`;
      const missing = await rawConnect(g.port, target, undefined, { split });
      expect(missing.status).toBe(407);
      expect(missing.headers['proxy-authenticate']).toBe('Basic realm="wa-egress"');
      expect(missing.headers['x-wa-egress-reason']).toBe('auth_required');
      await missing.client.waitClosed();

      const wrong = await rawConnect(g.port, target, basic('coreapp', 'nope'), { split });
      expect(wrong.status).toBe(407);
      expect(wrong.headers['x-wa-egress-reason']).toBe('auth_failed');
      expect(wrong.headers['proxy-authenticate']).toBe('Basic realm="wa-egress"');

      const malformed = await rawConnect(g.port, target, 'Basic !!!', { split });
      expect(malformed.headers['x-wa-egress-reason']).toBe('auth_failed');

      const ok = await rawConnect(g.port, target, basic('coreapp', PASSWORD), { split });
      expect(ok.status).toBe(200);
      ok.client.write('ping');
      await eventually(() => ok.client.text === 'ping');
      ok.client.destroy();
      expect(echo.connections).toBe(1);

      const records = await eventually(() => {
        const r = g.audit();
        return r.some((x) => x.event === 'egress.closed') && r;
      });
      const denied = records.filter((r) => r.event === 'egress.denied');
      expect(denied.map((r) => r.reason)).toEqual(['auth_required', 'auth_failed', 'auth_failed']);
      expect(denied[1]).toMatchObject({ user: 'coreapp', dest_host: 'chat.test', proto: 'connect' });
      expect(denied[0]).not.toHaveProperty('user');
      expect(records.find((r) => r.event === 'egress.allowed')).toMatchObject({ user: 'coreapp', rule: 'chat' });
      expect(records.find((r) => r.event === 'egress.closed')).toMatchObject({ user: 'coreapp' });
    });
  }

  it('judges a user only against its rules (user_not_allowed names the rule outside them)', async () => {
    const { g, echo } = await setup();
    const denied = await rawConnect(g.port, `web.test:${echo.port}`, basic('coreapp', PASSWORD));
    expect(denied.status).toBe(403);
    expect(denied.headers['x-wa-egress-reason']).toBe('user_not_allowed');
    const unknown = await rawConnect(g.port, `other.test:${echo.port}`, basic('coreapp', PASSWORD));
    expect(unknown.headers['x-wa-egress-reason']).toBe('host_not_allowed');
    const ops = await rawConnect(g.port, `web.test:${echo.port}`, basic('ops', OPS_PASSWORD));
    expect(ops.status).toBe(200);
    ops.client.destroy();
    const records = g.audit();
    expect(records.find((r) => r.reason === 'user_not_allowed')).toMatchObject({ user: 'coreapp', rule: 'web', dest_host: 'web.test' });
    expect(records.find((r) => r.event === 'egress.allowed')).toMatchObject({ user: 'ops', rule: 'web' });
  });

  it('lets only the users an allow entry lists log in from its range', async () => {
    const { g, echo } = await setup();
    const from2 = async (user: string, password: string) => {
      const s = net.connect({ port: g.port, host: '127.0.0.1', localAddress: '127.0.0.2' });
      s.on('error', () => {});
      let data = '';
      s.on('data', (d: Buffer) => (data += d.toString('latin1')));
      s.write(`CONNECT chat.test:${echo.port} HTTP/1.1\r\nProxy-Authorization: ${basic(user, password)}\r\n\r\n`);
      await eventually(() => data.includes('\r\n\r\n'));
      s.destroy();
      return data;
    };
    expect(await from2('coreapp', PASSWORD)).toMatch(/^HTTP\/1\.1 407 .*X-Wa-Egress-Reason: auth_failed/s);
    expect(await from2('ops', OPS_PASSWORD)).toMatch(/^HTTP\/1\.1 200 /);
    expect(g.audit().find((r) => r.reason === 'auth_failed')).toMatchObject({ user: 'coreapp', error: expect.stringContaining('may not connect from this address') });
  });
});

describe('HTTP proxy users: absolute-form', () => {
  it('keep-alive requests with the right credentials are served after one scrypt, and Proxy-Authorization is not forwarded', async () => {
    const { g, origin } = await setup();
    const client = await RawClient.connect(g.port);
    const url = `http://chat.test:${origin.port}`;
    client.write(`GET ${url}/a HTTP/1.1\r\nHost: chat.test\r\n\r\n`);
    const first = await client.head();
    expect(first.status).toBe(407);
    expect(first.headers['proxy-authenticate']).toBe('Basic realm="wa-egress"');
    expect(first.headers.connection).not.toBe('close');
    await client.bytes(Number(first.headers['content-length']));
    client.data = Buffer.alloc(0);
    for (const path of ['/b', '/c', '/d']) {
      client.write(`GET ${url}${path} HTTP/1.1\r\nHost: chat.test\r\nProxy-Authorization: ${basic('coreapp', PASSWORD)}\r\n\r\n`);
      const res = await client.head();
      expect(res.status).toBe(200);
      expect(res.headers['x-saw-proxy-authorization']).toBe('none');
      await client.bytes(Number(res.headers['content-length']));
      client.data = Buffer.alloc(0);
    }
    client.destroy();
    expect(origin.urls).toEqual(['/b', '/c', '/d']);
    expect(g.gw.auth.verifications).toBe(1);
    const allowed = g.audit().filter((r) => r.event === 'egress.allowed');
    expect(allowed.map((r) => [r.user, r.request])).toEqual([
      ['coreapp', 2],
      ['coreapp', 3],
      ['coreapp', 4],
    ]);
  });

  it('an Upgrade request and a TRACE answered by the proxy itself need credentials too', async () => {
    const { g, origin } = await setup();
    const up = await RawClient.connect(g.port);
    up.write(`GET http://chat.test:${origin.port}/ws HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
    const upgrade = await up.head();
    expect(upgrade.status).toBe(407);
    expect(upgrade.headers['proxy-authenticate']).toBe('Basic realm="wa-egress"');
    up.destroy();
    const tr = await RawClient.connect(g.port);
    tr.write(`TRACE http://chat.test:${origin.port}/t HTTP/1.1\r\nHost: chat.test\r\nMax-Forwards: 0\r\nProxy-Authorization: ${basic('coreapp', 'bad')}\r\n\r\n`);
    const trace = await tr.head();
    expect(trace.status).toBe(407);
    expect(trace.headers['x-wa-egress-reason']).toBe('auth_failed');
    tr.destroy();
    expect(origin.urls).toEqual([]);
    expect(g.audit().map((r) => r.reason)).toEqual(['auth_required', 'auth_failed']);
  });

  it.skipIf(!hasCurl)('curl --proxy-user: served; wrong password and none get 407', async () => {
    const { g, origin } = await setup();
    const proxy = `http://127.0.0.1:${g.port}`;
    const url = `http://chat.test:${origin.port}/curl`;
    const ok = await curlQuiet(['-x', proxy, '--proxy-user', `coreapp:${PASSWORD}`, url]);
    expect(ok.stdout).toBe('hello /curl');
    const wrong = await curlQuiet(['-o', '/dev/null', '-w', '%{http_code}', '-x', proxy, '--proxy-user', 'coreapp:wrong', url]);
    expect(wrong.stdout).toBe('407');
    const none = await curlQuiet(['-o', '/dev/null', '-w', '%{http_code}', '-x', proxy, url]);
    expect(none.stdout).toBe('407');
    // CONNECT (curl -p) with the ops user, whose password has colons.
    const tunnel = await curlQuiet(['-p', '-x', proxy, '--proxy-user', `ops:${OPS_PASSWORD}`, `http://web.test:${origin.port}/tunnel`]);
    expect(tunnel.stdout).toBe('hello /tunnel');
    const badTunnel = await curlQuiet(['-p', '-x', proxy, '--proxy-user', 'ops:nope', `http://web.test:${origin.port}/tunnel`]);
    expect(badTunnel.code).not.toBe(0);
    expect(badTunnel.stderr).toMatch(/407/);
    const reasons = g.audit().filter((r) => r.event === 'egress.denied').map((r) => r.reason);
    expect(reasons).toEqual(['auth_failed', 'auth_required', 'auth_failed']);
  });
});

describe('SOCKS5 proxy users (RFC 1929)', () => {
  const opts = (port: number, dest: number, userId?: string, password?: string): SocksClientOptions => ({
    proxy: { host: '127.0.0.1', port, type: 5, userId, password },
    command: 'connect',
    destination: { host: 'chat.test', port: dest },
    timeout: 5000,
  });

  it('the socks client connects with the right password and is refused with a wrong one', async () => {
    const { g, echo, socksPort } = await setup();
    const ok = await SocksClient.createConnection(opts(socksPort, echo.port, 'coreapp', PASSWORD));
    let got = '';
    ok.socket.on('data', (d: Buffer) => (got += d));
    ok.socket.write('hi');
    await eventually(() => got === 'hi');
    ok.socket.destroy();
    await expect(SocksClient.createConnection(opts(socksPort, echo.port, 'coreapp', 'wrong'))).rejects.toThrow(/auth/i);
    await expect(SocksClient.createConnection(opts(socksPort, echo.port))).rejects.toThrow();
    const records = await eventually(() => {
      const r = g.audit();
      return r.filter((x) => x.event === 'egress.denied').length === 2 && r;
    });
    expect(records.find((r) => r.event === 'egress.allowed')).toMatchObject({ user: 'coreapp', proto: 'socks' });
    expect(records.filter((r) => r.event === 'egress.denied').map((r) => [r.reason, r.user])).toEqual([
      ['auth_failed', 'coreapp'],
      ['auth_required', undefined],
    ]);
  });

  it('raw bytes: only method 0x02 is chosen; a wrong password gets status 1 and the connection closes', async () => {
    const { g, echo, socksPort } = await setup();
    const none = await RawClient.connect(socksPort);
    none.write(Buffer.from([5, 1, 0]));
    await none.waitClosed();
    expect([...none.data]).toEqual([5, 0xff]);

    const c = await RawClient.connect(socksPort);
    c.write(Buffer.from([5, 2, 0, 2]));
    await eventually(() => c.data.length >= 2);
    expect([...c.data]).toEqual([5, 2]);
    const u = Buffer.from('coreapp');
    const p = Buffer.from('wrong');
    c.write(Buffer.concat([Buffer.from([1, u.length]), u, Buffer.from([p.length]), p]));
    await c.waitClosed();
    expect([...c.data.subarray(2)]).toEqual([1, 1]);

    // Right password, and the request in the same write: served, per-user rules apply.
    const d = await RawClient.connect(socksPort);
    const pw = Buffer.from(PASSWORD);
    const name = Buffer.from('web.test');
    const port = Buffer.alloc(2);
    port.writeUInt16BE(echo.port);
    d.write(Buffer.concat([Buffer.from([5, 1, 2, 1, u.length]), u, Buffer.from([pw.length]), pw, Buffer.from([5, 1, 0, 3, name.length]), name, port]));
    await d.waitClosed();
    expect([...d.data]).toEqual([5, 2, 1, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
    expect(g.audit().find((r) => r.reason === 'user_not_allowed')).toMatchObject({ user: 'coreapp', proto: 'socks', rule: 'web' });
  });
});

describe('brute force', () => {
  it('counts failures per source and answers them in order, later ones after a delay', async () => {
    const { g, echo } = await setup();
    // Five wrong passwords at once on five connections from one source.
    const answered: string[] = [];
    const clients = await Promise.all(Array.from({ length: 5 }, () => RawClient.connect(g.port)));
    clients.forEach((c, i) => c.write(`CONNECT chat.test:${echo.port} HTTP/1.1\r\nProxy-Authorization: ${basic('coreapp', `guess${i}`)}\r\n\r\n`));
    await Promise.all(
      clients.map((c) =>
        c.head(15_000).then((h) => {
          expect(h.status).toBe(407);
          answered.push(`127.0.0.1:${c.socket.localPort}`);
        }),
      ),
    );
    expect(g.gw.auth.failures('127.0.0.1')).toBe(5);
    // One at a time: the first three at once, the 4th and 5th each after a
    // delay, so they come last and in the order they were judged (recorded).
    const failed = g.audit().filter((r) => r.reason === 'auth_failed').map((r) => r.client);
    expect(failed).toHaveLength(5);
    expect(new Set(answered.slice(0, 3))).toEqual(new Set(failed.slice(0, 3)));
    expect(answered.slice(3)).toEqual(failed.slice(3));
    // The right password still works (once verified, from the cache at once).
    const ok = await rawConnect(g.port, `chat.test:${echo.port}`, basic('coreapp', PASSWORD));
    expect(ok.status).toBe(200);
    ok.client.destroy();
    expect(g.gw.auth.failures('127.0.0.2')).toBe(0);
  });
});

describe('passwords stay out of logs and records', () => {
  it('serve: no password (plain or base64) in the audit file or the operational log', async () => {
    const echo = await startTcpServer('127.0.0.1');
    cleanup.push(() => echo.close());
    const { dir, file } = await writeTestConfig({
      listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0' },
      dns: { hosts: { 'chat.test': '127.0.0.1' } },
      policy: { rules: [{ name: 'chat', hosts: ['chat.test'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      clients: { users: [{ name: 'coreapp', password_hash: coreappHash }] },
      audit: { file: 'audit.log' },
    });
    const serve = await spawnServe(['--config', file], { listeners: 2 });
    cleanup.push(() => void serve.stop('SIGKILL'));
    const ports = serve.ports as { proxy: number; socks: number };
    const wrongPassword = 'WrongSecret-123';
    for (const pw of [PASSWORD, wrongPassword]) {
      const r = await rawConnect(ports.proxy, `chat.test:${echo.port}`, basic('coreapp', pw));
      r.client.destroy();
      await SocksClient.createConnection({
        proxy: { host: '127.0.0.1', port: ports.socks, type: 5, userId: 'coreapp', password: pw },
        command: 'connect',
        destination: { host: 'chat.test', port: echo.port },
        timeout: 5000,
      }).then(
        (s) => s.socket.destroy(),
        () => undefined,
      );
    }
    // A password typed where the name goes is not echoed either.
    (await rawConnect(ports.proxy, `chat.test:${echo.port}`, basic(wrongPassword, 'x'))).client.destroy();
    expect(await serve.stop()).toBe(0);
    const log = serve.stdout() + serve.stderr();
    const audit = readFileSync(join(dir, 'audit.log'), 'utf8');
    expect(audit.split('\n').filter(Boolean).length).toBeGreaterThanOrEqual(7);
    expect(audit).toContain('"user":"coreapp"');
    for (const secret of [PASSWORD, wrongPassword, Buffer.from(`coreapp:${PASSWORD}`).toString('base64'), Buffer.from(`coreapp:${wrongPassword}`).toString('base64')]) {
      expect(audit).not.toContain(secret);
      expect(log).not.toContain(secret);
      expect(log.length).toBeGreaterThan(0);
    }
  });
});

describe('wa-egress passwd', () => {
  const passwd = (args: string[], input?: string) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [CLI, 'passwd', ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: cleanEnv() });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      child.on('exit', (code) => resolve({ code, stdout, stderr }));
      child.stdin.end(input ?? '');
    });

  it('hashes the first line of stdin, or the argument, with explicit parameters', async () => {
    const piped = await passwd([], 's3cret pass\nignored\n');
    expect(piped.code).toBe(0);
    const hash = piped.stdout.trim();
    expect(hash).toMatch(/^scrypt:N=16384,r=8,p=1:[\w-]+:[\w-]+$/);
    expect(await verifyPassword('s3cret pass', parsePasswordHash(hash))).toBe(true);
    const arg = await passwd(['other']);
    expect(await verifyPassword('other', parsePasswordHash(arg.stdout.trim()))).toBe(true);
    const empty = await passwd([], '\n');
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('the password is empty');
  });

  it('asks twice without echo on a terminal', async () => {
    const py = `
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp("node", ["node", ${JSON.stringify(CLI)}, "passwd"])
out = b""
def until(s):
    global out
    while s not in out:
        out += os.read(fd, 1024)
until(b"Password: ")
os.write(fd, b"tty-secret\\r")
until(b"Again: ")
os.write(fd, b"tty-secret\\r")
try:
    while True:
        chunk = os.read(fd, 1024)
        if not chunk: break
        out += chunk
except OSError:
    pass
os.waitpid(pid, 0)
sys.stdout.write(out.decode())
`;
    const r = await new Promise<string>((resolve, reject) =>
      execFile('python3', ['-c', py], { timeout: 15_000, env: cleanEnv() }, (err, stdout) => (err ? reject(err) : resolve(String(stdout)))),
    );
    expect(r).not.toContain('tty-secret');
    const hash = /scrypt:\S+/.exec(r)![0];
    expect(await verifyPassword('tty-secret', parsePasswordHash(hash))).toBe(true);
  });
});
