import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startDns } from '../fixtures/dns-server.js';
import { eventually } from '../helpers.js';

/**
 * A newcomer's first hour, through the installed command: config check finds
 * what serve would fail on, serve reports start failures in the same form,
 * warnings are logged once, logs have one format and a level, the bundled
 * policy causes no DNS query for a refused name, logrotate's move-and-signal
 * loses nothing.
 */

const ROOT = resolve(import.meta.dirname, '../..');
const CLI = join(ROOT, 'dist/cli.js');
const execFileP = promisify(execFile);
const ENV = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/_proxy$/i.test(k) && k !== 'WA_EGRESS_LOG_LEVEL'));

let children: ChildProcess[] = [];
let servers: net.Server[] = [];
afterEach(() => {
  for (const c of children) c.kill('SIGKILL');
  for (const s of servers) s.close();
  children = [];
  servers = [];
});

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'wa-egress-first-hour-'));
}

function writeConfig(dir: string, config: object | string): string {
  const file = join(dir, 'config.yaml');
  writeFileSync(file, typeof config === 'string' ? config : stringify(config));
  return file;
}

const rule = (port = 443) => ({ rules: [{ name: 'r', hosts: ['allowed.example.com'], ports: [port] }] });

async function check(file: string, opts: { uid?: number; gid?: number } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [CLI, 'config', 'check', file], { env: ENV, ...opts });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

interface Served {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<number | null>;
}

function serve(file: string, env: Record<string, string> = {}, opts: { uid?: number; gid?: number } = {}): Served {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...ENV, ...env }, ...opts });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  // 'close': the process has exited and its pipes are drained.
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Wait for serve's "listening" line for a listener; its port. */
async function listening(s: Served, listener = 'proxy'): Promise<number> {
  const line = await eventually(() => s.stderr().split('\n').find((l) => l.includes('"msg":"listening"') && l.includes(`"listener":"${listener}"`)), 10_000);
  return Number(/"address":"[^"]*:(\d+)"/.exec(line)![1]);
}

/** One CONNECT through the proxy; the status line's code. */
function connect(port: number, authority: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
    let data = '';
    s.on('data', (d) => {
      data += d;
      if (data.includes('\r\n\r\n')) {
        s.destroy();
        resolve(Number(data.split(' ')[1]));
      }
    });
    s.on('error', reject);
  });
}

