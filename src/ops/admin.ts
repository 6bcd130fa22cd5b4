import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { ListenAddress } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { Metrics } from './metrics.js';

/**
 * The admin listener (`listen.admin`): `GET /metrics` (Prometheus text),
 * `GET /healthz` (200 while the process runs), `GET /readyz` (200 while
 * the gateway listens and does not drain, else 503). It never proxies:
 * anything else is 404, a method other than GET 405. Its own small limits
 * (head and request timeouts, head size, connections, idle sockets) keep a
 * slow or greedy client from holding it; it is not in the proxy's
 * descriptor budget, connection limits or audit log.
 */

const HEAD_TIMEOUT_MS = 5000;
const REQUEST_TIMEOUT_MS = 10_000;
const IDLE_TIMEOUT_MS = 15_000;
const KEEPALIVE_MS = 5000;
const MAX_HEAD_BYTES = 4096;
const MAX_CONNECTIONS = 64;

export interface AdminOptions {
  metrics: Pick<Metrics, 'text' | 'contentType'>;
  /** Ready for traffic: listening and not draining. */
  ready: () => boolean;
}

export function createAdminServer(opts: AdminOptions): http.Server {
  const server = http.createServer(
    {
      headersTimeout: HEAD_TIMEOUT_MS,
      requestTimeout: REQUEST_TIMEOUT_MS,
      keepAliveTimeout: KEEPALIVE_MS,
      connectionsCheckingInterval: 1000,
      maxHeaderSize: MAX_HEAD_BYTES,
      noDelay: true,
    },
    (req, res) => void handle(opts, req, res),
  );
  server.maxConnections = MAX_CONNECTIONS;
  server.maxRequestsPerSocket = 100;
  server.timeout = IDLE_TIMEOUT_MS;
  // Malformed, slow (408) and oversized (431) heads get Node's own answers.
  // Without a listener Node would drop a CONNECT silently: it gets its 405.
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    socket.end('HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n', () => socket.destroy());
  });
  return server;
}

async function handle(opts: AdminOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  // Origin-form only: an absolute URL (a proxy request) names no path here.
  const url = req.url ?? '';
  const path = url.startsWith('/') ? url.split('?', 1)[0] : undefined;
  const known = path === '/metrics' || path === '/healthz' || path === '/readyz';
  if (!known) return reply(res, 404, 'not found\n');
  if (req.method !== 'GET') return reply(res, 405, 'method not allowed\n', { Allow: 'GET' });
  if (path === '/healthz') return reply(res, 200, 'ok\n');
  if (path === '/readyz') return opts.ready() ? reply(res, 200, 'ready\n') : reply(res, 503, 'not ready\n');
  let text: string;
  try {
    text = await opts.metrics.text();
  } catch (err) {
    return reply(res, 500, `cannot collect metrics: ${(err as Error).message}\n`);
  }
  reply(res, 200, text, { 'Content-Type': opts.metrics.contentType });
}

function reply(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(body);
}

export interface Admin {
  address(): AddressInfo;
  close(): Promise<void>;
}

/** What the admin listener serves on /metrics; it lives as long as the gateway (a moved listener keeps its counts). */
export type AdminMetrics = Pick<Metrics, 'text' | 'contentType'>;

/** Start the admin listener. */
export function startAdmin(metrics: AdminMetrics, at: ListenAddress, ready: () => boolean, log?: Logger): Promise<Admin> {
  const server = createAdminServer({ metrics, ready });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: at.host, port: at.port, ipv6Only: at.host === '::' ? false : undefined }, () => {
      server.removeAllListeners('error');
      server.on('error', (err) => log?.error({ err, listener: 'admin' }, 'listener error'));
      const a = server.address() as AddressInfo;
      log?.info({ listener: 'admin', address: a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}` }, 'listening');
      resolve({
        address: () => a,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

/**
 * The admin listener where the configuration in force puts it: started at
 * start, moved (the new address bound first), added or removed by a
 * reload. Its metrics live while it exists, so a move keeps the counts.
 * `own` is told of every address it takes or gives up (the loop check).
 */
export class AdminPlace {
  private admin: Admin | undefined;
  private at: ListenAddress | undefined;
  private metrics: (AdminMetrics & { close(): void }) | undefined;

  constructor(
    private readonly makeMetrics: () => AdminMetrics & { close(): void },
    private readonly ready: () => boolean,
    private readonly own: (added: AddressInfo | undefined, removed: AddressInfo | undefined) => void,
    private readonly log: Logger,
  ) {}

  /** At start: a bind error is thrown (serve reports it at its key). */
  async start(at: ListenAddress | undefined): Promise<void> {
    if (!at) return;
    this.admin = await this.open(at);
    this.at = at;
    this.own(this.admin.address(), undefined);
  }

  /** A reload's address; errors are logged and the listener stays where it was. */
  async move(want: ListenAddress | undefined): Promise<void> {
    const was = this.at;
    if (want?.host === was?.host && want?.port === was?.port) return;
    let fresh: Admin | undefined;
    if (want) {
      try {
        fresh = await this.open(want);
      } catch (err) {
        return void this.log.error({ err, listener: 'admin', address: want.text }, 'cannot bind the new admin address; the admin listener stays where it was');
      }
    }
    const old = this.admin;
    this.admin = fresh;
    this.at = want;
    this.own(fresh?.address(), old?.address());
    if (old) {
      await old.close();
      this.log.info({ listener: 'admin', address: was?.text }, fresh ? 'admin listener moved' : 'admin listener removed');
    }
    if (!fresh) this.dropMetrics();
  }

  address(): AddressInfo | undefined {
    return this.admin?.address();
  }

  async close(): Promise<void> {
    await this.admin?.close();
    this.admin = undefined;
    this.dropMetrics();
  }

  private async open(at: ListenAddress): Promise<Admin> {
    const fresh = !this.metrics;
    this.metrics ??= this.makeMetrics();
    try {
      return await startAdmin(this.metrics, at, this.ready, this.log);
    } catch (err) {
      if (fresh) this.dropMetrics();
      throw err;
    }
  }

  private dropMetrics(): void {
    this.metrics?.close();
    this.metrics = undefined;
  }
}
