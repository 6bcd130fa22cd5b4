import type { Socket } from 'node:net';

/**
 * TCP keepalive for tunnel legs and upstreams, switched on within a second
 * rather than at once. A probe only goes out after `keepalive` of silence
 * (30 s by default), so a socket that closes sooner never needs it, and
 * the four setsockopt calls per socket are saved on every short connection
 * (most HTTPS fetches); long-lived tunnels get it before it could matter.
 * One timer for the whole process, and only while sockets wait.
 *
 * Each socket's idle time is drawn between three quarters of `keepalive`
 * and all of it (never later than configured): tunnels opened together,
 * as after a restart, would otherwise probe together, every `keepalive`,
 * in bursts that can overflow a receive queue. That matters because libuv
 * gives a peer only 10 probes one second apart before it aborts the
 * connection (TCP_KEEPINTVL 1, TCP_KEEPCNT 10), and Node offers no way to
 * change that.
 */

const SWEEP_MS = 1000;
let waiting: Socket[] = [];
let delays: number[] = [];
let timer: NodeJS.Timeout | undefined;

export function keepAliveSoon(socket: Socket, delayMs: number): void {
  if (delayMs <= 0) return;
  waiting.push(socket);
  delays.push(delayMs);
  timer ??= setTimeout(sweep, SWEEP_MS).unref();
}

function sweep(): void {
  const sockets = waiting;
  const ms = delays;
  waiting = [];
  delays = [];
  timer = undefined;
  for (let i = 0; i < sockets.length; i++) {
    const s = sockets[i]!;
    // Node passes whole seconds, and libuv refuses 0: the draw stays at 1 s or more.
    if (!s.destroyed) s.setKeepAlive(true, Math.max(Math.min(ms[i]!, 1000), ms[i]! * (0.75 + 0.25 * Math.random())));
  }
}
