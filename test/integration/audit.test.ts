import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { connectVia, eventually, startGateway, startTcpServer } from '../helpers.js';

/** The audit log as a dependency: unwritable destinations, rotation, no lost records. */

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function gateway(file: string, onError: 'deny' | 'continue') {
  const echo = await startTcpServer();
  const gw = await startGateway({
    policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    audit: { file, on_error: onError },
  });
  cleanup.push(() => echo.close(), () => gw.close().catch(() => {}));
  return { gw, echo };
}

/** A small tmpfs we can fill and free; null where mounting is not permitted. */
function smallTmpfs(): string | null {
  const dir = mkdtempSync(join(tmpdir(), 'wa-egress-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir], { stdio: 'ignore' });
  } catch {
    return null;
  }
  cleanup.push(() => {
    execFileSync('umount', ['-l', dir], { stdio: 'ignore' });
  });
  return dir;
}

describe('audit destination failures', () => {
  it('refuses new connections with 503 audit_unavailable when records cannot be written (on_error: deny)', async () => {
    const { gw, echo } = await gateway('/dev/full', 'deny');
    const first = await connectVia(gw.port, `evil.example:${echo.port}`);
    expect(first.status).toBe(403);
    // The failed write is reported asynchronously.
    await eventually(() => !gw.gw.audit.writable);
    const refused = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(refused.status).toBe(503);
    expect(refused.headers['x-wa-egress-reason']).toBe('audit_unavailable');
    expect(echo.connections).toBe(0);
  });

  it('keeps serving with on_error: continue', async () => {
    const { gw, echo } = await gateway('/dev/full', 'continue');
    await connectVia(gw.port, `evil.example:${echo.port}`);
    await eventually(() => !gw.gw.audit.writable);
    const allowed = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(allowed.status).toBe(200);
    allowed.client.destroy();
  });

  it('resumes when the file system has room again, and loses no record', async (ctx) => {
    const dir = smallTmpfs();
    if (!dir) return ctx.skip();
    const filler = join(dir, 'filler');
    // Fill the file system (minus nothing): every audit write fails with ENOSPC.
    try {
      writeFileSync(filler, Buffer.alloc(64 * 1024));
    } catch {
      // ENOSPC part-way is fine: the disk is full.
    }
    const { gw, echo } = await gateway(join(dir, 'audit.log'), 'deny');
    const attempts: number[] = [];
    attempts.push((await connectVia(gw.port, `evil.example:${echo.port}`)).status);
    await eventually(() => !gw.gw.audit.writable);
    attempts.push((await connectVia(gw.port, `evil.example:${echo.port}`)).status);
    expect(attempts).toEqual([403, 503]);
    rmSync(filler);
    await eventually(() => gw.gw.audit.writable, 5000);
    const after = await connectVia(gw.port, `evil.example:${echo.port}`);
    expect(after.status).toBe(403);
    gw.gw.audit.flushSync();
    const records = readFileSync(join(dir, 'audit.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    expect(records.map((r) => r.reason)).toEqual(['host_not_allowed', 'audit_unavailable', 'host_not_allowed']);
  });
});

describe('audit rotation and shutdown (the command)', () => {
  const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
  let child: ChildProcess | undefined;
  afterEach(() => child?.kill('SIGKILL'));

  function denials(port: number, from: number, n: number): Promise<void[]> {
    return Promise.all(
      Array.from(
        { length: n },
        (_, i) =>
          new Promise<void>((done, fail) => {
            const s = net.connect(port, '127.0.0.1', () => s.write(`CONNECT d${from + i}.example:443 HTTP/1.1\r\n\r\n`));
            s.on('data', () => {
              s.destroy();
              done();
            });
            s.on('error', fail);
          }),
      ),
    );
  }

  async function batches(port: number, from: number, n: number): Promise<void> {
    for (let i = 0; i < n; i += 250) await denials(port, from + i, Math.min(250, n - i));
  }

  it('refuses new connections when stdout (audit.file "-") is a closed pipe', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-pipe-'));
    const file = join(dir, 'config.yaml');
    writeFileSync(file, stringify({ listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [443] }] }, audit: { file: '-' } }));
    child = spawn(process.execPath, [CLI, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const line = await eventually(() => err.split('\n').find((l) => l.includes('"listening"')), 10_000);
    const port = Number(/:(\d+)"/.exec(line)![1]);
    child.stdout!.destroy(); // the reader of the audit pipe goes away
    const answer = (host: string) =>
      new Promise<string>((done) => {
        const s = net.connect(port, '127.0.0.1', () => s.write(`CONNECT ${host}:443 HTTP/1.1\r\n\r\n`));
        s.on('data', (d) => {
          s.destroy();
          done(String(d).split('\r\n')[0]!);
        });
      });
    expect(await answer('first.example')).toBe('HTTP/1.1 403 Forbidden');
    await eventually(() => err.includes('audit log cannot be written'));
    expect(await answer('g.whatsapp.net')).toBe('HTTP/1.1 503 Service Unavailable');
  });

  it('10,000 denials then SIGTERM, with a rotation (move + SIGUSR1) in the middle: every record, complete, once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-rotate-'));
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'config.yaml');
    writeFileSync(file, stringify({ listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [443] }] }, audit: { file: 'audit.log' } }));
    child = spawn(process.execPath, [CLI, 'serve', '--config', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const line = await eventually(() => err.split('\n').find((l) => l.includes('"listening"')), 10_000);
    const port = Number(/:(\d+)"/.exec(line)![1]);

    await batches(port, 0, 5000);
    renameSync(join(dir, 'audit.log'), join(dir, 'audit.log.1'));
    child.kill('SIGUSR1');
    await eventually(() => err.includes('audit file reopened'));
    await batches(port, 5000, 5000);
    child.kill('SIGTERM');
    const code = await new Promise((r) => child!.once('exit', r));
    expect(code).toBe(0);

    const read = (name: string) => readFileSync(join(dir, name), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const rotated = read('audit.log.1');
    const current = read('audit.log');
    expect(rotated).toHaveLength(5000);
    expect(current).toHaveLength(5000);
    const hosts = new Set([...rotated, ...current].map((r) => r.dest_host));
    expect(hosts.size).toBe(10_000);
    expect(rotated.every((r) => Number(/^d(\d+)\./.exec(r.dest_host)![1]) < 5000)).toBe(true);
  });
});
