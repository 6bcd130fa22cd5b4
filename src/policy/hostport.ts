import { domainToASCII } from 'node:url';
import { EgressError } from '../errors.js';
import { canonicalIp, type Family } from '../net/ip.js';

/**
 * Target normalisation: every way of writing a destination is reduced to one
 * canonical name or address before the policy sees it. Names become lower-case
 * ASCII (IDNA/punycode) without the trailing dot; every IPv4 literal form that
 * resolvers accept (decimal, hex, octal, short) becomes a dotted quad, judged
 * as that address.
 */

export interface Target {
  /** Canonical lower-case ASCII name, or canonical IP text (IPv6 without brackets). */
  host: string;
  port: number;
  /** Set when `host` is an IP literal. */
  family?: Family;
}

const MAX_NAME = 253;
const MAX_LABEL = 63;
const LABEL = /^[a-z0-9_-]{1,63}$/;
// Characters never valid in an authority's host: the URL-forbidden set plus
// `%` (no percent-decoding: it would let `%2e` smuggle a dot past a pattern),
// `*` and `,`, and every control or space character.
// eslint-disable-next-line no-control-regex
const FORBIDDEN = /[\u0000-\u0020\u007f"#%*,/:;<>?@[\\\]^`{|}]/;

/**
 * A name already in canonical form: lower-case letters, digits, `_` and `-`
 * in labels of 1-63, the last label starting with a letter (so never one of
 * the numeric IPv4 forms the host parser reads as an address), and no `xn--`
 * label (punycode the IDNA step would have to check). The host parser maps
 * such a name to itself, so the fast path gives what the full one would.
 */
const CANONICAL_NAME = /^(?:[a-z0-9_-]{1,63}\.)*[a-z][a-z0-9_-]{0,62}$/;

function isCanonicalName(raw: string): boolean {
  return raw.length <= MAX_NAME && CANONICAL_NAME.test(raw) && !raw.startsWith('xn--') && !raw.includes('.xn--');
}

function bad(message: string): EgressError {
  return new EgressError('bad_request', message);
}

/** Validate a canonical ASCII hostname (lower case, no trailing dot). */
export function isValidName(name: string): boolean {
  if (name.length === 0 || name.length > MAX_NAME) return false;
  for (const label of name.split('.')) if (!LABEL.test(label)) return false;
  return true;
}

/**
 * Normalise a host as written in a request: `[v6]`, an IPv4 literal in any
 * form, or a hostname (any case, IDN, one trailing dot). Throws bad_request.
 */
export function normalizeHost(raw: string): { host: string; family?: Family } {
  // Clients nearly always send the canonical name: no IDNA or IP parsing.
  return isCanonicalName(raw) ? { host: raw } : parseHost(raw);
}

/** normalizeHost without its fast path (a unit test holds the two equal). */
export function parseHost(raw: string): { host: string; family?: Family } {
  if (raw.startsWith('[')) {
    if (!raw.endsWith(']')) throw bad('unterminated IPv6 literal');
    const ip = canonicalIp(raw.slice(1, -1));
    if (!ip || ip.family !== 6) throw bad(`bad IPv6 literal ${JSON.stringify(raw)}`);
    return { host: ip.ip, family: 6 };
  }
  if (raw.length === 0) throw bad('empty host');
  if (raw.length > 4 * MAX_NAME) throw bad('host too long');
  if (raw.includes(':')) throw bad('IPv6 literals must be in brackets');
  if (FORBIDDEN.test(raw)) throw bad(`bad character in host ${JSON.stringify(raw)}`);
  // The WHATWG host parser: IDNA (UTS 46) mapping and punycode for names, and
  // the numeric IPv4 forms (0x7f000001, 0177.0.0.1, 127.1, 2130706433).
  const ascii = domainToASCII(raw);
  if (ascii === '') throw bad(`bad host ${JSON.stringify(raw)}`);
  const ip = canonicalIp(ascii);
  if (ip) return { host: ip.ip, family: ip.family };
  const name = ascii.endsWith('.') ? ascii.slice(0, -1) : ascii;
  if (name.length > MAX_NAME) throw bad(`name longer than ${MAX_NAME} bytes`);
  for (const label of name.split('.')) {
    if (label.length > MAX_LABEL) throw bad(`label longer than ${MAX_LABEL} bytes`);
    if (!LABEL.test(label)) throw bad(`bad host ${JSON.stringify(raw)}`);
  }
  return { host: name };
}

export function parsePort(text: string): number {
  if (!/^\d{1,5}$/.test(text)) throw bad(`bad port ${JSON.stringify(text)}`);
  const port = Number(text);
  if (port < 1 || port > 65535) throw bad(`port out of range: ${text}`);
  return port;
}

/** Split `host:port` / `[v6]:port`; the port is required unless a default is given. */
export function parseHostPort(authority: string, defaultPort?: number): Target {
  let hostPart: string;
  let portPart: string | undefined;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close < 0) throw bad('unterminated IPv6 literal');
    hostPart = authority.slice(0, close + 1);
    const rest = authority.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) throw bad(`bad authority ${JSON.stringify(authority)}`);
      portPart = rest.slice(1);
    }
  } else {
    const colon = authority.lastIndexOf(':');
    if (colon >= 0 && authority.indexOf(':') !== colon) throw bad('IPv6 literals must be in brackets');
    hostPart = colon < 0 ? authority : authority.slice(0, colon);
    portPart = colon < 0 ? undefined : authority.slice(colon + 1);
  }
  let port: number;
  if (portPart === undefined) {
    if (defaultPort === undefined) throw bad('missing port');
    port = defaultPort;
  } else {
    port = parsePort(portPart);
  }
  if (hostPart.includes('@')) throw bad('userinfo is not allowed in a proxy target');
  const { host, family } = normalizeHost(hostPart);
  // The fields in the order the spread of normalizeHost's result gave them.
  return family === undefined ? { host, port } : { host, family, port };
}

/** Parse an absolute-form `http://authority/path` request target. */
export function parseAbsoluteUrl(url: string): { target: Target; authority: string; path: string } {
  const m = /^http:\/\//i.exec(url);
  if (!m) throw bad('only absolute http:// URLs can be proxied (use CONNECT for TLS)');
  const rest = url.slice(m[0].length);
  const end = rest.search(/[/?#]/);
  const authority = end < 0 ? rest : rest.slice(0, end);
  let path = end < 0 ? '' : rest.slice(end);
  const hash = path.indexOf('#');
  if (hash >= 0) path = path.slice(0, hash);
  if (!path.startsWith('/')) path = `/${path}`;
  if (authority.includes('@')) throw bad('userinfo is not allowed in a proxy target');
  const target = parseHostPort(authority, 80);
  return { target, authority: formatAuthority(target, target.port === 80), path };
}

/** `host:port`, with IPv6 in brackets; the port left out when `omitPort`. */
export function formatAuthority(t: Target, omitPort = false): string {
  const host = t.family === 6 ? `[${t.host}]` : t.host;
  return omitPort ? host : `${host}:${t.port}`;
}
