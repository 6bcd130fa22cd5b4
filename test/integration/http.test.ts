import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, auditBarrier, curl, eventually, startClosedPort, startGateway, startTcpServer, type AuditRecord, type TestGateway, type TestServer } from '../helpers.js';

/**
 * Absolute-form HTTP through the proxy, with real sockets on loopback only:
 * a node:http origin on 127.0.0.1 that echoes what it received, names mapped
 * with dns.hosts, DNS servers pointed at a dead port so that nothing ever asks
 * the system resolver.
 */

// ---------------------------------------------------------------------------
// The origin server

interface Echo {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  rawHeaders: string[];
  body: string;
  bodyLength: number;
  bodySha: string;
}

interface Origin {
  port: number;
  connections: number;
  /** /big responses begun. */
  bigStarted: number;
  requests: Echo[];
  close(): Promise<void>;
}

const BLOCK = randomBytes(64 * 1024);

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** `n` bytes of the repeated random block. */
function bigBody(n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let off = 0; off < n; off += BLOCK.length) BLOCK.copy(out, off, 0, Math.min(BLOCK.length, n - off));
  return out;
}

async function startOrigin(): Promise<Origin> {
  const sockets = new Set<Socket>();
  const origin: Origin = { port: 0, connections: 0, bigStarted: 0, requests: [], close: async () => {} };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://origin.invalid');
    if (url.pathname === '/big') {
      // Stream `n` bytes, chunked, respecting back-pressure.
      const n = Number(url.searchParams.get('n'));
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      origin.bigStarted++;
      let sent = 0;
      const pump = () => {
        while (sent < n) {
          const len = Math.min(BLOCK.length, n - sent);
          sent += len;
          if (!res.write(BLOCK.subarray(0, len))) return void res.once('drain', pump);
        }
        res.end();
      };
      req.resume();
      pump();
      return;
    }
    const chunks: Buffer[] = [];
    try {
      for await (const c of req) chunks.push(c as Buffer);
    } catch {
      return; // the proxy cut the request
    }
    const body = Buffer.concat(chunks);
    const echo: Echo = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body: body.length <= 4096 ? body.toString('latin1') : '',
      bodyLength: body.length,
      bodySha: sha(body),
    };
    origin.requests.push(echo);
    const json = JSON.stringify(echo);
    const headers: Record<string, string | number> = {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(json),
      'X-Origin': 'yes',
    };
    if (url.pathname === '/hop') {
      // Hop-by-hop headers on the response side too.
      headers['Connection'] = 'keep-alive, X-Hop-Resp';
      headers['Keep-Alive'] = 'timeout=5';
      headers['X-Hop-Resp'] = 'secret';
      headers['Proxy-Authenticate'] = 'Basic realm="x"';
    }
    res.writeHead(200, headers);
    res.end(json);
  });
  server.on('connection', (s: Socket) => {
    origin.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  origin.port = (server.address() as AddressInfo).port;
  origin.close = () =>
    new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    });
  return origin;
}


// ---------------------------------------------------------------------------
// Fixtures

let origin: Origin;
/** A listener on 127.0.0.2 (special range, not in allow_ranges) under an allowed name and port. */
let special: TestServer;
/** A listener on a port no rule lists. */
let otherPort: TestServer;
let closedPort: number;
let closedHolder: { port: number; close(): void } | undefined;

const gateways: TestGateway[] = [];
const clients: RawClient[] = [];

beforeAll(async () => {
  origin = await startOrigin();
  special = await startTcpServer('127.0.0.2');
  otherPort = await startTcpServer('127.0.0.1');
  closedHolder = await startClosedPort();
  closedPort = closedHolder.port;
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(gateways.splice(0).map((g) => g.close()));
});

afterAll(async () => {
  await origin?.close();
  await special?.close();
  await otherPort?.close();
  closedHolder?.close();
});

function config(mode: 'enforce' | 'report' = 'enforce'): Record<string, unknown> {
  return {
    policy: {
      mode,
      rules: [
        {
          name: 'whatsapp',
          hosts: ['g.whatsapp.net', 'nodns.whatsapp.net', 'local.whatsapp.net', 'closed.whatsapp.net', '.*.cdn.whatsapp.net'],
          ports: [origin.port, special.port, closedPort],
        },
      ],
      allow_ranges: ['127.0.0.1/32'],
    },
    dns: {
      hosts: {
        'g.whatsapp.net': '127.0.0.1',
        'media.cdn.whatsapp.net': '127.0.0.1',
        'local.whatsapp.net': '127.0.0.2',
        'closed.whatsapp.net': '127.0.0.1',
        'other.example.com': '127.0.0.1',
      },
    },
    timeouts: { dns: '300ms', connect: '3s' },
  };
}

async function gateway(mode: 'enforce' | 'report' = 'enforce'): Promise<TestGateway> {
  const g = await startGateway(config(mode));
  gateways.push(g);
  // The audit file is opened asynchronously and flushSync() throws until it
  // is (see the report): wait for it, so that reading the log cannot fail.
  await eventually(() => {
    try {
      g.audit();
      return true;
    } catch {
      return false;
    }
  });
  return g;
}

async function raw(port: number): Promise<RawClient> {
  const c = await RawClient.connect(port);
  clients.push(c);
  return c;
}

