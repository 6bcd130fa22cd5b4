import type { Socket } from 'node:net';
import type { Attempt, Audit, CloseReason } from './audit.js';
import { keepAliveSoon, type KeepAlive } from './net/keepalive.js';
import { useOnRead } from './net/onread.js';

/**
 * A byte tunnel between the client and the upstream socket.
 * - Back-pressure: a side that cannot take more pauses the other's reads.
 * - Half-close: a FIN from one side ends writing towards the other; the
 *   tunnel closes when both directions are done, or at once on an error or
 *   when a socket is closed under it (then both sockets are destroyed).
 * - No timer unless `idleMs` > 0; keepalive and no-delay on both legs.
 * Listeners are shared module functions that find their tunnel through the
 * socket: an idle tunnel holds no closures (gateways keep tens of thousands).
 *
 * Reads (see net/onread.ts) allocate nothing per chunk:
 * - An idle leg reads into one buffer shared by every leg, and what it read
 *   is copied out at once (chat-sized messages are small), so an idle
 *   tunnel owns no buffer.
 * - A leg that reads a large chunk is streaming: it takes a buffer of its
 *   own and its large chunks are written straight from it. While such a
 *   write waits in the socket the buffer is the write's, so the leg reads no
 *   more until 'drain' (which a chunk of a high-water mark or more always
 *   brings). A small read gives the buffer back to the pool.
 */

export interface TunnelOptions {
  idleMs: number;
  keepAlive: KeepAlive;
  /** The upstream's address, for the close record. */
  destIp: string;
  /** Bytes the client sent after its request head, forwarded first. */
  head?: Buffer;
  /** An upgraded HTTP request: the status (101) its close record names. */
  status?: number;
}

/** Where a tunnel is tracked while open, and where its close record goes. */
export interface TunnelOwner {
  tunnels: Set<Tunnel>;
  audit: Pick<Audit, 'closed'>;
}

const kTunnel = Symbol('tunnel');
type Leg = Socket & { [kTunnel]: Tunnel };

export class Tunnel {
  bytesUp = 0;
  bytesDown = 0;
  /** The legs' own read buffers, while they stream. */
  clientBuf: Buffer | undefined;
  upstreamBuf: Buffer | undefined;
  private reason: CloseReason | undefined;
  private open = 2;
  private readonly started = Date.now();
  /** The address the upstream is connected to (a reload's recheck judges it again). */
  readonly destIp: string;
  private readonly status: number | undefined;

  constructor(
    readonly client: Socket,
    readonly upstream: Socket,
    opts: TunnelOptions,
    private readonly owner: TunnelOwner,
    readonly attempt: Attempt,
  ) {
    this.destIp = opts.destIp;
    this.status = opts.status;
    // The upstream has keepalive from the dial; no-delay is set on both at
    // connect/accept and cached, so this costs no system call.
    keepAliveSoon(client, opts.keepAlive);
    // Leg by leg, not a loop over a new array: two arrays less per tunnel.
    this.attach(client, onClientEnd, onClientError, onClientClose);
    this.attach(upstream, onUpstreamEnd, onUpstreamError, onUpstreamClose);
    // Replaces any timeout left on the socket by Node's HTTP server; the
    // socket's timer is refreshed by traffic in both directions.
    client.setTimeout(opts.idleMs);
    upstream.setTimeout(0);
    if (opts.idleMs > 0) client.on('timeout', onIdle);

    if (opts.head?.length) {
      this.bytesUp += opts.head.length;
      upstream.write(opts.head);
    }
    // A client that left while the upstream was being dialled.
    if (client.destroyed) {
      this.destroy('client_closed');
      // Its 'close' may have been emitted already; count it, but after the
      // caller has registered this tunnel.
      if (client.closed) queueMicrotask(() => this.closed(client, 'client_closed'));
      return;
    }
    this.startReading(client);
    this.startReading(upstream);
    if (client.readableEnded) {
      // Its FIN came, and was read, while the upstream was being dialled.
      this.ended('client_closed', upstream);
    } else {
      client.resume();
    }
    upstream.resume();
  }

  private attach(s: Socket, onEnd: (this: Leg) => void, onError: (this: Leg, err: NodeJS.ErrnoException) => void, onClose: (this: Leg) => void): void {
    s.allowHalfOpen = true;
    s.setNoDelay(true);
    (s as Leg)[kTunnel] = this;
    s.on('end', onEnd).on('error', onError).on('close', onClose).on('drain', onDrain);
  }

