import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { keepaliveMode, nativeUnavailableReason } from '../../src/native/sockopt.js';

/**
 * A chat tunnel through a network blip, on a real network: client, gateway
 * and server in network namespaces this test creates, joined by veth pairs
 * (10.231.1.0/24 client-gateway, 10.231.2.0/24 gateway-server; the
 * addresses exist only inside them). The gateway runs as its own process in
 * its namespace. With `keepalive: {idle: 2s, interval: 3s, count: 6}` a
 * silent server is dropped after 20 s: a 14 s loss of every packet between
 * gateway and server is survived, a permanent one closes the tunnel with
 * `upstream_timeout`. Node's own keepalive (the addon forced off) gives a
 * silent peer 2 s + 10 × 1 s, and the same blip cuts the tunnel.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const BLIP_MS = 14_000;
/** idle 2 s + 6 × 3 s, and a margin for the probes' timers. */
const DROP_GUARD_MS = 20_000 + 10_000;
const ns = { client: `wae${process.pid}c`, gateway: `wae${process.pid}g`, server: `wae${process.pid}s` };
const GW_IP = '10.231.1.1';
const CLIENT_IP = '10.231.1.2';
const SERVER_IP = '10.231.2.2';

function sh(cmd: string, ...args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}` };
}
function must(cmd: string, ...args: string[]): string {
  const r = sh(cmd, ...args);
  if (!r.ok) throw new Error(`${cmd} ${args.join(' ')}: ${r.out}`);
  return r.out;
}

/** Why this test cannot run here (no root, no namespaces, no iptables), or undefined. */
function unavailable(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'needs root for ip netns';
  const probe = `wae${process.pid}p`;
  const made = sh('ip', 'netns', 'add', probe);
  if (!made.ok) return `ip netns unavailable: ${made.out.trim()}`;
  try {
    const ipt = sh('ip', 'netns', 'exec', probe, 'iptables', '-w', '-A', 'INPUT', '-j', 'DROP');
    if (!ipt.ok) return `iptables unavailable in a namespace: ${ipt.out.trim()}`;
  } finally {
    sh('ip', 'netns', 'del', probe);
  }
  return undefined;
}

const why = unavailable();
if (why) console.warn(`keepalive-blip.test.ts skipped: ${why}`);
const nativeWhy = keepaliveMode() === 'native' ? undefined : nativeUnavailableReason();
const required = process.env.WA_EGRESS_REQUIRE_NATIVE === '1';
if (!why && nativeWhy && !required) console.warn(`keepalive-blip.test.ts: the native-keepalive case is skipped: ${nativeWhy}`);

/** A process whose stdout lines are kept, with a promise for a line that matches. */
class Proc {
  readonly lines: string[] = [];
  stderr = '';
  exited = false;
  private waiters: { re: RegExp; resolve: (l: string) => void }[] = [];

  constructor(readonly child: ChildProcess) {
    let partial = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      partial += d;
      const parts = partial.split('\n');
      partial = parts.pop()!;
      for (const l of parts) this.line(l);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
      for (const l of d.split('\n')) if (l) this.line(l);
    });
    child.on('exit', () => {
      this.exited = true;
      this.line('EXITED');
    });
  }

  private line(l: string): void {
    this.lines.push(l);
    this.waiters = this.waiters.filter((w) => !(w.re.test(l) && (w.resolve(l), true)));
  }

  /** The first line (already seen or to come) that matches; rejects after `ms` (a hang guard). */
  waitFor(re: RegExp, ms: number, what = String(re)): Promise<string> {
    const seen = this.lines.find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what}: not seen within ${ms} ms; got:\n${this.lines.join('\n')}`)), ms);
      this.waiters.push({ re, resolve: (l) => (clearTimeout(timer), resolve(l)) });
    });
  }

  write(text: string): void {
    this.child.stdin!.write(`${text}\n`);
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

let procs: Proc[] = [];
function inNs(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const p = new Proc(spawn('ip', ['netns', 'exec', name, process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH, ...env } }));
  procs.push(p);
  return p;
}

const ECHO = `
const net = require('net');
const srv = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); });
srv.listen(0, process.argv[1], () => console.log('PORT ' + srv.address().port));
`;

