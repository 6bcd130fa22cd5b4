import net, { type Socket } from 'node:net';
import { formatClient, type Attempt } from '../audit.js';
import { openEgress, startTunnel, type EgressContext } from '../egress.js';
import { EgressError, type Reason } from '../errors.js';
import { bigIntToV6, numberToV4, v6ToBigInt } from '../net/ip.js';
import { normalizeHost, type Target } from '../policy/hostport.js';
import type { AuthOutcome } from '../access/auth.js';
import { acceptAttempt, auditRefusal, lingerClose, type Admission, type Refusal } from './admission.js';

/**
 * SOCKS5 listener (RFC 1928, CONNECT only). Names are resolved by the proxy
 * (the socks5h behaviour) through the same decision path as CONNECT; the
 * outcome becomes a SOCKS reply code. With proxy users (`clients.users`)
 * only RFC 1929 username/password is offered, and a failed check is answered
 * with a non-zero status and the connection closed, as that RFC says.
 */

export interface SocksListenerOptions {
  name: string;
  handshakeTimeoutMs: number;
  nextId: () => string;
  /** Connection limits (admission.ts); without it, only the descriptor budget applies. */
  admission?: Admission;
}

const VERSION = 5;
const METHOD_NONE = 0x00;
const METHOD_PASSWORD = 0x02;
const NO_ACCEPTABLE_METHOD = 0xff;

/** RFC 1928 section 6 reply codes. */
export const REPLY = {
  succeeded: 0x00,
  general_failure: 0x01,
  not_allowed: 0x02,
  network_unreachable: 0x03,
  host_unreachable: 0x04,
  connection_refused: 0x05,
  ttl_expired: 0x06,
  command_not_supported: 0x07,
  address_type_not_supported: 0x08,
} as const;

/** Reason code → SOCKS reply: one outcome, one answer, as for HTTP statuses. */
export function socksReply(reason: Reason): number {
  switch (reason) {
    case 'host_not_allowed':
    case 'port_not_allowed':
    case 'ip_not_allowed':
    case 'special_range':
    case 'loop':
    case 'user_not_allowed':
    case 'client_not_allowed':
      return REPLY.not_allowed;
    case 'dns_failed':
      return REPLY.host_unreachable;
    case 'connect_failed':
      return REPLY.connection_refused;
    case 'connect_timeout':
    case 'upstream_timeout':
      return REPLY.ttl_expired; // as most SOCKS servers answer a dial timeout
    default:
      return REPLY.general_failure;
  }
}

/** A malformed handshake: audited as bad_request, answered with `reply` when given. */
class SocksError extends EgressError {
  constructor(
    message: string,
    readonly reply?: Buffer,
  ) {
    super('bad_request', message);
  }
}

export function createSocksServer(ctx: () => EgressContext, opts: SocksListenerOptions): net.Server {
  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    if (opts.admission) {
      let h: Handshake | undefined;
      const refused = opts.admission.enter(socket, (r) => h?.drop(r));
      if (refused) {
        auditRefusal(ctx().audit, acceptAttempt(socket, opts.nextId(), opts.name, 'socks'), refused);
        // "No authentication", then the failure the client reads as the reply to
        // its request (0x02 for a source outside clients.allow): nothing it sends is parsed.
        return lingerClose(socket, Buffer.concat([Buffer.from([VERSION, METHOD_NONE]), failure(socksReply(refused.reason))]));
      }
      h = new Handshake(ctx(), opts, socket);
      return;
    }
    new Handshake(ctx(), opts, socket);
  });
  return server;
}

type State = 'greeting' | 'auth' | 'authenticating' | 'request' | 'dialling';

class Handshake {
  private buf: Buffer = Buffer.alloc(0);
  private state: State = 'greeting';
  private readonly attempt: Attempt;
  private readonly timer: NodeJS.Timeout;
  private readonly onData = (chunk: Buffer) => this.receive(chunk);
  private readonly onError = (err: NodeJS.ErrnoException) => {
    // As at an early FIN: a connection that sent nothing asked for nothing.
    if (this.socket.bytesRead === 0) return this.stop();
    this.record('bad_request', `client connection failed during the ${this.state}: ${err.code ?? err.message}`);
  };
  private readonly onClose = () => clearTimeout(this.timer);
  private readonly onEnd = () => {
    // A connection that closes without a byte (a health check, a port
    // scan) asked for nothing: no record, as on the HTTP listener.
    if (this.socket.bytesRead === 0) return void this.socket.destroy();
    if (this.state !== 'dialling') this.refuse('bad_request', `client ended the ${this.state} early`);
  };

