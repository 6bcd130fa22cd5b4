import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import http from 'node:http';
import net, { type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { SocksClient } from 'socks';
import { stringify } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSocksParent } from '../fixtures/socks5-server.js';
import { connectVia, eventually, RawClient, startClosedPort, startGateway, startTcpServer, type AuditRecord, type TestGateway, type TestServer } from '../helpers.js';

/**
 * Upstream parents: chaining through real parents (a second wa-egress, a
 * SOCKS5 server, squid and tinyproxy when installed) for CONNECT, SOCKS and
 * absolute-form HTTP clients; a parent down, silent, or refusing our
 * credentials; failover along a `via` list; no password in any output.
 */

const run = promisify(execFile);
const PASSWORD = 'S3cr3t-pw_7d1f';
const CLI = resolve(import.meta.dirname, '../../dist/cli.js');

let echo: TestServer;
let origin: http.Server;
let originPort: number;
/** Every parent's and gateway's audit text, searched for the password at the end. */
const outputs: string[] = [];

beforeAll(async () => {
  echo = await startTcpServer('127.0.0.1');
  origin = http.createServer((req, res) => res.end(`origin saw ${req.url} host=${req.headers.host}`));
  await new Promise<void>((r) => origin.listen(0, '127.0.0.1', () => r()));
  originPort = (origin.address() as net.AddressInfo).port;
});
afterAll(async () => {
  await echo.close();
  await new Promise((r) => origin.close(r));
  for (const text of outputs) expect(text).not.toContain(PASSWORD);
});

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** The policy both the gateway and a wa-egress parent apply: origin.test on the echo and HTTP ports. */
function base() {
  return {
    policy: { rules: [{ name: 'origin', hosts: ['origin.test'], ports: [echo.port, originPort] }], allow_ranges: ['127.0.0.0/8'] },
    dns: { hosts: { 'origin.test': '127.0.0.1', 'parent.test': '127.0.0.1' } },
  };
}

async function gateway(extra: Record<string, unknown>): Promise<TestGateway> {
  const t = await startGateway({ ...base(), listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0' }, ...extra });
  cleanup.push(async () => {
    await t.close();
    outputs.push(JSON.stringify(t.audit()));
  });
  return t;
}

/** A wa-egress parent; it also allows 127.0.0.1 by address (for `resolve: local`). */
async function parentGateway(): Promise<TestGateway> {
  const b = base();
  b.policy.rules.push({ name: 'lo', ip_ranges: ['127.0.0.1/32'], ports: [echo.port, originPort] } as never);
  const t = await startGateway(b);
  cleanup.push(async () => {
    await t.close();
    outputs.push(JSON.stringify(t.audit()));
  });
  return t;
}

function records(t: TestGateway, event: string): AuditRecord[] {
  return t.audit().filter((r) => r.event === event);
}

async function echoThrough(port: number, authority = `origin.test:${echo.port}`): Promise<void> {
  const { client, status } = await connectVia(port, authority);
  expect(status).toBe(200);
  client.write('ping');
  expect((await client.bytes(4)).toString()).toBe('ping');
  client.destroy();
}

/** An absolute-form GET through the gateway: status, reason header, body. */
function get(port: number, url: string): Promise<{ status: number; reason?: string; body: string }> {
  return new Promise((done, fail) => {
    const req = http.request({ host: '127.0.0.1', port, path: url, agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => done({ status: res.statusCode!, reason: res.headers['x-wa-egress-reason'] as string | undefined, body }));
    });
    req.on('error', fail);
    req.end();
  });
}

async function socksEcho(socksPort: number): Promise<void> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: '127.0.0.1', port: socksPort, type: 5 },
    destination: { host: 'origin.test', port: echo.port },
    command: 'connect',
    timeout: 5000,
  });
  const got = new Promise<string>((r) => socket.once('data', (d) => r(String(d))));
  socket.write('ping');
  expect(await got).toBe('ping');
  socket.destroy();
}

/**
 * A parent that speaks HTTP by hand: records each request head; answers
 * 407, or 200 and tunnels to the host:port it was asked (through `hosts`).
 */
