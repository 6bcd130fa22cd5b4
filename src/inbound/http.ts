import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type Socket } from 'node:net';
import { formatClient, type Attempt } from '../audit.js';
import { destroySocket, openEgress, startTunnel, type EgressContext } from '../egress.js';
import { EgressError, httpStatus, type Reason } from '../errors.js';
import { parseAbsoluteUrl, parseHostPort, type Target } from '../policy/hostport.js';
import { acceptAttempt, auditRefusal, httpRefusal, lingerClose, type Admission, type Refusal } from './admission.js';
import { readConnectHead } from './connect-head.js';
import { forwardRequestHeaders, forwardResponseHeaders } from './headers.js';

/**
 * The HTTP proxy listener: CONNECT tunnels and absolute-form HTTP requests.
 * A plain TCP listener reads each connection's first bytes: a complete
 * CONNECT head in the plain form (connect-head.ts) is served at once, with
 * none of Node's HTTP machinery on the socket. Every other connection is
 * handed, bytes and all, to a Node HTTP server that never listens itself:
 * its parser reads request heads (and rejects malformed ones, audited from
 * `clientError`), and once a CONNECT is accepted there the socket leaves
 * its machinery for a plain tunnel, so none of its timeouts can reach it.
 */

export interface HttpListenerOptions {
  name: string;
  handshakeTimeoutMs: number;
  nextId: () => string;
  /** Connection limits (admission.ts); without it, only the descriptor budget applies. */
  admission?: Admission;
  /** `limits.max_head_bytes`: Node's `maxHeaderSize`, and the CONNECT fast path's bound. */
  maxHeadBytes?: number;
}

interface Conn {
  id: string;
  client: string;
  requests: number;
  /** The latest request a handler got; a parse error inside its body is its own. */
  current?: Exchange;
}

/** One absolute-form request and its handling. */
interface Exchange {
  attempt: Attempt;
  req: IncomingMessage;
  res: ServerResponse;
  /** Refused as malformed: audited and answered (or cut) once. */
  refused: boolean;
  /** Cuts a running forward; its close record gives the reason. */
  abort?: (reason: 'client_error' | 'shutdown') => void;
}

const conns = new WeakMap<Socket, Conn>();

