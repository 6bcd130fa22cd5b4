import { MAX_HEADER_FIELDS } from './headers.js';

/**
 * The common CONNECT request, read without Node's HTTP machinery: the first
 * bytes of a connection, when they hold a complete head in the plain form
 * proxy clients send (`CONNECT host:port HTTP/1.1`, then header lines). A
 * head this grammar does not admit (another method, an unfinished head,
 * a byte outside it, framing headers, more header fields than the limit)
 * gets null and goes to Node's HTTP parser, which decides as it always has:
 * this takes only heads that parser accepts and would read the same way, so
 * the answer never depends on which of the two read it.
 */

/**
 * The default `limits.max_head_bytes` (Node's `maxHeaderSize`). A head of
 * more bytes than the limit is Node's to refuse (431): Node counts only the
 * target and the header names and values, so a whole head within the limit
 * is always within Node's.
 */
const MAX_HEAD = 16 * 1024;
const PREFIX = Buffer.from('CONNECT ');
// A buffer, not a string: Buffer#indexOf would encode a string needle on every call.
const HEAD_END = Buffer.from('\r\n\r\n');
const REQUEST_LINE = /^CONNECT ([A-Za-z0-9._:[\]-]{1,1024}) HTTP\/1\.[01]$/;
// field-name ":" OWS field-value OWS (RFC 9110 5.1, 5.5), visible ASCII only.
const HEADER_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?[ \t]*$/;
// A CONNECT has no body; framing headers on one are left to Node's rules.
const FRAMING = /^(?:content-length|transfer-encoding):/i;
const PROXY_AUTHORIZATION = /^proxy-authorization:[ \t]*(.*?)[ \t]*$/i;

export interface ConnectHead {
  /** The request target, as Node's parser would give it in `req.url`. */
  authority: string;
  /** Bytes up to and including the blank line; what follows is tunnel data. */
  length: number;
  /** The first Proxy-Authorization value, as Node's parser keeps it (duplicates are dropped). */
  proxyAuthorization?: string;
}

export function readConnectHead(buf: Buffer, maxHead = MAX_HEAD): ConnectHead | null {
  if (buf.length < PREFIX.length + 14 || !startsWithPrefix(buf)) return null;
  const end = buf.indexOf(HEAD_END);
  if (end < 0 || end + 4 > maxHead) return null;
  const lines = buf.toString('latin1', 0, end).split('\r\n');
  const m = REQUEST_LINE.exec(lines[0]!);
  // Over the field limit: the HTTP server's 431.
  if (!m || lines.length - 1 > MAX_HEADER_FIELDS) return null;
  let proxyAuthorization: string | undefined;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (!HEADER_LINE.test(line) || FRAMING.test(line)) return null;
    proxyAuthorization ??= PROXY_AUTHORIZATION.exec(line)?.[1];
  }
  return { authority: m[1]!, length: end + 4, proxyAuthorization };
}

/** The first bytes are `CONNECT `: compared here, cheaper than a Buffer#compare call for eight bytes. */
function startsWithPrefix(buf: Buffer): boolean {
  for (let i = 0; i < PREFIX.length; i++) if (buf[i] !== PREFIX[i]) return false;
  return true;
}