function clientOf(c: RawClient): string {
  return `127.0.0.1:${c.socket.localPort}`;
}

interface Response {
  status: number;
  headers: Record<string, string>;
  raw: string;
  body: Buffer;
}

/** Read one complete response (Content-Length, chunked, or until close) from a raw client. */
async function readResponse(c: RawClient, ms = 5000): Promise<Response> {
  const h = await c.head(ms);
  let body: Buffer;
  if (h.headers['content-length'] !== undefined) {
    const n = Number(h.headers['content-length']);
    await eventually(() => c.data.length >= n || c.closed, ms);
    body = c.data.subarray(0, n);
    c.data = c.data.subarray(n);
  } else if (/chunked/i.test(h.headers['transfer-encoding'] ?? '')) {
    const parts: Buffer[] = [];
    for (;;) {
      await eventually(() => c.data.includes('\r\n') || c.closed, ms);
      const eol = c.data.indexOf('\r\n');
      if (eol < 0) throw new Error('truncated chunked body');
      const size = parseInt(c.data.subarray(0, eol).toString('latin1'), 16);
      await eventually(() => c.data.length >= eol + 2 + size + 2 || c.closed, ms);
      parts.push(c.data.subarray(eol + 2, eol + 2 + size));
      c.data = c.data.subarray(eol + 2 + size + 2);
      if (size === 0) break;
    }
    body = Buffer.concat(parts);
  } else {
    // Close-delimited (the client socket is half-open: wait for the end).
    await eventually(() => c.ended || c.closed, ms);
    body = c.data;
    c.data = Buffer.alloc(0);
  }
  return { ...h, body };
}

/** A request through the proxy with Node's HTTP client (path in absolute form). */
function viaProxy(
  proxyPort: number,
  url: string,
  opts: { method?: string; headers?: http.OutgoingHttpHeaders; body?: Buffer | string; agent?: http.Agent | false } = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer; localPort: number }> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: proxyPort,
      method: opts.method ?? 'GET',
      path: url,
      headers: opts.headers,
      agent: opts.agent ?? false,
    });
    let localPort = 0;
    req.on('socket', (s) => {
      if (s.localPort) localPort = s.localPort;
      else s.once('connect', () => (localPort = s.localPort!));
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks), localPort }));
    });
    req.end(opts.body);
  });
}

function echoOf(body: Buffer): Echo {
  return JSON.parse(body.toString('utf8')) as Echo;
}

/** The common shape of every record. */
function expectRecordBasics(r: AuditRecord, client: string): void {
  expect(r.listener).toBe('proxy');
  expect(r.proto).toBe('http');
  expect(r.client).toBe(client);
  expect(typeof r.id).toBe('string');
  expect((r.id as string).length).toBeGreaterThan(0);
  expect(typeof r.time).toBe('string');
  expect(Number.isNaN(Date.parse(r.time as string))).toBe(false);
}

function expectDenied(
  r: AuditRecord | undefined,
  want: { client: string; reason: string; dest_host?: string; dest_port?: number; dest_ip?: string; enforced?: boolean },
): void {
  expect(r).toBeDefined();
  expect(r!.event).toBe('egress.denied');
  expectRecordBasics(r!, want.client);
  expect(r!.reason).toBe(want.reason);
  expect(r!.enforced).toBe(want.enforced ?? true);
  if ('dest_host' in want) expect(r!.dest_host).toBe(want.dest_host);
  if ('dest_port' in want) expect(r!.dest_port).toBe(want.dest_port);
  if ('dest_ip' in want) expect(r!.dest_ip).toBe(want.dest_ip);
}

const HOP_HEADERS = ['keep-alive', 'te', 'trailer', 'upgrade', 'x-hop', 'x-hop-2', 'proxy-authorization', 'proxy-connection', 'proxy-foo'];

// ---------------------------------------------------------------------------

