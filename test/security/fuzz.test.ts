import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { eventually, RawClient, spawnServe, startTcpServer, writeTestConfig, type ServeProcess, type TestServer } from '../helpers.js';
import { sleep } from './support.js';

/**
 * Fuzzing every listener of one gateway running as the installed command
 * (`node dist/cli.js serve`, built by `npm run build` before vitest): random
 * bytes and mutated CONNECT/GET heads, SOCKS5 greetings and requests, sent
 * as a fixed number of connections, many at once, with every way of ending
 * them. Each listener's test has a gateway process of its own (so each
 * passes alone and in any order). Afterwards the process is still up,
 * answers a well-formed request on every listener, its RSS stayed bounded,
 * no descriptor is left open, and at SIGTERM its audit log holds only
 * complete records and its operational log no error.
 *
 * The run is reproducible: FUZZ_SEED=<n> repeats a failing run (the seed is
 * in the failure message); FUZZ_CONNECTIONS=<n> sets the connections per listener.
 */

const FUZZ_CONNECTIONS = Number(process.env.FUZZ_CONNECTIONS ?? 1500);
const CONCURRENCY = 24;
const RSS_LIMIT = 200 * 1024 * 1024;
const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31);

// A small seeded PRNG (mulberry32), so a failing run can be repeated.
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let gateway: ServeProcess;
let child: ServeProcess['child'];
let echo: TestServer;
let ports: Record<string, number> = {};
let auditFile = '';
let maxRss = 0;
let P = 0;

/** Open file descriptors of the gateway process (sockets included). */
function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}
let baselineFds = 0;

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

beforeAll(async () => {
  echo = await startTcpServer('127.0.0.1');
  P = echo.port;
});
afterAll(async () => {
  await echo?.close();
});

beforeEach(async () => {
  const { dir, file } = await writeTestConfig({
    listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0', forwards: [{ name: 'fwd', listen: '127.0.0.1:0', to: `g.whatsapp.net:${P}` }] },
    policy: { rules: [{ name: 'wa', hosts: ['g.whatsapp.net', '*.cdn.whatsapp.net'], ip_ranges: ['127.0.0.0/8'], ports: [P, 443] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: { 'g.whatsapp.net': '127.0.0.1', 'a.cdn.whatsapp.net': ['127.0.0.2', '127.0.0.1'] } },
    timeouts: { handshake: '2s', connect: '1s', dns: '500ms' },
    audit: { file: 'audit.log' },
  });
  auditFile = join(dir, 'audit.log');
  gateway = await spawnServe(['--config', file], { listeners: 3, stdout: 'ignore' });
  child = gateway.child;
  ports = gateway.ports;
  expect(Object.keys(ports).sort()).toEqual(['fwd', 'proxy', 'socks']);
  baselineFds = fdCount(child.pid!);
  maxRss = 0;
});

afterEach(async () => {
  await gateway?.stop('SIGKILL');
});

// ---------------------------------------------------------------------------
// Inputs

const HTTP_SEEDS = (p: number): string[] => [
  `CONNECT g.whatsapp.net:${p} HTTP/1.1\r\nHost: g.whatsapp.net:${p}\r\n\r\n`,
  `CONNECT 127.0.0.2:${p} HTTP/1.1\r\n\r\n`,
  `CONNECT [::ffff:127.0.0.1]:${p} HTTP/1.1\r\nProxy-Connection: keep-alive\r\n\r\nearly bytes`,
  `CONNECT a.cdn.whatsapp.net:443 HTTP/1.0\r\n\r\n`,
  `GET http://g.whatsapp.net:${p}/x?y=1 HTTP/1.1\r\nHost: 127.0.0.2\r\nConnection: keep-alive\r\n\r\n`,
  `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello`,
  `POST http://g.whatsapp.net:${p}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
  `GET http://evil.example/ HTTP/1.1\r\n\r\nGET http://g.whatsapp.net:${p}/ HTTP/1.1\r\n\r\n`,
  `GET http://2130706434:${p}/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`,
  `OPTIONS * HTTP/1.1\r\n\r\n`,
];

function socksSeeds(p: number): Buffer[] {
  const name = (n: string) => Buffer.concat([Buffer.from([5, 1, 0, 3, n.length]), Buffer.from(n), Buffer.from([p >> 8, p & 255])]);
  return [
    Buffer.concat([Buffer.from([5, 1, 0]), name('g.whatsapp.net')]),
    Buffer.concat([Buffer.from([5, 1, 0]), Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, p >> 8, p & 255])]),
    Buffer.concat([Buffer.from([5, 1, 0]), Buffer.from([5, 1, 0, 1, 127, 0, 0, 2, p >> 8, p & 255])]),
    Buffer.concat([Buffer.from([5, 2, 0, 2]), Buffer.from([5, 1, 0, 4, ...Buffer.alloc(15), 1, p >> 8, p & 255])]),
    Buffer.concat([Buffer.from([5, 1, 0]), name('evil.example')]),
    Buffer.concat([Buffer.from([5, 1, 0]), Buffer.from([5, 2, 0, 1, 127, 0, 0, 1, 0, 80])]), // BIND
    Buffer.concat([Buffer.from([5, 1, 0]), Buffer.from([5, 3, 0, 1, 0, 0, 0, 0, 0, 0])]), // UDP ASSOCIATE
    Buffer.from([4, 1, p >> 8, p & 255, 127, 0, 0, 1, 0]), // SOCKS4
    Buffer.from([4, 1, p >> 8, p & 255, 0, 0, 0, 1, 0, ...Buffer.from('g.whatsapp.net'), 0]), // SOCKS4a
    Buffer.from([5, 0]),
    Buffer.from([5, 255, ...Buffer.alloc(255, 0)]),
  ];
}

