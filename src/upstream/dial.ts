import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import { EgressError, type Reason } from '../errors.js';
import { dial } from '../net/dial.js';
import type { KeepAlive } from '../net/keepalive.js';
import type { Resolver } from '../net/resolve.js';
import { formatAuthority, type Target } from '../policy/hostport.js';
import { DIRECT, type Upstream } from './config.js';
import type { Route } from './routes.js';

/**
 * Dial an allowed destination along its route: directly (the checked
 * addresses, as net/dial.ts does), or through each parent in turn until one
 * connects. Through a parent the destination is sent by name (the parent
 * resolves) or, with `resolve: local` or a `socks5://` parent, as the
 * addresses the gateway checked, in turn while the parent cannot reach one. A parent's failure is `upstream_failed`,
 * `upstream_timeout` or `upstream_auth`; every message names the parent by
 * its key and redacted URL, never its credentials.
 */

export interface RouteDialOptions {
  timeoutMs: number;
  keepAlive: KeepAlive;
  resolver: Resolver;
  /** An absolute-form HTTP request: an HTTP parent that resolves gets it as is, without CONNECT. */
  forward: boolean;
  /** Called as each hop is tried (the record's `via`; undefined for direct). */
  onHop?: (via: string | undefined) => void;
}

export interface RouteDialled {
  socket: Socket;
  /** The checked address dialled or sent to the parent; the gateway's first checked address when the parent resolves. */
  address: string;
  via?: string;
  /** Set when the socket is a plain connection to an HTTP parent: send the request in absolute form with these headers. */
  parentForward?: { headers: string[] };
}

export async function dialRoute(route: Route, target: Target, addresses: readonly string[], opts: RouteDialOptions): Promise<RouteDialled> {
  const failures: EgressError[] = [];
  for (const hop of route.hops) {
    opts.onHop?.(hop === DIRECT ? undefined : hop.name);
    try {
      if (hop === DIRECT) {
        const d = await dial(addresses, target.port, { timeoutMs: opts.timeoutMs, keepAlive: opts.keepAlive });
        return { socket: d.socket, address: d.address };
      }
      return await viaParent(hop, route, target, addresses, opts);
    } catch (err) {
      if (!(err instanceof EgressError)) throw err;
      failures.push(err);
    }
  }
  const last = failures.at(-1)!;
  if (failures.length === 1) throw last;
  throw new EgressError(last.reason, failures.map((f) => f.message).join('; '));
}

/**
 * The parent answered, but could not reach the destination (HTTP 502/503/504,
 * SOCKS5 network or host unreachable, refused, TTL expired): with the
 * address sent, the next checked address is worth a try.
 */
class NotReached extends EgressError {}

async function viaParent(up: Upstream, route: Route, target: Target, addresses: readonly string[], opts: RouteDialOptions): Promise<RouteDialled> {
  const deadline = Date.now() + (up.connectTimeoutMs ?? opts.timeoutMs);
  const left = () => Math.max(1, deadline - Date.now());
  const label = `upstream ${up.name} (${up.display})`;
  if (route.resolve !== 'local' && up.kind !== 'socks5') return viaParentOnce(up, target, addresses[0]!, false, left, label, opts);
  // Each checked address in turn, as a direct dial tries them, within the parent's one budget.
  const failed: EgressError[] = [];
  for (const checked of addresses) {
    if (failed.length && Date.now() >= deadline) break;
    const dest: Target = { host: checked, port: target.port, family: checked.includes(':') ? 6 : 4 };
    try {
      return await viaParentOnce(up, dest, checked, true, left, label, opts);
    } catch (err) {
      if (!(err instanceof NotReached)) throw err;
      failed.push(err);
    }
  }
  return Promise.reject(failed.length === 1 ? failed[0]! : new EgressError(failed[0]!.reason, failed.map((f) => f.message).join('; ')));
}

/** One connection to the parent asking for `dest`; `checked` is the record's dest_ip. */
async function viaParentOnce(
  up: Upstream,
  dest: Target,
  checked: string,
  byAddress: boolean,
  left: () => number,
  label: string,
  opts: RouteDialOptions,
): Promise<RouteDialled> {
  const socket = await connectParent(up, label, left(), opts);
  if (up.kind === 'http') {
    const auth = up.username !== undefined ? ['Proxy-Authorization', basic(up)] : [];
    if (opts.forward && !byAddress) return { socket, address: checked, via: up.name, parentForward: { headers: auth } };
    await httpConnect(socket, formatAuthority(dest), auth, left(), label);
    // A tunnel for one HTTP request: the origin says nothing before it, and Node's client does not resume a paused socket.
    if (opts.forward) socket.resume();
  } else {
    await socksConnect(socket, up, dest, left(), label);
  }
  return { socket, address: checked, via: up.name };
}

