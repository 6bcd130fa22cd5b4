import { execFile, spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, existsSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import dnsPacket from 'dns-packet';
import { stringify } from 'yaml';
import { parseConfig } from '../src/config/load.js';
import { parseListenAddress } from '../src/config/schema.js';
import { Gateway } from '../src/gateway.js';
import { canonicalIp } from '../src/net/ip.js';

/**
 * Shared test fixtures: real servers on loopback, a gateway on port 0, audit
 * reading, test configs that cannot reach the system resolver, clean
 * environments for spawned clients, the installed command as a child process.
 */

export type AuditRecord = Record<string, unknown> & { event: string };

export interface TestGateway {
  gw: Gateway;
  port: number;
  dir: string;
  audit(): AuditRecord[];
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------
// DNS pinned by construction

let deadDnsServer: Promise<string> | undefined;

/**
 * "127.0.0.1:port" of a DNS server that answers REFUSED to every query: the
 * resolver of last resort for test configs. One per test process, held open
 * (unref'd) so the port can never be someone else's.
 */
export function deadDns(): Promise<string> {
  deadDnsServer ??= new Promise((resolveServer, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.on('message', (msg, rinfo) => {
      let q: dnsPacket.Packet;
      try {
        q = dnsPacket.decode(msg);
      } catch {
        return;
      }
      // rcode 5 = REFUSED
      socket.send(dnsPacket.encode({ id: q.id, type: 'response', flags: 5, questions: q.questions ?? [] }), rinfo.port, rinfo.address);
    });
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      socket.unref();
      resolveServer(`127.0.0.1:${(socket.address() as AddressInfo).port}`);
    });
  });
  return deadDnsServer;
}

function isLoopback(server: string): boolean {
  const ip = canonicalIp(server) ?? canonicalIp(parseListenAddress(server)?.host ?? '');
  return ip !== null && (ip.family === 4 ? ip.ip.startsWith('127.') : ip.ip === '::1');
}

/**
 * The rule every test config obeys, so that no test can ever ask the system
 * resolver (and so reach a real vendor host) whatever order the gateway's
 * checks run in: `dns.servers` is set, and only to loopback servers (a
 * fixture from test/fixtures/dns-server.ts). A config without servers gets
 * `deadDns()`, so names outside `dns.hosts` fail to resolve; a config with
 * a server off loopback is refused with an error.
 */
export async function pinDns<T extends Record<string, unknown>>(config: T): Promise<T> {
  const dns = (config.dns ?? {}) as { servers?: unknown };
  if (dns.servers !== undefined && !Array.isArray(dns.servers)) throw new Error('test config: dns.servers must be a list');
  const servers = (dns.servers as string[] | undefined) ?? [];
  for (const s of servers) {
    if (typeof s !== 'string' || !isLoopback(s)) throw new Error(`test config: dns.servers entry ${JSON.stringify(s)} is not on loopback; tests use a DNS fixture (test/fixtures/dns-server.ts)`);
  }
  return { ...config, dns: { ...dns, servers: servers.length ? servers : [await deadDns()] } };
}

/** A complete test config: defaults for `listen.proxy` (127.0.0.1:0) and `audit.file`, DNS pinned. */
export async function testConfig(config: Record<string, unknown>, auditFile = 'audit.log'): Promise<Record<string, unknown>> {
  return pinDns({ listen: { proxy: '127.0.0.1:0' }, audit: { file: auditFile }, ...config });
}

/** Write a test config (DNS pinned, see `pinDns`) for a child process; returns its directory and path. */
export async function writeTestConfig(config: Record<string, unknown>, dir = mkdtempSync(join(tmpdir(), 'wa-egress-test-'))): Promise<{ dir: string; file: string }> {
  const file = join(dir, 'config.yaml');
  writeFileSync(file, stringify(await pinDns(config)));
  return { dir, file };
}

/** A config object in the YAML shape; `listen.proxy` defaults to 127.0.0.1:0, DNS is pinned (`pinDns`). */
export async function startGateway(config: Record<string, unknown>): Promise<TestGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'wa-egress-test-'));
  const full = await testConfig(config);
  const file = join(dir, 'config.yaml');
  writeFileSync(file, stringify(full));
  const gw = await Gateway.start(parseConfig(stringify(full), file));
  const auditFile = join(dir, 'audit.log');
  return {
    gw,
    // The HTTP proxy's port (0 when the config has no proxy listener).
    port: gw.config.listen.proxy ? gw.address('proxy').port : 0,
    dir,
    audit() {
      gw.audit.flushSync();
      if (!existsSync(auditFile)) return [];
      return readFileSync(auditFile, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as AuditRecord);
    },
    close: () => gw.close(),
  };
}