async function scriptedParent(answer: '407' | 'tunnel' | 'silent') {
  const heads: string[] = [];
  const server = await startTcpServer('127.0.0.1', (s: Socket) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.removeListener('data', onData);
      heads.push(buf.slice(0, end));
      if (answer === 'silent') return;
      if (answer === '407') return void s.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="p"\r\nContent-Length: 0\r\n\r\n');
      const [host, port] = buf.split(' ')[1]!.split(':');
      const up = net.connect({ host: host === 'origin.test' ? '127.0.0.1' : host, port: Number(port) }, () => {
        // A server-first byte right behind the 200 head: it must reach the client first.
        s.write('HTTP/1.1 200 Connection established\r\n\r\nhello:');
        s.pipe(up).pipe(s);
      });
      up.on('error', () => s.destroy());
    };
    s.on('data', onData);
  });
  cleanup.push(() => server.close());
  return { port: server.port, heads };
}

describe('through a wa-egress HTTP parent', () => {
  it('CONNECT, SOCKS and absolute-form clients; the parent gets the name; records say via', async () => {
    const parent = await parentGateway();
    const gw = await gateway({ upstreams: { corp: { url: `http://parent.test:${parent.port}` } }, default_route: 'corp' });

    await echoThrough(gw.port);
    await socksEcho(gw.gw.address('socks').port);
    const r = await get(gw.port, `http://origin.test:${originPort}/x?y=1`);
    expect(r.status).toBe(200);
    expect(r.body).toBe(`origin saw /x?y=1 host=origin.test:${originPort}`);

    const allowed = await eventually(() => records(gw, 'egress.allowed').length === 3 && records(gw, 'egress.allowed'));
    expect(allowed.map((a) => [a.proto, a.via])).toEqual([
      ['connect', 'corp'],
      ['socks', 'corp'],
      ['http', 'corp'],
    ]);
    // The parent saw the name every time (it resolves), and the HTTP request in absolute form.
    const seen = records(parent, 'egress.allowed');
    expect(seen.map((a) => [a.proto, a.dest_host])).toEqual([
      ['connect', 'origin.test'],
      ['connect', 'origin.test'],
      ['http', 'origin.test'],
    ]);
    // The close records name the upstream too.
    await eventually(() => records(gw, 'egress.closed').length === 3);
    expect(records(gw, 'egress.closed').every((c) => c.via === 'corp')).toBe(true);
  });

  it('a forward listener\'s connections go through the parent too', async () => {
    const parent = await parentGateway();
    const gw = await gateway({
      listen: { proxy: '127.0.0.1:0', forwards: [{ name: 'fwd', listen: '127.0.0.1:0', to: `origin.test:${echo.port}` }] },
      upstreams: { corp: { url: `http://127.0.0.1:${parent.port}` } },
      default_route: 'corp',
    });
    const client = await RawClient.connect(gw.gw.address('fwd').port);
    client.write('ping');
    expect((await client.bytes(4)).toString()).toBe('ping');
    client.destroy();
    expect(records(gw, 'egress.allowed')).toMatchObject([{ proto: 'tcp', via: 'corp' }]);
    expect(records(parent, 'egress.allowed')).toMatchObject([{ proto: 'connect', dest_host: 'origin.test' }]);
  });

  it('a parent\'s own denial is upstream_failed, with its status and reason in the record', async () => {
    const parent = await startGateway({ ...base(), policy: { rules: [{ name: 'other', hosts: ['other.test'], ports: [echo.port] }] } });
    cleanup.push(() => parent.close());
    const gw = await gateway({ upstreams: { corp: { url: `http://127.0.0.1:${parent.port}` } }, default_route: 'corp' });
    const { status, headers } = await connectVia(gw.port, `origin.test:${echo.port}`);
    expect([status, headers['x-wa-egress-reason']]).toEqual([502, 'upstream_failed']);
    const [failed] = records(gw, 'egress.failed');
    expect(failed).toMatchObject({ reason: 'upstream_failed', via: 'corp' });
    expect(String(failed!.error)).toContain('the parent answered 403 Forbidden (host_not_allowed)');
  });

  it('resolve: local sends the checked address; other destinations follow default_route', async () => {
    const parent = await parentGateway();
    const gw = await gateway({
      upstreams: { corp: { url: `http://127.0.0.1:${parent.port}` } },
      routes: [{ match: { hosts: ['origin.test'], ports: [echo.port] }, via: 'corp', resolve: 'local' }],
    });
    await echoThrough(gw.port);
    // The HTTP port matches no route: direct, and no `via` in its record.
    expect((await get(gw.port, `http://origin.test:${originPort}/`)).status).toBe(200);
    const seen = records(parent, 'egress.allowed');
    expect(seen.map((a) => a.dest_host)).toEqual(['127.0.0.1']);
    const allowed = records(gw, 'egress.allowed');
    expect(allowed.map((a) => a.via)).toEqual(['corp', undefined]);
  });
});

