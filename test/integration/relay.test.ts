import { createHash, randomBytes } from 'node:crypto';
import net, { type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { SocksClient } from 'socks';
import { eventually, startGateway, startTcpServer, type TestGateway, type TestServer } from '../helpers.js';

/**
 * The tunnel's data path (src/tunnel.ts): reads land in a buffer shared by
 * idle legs or in a streaming leg's own buffer, and large chunks are written
 * without a copy. Every transition between the two, under back-pressure in
 * both directions at once, must deliver every byte in order.
 */

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function setup(onSocket?: (s: Socket) => void, otherPorts: number[] = []): Promise<{ gw: TestGateway; server: TestServer }> {
  const server = await startTcpServer('127.0.0.1', onSocket);
  const gw = await startGateway({
    listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0' },
    policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [server.port, ...otherPorts] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
  });
  cleanup.push(() => server.close(), () => gw.close());
  return { gw, server };
}

/** Open a CONNECT tunnel; resolves with the socket once the 200 head is consumed (and any bytes after it). */
function connectTunnel(port: number, authority: string): Promise<{ socket: Socket; early: Buffer }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let head = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.removeListener('data', onData);
      socket.pause();
      if (!head.subarray(0, 12).equals(Buffer.from('HTTP/1.1 200'))) return reject(new Error(head.toString('latin1')));
      resolve({ socket, early: head.subarray(end + 4) });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write(`CONNECT ${authority} HTTP/1.1\r\n\r\n`);
  });
}

/** Sizes that cross every threshold: 1 byte, under and over a high-water mark, over the read buffer. */
const SIZES = [1, 7, 1500, 16 * 1024 - 1, 16 * 1024, 64 * 1024, 200_000, 300 * 1024, 1024 * 1024];

/**
 * Send `total` random bytes in writes of mixed sizes while reading the
 * echo slowly (pausing now and then); resolves with the hashes of what was
 * sent and what came back.
 */
function exchange(socket: Socket, total: number, seed: number): Promise<{ sent: string; got: string; received: number }> {
  const sent = createHash('sha256');
  const got = createHash('sha256');
  let received = 0;
  let written = 0;
  let i = seed;
  return new Promise((resolve, reject) => {
    const pump = () => {
      while (written < total) {
        const n = Math.min(SIZES[i++ % SIZES.length]!, total - written);
        const chunk = randomBytes(n);
        sent.update(chunk);
        written += n;
        if (!socket.write(chunk)) return void socket.once('drain', pump);
      }
      socket.end();
    };
    socket.on('data', (d: Buffer) => {
      got.update(d);
      const before = received;
      received += d.length;
      // A slow reader now and then: the proxy must hold the sender back.
      if (Math.floor(before / (3 * 1024 * 1024)) !== Math.floor(received / (3 * 1024 * 1024))) {
        socket.pause();
        setTimeout(() => socket.resume(), 30);
      }
    });
    socket.on('end', () => resolve({ sent: sent.digest('hex'), got: got.digest('hex'), received }));
    socket.on('error', reject);
    socket.resume();
    pump();
  });
}