export function createHttpProxy(ctx: () => EgressContext, opts: HttpListenerOptions): net.Server {
  const server = http.createServer({
    // The head must arrive within the handshake timeout; the body of a
    // proxied request and everything after a CONNECT have no server timeout.
    headersTimeout: opts.handshakeTimeoutMs,
    requestTimeout: 0,
    connectionsCheckingInterval: Math.min(1000, opts.handshakeTimeoutMs),
    keepAliveTimeout: 60_000,
    requireHostHeader: false,
    noDelay: true,
    maxHeaderSize: opts.maxHeadBytes,
  });
  server.timeout = 0;

  server.on('connection', (socket: Socket) => {
    conns.set(socket, { id: opts.nextId(), client: formatClient(socket.remoteAddress, socket.remotePort), requests: 0 });
  });

  const attemptFor = (socket: Socket, proto: Attempt['proto'], method?: string): Attempt => {
    const conn = conns.get(socket) ?? { id: opts.nextId(), client: formatClient(socket.remoteAddress, socket.remotePort), requests: 0 };
    conn.requests++;
    const a: Attempt = { id: conn.id, client: conn.client, listener: opts.name, proto };
    if (proto === 'http') {
      a.request = conn.requests;
      a.method = method;
    }
    return a;
  };

  server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    // Node's HTTP server has let go of the socket: errors are ours now. (A
    // shared function: a closure here would keep the request alive as long
    // as the tunnel.)
    socket.on('error', destroySocket);
    const attempt = attemptFor(socket, 'connect');
    const run = () =>
      handleConnect(ctx(), attempt, req.url ?? '', socket, head).catch((err) => {
        socket.destroy(err as Error);
      });
    // Node hands over a pipelined CONNECT as soon as it is parsed; answers
    // stay in order, so it waits for the response to the request before it.
    const previous = conns.get(socket)?.current?.res;
    if (!previous || previous.writableFinished || previous.destroyed) return void run();
    previous.once('close', () => {
      if (!socket.destroyed && !socket.writableEnded) return void run();
      const target = guessTarget('CONNECT', req.url ?? '');
      ctx().audit.denied(
        { ...attempt, dest_host: target?.host, dest_port: target?.port },
        { reason: 'bad_request', enforced: true, error: 'the connection closed before the pipelined CONNECT could be answered' },
      );
      socket.destroy();
    });
  });

  // Requests being handled. When the listener has closed (its connections
  // are gone), running forwards write their close records at once: the
  // socket 'close' events that would otherwise do it come after the gateway
  // has closed the audit log.
  const exchanges = new Set<Exchange>();

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const ex: Exchange = { attempt: attemptFor(req.socket, 'http', req.method), req, res, refused: false };
    const conn = conns.get(req.socket);
    if (conn) conn.current = ex;
    exchanges.add(ex);
    res.on('close', () => exchanges.delete(ex));
    handleRequest(ctx(), ex, opts.handshakeTimeoutMs).catch((err) => {
      res.destroy(err as Error);
    });
  });

  const onClientError = (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Socket) => {
    if (err.code === 'ECONNRESET' || err.code === 'EPIPE' || !socket.writable) {
      socket.destroy();
      return;
    }
    const reason: Reason =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'handshake_timeout' : err.code === 'HPE_HEADER_OVERFLOW' ? 'head_too_large' : 'bad_request';
    const current = conns.get(socket)?.current;
    if (current && !current.req.complete) {
      // The parser failed inside the body of a request a handler already
      // has (bad chunk, Transfer-Encoding not ending in chunked): that
      // request is the malformed one; one record, and no second answer
      // written over a response in progress.
      refuseMalformed(ctx(), current, reason, err.code ?? err.message);
      return;
    }
    const head = readRequestLine(err.rawPacket);
    const attempt = attemptFor(socket, head?.method === 'CONNECT' ? 'connect' : 'http', head?.method);
    const target = head ? guessTarget(head.method, head.target) : undefined;
    if (target) {
      attempt.dest_host = target.host;
      attempt.dest_port = target.port;
    }
    ctx().audit.denied(attempt, { reason, enforced: true, error: err.code ?? err.message });
    closeWith(socket, rawResponse(reason, `${err.code ?? 'bad request'}`));
  };
  server.on('clientError', onClientError);

  // Node tracks unfinished heads (headersTimeout) from 'listening' on; this
  // server is only handed connections, so it is told once here.
  server.emit('listening');

  // A request head Node has parsed ends the connection's handshake (admission.ts).
  const admission = opts.admission;
  if (admission) {
    const done = (req: IncomingMessage) => admission.handshakeDone(req.socket);
    server.prependListener('request', done).prependListener('connect', done);
  }

  const front = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    socket.on('error', destroySocket);
    if (admission) {
      const refuse = (r: Refusal, evicted: boolean) => {
        const conn = conns.get(socket);
        auditRefusal(ctx().audit, acceptAttempt(socket, conn?.id ?? opts.nextId(), opts.name, 'http'), r);
        // Handed to Node's parser: it owns the reads, so close once answered.
        if (conn) return closeWith(socket, httpRefusal(r));
        if (evicted) stop();
        lingerClose(socket, httpRefusal(r));
      };
      const refused = admission.enter(socket, (r) => refuse(r, true));
      if (refused) return refuse(refused, false);
    }
    const onFirst = (data: Buffer) => {
      stop();
      const head = readConnectHead(data, opts.maxHeadBytes);
      if (!head) return void handOff(socket, data);
      admission?.handshakeDone(socket);
      // Bytes that come while the upstream is dialled wait in the socket.
      socket.pause();
      const attempt: Attempt = { id: opts.nextId(), client: formatClient(socket.remoteAddress, socket.remotePort), listener: opts.name, proto: 'connect' };
      handleConnect(ctx(), attempt, head.authority, socket, data.subarray(head.length)).catch((err) => socket.destroy(err as Error));
    };
    // Nothing at all within the handshake timeout: the answer Node's parser
    // gives. (A connection handed over later gets Node's own head timeout
    // from then on, so a head may take up to twice the timeout in all.)
    const onSilent = () => {
      stop();
      onClientError(Object.assign(new Error('request head timeout'), { code: 'ERR_HTTP_REQUEST_TIMEOUT' }), socket);
    };
    // Closed without a byte (a health check, a port scan): no record.
    const onEnd = () => socket.destroy();
    const stop = () => {
      socket.setTimeout(0);
      socket.removeListener('data', onFirst).removeListener('timeout', onSilent).removeListener('end', onEnd);
    };
    socket.setTimeout(opts.handshakeTimeoutMs, onSilent);
    socket.on('data', onFirst).on('end', onEnd);
  });
  /** Give the connection, with the bytes already read, to Node's HTTP server. */
  const handOff = (socket: Socket, data: Buffer) => {
    socket.removeListener('error', destroySocket);
    socket.pause();
    socket.unshift(data);
    server.emit('connection', socket);
    socket.resume();
  };
  front.on('close', () => {
    for (const ex of exchanges) ex.abort?.('shutdown');
    exchanges.clear();
    // Stops its head-timeout checks; it never listened, so it says so.
    server.close(() => {});
  });
  return front;
}