const TOKENS = ['\r\n', '\r\n\r\n', '\n', '\r', ' ', ':', '\0', '\xff', 'chunked', 'Content-Length: ', 'Transfer-Encoding: chunked\r\n', '0\r\n\r\n', '%00', '@', '#', '[', ']', '::', 'CONNECT ', 'HTTP/1.1', '\x05\x01\x00', '\x05\x01\x00\x03\xff'];

function mutate(rand: () => number, input: Buffer): Buffer {
  let b = Buffer.from(input);
  const edits = 1 + Math.floor(rand() * 6);
  for (let e = 0; e < edits; e++) {
    const at = Math.floor(rand() * (b.length + 1));
    switch (Math.floor(rand() * 8)) {
      case 0: // flip a bit
        if (b.length) b[at % b.length]! ^= 1 << Math.floor(rand() * 8);
        break;
      case 1: // random byte
        if (b.length) b[at % b.length] = Math.floor(rand() * 256);
        break;
      case 2: // delete a run
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + Math.floor(rand() * 8))]);
        break;
      case 3: // insert a token
        b = Buffer.concat([b.subarray(0, at), Buffer.from(TOKENS[Math.floor(rand() * TOKENS.length)]!, 'latin1'), b.subarray(at)]);
        break;
      case 4: // duplicate a region
        b = Buffer.concat([b.subarray(0, at), b.subarray(at, at + Math.floor(rand() * 40)), b.subarray(at)]);
        break;
      case 5: // truncate
        b = b.subarray(0, at);
        break;
      case 6: // a long run (oversized heads, lengths)
        b = Buffer.concat([b.subarray(0, at), Buffer.alloc(Math.floor(rand() * 20_000), rand() < 0.5 ? 0x41 : Math.floor(rand() * 256)), b.subarray(at)]);
        break;
      default: // random bytes
        b = Buffer.concat([b.subarray(0, at), randomBytes(rand, Math.floor(rand() * 32)), b.subarray(at)]);
    }
  }
  return b;
}

function randomBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

