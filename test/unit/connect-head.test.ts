import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readConnectHead } from '../../src/inbound/connect-head.js';

/**
 * The CONNECT fast path reads only heads Node's parser accepts and reads the
 * same way; everything else goes to that parser.
 */

const head = (s: string) => Buffer.from(s, 'latin1');

describe('readConnectHead', () => {
  it.each([
    ['CONNECT g.whatsapp.net:443 HTTP/1.1\r\n\r\n', 'g.whatsapp.net:443'],
    ['CONNECT g.whatsapp.net:443 HTTP/1.1\r\nHost: g.whatsapp.net:443\r\n\r\n', 'g.whatsapp.net:443'],
    ['CONNECT [::1]:5222 HTTP/1.0\r\nUser-Agent: curl/7.88.1\r\nProxy-Connection: Keep-Alive\r\n\r\n', '[::1]:5222'],
    ['CONNECT 157.240.0.1:443 HTTP/1.1\r\nX-Empty:\r\nX-Tabs:\t a b \t\r\n\r\n', '157.240.0.1:443'],
    ['CONNECT ExAmple.COM.:443 HTTP/1.1\r\n\r\n', 'ExAmple.COM.:443'],
    ['CONNECT no-port HTTP/1.1\r\n\r\n', 'no-port'],
  ])('reads %j', (text, authority) => {
    const extra = 'tunnel bytes';
    const r = readConnectHead(head(text + extra));
    expect(r).toEqual({ authority, length: text.length });
  });

  it.each([
    ['another method', 'GET http://g.whatsapp.net/ HTTP/1.1\r\n\r\n'],
    ['lower-case method', 'connect g.whatsapp.net:443 HTTP/1.1\r\n\r\n'],
    ['unfinished head', 'CONNECT g.whatsapp.net:443 HTTP/1.1\r\nHost: g'],
    ['bare LF line ends', 'CONNECT g.whatsapp.net:443 HTTP/1.1\n\n'],
    ['a bare LF inside the head', 'CONNECT g.whatsapp.net:443 HTTP/1.1\r\nA: b\nc\r\n\r\n'],
    ['HTTP/2.0', 'CONNECT g.whatsapp.net:443 HTTP/2.0\r\n\r\n'],
    ['two spaces', 'CONNECT  g.whatsapp.net:443 HTTP/1.1\r\n\r\n'],
    ['percent-encoding', 'CONNECT g%2ewhatsapp.net:443 HTTP/1.1\r\n\r\n'],
    ['userinfo', 'CONNECT user@g.whatsapp.net:443 HTTP/1.1\r\n\r\n'],
    ['non-ASCII target', 'CONNECT bücher.example:443 HTTP/1.1\r\n\r\n'],
    ['obs-fold', 'CONNECT g.whatsapp.net:443 HTTP/1.1\r\nA: b\r\n c\r\n\r\n'],
    ['space before colon', 'CONNECT g.whatsapp.net:443 HTTP/1.1\r\nHost : x\r\n\r\n'],
    ['non-ASCII value', 'CONNECT g.whatsapp.net:443 HTTP/1.1\r\nA: \xe9\r\n\r\n'],
    ['a control byte in a value', 'CONNECT g.whatsapp.net:443 HTTP/1.1\r\nA: b\x01c\r\n\r\n'],
    ['Content-Length', 'CONNECT g.whatsapp.net:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n'],
    ['Transfer-Encoding', 'CONNECT g.whatsapp.net:443 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n'],
    ['a head over 16 KiB', `CONNECT g.whatsapp.net:443 HTTP/1.1\r\nX: ${'a'.repeat(16 * 1024)}\r\n\r\n`],
  ])('leaves %s to Node', (_why, text) => {
    expect(readConnectHead(head(text))).toBeNull();
  });
});

describe('readConnectHead agrees with Node’s parser', () => {
  let server: http.Server;
  let port = 0;
  beforeAll(async () => {
    server = http.createServer({ requireHostHeader: false });
    server.on('connect', (req, socket: net.Socket, rest: Buffer) =>
      socket.end(`HTTP/1.1 200 OK\r\nX-Url: ${encodeURIComponent(req.url ?? '')}\r\nX-Rest: ${rest.length}\r\n\r\n`),
    );
    server.on('request', (_req, res) => res.end());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  /** What Node's server makes of the bytes: the CONNECT target and how many bytes follow the head, or null. */
  const nodeReads = (bytes: Buffer) =>
    new Promise<{ authority: string; rest: number } | null>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      let got = '';
      s.on('data', (d: Buffer) => (got += d.toString('latin1')));
      s.on('close', () => {
        const m = /^HTTP\/1\.1 200 OK\r\nX-Url: (\S*)\r\nX-Rest: (\d+)\r\n/.exec(got);
        resolve(m ? { authority: decodeURIComponent(m[1]!), rest: Number(m[2]) } : null);
      });
      s.on('error', () => {});
      s.end(bytes);
    });

  it('takes only heads Node accepts as CONNECT, with the same target', async () => {
    // Mostly plain pieces, now and then a byte outside the grammar.
    const plain = (chars: string[], min: number, max: number) => fc.string({ unit: fc.constantFrom(...chars), minLength: min, maxLength: max });
    const odd = (chars: string[], max: number) => fc.string({ unit: fc.constantFrom(...chars), minLength: 1, maxLength: max });
    const authority = fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom('g.whatsapp.net:443', '[::1]:443', '127.0.0.1:5222', 'a_b.example:1', 'x:', '[v]:1', '::1:443') },
      { weight: 3, arbitrary: plain(['a', 'Z', '0', '.', ':', '-', '_', '[', ']'], 1, 12) },
      { weight: 1, arbitrary: odd(['a', '%', '@', '/', '\x7f', 'é', '.', ':'], 8) },
    );
    const value = fc.oneof(
      { weight: 4, arbitrary: plain(['a', ' ', '\t', ':', '"', '='], 0, 6) },
      { weight: 1, arbitrary: odd(['a', '\x01', '\xe9', '\n', '\r', ' '], 4) },
    );
    const name = fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom('Host', 'X-A', 'Proxy-Authorization', 'User-Agent') },
      { weight: 1, arbitrary: fc.constantFrom('Content-Length', 'a b', '', 'x(', 'transfer-encoding') },
    );
    const request = fc.record({
      method: fc.constantFrom('CONNECT', 'CONNECT', 'CONNECT', 'CONNECT', 'connect', 'GET'),
      authority,
      version: fc.constantFrom('HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'http/1.1'),
      headers: fc.array(fc.tuple(name, value), { maxLength: 3 }),
    });
    let compared = 0;
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const text = `${r.method} ${r.authority} ${r.version}\r\n${r.headers.map(([n, v]) => `${n}:${v}\r\n`).join('')}\r\n`;
        const bytes = head(text);
        const fast = readConnectHead(bytes);
        if (fast === null) return; // Node's parser decides, as before.
        compared++;
        expect(await nodeReads(bytes)).toEqual({ authority: fast.authority, rest: bytes.length - fast.length });
      }),
      { numRuns: 400 },
    );
    // Enough of the generated heads were plain enough to compare.
    expect(compared).toBeGreaterThan(60);
  });
});