describe('by address, a parent that cannot reach one checked address', () => {
  // two.test has two addresses; nothing listens on 127.0.0.3, so the parent
  // answers 502 (HTTP) or reply 5, connection refused (SOCKS5), for the first.
  const two = () => ({
    policy: { rules: [{ name: 'two', hosts: ['two.test'], ports: [echo.port] }], allow_ranges: ['127.0.0.0/8'] },
    dns: { hosts: { 'two.test': ['127.0.0.3', '127.0.0.1'] } },
  });

  it('an HTTP parent with resolve: local, and a socks5:// parent, are asked for the next address', async () => {
    const parent = await startGateway({ policy: { rules: [{ name: 'lo', ip_ranges: ['127.0.0.0/8'], ports: [echo.port] }], allow_ranges: ['127.0.0.0/8'] } });
    cleanup.push(() => parent.close());
    const socks = await startSocksParent({});
    cleanup.push(() => socks.close());
    const gw = await gateway({
      ...two(),
      upstreams: { corp: { url: `http://127.0.0.1:${parent.port}` }, s: { url: `socks5://127.0.0.1:${socks.port}` } },
      routes: [{ match: { ports: [echo.port] }, via: 'corp', resolve: 'local' }],
    });
    await echoThrough(gw.port, `two.test:${echo.port}`);
    expect(records(parent, 'egress.failed').map((r) => [r.dest_host, r.reason])).toEqual([['127.0.0.3', 'connect_failed']]);
    expect(records(parent, 'egress.allowed').map((r) => r.dest_host)).toEqual(['127.0.0.1']);
    expect(records(gw, 'egress.allowed')).toMatchObject([{ dest_host: 'two.test', dest_ip: '127.0.0.1', via: 'corp' }]);

    const viaSocks = await gateway({ ...two(), upstreams: { s: { url: `socks5://127.0.0.1:${socks.port}` } }, default_route: 's' });
    await echoThrough(viaSocks.port, `two.test:${echo.port}`);
    expect(socks.requests.map((r) => r.host)).toEqual(['127.0.0.3', '127.0.0.1']);
    expect(records(viaSocks, 'egress.allowed')).toMatchObject([{ dest_ip: '127.0.0.1', via: 's' }]);
  });

  it('when it reaches none, the failure names every address', async () => {
    const socks = await startSocksParent({});
    cleanup.push(() => socks.close());
    const gw = await gateway({
      policy: { rules: [{ name: 'two', hosts: ['two.test'], ports: [echo.port] }], allow_ranges: ['127.0.0.0/8'] },
      dns: { hosts: { 'two.test': ['127.0.0.3', '127.0.0.4'] } },
      upstreams: { s: { url: `socks5://127.0.0.1:${socks.port}` } },
      default_route: 's',
    });
    const { status, headers } = await connectVia(gw.port, `two.test:${echo.port}`);
    expect([status, headers['x-wa-egress-reason']]).toEqual([502, 'upstream_failed']);
    expect(socks.requests.map((r) => r.host)).toEqual(['127.0.0.3', '127.0.0.4']);
    const [failed] = records(gw, 'egress.failed');
    expect(failed).toMatchObject({ reason: 'upstream_failed', via: 's' });
    expect(String(failed!.error).match(/ConnectionRefused/g)).toHaveLength(2);
  });
});

