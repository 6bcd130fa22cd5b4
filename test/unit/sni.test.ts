import { spawn, spawnSync } from 'node:child_process';
import net, { type AddressInfo } from 'node:net';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { MAX_HELLO_BYTES, parseClientHello, type HelloResult } from '../../src/inbound/sni.js';

/**
 * The ClientHello reader: synthetic hellos built field by field (tables of
 * what must and must not parse), and real hellos captured from Node's
 * tls.connect and `openssl s_client` on a raw loopback socket.
 */

// ---------------------------------------------------------------- builders

const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const u24 = (n: number) => Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff]);
const vec16 = (b: Buffer) => Buffer.concat([u16(b.length), b]);

function sniExt(entries: [type: number, name: string][]): Buffer {
  const list = Buffer.concat(entries.map(([t, n]) => Buffer.concat([Buffer.from([t]), vec16(Buffer.from(n, 'latin1'))])));
  return Buffer.concat([u16(0), vec16(vec16(list))]);
}

interface HelloParts {
  extensions?: Buffer[] | null;
  sessionId?: number;
  suites?: number;
  compression?: number;
  version?: [number, number];
}

/** A ClientHello handshake message (type, length, body). */
function handshake(p: HelloParts = {}): Buffer {
  const sid = p.sessionId ?? 32;
  const body = Buffer.concat([
    Buffer.from(p.version ?? [3, 3]),
    Buffer.alloc(32, 7),
    Buffer.from([sid]),
    Buffer.alloc(sid, 1),
    u16(p.suites ?? 4),
    Buffer.alloc(p.suites ?? 4, 0x13),
    Buffer.from([p.compression ?? 1]),
    Buffer.alloc(p.compression ?? 1, 0),
    p.extensions === null ? Buffer.alloc(0) : vec16(Buffer.concat(p.extensions ?? [sniExt([[0, 'a.example']])])),
  ]);
  return Buffer.concat([Buffer.from([1]), u24(body.length), body]);
}

/** Wrap handshake bytes in TLS records of at most `size` bytes each. */
function records(hs: Buffer, size = 16384): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; i < hs.length; i += size) {
    const part = hs.subarray(i, i + size);
    out.push(Buffer.from([22, 3, 1]), u16(part.length), part);
  }
  return Buffer.concat(out);
}

const hello = (p?: HelloParts) => records(handshake(p));

// ---------------------------------------------------------------- tables

describe('parseClientHello: synthetic hellos', () => {
  const cases: [string, Buffer, HelloResult | 'invalid'][] = [
    ['nothing yet', Buffer.alloc(0), { kind: 'more' }],
    ['HTTP', Buffer.from('GET / HTTP/1.1\r\n\r\n'), { kind: 'not_tls' }],
    ['SSH banner', Buffer.from('SSH-2.0-OpenSSH_9.6\r\n'), { kind: 'not_tls' }],
    ['an SNI', hello(), { kind: 'hello', sni: 'a.example' }],
    ['upper case and a trailing dot are canonicalised', hello({ extensions: [sniExt([[0, 'A.Example.']])] }), { kind: 'hello', sni: 'a.example' }],
    ['no extensions at all', hello({ extensions: null }), { kind: 'hello', sni: null }],
    ['extensions without server_name', hello({ extensions: [Buffer.concat([u16(10), vec16(Buffer.from([0, 2, 0, 29]))])] }), { kind: 'hello', sni: null }],
    ['an empty server_name list', hello({ extensions: [sniExt([])] }), { kind: 'hello', sni: null }],
    ['a non-host_name entry is skipped', hello({ extensions: [sniExt([[7, 'x'], [0, 'b.example']])] }), { kind: 'hello', sni: 'b.example' }],
    ['empty session id', hello({ sessionId: 0 }), { kind: 'hello', sni: 'a.example' }],
    ['two host_names (RFC 6066 forbids it)', hello({ extensions: [sniExt([[0, 'a.example'], [0, 'b.example']])] }), 'invalid'],
    ['two server_name extensions', hello({ extensions: [sniExt([[0, 'a.example']]), sniExt([[0, 'b.example']])] }), 'invalid'],
    ['an IP address as the name', hello({ extensions: [sniExt([[0, '10.0.0.1']])] }), 'invalid'],
    ['a name with a space', hello({ extensions: [sniExt([[0, 'a example']])] }), 'invalid'],
    ['a name with a NUL', hello({ extensions: [sniExt([[0, 'a.example\0.evil']])] }), 'invalid'],
    ['an empty name', hello({ extensions: [sniExt([[0, '']])] }), 'invalid'],
    ['a label over 63 bytes', hello({ extensions: [sniExt([[0, `${'a'.repeat(64)}.example`]])] }), 'invalid'],
    ['odd cipher suite bytes', hello({ suites: 3 }), 'invalid'],
    ['no cipher suite', hello({ suites: 0 }), 'invalid'],
    ['no compression method', hello({ compression: 0 }), 'invalid'],
    ['a session id over 32 bytes', hello({ sessionId: 33 }), 'invalid'],
    ['SSL 2 client version', hello({ version: [2, 0] }), 'invalid'],
    ['a ServerHello', records(Buffer.concat([Buffer.from([2]), handshake().subarray(1)])), 'invalid'],
    ['a non-TLS version byte in the record', Buffer.from([22, 9, 1, 0, 5, 1, 0, 0, 1, 0]), 'invalid'],
    ['an empty record', Buffer.from([22, 3, 1, 0, 0]), 'invalid'],
    ['a record over 2^14 bytes', Buffer.from([22, 3, 1, 0x40, 0x01]), 'invalid'],
    ['an alert record in the middle', Buffer.concat([records(handshake()).subarray(0, 50 + 5), Buffer.from([21, 3, 3, 0, 2, 2, 40])]), 'invalid'],
  ];
  // The record header's length of the 'alert' case must cover only 50 bytes.
  cases.find((c) => c[0].startsWith('an alert'))![1].writeUInt16BE(50, 3);

  it.each(cases)('%s', (_name, bytes, want) => {
    const got = parseClientHello(bytes);
    if (want === 'invalid') expect(got.kind, JSON.stringify(got)).toBe('invalid');
    else expect(got).toEqual(want);
  });

  it('garbage bytes after a handshake record header never throw', () => {
    let seed = 1;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 16) & 0xff;
    for (let i = 0; i < 2000; i++) {
      const b = Buffer.alloc(5 + (i % 300));
      for (let j = 0; j < b.length; j++) b[j] = rand();
      b[0] = 22;
      const r = parseClientHello(b);
      expect(['more', 'invalid', 'hello']).toContain(r.kind);
    }
  });

  it('a hello split into any two segments is "more" until it is whole', () => {
    const full = hello();
    for (let n = 0; n < full.length; n++) expect(parseClientHello(full.subarray(0, n)).kind).toBe('more');
    expect(parseClientHello(full)).toEqual({ kind: 'hello', sni: 'a.example' });
  });

  it('a hello fragmented over many records (and every prefix of them)', () => {
    const full = records(handshake({ extensions: [sniExt([[0, 'frag.example']]), Buffer.concat([u16(21), vec16(Buffer.alloc(600))])] }), 7);
    for (let n = 0; n < full.length; n += 13) expect(parseClientHello(full.subarray(0, n)).kind).toBe('more');
    expect(parseClientHello(full)).toEqual({ kind: 'hello', sni: 'frag.example' });
  });

  it('bytes after the hello (early data) do not matter', () => {
    expect(parseClientHello(Buffer.concat([hello(), Buffer.from([23, 3, 3, 0, 1, 0])]))).toEqual({ kind: 'hello', sni: 'a.example' });
  });

  it('a hello over the cap is refused as soon as its length is known', () => {
    const big = handshake({ extensions: [sniExt([[0, 'a.example']]), Buffer.concat([u16(21), vec16(Buffer.alloc(MAX_HELLO_BYTES))])] });
    const r = parseClientHello(records(big).subarray(0, 20));
    expect(r.kind).toBe('invalid');
    expect((r as { error: string }).error).toMatch(/at most 16384/);
    // Under the default cap, within a smaller one.
    expect(parseClientHello(hello(), 64).kind).toBe('invalid');
  });
});