/**
 * Wait until `fn` returns a truthy value (polling; for audit records written
 * on close). `ms` is a hang guard, never a speed requirement: generous, since
 * the suite runs on busy machines.
 */
export async function eventually<T>(fn: () => T | undefined | false, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface TestServer {
  port: number;
  host: string;
  connections: number;
  close(): Promise<void>;
}

/** A TCP server; `onSocket` decides what it does (default: echo). */
export async function startTcpServer(host = '127.0.0.1', onSocket: (s: Socket) => void = (s) => s.pipe(s), port = 0): Promise<TestServer> {
  const sockets = new Set<Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    result.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onSocket(s);
  });
  await new Promise<void>((r) => server.listen(port, host, () => r()));
  const result: TestServer = {
    port: (server.address() as AddressInfo).port,
    host,
    connections: 0,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
  return result;
}

/** A connected raw socket with a buffer of everything received so far. */
export class RawClient {
  readonly socket: Socket;
  data = Buffer.alloc(0);
  ended = false;
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.data = Buffer.concat([this.data, d]);
    });
    socket.on('end', () => {
      this.ended = true;
    });
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('error', () => {});
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host, allowHalfOpen: true }, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  get text(): string {
    return this.data.toString('latin1');
  }

  /** Wait for a complete response head; returns status and headers, and drops them from `data`. */
  async head(ms = 10_000): Promise<{ status: number; headers: Record<string, string>; raw: string }> {
    await eventually(() => this.data.includes('\r\n\r\n') || this.closed, ms);
    const end = this.data.indexOf('\r\n\r\n');
    if (end < 0) throw new Error(`no response head; got ${JSON.stringify(this.text)}`);
    const raw = this.data.subarray(0, end).toString('latin1');
    this.data = this.data.subarray(end + 4);
    const [statusLine, ...lines] = raw.split('\r\n');
    const headers: Record<string, string> = {};
    for (const l of lines) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
    }
    return { status: Number(statusLine!.split(' ')[1]), headers, raw };
  }

  /** Wait until at least `n` bytes (after any consumed head) have arrived. */
  async bytes(n: number, ms = 10_000): Promise<Buffer> {
    await eventually(() => this.data.length >= n, ms);
    return this.data;
  }

  /** Wait until the proxy has finished with us (FIN or close). */
  waitClosed(ms = 10_000): Promise<true> {
    return eventually(() => this.ended || this.closed, ms);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Open a CONNECT tunnel through the proxy; resolves with the client and the answer. */
export async function connectVia(proxyPort: number, authority: string, extra = ''): Promise<{ client: RawClient; status: number; headers: Record<string, string> }> {
  const client = await RawClient.connect(proxyPort);
  client.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n${extra}`);
  const { status, headers } = await client.head();
  return { client, status, headers };
}

const BLACKHOLE = `
import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(0)
print(s.getsockname()[1], flush=True)
time.sleep(300)
`;

/**
 * A loopback port whose SYNs go unanswered: a listener (python3) that never
 * accepts, its one-slot queue filled, so the kernel drops further SYNs.
 */
export async function startBlackhole(): Promise<{ port: number; close(): void }> {
  const py = spawn('python3', ['-c', BLACKHOLE], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = Number(await new Promise<string>((r) => py.stdout!.once('data', (d) => r(String(d)))));
  const fillers: Socket[] = [];
  // The first filler to connect fills the one-slot queue; the others' SYNs are dropped.
  const queued = new Promise((r) => {
    for (let i = 0; i < 4; i++) {
      const s = net.connect(port, '127.0.0.1', () => r(undefined));
      s.on('error', () => {});
      fillers.push(s);
    }
  });
  await queued;
  return {
    port,
    close() {
      for (const s of fillers) s.destroy();
      py.kill('SIGKILL');
    },
  };
}

const CLOSED_PORT = `
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
sys.stdin.read()
`;

/**
 * A loopback port that refuses connections (RST) for as long as it is held:
 * a socket (python3) bound without listening, so no one else can take the
 * port. Where a test needs "connection refused", never a port found free
 * and closed again.
 */
export async function startClosedPort(): Promise<{ port: number; close(): void }> {
  const py = spawn('python3', ['-c', CLOSED_PORT], { stdio: ['pipe', 'pipe', 'inherit'] });
  const port = Number(await new Promise<string>((r) => py.stdout!.once('data', (d) => r(String(d)))));
  if (!port) throw new Error('python3 could not hold a closed port');
  return {
    port,
    close() {
      py.stdin!.end();
      py.kill('SIGKILL');
    },
  };
}

function localPortRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (lo && hi) return [lo, hi];
  } catch {
    // Not Linux: the IANA ephemeral range.
  }
  return [49152, 65535];
}

/**
 * Start a gateway whose config must name its own ports (a loop check, a
 * forward listener pointed at the proxy): `build` gets `n` distinct ports
 * below the kernel's ephemeral range, where no port-0 bind of a parallel
 * test can land, and a port somebody else holds is simply retried with
 * others. The gateway binds them itself; nothing is found free and bound later.
 */
export async function startGatewayOnPorts(n: number, build: (ports: number[]) => Record<string, unknown>): Promise<{ gw: TestGateway; ports: number[] }> {
  const [lo] = localPortRange();
  const base = Math.max(1024, Math.min(lo, 32768) - 12_000);
  for (let attempt = 0; ; attempt++) {
    const first = base + Math.floor(Math.random() * (Math.min(lo, 32768) - base - n));
    const ports = Array.from({ length: n }, (_, i) => first + i);
    try {
      return { gw: await startGateway(build(ports)), ports };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw err;
    }
  }
}

/**
 * Prove that nothing more will be recorded for what a test did so far: send a
 * denied CONNECT on the proxy listener and wait for its record. Records are
 * written in order, so whatever earlier connections (closed by then) were to
 * write is in the log before it. Returns the records before the marker.
 */
export async function auditBarrier(g: TestGateway, port = g.port): Promise<AuditRecord[]> {
  const host = `barrier-${Math.random().toString(36).slice(2)}.invalid`;
  const c = await RawClient.connect(port);
  c.write(`CONNECT ${host}:1 HTTP/1.1\r\n\r\n`);
  await c.head();
  c.destroy();
  const all = await eventually(() => {
    const r = g.audit();
    return r.some((x) => x.dest_host === host) && r;
  });
  return all.slice(0, all.findIndex((x) => x.dest_host === host));
}

// ---------------------------------------------------------------------------
// Spawned clients and the installed command

/**
 * The environment for every spawned client or child gateway: PATH, HOME and
 * TMPDIR only, so no proxy variable (http_proxy, HTTPS_PROXY, ALL_PROXY,
 * NO_PROXY, ...) or tool setting from the outside can steer it.
 */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin', HOME: tmpdir() };
  if (process.env.TMPDIR) env.TMPDIR = process.env.TMPDIR;
  return { ...env, ...extra };
}

export interface CurlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run curl with `-q` first (no .curlrc) and a clean environment; resolves with its exit code, never rejects. */
export function curl(args: string[], timeoutMs = 20_000): Promise<CurlResult> {
  return new Promise((done) => {
    execFile('curl', ['-q', ...args], { env: cleanEnv(), timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      done({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** The built command (`npm run build` makes it; `npm test` builds first). */
export const CLI = resolve(import.meta.dirname, '../dist/cli.js');

export interface ServeProcess {
  child: ChildProcess;
  /** Listener name → bound port, from the "listening" log lines. */
  ports: Record<string, number>;
  stdout(): string;
  stderr(): string;
  /** The exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** Send a signal and wait for the exit; SIGKILL after `ms`. */
  stop(signal?: NodeJS.Signals, ms?: number): Promise<number | null>;
}

const serving = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of serving) c.kill('SIGKILL');
});

/**
 * `node dist/cli.js serve [args]` with a clean environment (plus `env`),
 * resolved once `listeners` "listening" lines are logged. `args` is usually
 * `['--config', file]` with a file from `writeTestConfig`. `wrap` runs it
 * under a shell prefix (e.g. `ulimit -n 100 &&`).
 */
export async function spawnServe(
  args: string[],
  opts: { listeners?: number; env?: Record<string, string>; stdout?: 'pipe' | 'ignore'; wrap?: string } = {},
): Promise<ServeProcess> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  const stdio: ['ignore', 'pipe' | 'ignore', 'pipe'] = ['ignore', opts.stdout ?? 'pipe', 'pipe'];
  const quoted = [process.execPath, CLI, 'serve', ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
  const child = opts.wrap
    ? spawn('bash', ['-c', `${opts.wrap} exec ${quoted}`], { stdio, env: cleanEnv(opts.env) })
    : spawn(process.execPath, [CLI, 'serve', ...args], { stdio, env: cleanEnv(opts.env) });
  serving.add(child);
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  void exited.then(() => serving.delete(child));
  const want = opts.listeners ?? 1;
  const lines = () => err.split('\n').filter((l) => l.includes('"listening"'));
  await Promise.race([
    eventually(() => lines().length >= want, 20_000),
    exited.then((code) => {
      throw new Error(`serve exited (${code}) before listening:\n${err}`);
    }),
  ]);
  const ports: Record<string, number> = {};
  for (const l of lines()) {
    const rec = JSON.parse(l) as { listener: string; address: string };
    ports[rec.listener] = Number(/:(\d+)$/.exec(rec.address)![1]);
  }
  return {
    child,
    ports,
    stdout: () => out,
    stderr: () => err,
    exited,
    async stop(signal = 'SIGTERM', ms = 20_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), ms);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
