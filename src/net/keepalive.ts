import type { Socket } from 'node:net';
import { keepaliveMode, nativeUnavailableReason, setTcpOptions } from '../native/sockopt.js';

/**
 * TCP keepalive for tunnel legs and upstreams, switched on within a second
 * rather than at once. A probe only goes out after `idle` of silence
 * (30 s by default), so a socket that closes sooner never needs it, and
 * the system calls per socket are saved on every short connection (most
 * HTTPS fetches); long-lived tunnels get it before it could matter. One
 * timer for the whole process, and only while sockets wait.
 *
 * Each socket's idle time is drawn between three quarters of `idle` and
 * all of it (never later than configured): tunnels opened together, as
 * after a restart, would otherwise probe together, every `idle`, in bursts
 * that can overflow a receive queue.
 *
 * With the native addon the same sweep sets TCP_KEEPINTVL, TCP_KEEPCNT and
 * TCP_USER_TIMEOUT, so a peer gets `count` probes `interval` apart. Without
 * it Node's `setKeepAlive` is all there is, and libuv gives a peer only 10
 * probes one second apart before it aborts the connection.
 */

export interface KeepAlive {
  /** Silence before the first probe; 0 = keepalive off. */
  idleMs: number;
  /** Between unanswered probes (whole seconds). */
  intervalMs: number;
  /** Unanswered probes before the connection is dropped. */
  count: number;
  /** TCP_USER_TIMEOUT; 0 = the kernel's behaviour. */
  userTimeoutMs: number;
}

/** What libuv sets when Node switches keepalive on. */
export const NODE_INTERVAL_MS = 1000;
export const NODE_COUNT = 10;

const SWEEP_MS = 1000;
let waiting: Socket[] = [];
let settings: KeepAlive[] = [];
let timer: NodeJS.Timeout | undefined;

export function keepAliveSoon(socket: Socket, ka: KeepAlive): void {
  if (ka.idleMs <= 0 && ka.userTimeoutMs <= 0) return;
  waiting.push(socket);
  settings.push(ka);
  timer ??= setTimeout(sweep, SWEEP_MS).unref();
}

function sweep(): void {
  const sockets = waiting;
  const kas = settings;
  waiting = [];
  settings = [];
  timer = undefined;
  const native = keepaliveMode() === 'native';
  for (let i = 0; i < sockets.length; i++) {
    const s = sockets[i]!;
    if (s.destroyed) continue;
    const ka = kas[i]!;
    // Whole seconds, as the kernel counts them, and never below 1 (0 is refused).
    const idleSec = ka.idleMs > 0 ? Math.max(1, Math.floor((ka.idleMs * (0.75 + 0.25 * Math.random())) / 1000)) : 0;
    if (native) {
      try {
        setTcpOptions(s, { idleSec, intervalSec: ka.intervalMs / 1000, count: ka.count, userTimeoutMs: ka.userTimeoutMs });
        continue;
      } catch {
        // Closed under us, or not a TCP descriptor: Node's keepalive still applies below.
      }
    }
    if (idleSec > 0) s.setKeepAlive(true, idleSec * 1000);
  }
}

/** How long a peer that stopped answering keeps a connection, in ms (0: never, keepalive off). */
export function silentPeerDropMs(ka: KeepAlive, mode = keepaliveMode()): number {
  if (ka.idleMs <= 0) return 0;
  if (mode === 'node') return ka.idleMs + NODE_INTERVAL_MS * NODE_COUNT;
  if (ka.userTimeoutMs <= 0) return ka.idleMs + ka.intervalMs * ka.count;
  // With TCP_USER_TIMEOUT the kernel ignores the count: at each probe after
  // the first it drops the connection once the peer has been silent that long.
  const probes = Math.max(1, Math.ceil((ka.userTimeoutMs - ka.idleMs) / ka.intervalMs));
  return ka.idleMs + ka.intervalMs * probes;
}

const secs = (ms: number) => `${+(ms / 1000).toFixed(3)} s`;

/** The start-up log line: "a silent peer is dropped after …". */
export function describeKeepAlive(ka: KeepAlive, mode = keepaliveMode()): string {
  const ut = ka.userTimeoutMs > 0 && mode === 'native' ? `; unacknowledged data is given up after ${secs(ka.userTimeoutMs)} (timeouts.user_timeout)` : '';
  if (ka.idleMs <= 0) return `keepalive off: a silent peer is never dropped by TCP keepalive${ut}`;
  const drop = silentPeerDropMs(ka, mode);
  if (mode === 'node') {
    return `a silent peer is dropped after ${secs(drop)} (idle ${secs(ka.idleMs)} + ${NODE_COUNT} probes × ${secs(NODE_INTERVAL_MS)}: Node's keepalive)`;
  }
  if (ka.userTimeoutMs > 0) {
    return `a silent peer is dropped after ${secs(drop)} (idle ${secs(ka.idleMs)} + probes ${secs(ka.intervalMs)} apart until timeouts.user_timeout ${secs(ka.userTimeoutMs)} has passed)${ut}`;
  }
  return `a silent peer is dropped after ${secs(drop)} (idle ${secs(ka.idleMs)} + ${ka.count} probes × ${secs(ka.intervalMs)})`;
}

/** Why the configured keepalive cannot be applied as written (the addon is missing); undefined when it can. */
export function keepAliveWarning(ka: KeepAlive, mode = keepaliveMode()): string | undefined {
  if (mode === 'native' || (ka.idleMs <= 0 && ka.userTimeoutMs <= 0)) return undefined;
  const parts = [`native socket options unavailable (${nativeUnavailableReason() ?? 'the addon is not loaded'})`];
  if (ka.idleMs > 0) {
    const node = silentPeerDropMs(ka, 'node');
    const wanted = silentPeerDropMs(ka, 'native');
    parts.push(
      `falling back to Node's keepalive, ${NODE_COUNT} probes ${secs(NODE_INTERVAL_MS)} apart: a silent peer is dropped after ` +
        `${secs(node)}${node === wanted ? '' : `, not ${secs(wanted)}`} (keepalive.interval and keepalive.count are not applied)`,
    );
  }
  if (ka.userTimeoutMs > 0) parts.push('timeouts.user_timeout is not applied');
  return parts.join('; ');
}
