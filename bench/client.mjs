// A load-generating child process. The bench runs several so that the
// client side is not what limits a proxy (and, for idle tunnels, so that
// no process needs more than a few thousand descriptors).
//
// A tunnel: connect to the proxy, CONNECT host:port, wait for a 2xx answer,
// send a small payload and wait for its echo. With `proxy: null` the same
// exchange goes straight to the sink (the "direct" limit).

import { promises as dns } from 'node:dns';
import net from 'node:net';
import { serveIpc } from './lib.mjs';

const TIMEOUT_MS = 15_000;
const held = new Set();
let dropped = 0;
let resolver = null;

function resolverFor(server) {
  if (!server) return null;
  if (!resolver) {
    resolver = new dns.Resolver({ timeout: 2000, tries: 2 });
    resolver.setServers([server]);
  }
  return resolver;
}

async function lookup(r, name) {
  const [a, aaaa] = await Promise.allSettled([r.resolve4(name), r.resolve6(name)]);
  const all = [...(a.status === 'fulfilled' ? a.value : []), ...(aaaa.status === 'fulfilled' ? aaaa.value : [])];
  if (all.length === 0) throw new Error(`cannot resolve ${name}`);
  return all[0];
}

/**
 * Open one tunnel and complete one echo. Resolves with the socket and the
 * time (ns) at which the echo was complete; the caller decides what happens
 * next. `untilClose`: also wait for the far end to close (the close sink).
 */
function tunnel(proxy, target, payload, { untilClose = false, addr } = {}) {
  return new Promise((resolve, reject) => {
    const s = proxy ? net.connect(proxy.port, proxy.host) : net.connect(target.port, addr ?? target.addr);
    s.setNoDelay(true);
    let head = proxy ? null : undefined; // null: waiting for the proxy's answer
    let got = 0;
    let echoedAt = 0n;
    let done = false;
    const timer = setTimeout(() => fail(new Error('timeout')), TIMEOUT_MS);
    const fail = (err) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      reject(err);
    };
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ socket: s, echoedAt });
    };
    if (proxy) {
      const hp = `${target.host}:${target.port}`;
      s.write(`CONNECT ${hp} HTTP/1.1\r\nHost: ${hp}\r\n\r\n`);
    } else {
      s.write(payload);
    }
    s.on('data', (chunk) => {
      if (head !== undefined) {
        head = head ? Buffer.concat([head, chunk]) : chunk;
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > 16384) fail(new Error('proxy answer head too long'));
          return;
        }
        const line = head.toString('latin1', 0, head.indexOf('\r\n'));
        if (!/^HTTP\/1\.[01] 2\d\d/.test(line)) return fail(new Error(`proxy answered: ${line}`));
        chunk = head.subarray(end + 4);
        head = undefined;
        s.write(payload);
        if (chunk.length === 0) return;
      }
      got += chunk.length;
      if (got >= payload.length && echoedAt === 0n) {
        echoedAt = process.hrtime.bigint();
        if (!untilClose) finish();
      }
    });
    s.on('end', () => {
      if (untilClose && echoedAt !== 0n) {
        s.destroy();
        finish();
      } else fail(new Error(head !== undefined ? 'closed before the proxy answered' : 'closed before the echo'));
    });
    s.on('error', fail);
    s.on('close', () => fail(new Error('closed')));
  });
}

const pick = (list, i) => list[i % list.length];

