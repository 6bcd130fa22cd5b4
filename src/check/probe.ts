import net from 'node:net';
import tls from 'node:tls';
import type { ProxyUrl } from './proxy.js';

/**
 * One check-network probe: reach `host:port` through an HTTP proxy (CONNECT
 * answered 2xx: the far end was reached) or directly, then, where asked, a
 * TLS handshake verifying the certificate for that name. It connects to
 * nothing but the proxy or the target; one timeout covers every step.
 */

export interface ProbeOptions {
  /** Undefined: connect directly. */
  proxy?: ProxyUrl;
  timeoutMs: number;
  tls: boolean;
  /** Extra trusted CAs (PEM), added to Node's roots. */
  ca?: string[];
}

export interface TlsInfo {
  protocol: string;
  subject: string;
  issuer: string;
  validTo: string;
}

export type FailureKind =
  | 'proxy_unreachable'
  | 'proxy_timeout'
  | 'proxy_auth'
  | 'proxy_denied'
  | 'gateway_denied'
  | 'upstream_unreachable'
  | 'proxy_bad_answer'
  | 'dns'
  | 'refused'
  | 'timeout'
  | 'unreachable'
  | 'tls';

export type Outcome =
  | { ok: true; status?: number; tls?: TlsInfo; ms: number }
  | { ok: false; kind: FailureKind; message: string; status?: number; reason?: string; code?: string; ms: number };

class Failure extends Error {
  constructor(
    readonly kind: FailureKind,
    message: string,
    readonly extra: { status?: number; reason?: string; code?: string } = {},
  ) {
    super(message);
  }
}

const MAX_HEAD = 16 * 1024;

function connectTcp(host: string, port: number, onSocket: (s: net.Socket) => void): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port });
    onSocket(s);
    s.once('connect', () => {
      s.removeListener('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** The proxy's answer head; bytes after it are put back on the socket. */
function readHead(s: net.Socket): Promise<{ status: number; headers: Map<string, string> }> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const done = (err?: Error) => {
      s.removeListener('data', onData);
      s.removeListener('end', onEnd);
      s.removeListener('error', done);
      if (err) reject(err);
    };
    const onEnd = () => done(new Failure('proxy_bad_answer', 'the proxy closed the connection without answering CONNECT'));
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buf.length > MAX_HEAD) done(new Failure('proxy_bad_answer', `the proxy's answer head is over ${MAX_HEAD} bytes`));
        return;
      }
      done();
      s.pause();
      if (end + 4 < buf.length) s.unshift(buf.subarray(end + 4));
      const [statusLine, ...lines] = buf.subarray(0, end).toString('latin1').split('\r\n');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine!);
      if (!m) return reject(new Failure('proxy_bad_answer', `not an HTTP answer: ${JSON.stringify(statusLine!.slice(0, 80))}`));
      const headers = new Map<string, string>();
      for (const l of lines) {
        const i = l.indexOf(':');
        if (i > 0) headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
      }
      resolve({ status: Number(m[1]), headers });
    };
    s.on('data', onData);
    s.once('end', onEnd);
    s.once('error', done);
  });
}

/** Why a proxy refused CONNECT, from its status and the gateway's reason header. */
function refusal(status: number, reason: string | undefined, proxy: ProxyUrl): Failure {
  const why = reason ? ` (X-Wa-Egress-Reason: ${reason})` : '';
  const extra = { status, reason };
  if (status === 407) {
    return new Failure('proxy_auth', `the proxy wants credentials: 407 Proxy Authentication Required${proxy.auth ? ' (the ones given were refused)' : ''}`, extra);
  }
  if (status === 403) {
    return reason
      ? new Failure('gateway_denied', `refused by the gateway's policy: 403${why}`, extra)
      : new Failure('proxy_denied', 'refused by the proxy: 403 Forbidden', extra);
  }
  if (status === 502 || status === 503 || status === 504) {
    return new Failure('upstream_unreachable', `the proxy could not reach the destination: ${status}${why}`, extra);
  }
  return new Failure('proxy_bad_answer', `unexpected answer to CONNECT: ${status}${why}`, extra);
}

function first(v: string | string[] | undefined): string {
  return Array.isArray(v) ? (v[0] ?? '') : (v ?? '');
}