describe('absolute-form HTTP: forwarding', () => {
  it('forwards in origin-form with Host from the URL and hop-by-hop/Proxy-* headers removed (raw socket)', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(
      `GET http://g.whatsapp.net:${origin.port}/path?q=1 HTTP/1.1\r\n` +
        'Host: evil.example.com\r\n' +
        'Connection: keep-alive, X-Hop, x-hop-2\r\n' +
        'Keep-Alive: timeout=5\r\n' +
        'TE: trailers\r\n' +
        'Trailer: X-Trailer\r\n' +
        'Upgrade: websocket\r\n' +
        'X-Hop: secret\r\n' +
        'X-Hop-2: secret\r\n' +
        'Proxy-Authorization: Basic dXNlcjpwYXNz\r\n' +
        'Proxy-Connection: keep-alive\r\n' +
        'Proxy-Foo: bar\r\n' +
        'X-Keep: kept\r\n' +
        'Accept: application/json\r\n' +
        'User-Agent: wa-egress-test\r\n' +
        '\r\n',
    );
    const res = await readResponse(c);
    expect(res.status).toBe(200);
    expect(res.headers['x-origin']).toBe('yes');
    const echo = echoOf(res.body);
    expect(echo.method).toBe('GET');
    expect(echo.url).toBe('/path?q=1');
    expect(echo.headers.host).toBe(`g.whatsapp.net:${origin.port}`);
    // Exactly one Host header reached the origin.
    expect(echo.rawHeaders.filter((_, i) => i % 2 === 0 && echo.rawHeaders[i]!.toLowerCase() === 'host')).toHaveLength(1);
    for (const h of HOP_HEADERS) expect(echo.headers, h).not.toHaveProperty(h);
    // Any Connection header the origin sees is the proxy's own, not the client's.
    expect(String(echo.headers.connection ?? '')).not.toMatch(/x-hop/i);
    expect(echo.headers['x-keep']).toBe('kept');
    expect(echo.headers.accept).toBe('application/json');
    expect(echo.headers['user-agent']).toBe('wa-egress-test');

    const recs = await eventually(() => {
      const r = g.audit();
      return r.length >= 2 && r;
    });
    expect(recs.map((r) => r.event)).toEqual(['egress.allowed', 'egress.closed']);
    const [allowed, closed] = recs as [AuditRecord, AuditRecord];
    for (const r of recs) {
      expectRecordBasics(r, clientOf(c));
      expect(r).toMatchObject({ method: 'GET', request: 1, dest_host: 'g.whatsapp.net', dest_port: origin.port });
    }
    expect(allowed.id).toBe(closed.id);
    expect(allowed).toMatchObject({ rule: 'whatsapp', dest_ip: '127.0.0.1' });
    expect(closed).toMatchObject({ dest_ip: '127.0.0.1', close_reason: 'done', bytes_up: 0 });
    expect(closed.bytes_down).toBe(res.body.length);
    expect(closed.bytes_down as number).toBeGreaterThan(0);
    expect(typeof closed.duration_ms).toBe('number');
  });

  it('works with Node http.request (absolute path, client Host header ignored)', async () => {
    const g = await gateway();
    const res = await viaProxy(g.port, `http://g.whatsapp.net:${origin.port}/path`, {
      headers: { 'Proxy-Authorization': 'Basic eDp5', 'Proxy-Connection': 'keep-alive', 'X-Keep': '1' },
    });
    expect(res.status).toBe(200);
    const echo = echoOf(res.body);
    expect(echo.url).toBe('/path');
    // Node sent `Host: 127.0.0.1:<proxy port>`; the URL decides.
    expect(echo.headers.host).toBe(`g.whatsapp.net:${origin.port}`);
    expect(echo.headers).not.toHaveProperty('proxy-authorization');
    expect(echo.headers).not.toHaveProperty('proxy-connection');
    expect(echo.headers['x-keep']).toBe('1');
    const recs = await eventually(() => {
      const r = g.audit();
      return r.length >= 2 && r;
    });
    expect(recs.map((r) => r.event)).toEqual(['egress.allowed', 'egress.closed']);
    expect(recs[1]).toMatchObject({ proto: 'http', method: 'GET', request: 1, close_reason: 'done', client: `127.0.0.1:${res.localPort}` });
    expect(recs[1]!.bytes_down as number).toBeGreaterThan(0);
  });

  it('a glob-matched name, the default-port-less Host and a %20 in the path', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`GET http://MEDIA.cdn.whatsapp.net.:${origin.port}/a%20b?x=%41 HTTP/1.1\r\nHost: x\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(200);
    const echo = echoOf(res.body);
    expect(echo.url).toBe('/a%20b?x=%41');
    // The Host is the canonical name the policy judged.
    expect(echo.headers.host).toBe(`media.cdn.whatsapp.net:${origin.port}`);
  });

  it('strips hop-by-hop and Proxy-* headers from the response too', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`GET http://g.whatsapp.net:${origin.port}/hop HTTP/1.1\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(200);
    expect(res.headers['x-origin']).toBe('yes');
    expect(res.headers).not.toHaveProperty('x-hop-resp');
    expect(res.headers).not.toHaveProperty('proxy-authenticate');
    expect(res.headers['keep-alive'] ?? '').not.toBe('timeout=5');
  });

  it('an HTTP/1.0 client gets a close-delimited body', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`GET http://g.whatsapp.net:${origin.port}/big?n=100000 HTTP/1.0\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(200);
    expect(res.headers['transfer-encoding']).toBeUndefined();
    expect(res.body.length).toBe(100000);
    expect(sha(res.body)).toBe(sha(bigBody(100000)));
  });

  it('HEAD: no body, and the connection stays usable', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`HEAD http://g.whatsapp.net:${origin.port}/h HTTP/1.1\r\n\r\nGET http://g.whatsapp.net:${origin.port}/after HTTP/1.1\r\n\r\n`);
    const h = await c.head();
    expect(h.status).toBe(200);
    expect(Number(h.headers['content-length'])).toBeGreaterThan(0);
    const r2 = await readResponse(c);
    expect(r2.status).toBe(200);
    expect(echoOf(r2.body)).toMatchObject({ method: 'GET', url: '/after' });
  });

  it('closing the gateway during a forward writes its close record (shutdown)', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.socket.pause();
    const started = origin.bigStarted;
    c.write(`GET http://g.whatsapp.net:${origin.port}/big?n=${20 * 1024 * 1024} HTTP/1.1\r\n\r\n`);
    await eventually(() => g.audit().some((r) => r.event === 'egress.allowed'));
    // The origin is streaming the answer: the forward is under way.
    await eventually(() => origin.bigStarted > started);
    await g.close();
    // The log is closed (and flushed by close): read the file itself.
    const recs = readFileSync(join(g.dir, 'audit.log'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as AuditRecord);
    expect(recs.map((r) => r.event)).toEqual(['egress.allowed', 'egress.closed']);
    expect(recs[1]).toMatchObject({ close_reason: 'shutdown', request: 1 });
  });

  it('keep-alive: every request on one connection is judged on its own', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    const before = origin.connections;

    c.write(`GET http://g.whatsapp.net:${origin.port}/one HTTP/1.1\r\nHost: g.whatsapp.net\r\n\r\n`);
    const r1 = await readResponse(c);
    expect(r1.status).toBe(200);
    expect(echoOf(r1.body).url).toBe('/one');

    c.write(`GET http://other.example.com:${origin.port}/two HTTP/1.1\r\nHost: g.whatsapp.net\r\n\r\n`);
    const r2 = await readResponse(c);
    expect(r2.status).toBe(403);
    expect(r2.headers['x-wa-egress-reason']).toBe('host_not_allowed');
    expect(r2.headers.connection ?? '').not.toMatch(/close/i);

    c.write(`POST http://g.whatsapp.net:${origin.port}/three HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello`);
    const r3 = await readResponse(c);
    expect(r3.status).toBe(200);
    expect(echoOf(r3.body)).toMatchObject({ method: 'POST', url: '/three', body: 'hello' });

    c.write(`GET http://g.whatsapp.net:1/four HTTP/1.1\r\n\r\n`);
    const r4 = await readResponse(c);
    expect(r4.status).toBe(403);
    expect(r4.headers['x-wa-egress-reason']).toBe('port_not_allowed');

    c.write(`GET http://g.whatsapp.net:${origin.port}/five HTTP/1.1\r\n\r\n`);
    const r5 = await readResponse(c);
    expect(r5.status).toBe(200);
    expect(echoOf(r5.body).url).toBe('/five');
    expect(c.closed).toBe(false);

    // One upstream connection per allowed request, none for the denied ones.
    expect(origin.connections - before).toBe(3);

    const recs = await eventually(() => {
      const r = g.audit();
      return r.filter((x) => x.event === 'egress.closed').length >= 3 && r;
    });
    expect(recs.map((r) => `${r.request}:${r.event}`)).toEqual([
      '1:egress.allowed',
      '1:egress.closed',
      '2:egress.denied',
      '3:egress.allowed',
      '3:egress.closed',
      '4:egress.denied',
      '5:egress.allowed',
      '5:egress.closed',
    ]);
    const ids = new Set(recs.map((r) => r.id));
    expect(ids.size).toBe(1);
    for (const r of recs) expectRecordBasics(r, clientOf(c));
    expectDenied(recs[2], { client: clientOf(c), reason: 'host_not_allowed', dest_host: 'other.example.com', dest_port: origin.port });
    expectDenied(recs[5], { client: clientOf(c), reason: 'port_not_allowed', dest_host: 'g.whatsapp.net', dest_port: 1 });
    expect(recs[4]).toMatchObject({ method: 'POST', bytes_up: 5, close_reason: 'done' });
  });

  it('keep-alive: pipelined requests are answered in order', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(
      `GET http://g.whatsapp.net:${origin.port}/p1 HTTP/1.1\r\n\r\n` +
        `GET http://other.example.com:${origin.port}/p2 HTTP/1.1\r\n\r\n` +
        `GET http://g.whatsapp.net:${origin.port}/p3 HTTP/1.1\r\n\r\n`,
    );
    const r1 = await readResponse(c);
    const r2 = await readResponse(c);
    const r3 = await readResponse(c);
    expect(r1.status).toBe(200);
    expect(echoOf(r1.body).url).toBe('/p1');
    expect(r2.status).toBe(403);
    expect(r2.headers['x-wa-egress-reason']).toBe('host_not_allowed');
    expect(r3.status).toBe(200);
    expect(echoOf(r3.body).url).toBe('/p3');
    const recs = await eventually(() => {
      const r = g.audit();
      return r.filter((x) => x.event === 'egress.closed').length >= 2 && r;
    });
    expect(recs.filter((r) => r.event === 'egress.denied')).toHaveLength(1);
    expect(recs.filter((r) => r.event === 'egress.allowed')).toHaveLength(2);
  });

  it('keep-alive with a Node agent reuses the client connection', async () => {
    const g = await gateway();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const a = await viaProxy(g.port, `http://g.whatsapp.net:${origin.port}/a`, { agent });
      const b = await viaProxy(g.port, `http://other.example.com:${origin.port}/b`, { agent });
      const d = await viaProxy(g.port, `http://g.whatsapp.net:${origin.port}/c`, { agent });
      expect([a.status, b.status, d.status]).toEqual([200, 403, 200]);
      expect(b.headers['x-wa-egress-reason']).toBe('host_not_allowed');
      const recs = await eventually(() => {
        const r = g.audit();
        return r.filter((x) => x.event === 'egress.closed').length >= 2 && r;
      });
      expect(new Set(recs.map((r) => r.id)).size).toBe(1);
      expect(recs.map((r) => r.request)).toEqual([1, 1, 2, 3, 3]);
    } finally {
      agent.destroy();
    }
  });
});

