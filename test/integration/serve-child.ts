import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { afterEach } from 'vitest';
import { cleanEnv, eventually, RawClient, startTcpServer, type AuditRecord, type TestServer } from '../helpers.js';

/**
 * `wa-egress serve` as a child process, driven by real signals: its
 * operational log (stderr, JSON lines) read as records, its listeners' ports
 * taken from the "listening" lines, its audit file read back.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');

export type LogLine = Record<string, unknown> & { msg: string };

export interface Served {
  child: ChildProcess;
  dir: string;
  file: string;
  /** Port of each listener, from the latest "listening" line naming it. */
  port(listener: string): number;
  logs(): LogLine[];
  /** Wait for a log line (after the `after`-th) matching `pred`. */
  waitLog(pred: (l: LogLine) => boolean, after?: number): Promise<LogLine>;
  audit(name?: string): AuditRecord[];
  /** What it wrote on stdout (audit.file "-"). */
  stdout(): string;
  exited: Promise<number | null>;
  /** Write a new configuration over the file (atomically: a rename). */
  rewrite(config: object): void;
}

/** For `dns.servers` in child configs: loopback, where no DNS server answers, so the system resolver is never asked. */
export const NO_DNS = '127.0.0.1:9';

/**
 * Per-test cleanup for a test file: after each test the children are
 * killed, then what `defer` registered runs (last first).
 */
export function perTest(): { defer(fn: () => Promise<void> | void): void; echoServer(): Promise<TestServer> } {
  let fns: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    killChildren();
    for (const fn of fns.reverse()) await fn();
    fns = [];
  });
  return {
    defer: (fn) => void fns.push(fn),
    async echoServer() {
      const echo = await startTcpServer();
      fns.push(() => echo.close());
      return echo;
    },
  };
}

const children = new Set<ChildProcess>();
export function killChildren(): void {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
}

export function writeConfig(config: object, dir = mkdtempSync(join(tmpdir(), 'wa-egress-ops-'))): { dir: string; file: string } {
  const file = join(dir, 'config.yaml');
  writeFileSync(file, stringify(config));
  return { dir, file };
}

/** Start serve on `file` and wait until `listeners` are all listening. */
export async function serve(file: string, dir: string, listeners: string[]): Promise<Served> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv() });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const logs = () =>
    err
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as LogLine);
  const waitLog = (pred: (l: LogLine) => boolean, after = 0) => eventually(() => logs().slice(after).find(pred), 15_000);
  const port = (listener: string) => {
    const line = logs().filter((l) => l.msg === 'listening' && l.listener === listener).at(-1);
    if (!line) throw new Error(`${listener} is not listening`);
    return Number(/:(\d+)$/.exec(String(line.address))![1]);
  };
  for (const l of listeners) await waitLog((x) => x.msg === 'listening' && x.listener === l);
  return {
    child,
    dir,
    file,
    port,
    logs,
    waitLog,
    exited,
    stdout: () => out,
    audit(name = 'audit.log') {
      const f = join(dir, name);
      if (!existsSync(f)) return [];
      return readFileSync(f, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as AuditRecord);
    },
    rewrite(config: object) {
      writeFileSync(`${file}.tmp`, stringify(config));
      renameSync(`${file}.tmp`, file);
    },
  };
}

/** Signal the child and wait for the reload's outcome (the log line after the signal). */
export async function reload(s: Served): Promise<LogLine> {
  const n = s.logs().length;
  s.child.kill('SIGHUP');
  return s.waitLog((l) => l.msg === 'configuration reloaded' || String(l.msg).startsWith('reload rejected') || String(l.msg).startsWith('reload failed'), n);
}

/** Echo round trip through a tunnel: what was sent comes back. */
export async function roundTrip(c: RawClient, text: string): Promise<boolean> {
  c.data = Buffer.alloc(0);
  c.write(text);
  await c.bytes(text.length);
  return c.data.toString() === text;
}

export async function connectTunnel(port: number, authority: string): Promise<{ client: RawClient; status: number }> {
  const client = await RawClient.connect(port);
  client.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  const { status } = await client.head();
  return { client, status };
}

/** A SOCKS5 tunnel to a name (raw bytes: greeting, CONNECT by domain name); the reply is consumed. */
export async function socksTunnel(port: number, host: string, destPort: number): Promise<{ client: RawClient; reply: number }> {
  const client = await RawClient.connect(port);
  client.write(Buffer.from([5, 1, 0]));
  await client.bytes(2);
  client.data = Buffer.alloc(0);
  const name = Buffer.from(host);
  client.write(Buffer.from([5, 1, 0, 3, name.length, ...name, destPort >> 8, destPort & 255]));
  await eventually(() => client.data.length >= 10 || client.closed);
  const reply = client.data[1] ?? -1;
  client.data = client.data.subarray(10);
  return { client, reply };
}

/** Whether a new connection to the port is refused (nothing accepting there). */
export function refused(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((r) => {
    const s = net.connect(port, host);
    s.once('connect', () => {
      s.destroy();
      r(false);
    });
    s.once('error', (e: NodeJS.ErrnoException) => r(e.code === 'ECONNREFUSED'));
  });
}
