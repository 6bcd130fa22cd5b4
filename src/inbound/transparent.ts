import net, { type Socket } from 'node:net';
import { formatClient, type Attempt } from '../audit.js';
import { destroySocket, openEgress, startTunnel, type EgressContext } from '../egress.js';
import type { ListenAddress } from '../config/schema.js';
import { nativeUnavailableReason, originalDestination, SockoptError, type OriginalDestination } from '../native/sockopt.js';
import { canonicalIp } from '../net/ip.js';
import type { Target } from '../policy/hostport.js';
import { auditRefusal, type Admission, type Refusal } from './admission.js';
import { MAX_HELLO_BYTES, parseClientHello, type HelloResult } from './sni.js';

/**
 * The transparent listener: connections the network redirected to the
 * gateway (nftables/iptables REDIRECT or DNAT, or TPROXY) are judged by
 * their original destination (SO_ORIGINAL_DST; under TPROXY the accepted
 * socket's own local address) and, when the client opens with a TLS
 * ClientHello, by the server name it asks for. The first bytes are read
 * (up to one ClientHello, at most `handshakeTimeoutMs`) without being lost:
 * they are forwarded first once the tunnel is open.
 *
 * - A ClientHello with SNI: the name is judged by the policy as a CONNECT
 *   to it would be, but the only address judged and dialled is the
 *   original destination (no DNS query).
 * - No SNI, a hello that cannot be read, another protocol, or nothing sent
 *   in time: judged by the original destination's address alone (refused
 *   with `sni_required` for the first two where `require_sni` says so).
 */

export interface TransparentListenerOptions {
  name: string;
  handshakeTimeoutMs: number;
  nextId: () => string;
  /** Connection limits (admission.ts); the wait for the first bytes holds a handshake slot. */
  admission?: Admission;
  /** Where a connection was going: SO_ORIGINAL_DST by default (REDIRECT); the local address under TPROXY. */
  originalDestination?: (socket: Socket) => OriginalDestination;
}

/** Why a transparent listener at `at` cannot run here (no addon: no original destinations), or undefined. */
export function transparentUnavailable(at: ListenAddress, mode: 'redirect' | 'tproxy' = 'redirect'): string | undefined {
  const why = nativeUnavailableReason();
  const need = mode === 'tproxy' ? 'to open an IP_TRANSPARENT listening socket (TPROXY)' : "to read each connection's original destination (SO_ORIGINAL_DST)";
  return why && `listen.transparent ${at.text}: needs the native addon ${need}: ${why}`;
}

export function createTransparentServer(ctx: () => EgressContext, opts: TransparentListenerOptions): net.Server {
  // Paused: nothing is read until the sniffer (and then the tunnel) takes the bytes.
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
  const lookup = opts.originalDestination ?? originalDestination;
  server.on('connection', (socket: Socket) => {
    socket.on('error', destroySocket);
    const attempt: Attempt = {
      id: opts.nextId(),
      client: formatClient(socket.remoteAddress, socket.remotePort),
      listener: opts.name,
      proto: 'transparent',
    };
    let dst: OriginalDestination;
    try {
      dst = lookup(socket);
    } catch (err) {
      return refuseUnknown(ctx(), attempt, socket, err);
    }
    const address = canonicalIp(dst.address)?.ip ?? dst.address;
    attempt.dest_host = address;
    attempt.dest_port = dst.port;
    let sniff: Sniffer | undefined;
    // No credentials come this way: judged like a forward listener (clients.allow entries without users).
    const refused = opts.admission?.enter(socket, (r) => sniff?.drop(r), opts.name);
    if (refused) {
      auditRefusal(ctx().audit, attempt, refused);
      return void socket.destroy();
    }
    sniff = new Sniffer(socket, opts.handshakeTimeoutMs, (head, hello) => {
      opts.admission?.handshakeDone(socket);
      void judge(ctx(), attempt, socket, { address, port: dst.port, family: dst.family }, head, hello);
    }, (r) => auditRefusal(ctx().audit, attempt, r));
  });
  return server;
}

