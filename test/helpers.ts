import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { parseConfig } from '../src/config/load.js';
import { Gateway } from '../src/gateway.js';

/** Shared test fixtures: real servers on loopback, a gateway on port 0, audit reading. */

export type AuditRecord = Record<string, unknown> & { event: string };

export interface TestGateway {
  gw: Gateway;
  port: number;
  dir: string;
  audit(): AuditRecord[];
  close(): Promise<void>;
}

/** A config object in the YAML shape; `listen.proxy` defaults to 127.0.0.1:0. */
export async function startGateway(config: Record<string, unknown>): Promise<TestGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'wa-egress-test-'));
  const full = {
    listen: { proxy: '127.0.0.1:0' },
    audit: { file: 'audit.log' },
    ...config,
  };
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

/** Wait until `fn` returns a truthy value (polling; for audit records written on close). */
export async function eventually<T>(fn: () => T | undefined | false, ms = 5000): Promise<T> {
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
  async head(ms = 5000): Promise<{ status: number; headers: Record<string, string>; raw: string }> {
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
  async bytes(n: number, ms = 5000): Promise<Buffer> {
    await eventually(() => this.data.length >= n, ms);
    return this.data;
  }

  /** Wait until the proxy has finished with us (FIN or close). */
  waitClosed(ms = 5000): Promise<true> {
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

/** A loopback port with no listener: bind one, then close it. */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
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
  for (let i = 0; i < 4; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    fillers.push(s);
  }
  await new Promise((r) => setTimeout(r, 300));
  return {
    port,
    close() {
      for (const s of fillers) s.destroy();
      py.kill('SIGKILL');
    },
  };
}