// CONNECT through the proxy, then stdin lines go up the tunnel and what comes back is printed.
const CLIENT = `
const net = require('net');
const [host, port, target] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) });
let head = '';
let open = false;
s.on('connect', () => s.write('CONNECT ' + target + ' HTTP/1.1\\r\\nHost: ' + target + '\\r\\n\\r\\n'));
s.on('data', (d) => {
  if (open) return console.log('DATA ' + d);
  head += d;
  const end = head.indexOf('\\r\\n\\r\\n');
  if (end < 0) return;
  open = true;
  console.log('STATUS ' + head.split(' ')[1]);
  if (head.length > end + 4) console.log('DATA ' + head.slice(end + 4));
});
s.on('error', (e) => console.log('ERROR ' + e.code));
s.on('close', () => { console.log('CLOSED'); process.exit(0); });
require('readline').createInterface({ input: process.stdin }).on('line', (l) => s.write(l));
`;

let dir: string;

beforeAll(() => {
  if (why) return;
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-blip-'));
  for (const n of Object.values(ns)) must('ip', 'netns', 'add', n);
  must('ip', '-n', ns.gateway, 'link', 'add', 'gc', 'type', 'veth', 'peer', 'name', 'cg', 'netns', ns.client);
  must('ip', '-n', ns.gateway, 'link', 'add', 'gs', 'type', 'veth', 'peer', 'name', 'sg', 'netns', ns.server);
  must('ip', '-n', ns.client, 'addr', 'add', `${CLIENT_IP}/24`, 'dev', 'cg');
  must('ip', '-n', ns.gateway, 'addr', 'add', `${GW_IP}/24`, 'dev', 'gc');
  must('ip', '-n', ns.gateway, 'addr', 'add', '10.231.2.1/24', 'dev', 'gs');
  must('ip', '-n', ns.server, 'addr', 'add', `${SERVER_IP}/24`, 'dev', 'sg');
  for (const [n, dev] of [[ns.client, 'cg'], [ns.gateway, 'gc'], [ns.gateway, 'gs'], [ns.server, 'sg']] as const) {
    must('ip', '-n', n, 'link', 'set', dev, 'up');
    must('ip', '-n', n, 'link', 'set', 'lo', 'up');
  }
});

afterEach(() => {
  for (const p of procs) p.kill();
  procs = [];
  if (!why) for (const n of [ns.server, ns.client]) sh('ip', 'netns', 'exec', n, 'iptables', '-w', '-F');
});

