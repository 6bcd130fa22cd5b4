import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type Socket } from 'node:net';
import { formatClient, type Attempt, type CloseReason } from '../audit.js';
import { destroySocket, judgeLocal, openEgress, startTunnel, type EgressContext } from '../egress.js';
import { EgressError, type Reason } from '../errors.js';
import { parseAbsoluteUrl, parseHostPort, type Target } from '../policy/hostport.js';
import { acceptAttempt, auditRefusal, httpRefusal, lingerClose, type Admission, type Refusal } from './admission.js';
import { answer, closeWith, guessTarget, rawResponse, readRequestLine } from './answers.js';
import { readConnectHead } from './connect-head.js';
import { MAX_HEADER_FIELDS, forwardRequestHeaders, forwardResponseHeaders, headProblem, maxForwards, traceBody } from './headers.js';
import { authorize, PROXY_AUTHENTICATE } from './proxy-auth.js';
import { handleUpgrade } from './upgrade.js';
import { parentRefusal, upstreamRequest } from '../upstream/forward.js';

/**
 * The HTTP proxy listener: CONNECT tunnels and absolute-form HTTP requests.
 * A plain TCP listener reads each connection's first bytes: a complete
 * CONNECT head in the plain form (connect-head.ts) is served at once, with
 * none of Node's HTTP machinery on the socket. Every other connection is
 * handed, bytes and all, to a Node HTTP server that never listens itself:
 * its parser reads request heads (and rejects malformed ones, audited from
 * `clientError`), and once a CONNECT or an Upgrade is accepted there the
 * socket leaves its machinery for a plain tunnel, so none of its timeouts
 * can reach it.
 *
 * Every request gets exactly one decision record, and the origin sees
 * exactly the requests the records name: a head that cannot be forwarded
 * with its framing is refused before the decision, and a request found
 * malformed while its decision is under way is never dialled.
 */

export interface HttpListenerOptions {
  name: string;
  handshakeTimeoutMs: number;
  nextId: () => string;
  /** Connection limits (admission.ts); without it, only the descriptor budget applies. */
  admission?: Admission;
  /** `limits.max_head_bytes`: Node's `maxHeaderSize`, and the CONNECT fast path's bound (read per connection: reloads change it). */
  maxHeadBytes?: number;
}

interface Conn {
  id: string;
  client: string;
  requests: number;
  /** The latest request a handler got; a parse error inside its body is its own. */
  current?: Exchange;
  /** A head after `current` was malformed: refused once, after current's answer. */
  refusing?: boolean;
}

/** One absolute-form request and its handling. */
interface Exchange {
  attempt: Attempt;
  req: IncomingMessage;
  res: ServerResponse;
  /** Refused as malformed: audited and answered (or cut) once. */
  refused: boolean;
  /** Its decision record has been written: a later refusal goes on the close record. */
  decided: boolean;
  /** The client sent `Expect: 100-continue`: 100 goes out only once the request is allowed. */
  expectContinue: boolean;
  /** Cuts a running forward; its close record gives the reason. */
  abort?: (reason: 'client_error' | 'shutdown', failure?: Failure) => void;
}

/** Why an allowed exchange ended early, for its close record. */
interface Failure {
  reason: Reason;
  error: string;
}

const conns = new WeakMap<Socket, Conn>();
/**
 * Connections with an answer that closes them (a refusal, a 502): the number
 * of that request. Requests pipelined behind it are not served, so they are
 * neither decided nor dialled nor recorded; those before it are.
 */
const closing = new WeakMap<Socket, number>();

