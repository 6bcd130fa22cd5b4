import http, { type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Attempt } from '../audit.js';
import { openEgress, startTunnel, type EgressContext } from '../egress.js';
import { EgressError } from '../errors.js';
import { parseAbsoluteUrl } from '../policy/hostport.js';
import { closeWith, rawResponse } from './answers.js';
import { authorize, PROXY_AUTHENTICATE } from './proxy-auth.js';
import { forwardRequestHeaders, forwardResponseHeaders, headProblem } from './headers.js';

/**
 * An absolute-form request with `Connection: Upgrade` (WebSocket, h2c):
 * judged like any request, forwarded with its Upgrade header, and when the
 * origin answers `101 Switching Protocols` the 101 is relayed and both
 * directions become one Tunnel (the same records as CONNECT: one allowed,
 * one closed with bytes, here with `status: 101`). Any other answer is
 * relayed and the connection closed after it: bytes the client sent after
 * its head are never read as further requests nobody judged.
 */
export async function handleUpgrade(ctx: EgressContext, attempt: Attempt, req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
  let url: ReturnType<typeof parseAbsoluteUrl>;
  try {
    url = parseAbsoluteUrl(req.url ?? '');
  } catch (err) {
    if (!(err instanceof EgressError)) throw err;
    ctx.audit.denied(attempt, { reason: err.reason, enforced: true, error: err.message });
    return closeWith(socket, rawResponse(err.reason, err.message));
  }
  attempt.dest_host = url.target.host;
  attempt.dest_port = url.target.port;
  const problem = headProblem(req.rawHeaders, true);
  if (problem) {
    ctx.audit.denied(attempt, { reason: problem.reason, enforced: true, error: problem.detail });
    return closeWith(socket, rawResponse(problem.reason, problem.detail));
  }
  // Bytes that come while the upstream is dialled wait in the socket.
  socket.pause();
  if (ctx.clients.authRequired) {
    const denied = await authorize(ctx, attempt, socket.remoteAddress, req.headers['proxy-authorization']);
    if (denied) return closeWith(socket, rawResponse(denied.reason, denied.message, `Proxy-Authenticate: ${PROXY_AUTHENTICATE}\r\n`));
  }
  const result = await openEgress(ctx, attempt, url.target);
  if (!result.ok) return closeWith(socket, rawResponse(result.reason, result.message));
  const upstream = result.upstream;
  const started = Date.now();
  let answered = false;
  let recorded = false;
  // The gateway's close destroys every client socket: that is a shutdown, not the client leaving.
  const gone = () => (ctx.stopped ? 'shutdown' : 'client_closed');
  const closeRecord = (status: number | undefined, close_reason: 'done' | 'client_closed' | 'shutdown' | 'upstream_error', bytesDown: number, failure?: { reason: 'upstream_bad_response'; error: string }) => {
    if (recorded) return;
    recorded = true;
    ctx.audit.closed(attempt, { dest_ip: result.destIp, bytes_up: 0, bytes_down: bytesDown, duration_ms: Date.now() - started, close_reason, status, ...failure });
  };
  if (socket.destroyed) {
    // The client left while we were dialling.
    upstream.destroy();
    return closeRecord(undefined, gone(), 0);
  }

  // The client leaving before the origin answers takes the upstream with it.
  const onClientGone = () => {
    if (answered) return;
    answered = true;
    upstream.destroy();
    closeRecord(undefined, gone(), 0);
  };
  socket.once('close', onClientGone);

  const upReq = http.request({
    method: req.method,
    path: url.path,
    headers: forwardRequestHeaders(req.rawHeaders, url.authority, true),
    setHost: false,
    createConnection: () => upstream,
  });
  upReq.on('upgrade', (upRes: IncomingMessage, upSocket: Socket, upHead: Buffer) => {
    answered = true;
    socket.removeListener('close', onClientGone);
    const lines = [`HTTP/1.1 101 ${upRes.statusMessage || 'Switching Protocols'}`];
    const headers = forwardResponseHeaders(upRes.rawHeaders, true);
    for (let i = 0; i < headers.length; i += 2) lines.push(`${headers[i]}: ${headers[i + 1]}`);
    if (!socket.destroyed) socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (upHead.length && !socket.destroyed) socket.write(upHead);
    const tunnel = startTunnel(ctx, attempt, socket, { ...result, upstream: upSocket }, head, 101);
    tunnel.bytesDown += upHead.length;
  });
  upReq.on('response', (upRes: IncomingMessage) => {
    // Not switching: relay this one answer, then close.
    answered = true;
    socket.removeListener('close', onClientGone);
    const status = upRes.statusCode ?? 502;
    const lines = [`HTTP/1.1 ${status} ${upRes.statusMessage ?? ''}`];
    const headers = forwardResponseHeaders(upRes.rawHeaders);
    for (let i = 0; i < headers.length; i += 2) lines.push(`${headers[i]}: ${headers[i + 1]}`);
    lines.push('Connection: close');
    let bytesDown = 0;
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    upRes.on('data', (chunk: Buffer) => {
      bytesDown += chunk.length;
      if (!socket.write(chunk)) upRes.pause();
    });
    socket.on('drain', () => upRes.resume());
    upRes.on('end', () => {
      closeRecord(status, 'done', bytesDown);
      upstream.destroy();
      closeWith(socket, '');
    });
    upRes.on('error', () => {
      closeRecord(status, 'upstream_error', bytesDown);
      socket.destroy();
    });
    socket.on('close', () => {
      if (!upRes.complete) {
        upstream.destroy();
        closeRecord(status, gone(), bytesDown);
      }
    });
  });
  upReq.on('error', (err: NodeJS.ErrnoException) => {
    if (answered) return;
    answered = true;
    socket.removeListener('close', onClientGone);
    const error = err.code ? `${err.code}: ${err.message}` : err.message;
    closeRecord(502, 'upstream_error', 0, { reason: 'upstream_bad_response', error });
    closeWith(socket, rawResponse('upstream_bad_response', error));
  });
  upReq.end();
}