describe('absolute-form HTTP: bodies', () => {
  it('POST with Content-Length is forwarded intact and counted as bytes_up', async () => {
    const g = await gateway();
    const body = randomBytes(300 * 1024);
    const res = await viaProxy(g.port, `http://g.whatsapp.net:${origin.port}/upload`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length },
      body,
    });
    expect(res.status).toBe(200);
    const echo = echoOf(res.body);
    expect(echo).toMatchObject({ method: 'POST', url: '/upload', bodyLength: body.length, bodySha: sha(body) });
    expect(echo.headers['content-length']).toBe(String(body.length));
    const closed = await eventually(() => g.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ method: 'POST', bytes_up: body.length, close_reason: 'done' });
  });

  it('a chunked POST is forwarded intact', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    const parts = ['hello ', 'chunked ', 'world', randomBytes(20000).toString('hex')];
    c.write(`POST http://g.whatsapp.net:${origin.port}/chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Keep: 1\r\n\r\n`);
    for (const p of parts) {
      c.write(`${Buffer.byteLength(p).toString(16)}\r\n${p}\r\n`);
      await new Promise((r) => setTimeout(r, 10));
    }
    c.write('0\r\n\r\n');
    const res = await readResponse(c);
    expect(res.status).toBe(200);
    const full = Buffer.from(parts.join(''));
    const echo = echoOf(res.body);
    expect(echo).toMatchObject({ method: 'POST', url: '/chunked', bodyLength: full.length, bodySha: sha(full) });
    expect(echo.headers['x-keep']).toBe('1');
    const closed = await eventually(() => g.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ bytes_up: full.length, close_reason: 'done' });
  });

  it('a body on a GET (chunked) keeps its framing on the way to the origin', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`GET http://g.whatsapp.net:${origin.port}/getbody HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(200);
    expect(echoOf(res.body)).toMatchObject({ method: 'GET', url: '/getbody', body: 'hello' });
    // The origin saw exactly one request (no body parsed as a second one),
    // by the time the gateway is done with the exchange.
    await eventually(() => g.audit().some((r) => r.event === 'egress.closed'));
    expect(origin.requests.filter((r) => r.url.startsWith('/getbody') || r.url.startsWith('hello'))).toHaveLength(1);
  });

  it('a chunked DELETE body keeps its framing too', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`DELETE http://g.whatsapp.net:${origin.port}/del HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(200);
    expect(echoOf(res.body)).toMatchObject({ method: 'DELETE', url: '/del', body: 'abc' });
  });

  it('a malformed chunk inside a forwarded body: the close record says bad_request, the forward is cut', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`POST http://g.whatsapp.net:${origin.port}/badchunk HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
    // The request has been allowed and is being forwarded.
    await eventually(() => g.audit().some((r) => r.event === 'egress.allowed'));
    c.write('zz\r\nnope\r\n0\r\n\r\n');
    const res = await readResponse(c);
    expect(res.status).toBe(400);
    expect(res.headers['x-wa-egress-reason']).toBe('bad_request');
    await eventually(() => c.ended || c.closed);
    const recs = await eventually(() => {
      const r = g.audit();
      return r.some((x) => x.event === 'egress.closed') && r;
    });
    // One decision record per request: the refusal goes on the close record.
    expect(recs.map((r) => `${r.request}:${r.event}:${r.close_reason ?? ''}:${r.reason ?? ''}`)).toEqual([
      '1:egress.allowed::',
      '1:egress.closed:client_error:bad_request',
    ]);
    expect(recs[1]!.bytes_up).toBe(5);
  });

  it('a large upload is forwarded intact', async () => {
    const g = await gateway();
    const body = bigBody(4 * 1024 * 1024 + 17);
    const res = await viaProxy(g.port, `http://g.whatsapp.net:${origin.port}/bigup`, {
      method: 'PUT',
      headers: { 'Content-Length': body.length },
      body,
    });
    expect(res.status).toBe(200);
    expect(echoOf(res.body)).toMatchObject({ method: 'PUT', bodyLength: body.length, bodySha: sha(body) });
    const closed = await eventually(() => g.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ bytes_up: body.length, close_reason: 'done' });
  });

  it('a large response body (several MiB) streams intact', async () => {
    const g = await gateway();
    const n = 8 * 1024 * 1024 + 123;
    const res = await viaProxy(g.port, `http://g.whatsapp.net:${origin.port}/big?n=${n}`);
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(n);
    expect(sha(res.body)).toBe(sha(bigBody(n)));
    const closed = await eventually(() => g.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ bytes_down: n, close_reason: 'done' });
  });

  it('a large response streams to a slow reader', async () => {
    const g = await gateway();
    const n = 6 * 1024 * 1024;
    const c = await raw(g.port);
    c.socket.pause();
    c.write(`GET http://g.whatsapp.net:${origin.port}/big?n=${n} HTTP/1.1\r\n\r\n`);
    await new Promise((r) => setTimeout(r, 300));
    c.socket.resume();
    const res = await readResponse(c, 15000);
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(n);
    expect(sha(res.body)).toBe(sha(bigBody(n)));
  });
});