describe('through a SOCKS5 parent', () => {
  it('socks5h sends the name with RFC 1929 credentials; socks5 sends the checked address', async () => {
    const parent = await startSocksParent({ hosts: { 'origin.test': '127.0.0.1' }, user: 'gw', password: PASSWORD });
    cleanup.push(() => parent.close());
    const gw = await gateway({
      upstreams: {
        byname: { url: `socks5h://gw:${PASSWORD}@127.0.0.1:${parent.port}` },
        local: { url: `socks5://gw:${PASSWORD}@127.0.0.1:${parent.port}` },
      },
      routes: [{ match: { ports: [originPort] }, via: 'local' }],
      default_route: 'byname',
    });
    await echoThrough(gw.port);
    await socksEcho(gw.gw.address('socks').port);
    // Absolute-form through a SOCKS parent: a tunnel, then origin-form.
    expect((await get(gw.port, `http://origin.test:${originPort}/s`)).body).toBe(`origin saw /s host=origin.test:${originPort}`);
    expect(parent.requests).toEqual([
      { kind: 'name', host: 'origin.test', port: echo.port, user: 'gw' },
      { kind: 'name', host: 'origin.test', port: echo.port, user: 'gw' },
      { kind: 'ip', host: '127.0.0.1', port: originPort, user: 'gw' },
    ]);
    expect(records(gw, 'egress.allowed').map((a) => a.via)).toEqual(['byname', 'byname', 'local']);
  });

  it('a wrong password is upstream_auth', async () => {
    const parent = await startSocksParent({ user: 'gw', password: 'other' });
    cleanup.push(() => parent.close());
    const gw = await gateway({ upstreams: { s: { url: `socks5h://gw:${PASSWORD}@127.0.0.1:${parent.port}` } }, default_route: 's' });
    const { client, status, headers } = await connectVia(gw.port, `origin.test:${echo.port}`);
    expect([status, headers['x-wa-egress-reason']]).toEqual([502, 'upstream_auth']);
    outputs.push(client.text);
    const failed = records(gw, 'egress.failed');
    expect(failed).toMatchObject([{ reason: 'upstream_auth', via: 's' }]);
  });
});

describe('parent failures', () => {
  it('a parent down is 502 upstream_failed, for CONNECT, absolute-form and SOCKS clients', async () => {
    const closed = await startClosedPort();
    cleanup.push(() => closed.close());
    const down = closed.port;
    const gw = await gateway({ upstreams: { down: { url: `http://u:${PASSWORD}@127.0.0.1:${down}` } }, default_route: 'down' });
    const { client, status, headers } = await connectVia(gw.port, `origin.test:${echo.port}`);
    expect([status, headers['x-wa-egress-reason']]).toEqual([502, 'upstream_failed']);
    outputs.push(client.text);
    const r = await get(gw.port, `http://origin.test:${originPort}/`);
    expect([r.status, r.reason]).toEqual([502, 'upstream_failed']);
    outputs.push(r.body);
    await expect(socksEcho(gw.gw.address('socks').port)).rejects.toThrow(/Failure/);
    const failed = records(gw, 'egress.failed');
    expect(failed.map((f) => [f.proto, f.reason, f.via])).toEqual([
      ['connect', 'upstream_failed', 'down'],
      ['http', 'upstream_failed', 'down'],
      ['socks', 'upstream_failed', 'down'],
    ]);
    expect(String(failed[0]!.error)).toContain(`http://u:***@127.0.0.1:${down}`);
  });

  it('a parent that never answers is 504 upstream_timeout within its connect_timeout', async () => {
    const silent = await scriptedParent('silent');
    const gw = await gateway({ upstreams: { slow: { url: `http://127.0.0.1:${silent.port}`, connect_timeout: '300ms' } }, default_route: 'slow' });
    const { status, headers } = await connectVia(gw.port, `origin.test:${echo.port}`);
    expect([status, headers['x-wa-egress-reason']]).toEqual([504, 'upstream_timeout']);
    expect(records(gw, 'egress.failed')).toMatchObject([{ reason: 'upstream_timeout', via: 'slow' }]);
  });

  it('a parent answering 407 is 502 upstream_auth, for CONNECT and absolute-form; the parent got Basic credentials', async () => {
    const p = await scriptedParent('407');
    const gw = await gateway({ upstreams: { corp: { url: `http://gw:${PASSWORD}@127.0.0.1:${p.port}` } }, default_route: 'corp' });
    const { client, status, headers } = await connectVia(gw.port, `origin.test:${echo.port}`);
    expect([status, headers['x-wa-egress-reason']]).toEqual([502, 'upstream_auth']);
    outputs.push(client.text);
    const r = await get(gw.port, `http://origin.test:${originPort}/p`);
    expect([r.status, r.reason]).toEqual([502, 'upstream_auth']);
    outputs.push(r.body);
    const basic = `Proxy-Authorization: Basic ${Buffer.from(`gw:${PASSWORD}`).toString('base64')}`;
    expect(p.heads[0]).toContain(`CONNECT origin.test:${echo.port} HTTP/1.1`);
    expect(p.heads[0]).toContain(basic);
    // Absolute form: the request line keeps the URL the policy judged.
    expect(p.heads[1]).toMatch(new RegExp(`^GET http://origin.test:${originPort}/p HTTP/1.1`));
    expect(p.heads[1]).toContain(basic);
    expect(records(gw, 'egress.failed').map((f) => [f.proto, f.reason, f.via])).toEqual([['connect', 'upstream_auth', 'corp']]);
    // The forwarded request was sent (allowed); the parent's 407 ends it, with the reason on its close record.
    expect(records(gw, 'egress.closed')).toMatchObject([{ proto: 'http', reason: 'upstream_auth', via: 'corp', status: 502 }]);
  });

  it('fails over to the next parent of a via list; bytes the parent sent after its 200 reach the client first', async () => {
    const closed = await startClosedPort();
    cleanup.push(() => closed.close());
    const down = closed.port;
    const p = await scriptedParent('tunnel');
    const gw = await gateway({
      upstreams: { first: { url: `http://127.0.0.1:${down}` }, second: { url: `http://127.0.0.1:${p.port}` } },
      routes: [{ match: { hosts: ['origin.test'] }, via: ['first', 'second'] }],
    });
    const { client, status } = await connectVia(gw.port, `origin.test:${echo.port}`);
    expect(status).toBe(200);
    client.write('ping');
    expect((await client.bytes(10)).toString()).toBe('hello:ping');
    client.destroy();
    expect(records(gw, 'egress.allowed')).toMatchObject([{ via: 'second' }]);
  });
});

