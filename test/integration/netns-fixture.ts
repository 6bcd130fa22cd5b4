import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Shared by the transparent-gateway tests in network namespaces
 * (transparent.test.ts for REDIRECT, transparent-tproxy.test.ts): running
 * commands, processes inside a namespace, the client/gateway/server
 * namespaces joined by veth pairs (10.233.1.0/24 client-gateway,
 * 10.233.2.0/24 gateway-server; the addresses exist only inside them), the
 * servers and the raw TCP client, and reading the audit log.
 */

export const GW_IP = '10.233.1.1';
export const CLIENT_IP = '10.233.1.2';
export const SERVER_IP = '10.233.2.2';
export const OTHER_IP = '10.233.2.3';

export type Namespaces = { client: string; gateway: string; server: string };

export function sh(cmd: string, ...args: string[]): { ok: boolean; out: string; status: number | null } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 20_000 });
  return { ok: r.status === 0, status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}` };
}
export function must(cmd: string, ...args: string[]): string {
  const r = sh(cmd, ...args);
  if (!r.ok) throw new Error(`${cmd} ${args.join(' ')}: ${r.out}`);
  return r.out;
}
export const has = (tool: string, ...args: string[]) => sh(tool, ...args).status === 0;

/** A process whose output lines are kept, with a promise for a line that matches. */
export class Proc {
  readonly lines: string[] = [];
  exited = false;
  private waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  constructor(readonly child: ChildProcess) {
    for (const stream of [child.stdout!, child.stderr!]) {
      let partial = '';
      stream.setEncoding('utf8').on('data', (d: string) => {
        partial += d;
        const parts = partial.split('\n');
        partial = parts.pop()!;
        for (const l of parts) this.line(l);
      });
    }
    child.on('exit', () => {
      this.exited = true;
      this.line('EXITED');
    });
  }
  private line(l: string): void {
    this.lines.push(l);
    this.waiters = this.waiters.filter((w) => !(w.re.test(l) && (w.resolve(l), true)));
  }
  waitFor(re: RegExp, ms: number): Promise<string> {
    const seen = this.lines.find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${re}: not seen within ${ms} ms; got:\n${this.lines.join('\n')}`)), ms);
      this.waiters.push({ re, resolve: (l) => (clearTimeout(timer), resolve(l)) });
    });
  }
  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

export const procs: Proc[] = [];
export function inNs(name: string, args: string[]): Proc {
  const p = new Proc(spawn('ip', ['netns', 'exec', name, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH } }));
  procs.push(p);
  return p;
}

// TLS on 443 and 8443 (answers one HTTP request), echo on 5222; every address of the namespace.
export const SERVERS = `
const fs = require('fs'), net = require('net'), tls = require('tls');
const [key, cert] = process.argv.slice(1).map((f) => fs.readFileSync(f));
const answer = (s) => { s.on('error', () => {}); s.once('data', () => s.end('HTTP/1.1 200 OK\\r\\nContent-Length: 9\\r\\nConnection: close\\r\\n\\r\\nserver-ok')); };
let n = 0;
const up = () => { if (++n === 5) console.log('READY'); };
tls.createServer({ key, cert }, answer).listen(443, '0.0.0.0', up);
tls.createServer({ key, cert }, answer).listen(8443, '0.0.0.0', up);
// A protocol whose server speaks first.
net.createServer((s) => { s.on('error', () => {}); s.end('220 banner\\r\\n'); }).listen(2525, '0.0.0.0', up);
for (const port of [5222, 5223]) net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); }).listen(port, '0.0.0.0', up);
`;

// Send one line, print what comes back and how the connection ended.
export const RAW = `
const net = require('net');
const [host, port] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) }, () => s.write('ping-through-gateway'));
let got = '';
s.on('data', (d) => { got += d; if (got.includes('ping-through-gateway')) { console.log('ECHO ' + got); s.end(); } });
s.on('error', (e) => console.log('ERROR ' + e.code));
s.on('close', () => { console.log('CLOSED ' + (got ? 'with-data' : 'no-data')); process.exit(0); });
setTimeout(() => { console.log('HUNG'); process.exit(0); }, 15000);
`;

/** The three namespaces, their veth pairs and addresses; the client's default route is the gateway. */
export function buildNetwork(ns: Namespaces): void {
  for (const n of Object.values(ns)) must('ip', 'netns', 'add', n);
  must('ip', '-n', ns.gateway, 'link', 'add', 'gc', 'type', 'veth', 'peer', 'name', 'cg', 'netns', ns.client);
  must('ip', '-n', ns.gateway, 'link', 'add', 'gs', 'type', 'veth', 'peer', 'name', 'sg', 'netns', ns.server);
  must('ip', '-n', ns.client, 'addr', 'add', `${CLIENT_IP}/24`, 'dev', 'cg');
  must('ip', '-n', ns.gateway, 'addr', 'add', `${GW_IP}/24`, 'dev', 'gc');
  must('ip', '-n', ns.gateway, 'addr', 'add', '10.233.2.1/24', 'dev', 'gs');
  must('ip', '-n', ns.server, 'addr', 'add', `${SERVER_IP}/24`, 'dev', 'sg');
  must('ip', '-n', ns.server, 'addr', 'add', `${OTHER_IP}/24`, 'dev', 'sg');
  for (const [n, dev] of [[ns.client, 'cg'], [ns.gateway, 'gc'], [ns.gateway, 'gs'], [ns.server, 'sg']] as const) {
    must('ip', '-n', n, 'link', 'set', dev, 'up');
    must('ip', '-n', n, 'link', 'set', 'lo', 'up');
  }
  must('ip', '-n', ns.client, 'route', 'add', 'default', 'via', GW_IP);
}

/** A self-signed certificate for allowed.test, denied.test and SERVER_IP, in dir (key.pem, cert.pem). */
export function makeCertificate(dir: string): void {
  must('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=allowed.test',
    '-addext', 'subjectAltName=DNS:allowed.test,DNS:denied.test,IP:10.233.2.2',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'));
}

/** The audit log's records so far. */
export function records(auditFile: string): Record<string, unknown>[] {
  if (!existsSync(auditFile)) return [];
  return readFileSync(auditFile, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** The first record that matches, waiting for it (records of a close come a little after the client sees it). */
export async function record(auditFile: string, match: Record<string, unknown>, ms = 10_000): Promise<Record<string, unknown>> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    const r = records(auditFile).find((rec) => Object.entries(match).every(([k, v]) => rec[k] === v));
    if (r) return r;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no record like ${JSON.stringify(match)}; have:\n${records(auditFile).map((r) => JSON.stringify(r)).join('\n')}`);
}

/** Send one line from the client namespace; the raw client's output lines. */
export async function raw(ns: Namespaces, host: string, port: number): Promise<string[]> {
  const p = inNs(ns.client, [process.execPath, '-e', RAW, host, String(port)]);
  await p.waitFor(/^EXITED$/, 20_000);
  return p.lines;
}

/** curl in the client namespace, trusting the test certificate. */
export function curl(ns: Namespaces, dir: string, ...args: string[]): { ok: boolean; out: string; status: number | null } {
  return sh('ip', 'netns', 'exec', ns.client, 'curl', '-q', '-sS', '--max-time', '15', '--cacert', join(dir, 'cert.pem'), ...args);
}

/** Kill the processes and delete the namespaces (afterAll). */
export function teardown(ns: Namespaces): void {
  for (const p of procs) p.kill();
  for (const n of Object.values(ns)) sh('ip', 'netns', 'del', n);
}