async function handleConnect(ctx: EgressContext, attempt: Attempt, url: string, socket: Socket, head: Buffer) {
  let target: Target;
  try {
    target = parseHostPort(url);
  } catch (err) {
    return refuse(ctx, attempt, socket, err);
  }
  attempt.dest_host = target.host;
  attempt.dest_port = target.port;
  const result = await openEgress(ctx, attempt, target);
  if (!result.ok) {
    closeWith(socket, rawResponse(result.reason, result.message));
    return;
  }
  if (socket.destroyed) {
    // The client left while we were dialling; the tunnel records the close.
    startTunnel(ctx, attempt, socket, result);
    return;
  }
  // The socket has left HTTP for good: its request bookkeeping goes.
  conns.delete(socket);
  socket.write('HTTP/1.1 200 Connection established\r\n\r\n');
  startTunnel(ctx, attempt, socket, result, head);
}

function refuse(ctx: EgressContext, attempt: Attempt, socket: Socket, err: unknown): void {
  if (!(err instanceof EgressError)) throw err;
  ctx.audit.denied(attempt, { reason: err.reason, enforced: true, error: err.message });
  closeWith(socket, rawResponse(err.reason, err.message));
}

/**
 * Refuse a malformed request once: audit it, answer 400 and close, or cut
 * the connection when an answer is already under way; a running forward is
 * aborted (its close record follows).
 */
function refuseMalformed(ctx: EgressContext, ex: Exchange, reason: Reason, detail: string): void {
  if (ex.refused) return;
  ex.refused = true;
  ctx.audit.denied(ex.attempt, { reason, enforced: true, error: detail });
  ex.abort?.('client_error');
  if (!ex.res.headersSent) answer(ex.res, reason, detail, true);
  else if (!ex.res.writableEnded) ex.res.destroy();
  else ex.req.socket.end();
}