  private startReading(s: Socket): void {
    // Bytes read before the tunnel existed (the client's after its
    // request, an upstream that spoke first) go first.
    for (let chunk: Buffer | null; s.readableLength > 0 && (chunk = s.read() as Buffer | null) !== null; ) {
      this.relay(s, chunk);
    }
    if (!useOnRead(s, shared, onRead, nextBuffer)) s.on('data', onData);
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

  /** Forward a chunk that is the caller's to give away; false: pause the reader. */
  relay(from: Socket, chunk: Buffer): boolean {
    if (from === this.client) {
      this.bytesUp += chunk.length;
      return this.upstream.write(chunk);
    }
    this.bytesDown += chunk.length;
    return this.client.write(chunk);
  }

  closed(socket: Socket, reason: CloseReason): void {
    // A socket closed under us (destroyed, not ended both ways) takes the
    // other side with it; otherwise the other side is finishing on its own.
    if (!(socket.readableEnded && socket.writableFinished)) this.destroy(reason);
    if (--this.open > 0) return;
    // Both sockets are closed: no write holds a leg's buffer any more.
    giveBack(this.clientBuf);
    giveBack(this.upstreamBuf);
    this.clientBuf = this.upstreamBuf = undefined;
    this.owner.tunnels.delete(this);
    this.owner.audit.closed(this.attempt, {
      dest_ip: this.destIp,
      bytes_up: this.bytesUp,
      bytes_down: this.bytesDown,
      duration_ms: Date.now() - this.started,
      close_reason: this.reason ?? 'client_closed',
      ...(this.status !== undefined && { status: this.status }),
    });
  }
}

// ---------------------------------------------------------------- buffers

/** Read size: large reads mean few system calls per byte tunnelled. */
const BUFFER_BYTES = 262144;
/** Streaming legs beyond this many share the copying path (64 MiB of buffers). */
const MAX_OWN_BUFFERS = 256;
/** Buffers kept for reuse when legs go quiet. */
const POOL_KEEP = 16;

const shared: Buffer = Buffer.allocUnsafeSlow(BUFFER_BYTES);
const pool: Buffer[] = [];
let owned = 0;
/** The buffer for the socket's next read, chosen by `onRead` just before Node asks `nextBuffer`. */
let next: Buffer = shared;

function nextBuffer(): Buffer {
  const b = next;
  next = shared;
  return b;
}

function takeBuffer(): Buffer | undefined {
  const b = pool.pop();
  if (b) return b;
  if (owned >= MAX_OWN_BUFFERS) return undefined;
  owned++;
  return Buffer.allocUnsafeSlow(BUFFER_BYTES);
}

function giveBack(b: Buffer | undefined): void {
  if (!b) return;
  if (pool.length < POOL_KEEP) pool.push(b);
  else owned--;
}

function onRead(this: Socket, n: number, buf: Buffer): boolean {
  const t = (this as Leg)[kTunnel];
  const up = this === t.client;
  const to = up ? t.upstream : t.client;
  if (buf !== shared && n >= to.writableHighWaterMark) {
    // Streaming: no copy. `next` keeps this leg on its own buffer.
    t.relay(this, buf.subarray(0, n));
    next = buf;
    // Still queued: the buffer is the write's until 'drain'.
    return to.writableLength === 0;
  }
  const copy = Buffer.allocUnsafe(n);
  buf.copy(copy, 0, 0, n);
  const more = t.relay(this, copy);
  if (buf !== shared) {
    // Gone quiet: only copies are queued, so the buffer is free.
    giveBack(buf);
    if (up) t.clientBuf = undefined;
    else t.upstreamBuf = undefined;
  } else if (n >= to.writableHighWaterMark) {
    const own = takeBuffer();
    if (own) {
      next = own;
      if (up) t.clientBuf = own;
      else t.upstreamBuf = own;
    }
  }
  return more;
}

// ---------------------------------------------------------------- events

/** Where reads cannot be given a buffer: one fresh chunk per read. */
function onData(this: Leg, chunk: Buffer): void {
  if (!this[kTunnel].relay(this, chunk)) this.pause();
}
/** The socket took what was queued: the other leg may read again. */
function onDrain(this: Leg): void {
  const t = this[kTunnel];
  (this === t.client ? t.upstream : t.client).resume();
}
function onClientEnd(this: Leg): void {
  const t = this[kTunnel];
  t.ended('client_closed', t.upstream);
}
function onUpstreamEnd(this: Leg): void {
  const t = this[kTunnel];
  t.ended('upstream_closed', t.client);
}
// ETIMEDOUT on an established leg: keepalive probes or TCP_USER_TIMEOUT
// gave up, the peer stopped answering.
function onClientError(this: Leg, err: NodeJS.ErrnoException): void {
  this[kTunnel].destroy(err.code === 'ETIMEDOUT' ? 'client_timeout' : 'client_error');
}
function onUpstreamError(this: Leg, err: NodeJS.ErrnoException): void {
  this[kTunnel].destroy(err.code === 'ETIMEDOUT' ? 'upstream_timeout' : 'upstream_error');
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
