import { connect, type Socket } from 'node:net';
import { EgressError } from '../errors.js';
import { dialChannel } from '../events.js';
import { keepAliveSoon, type KeepAlive } from './keepalive.js';

/**
 * Dial checked addresses, in order, until one connects. Only IP literals
 * reach here, so `net.connect` performs no lookup of its own: what was checked
 * is what is dialled. The connect timeout is one budget for all attempts;
 * each attempt gets an equal share of what is left, so a blackholed first
 * address still leaves time for the next.
 */

export interface DialOptions {
  timeoutMs: number;
  keepAlive: KeepAlive;
}

export interface Dialled {
  socket: Socket;
  /** The address that answered (known here: no getpeername). */
  address: string;
}

/** Not async itself: without subscribers it hands back dialAll's promise, not a second one that waits on it. */
export function dial(addresses: readonly string[], port: number, opts: DialOptions): Promise<Dialled> {
  return dialChannel.hasSubscribers ? timedDial(addresses, port, opts) : dialAll(addresses, port, opts);
}

async function timedDial(addresses: readonly string[], port: number, opts: DialOptions): Promise<Dialled> {
  const t0 = performance.now();
  const done = (ok: boolean) => dialChannel.publish({ ms: performance.now() - t0, ok });
  try {
    const d = await dialAll(addresses, port, opts);
    done(true);
    return d;
  } catch (err) {
    done(false);
    throw err;
  }
}

async function dialAll(addresses: readonly string[], port: number, opts: DialOptions): Promise<Dialled> {
  const deadline = Date.now() + opts.timeoutMs;
  let last: EgressError | undefined;
  for (let i = 0; i < addresses.length; i++) {
    const left = deadline - Date.now();
    if (left <= 0) break;
    try {
      return await attempt(addresses[i]!, port, Math.ceil(left / (addresses.length - i)), opts.keepAlive);
    } catch (err) {
      last = err as EgressError;
    }
  }
  throw last ?? new EgressError('connect_timeout', `connect timeout after ${opts.timeoutMs} ms`);
}

function attempt(ip: string, port: number, timeoutMs: number, keepAlive: KeepAlive): Promise<Dialled> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: ip, port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new EgressError('connect_timeout', `connect to ${ip}:${port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new EgressError('connect_failed', `connect to ${ip}:${port} failed: ${err.code ?? err.message}`, { cause: err }));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      keepAliveSoon(socket, keepAlive);
      resolve({ socket, address: ip });
    });
  });
}