/** One connection: send the input in pieces, then end it one of several ways. */
async function fuzzOne(rand: () => number, port: number, input: Buffer): Promise<void> {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: rand() < 0.5 });
  s.on('error', () => {});
  s.on('data', () => {});
  const connected = await new Promise<boolean>((r) => {
    s.once('connect', () => r(true));
    s.once('error', () => r(false));
  });
  if (!connected) return;
  // Split the input into 1-4 writes with short pauses: exercises reassembly.
  const cuts = [0, ...Array.from({ length: Math.floor(rand() * 4) }, () => Math.floor(rand() * input.length)).sort((a, b) => a - b), input.length];
  for (let i = 0; i + 1 < cuts.length && !s.destroyed; i++) {
    s.write(input.subarray(cuts[i], cuts[i + 1]));
    if (rand() < 0.3) await sleep(Math.floor(rand() * 20));
  }
  const how = rand();
  if (how < 0.25) s.resetAndDestroy();
  else if (how < 0.5) s.end();
  else if (how < 0.75) s.destroy();
  else {
    // Read the answer (or keep a tunnel open) for a little while.
    await sleep(50 + Math.floor(rand() * 200));
    if (rand() < 0.5) s.resetAndDestroy();
    else s.destroy();
  }
  await new Promise((r) => (s.closed ? r(null) : s.once('close', r)));
}

/** Run FUZZ_CONNECTIONS `make` inputs against `port`, CONCURRENCY connections at once. */
async function fuzz(name: string, port: number, make: (rand: () => number) => Buffer): Promise<number> {
  const seed = SEED ^ [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) | 0, 0);
  let started = 0;
  let count = 0;
  const sampler = setInterval(() => {
    if (child.pid) maxRss = Math.max(maxRss, rssBytes(child.pid));
  }, 250);
  try {
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async (_, w) => {
        const rand = prng(seed + w);
        while (started < FUZZ_CONNECTIONS && child.exitCode === null) {
          started++;
          await fuzzOne(rand, port, make(rand));
          count++;
        }
      }),
    );
  } finally {
    clearInterval(sampler);
  }
  expect(child.exitCode, `gateway exited during the ${name} fuzz (FUZZ_SEED=${SEED})\n${gateway.stderr().slice(-3000)}`).toBeNull();
  console.info(`fuzz ${name}: ${count} connections, peak RSS ${(maxRss / 2 ** 20).toFixed(1)} MiB (FUZZ_SEED=${SEED})`);
  return count;
}

function pick<T>(rand: () => number, list: T[]): T {
  return list[Math.floor(rand() * list.length)]!;
}

// ---------------------------------------------------------------------------

async function expectHealthy(label: string): Promise<void> {
  expect(child.exitCode, `${label} (FUZZ_SEED=${SEED})`).toBeNull();
  // A well-formed, allowed CONNECT is answered and tunnels.
  const c = await RawClient.connect(ports.proxy!);
  c.write(`CONNECT g.whatsapp.net:${P} HTTP/1.1\r\nHost: g.whatsapp.net:${P}\r\n\r\n`);
  expect((await c.head(5000)).status, `${label} (FUZZ_SEED=${SEED})`).toBe(200);
  c.write('ping');
  expect((await c.bytes(4)).toString()).toBe('ping');
  c.destroy();
  // A denied one is still denied.
  const d = await RawClient.connect(ports.proxy!);
  d.write(`CONNECT 127.0.0.2:${P} HTTP/1.1\r\n\r\n`);
  expect((await d.head(5000)).status).toBe(403);
  d.destroy();
  // SOCKS and the forward listener answer too.
  const s = await RawClient.connect(ports.socks!);
  s.write(Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 3, 14]), Buffer.from('g.whatsapp.net'), Buffer.from([P >> 8, P & 255])]));
  await s.bytes(12, 5000);
  expect([...s.data.subarray(0, 4)]).toEqual([5, 0, 5, 0]);
  s.data = s.data.subarray(12);
  s.write('pong');
  expect((await s.bytes(4)).toString()).toBe('pong');
  s.destroy();
  const f = await RawClient.connect(ports.fwd!);
  f.write('fwd');
  expect((await f.bytes(3)).toString()).toBe('fwd');
  f.destroy();
  expect(maxRss, `RSS peaked at ${(maxRss / 2 ** 20).toFixed(1)} MiB`).toBeLessThan(RSS_LIMIT);
  expect(rssBytes(child.pid!)).toBeLessThan(RSS_LIMIT);
}

/**
 * Descriptors come back to where they were once the fuzz connections are
 * gone. (Once a leak: upstreams of requests pipelined behind a refused one,
 * and tunnels of CONNECTs pipelined behind a request answered with close.)
 */