describe('config check', () => {
  it('names the key of a bad URL or an unknown upstream, without the password', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-up-'));
    const file = join(dir, 'config.yaml');
    writeFileSync(
      file,
      stringify({
        listen: { proxy: '127.0.0.1:0' },
        policy: { rules: [{ name: 'o', hosts: ['origin.test'], ports: [443] }] },
        upstreams: { corp: { url: `ftp://u:${PASSWORD}@parent:21` }, np: { url: `http://u:${PASSWORD}@parent` } },
      }),
    );
    const err = (await run(process.execPath, [CLI, 'config', 'check', file]).catch((e) => e)) as { code: number; stderr: string };
    expect(err.code).not.toBe(0);
    expect(err.stderr).toContain('upstreams.corp.url');
    expect(err.stderr).toContain('http://, socks5:// or socks5h://');
    expect(err.stderr).toContain('upstreams.np.url');
    expect(err.stderr).toContain('the port is required');
    expect(err.stderr).not.toContain(PASSWORD);

    writeFileSync(
      file,
      stringify({
        listen: { proxy: '127.0.0.1:0' },
        policy: { rules: [{ name: 'o', hosts: ['origin.test'], ports: [443] }] },
        upstreams: { corp: { url: `http://u:${PASSWORD}@parent:3128` } },
        routes: [{ match: { ports: [443] }, via: ['corp', 'crop'] }],
      }),
    );
    const e2 = (await run(process.execPath, [CLI, 'config', 'check', file]).catch((e) => e)) as { code: number; stderr: string };
    expect(e2.stderr).toContain('routes[0].via[1]: unknown upstream "crop"');
    expect(e2.stderr).not.toContain(PASSWORD);
  });
});

// ---------------------------------------------------------------- third-party parents

/** The daemon's path (PATH, or /usr/sbin where a non-root PATH lacks it), or undefined. */
function daemon(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd} || command -v /usr/sbin/${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

const squidBin = daemon('squid');
const tinyproxyBin = daemon('tinyproxy');
const hasSquid = squidBin !== undefined;
const hasTinyproxy = tinyproxyBin !== undefined;
if (!hasSquid) console.warn('squid is not installed: skipping the squid parent tests');
if (!hasTinyproxy) console.warn('tinyproxy is not installed: skipping the tinyproxy parent tests');

/**
 * A port for a daemon that binds its own: below the kernel's ephemeral range,
 * where no port-0 bind of a parallel test lands; taken ones are retried.
 */
function daemonPort(): number {
  let lo = 49152;
  try {
    lo = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || lo;
  } catch {
    // Not Linux: the IANA ephemeral range.
  }
  const base = Math.max(1024, Math.min(lo, 32768) - 12_000);
  return base + Math.floor(Math.random() * 10_000);
}

/** Start a daemon that binds its own port (retried on another port when that one is taken). */
async function startDaemon(make: (port: number, dir: string) => { cmd: string; args: string[] }): Promise<number> {
  for (let tries = 0; tries < 5; tries++) {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-parent-'));
    chmodSync(dir, 0o777);
    const port = daemonPort();
    // Somebody else's listener there would pass for the daemon.
    if (await probe(port)) continue;
    const { cmd, args } = make(port, dir);
    let log = '';
    const child: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d) => (log += d));
    child.stderr!.on('data', (d) => (log += d));
    let exited = false;
    child.once('exit', () => (exited = true));
    const up = await waitListening(port, () => exited);
    if (up === 'up') {
      cleanup.push(() => {
        child.kill('SIGKILL');
      });
      return port;
    }
    child.kill('SIGKILL');
    if (!/in use/i.test(log + readLogs(dir))) throw new Error(`${cmd} did not start: ${log}${readLogs(dir)}`);
  }
  throw new Error(`${make.name}: no free port after 5 tries`);
}