function closeAfter(socket: Socket, request: number): void {
  const n = closing.get(socket);
  if (n === undefined || request < n) closing.set(socket, request);
}

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
  // Node truncates a head silently at this count: one more than the limit
  // tells a head over the limit from one at it (headProblem refuses it).
  server.maxHeadersCount = MAX_HEADER_FIELDS + 1;
  // A client that half-closes after its request still gets the answer
  // (Node's default ends the connection at the client's FIN).
  (server as http.Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;

  // Before Node's own 'connection' listener sets up the connection's parser
  // with the server's maxHeaderSize: a reload may have changed the limit.
  // (A plain property of http.Server, set from the option; @types/node omits it.)
  server.prependListener('connection', () => {
    (server as http.Server & { maxHeaderSize?: number }).maxHeaderSize = opts.maxHeadBytes;
  });
  server.on('connection', (socket: Socket) => {
    server.headersTimeout = opts.handshakeTimeoutMs; // a reload may change it
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

  /**
   * Node hands over a pipelined CONNECT or Upgrade as soon as it is parsed;
   * answers stay in order, so it waits for the response to the request
   * before it. `gone`: the connection closed first.
   */
  const afterPrevious = (socket: Socket, run: () => void, gone: () => void) => {
    const previous = conns.get(socket)?.current?.res;
    if (!previous || previous.writableFinished || previous.destroyed) return void run();
    previous.once('close', () => (!socket.destroyed && !socket.writableEnded ? run() : gone()));
  };

  /** Behind an answer that closes the connection: not served (see `closing`); the socket ends after that answer. */
  const behindClose = (socket: Socket): boolean => {
    if (!closing.has(socket)) return false;
    afterPrevious(socket, () => closeWith(socket, ''), () => socket.destroy());
    return true;
  };

  server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    // Node's HTTP server has let go of the socket: errors are ours now. (A
    // shared function: a closure here would keep the request alive as long
    // as the tunnel.)
    socket.on('error', destroySocket);
    if (behindClose(socket)) return;
    const attempt = attemptFor(socket, 'connect');
    const url = req.url ?? '';
    const tooLarge = headProblem(req.rawHeaders)?.reason === 'head_too_large';
    afterPrevious(
      socket,
      () => {
        if (tooLarge) {
          const target = guessTarget('CONNECT', url);
          ctx().audit.denied({ ...attempt, dest_host: target?.host, dest_port: target?.port }, { reason: 'head_too_large', enforced: true, error: `more than ${MAX_HEADER_FIELDS} header fields` });
          return closeWith(socket, rawResponse('head_too_large'));
        }
        handleConnect(ctx(), attempt, url, socket, head, req.headers['proxy-authorization']).catch((err) => socket.destroy(err as Error));
      },
      () => {
        const target = guessTarget('CONNECT', url);
        ctx().audit.denied(
          { ...attempt, dest_host: target?.host, dest_port: target?.port },
          { reason: 'bad_request', enforced: true, error: 'the connection closed before the pipelined CONNECT could be answered' },
        );
        socket.destroy();
      },
    );
  });

  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', destroySocket);
    if (behindClose(socket)) return;
    const attempt = attemptFor(socket, 'http', req.method);
    afterPrevious(
      socket,
      () => {
        conns.delete(socket);
        handleUpgrade(ctx(), attempt, req, socket, head).catch((err) => socket.destroy(err as Error));
      },
      () => {
        const target = guessTarget(req.method ?? 'GET', req.url ?? '');
        ctx().audit.denied(
          { ...attempt, dest_host: target?.host, dest_port: target?.port },
          { reason: 'bad_request', enforced: true, error: 'the connection closed before the pipelined Upgrade could be answered' },
        );
        socket.destroy();
      },
    );
  });

  // Requests being handled. When the listener has closed (its connections
  // are gone), running forwards write their close records at once: the
  // socket 'close' events that would otherwise do it come after the gateway
  // has closed the audit log.
  const exchanges = new Set<Exchange>();

  // Set when the gateway drains: answers close their connections.
  let draining = false;

  const onRequest = (expectContinue: boolean) => (req: IncomingMessage, res: ServerResponse) => {
    if (closing.has(req.socket)) return;
    if (draining) res.shouldKeepAlive = false;
    const ex: Exchange = { attempt: attemptFor(req.socket, 'http', req.method), req, res, refused: false, decided: false, expectContinue };
    const conn = conns.get(req.socket);
    if (conn) conn.current = ex;
    exchanges.add(ex);
    res.on('close', () => exchanges.delete(ex));
    handleRequest(ctx(), ex, opts.handshakeTimeoutMs).catch((err) => {
      res.destroy(err as Error);
    });
  };
  server.on('request', onRequest(false));
  // Without this listener Node answers 100 Continue itself, before the decision.
  server.on('checkContinue', onRequest(true));

  const onClientError = (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Socket) => {
    const conn = conns.get(socket);
    // The parser repeats its error on every later read: one refusal. And
    // after an answer that closes the connection, later bytes are not read.
    if (conn?.refusing || closing.has(socket)) return;
    const current = conn?.current;
    if (err.code === 'ECONNRESET' || err.code === 'EPIPE' || !socket.writable) {
      socket.destroy();
      return;
    }
    const reason: Reason =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'handshake_timeout' : err.code === 'HPE_HEADER_OVERFLOW' ? 'head_too_large' : 'bad_request';
    if (current && !current.req.complete) {
      // The parser failed inside the body of a request a handler already
      // has (bad chunk, the client left mid-body): that request is the
      // malformed one; one record, and no second answer written over a
      // response in progress.
      refuseMalformed(ctx(), current, reason, err.code ?? err.message);
      return;
    }
    if (conn) conn.refusing = true;
    const head = readRequestLine(err.rawPacket);
    const attempt = attemptFor(socket, head?.method === 'CONNECT' ? 'connect' : 'http', head?.method);
    closeAfter(socket, conn?.requests ?? 0);
    const target = head ? guessTarget(head.method, head.target) : undefined;
    if (target) {
      attempt.dest_host = target.host;
      attempt.dest_port = target.port;
    }
    ctx().audit.denied(attempt, { reason, enforced: true, error: err.code ?? err.message });
    const refuse = () => closeWith(socket, rawResponse(reason, `${err.code ?? 'bad request'}`));
    // Bytes after a complete request: that request is answered first.
    const previous = current?.res;
    if (!previous || previous.writableFinished || previous.destroyed) return refuse();
    previous.once('close', () => (socket.destroyed || socket.writableEnded ? undefined : refuse()));
  };
  server.on('clientError', onClientError);

  // Node tracks unfinished heads (headersTimeout) from 'listening' on; this
  // server is only handed connections, so it is told once here.
  server.emit('listening');

  // A request head Node has parsed ends the connection's handshake (admission.ts).
  const admission = opts.admission;
  if (admission) {
    const done = (req: IncomingMessage) => admission.handshakeDone(req.socket);
    server.prependListener('request', done).prependListener('checkContinue', done).prependListener('connect', done).prependListener('upgrade', done);
  }

  // A refused connection: its record, and an answer (see admission.ts).
  const refuse = (socket: Socket, r: Refusal, evicted: boolean) => {
    const conn = conns.get(socket);
    auditRefusal(ctx().audit, acceptAttempt(socket, conn?.id ?? opts.nextId(), opts.name, 'http'), r);
    // Handed to Node's parser: it owns the reads, so close once answered.
    if (conn) return closeWith(socket, httpRefusal(r));
    if (evicted) stopWaiting(socket);
    lingerClose(socket, httpRefusal(r));
  };
  const evict = (r: Refusal, socket: Socket) => refuse(socket, r, true);

  // The handlers of a connection whose first bytes are awaited are shared by
  // every connection of the listener, with the socket as `this`: no closures
  // per connection.
  function onFirst(this: Socket, data: Buffer): void {
    const socket = this;
    stopWaiting(socket);
    const head = readConnectHead(data, opts.maxHeadBytes);
    if (!head) return void handOff(socket, data);
    admission?.handshakeDone(socket);
    // Bytes that come while the upstream is dialled wait in the socket.
    socket.pause();
    const attempt: Attempt = { id: opts.nextId(), client: formatClient(socket.remoteAddress, socket.remotePort), listener: opts.name, proto: 'connect' };
    handleConnect(ctx(), attempt, head.authority, socket, data.subarray(head.length), head.proxyAuthorization).catch((err) =>
      socket.destroy(err as Error),
    );
  }
  // Nothing at all within the handshake timeout: the answer Node's parser
  // gives. (A connection handed over later gets Node's own head timeout
  // from then on, so a head may take up to twice the timeout in all.)
  function onSilent(this: Socket): void {
    stopWaiting(this);
    onClientError(Object.assign(new Error('request head timeout'), { code: 'ERR_HTTP_REQUEST_TIMEOUT' }), this);
  }
  const stopWaiting = (socket: Socket) => {
    socket.setTimeout(0);
    socket.removeListener('data', onFirst).removeListener('timeout', onSilent).removeListener('end', destroySocket);
  };

  const front = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    socket.on('error', destroySocket);
    if (admission) {
      const refused = admission.enter(socket, evict);
      if (refused) return refuse(socket, refused, false);
    }
    // on(), not setTimeout's callback (a once() wrapper per socket): stopWaiting removes it before it runs.
    socket.setTimeout(opts.handshakeTimeoutMs);
    // 'end': closed without a byte (a health check, a port scan), no record.
    socket.on('timeout', onSilent).on('data', onFirst).on('end', destroySocket);
  });
  /** Give the connection, with the bytes already read, to Node's HTTP server. */
  const handOff = (socket: Socket, data: Buffer) => {
    socket.removeListener('error', destroySocket);
    socket.pause();
    socket.unshift(data);
    server.emit('connection', socket);
    socket.resume();
  };
  // Drain (gateway.ts): idle keep-alive connections close now, busy ones after their answer.
  front.once('draining', () => {
    draining = true;
    const closeIdle = () => server.closeIdleConnections();
    // An answer already under way cannot say so: its connection closes once idle.
    for (const ex of exchanges) {
      if (ex.res.headersSent) ex.res.once('finish', () => setImmediate(closeIdle));
      else ex.res.shouldKeepAlive = false;
    }
    closeIdle();
  });
  front.on('close', () => {
    for (const ex of exchanges) ex.abort?.('shutdown');
    exchanges.clear();
    // Stops its head-timeout checks; it never listened, so it says so.
    server.close(() => {});
  });
  return front;
}