/** No original destination: a connection made to the listener itself (a loop), or a socket already gone. */
function refuseUnknown(ctx: EgressContext, attempt: Attempt, socket: Socket, err: unknown): void {
  const e = err as SockoptError;
  if (e.code === 'ENOTREDIRECTED') {
    // Addressed to the transparent listener itself: a loop, as a CONNECT to our own port is.
    ctx.audit.denied(attempt, { reason: 'loop', enforced: true, error: e.message });
  } else if (e.code !== 'ENOFD') {
    ctx.audit.failed(attempt, { reason: 'connect_failed', error: `cannot read the original destination: ${e.message}` });
  }
  socket.destroy();
}

async function judge(
  ctx: EgressContext,
  attempt: Attempt,
  socket: Socket,
  dst: { address: string; port: number; family: 4 | 6 },
  head: Buffer,
  hello: HelloResult,
): Promise<void> {
  const sni = hello.kind === 'hello' ? hello.sni : null;
  if (sni !== null) attempt.dest_host = sni;
  const target: Target = sni !== null ? { host: sni, port: dst.port } : { host: dst.address, port: dst.port, family: dst.family };
  const nameless = hello.kind === 'invalid' || (hello.kind === 'hello' && sni === null);
  try {
    const result = await openEgress(ctx, attempt, target, { at: { address: dst.address, nameless } });
    if (!result.ok) socket.destroy();
    else startTunnel(ctx, attempt, socket, result, head);
  } catch (err) {
    socket.destroy(err as Error);
  }
}

/**
 * Reads the client's first bytes until they are a complete ClientHello,
 * plainly not TLS, over the cap, ended, or the time is up; then pauses
 * the socket and hands the bytes over.
 */
class Sniffer {
  private readonly chunks: Buffer[] = [];
  private length = 0;
  private done = false;
  private readonly timer: NodeJS.Timeout;
  private readonly onData = (chunk: Buffer) => this.receive(chunk);
  private readonly onEnd = () => {
    // Closed without a byte (a health check, a port scan): nothing was asked, no record.
    if (this.length > 0) return this.finish(parseClientHello(this.head()));
    this.stop();
    this.socket.destroy();
  };
  private readonly onClose = () => this.stop();

  constructor(
    private readonly socket: Socket,
    timeoutMs: number,
    private readonly ready: (head: Buffer, hello: HelloResult) => void,
    private readonly refused: (r: Refusal) => void,
  ) {
    // Nothing in time: a protocol whose server speaks first, or a silent client; judged by address.
    this.timer = setTimeout(() => this.finish(this.length ? parseClientHello(this.head()) : { kind: 'not_tls' }), timeoutMs);
    socket.on('data', this.onData).once('end', this.onEnd).once('close', this.onClose);
    socket.resume();
  }

  /** The handshake slot is needed for a newer connection (limits.max_handshakes). */
  drop(r: Refusal): void {
    if (this.done) return;
    this.stop();
    this.refused(r);
    this.socket.destroy();
  }

  private head(): Buffer {
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
  }

  private receive(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
    const hello = parseClientHello(this.head());
    if (hello.kind !== 'more') return this.finish(hello);
    if (this.length >= MAX_HELLO_BYTES) this.finish({ kind: 'invalid', error: `no complete ClientHello in the first ${MAX_HELLO_BYTES} bytes` });
  }

  private finish(hello: HelloResult): void {
    if (this.done) return;
    if (hello.kind === 'more') hello = { kind: 'invalid', error: 'the ClientHello did not arrive whole in time' };
    // Pause before the listener goes: a flowing stream without one drops data.
    this.socket.pause();
    this.stop();
    this.ready(this.head(), hello);
  }

  private stop(): void {
    this.done = true;
    clearTimeout(this.timer);
    this.socket.removeListener('data', this.onData).removeListener('end', this.onEnd).removeListener('close', this.onClose);
  }
}
