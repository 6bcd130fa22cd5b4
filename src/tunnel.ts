import type { Socket } from 'node:net';
import type { CloseReason, Closed } from './audit.js';

/**
 * A byte tunnel between the client and the upstream socket.
 * - Back-pressure: a side that cannot take more pauses the other's reads.
 * - Half-close: a FIN from one side ends writing towards the other; the
 *   tunnel closes when both directions are done, or at once on an error
 *   (then both sockets are destroyed).
 * - No timer unless `idleMs` > 0; keepalive and no-delay on both legs.
 */

export interface TunnelOptions {
  idleMs: number;
  keepAliveMs: number;
  /** Bytes the client sent after its request head, forwarded first. */
  head?: Buffer;
}

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
    }
    // Replaces any timeout left on the socket by Node's HTTP server; the
    // socket's timer is refreshed by traffic in both directions.
    client.setTimeout(opts.idleMs);
    upstream.setTimeout(0);
    if (opts.idleMs > 0) client.on('timeout', () => this.destroy('idle_timeout'));

    if (opts.head?.length) {
      this.bytesUp += opts.head.length;
      upstream.write(opts.head);
    }
    client.on('data', (chunk: Buffer) => {
      this.bytesUp += chunk.length;
      if (!upstream.write(chunk)) client.pause();
    });
    upstream.on('data', (chunk: Buffer) => {
      this.bytesDown += chunk.length;
      if (!client.write(chunk)) upstream.pause();
    });
    upstream.on('drain', () => client.resume());
    client.on('drain', () => upstream.resume());
    const clientEnded = () => {
      this.reason ??= 'client_closed';
      upstream.end();
    };
    client.on('end', clientEnded);
    upstream.on('end', () => {
      this.reason ??= 'upstream_closed';
      client.end();
    });
    client.on('error', () => this.destroy('client_error'));
    upstream.on('error', () => this.destroy('upstream_error'));
    client.on('close', () => this.closed(client, 'client_closed'));
    upstream.on('close', () => this.closed(upstream, 'upstream_closed'));
    // A client that left while the upstream was being dialled.
    if (client.destroyed) {
      this.destroy('client_closed');
      // Its 'close' may have been emitted already; count it, but after the
      // caller has registered this tunnel.
      if (client.closed) queueMicrotask(() => this.closed(client, 'client_closed'));
    } else if (client.readableEnded) {
      // Its FIN came, and was read, while the upstream was being dialled.
      clientEnded();
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

  private closed(socket: Socket, reason: CloseReason): void {
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