async function handleConnect(ctx: EgressContext, attempt: Attempt, url: string, socket: Socket, head: Buffer, authorization?: string) {
  let target: Target;
  try {
    target = parseHostPort(url);
  } catch (err) {
    return refuse(ctx, attempt, socket, err);
  }
  attempt.dest_host = target.host;
  attempt.dest_port = target.port;
  if (ctx.clients.authRequired) {
    const denied = await authorize(ctx, attempt, socket.remoteAddress, authorization);
    if (denied) return closeWith(socket, rawResponse(denied.reason, denied.message, `Proxy-Authenticate: ${PROXY_AUTHENTICATE}\r\n`));
  }
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
 * Refuse a malformed request once: answer 400 and close, or cut the
 * connection when an answer is already under way. Its one decision record
 * is this denial, unless its decision was written already: then a running
 * forward is aborted and its close record carries the reason.
 */
function refuseMalformed(ctx: EgressContext, ex: Exchange, reason: Reason, detail: string): void {
  if (ex.refused) return;
  ex.refused = true;
  closeAfter(ex.req.socket, ex.attempt.request!);
  if (!ex.decided) ctx.audit.denied(ex.attempt, { reason, enforced: true, error: detail });
  ex.abort?.('client_error', { reason, error: detail });
  if (!ex.res.headersSent) reply(ex, reason, detail, true);
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
  const problem = headProblem(req.rawHeaders);
  if (problem) return refuseMalformed(ctx, ex, problem.reason, problem.detail);
  if (ctx.clients.authRequired) {
    const denied = await authorize(ctx, attempt, req.socket.remoteAddress, req.headers['proxy-authorization']);
    if (cancelled(ex)) return;
    if (denied) {
      ex.decided = true;
      reply(ex, denied.reason, denied.message, ex.expectContinue && !req.complete, { 'Proxy-Authenticate': PROXY_AUTHENTICATE });
      discardBody(req, bodyTimeoutMs);
      return;
    }
  }

  let headers = forwardRequestHeaders(req.rawHeaders, url.authority);
  const hops = maxForwards(req.method, headers);
  if (hops === 'answer') return answerLocally(ctx, ex, url.target, bodyTimeoutMs);
  if (hops) headers = hops;

  const result = await openEgress(ctx, attempt, url.target, { cancelled: () => cancelled(ex), forward: true });
  if (!result.ok && result.cancelled) return;
  ex.decided = true;
  if (!result.ok) {
    // A client waiting for 100 Continue sends no body: the connection ends with the answer.
    reply(ex, result.reason, result.message, ex.expectContinue && !req.complete);
    discardBody(req, bodyTimeoutMs);
    return;
  }

  const upstream = result.upstream;
  const destIp = result.destIp;
  const started = Date.now();
  let bytesUp = 0;
  let bytesDown = 0;
  let status: number | undefined;
  let done = false;
  const socket = req.socket;
  const finish = (close_reason: CloseReason, failure?: Failure) => {
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
      status: res.headersSent ? res.statusCode : status,
      ...failure,
    });
  };
  // A response queued behind others (pipelining) hears nothing when the
  // connection closes under it: watch the socket itself.
  const onSocketClose = () => {
    finish(ctx.stopped ? 'shutdown' : 'client_closed');
    res.destroy();
  };
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
  /** The origin's answer cannot be relayed: 502, and the same reason on the close record. */
  const badResponse = (error: string) => {
    if (done) return;
    const failure: Failure = { reason: 'upstream_bad_response', error };
    if (!res.headersSent) {
      reply(ex, 'upstream_bad_response', error, true);
      finish('upstream_error', failure);
    } else {
      finish('upstream_error', failure);
      res.destroy();
    }
  };

  // Framing is per hop, but a chunked body stays chunked: without the header
  // Node would send a GET's or DELETE's body unframed, for the origin to read
  // as the next request. Node re-chunks what the parser de-chunked.
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) headers.push('Transfer-Encoding', te);
  const line = upstreamRequest(result, url);
  headers.push(...line.headers);
  const upReq = http.request({
    method: req.method,
    path: line.path,
    headers,
    setHost: false,
    createConnection: () => upstream,
  });
  upReq.on('response', (upRes) => {
    status = upRes.statusCode ?? 502;
    const refused = parentRefusal(result, status);
    if (refused) {
      upRes.resume();
      reply(ex, refused.reason, refused.error, true);
      return finish('upstream_error', refused);
    }
    try {
      res.writeHead(status, upRes.statusMessage, forwardResponseHeaders(upRes.rawHeaders));
    } catch (err) {
      // A head Node's client parser took but its server will not write.
      status = undefined;
      upRes.destroy();
      return badResponse(`unrelayable response head: ${(err as Error).message}`);
    }
    upRes.on('data', (chunk: Buffer) => {
      bytesDown += chunk.length;
    });
    upRes.pipe(res);
    upRes.on('error', () => {
      finish('upstream_error');
      res.destroy();
    });
  });
  // Before a response: the origin closed without answering, or its head
  // could not be parsed (both Content-Length and Transfer-Encoding, ...).
  upReq.on('error', (err: NodeJS.ErrnoException) => badResponse(err.code ? `${err.code}: ${err.message}` : err.message));
  res.on('finish', () => finish('done'));
  res.on('close', () => {
    if (!res.writableFinished) finish('client_closed');
  });
  req.on('data', (chunk: Buffer) => {
    bytesUp += chunk.length;
  });
  if (ex.expectContinue && !req.complete) res.writeContinue();
  req.pipe(upReq);
}