afterAll(() => {
  if (why) return;
  for (const p of procs) p.kill();
  // Each namespace goes, whatever state the test left it in.
  for (const n of Object.values(ns)) sh('ip', 'netns', 'del', n);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Every packet between the gateway and the server (or the client) is lost, in that peer's namespace; or flows again. */
function blackhole(on: boolean, peer = ns.server): void {
  if (!on) return void must('ip', 'netns', 'exec', peer, 'iptables', '-w', '-F');
  must('ip', 'netns', 'exec', peer, 'iptables', '-w', '-A', 'INPUT', '-j', 'DROP');
  must('ip', 'netns', 'exec', peer, 'iptables', '-w', '-A', 'OUTPUT', '-j', 'DROP');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Setup {
  client: Proc;
  gateway: Proc;
  auditFile: string;
  serverPort: number;
}

async function start(name: string, env: NodeJS.ProcessEnv): Promise<Setup> {
  const server = inNs(ns.server, ['-e', ECHO, SERVER_IP]);
  const serverPort = Number((await server.waitFor(/^PORT \d+/, 10_000)).split(' ')[1]);
  const auditFile = join(dir, `${name}.audit.log`);
  const config = join(dir, `${name}.yaml`);
  writeFileSync(
    config,
    stringify({
      listen: { proxy: `${GW_IP}:0` },
      policy: { rules: [{ name: 'chat', hosts: ['chat.test'], ports: [serverPort] }], allow_ranges: ['10.231.2.0/24'] },
      dns: { hosts: { 'chat.test': SERVER_IP }, servers: ['127.0.0.1:9'] },
      keepalive: { idle: '2s', interval: '3s', count: 6 },
      audit: { file: auditFile },
    }),
  );
  const gateway = inNs(ns.gateway, [CLI, 'serve', '--config', config], env);
  const listening = JSON.parse(await gateway.waitFor(/"msg":"listening"/, 10_000)) as { address: string };
  const port = listening.address.split(':').at(-1)!;
  const client = inNs(ns.client, ['-e', CLIENT, GW_IP, port, `chat.test:${serverPort}`]);
  expect(await client.waitFor(/^STATUS /, 10_000)).toBe('STATUS 200');
  return { client, gateway, auditFile, serverPort };
}

/** One line up the tunnel and back. */
async function roundTrip(client: Proc, text: string, ms = 10_000): Promise<void> {
  client.write(text);
  await client.waitFor(new RegExp(`^DATA .*${text}`), ms, `echo of ${text}`);
}

/** Both of the gateway's legs have their keepalive timer (the sweep ran). */
async function keepaliveArmed(serverPort: number): Promise<void> {
  let out = '';
  for (let i = 0; i < 100; i++) {
    out = sh('ip', 'netns', 'exec', ns.gateway, 'ss', '-tnoH', 'state', 'established').out;
    const legs = out.split('\n').filter((l) => l.includes('timer:(keepalive'));
    if (legs.some((l) => l.includes(`${SERVER_IP}:${serverPort}`)) && legs.some((l) => l.includes(CLIENT_IP))) return;
    await sleep(100);
  }
  throw new Error(`keepalive never switched on for both legs:\n${out}`);
}

function closeRecord(auditFile: string, ms = 5000): Promise<Record<string, unknown>> {
  return (async () => {
    for (const end = Date.now() + ms; Date.now() < end; ) {
      if (existsSync(auditFile)) {
        const rec = readFileSync(auditFile, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Record<string, unknown>)
          .find((r) => r.event === 'egress.closed');
        if (rec) return rec;
      }
      await sleep(50);
    }
    throw new Error(`no egress.closed record in ${auditFile} within ${ms} ms`);
  })();
}

describe.skipIf(!!why)('keepalive through a network blip (network namespaces)', () => {
  it.skipIf(!!nativeWhy && !required)(
    'native keepalive (2 s + 6 × 3 s) survives a 14 s loss, and closes the tunnel with upstream_timeout when the server is gone',
    async () => {
      const { client, gateway, auditFile, serverPort } = await start('native', {});
      expect(gateway.stderr).toMatch(/"keepalive_mode":"native".*a silent peer is dropped after 20 s \(idle 2 s \+ 6 probes × 3 s\)/);
      expect(gateway.stderr).not.toMatch(/falling back/);
      await roundTrip(client, 'hello');
      await keepaliveArmed(serverPort);
      await roundTrip(client, 'before-blip');

      blackhole(true);
      // The blip itself: the tunnel must not close while it lasts.
      const cut = client.waitFor(/^CLOSED/, BLIP_MS, 'close').then(
        () => true,
        () => false,
      );
      expect(await cut, 'the tunnel was cut during the blip').toBe(false);
      blackhole(false);
      await roundTrip(client, 'after-blip', 15_000);
      expect(existsSync(auditFile) ? readFileSync(auditFile, 'utf8') : '').not.toMatch(/egress\.closed/);

      // Now for good: the server never answers again.
      await roundTrip(client, 'last-words');
      blackhole(true);
      await client.waitFor(/^CLOSED/, DROP_GUARD_MS, 'the tunnel closed after the server went silent');
      expect(await closeRecord(auditFile)).toMatchObject({ event: 'egress.closed', proto: 'connect', dest_ip: SERVER_IP, close_reason: 'upstream_timeout' });
    },
    120_000,
  );

  it(
    "Node's keepalive (forced fallback: 2 s + 10 × 1 s) cuts the tunnel during the same 14 s loss",
    async () => {
      const { client, gateway, auditFile, serverPort } = await start('fallback', { WA_EGRESS_NO_NATIVE: '1' });
      expect(gateway.stderr).toMatch(/"level":"warn".*native socket options unavailable \(WA_EGRESS_NO_NATIVE=1\); falling back to Node's keepalive/);
      expect(gateway.stderr).toMatch(/a silent peer is dropped after 12 s/);
      await roundTrip(client, 'hello');
      await keepaliveArmed(serverPort);
      await roundTrip(client, 'before-blip');

      blackhole(true);
      await client.waitFor(/^CLOSED/, BLIP_MS, 'the tunnel closed during the blip');
      blackhole(false);
      expect(await closeRecord(auditFile)).toMatchObject({ event: 'egress.closed', close_reason: 'upstream_timeout' });
    },
    60_000,
  );

  it(
    'a client that goes silent: the tunnel closes with client_timeout',
    async () => {
      const { client, auditFile, serverPort } = await start('client-gone', {});
      await roundTrip(client, 'hello');
      await keepaliveArmed(serverPort);
      await roundTrip(client, 'last-words');
      blackhole(true, ns.client);
      expect(await closeRecord(auditFile, DROP_GUARD_MS)).toMatchObject({ event: 'egress.closed', close_reason: 'client_timeout' });
    },
    60_000,
  );
});