describe('absolute-form HTTP: denials', () => {
  async function denied(
    g: TestGateway,
    url: string,
  ): Promise<{ c: RawClient; res: Response; recs: AuditRecord[] }> {
    const c = await raw(g.port);
    c.write(`GET ${url} HTTP/1.1\r\nHost: g.whatsapp.net:${origin.port}\r\n\r\n`);
    const res = await readResponse(c);
    // Written before the answer was sent.
    const recs = g.audit();
    return { c, res, recs };
  }

  it('host_not_allowed', async () => {
    const g = await gateway();
    const before = origin.connections;
    const { c, res, recs } = await denied(g, `http://other.example.com:${origin.port}/x`);
    expect(res.status).toBe(403);
    expect(res.headers['x-wa-egress-reason']).toBe('host_not_allowed');
    expect(recs).toHaveLength(1);
    expectDenied(recs[0], { client: clientOf(c), reason: 'host_not_allowed', dest_host: 'other.example.com', dest_port: origin.port });
    expect(recs[0]).toMatchObject({ method: 'GET', request: 1 });
    expect(origin.connections).toBe(before);
  });

  it('port_not_allowed', async () => {
    const g = await gateway();
    const before = otherPort.connections;
    const { c, res, recs } = await denied(g, `http://g.whatsapp.net:${otherPort.port}/`);
    expect(res.status).toBe(403);
    expect(res.headers['x-wa-egress-reason']).toBe('port_not_allowed');
    expect(recs).toHaveLength(1);
    expectDenied(recs[0], { client: clientOf(c), reason: 'port_not_allowed', dest_host: 'g.whatsapp.net', dest_port: otherPort.port });
    expect(otherPort.connections).toBe(before);
  });

  it('ip_not_allowed for an IP literal when no rule has ip_ranges', async () => {
    const g = await gateway();
    const before = origin.connections;
    const { c, res, recs } = await denied(g, `http://127.0.0.1:${origin.port}/`);
    expect(res.status).toBe(403);
    expect(res.headers['x-wa-egress-reason']).toBe('ip_not_allowed');
    expect(recs).toHaveLength(1);
    expectDenied(recs[0], { client: clientOf(c), reason: 'ip_not_allowed', dest_host: '127.0.0.1', dest_port: origin.port, dest_ip: '127.0.0.1' });
    expect(origin.connections).toBe(before);
  });

  it('ip_not_allowed for other IP literal forms, normalised', async () => {
    const g = await gateway();
    const before = origin.connections;
    for (const host of ['2130706433', '0x7f000001', '127.1', '[::ffff:127.0.0.1]']) {
      const { res } = await denied(g, `http://${host}:${origin.port}/`);
      expect(res.status, host).toBe(403);
      expect(res.headers['x-wa-egress-reason'], host).toBe('ip_not_allowed');
    }
    const recs = g.audit();
    expect(recs).toHaveLength(4);
    for (const r of recs) expect(r).toMatchObject({ event: 'egress.denied', reason: 'ip_not_allowed' });
    expect(recs.slice(0, 3).map((r) => r.dest_host)).toEqual(['127.0.0.1', '127.0.0.1', '127.0.0.1']);
    expect(origin.connections).toBe(before);
  });

  it('special_range for a matched name that resolves to 127.0.0.2', async () => {
    const g = await gateway();
    const before = special.connections;
    const { c, res, recs } = await denied(g, `http://local.whatsapp.net:${special.port}/`);
    expect(res.status).toBe(403);
    expect(res.headers['x-wa-egress-reason']).toBe('special_range');
    expect(recs).toHaveLength(1);
    expectDenied(recs[0], {
      client: clientOf(c),
      reason: 'special_range',
      dest_host: 'local.whatsapp.net',
      dest_port: special.port,
      dest_ip: '127.0.0.2',
    });
    expect(recs[0]!.rule).toBe('whatsapp');
    c.destroy();
    await auditBarrier(g);
    expect(special.connections).toBe(before);
  });

  it('a denied POST body does not spoil the connection', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`POST http://other.example.com:${origin.port}/ HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world`);
    const r1 = await readResponse(c);
    expect(r1.status).toBe(403);
    c.write(`GET http://g.whatsapp.net:${origin.port}/after HTTP/1.1\r\n\r\n`);
    const r2 = await readResponse(c);
    expect(r2.status).toBe(200);
    expect(echoOf(r2.body).url).toBe('/after');
  });
});