function basic(up: Upstream): string {
  return `Basic ${Buffer.from(`${up.username}:${up.password ?? ''}`).toString('base64')}`;
}

/** TCP to the parent: its name through the gateway's resolver (dns.hosts, servers), the parent being the operator's choice. */
async function connectParent(up: Upstream, label: string, timeoutMs: number, opts: RouteDialOptions): Promise<Socket> {
  let ips: readonly string[];
  try {
    ips = up.family !== undefined ? [up.host] : await opts.resolver.resolve(up.host);
  } catch (err) {
    throw new EgressError('upstream_failed', `${label}: cannot resolve the parent: ${(err as Error).message}`);
  }
  try {
    return (await dial(ips, up.port, { timeoutMs, keepAlive: opts.keepAlive })).socket;
  } catch (err) {
    const e = err as EgressError;
    throw new EgressError(e.reason === 'connect_timeout' ? 'upstream_timeout' : 'upstream_failed', `${label}: ${e.message}`);
  }
}

const MAX_PARENT_HEAD = 16 * 1024;

/**
 * CONNECT through an HTTP parent and wait for its answer head. Bytes after a
 * 2xx head (a server that speaks first) go back into the socket, so the
 * client gets them first.
 */
function httpConnect(socket: Socket, authority: string, auth: string[], timeoutMs: number, label: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const fail = (reason: Reason, message: string, notReached = false) => {
      cleanup();
      socket.destroy();
      reject(new (notReached ? NotReached : EgressError)(reason, `${label}: ${message}`));
    };
    const timer = setTimeout(() => fail('upstream_timeout', `no answer to CONNECT within ${timeoutMs} ms`), timeoutMs);
    const onData = (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buf.length > MAX_PARENT_HEAD) fail('upstream_failed', `answer head over ${MAX_PARENT_HEAD} bytes`);
        return;
      }
      const head = buf.subarray(0, end).toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})(?: ([^\r\n]*))?/.exec(head);
      if (!m) return fail('upstream_failed', `not an HTTP answer: ${JSON.stringify(head.slice(0, 60))}`);
      const status = Number(m[1]);
      if (status < 200 || status > 299) {
        const why = /\r\nX-Wa-Egress-Reason: *([a-z_]+)/i.exec(head)?.[1];
        const text = `the parent answered ${status}${m[2] ? ` ${m[2]}` : ''}${why ? ` (${why})` : ''}`;
        return fail(status === 407 ? 'upstream_auth' : 'upstream_failed', text, status >= 502 && status <= 504);
      }
      cleanup();
      socket.pause();
      if (buf.length > end + 4) socket.unshift(buf.subarray(end + 4));
      resolve();
    };
    const onError = (err: NodeJS.ErrnoException) => fail('upstream_failed', `${err.code ?? err.message} during CONNECT`);
    const onClose = () => fail('upstream_failed', 'the parent closed the connection without answering CONNECT');
    const cleanup = () => {
      clearTimeout(timer);
      socket.removeListener('data', onData).removeListener('error', onError).removeListener('close', onClose);
    };
    socket.on('data', onData).on('error', onError).on('close', onClose);
    socket.write(
      [`CONNECT ${authority} HTTP/1.1`, `Host: ${authority}`, ...pairs(auth), '', ''].join('\r\n'),
    );
  });
}

function pairs(h: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < h.length; i += 2) out.push(`${h[i]}: ${h[i + 1]}`);
  return out;
}

/** SOCKS5 CONNECT (RFC 1928, RFC 1929 when the URL has credentials) on the connected socket. */
async function socksConnect(socket: Socket, up: Upstream, dest: Target, timeoutMs: number, label: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      socket.destroy();
      reject(new EgressError('upstream_timeout', `${label}: no SOCKS5 answer within ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    await Promise.race([
      SocksClient.createConnection({
        proxy: { host: up.host, port: up.port, type: 5, userId: up.username, password: up.password },
        destination: { host: dest.host, port: dest.port },
        command: 'connect',
        existing_socket: socket,
        timeout: timeoutMs + 1000,
      }),
      timeout,
    ]);
  } catch (err) {
    if (err instanceof EgressError) throw err;
    socket.destroy();
    const msg = (err as Error).message;
    const reason: Reason = /authentication/i.test(msg) ? 'upstream_auth' : /timed out/i.test(msg) ? 'upstream_timeout' : 'upstream_failed';
    // The reply code's name, as the socks library words it (RFC 1928 replies 3, 4, 5, 6).
    const notReached = /rejected connection - (NetworkUnreachable|HostUnreachable|ConnectionRefused|TTLExpired)/.test(msg);
    throw new (notReached ? NotReached : EgressError)(reason, `${label}: ${msg}`);
  } finally {
    clearTimeout(timer);
  }
}