const handlers = {
  /** Short connections: CONNECT, echo, server closes; as many as possible for durationMs. */
  async handshakes({ proxy, targets, concurrency, durationMs, payloadSize = 32, dnsServer, offset = 0 }) {
    const payload = Buffer.alloc(payloadSize, 0x61);
    const r = resolverFor(dnsServer);
    const start = process.hrtime.bigint();
    const deadline = start + BigInt(durationMs) * 1_000_000n;
    let count = 0;
    let errors = 0;
    let firstError;
    let i = offset;
    const lat = [];
    const loop = async () => {
      while (process.hrtime.bigint() < deadline) {
        const target = pick(targets, i++);
        const t0 = process.hrtime.bigint();
        try {
          const addr = r && !proxy ? await lookup(r, target.host) : undefined;
          const { echoedAt } = await tunnel(proxy, target, payload, { untilClose: true, addr });
          count++;
          if (lat.length < 200_000) lat.push(Number(echoedAt - t0) / 1000);
        } catch (err) {
          errors++;
          firstError ??= err.message;
          await new Promise((res) => setTimeout(res, 5));
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, loop));
    const elapsedMs = Number(process.hrtime.bigint() - start) / 1e6;
    return { count, errors, firstError, elapsedMs, latUs: lat };
  },

  /** One connection at a time; latency (µs) of connect + CONNECT + echo. */
  async latency({ proxy, target, count, durationMs, payloadSize = 32 }) {
    const payload = Buffer.alloc(payloadSize, 0x62);
    const out = [];
    let errors = 0;
    let firstError;
    const end = Date.now() + durationMs;
    while (out.length < count && Date.now() < end) {
      const t0 = process.hrtime.bigint();
      try {
        const { echoedAt } = await tunnel(proxy, target, payload, { untilClose: true });
        out.push(Number(echoedAt - t0) / 1000);
      } catch (err) {
        errors++;
        firstError ??= err.message;
      }
    }
    return { latUs: out, errors, firstError };
  },

  /** Large transfers from the source sink over one tunnel per target. */
  async throughput({ proxy, targets, durationMs, warmupMs = 300 }) {
    const payload = Buffer.alloc(1, 0x63); // the source ignores it; it confirms the tunnel
    const counters = targets.map(() => ({ n: 0 }));
    const sockets = [];
    await Promise.all(
      targets.map(async (target, k) => {
        // The source streams at once: the "echo" is the first bytes of the stream.
        const { socket } = await tunnel(proxy, target, payload);
        sockets.push(socket);
        socket.on('data', (d) => (counters[k].n += d.length));
      }),
    );
    await new Promise((r) => setTimeout(r, warmupMs));
    const before = counters.reduce((s, c) => s + c.n, 0);
    const t0 = process.hrtime.bigint();
    await new Promise((r) => setTimeout(r, durationMs));
    const after = counters.reduce((s, c) => s + c.n, 0);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    for (const s of sockets) s.destroy();
    return { bytes: after - before, seconds, totalBytes: after };
  },

  /** Open `count` tunnels to the echo sinks and keep them open. */
  async open({ proxy, targets, count, concurrency = 32, offset = 0 }) {
    const payload = Buffer.alloc(16, 0x64);
    let next = 0;
    let opened = 0;
    let errors = 0;
    let firstError;
    const loop = async () => {
      while (next < count) {
        const i = next++;
        try {
          const { socket } = await tunnel(proxy, pick(targets, offset + i), payload);
          held.add(socket);
          socket.removeAllListeners('data');
          socket.removeAllListeners('close');
          socket.removeAllListeners('end');
          socket.on('error', () => {});
          socket.on('end', () => socket.destroy());
          socket.once('close', () => {
            if (held.delete(socket)) dropped++;
          });
          opened++;
        } catch (err) {
          errors++;
          firstError ??= err.message;
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, loop));
    return { opened, errors, firstError, held: held.size };
  },

  /** Held tunnels still open, and how many closed by themselves since the last reset. */
  status: () => ({ held: held.size, dropped }),

  /** Forget held tunnels (the sinks close them server-side first); destroy stragglers. */
  async release({ waitMs = 10_000 }) {
    const end = Date.now() + waitMs;
    while (held.size > 0 && Date.now() < end) {
      // Closed by the far end: not counted as dropped.
      for (const s of held) if (s.destroyed || s.readableEnded) held.delete(s);
      await new Promise((r) => setTimeout(r, 50));
    }
    const left = held.size;
    for (const s of held) s.destroy();
    held.clear();
    dropped = 0;
    return { left };
  },
};

serveIpc(handlers);
