import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import { eventually, type AuditRecord, type TestGateway } from '../helpers.js';

/**
 * Shared fixtures for the security suite: a sink on a denied loopback address
 * that counts every connection it gets, an HTTP origin on the allowed address
 * with the same port, raw SOCKS5 exchanges, and audit lookups per client.
 */

export interface Sink {
  host: string;
  port: number;
  /** Connections accepted so far; a bypass shows up here. */
  connections: number;
  close(): Promise<void>;
}

function listenTcp(server: net.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, exclusive: true }, () => {
      server.removeListener('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function closer(server: net.Server, sockets: Set<Socket>): () => Promise<void> {
  return () =>
    new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    });
}

export async function startSink(host: string, port = 0): Promise<Sink> {
  const sockets = new Set<Socket>();
  const server = net.createServer((s) => {
    sink.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
  });
  const sink: Sink = { host, port: 0, connections: 0, close: closer(server, sockets) };
  sink.port = await listenTcp(server, host, port);
  return sink;
}

export interface Origin {
  port: number;
  connections: number;
  /** Requests received: method, url and Host header. */
  requests: { method: string; url: string; host: string | undefined }[];
  close(): Promise<void>;
}

/** An HTTP origin that answers every request with 200 "origin". */
export async function startOrigin(host: string, port: number): Promise<Origin> {
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    origin.requests.push({ method: req.method ?? '', url: req.url ?? '', host: req.headers.host });
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 6 });
      res.end('origin');
    });
  });
  server.on('connection', (s) => {
    origin.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, s) => s.destroy());
  const origin: Origin = { port, connections: 0, requests: [], close: closer(server, sockets) };
  origin.port = await listenTcp(server, host, port);
  return origin;
}

/**
 * A sink on `deniedHost` and an origin on `allowedHost`, both on one port
 * (the port the policy's rules list). Retries when the port is taken on the
 * allowed address.
 */
export async function startSinkAndOrigin(deniedHost = '127.0.0.2', allowedHost = '127.0.0.1'): Promise<{ sink: Sink; origin: Origin; port: number }> {
  for (let i = 0; i < 20; i++) {
    const sink = await startSink(deniedHost);
    try {
      const origin = await startOrigin(allowedHost, sink.port);
      return { sink, origin, port: sink.port };
    } catch {
      await sink.close();
    }
  }
  throw new Error('no port free on both addresses');
}

/** `127.0.0.1:port` as the audit log names a client socket. */
export function clientName(s: Socket): string {
  return `${s.localAddress}:${s.localPort}`;
}

/** How many audit records there are now: records of later clients come after it. */
export function mark(gw: TestGateway): number {
  return gw.audit().length;
}

/**
 * The audit records of one client connection written after `since` (client
 * ports are reused over a long run, so a mark taken before the connection
 * keeps earlier clients' records out).
 */
export function recordsOf(gw: TestGateway, s: Socket | string, since = 0): AuditRecord[] {
  const name = typeof s === 'string' ? s : clientName(s);
  return gw
    .audit()
    .slice(since)
    .filter((r) => r.client === name);
}

/** Wait for at least one record of the client and return them all (`ms`: a hang guard). */
export async function waitRecords(gw: TestGateway, client: string, since = 0, ms = 10_000): Promise<AuditRecord[]> {
  return eventually(() => {
    const r = recordsOf(gw, client, since);
    return r.length > 0 && r;
  }, ms);
}

export interface ExchangeOptions {
  /** Stop reading (and close) once what arrived satisfies this, instead of waiting for the proxy to close. */
  until?: (data: Buffer) => boolean;
  /** Hang guard: give up after this long with `closed: false`. */
  ms?: number;
}

/**
 * Everything a socket received until the proxy closed it (or `until` held,
 * or the hang guard passed); the client name it had. `closed` says whether
 * the proxy closed it.
 */
export function exchange(port: number, data: Buffer | string, opts: ExchangeOptions = {}): Promise<{ data: Buffer; client: string; closed: boolean }> {
  const { until, ms = 15_000 } = opts;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let client = '';
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ data: Buffer.concat(chunks), client, closed });
    };
    const s = net.connect({ port, host: '127.0.0.1' }, () => {
      client = clientName(s);
      s.write(data);
    });
    const timer = setTimeout(() => finish(false), ms);
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      if (until?.(Buffer.concat(chunks))) finish(false);
    });
    s.on('error', () => {});
    s.on('close', () => {
      if (!client && !done) {
        done = true;
        clearTimeout(timer);
        return reject(new Error('connection failed'));
      }
      finish(true);
    });
  });
}

/** Status code and reason header of the first response head in `data`. */
export function parseHead(data: Buffer): { status: number; reason: string | undefined; text: string } {
  const text = data.toString('latin1');
  const m = /^HTTP\/1\.1 (\d{3}) /.exec(text);
  const head = text.split('\r\n\r\n', 1)[0]!;
  return { status: m ? Number(m[1]) : 0, reason: /\r\nX-Wa-Egress-Reason: ([a-z_]+)/i.exec(head)?.[1], text };
}

// ---------------------------------------------------------------------------
// SOCKS5

export type SocksAddress = { atyp: 1; ip: string } | { atyp: 3; name: Buffer | string } | { atyp: 4; ip: bigint };

export function socksRequest(addr: SocksAddress, port: number, cmd = 1): Buffer {
  let a: Buffer;
  if (addr.atyp === 1) a = Buffer.from(addr.ip.split('.').map(Number));
  else if (addr.atyp === 3) {
    const n = typeof addr.name === 'string' ? Buffer.from(addr.name, 'utf8') : addr.name;
    a = Buffer.concat([Buffer.from([n.length]), n]);
  } else {
    a = Buffer.alloc(16);
    a.writeBigUInt64BE(addr.ip >> 64n, 0);
    a.writeBigUInt64BE(addr.ip & 0xffffffffffffffffn, 8);
  }
  return Buffer.concat([Buffer.from([5, cmd, 0, addr.atyp]), a, Buffer.from([port >> 8, port & 255])]);
}

/**
 * Greeting and request in one write; resolves with the SOCKS reply code
 * (null when the proxy closed before replying) and the client name. With
 * `open`, returns as soon as the reply has arrived (an allowed tunnel stays
 * open); otherwise waits for the proxy to close.
 */
export async function socksExchange(
  proxyPort: number,
  addr: SocksAddress,
  port: number,
  opts: { open?: boolean; ms?: number } = {},
): Promise<{ reply: number | null; client: string; data: Buffer; closed: boolean }> {
  const until = opts.open ? (d: Buffer) => d.length >= 12 : undefined;
  const r = await exchange(proxyPort, Buffer.concat([Buffer.from([5, 1, 0]), socksRequest(addr, port)]), { until, ms: opts.ms });
  const reply = r.data.length >= 4 && r.data[0] === 5 && r.data[1] === 0 && r.data[2] === 5 ? r.data[3]! : null;
  return { reply, client: r.client, data: r.data, closed: r.closed };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