describe('absolute-form HTTP: failures of allowed destinations', () => {
  it('dns_failed: a matched name that does not resolve', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`GET http://nodns.whatsapp.net:${origin.port}/ HTTP/1.1\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(502);
    expect(res.headers['x-wa-egress-reason']).toBe('dns_failed');
    const recs = g.audit();
    expect(recs).toHaveLength(1);
    expect(recs[0]).toMatchObject({
      event: 'egress.failed',
      reason: 'dns_failed',
      rule: 'whatsapp',
      dest_host: 'nodns.whatsapp.net',
      dest_port: origin.port,
      method: 'GET',
      request: 1,
    });
    expectRecordBasics(recs[0]!, clientOf(c));
  });

  it('host_not_allowed (not dns_failed) for an unmatched name that does not resolve', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`GET http://nodns.example.com:${origin.port}/ HTTP/1.1\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(403);
    expect(res.headers['x-wa-egress-reason']).toBe('host_not_allowed');
  });

  it('connect_failed: an allowed destination with no listener', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`GET http://closed.whatsapp.net:${closedPort}/ HTTP/1.1\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(502);
    expect(res.headers['x-wa-egress-reason']).toBe('connect_failed');
    const recs = g.audit();
    expect(recs).toHaveLength(1);
    expect(recs[0]).toMatchObject({
      event: 'egress.failed',
      reason: 'connect_failed',
      rule: 'whatsapp',
      dest_host: 'closed.whatsapp.net',
      dest_port: closedPort,
      dest_ip: '127.0.0.1',
    });
    expectRecordBasics(recs[0]!, clientOf(c));
    // The client connection is still usable.
    c.write(`GET http://g.whatsapp.net:${origin.port}/after HTTP/1.1\r\n\r\n`);
    const r2 = await readResponse(c);
    expect(r2.status).toBe(200);
  });
});

