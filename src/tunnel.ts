import type { Socket } from 'node:net';
import type { CloseReason, Closed } from './audit.js';

/**
 * A byte tunnel between the client and the upstream socket.
 * - Back-pressure: a side that cannot take more pauses the other's reads.
 * - Half-close: a FIN from one side ends writing towards the other; the
 *   tunnel closes when both directions are done, or at once on an error or
 *   when a socket is closed under it (then both sockets are destroyed).
 * - No timer unless `idleMs` > 0; keepalive and no-delay on both legs.
 * Listeners are shared module functions that find their tunnel through the
 * socket: an idle tunnel holds no closures (gateways keep tens of thousands).
 */

export interface TunnelOptions {
  idleMs: number;
  keepAliveMs: number;
  /** Bytes the client sent after its request head, forwarded first. */
  head?: Buffer;
}

const kTunnel = Symbol('tunnel');
type Leg = Socket & { [kTunnel]: Tunnel };

export class Tunnel {
  bytesUp = 0;
  bytesDown = 0;
  private reason: CloseReason | undefined;
  private open = 2;
  private readonly started = Date.now();
  private readonly destIp: string | undefined;

  constructor(
    readonly client: Socket,
    readonly upstream: Socket,
    opts: TunnelOptions,
    private readonly onClose: (closed: Closed) => void,
  ) {
    this.destIp = upstream.remoteAddress;
    for (const s of [client, upstream]) {
      s.allowHalfOpen = true;
      s.setNoDelay(true);
      s.setKeepAlive(opts.keepAliveMs > 0, opts.keepAliveMs);
      (s as Leg)[kTunnel] = this;
    }
    // Replaces any timeout left on the socket by Node's HTTP server; the
    // socket's timer is refreshed by traffic in both directions.
    client.setTimeout(opts.idleMs);
    upstream.setTimeout(0);
    if (opts.idleMs > 0) client.on('timeout', onIdle);

    if (opts.head?.length) {
      this.bytesUp += opts.head.length;
      upstream.write(opts.head);
    }
    client.on('data', onClientData).on('drain', onClientDrain).on('end', onClientEnd).on('error', onClientError).on('close', onClientClose);
    upstream.on('data', onUpstreamData).on('drain', onUpstreamDrain).on('end', onUpstreamEnd).on('error', onUpstreamError).on('close', onUpstreamClose);
    // A client that left while the upstream was being dialled.
    if (client.destroyed) {
      this.destroy('client_closed');
      // Its 'close' may have been emitted already; count it, but after the
      // caller has registered this tunnel.
      if (client.closed) queueMicrotask(() => this.closed(client, 'client_closed'));
    } else if (client.readableEnded) {
      // Its FIN came, and was read, while the upstream was being dialled.
      this.ended('client_closed', upstream);
    } else {
      client.resume();
    }
  }

  /** Cut the tunnel now (error, idle, shutdown); the first reason given is kept. */
  destroy(reason: CloseReason): void {
    this.reason ??= reason;
    this.client.destroy();
    this.upstream.destroy();
  }

  /** One side sent FIN: end writing towards the other. */
  ended(reason: CloseReason, other: Socket): void {
    this.reason ??= reason;
    other.end();
  }

  closed(socket: Socket, reason: CloseReason): void {
    // A socket closed under us (destroyed, not ended both ways) takes the
    // other side with it; otherwise the other side is finishing on its own.
    if (!(socket.readableEnded && socket.writableFinished)) this.destroy(reason);
    if (--this.open > 0) return;
    this.onClose({
      dest_ip: this.destIp,
      bytes_up: this.bytesUp,
      bytes_down: this.bytesDown,
      duration_ms: Date.now() - this.started,
      close_reason: this.reason ?? 'client_closed',
    });
  }
}

function onClientData(this: Leg, chunk: Buffer): void {
  const t = this[kTunnel];
  t.bytesUp += chunk.length;
  if (!t.upstream.write(chunk)) this.pause();
}
function onUpstreamData(this: Leg, chunk: Buffer): void {
  const t = this[kTunnel];
  t.bytesDown += chunk.length;
  if (!t.client.write(chunk)) this.pause();
}
function onClientDrain(this: Leg): void {
  this[kTunnel].upstream.resume();
}
function onUpstreamDrain(this: Leg): void {
  this[kTunnel].client.resume();
}
function onClientEnd(this: Leg): void {
  const t = this[kTunnel];
  t.ended('client_closed', t.upstream);
}
function onUpstreamEnd(this: Leg): void {
  const t = this[kTunnel];
  t.ended('upstream_closed', t.client);
}
function onClientError(this: Leg): void {
  this[kTunnel].destroy('client_error');
}
function onUpstreamError(this: Leg): void {
  this[kTunnel].destroy('upstream_error');
}
function onClientClose(this: Leg): void {
  this[kTunnel].closed(this, 'client_closed');
}
function onUpstreamClose(this: Leg): void {
  this[kTunnel].closed(this, 'upstream_closed');
}
function onIdle(this: Leg): void {
  this[kTunnel].destroy('idle_timeout');
}
