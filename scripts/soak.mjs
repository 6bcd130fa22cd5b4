#!/usr/bin/env node
// Soak: mixed traffic through a wa-egress process for N minutes while its RSS
// and open descriptors are sampled; the report shows whether they stay flat.
//   npm run soak -- --minutes 30 [--out soak.json]
// Loopback only. Exit code 1 when memory or descriptors grow.
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { minutes: { type: 'string', default: '2' }, out: { type: 'string' }, sample: { type: 'string', default: '5' } } });
const minutes = Number(values.minutes);
const sampleMs = Number(values.sample) * 1000;
const CLI = resolve(import.meta.dirname, '../dist/cli.js');

// Targets: an echo server, a sink that swallows large uploads, an HTTP origin.
const listen = (server) => new Promise((r) => server.listen(0, '127.0.0.1', () => r(server.address().port)));
const echo = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); });
const sink = net.createServer((s) => { s.on('error', () => {}); s.resume(); s.on('end', () => s.end('ok')); });
const origin = http.createServer((req, res) => { req.resume(); res.end('x'.repeat(2048)); });
const [echoPort, sinkPort, originPort] = await Promise.all([listen(echo), listen(sink), listen(origin)]);

const dir = mkdtempSync(join(tmpdir(), 'wa-egress-soak-'));
const configFile = join(dir, 'config.yaml');
writeFileSync(configFile, JSON.stringify({
  listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0', forwards: [{ name: 'chatd', listen: '127.0.0.1:0', to: `g.whatsapp.net:${echoPort}` }] },
  policy: { rules: [{ name: 'soak', hosts: ['g.whatsapp.net'], ports: [echoPort, sinkPort, originPort] }], allow_ranges: ['127.0.0.1/32'] },
  dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' }, servers: ['127.0.0.1:9'] },
  timeouts: { handshake: '2s', dns: '300ms', connect: '2s' },
  audit: { file: join(dir, 'audit.log') },
}));
const proxy = spawn(process.execPath, [CLI, 'serve', '--config', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
let stderr = '';
proxy.stderr.on('data', (d) => (stderr += d));
const ports = {};
while (Object.keys(ports).length < 3) {
  await new Promise((r) => setTimeout(r, 50));
  for (const m of stderr.matchAll(/"listener":"([^"]+)","address":"[^"]*:(\d+)"/g)) ports[m[1]] = Number(m[2]);
  if (proxy.exitCode !== null) throw new Error(`wa-egress exited: ${stderr}`);
}

// One client operation of each kind; each resolves when done (errors count, never throw).
const counts = { allowed: 0, denied: 0, large: 0, malformed: 0, http: 0, socks: 0, forward: 0, errors: 0 };
function connectTunnel(target, payload, port = ports.proxy) {
  return new Promise((done) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`CONNECT ${target} HTTP/1.1\r\n\r\n`));
    let buf = Buffer.alloc(0);
    let open = false;
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!open && buf.includes('\r\n\r\n')) {
        open = true;
        if (!buf.toString('latin1').startsWith('HTTP/1.1 200')) return s.destroy(), done(s);
        buf = buf.subarray(buf.indexOf('\r\n\r\n') + 4);
        if (payload) s.write(payload);
        return done(s);
      }
    });
    s.on('error', () => { counts.errors++; done(null); });
  });
}
const ops = {
  async allowed() {
    const s = await connectTunnel(`g.whatsapp.net:${echoPort}`, 'ping');
    s?.end();
    counts.allowed++;
  },
  async denied() {
    const s = await connectTunnel(`evil.example:${echoPort}`);
    s?.destroy();
    counts.denied++;
  },
  async large() {
    const s = await connectTunnel(`g.whatsapp.net:${sinkPort}`);
    if (!s) return;
    await new Promise((r) => { s.on('close', r); s.end(Buffer.alloc(4 * 1024 * 1024)); });
    counts.large++;
  },
  async malformed() {
    await new Promise((r) => {
      const s = net.connect(ports.proxy, '127.0.0.1', () => s.write(Buffer.from([0, 1, 2, 3, 13, 10, 13, 10])));
      s.on('error', () => {}); s.on('close', r); s.resume();
    });
    counts.malformed++;
  },
  async http() {
    await new Promise((r) => {
      const req = http.request({ host: '127.0.0.1', port: ports.proxy, path: `http://g.whatsapp.net:${originPort}/`, agent: false }, (res) => { res.resume(); res.on('end', r); });
      req.on('error', () => { counts.errors++; r(); });
      req.end();
    });
    counts.http++;
  },
  async socks() {
    await new Promise((r) => {
      const s = net.connect(ports.socks, '127.0.0.1', () => {
        const name = Buffer.from('g.whatsapp.net');
        s.write(Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 3, name.length]), name, Buffer.from([echoPort >> 8, echoPort & 255])]));
      });
      s.on('data', () => s.end()); s.on('error', () => { counts.errors++; }); s.on('close', r);
    });
    counts.socks++;
  },
  async forward() {
    await new Promise((r) => {
      const s = net.connect(ports.chatd, '127.0.0.1', () => s.write('hi'));
      s.on('data', () => s.end()); s.on('error', () => { counts.errors++; }); s.on('close', r);
    });
    counts.forward++;
  },
};

