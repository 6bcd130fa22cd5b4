import http, { type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { httpStatus, type Reason } from '../errors.js';
import { parseAbsoluteUrl, parseHostPort, type Target } from '../policy/hostport.js';

/** The proxy's own error answers, and reading what a refused request asked for. */

/** An error answer on a request the HTTP parser accepted. */
export function answer(res: ServerResponse, reason: Reason, detail: string | undefined, close: boolean, extra?: Record<string, string>): void {
  const body = `${reason}${detail ? `: ${detail}` : ''}\n`;
  res.writeHead(httpStatus(reason), {
    ...extra,
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'X-Wa-Egress-Reason': reason,
    ...(close ? { Connection: 'close' } : {}),
  });
  res.end(body);
}

/** An error answer written straight to a socket (CONNECT, parse errors, upgrades). */
export function rawResponse(reason: Reason, detail?: string, extraHeaders = ''): string {
  const status = httpStatus(reason);
  const body = `${reason}${detail ? `: ${detail}` : ''}\n`;
  return (
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n` +
    `Content-Type: text/plain; charset=utf-8\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    `X-Wa-Egress-Reason: ${reason}\r\n` +
    extraHeaders +
    `Connection: close\r\n\r\n${body}`
  );
}

/**
 * Answer and close: a refused client gets no half-open socket to keep, so
 * the socket is destroyed once the answer has been handed to the kernel.
 */
export function closeWith(socket: Socket, text: string): void {
  socket.end(text, () => socket.destroy());
}

/** The request line of a head Node's parser rejected, for the audit record. */
export function readRequestLine(raw: Buffer | undefined): { method: string; target: string } | undefined {
  if (!raw?.length) return undefined;
  const line = raw.subarray(0, 2048).toString('latin1').split(/\r?\n/, 1)[0]!;
  const m = /^([A-Za-z]{1,20}) (\S{1,1024})/.exec(line);
  return m ? { method: m[1]!.toUpperCase(), target: m[2]! } : undefined;
}

export function guessTarget(method: string, target: string): Target | undefined {
  try {
    return method === 'CONNECT' ? parseHostPort(target) : parseAbsoluteUrl(target).target;
  } catch {
    return undefined;
  }
}