  constructor(
    private readonly ctx: EgressContext,
    private readonly opts: SocksListenerOptions,
    private readonly socket: Socket,
  ) {
    this.attempt = {
      id: opts.nextId(),
      client: formatClient(socket.remoteAddress, socket.remotePort),
      listener: opts.name,
      proto: 'socks',
    };
    this.timer = setTimeout(() => this.refuse('handshake_timeout', 'handshake not completed in time'), opts.handshakeTimeoutMs);
    socket.on('data', this.onData).on('error', this.onError).on('close', this.onClose).on('end', this.onEnd);
  }

  private receive(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    try {
      while (this.state !== 'dialling' && this.step());
    } catch (err) {
      if (!(err instanceof SocksError)) throw err;
      this.refuse('bad_request', err.message, err.reply);
    }
  }

  /** Consume one message if it is complete; false when more bytes are needed. */
  private step(): boolean {
    const b = this.buf;
    if (b.length === 0) return false;
    switch (this.state) {
      case 'greeting': {
        if (b[0] === 4) throw new SocksError('SOCKS4 is not supported; use SOCKS5', Buffer.from([0, 0x5b, 0, 0, 0, 0, 0, 0]));
        if (b[0] !== VERSION) throw new SocksError(`not a SOCKS5 greeting (first byte 0x${b[0]!.toString(16)})`);
        if (b.length < 2) return false;
        const n = b[1]!;
        if (n === 0) throw new SocksError('greeting offers no methods');
        if (b.length < 2 + n) return false;
        const methods = b.subarray(2, 2 + n);
        this.buf = b.subarray(2 + n);
        const wanted = this.ctx.clients.authRequired ? METHOD_PASSWORD : METHOD_NONE;
        if (!methods.includes(wanted)) {
          if (wanted === METHOD_PASSWORD) {
            this.refuse('auth_required', 'proxy users are configured: the client must offer username/password (RFC 1929)', Buffer.from([VERSION, NO_ACCEPTABLE_METHOD]));
            return false;
          }
          throw new SocksError('no acceptable authentication method', Buffer.from([VERSION, NO_ACCEPTABLE_METHOD]));
        }
        this.socket.write(Buffer.from([VERSION, wanted]));
        this.state = wanted === METHOD_PASSWORD ? 'auth' : 'request';
        return true;
      }
      case 'auth': {
        // RFC 1929: VER=1 ULEN UNAME PLEN PASSWD
        if (b[0] !== 1) throw new SocksError('bad username/password version', Buffer.from([1, 1]));
        if (b.length < 2) return false;
        const ulen = b[1]!;
        if (b.length < 3 + ulen) return false;
        const plen = b[2 + ulen]!;
        if (b.length < 3 + ulen + plen) return false;
        const user = b.subarray(2, 2 + ulen).toString('utf8');
        const pass = b.subarray(3 + ulen, 3 + ulen + plen).toString('utf8');
        this.buf = b.subarray(3 + ulen + plen);
        // Bytes that come meanwhile wait in buf; the handshake timer still runs.
        this.state = 'authenticating';
        this.ctx.auth.check(this.ctx.clients, this.socket.remoteAddress, user, pass).then(
          (r) => this.authenticated(r),
          (err: Error) => this.socket.destroy(err),
        );
        return false;
      }
      case 'request':
        return this.request(b);
      default:
        return false;
    }
  }

  private authenticated(r: AuthOutcome): void {
    if (this.state !== 'authenticating' || this.socket.destroyed) return;
    if (r.user !== undefined) this.attempt.user = r.user;
    if (!r.ok) {
      // RFC 1929: a non-zero status, then the server closes the connection.
      return this.refuse(r.reason, r.detail, Buffer.from([1, 1]));
    }
    this.socket.write(Buffer.from([1, 0]));
    this.state = 'request';
    this.receive(Buffer.alloc(0));
  }