function tlsHandshake(socket: net.Socket, host: string, opts: ProbeOptions, onSocket: (s: tls.TLSSocket) => void): Promise<TlsInfo> {
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  const isIp = net.isIP(bare) !== 0;
  return new Promise((resolve, reject) => {
    const t = tls.connect({
      socket,
      host: bare,
      // SNI takes names only; the certificate is checked against `host` either way.
      servername: isIp ? undefined : bare,
      ca: opts.ca ? [...tls.rootCertificates, ...opts.ca] : undefined,
      rejectUnauthorized: true,
    });
    onSocket(t);
    t.once('secureConnect', () => {
      const cert = t.getPeerCertificate();
      resolve({
        protocol: t.getProtocol() ?? 'unknown',
        subject: first(cert.subject?.CN),
        issuer: first(cert.issuer?.CN ?? cert.issuer?.O),
        validTo: cert.valid_to ?? '',
      });
    });
    t.once('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? 'TLS_ERROR';
      reject(new Failure('tls', `TLS handshake for ${bare} failed: ${code}: ${err.message}`, { code }));
    });
  });
}

function tcpFailure(err: NodeJS.ErrnoException, what: string, viaProxy: boolean): Failure {
  const code = err.code ?? 'ERROR';
  if (viaProxy) return new Failure('proxy_unreachable', `cannot connect to the proxy ${what}: ${code}`, { code });
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return new Failure('dns', `${what} does not resolve: ${code}`, { code });
  if (code === 'ECONNREFUSED') return new Failure('refused', `connection to ${what} refused`, { code });
  return new Failure('unreachable', `cannot connect to ${what}: ${code}`, { code });
}

/** Probe `host` (canonical; IPv6 in brackets) on `port` (the port actually dialled). */
export async function probe(host: string, port: number, opts: ProbeOptions): Promise<Outcome> {
  const start = Date.now();
  const sockets: net.Socket[] = [];
  const track = (s: net.Socket) => {
    sockets.push(s);
    s.on('error', () => {});
  };
  let stage: 'connect' | 'answer' | 'tls' = 'connect';
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const what = stage === 'connect' ? (opts.proxy ? 'connecting to the proxy' : 'connecting') : stage === 'answer' ? 'waiting for the answer to CONNECT' : 'during the TLS handshake';
      const kind: FailureKind = opts.proxy && stage === 'connect' ? 'proxy_unreachable' : opts.proxy && stage === 'answer' ? 'proxy_timeout' : 'timeout';
      reject(new Failure(kind, `timed out after ${opts.timeoutMs} ms ${what}`));
    }, opts.timeoutMs);
  });
  const run = async (): Promise<{ status?: number; tls?: TlsInfo }> => {
    const p = opts.proxy;
    const target = p ? { host: p.host, port: p.port } : { host: host.replace(/^\[(.*)\]$/, '$1'), port };
    let socket: net.Socket;
    try {
      socket = await connectTcp(target.host, target.port, track);
    } catch (err) {
      throw tcpFailure(err as NodeJS.ErrnoException, p ? p.display : `${host}:${port}`, p !== undefined);
    }
    let status: number | undefined;
    if (p) {
      stage = 'answer';
      const authority = `${host}:${port}`;
      socket.write(
        `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${p.auth ? `Proxy-Authorization: ${p.auth}\r\n` : ''}User-Agent: wa-egress-check-network\r\n\r\n`,
      );
      const head = await readHead(socket);
      status = head.status;
      if (status < 200 || status > 299) throw refusal(status, head.headers.get('x-wa-egress-reason'), p);
    }
    if (!opts.tls) return { status };
    stage = 'tls';
    return { status, tls: await tlsHandshake(socket, host, opts, track) };
  };
  try {
    const r = await Promise.race([run(), timeout]);
    return { ok: true, ...r, ms: Date.now() - start };
  } catch (err) {
    if (!(err instanceof Failure)) throw err;
    return { ok: false, kind: err.kind, message: err.message, ...err.extra, ms: Date.now() - start };
  } finally {
    clearTimeout(timer);
    // Outermost first: destroying a TCP socket under a live TLS socket crashes Node 20 (SIGSEGV).
    for (const s of sockets.reverse()) s.destroy();
  }
}

/** Can the proxy be reached at all? (once, before the per-host checks) */
export async function proxyReachable(proxy: ProxyUrl, timeoutMs: number): Promise<Outcome> {
  const start = Date.now();
  let socket: net.Socket | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      connectTcp(proxy.host, proxy.port, (s) => {
        socket = s;
        s.on('error', () => {});
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(Object.assign(new Error('timeout'), { code: `no answer within ${timeoutMs} ms` })), timeoutMs);
      }),
    ]);
    return { ok: true, ms: Date.now() - start };
  } catch (err) {
    const f = tcpFailure(err as NodeJS.ErrnoException, proxy.display, true);
    return { ok: false, kind: f.kind, message: f.message, ...f.extra, ms: Date.now() - start };
  } finally {
    clearTimeout(timer);
    socket?.destroy();
  }
}