describe('malformed requests: 400 bad_request', () => {
  const P = () => origin.port;
  // [name, request, target the record should name (when readable)]
  const cases: Array<[string, () => string, { host?: string; port?: number } | null]> = [
    ['origin-form request', () => `GET / HTTP/1.1\r\nHost: g.whatsapp.net:${P()}\r\n\r\n`, null],
    ['origin-form with a query', () => `GET /path?x=http://g.whatsapp.net/ HTTP/1.1\r\nHost: g.whatsapp.net\r\n\r\n`, null],
    ['https:// absolute URL', () => `GET https://g.whatsapp.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['ftp:// absolute URL', () => `GET ftp://g.whatsapp.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['userinfo', () => `GET http://user@g.whatsapp.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['userinfo with password', () => `GET http://user:pw@g.whatsapp.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['port 0', () => `GET http://g.whatsapp.net:0/ HTTP/1.1\r\n\r\n`, null],
    ['port 65536', () => `GET http://g.whatsapp.net:65536/ HTTP/1.1\r\n\r\n`, null],
    ['non-numeric port', () => `GET http://g.whatsapp.net:http/ HTTP/1.1\r\n\r\n`, null],
    ['unbracketed IPv6', () => `GET http://::1:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['unterminated IPv6', () => `GET http://[::1:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['% in host', () => `GET http://g%2ewhatsapp.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['%20 in host', () => `GET http://g.whatsapp.net%20:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['bad character in host', () => `GET http://g.whats$app.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['empty host', () => `GET http://:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['label longer than 63', () => `GET http://${'a'.repeat(64)}.whatsapp.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    // Rejected by Node's HTTP parser (the clientError path).
    ['space in host', () => `GET http://g whatsapp.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    ['garbage', () => '\x00\x01 junk\r\n\r\n', null],
    ['invalid method', () => `G{T http://g.whatsapp.net:${P()}/ HTTP/1.1\r\n\r\n`, null],
    [
      'Content-Length with Transfer-Encoding: chunked',
      () => `POST http://g.whatsapp.net:${P()}/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      { host: 'g.whatsapp.net', port: -1 },
    ],
    [
      'duplicate different Content-Length',
      () => `POST http://g.whatsapp.net:${P()}/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!`,
      { host: 'g.whatsapp.net', port: -1 },
    ],
    [
      'Transfer-Encoding that does not end in chunked',
      () => `POST http://g.whatsapp.net:${P()}/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabc`,
      { host: 'g.whatsapp.net', port: -1 },
    ],
    [
      'obsolete line folding',
      () => `GET http://g.whatsapp.net:${P()}/ HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n`,
      { host: 'g.whatsapp.net', port: -1 },
    ],
    ['bare LF line endings', () => `GET http://g.whatsapp.net:${P()}/ HTTP/1.1\nX-A: 1\n\n`, null],
    ['control character in a header value', () => `GET http://g.whatsapp.net:${P()}/ HTTP/1.1\r\nX-A: a\x01b\r\n\r\n`, null],
  ];

  for (const [name, request, target] of cases) {
    it(name, async () => {
      const g = await gateway();
      const before = origin.connections;
      const c = await raw(g.port);
      c.write(request());
      const res = await readResponse(c);
      expect(res.status).toBe(400);
      expect(res.headers['x-wa-egress-reason']).toBe('bad_request');
      // A malformed request ends the connection.
      await eventually(() => c.ended || c.closed);
      const recs = await eventually(() => {
        const r = g.audit();
        return r.length >= 1 && r;
      });
      // Exactly one record, even if more data follows.
      const who = clientOf(c);
      if (!c.closed) c.write('more garbage\r\n\r\nGET http://g.whatsapp.net/ HTTP/1.1\r\n\r\n');
      c.socket.end();
      await eventually(() => c.closed);
      // Whatever the gateway made of the extra bytes is recorded before a later connection's record.
      const all = await auditBarrier(g);
      expect(all).toHaveLength(1);
      expectDenied(recs[0], { client: who, reason: 'bad_request' });
      if (target) {
        expect(recs[0]!.dest_host).toBe(target.host);
        expect(recs[0]!.dest_port).toBe(target.port === -1 ? P() : target.port);
      }
      expect(origin.connections).toBe(before);
    });
  }

  it('a head larger than limits.max_head_bytes (16 KiB): 431 head_too_large, one record, no dial', async () => {
    const g = await gateway();
    const before = origin.connections;
    const c = await raw(g.port);
    c.write(`GET http://g.whatsapp.net:${P()}/ HTTP/1.1\r\nX-Big: ${'a'.repeat(17 * 1024)}\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(431);
    expect(res.headers['x-wa-egress-reason']).toBe('head_too_large');
    await eventually(() => c.ended || c.closed);
    const recs = await eventually(() => g.audit().length >= 1 && g.audit());
    expect(recs).toHaveLength(1);
    expectDenied(recs[0], { client: clientOf(c), reason: 'head_too_large' });
    expect(recs[0]!.dest_host).toBe('g.whatsapp.net');
    expect(origin.connections).toBe(before);
  });

  it('a malformed request after a good one on a keep-alive connection', async () => {
    const g = await gateway();
    const c = await raw(g.port);
    c.write(`GET http://g.whatsapp.net:${origin.port}/ok HTTP/1.1\r\n\r\n`);
    expect((await readResponse(c)).status).toBe(200);
    c.write(`GET http://user@g.whatsapp.net:${origin.port}/ HTTP/1.1\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(400);
    expect(res.headers['x-wa-egress-reason']).toBe('bad_request');
    await eventually(() => c.ended || c.closed);
    const recs = await eventually(() => {
      const r = g.audit();
      return r.length >= 3 && r;
    });
    expect(recs.map((r) => `${r.request}:${r.event}`)).toEqual(['1:egress.allowed', '1:egress.closed', '2:egress.denied']);
    expect(recs[2]!.reason).toBe('bad_request');
  });
});

describe('report mode', () => {
  it('lets a request no rule allows through, auditing what enforce would deny', async () => {
    const g = await gateway('report');
    const c = await raw(g.port);
    c.write(`GET http://other.example.com:${origin.port}/report HTTP/1.1\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(200);
    expect(res.headers['x-wa-egress-reason']).toBeUndefined();
    const echo = echoOf(res.body);
    expect(echo.url).toBe('/report');
    expect(echo.headers.host).toBe(`other.example.com:${origin.port}`);
    const recs = await eventually(() => {
      const r = g.audit();
      return r.length >= 3 && r;
    });
    expect(recs.map((r) => r.event)).toEqual(['egress.denied', 'egress.allowed', 'egress.closed']);
    expectDenied(recs[0], {
      client: clientOf(c),
      reason: 'host_not_allowed',
      dest_host: 'other.example.com',
      dest_port: origin.port,
      dest_ip: '127.0.0.1',
      enforced: false,
    });
    expect(recs[2]).toMatchObject({ close_reason: 'done' });
    expect(recs[2]!.bytes_down as number).toBeGreaterThan(0);
    expect(new Set(recs.map((r) => r.id)).size).toBe(1);
  });

  it('still answers 400 to a malformed request, enforced', async () => {
    const g = await gateway('report');
    const c = await raw(g.port);
    c.write(`GET http://user@g.whatsapp.net:${origin.port}/ HTTP/1.1\r\n\r\n`);
    const res = await readResponse(c);
    expect(res.status).toBe(400);
    const recs = g.audit();
    expect(recs).toHaveLength(1);
    expectDenied(recs[0], { client: clientOf(c), reason: 'bad_request', enforced: true });
  });
});

describe('curl through the proxy', () => {
  // curl from the helpers: `-q` (no .curlrc) and no proxy variables; nothing but loopback.
  it('returns the origin body for an allowed URL', async () => {
    const g = await gateway();
    const r = await curl(['-s', '-S', '-x', `http://127.0.0.1:${g.port}`, `http://g.whatsapp.net:${origin.port}/curl?x=1`]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const echo = JSON.parse(r.stdout) as Echo;
    expect(echo.url).toBe('/curl?x=1');
    expect(echo.headers.host).toBe(`g.whatsapp.net:${origin.port}`);
    expect(echo.headers).not.toHaveProperty('proxy-connection');
    expect(String(echo.headers['user-agent'])).toMatch(/^curl\//);
    const recs = await eventually(() => {
      const x = g.audit();
      return x.length >= 2 && x;
    });
    expect(recs.map((x) => x.event)).toEqual(['egress.allowed', 'egress.closed']);
  });

  it('returns 403 and the reason header for a denied URL', async () => {
    const g = await gateway();
    const r = await curl(['-s', '-i', '-x', `http://127.0.0.1:${g.port}`, `http://other.example.com:${origin.port}/`]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 403 /);
    expect(r.stdout).toMatch(/^X-Wa-Egress-Reason: host_not_allowed\r?$/im);
    const recs = g.audit();
    expect(recs).toHaveLength(1);
    expect(recs[0]).toMatchObject({ event: 'egress.denied', reason: 'host_not_allowed', proto: 'http', method: 'GET' });
  });

  it('a POST with curl --data is forwarded intact', async () => {
    const g = await gateway();
    const r = await curl(['-s', '-S', '-x', `http://127.0.0.1:${g.port}`, '--data-binary', 'a=1&b=2', `http://g.whatsapp.net:${origin.port}/form`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ method: 'POST', url: '/form', body: 'a=1&b=2' });
  });
});


