import { normalizeHost } from '../policy/hostport.js';

/**
 * A TLS ClientHello reader for the transparent listener: given the bytes a
 * client has sent so far, say whether they are (the start of) a ClientHello
 * and, once it is complete, the server name it asks for (RFC 6066
 * server_name, type host_name). It reads, never consumes: the caller keeps
 * the bytes and forwards them. The hello may span several TLS records and
 * arrive in any number of segments.
 */

export type HelloResult =
  /** The bytes so far are a valid prefix: wait for more. */
  | { kind: 'more' }
  /** Not a TLS handshake record: some other protocol. */
  | { kind: 'not_tls' }
  /** A complete ClientHello; `sni` is its canonical host name, or null when it names none. */
  | { kind: 'hello'; sni: string | null }
  /** A TLS handshake that cannot be read as a ClientHello (or is over the cap). */
  | { kind: 'invalid'; error: string };

const RECORD_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXT_SERVER_NAME = 0;
const NAME_TYPE_HOST = 0;
/** RFC 8446 5.1: a plaintext record holds at most 2^14 bytes. */
const MAX_RECORD = 16384;
/** Largest ClientHello we read (post-quantum key shares make hellos of 1.5-2 KiB; 16 KiB is ample). */
export const MAX_HELLO_BYTES = 16384;

class Invalid extends Error {}

export function parseClientHello(data: Buffer, maxHello = MAX_HELLO_BYTES): HelloResult {
  if (data.length === 0) return { kind: 'more' };
  if (data[0] !== RECORD_HANDSHAKE) return { kind: 'not_tls' };
  try {
    const hs = handshakeBytes(data, maxHello);
    return hs === null ? { kind: 'more' } : { kind: 'hello', sni: serverName(hs) };
  } catch (err) {
    if (err instanceof Invalid) return { kind: 'invalid', error: err.message };
    throw err;
  }
}

/**
 * The ClientHello handshake message (header included) gathered from the
 * handshake records at the start of `data`, or null while incomplete.
 */
function handshakeBytes(data: Buffer, maxHello: number): Buffer | null {
  const parts: Buffer[] = [];
  let have = 0;
  let need = -1; // the handshake message's full length, once its header is in
  for (let off = 0; ; ) {
    if (data.length < off + 5) {
      if (data.length > off && data[off] !== RECORD_HANDSHAKE) throw new Invalid('a non-handshake record inside the ClientHello');
      if (data.length > off + 1 && data[off + 1] !== 3) throw new Invalid(`not a TLS record (version byte ${data[off + 1]})`);
      return null;
    }
    if (data[off] !== RECORD_HANDSHAKE) throw new Invalid('a non-handshake record inside the ClientHello');
    if (data[off + 1] !== 3) throw new Invalid(`not a TLS record (version ${data[off + 1]}.${data[off + 2]})`);
    const len = data.readUInt16BE(off + 3);
    if (len === 0) throw new Invalid('an empty handshake record');
    if (len > MAX_RECORD) throw new Invalid(`a record of ${len} bytes (at most ${MAX_RECORD})`);
    const body = data.subarray(off + 5, off + 5 + len);
    parts.push(body);
    have += body.length;
    if (need < 0 && have >= 4) {
      const head = parts.length === 1 ? body : Buffer.concat(parts);
      if (head[0] !== HANDSHAKE_CLIENT_HELLO) throw new Invalid(`handshake type ${head[0]}, not a ClientHello`);
      need = 4 + head.readUIntBE(1, 3);
      if (need > maxHello) throw new Invalid(`a ClientHello of ${need} bytes (at most ${maxHello} are read)`);
    }
    if (need >= 0 && have >= need) return Buffer.concat(parts).subarray(0, need);
    if (body.length < len) return null;
    off += 5 + len;
  }
}

/** A bounds-checked reader over the hello's body. */
class Reader {
  constructor(
    private readonly b: Buffer,
    private off = 0,
    private readonly end = b.length,
  ) {}
  get left(): number {
    return this.end - this.off;
  }
  private take(n: number, what: string): number {
    if (n > this.left) throw new Invalid(`truncated ${what}`);
    const at = this.off;
    this.off += n;
    return at;
  }
  u8(what: string): number {
    return this.b[this.take(1, what)]!;
  }
  u16(what: string): number {
    return this.b.readUInt16BE(this.take(2, what));
  }
  skip(n: number, what: string): void {
    this.take(n, what);
  }
  /** A sub-reader over the next `n` bytes. */
  sub(n: number, what: string): Reader {
    const at = this.take(n, what);
    return new Reader(this.b, at, at + n);
  }
  bytes(n: number, what: string): Buffer {
    const at = this.take(n, what);
    return this.b.subarray(at, at + n);
  }
}

/** RFC 8446 4.1.2 (and RFC 5246 7.4.1.2): the server name, null when the hello has none. */
function serverName(hs: Buffer): string | null {
  const r = new Reader(hs, 4);
  const major = r.u8('client version');
  r.u8('client version');
  if (major !== 3) throw new Invalid(`client version ${major}.x`);
  r.skip(32, 'random');
  const sid = r.u8('session id');
  if (sid > 32) throw new Invalid(`a session id of ${sid} bytes`);
  r.skip(sid, 'session id');
  const suites = r.u16('cipher suites');
  if (suites < 2 || suites % 2 !== 0) throw new Invalid(`cipher suites of ${suites} bytes`);
  r.skip(suites, 'cipher suites');
  const comp = r.u8('compression methods');
  if (comp < 1) throw new Invalid('no compression method');
  r.skip(comp, 'compression methods');
  if (r.left === 0) return null; // a hello without extensions (TLS 1.2 allows it)
  const exts = r.sub(r.u16('extensions'), 'extensions');
  if (r.left !== 0) throw new Invalid('bytes after the extensions');
  const seen = new Set<number>();
  let name: string | null = null;
  while (exts.left > 0) {
    const type = exts.u16('extension type');
    const body = exts.sub(exts.u16('extension'), 'extension');
    // Duplicates are forbidden (RFC 8446 4.2): a server and this reader could pick different ones.
    if (seen.has(type)) throw new Invalid(`extension ${type} appears twice`);
    seen.add(type);
    if (type === EXT_SERVER_NAME) name = hostName(body);
  }
  return name;
}

/** The server_name extension: exactly one host_name entry counts (RFC 6066 3 forbids two). */
function hostName(ext: Reader): string | null {
  const list = ext.sub(ext.u16('server name list'), 'server name list');
  if (ext.left !== 0) throw new Invalid('bytes after the server name list');
  let name: string | null = null;
  while (list.left > 0) {
    const type = list.u8('server name type');
    const value = list.bytes(list.u16('server name'), 'server name');
    if (type !== NAME_TYPE_HOST) continue;
    if (name !== null) throw new Invalid('more than one host_name in server_name');
    name = canonicalName(value);
  }
  return name;
}

function canonicalName(raw: Buffer): string {
  // RFC 6066: ASCII (A-labels), no trailing dot, never an IP literal.
  if (raw.length === 0 || raw.some((c) => c < 0x21 || c > 0x7e)) throw new Invalid('a server name with bytes a hostname cannot hold');
  const text = raw.toString('latin1');
  let n: ReturnType<typeof normalizeHost>;
  try {
    n = normalizeHost(text);
  } catch (err) {
    throw new Invalid(`server name ${JSON.stringify(text)}: ${(err as Error).message}`);
  }
  if (n.family !== undefined) throw new Invalid(`server name ${JSON.stringify(text)} is an IP address`);
  return n.host;
}
