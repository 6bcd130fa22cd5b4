import net, { type Socket } from 'node:net';
import { formatClient, type Attempt } from '../audit.js';
import { destroySocket, openEgress, startTunnel, type EgressContext } from '../egress.js';
import type { Target } from '../policy/hostport.js';
import { auditRefusal, type Admission } from './admission.js';

/**
 * A raw TCP forward listener: every accepted connection is an attempt to
 * reach the fixed `to` target, judged, resolved and dialled afresh through
 * the same path as CONNECT. A refused connection is closed at once.
 */

export interface ForwardListenerOptions {
  name: string;
  to: Target;
  nextId: () => string;
  /** The listener's `clients` and connection limits (admission.ts); a refused connection is closed. No handshake: nothing to wait for. */
  admission?: Admission;
}

export function createForwardServer(ctx: () => EgressContext, opts: ForwardListenerOptions): net.Server {
  // Paused until the upstream is open, so early bytes wait in the socket.
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
  server.on('connection', (socket: Socket) => {
    socket.on('error', destroySocket);
    const attempt: Attempt = {
      id: opts.nextId(),
      client: formatClient(socket.remoteAddress, socket.remotePort),
      listener: opts.name,
      proto: 'tcp',
      dest_host: opts.to.host,
      dest_port: opts.to.port,
    };
    const c = ctx();
    const refused = opts.admission?.enter(socket, undefined, opts.name);
    if (refused) {
      auditRefusal(c.audit, attempt, refused);
      return void socket.destroy();
    }
    openEgress(c, attempt, opts.to).then(
      (result) => {
        if (!result.ok) socket.destroy();
        else startTunnel(c, attempt, socket, result);
      },
      (err: Error) => socket.destroy(err),
    );
  });
  return server;
}