// ---------------------------------------------------------------- captured

/** Listen on a raw socket, let `client` connect, and return the first bytes until they are a whole hello. */
async function capture(client: (port: number) => () => void): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no ClientHello in time')), 10_000);
      let stop = () => {};
      server.once('connection', (s) => {
        const chunks: Buffer[] = [];
        s.on('data', (c: Buffer) => {
          chunks.push(c);
          const all = Buffer.concat(chunks);
          if (parseClientHello(all).kind !== 'more') {
            clearTimeout(timer);
            s.destroy();
            stop();
            resolve(all);
          }
        });
        s.on('error', () => {});
      });
      stop = client(port);
    });
  } finally {
    server.close();
  }
}

function nodeClient(opts: tls.ConnectionOptions): (port: number) => () => void {
  return (port) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...opts });
    s.on('error', () => {});
    return () => s.destroy();
  };
}

function opensslClient(args: string[]): (port: number) => () => void {
  return (port) => {
    const p = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...args], { stdio: ['pipe', 'ignore', 'ignore'] });
    return () => p.kill();
  };
}

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
if (!hasOpenssl) console.warn('sni.test.ts: openssl not found; the openssl s_client captures are skipped');

describe('parseClientHello: hellos captured from real clients', () => {
  it.each([
    ['TLS 1.2', { maxVersion: 'TLSv1.2' as const }],
    ['TLS 1.3', { minVersion: 'TLSv1.3' as const }],
  ])("Node's tls.connect, %s, with a servername", async (_v, versions) => {
    const bytes = await capture(nodeClient({ servername: 'Chat.Example.Net', ...versions }));
    expect(parseClientHello(bytes)).toEqual({ kind: 'hello', sni: 'chat.example.net' });
  });

  it("Node's tls.connect to an IP sends no SNI", async () => {
    const bytes = await capture(nodeClient({}));
    expect(parseClientHello(bytes)).toEqual({ kind: 'hello', sni: null });
  });

  it("Node's hello delivered one byte at a time", async () => {
    const bytes = await capture(nodeClient({ servername: 'g.whatsapp.net' }));
    for (let n = 1; n < bytes.length; n++) expect(parseClientHello(bytes.subarray(0, n)).kind).toBe('more');
  });

  it.skipIf(!hasOpenssl).each([
    ['TLS 1.2', '-tls1_2'],
    ['TLS 1.3', '-tls1_3'],
  ])('openssl s_client, %s, -servername', async (_v, flag) => {
    const bytes = await capture(opensslClient([flag, '-servername', 'media.fna.whatsapp.net']));
    expect(parseClientHello(bytes)).toEqual({ kind: 'hello', sni: 'media.fna.whatsapp.net' });
  });

  it.skipIf(!hasOpenssl)('openssl s_client -noservername', async () => {
    const bytes = await capture(opensslClient(['-noservername']));
    expect(parseClientHello(bytes)).toEqual({ kind: 'hello', sni: null });
  });
});