/** Methods the proxy forwards, for its own answer to OPTIONS. */
const ALLOW = 'GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH';

/**
 * TRACE or OPTIONS with Max-Forwards: 0 (RFC 9110 7.6.2): the proxy is the
 * final recipient. The policy still decides (a denied host gets its 403);
 * an allowed one is answered here, recorded as allowed (`local`) and closed.
 */
async function answerLocally(ctx: EgressContext, ex: Exchange, target: Target, bodyTimeoutMs: number) {
  const { attempt, req, res } = ex;
  const result = await judgeLocal(ctx, attempt, target, { cancelled: () => cancelled(ex) });
  if (!result.ok && result.cancelled) return;
  ex.decided = true;
  if (!result.ok) {
    reply(ex, result.reason, result.message, ex.expectContinue && !req.complete);
    discardBody(req, bodyTimeoutMs);
    return;
  }
  const body = req.method === 'TRACE' ? traceBody(req.method, req.url ?? '', req.httpVersion, req.rawHeaders) : '';
  const started = Date.now();
  res.writeHead(200, {
    ...(req.method === 'TRACE' ? { 'Content-Type': 'message/http' } : { Allow: ALLOW }),
    'Content-Length': Buffer.byteLength(body),
    ...(ex.expectContinue && !req.complete ? { Connection: 'close' } : {}),
  });
  res.end(body);
  discardBody(req, bodyTimeoutMs);
  ctx.audit.closed(attempt, {
    bytes_up: 0,
    bytes_down: Buffer.byteLength(body),
    duration_ms: Date.now() - started,
    close_reason: 'done',
    status: 200,
  });
}

/** Refused meanwhile, or behind an answer that closes the connection: not to be decided. */
function cancelled(ex: Exchange): boolean {
  const n = closing.get(ex.req.socket);
  return ex.refused || (n !== undefined && ex.attempt.request! > n);
}

/** The proxy's own error answer; one that closes marks the connection as closing. */
function reply(ex: Exchange, reason: Reason, detail: string | undefined, close: boolean, extra?: Record<string, string>): void {
  if (close) closeAfter(ex.req.socket, ex.attempt.request!);
  answer(ex.res, reason, detail, close, extra);
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