  /** VER CMD RSV ATYP DST.ADDR DST.PORT */
  private request(b: Buffer): boolean {
    if (b[0] !== VERSION) throw new SocksError('bad request version', failure(REPLY.general_failure));
    if (b.length < 4) return false;
    const cmd = b[1]!;
    const atyp = b[3]!;
    let host: string;
    let end: number;
    if (atyp === 1) {
      end = 4 + 4;
      if (b.length < end + 2) return false;
      host = numberToV4(b.readUInt32BE(4));
    } else if (atyp === 4) {
      end = 4 + 16;
      if (b.length < end + 2) return false;
      host = `[${bigIntToV6((b.readBigUInt64BE(4) << 64n) | b.readBigUInt64BE(12))}]`;
    } else if (atyp === 3) {
      if (b.length < 5) return false;
      end = 5 + b[4]!;
      if (b.length < end + 2) return false;
      host = decodeName(b.subarray(5, end));
    } else {
      throw new SocksError(`address type ${atyp} not supported`, failure(REPLY.address_type_not_supported));
    }
    const port = b.readUInt16BE(end);
    const head = b.subarray(end + 2);
    this.buf = Buffer.alloc(0);
    let target: Target;
    try {
      target = { ...normalizeHost(host), port };
      this.attempt.dest_host = target.host;
      this.attempt.dest_port = port;
      // UDP ASSOCIATE may send the all-zero address and port (RFC 1928 section 7):
      // that is still a command to refuse with 0x07, not a malformed request.
      if (port === 0 && cmd === 1) throw new SocksError('port 0');
    } catch (err) {
      if (!(err instanceof EgressError)) throw err;
      throw new SocksError(err.message, failure(REPLY.general_failure));
    }
    if (cmd !== 1) {
      const name = cmd === 2 ? 'BIND' : cmd === 3 ? 'UDP ASSOCIATE' : `command ${cmd}`;
      throw new SocksError(`${name} is not supported`, failure(REPLY.command_not_supported));
    }
    this.state = 'dialling';
    this.opts.admission?.handshakeDone(this.socket);
    clearTimeout(this.timer);
    this.socket.removeListener('data', this.onData);
    this.socket.pause();
    void this.connect(target, head);
    return false;
  }

  private async connect(target: Target, head: Buffer): Promise<void> {
    let result;
    try {
      result = await openEgress(this.ctx, this.attempt, target);
    } catch (err) {
      this.socket.destroy(err as Error);
      return;
    }
    if (!result.ok) {
      this.socket.end(failure(socksReply(result.reason)), () => this.socket.destroy());
      return;
    }
    const up = result.upstream;
    this.socket.write(success(up.localAddress, up.localPort));
    // The tunnel takes the socket over; the handshake is not kept alive by it.
    this.socket.removeListener('error', this.onError).removeListener('close', this.onClose).removeListener('end', this.onEnd);
    startTunnel(this.ctx, this.attempt, this.socket, result, head);
  }

  /** Dropped by admission (a newer connection needs the handshake slot). */
  drop(r: Refusal): void {
    this.refuse(r.reason, r.detail, failure(REPLY.general_failure));
  }

  /** Audit a refused handshake, answer if there is an answer, and close. */
  private refuse(reason: Reason, message: string, reply?: Buffer): void {
    if (this.socket.destroyed || !this.record(reason, message)) return;
    if (reply && this.socket.writable) this.socket.end(reply, () => this.socket.destroy());
    else this.socket.destroy();
  }

  /** The handshake's one refusal record; false if it has already ended (refused, or handed to the dial). */
  private record(reason: Reason, message: string): boolean {
    if (this.state === 'dialling') return false;
    this.state = 'dialling'; // no further parsing
    this.stop();
    this.ctx.audit.denied(this.attempt, { reason, enforced: true, error: message });
    return true;
  }

  private stop(): void {
    clearTimeout(this.timer);
    this.socket.removeListener('data', this.onData);
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/**
 * DST.ADDR of a domain name: clients that send an internationalised name
 * send it as UTF-8 (it is then judged in its punycode form, like a name in
 * CONNECT); bytes that are not valid UTF-8 are read as latin1, one
 * character a byte, and normalised and checked like any other name.
 */
function decodeName(bytes: Buffer): string {
  try {
    return UTF8.decode(bytes);
  } catch {
    return bytes.toString('latin1');
  }
}

function failure(code: number): Buffer {
  return Buffer.from([VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0]);
}

/** Success with the bound address (the upstream socket's local end). */
function success(address: string | undefined, port: number | undefined): Buffer {
  const v6 = address && net.isIPv6(address) ? v6ToBigInt(address) : null;
  if (v6 === null) {
    const parts = (address && net.isIPv4(address) ? address : '0.0.0.0').split('.').map(Number);
    return Buffer.from([VERSION, REPLY.succeeded, 0, 1, ...parts, (port ?? 0) >> 8, (port ?? 0) & 255]);
  }
  const out = Buffer.alloc(22);
  out.set([VERSION, REPLY.succeeded, 0, 4]);
  out.writeBigUInt64BE(v6 >> 64n, 4);
  out.writeBigUInt64BE(v6 & 0xffffffffffffffffn, 12);
  out.writeUInt16BE(port ?? 0, 20);
  return out;
}