function readLogs(dir: string): string {
  for (const f of ['cache.log', 'tinyproxy.log']) {
    try {
      return readFileSync(join(dir, f), 'utf8');
    } catch {
      /* not this daemon's */
    }
  }
  return '';
}

/** 'up' once the daemon accepts connections; 'exited' if it died first (hang guard: 30 s). */
async function waitListening(port: number, exited: () => boolean): Promise<'up' | 'exited' | 'timeout'> {
  const end = Date.now() + 30000;
  while (Date.now() < end) {
    if (exited()) return 'exited';
    if (await probe(port)) return 'up';
    await new Promise((r) => setTimeout(r, 50));
  }
  return 'timeout';
}

function probe(port: number): Promise<boolean> {
  return new Promise((r) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.destroy();
      r(true);
    });
    s.on('error', () => r(false));
  });
}

async function throughParent(parentPort: number, resolveLocal: boolean): Promise<TestGateway> {
  const gw = await gateway({
    upstreams: { corp: { url: `http://127.0.0.1:${parentPort}` } },
    routes: [{ match: { hosts: ['origin.test'] }, via: 'corp', ...(resolveLocal ? { resolve: 'local' } : {}) }],
  });
  await echoThrough(gw.port);
  await socksEcho(gw.gw.address('socks').port);
  const r = await get(gw.port, `http://origin.test:${originPort}/t`);
  expect(r.status).toBe(200);
  expect(r.body).toBe(`origin saw /t host=origin.test:${originPort}`);
  expect(records(gw, 'egress.allowed').map((a) => a.via)).toEqual(['corp', 'corp', 'corp']);
  return gw;
}

describe('third-party parents', () => {
  it.skipIf(!hasSquid)('squid (resolving origin.test from its hosts_file)', async () => {
    const port = await startDaemon(function squid(p, dir) {
      writeFileSync(join(dir, 'hosts'), '127.0.0.1 origin.test\n');
      writeFileSync(
        join(dir, 'squid.conf'),
        [
          `http_port 127.0.0.1:${p}`,
          'http_access allow all',
          'cache deny all',
          `hosts_file ${join(dir, 'hosts')}`,
          'dns_nameservers 127.0.0.1',
          `pid_filename ${join(dir, 'squid.pid')}`,
          `cache_log ${join(dir, 'cache.log')}`,
          'access_log none',
          `coredump_dir ${dir}`,
          'shutdown_lifetime 0 seconds',
        ].join('\n'),
      );
      return { cmd: squidBin!, args: ['-N', '-f', join(dir, 'squid.conf')] };
    });
    await throughParent(port, false);
  }, 60000);

  it.skipIf(!hasTinyproxy)('tinyproxy (resolve: local: it gets the checked address)', async () => {
    const port = await startDaemon(function tinyproxy(p, dir) {
      writeFileSync(
        join(dir, 'tinyproxy.conf'),
        [`Port ${p}`, 'Listen 127.0.0.1', 'Timeout 60', 'Allow 127.0.0.1', `LogFile "${join(dir, 'tinyproxy.log')}"`, `PidFile "${join(dir, 'tinyproxy.pid')}"`, 'MaxClients 20'].join('\n'),
      );
      return { cmd: tinyproxyBin!, args: ['-d', '-c', join(dir, 'tinyproxy.conf')] };
    });
    await throughParent(port, true);
  }, 60000);
});
