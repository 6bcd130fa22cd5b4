import type { Reason } from '../errors.js';

/**
 * Header rules for absolute-form HTTP: hop-by-hop headers (RFC 9110
 * 7.6.1), every header the Connection header names, and all Proxy-* headers
 * stay on the hop they were meant for. The Host header is taken from the
 * URL, which is what the policy judged. A request head that cannot be
 * forwarded with its framing intact is refused before anything is dialled.
 */

/** More header fields than this: 431 (Apache's LimitRequestFields default). */
export const MAX_HEADER_FIELDS = 100;

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Fields a Connection header may not name: dropping them as hop-by-hop
 * would send a body without its framing (the origin would read it as
 * further requests) or the request to another host than the one judged.
 */
const NOT_HOP_BY_HOP = new Set(['content-length', 'transfer-encoding', 'host']);

function connectionTokens(raw: string[]): Set<string> {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') {
      for (const token of raw[i + 1]!.split(',')) named.add(token.trim().toLowerCase());
    }
  }
  return named;
}

function filter(raw: string[], dropHost: boolean, keep?: ReadonlySet<string>): string[] {
  const named = connectionTokens(raw);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (keep?.has(name)) {
      out.push(raw[i]!, raw[i + 1]!);
      continue;
    }
    if (HOP_BY_HOP.has(name) || name.startsWith('proxy-') || named.has(name) || (dropHost && name === 'host')) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

const UPGRADE = new Set(['upgrade']);

/** `upgrade`: keep the Upgrade header and ask for it with `Connection: Upgrade`. */
export function forwardRequestHeaders(raw: string[], authority: string, upgrade = false): string[] {
  const out = ['Host', authority, ...filter(raw, true, upgrade ? UPGRADE : undefined)];
  if (upgrade) out.push('Connection', 'Upgrade');
  return out;
}

export function forwardResponseHeaders(raw: string[], upgrade = false): string[] {
  const out = filter(raw, false, upgrade ? UPGRADE : undefined);
  if (upgrade) out.push('Connection', 'Upgrade');
  return out;
}

/**
 * Why a parsed request head cannot be forwarded as it is, or undefined.
 * `rawHeaders` comes from a parser that keeps at most MAX_HEADER_FIELDS + 1
 * fields, so one more than the limit means "over the limit", not "exactly".
 */
export function headProblem(rawHeaders: string[], upgrade = false): { reason: Reason; detail: string } | undefined {
  if (rawHeaders.length / 2 > MAX_HEADER_FIELDS) {
    return { reason: 'head_too_large', detail: `more than ${MAX_HEADER_FIELDS} header fields` };
  }
  for (const token of connectionTokens(rawHeaders)) {
    if (NOT_HOP_BY_HOP.has(token)) {
      return { reason: 'bad_request', detail: `Connection names ${token}, which is not hop-by-hop` };
    }
  }
  let te: string | undefined;
  let length = false;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    if (name === 'transfer-encoding') te = te === undefined ? rawHeaders[i + 1]! : `${te}, ${rawHeaders[i + 1]!}`;
    else if (name === 'content-length' && rawHeaders[i + 1]!.trim() !== '0') length = true;
  }
  // RFC 9112 6.3: a request whose Transfer-Encoding does not end in chunked
  // has no reliable length. Node's parser rejects it only after the handler
  // has run.
  if (te !== undefined && !/(?:^|,)[ \t]*chunked[ \t]*$/i.test(te)) {
    return { reason: 'bad_request', detail: `Transfer-Encoding must end in chunked: ${te}` };
  }
  // After a 101 the bytes that follow are the new protocol's: a body would be read as such.
  if (upgrade && (te !== undefined || length)) {
    return { reason: 'bad_request', detail: 'an Upgrade request may not have a body' };
  }
  return undefined;
}

/**
 * RFC 9110 7.6.2: for TRACE and OPTIONS, Max-Forwards 0 makes the proxy the
 * final recipient; otherwise it is decremented. Other methods ignore it.
 * Returns 'answer', the headers with the decremented value, or undefined.
 */
export function maxForwards(method: string | undefined, headers: string[]): 'answer' | string[] | undefined {
  if (method !== 'TRACE' && method !== 'OPTIONS') return undefined;
  const i = headers.findIndex((h, j) => j % 2 === 0 && h.toLowerCase() === 'max-forwards');
  if (i < 0 || !/^\d{1,10}$/.test(headers[i + 1]!.trim())) return undefined;
  const n = Number(headers[i + 1]!.trim());
  if (n === 0) return 'answer';
  const out = [...headers];
  out[i + 1] = String(n - 1);
  return out;
}

/** Request fields a TRACE echo leaves out (RFC 9110 9.3.8: likely to hold credentials). */
const SENSITIVE = new Set(['authorization', 'cookie', 'proxy-authorization']);

/** The TRACE answer's message/http body: the request as received, minus credentials. */
export function traceBody(method: string, url: string, version: string, raw: string[]): string {
  let out = `${method} ${url} HTTP/${version}\r\n`;
  for (let i = 0; i < raw.length; i += 2) {
    if (!SENSITIVE.has(raw[i]!.toLowerCase())) out += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  return `${out}\r\n`;
}
