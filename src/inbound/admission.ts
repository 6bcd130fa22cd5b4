import http from 'node:http';
import type { Socket } from 'node:net';
import type { ClientAccess } from '../access/clients.js';
import { formatClient, type Attempt, type Audit } from '../audit.js';
import type { Config } from '../config/schema.js';
import { httpStatus } from '../errors.js';

/**
 * Connection admission, shared by every listener and called on accept:
 * first `clients.allow` (or a forward listener's own `clients`): a source
 * outside it is refused before a byte is read, so before any parsing or
 * DNS; then `limits.max_connections` (all listeners), `max_connections_per_client`
 * (per source address) and `max_handshakes` (connections that have not yet
 * sent a complete request). The descriptor budget (gateway.ts) sits below
 * these: past it a connection never reaches a listener.
 *
 * A full handshake table does not refuse the newcomer: the oldest
 * unfinished handshake is dropped instead (`over_capacity`), so clients
 * that trickle their heads cannot lock out one that sends its request at
 * once. A slot is held from accept until the listener says the request is
 * complete, or the connection closes.
 */

export type Limits = Config['limits'];
export type Refusal = { reason: 'over_capacity' | 'client_limit' | 'client_not_allowed'; detail: string };
/** Drops an unfinished handshake; it is given the socket, so one function can serve a whole listener. */
export type Evict = (r: Refusal, socket: Socket) => void;

/** How long a refused client may keep sending before the socket is destroyed (its answer is read, not reset). */
const LINGER_MS = 2000;
/** What a refused HTTP client is told to wait, in seconds. */
const RETRY_AFTER_S = 1;

const kAdmission = Symbol('admission');
const kClient = Symbol('client');
type Counted = Socket & { [kAdmission]?: Admission; [kClient]?: string };

export class Admission {
  private open = 0;
  private readonly perClient = new Map<string, number>();
  /** Unfinished handshakes, oldest first, each with how to drop it. */
  private readonly pending = new Map<Socket, Evict>();

  constructor(
    private readonly limits: () => Limits,
    /** The allow-lists in force; without it every source is admitted. */
    private readonly clients?: () => ClientAccess,
  ) {}

  /** Admitted client connections still open. */
  get connections(): number {
    return this.open;
  }

  get handshakes(): number {
    return this.pending.size;
  }

  /**
   * Count a new connection in, or say why it is refused. With `evict`
   * (listeners that read a request) it holds a handshake slot until
   * `handshakeDone`; `evict` drops it if newer connections need the slot.
   * `forward` names a listener that carries no credentials (forward,
   * transparent), judged by its own `clients` list or the entries without users.
   */
  enter(socket: Socket, evict?: Evict, forward?: string): Refusal | undefined {
    if (this.clients && !this.clients().admits(socket.remoteAddress, forward)) {
      const list = forward !== undefined ? `the clients of listener "${forward}" (or the clients.allow entries without users)` : 'clients.allow';
      return { reason: 'client_not_allowed', detail: `source ${socket.remoteAddress ?? 'unknown'} is not in ${list}` };
    }
    const l = this.limits();
    if (l.max_connections > 0 && this.open >= l.max_connections) {
      return { reason: 'over_capacity', detail: `${this.open} client connections open (limits.max_connections)` };
    }
    const client = clientKey(socket.remoteAddress);
    const n = this.perClient.get(client) ?? 0;
    if (l.max_connections_per_client > 0 && n >= l.max_connections_per_client) {
      return { reason: 'client_limit', detail: `${n} connections open from this client (limits.max_connections_per_client)` };
    }
    this.open++;
    this.perClient.set(client, n + 1);
    const c = socket as Counted;
    c[kAdmission] = this;
    c[kClient] = client;
    socket.on('close', onClose); // not once(): its wrapper would be a closure kept as long as the tunnel
    if (!evict) return undefined;
    if (l.max_handshakes > 0) {
      while (this.pending.size >= l.max_handshakes) {
        const [oldest, drop] = this.pending.entries().next().value!;
        this.pending.delete(oldest);
        drop({ reason: 'over_capacity', detail: `${l.max_handshakes} handshakes in progress (limits.max_handshakes): the oldest is dropped` }, oldest);
      }
    }
    this.pending.set(socket, evict);
    return undefined;
  }

  /** The request is complete (or the handshake is over): the slot is free. */
  handshakeDone(socket: Socket): void {
    this.pending.delete(socket);
  }

  /** The connection closed (called from its 'close' event). */
  release(socket: Counted): void {
    this.pending.delete(socket);
    this.open--;
    const client = socket[kClient]!;
    const n = (this.perClient.get(client) ?? 1) - 1;
    if (n > 0) this.perClient.set(client, n);
    else this.perClient.delete(client);
  }
}

// Shared: no closure per counted socket.
function onClose(this: Counted): void {
  this[kAdmission]?.release(this);
}

/** A client's source address; an IPv4 client of a dual-stack listener counts as its IPv4 address. */
function clientKey(address: string | undefined): string {
  if (!address) return 'unknown';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/** The attempt a refusal at accept is recorded under (nothing was asked yet). */
export function acceptAttempt(socket: Socket, id: string, listener: string, proto: Attempt['proto']): Attempt {
  return { id, client: formatClient(socket.remoteAddress, socket.remotePort), listener, proto };
}

/** Record a refusal (audit record; the metric follows from it). */
export function auditRefusal(audit: Audit, attempt: Attempt, r: Refusal): void {
  audit.denied(attempt, { reason: r.reason, enforced: true, error: r.detail });
}

/** The HTTP answer to a refused connection: 403, or 429 or 503 with Retry-After. */
export function httpRefusal(r: Refusal): string {
  const status = httpStatus(r.reason);
  const body = `${r.reason}: ${r.detail}\n`;
  return (
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n` +
    `Content-Type: text/plain; charset=utf-8\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    `X-Wa-Egress-Reason: ${r.reason}\r\n` +
    (r.reason === 'client_not_allowed' ? '' : `Retry-After: ${RETRY_AFTER_S}\r\n`) +
    `Connection: close\r\n\r\n${body}`
  );
}

/**
 * Answer and close a socket no parser owns, reading (and dropping) what the
 * client still sends until it closes or LINGER_MS pass: closing with unread
 * bytes would reset the connection and could lose the answer.
 */
export function lingerClose(socket: Socket, answer: string | Buffer): void {
  socket.end(answer);
  socket.on('data', discard).on('error', destroyThis);
  socket.once('end', destroyThis);
  socket.resume();
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  socket.once('close', () => clearTimeout(timer));
}

function discard(): void {}
function destroyThis(this: Socket): void {
  this.destroy();
}