describe('tunnel data path', () => {
  it('echoes mixed-size writes intact through 8 tunnels at once, both directions under back-pressure', async () => {
    // The origin echoes, half-closing when the client does.
    const { gw, server } = await setup((s) => {
      s.on('end', () => s.end());
      s.pipe(s, { end: false });
    });
    const total = 24 * 1024 * 1024;
    const tunnels = await Promise.all(Array.from({ length: 8 }, () => connectTunnel(gw.port, `g.whatsapp.net:${server.port}`)));
    const results = await Promise.all(tunnels.map(({ socket }, k) => exchange(socket, total, k)));
    for (const r of results) {
      expect(r.received).toBe(total);
      expect(r.got).toBe(r.sent);
    }
    const closed = await eventually(() => {
      const c = gw.audit().filter((r) => r.event === 'egress.closed');
      return c.length === 8 && c;
    });
    for (const c of closed) {
      expect(c.bytes_up).toBe(total);
      expect(c.bytes_down).toBe(total);
    }
    expect(gw.gw.tunnels.size).toBe(0);
  });

  it('a download stream that pauses and resumes keeps its order across buffer changes', async () => {
    // The origin alternates bursts of large writes with trickles of small
    // ones, so the upstream leg moves between its own buffer and the shared one.
    const total = 32 * 1024 * 1024;
    const { gw, server } = await setup((s) => {
      let sent = 0;
      let k = 0;
      const step = () => {
        while (sent < total) {
          const burst = k++ % 4 !== 3;
          const n = Math.min(burst ? 512 * 1024 : 100, total - sent);
          const chunk = Buffer.alloc(n);
          for (let j = 0; j < n; j++) chunk[j] = (sent + j) % 251;
          sent += n;
          const more = s.write(chunk);
          if (!burst) return void setTimeout(step, 1);
          if (!more) return void s.once('drain', step);
        }
        s.end();
      };
      s.once('data', step);
    });
    const { socket, early } = await connectTunnel(gw.port, `g.whatsapp.net:${server.port}`);
    expect(early.length).toBe(0);
    let offset = 0;
    let bad = -1;
    await new Promise<void>((resolve, reject) => {
      socket.on('data', (d: Buffer) => {
        for (let j = 0; j < d.length && bad < 0; j++) if (d[j] !== (offset + j) % 251) bad = offset + j;
        offset += d.length;
        if (offset % (5 * 1024 * 1024) < d.length) {
          socket.pause();
          setTimeout(() => socket.resume(), 20);
        }
      });
      socket.on('end', () => resolve());
      socket.on('error', reject);
      socket.resume();
      socket.write('go');
    });
    expect(bad).toBe(-1);
    expect(offset).toBe(total);
  });

  it('small messages queued for a stalled origin are not overwritten by other tunnels reading meanwhile', async () => {
    // Origin "stall" reads nothing until every message is written, so the
    // proxy's writes to it queue up; tunnel B keeps the shared read buffer
    // busy meanwhile.
    let done!: (r: { hash: string; bytes: number }) => void;
    const stalled = new Promise<{ hash: string; bytes: number }>((r) => (done = r));
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const stall = await startTcpServer('127.0.0.1', (s) => {
      s.pause();
      const h = createHash('sha256');
      let bytes = 0;
      void released.then(() => {
        s.on('data', (d: Buffer) => {
          h.update(d);
          bytes += d.length;
        });
        s.on('end', () => {
          done({ hash: h.digest('hex'), bytes });
          s.end();
        });
        s.resume();
      });
    });
    cleanup.push(() => stall.close());
    const { gw, server } = await setup((s) => s.on('data', (d) => s.write(d)), [stall.port]);
    const a = await connectTunnel(gw.port, `g.whatsapp.net:${stall.port}`);
    const b = await connectTunnel(gw.port, `g.whatsapp.net:${server.port}`);
    b.socket.resume();
    b.socket.on('data', () => {});
    a.socket.setNoDelay(true);
    b.socket.setNoDelay(true);
    const sent = createHash('sha256');
    let bytes = 0;
    for (let i = 0; i < 1500; i++) {
      const msg = randomBytes(200 + (i % 700));
      sent.update(msg);
      bytes += msg.length;
      a.socket.write(msg);
      b.socket.write(Buffer.alloc(300 + (i % 500), i & 0xff));
      await new Promise((r) => setImmediate(r));
    }
    a.socket.end();
    release();
    const got = await stalled;
    expect(got.bytes).toBe(bytes);
    expect(got.hash).toBe(sent.digest('hex'));
    b.socket.destroy();
  });

  it('an upstream that speaks first: its greeting reaches the client after the 200 answer', async () => {
    const { gw, server } = await setup((s) => {
      s.write('220 hello from the origin\r\n');
      s.on('data', (d) => s.write(d));
    });
    const { socket, early } = await connectTunnel(gw.port, `g.whatsapp.net:${server.port}`);
    let data = early;
    socket.on('data', (d: Buffer) => (data = Buffer.concat([data, d])));
    socket.resume();
    await eventually(() => data.includes('\r\n'));
    expect(data.toString()).toBe('220 hello from the origin\r\n');
    socket.write('ping');
    await eventually(() => data.toString().endsWith('ping'));
    socket.destroy();
  });

  it('SOCKS5 tunnels take the same path: a large echo arrives intact', async () => {
    const { gw, server } = await setup((s) => {
      s.on('end', () => s.end());
      s.pipe(s, { end: false });
    });
    const { socket } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port: gw.gw.address('socks').port, type: 5 },
      command: 'connect',
      destination: { host: 'g.whatsapp.net', port: server.port },
    });
    const total = 16 * 1024 * 1024;
    const r = await exchange(socket, total, 3);
    expect(r.received).toBe(total);
    expect(r.got).toBe(r.sent);
  });
});

describe('tunnel data path without onread slots', () => {
  it('falls back to data events where a socket cannot be given a read buffer, and still delivers every byte', async () => {
    const { Tunnel } = await import('../../src/tunnel.js');
    // A pair of connected sockets for each leg: the tunnel joins `a` and `b`;
    // the test talks through their peers.
    const pair = () =>
      new Promise<[Socket, Socket]>((resolve) => {
        const srv = net.createServer((inner) => {
          srv.close();
          resolve([inner, outer]);
        });
        let outer!: Socket;
        srv.listen(0, '127.0.0.1', () => (outer = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1')));
      });
    const [a, clientSide] = await pair();
    const [b, upstreamSide] = await pair();
    for (const s of [a, b]) (s as unknown as { _handle: { useUserBuffer?: unknown } })._handle.useUserBuffer = undefined;
    const records: unknown[] = [];
    const owner = { tunnels: new Set<InstanceType<typeof Tunnel>>(), audit: { closed: (_a: unknown, c: unknown) => records.push(c) } };
    const attempt = { id: 't', client: 'c', listener: 'l', proto: 'connect' as const };
    owner.tunnels.add(new Tunnel(a, b, { idleMs: 0, keepAlive: { idleMs: 0, intervalMs: 0, count: 0, userTimeoutMs: 0 }, destIp: '127.0.0.1' }, owner, attempt));
    upstreamSide.on('end', () => upstreamSide.end());
    upstreamSide.pipe(upstreamSide, { end: false });
    const total = 8 * 1024 * 1024;
    const r = await exchange(clientSide, total, 5);
    expect(r.received).toBe(total);
    expect(r.got).toBe(r.sent);
    await eventually(() => records.length === 1);
    expect(records[0]).toMatchObject({ bytes_up: total, bytes_down: total });
    expect(owner.tunnels.size).toBe(0);
  });
});
