import { createRequire } from 'node:module';
import type { Socket } from 'node:net';

/**
 * The socket-options addon (native/sockopt.cc), loaded once, and what the
 * gateway does without it. Without the addon (not Linux, no compiler at
 * install time, or WA_EGRESS_NO_NATIVE=1) keepalive falls back to Node's
 * `setKeepAlive`, whose probes libuv fixes at 1 s apart, 10 of them, and
 * TCP_USER_TIMEOUT is not set; `keepaliveMode()` says which is in force.
 */

/** As the kernel reports them: seconds, except `userTimeout` (ms, 0 = the kernel's behaviour). */
export interface TcpOptions {
  keepalive: boolean;
  idle: number;
  interval: number;
  count: number;
  userTimeout: number;
}

export interface OriginalDestination {
  address: string;
  port: number;
  family: 4 | 6;
}

interface Addon {
  setTcpOptions(fd: number, idleSec: number, intervalSec: number, count: number, userTimeoutMs: number): void;
  getTcpOptions(fd: number): TcpOptions;
  originalDst(fd: number): OriginalDestination;
  transparentListen(address: string, port: number, backlog: number): number;
}

/**
 * `code`: `ENATIVE` (the addon is not loaded), `ENOFD` (the socket has no
 * descriptor: not connected, or already closed), `ENOTREDIRECTED` (no
 * original destination: the connection was not redirected), or the errno
 * name from the system call.
 */
export class SockoptError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'SockoptError';
  }
}

const ADDON_PATH = '../../native/build/Release/wa_sockopt.node';
let addon: Addon | null | undefined;
let whyNot: string | undefined;

function load(): Addon | null {
  if (addon !== undefined) return addon;
  if (process.env.WA_EGRESS_NO_NATIVE === '1') {
    whyNot = 'WA_EGRESS_NO_NATIVE=1';
  } else if (process.platform !== 'linux') {
    whyNot = `not available on ${process.platform}`;
  } else {
    try {
      // Same relative path from src/native/ and dist/native/.
      addon = createRequire(import.meta.url)(ADDON_PATH) as Addon;
      return addon;
    } catch (err) {
      whyNot = `cannot load native/build/Release/wa_sockopt.node (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); build it with: node native/build.mjs`;
    }
  }
  addon = null;
  return addon;
}

/** Which keepalive is in force: our options on every leg, or Node's 1 s × 10. */
export function keepaliveMode(): 'native' | 'node' {
  return load() ? 'native' : 'node';
}

/** Why the addon is not in use (undefined when it is). */
export function nativeUnavailableReason(): string | undefined {
  load();
  return whyNot;
}

/** The descriptor under a connected net.Socket (Linux, libuv's TCP handle). */
export function socketFd(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

function need(socket: Socket): { a: Addon; fd: number } {
  const a = load();
  if (!a) throw new SockoptError('ENATIVE', `native socket options unavailable: ${whyNot}`);
  const fd = socketFd(socket);
  if (fd === undefined) throw new SockoptError('ENOFD', 'the socket has no descriptor (not connected, or closed)');
  return { a, fd };
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    const e = err as Error & { code?: string };
    throw new SockoptError(e.code ?? 'EUNKNOWN', e.message);
  }
}

export interface SetTcpOptions {
  /** Seconds before the first probe; 0 leaves keepalive as it is (off). */
  idleSec: number;
  intervalSec: number;
  count: number;
  /** TCP_USER_TIMEOUT in ms; 0 leaves the kernel's behaviour (no system call). */
  userTimeoutMs: number;
}

/** Switch keepalive on with this timing and set TCP_USER_TIMEOUT; throws SockoptError. */
export function setTcpOptions(socket: Socket, o: SetTcpOptions): void {
  const { a, fd } = need(socket);
  call(() => a.setTcpOptions(fd, o.idleSec, o.intervalSec, o.count, o.userTimeoutMs > 0 ? o.userTimeoutMs : -1));
}

/** Read keepalive and user-timeout options back (tests, diagnostics); throws SockoptError. */
export function getTcpOptions(socket: Socket): TcpOptions {
  const { a, fd } = need(socket);
  return call(() => a.getTcpOptions(fd));
}

/**
 * Where an accepted connection was going before iptables redirected it to
 * us (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST). Throws SockoptError
 * `ENOTREDIRECTED` for a connection that was not redirected: conntrack has
 * no entry, or its original destination is our own address.
 */
export function originalDestination(socket: Socket): OriginalDestination {
  const { a, fd } = need(socket);
  let dst: OriginalDestination;
  try {
    dst = a.originalDst(fd);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ENOPROTOOPT') {
      throw new SockoptError('ENOTREDIRECTED', `no original destination: the connection was not redirected (${code})`);
    }
    throw new SockoptError(code ?? 'EUNKNOWN', (err as Error).message);
  }
  const local = socket.localAddress?.replace(/^::ffff:(?=\d+\.)/, '');
  if (dst.address === local && dst.port === socket.localPort) {
    throw new SockoptError('ENOTREDIRECTED', 'no original destination: the connection was addressed to the gateway itself');
  }
  return dst;
}

/** Node's own default listen backlog. */
const BACKLOG = 511;

/**
 * A listening TCP socket at `address:port` with IP_TRANSPARENT /
 * IPV6_TRANSPARENT set before bind, which the kernel requires before it
 * delivers TPROXY'd connections to it; returns the descriptor for
 * `server.listen({ fd })`. Throws SockoptError: `ENATIVE`, `EPERM` (needs
 * CAP_NET_ADMIN), `EADDRINUSE`, ...
 */
export function transparentListen(address: string, port: number): number {
  const a = load();
  if (!a) throw new SockoptError('ENATIVE', `native socket options unavailable: ${whyNot}`);
  return call(() => {
    try {
      return a.transparentListen(address, port, BACKLOG);
    } catch (err) {
      const e = err as Error & { code?: string };
      if (e.code === 'EPERM' || e.code === 'EACCES') {
        throw Object.assign(new Error(`${e.message}: IP_TRANSPARENT needs CAP_NET_ADMIN (run as root or grant the capability)`), { code: 'EPERM' });
      }
      throw err;
    }
  });
}

/**
 * Where a TPROXY'd connection was going: the accepted socket's local
 * address (the kernel keeps the original destination there). Throws
 * SockoptError `ENOTREDIRECTED` where `isOwn` says that address is one of
 * the gateway's own listeners (a client connected to it directly: a loop).
 */
export function localDestination(socket: Socket, isOwn: (address: string, port: number) => boolean = () => false): OriginalDestination {
  const address = socket.localAddress?.replace(/^::ffff:(?=\d+\.)/, '');
  const port = socket.localPort;
  if (!address || !port) throw new SockoptError('ENOFD', 'the socket has no local address (closed)');
  if (isOwn(address, port)) {
    throw new SockoptError('ENOTREDIRECTED', 'no original destination: the connection was addressed to the gateway itself');
  }
  return { address, port, family: address.includes(':') ? 6 : 4 };
}
