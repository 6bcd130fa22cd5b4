import net, { type Socket } from 'node:net';

/**
 * Node's `onread` socket option for sockets that already exist. With it, a
 * socket reads into a buffer its owner provides and hands each read to a
 * callback, instead of allocating a buffer per read and streaming it
 * through a Readable. `net.connect({ onread })` offers this only when a
 * socket is created; tunnels need it on sockets a server accepted and on
 * upstreams dialled before the tunnel existed, so this sets the same three
 * slots `net.Socket` keeps for the option and points the handle at the
 * buffer, as the constructor does.
 *
 * The callback runs with the socket as `this`; returning false stops
 * reading until `socket.resume()`. After each read `next()` names the buffer
 * for the following one. Where the slots cannot be found (another Node.js),
 * `useOnRead` returns false and the caller reads with 'data' events.
 */

export type OnRead = (this: Socket, n: number, buf: Buffer) => boolean;

interface Slots {
  buffer: symbol;
  callback: symbol;
  next: symbol;
}

const slots: Slots | null = (() => {
  const named = new Map(Object.getOwnPropertySymbols(new net.Socket()).map((s) => [s.description, s]));
  const buffer = named.get('kBuffer');
  const callback = named.get('kBufferCb');
  const next = named.get('kBufferGen');
  return buffer && callback && next ? { buffer, callback, next } : null;
})();

interface UserBufferHandle {
  useUserBuffer?: (buf: Uint8Array) => void;
}

/** Read `socket` into `buf` from now on; false if this Node.js cannot. */
export function useOnRead(socket: Socket, buf: Buffer, callback: OnRead, next: () => Buffer): boolean {
  const handle = (socket as unknown as { _handle?: UserBufferHandle | null })._handle;
  if (!slots || typeof handle?.useUserBuffer !== 'function') return false;
  const s = socket as unknown as Record<symbol, unknown>;
  s[slots.buffer] = buf;
  s[slots.callback] = callback;
  s[slots.next] = next;
  handle.useUserBuffer(buf);
  return true;
}