async function handleRequest(ctx: EgressContext, ex: Exchange, bodyTimeoutMs: number) {
  const { attempt, req, res } = ex;
  let url: ReturnType<typeof parseAbsoluteUrl>;
  try {
    url = parseAbsoluteUrl(req.url ?? '');
  } catch (err) {
    if (!(err instanceof EgressError)) throw err;
    return refuseMalformed(ctx, ex, err.reason, err.message);
  }
  attempt.dest_host = url.target.host;
  attempt.dest_port = url.target.port;
  // RFC 9112 6.3: a request whose Transfer-Encoding does not end in chunked
  // has no reliable length. Node's parser rejects it only after this handler
  // has run; refuse it before any dial.
  const te = req.headers['transfer-encoding'];
  if (te !== undefined && !/(?:^|,)[ \t]*chunked[ \t]*$/i.test(te)) {
    return refuseMalformed(ctx, ex, 'bad_request', `Transfer-Encoding must end in chunked: ${te}`);
  }
  const result = await openEgress(ctx, attempt, url.target);
  if (!result.ok) {
    if (!ex.refused) {
      answer(res, result.reason, result.message, false);
      discardBody(req, bodyTimeoutMs);
    }
    return;
  }

  const upstream = result.upstream;
  const destIp = result.destIp;
  const started = Date.now();
  let bytesUp = 0;
  let bytesDown = 0;
  let done = false;
  const socket = req.socket;
  const finish = (close_reason: 'done' | 'client_closed' | 'client_error' | 'upstream_error' | 'idle_timeout' | 'shutdown') => {
    if (done) return;
    done = true;
    socket.removeListener('close', onSocketClose);
    upstream.destroy();
    ctx.audit.closed(attempt, {
      dest_ip: destIp,
      bytes_up: bytesUp,
      bytes_down: bytesDown,
      duration_ms: Date.now() - started,
      close_reason,
    });
  };
  // A response queued behind others (pipelining) hears nothing when the
  // connection closes under it: watch the socket itself.
  const onSocketClose = () => {
    finish(ctx.stopped ? 'shutdown' : 'client_closed');
    res.destroy();
  };
  // Refused as malformed while the dial was under way.
  if (ex.refused) return finish('client_error');
  // The client, or the whole gateway, went away while we were dialling.
  if (res.destroyed || socket.destroyed) return finish(ctx.stopped ? 'shutdown' : 'client_closed');
  socket.once('close', onSocketClose);
  ex.abort = finish;
  if (ctx.idleTimeoutMs > 0) {
    upstream.setTimeout(ctx.idleTimeoutMs, () => {
      finish('idle_timeout');
      res.destroy();
    });
  }

  const headers = forwardRequestHeaders(req.rawHeaders, url.authority);
  // Framing is per hop, but a chunked body stays chunked: without the header
  // Node would send a GET's or DELETE's body unframed, for the origin to read
  // as the next request. Node re-chunks what the parser de-chunked.
  if (te !== undefined) headers.push('Transfer-Encoding', te);
  const upReq = http.request({
    method: req.method,
    path: url.path,
    headers,
    setHost: false,
    createConnection: () => upstream,
  });
  upReq.on('response', (upRes) => {
    res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, forwardResponseHeaders(upRes.rawHeaders));
    upRes.on('data', (chunk: Buffer) => {
      bytesDown += chunk.length;
    });
    upRes.pipe(res);
    upRes.on('error', () => {
      finish('upstream_error');
      res.destroy();
    });
  });
  upReq.on('error', (err) => {
    if (done) return;
    if (!res.headersSent) answer(res, 'connect_failed', err.message, true);
    else res.destroy();
    finish('upstream_error');
  });
  res.on('finish', () => finish('done'));
  res.on('close', () => {
    if (!res.writableFinished) finish('client_closed');
  });
  req.on('data', (chunk: Buffer) => {
    bytesUp += chunk.length;
  });
  req.pipe(upReq);
}

/**
 * The body of a refused request is read and dropped so the connection can
 * serve the next request, but only for as long as a request head may take:
 * a client cannot hold the connection by trickling a body nobody wants.
 */
function discardBody(req: IncomingMessage, ms: number): void {
  if (req.complete) return;
  const timer = setTimeout(() => req.socket.destroy(), ms);
  const done = () => clearTimeout(timer);
  req.once('end', done);
  req.once('close', done);
  req.resume();
}

/** An error answer on a request the HTTP parser accepted. */
function answer(res: ServerResponse, reason: Reason, detail: string | undefined, close: boolean): void {
  const body = `${reason}${detail ? `: ${detail}` : ''}\n`;
  res.writeHead(httpStatus(reason), {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'X-Wa-Egress-Reason': reason,
    ...(close ? { Connection: 'close' } : {}),
  });
  res.end(body);
}

/** An error answer written straight to a socket (CONNECT, parse errors). */
export function rawResponse(reason: Reason, detail?: string): string {
  const status = httpStatus(reason);
  const body = `${reason}${detail ? `: ${detail}` : ''}\n`;
  return (
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n` +
    `Content-Type: text/plain; charset=utf-8\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    `X-Wa-Egress-Reason: ${reason}\r\n` +
    `Connection: close\r\n\r\n${body}`
  );
}

/** The request line of a head Node's parser rejected, for the audit record. */
function readRequestLine(raw: Buffer | undefined): { method: string; target: string } | undefined {
  if (!raw?.length) return undefined;
  const line = raw.subarray(0, 2048).toString('latin1').split(/\r?\n/, 1)[0]!;
  const m = /^([A-Za-z]{1,20}) (\S{1,1024})/.exec(line);
  return m ? { method: m[1]!.toUpperCase(), target: m[2]! } : undefined;
}

function guessTarget(method: string, target: string): Target | undefined {
  try {
    return method === 'CONNECT' ? parseHostPort(target) : parseAbsoluteUrl(target).target;
  } catch {
    return undefined;
  }
}

/**
 * Answer and close: a refused client gets no half-open socket to keep, so
 * the socket is destroyed once the answer has been handed to the kernel.
 */
function closeWith(socket: Socket, answer: string): void {
  socket.end(answer, () => socket.destroy());
}