function listen(): Promise<net.Server> {
  return new Promise((resolve) => {
    const server = net.createServer((c) => c.destroy());
    servers.push(server);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

describe('an unusable audit path: config check and serve say the same, and serve does not hang', () => {
  const cases: [string, (dir: string) => string, RegExp][] = [
    ['under /proc (recursive mkdir spins there)', () => '/proc/nope/audit.log', /cannot create directory \/proc\/nope: .*\(ENOENT\)/],
    ['under a file', () => '/etc/passwd/audit.log', /\/etc\/passwd is not a directory/],
    ['a directory', (dir) => dir, /is a directory; audit\.file names a file/],
    ['a missing directory under a file', (dir) => (writeFileSync(join(dir, 'f'), ''), join(dir, 'f/sub/audit.log')), /\/f is not a directory/],
  ];
  it.each(cases)('%s', async (_name, path, message) => {
    const dir = tempDir();
    const file = writeConfig(dir, { listen: { proxy: '127.0.0.1:0' }, policy: rule(), audit: { file: path(dir) } });
    const checked = await check(file);
    expect(checked.code).toBe(1);
    const line = checked.stderr.trim();
    expect(line).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: audit\\.file: `));
    expect(line).toMatch(message);

    const s = serve(file);
    const code = await Promise.race([s.exited, new Promise((r) => setTimeout(() => r('hang'), 15_000))]);
    expect(code).toBe(1);
    expect(s.stderr()).toContain(`wa-egress: cannot start:\n${line}\n`);
    expect(s.stderr()).not.toContain('"msg":"listening"');
  });

  const root = process.getuid?.() === 0;
  const nobodyCanRun = root && spawnSync(process.execPath, [CLI, '--version'], { uid: 65534, gid: 65534 }).status === 0;
  if (!nobodyCanRun) console.warn('skipping the unwritable-directory case: needs root to run the CLI as nobody (uid 65534), who must be able to read dist/');
  it.skipIf(!nobodyCanRun)('a directory the gateway cannot write (run as nobody)', async () => {
    const dir = tempDir();
    chmodSync(dir, 0o755);
    const locked = join(dir, 'locked');
    mkdirSync(locked, { mode: 0o555 });
    const file = writeConfig(dir, { listen: { proxy: '127.0.0.1:0' }, policy: rule(), audit: { file: join(locked, 'audit.log') } });
    chmodSync(file, 0o644);
    const as = { uid: 65534, gid: 65534 };
    const checked = await check(file, as);
    expect(checked.code).toBe(1);
    expect(checked.stderr).toMatch(/audit\.file: cannot create .*locked\/audit\.log: permission denied \(EACCES\)/);
    const s = serve(file, {}, as);
    expect(await s.exited).toBe(1);
    expect(s.stderr()).toContain(checked.stderr.trim());
    expect(existsSync(join(locked, 'audit.log'))).toBe(false);
  });

  it('config check leaves nothing behind; serve creates the missing directories', async () => {
    const dir = tempDir();
    const file = writeConfig(dir, { listen: { proxy: '127.0.0.1:0' }, policy: rule(), audit: { file: 'logs/deep/audit.log' } });
    expect((await check(file)).code).toBe(0);
    expect(existsSync(join(dir, 'logs'))).toBe(false);
    const s = serve(file);
    await listening(s);
    expect(existsSync(join(dir, 'logs/deep/audit.log'))).toBe(true);
  });
});

describe('bind failures: serve names the listener key, config check says it does not bind', () => {
  it.each([
    ['listen.proxy', (port: number) => ({ proxy: `127.0.0.1:${port}` }), 2],
    ['listen.forwards[0].listen', (port: number) => ({ proxy: '127.0.0.1:0', forwards: [{ name: 'chatd', listen: `127.0.0.1:${port}`, to: 'allowed.example.com:443' }] }), 5],
  ])('%s in use', async (key, listenAt, line) => {
    const taken = await listen();
    const port = (taken.address() as AddressInfo).port;
    const dir = tempDir();
    const file = writeConfig(dir, { listen: listenAt(port), policy: rule(), audit: { file: '-' } });
    const checked = await check(file);
    expect(checked.code).toBe(0);
    expect(checked.stdout).toMatch(/listener addresses are not bound by a check/);
    const s = serve(file);
    expect(await s.exited).toBe(1);
    expect(s.stderr()).toMatch(
      new RegExp(`\\n${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:${line}:\\d+: ${key.replace(/[.[\]]/g, '\\$&')}: cannot listen on 127\\.0\\.0\\.1:${port}: the address is already in use .*\\(EADDRINUSE\\)\\n`),
    );
  });
});

describe('warnings: printed by config check, logged once by serve', () => {
  it('a dead ip_ranges entry', async () => {
    const dir = tempDir();
    const file = writeConfig(dir, {
      listen: { proxy: '127.0.0.1:0' },
      policy: { rules: [{ name: 'r', hosts: ['allowed.example.com'], ip_ranges: ['10.0.0.0/8', '8.8.8.0/24'], ports: [443] }] },
      audit: { file: '-' },
    });
    const checked = await check(file);
    expect(checked.code).toBe(0);
    const warned = checked.stdout.split('\n').filter((l) => l.includes(': warning: '));
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatch(/policy\.rules\[0\]\.ip_ranges\[0\]: warning: 10\.0\.0\.0\/8 lies inside a special range \(private\)/);
    const s = serve(file);
    await listening(s);
    const logged = s.stderr().split('\n').filter((l) => l.includes('"msg":"config warning"'));
    expect(logged).toHaveLength(1);
    expect(JSON.parse(logged[0]!)).toMatchObject({ level: 'warn', path: 'policy.rules[0].ip_ranges[0]', file });
  });
});

describe('operational logs', () => {
  const config = (dir: string) => writeConfig(dir, { listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'r', hosts: ['allowed.example.com'], ip_ranges: ['10.0.0.0/8'], ports: [443] }] }, audit: { file: '-' } });

  it('say "level":"info" like audit lines; debug adds a decision line per connection', async () => {
    const s = serve(config(tempDir()), { WA_EGRESS_LOG_LEVEL: 'debug' });
    const port = await listening(s);
    expect(await connect(port, 'denied.example.com:443')).toBe(403);
    const decision = await eventually(() => s.stderr().split('\n').find((l) => l.includes('"msg":"decision"')));
    expect(JSON.parse(decision)).toMatchObject({ level: 'debug', dest: 'denied.example.com:443', verdict: 'deny' });
    for (const l of s.stderr().trim().split('\n')) expect(typeof JSON.parse(l).level, l).toBe('string');
    const audit = await eventually(() => s.stdout().split('\n').find((l) => l.includes('egress.denied')));
    expect(JSON.parse(audit).level).toBe('info');
  });

  it('info (the default) writes no debug line', async () => {
    const s = serve(config(tempDir()));
    const port = await listening(s);
    expect(await connect(port, 'denied.example.com:443')).toBe(403);
    await eventually(() => s.stdout().includes('egress.denied'));
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
    expect(s.stderr()).not.toContain('"msg":"decision"');
    expect(s.stderr()).toContain('"level":"info"');
  });

  const ss = spawnSync('ss', ['-V']).status === 0;
  if (!ss) console.warn('skipping the warn-level test: ss (iproute2) is not installed');
  it.skipIf(!ss)('warn writes warnings and nothing below', async () => {
    const s = serve(config(tempDir()), { WA_EGRESS_LOG_LEVEL: 'warn' });
    // No "listening" line at this level: the kernel says when it listens.
    await eventually(() => spawnSync('ss', ['-ltnpH'], { encoding: 'utf8' }).stdout.includes(`pid=${s.child.pid},`), 10_000);
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
    const levels = s.stderr().trim().split('\n').map((l) => JSON.parse(l).level);
    expect(levels).toEqual(['warn']);
  });

  it('an unknown level is reported, and info is used', async () => {
    const s = serve(config(tempDir()), { WA_EGRESS_LOG_LEVEL: 'chatty' });
    await listening(s);
    expect(s.stderr()).toMatch(/"level":"warn".*"WA_EGRESS_LOG_LEVEL":"chatty".*unknown log level; using info/);
  });
});

describe('the bundled policy, copied elsewhere', () => {
  it('passes config check, and refuses an unlisted name without a DNS query', async () => {
    const dns = await startDns({ 'g.whatsapp.net': { A: ['127.0.0.1'] }, 'example.com': { A: ['93.184.216.34'] } });
    try {
      const dir = tempDir();
      const text = readFileSync(join(ROOT, 'config/default.yaml'), 'utf8')
        .replace('proxy: "0.0.0.0:3128"', 'proxy: "127.0.0.1:0"')
        .replace('servers: []', `servers: ["${dns.server}"]`);
      expect(text).toContain('builtin:whatsapp');
      const file = writeConfig(dir, text);
      const checked = await check(file);
      expect(checked.stderr).toBe('');
      expect(checked.code).toBe(0);
      const s = serve(file);
      const port = await listening(s);
      expect(await connect(port, 'example.com:443')).toBe(403);
      // A listed name is resolved (127.0.0.1 is then refused as a special range): the server is in use.
      expect(await connect(port, 'g.whatsapp.net:443')).toBe(403);
      expect(dns.queries.map((q) => q.name)).not.toContain('example.com');
      expect(dns.queries.map((q) => q.name)).toContain('g.whatsapp.net');
      const line = await eventually(() => s.stdout().split('\n').find((l) => l.includes('"dest_host":"example.com"')));
      expect(JSON.parse(line)).toMatchObject({ event: 'egress.denied', reason: 'host_not_allowed' });
    } finally {
      await dns.close();
    }
  });
});

describe('deploy/logrotate/wa-egress against a running gateway', () => {
  const logrotate = spawnSync('logrotate', ['--version']).status === 0;
  if (!logrotate) console.warn('skipping the logrotate test: logrotate is not installed (.ci/run installs it)');
  it.skipIf(!logrotate)('move, SIGUSR1, and no record is lost', async () => {
    const dir = tempDir();
    const audit = join(dir, 'audit.log');
    const file = writeConfig(dir, { listen: { proxy: '127.0.0.1:0' }, policy: rule(), audit: { file: audit } });
    const s = serve(file);
    const port = await listening(s);
    expect(await connect(port, 'before.example.com:443')).toBe(403);
    await eventually(() => existsSync(audit) && readFileSync(audit, 'utf8').includes('before.example.com'));

    // The snippet as shipped, pointed at this gateway's file and process.
    const user = spawnSync('id', ['-un'], { encoding: 'utf8' }).stdout.trim();
    const group = spawnSync('id', ['-gn'], { encoding: 'utf8' }).stdout.trim();
    const snippet = readFileSync(join(ROOT, 'deploy/logrotate/wa-egress'), 'utf8')
      .replace(/^\/var\/log\/wa-egress\/audit\.log \{$/m, `${audit} {`)
      .replace('create 0640 wa-egress wa-egress', `create 0640 ${user} ${group}`)
      .replace(/systemctl kill .*/, `kill -USR1 ${s.child.pid}`);
    const conf = join(dir, 'logrotate.conf');
    writeFileSync(conf, snippet, { mode: 0o644 });
    const rotated = spawnSync('logrotate', ['--force', '--state', join(dir, 'state'), conf], { encoding: 'utf8' });
    expect(rotated.status, rotated.stderr).toBe(0);
    await eventually(() => s.stderr().includes('audit file reopened'));

    expect(await connect(port, 'after.example.com:443')).toBe(403);
    await eventually(() => readFileSync(audit, 'utf8').includes('after.example.com'));
    const old = readFileSync(`${audit}.1`, 'utf8');
    expect(old).toContain('before.example.com');
    expect(old).not.toContain('after.example.com');
    expect(readFileSync(audit, 'utf8')).not.toContain('before.example.com');
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
  });
});