async function expectNoDescriptorLeak(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const c = await RawClient.connect(ports.proxy!);
    c.write(`GET http://g.whatsapp.net:${P}/ HTTP/1.1\r\n\r\nCONNECT g.whatsapp.net:${P} HTTP/1.1\r\n\r\n`);
    await c.waitClosed();
    c.destroy();
  }
  await eventually(() => fdCount(child.pid!) <= baselineFds + 2).catch(() => {
    expect(fdCount(child.pid!), `descriptors left open after the fuzz (baseline ${baselineFds})`).toBeLessThanOrEqual(baselineFds + 2);
  });
}

/** Stop the process the way an operator does; its audit log holds only complete records, its log no error. Returns the counts per event:reason. */
async function stopAndRead(): Promise<Map<string, number>> {
  expect(await gateway.stop('SIGTERM')).toBe(0);
  const lines = readFileSync(auditFile, 'utf8').split('\n');
  expect(lines.pop()).toBe('');
  const events = new Map<string, number>();
  for (const l of lines) {
    const rec = JSON.parse(l) as { event: string; reason?: string };
    expect(typeof rec.event).toBe('string');
    const key = `${rec.event}${rec.reason ? `:${rec.reason}` : ''}`;
    events.set(key, (events.get(key) ?? 0) + 1);
  }
  const errors = gateway
    .stderr()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { level: string; msg?: string })
    .filter((r) => r.level === 'error' || r.level === 'fatal');
  expect(errors, JSON.stringify(errors.slice(0, 5))).toEqual([]);
  return events;
}

describe(`fuzzing every listener of a gateway process (FUZZ_SEED=${SEED})`, { timeout: 180_000 }, () => {
  it('HTTP proxy listener: random bytes and mutated CONNECT/GET heads', async () => {
    const seeds = HTTP_SEEDS(P).map((s) => Buffer.from(s, 'latin1'));
    const n = await fuzz('proxy', ports.proxy!, (rand) => {
      const r = rand();
      if (r < 0.15) return randomBytes(rand, Math.floor(rand() * 512));
      if (r < 0.25) return Buffer.concat([pick(rand, seeds), mutate(rand, pick(rand, seeds))]); // pipelined
      return mutate(rand, pick(rand, seeds));
    });
    expect(n).toBe(FUZZ_CONNECTIONS);
    await expectHealthy('after the HTTP fuzz');
    await expectNoDescriptorLeak();
    const events = await stopAndRead();
    // The fuzz reached the parsers and the policy.
    expect(events.get('egress.denied:bad_request')).toBeGreaterThan(0);
    expect(events.get('egress.denied:host_not_allowed')).toBeGreaterThan(0);
  });

  it('SOCKS5 listener: random bytes and mutated greetings and requests', async () => {
    const seeds = socksSeeds(P);
    const n = await fuzz('socks', ports.socks!, (rand) => {
      const r = rand();
      if (r < 0.15) return randomBytes(rand, Math.floor(rand() * 300));
      if (r < 0.25) return Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 3]), randomBytes(rand, Math.floor(rand() * 270))]);
      return mutate(rand, pick(rand, seeds));
    });
    expect(n).toBe(FUZZ_CONNECTIONS);
    await expectHealthy('after the SOCKS fuzz');
    await expectNoDescriptorLeak();
    const events = await stopAndRead();
    expect(events.get('egress.denied:bad_request')).toBeGreaterThan(0);
    expect(events.get('egress.allowed')).toBeGreaterThan(1);
  });

  it('forward listener: random bytes, heads and abrupt closes', async () => {
    const seeds = [...HTTP_SEEDS(P).map((s) => Buffer.from(s, 'latin1')), ...socksSeeds(P)];
    const n = await fuzz('fwd', ports.fwd!, (rand) => (rand() < 0.5 ? randomBytes(rand, Math.floor(rand() * 4096)) : mutate(rand, pick(rand, seeds))));
    expect(n).toBe(FUZZ_CONNECTIONS);
    await expectHealthy('after the forward fuzz');
    await expectNoDescriptorLeak();
    const events = await stopAndRead();
    // Every fuzz connection was a tunnel attempt to the fixed target (beyond the health checks' few).
    expect(events.get('egress.allowed') ?? 0).toBeGreaterThan(FUZZ_CONNECTIONS / 2);
  });
});