// Idle tunnels that come and go: a pool of 200, a tenth replaced each round.
const idle = [];
async function churnIdle() {
  while (idle.length < 200) idle.push(await connectTunnel(`g.whatsapp.net:${echoPort}`));
  for (let i = 0; i < 20; i++) idle.shift()?.destroy();
}

function sample() {
  const status = readFileSync(`/proc/${proxy.pid}/status`, 'utf8');
  return { t: Math.round((Date.now() - start) / 1000), rss_kib: Number(/VmRSS:\s+(\d+)/.exec(status)[1]), fds: readdirSync(`/proc/${proxy.pid}/fd`).length };
}

const start = Date.now();
const end = start + minutes * 60_000;
const samples = [sample()];
const timer = setInterval(() => { samples.push(sample()); if (process.env.SOAK_DEBUG) console.error(JSON.stringify(counts), [...busy.values()].join(',')); }, sampleMs);
const kinds = Object.keys(ops);
const busy = new Map();
const workers = Array.from({ length: 8 }, async (_, w) => {
  for (let i = w; Date.now() < end; i++) {
    busy.set(w, kinds[i % kinds.length]);
    await ops[kinds[i % kinds.length]]();
    busy.set(w, 'churn');
    if (i % 50 === 0) await churnIdle();
  }
});
await Promise.all(workers);
for (const s of idle) s?.destroy();
await new Promise((r) => setTimeout(r, 1500));
clearInterval(timer);
samples.push(sample());
proxy.kill('SIGTERM');
await new Promise((r) => proxy.once('exit', r));
echo.close(); sink.close(); origin.close();

// Flat: the last third's peak RSS is within 25% (or 24 MiB) of the middle third's,
// and the descriptors return to where they started once the clients are gone.
const third = Math.max(1, Math.floor(samples.length / 3));
const peak = (xs) => Math.max(...xs.map((s) => s.rss_kib));
const middle = peak(samples.slice(third, 2 * third));
const last = peak(samples.slice(2 * third, -1));
const rssFlat = last <= Math.max(middle * 1.25, middle + 24 * 1024);
const fdsFlat = samples.at(-1).fds <= samples[0].fds + 2;
const report = { minutes, counts, samples, rss_middle_peak_kib: middle, rss_last_peak_kib: last, rss_flat: rssFlat, fds_start: samples[0].fds, fds_end: samples.at(-1).fds, fds_flat: fdsFlat };
if (values.out) writeFileSync(values.out, JSON.stringify(report, null, 2));
console.log('   t(s)   RSS(MiB)   fds');
for (const s of samples) console.log(`${String(s.t).padStart(7)} ${(s.rss_kib / 1024).toFixed(1).padStart(10)} ${String(s.fds).padStart(5)}`);
console.log(JSON.stringify(counts));
console.log(`RSS ${rssFlat ? 'flat' : 'GROWING'}: middle peak ${(middle / 1024).toFixed(1)} MiB, last peak ${(last / 1024).toFixed(1)} MiB; fds ${fdsFlat ? 'flat' : 'LEAKING'}: ${samples[0].fds} → ${samples.at(-1).fds}`);
process.exit(rssFlat && fdsFlat && counts.errors === 0 ? 0 : 1);
