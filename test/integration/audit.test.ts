import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, renameSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Audit } from '../../src/audit.js';
import { connectVia, eventually, spawnServe, startGateway, startTcpServer, writeTestConfig } from '../helpers.js';

/** The audit log as a dependency: unwritable destinations, rotation, no lost records. */

let cleanup: (() => unknown)[] = [];
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

/**
 * An audit destination that can fail and recover on demand, on any machine:
 * a FIFO whose reader (`cat`, appending to `out`) the test stops and starts.
 * With no reader a write fails with EPIPE; once a reader is back, writes go
 * through again.
 */
function faultyPipe() {
  const dir = mkdtempSync(join(tmpdir(), 'wa-egress-fifo-'));
  const fifo = join(dir, 'audit.log');
  const out = join(dir, 'out.log');
  execFileSync('mkfifo', [fifo]);
  let reader: ChildProcess | undefined;
  const pipe = {
    fifo,
    /** Start a reader; the writer's open blocks until one exists. */
    start() {
      const fd = openSync(out, 'a');
      reader = spawn('cat', [fifo], { stdio: ['ignore', fd, 'inherit'] });
      closeSync(fd);
    },
    /** Stop the reader once it has read all of `expectRecords` (what is in the pipe would be lost). */
    async stop(expectRecords: number) {
      await eventually(() => pipe.records().length >= expectRecords);
      const r = reader!;
      const exited = new Promise((done) => r.once('exit', done));
      r.kill('SIGKILL');
      await exited;
      reader = undefined;
    },
    /** Wait for the reader to read to the end (after the writer closed). */
    async drained() {
      const r = reader;
      if (r && r.exitCode === null) await new Promise((done) => r.once('exit', done));
    },
    records: () =>
      readFileSync(out, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
  cleanup.push(() => reader?.kill('SIGKILL'));
  return pipe;
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

  it('holds records back while the destination fails, writes them in order when it recovers, and loses none', async () => {
    const pipe = faultyPipe();
    pipe.start();
    const { gw, echo } = await gateway(pipe.fifo, 'deny');
    const attempts: number[] = [];
    attempts.push((await connectVia(gw.port, `one.example:${echo.port}`)).status);
    gw.gw.audit.flushSync();
    // The reader goes away: the next write fails (EPIPE) and the gateway refuses.
    await pipe.stop(1);
    attempts.push((await connectVia(gw.port, `two.example:${echo.port}`)).status);
    await eventually(() => !gw.gw.audit.writable);
    attempts.push((await connectVia(gw.port, `three.example:${echo.port}`)).status);
    expect(attempts).toEqual([403, 403, 503]);
    expect(pipe.records().map((r) => r.dest_host)).toEqual(['one.example']);
    // A reader is back: the retry writes the backlog and the gateway serves again.
    pipe.start();
    await eventually(() => gw.gw.audit.writable);
    expect((await connectVia(gw.port, `four.example:${echo.port}`)).status).toBe(403);
    await gw.close();
    await pipe.drained();
    expect(pipe.records().map((r) => [r.dest_host, r.reason])).toEqual([
      ['one.example', 'host_not_allowed'],
      ['two.example', 'host_not_allowed'],
      ['three.example', 'audit_unavailable'],
      ['four.example', 'host_not_allowed'],
    ]);
  });

  it('past 64 MiB waiting, drops records and says so in the log; what was kept is written on recovery', async () => {
    const pipe = faultyPipe();
    pipe.start();
    const logs: { level: number; msg: string; dropped?: number; err?: string }[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
    const audit = new Audit({ file: pipe.fifo, onError: 'deny', log });
    let closed = false;
    cleanup.push(() => void (closed || audit.close()));
    const attempt = (i: number) => ({ id: `t-${i}`, client: '127.0.0.1:1', listener: 'proxy', proto: 'connect' as const, dest_host: `d${i}.example` });
    audit.denied(attempt(0), { reason: 'host_not_allowed', enforced: true });
    audit.flushSync();
    await pipe.stop(1);
    audit.denied(attempt(1), { reason: 'host_not_allowed', enforced: true });
    audit.flushSync();
    expect(audit.writable).toBe(false);
    expect(logs.find((l) => l.msg.startsWith('audit log cannot be written'))).toMatchObject({ level: 50, err: 'EPIPE' });
    // 80 records of 1 MiB each: about 64 fit in memory, the rest are dropped, each one logged.
    const big = 'x'.repeat(1024 * 1024);
    for (let i = 2; i < 82; i++) audit.denied(attempt(i), { reason: 'host_not_allowed', enforced: true, error: big });
    const dropped = logs.filter((l) => l.msg === 'audit record dropped: too many records waiting');
    expect(dropped.length).toBeGreaterThan(0);
    expect(dropped.at(-1)!.dropped).toBe(dropped.length);
    expect(audit.dropped).toBe(dropped.length);
    pipe.start();
    await eventually(() => audit.writable);
    expect(logs.some((l) => l.msg === 'audit log writable again')).toBe(true);
    audit.close();
    closed = true;
    await pipe.drained();
    const written = pipe.records();
    // Every record is either written, whole and once, or counted as dropped; the oldest are kept.
    expect(written.length + audit.dropped).toBe(82);
    expect(written.map((r) => r.dest_host)).toEqual(Array.from({ length: written.length }, (_, i) => `d${i}.example`));
  });
});

describe('audit rotation and shutdown (the command)', () => {

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
    const { file } = await writeTestConfig({ listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [443] }] }, audit: { file: '-' } });
    const serve = await spawnServe(['--config', file]);
    cleanup.push(() => serve.stop('SIGKILL'));
    const port = serve.ports.proxy!;
    serve.child.stdout!.destroy(); // the reader of the audit pipe goes away
    const answer = (host: string) =>
      new Promise<string>((done) => {
        const s = net.connect(port, '127.0.0.1', () => s.write(`CONNECT ${host}:443 HTTP/1.1\r\n\r\n`));
        s.on('data', (d) => {
          s.destroy();
          done(String(d).split('\r\n')[0]!);
        });
      });
    expect(await answer('first.example')).toBe('HTTP/1.1 403 Forbidden');
    await eventually(() => serve.stderr().includes('audit log cannot be written'));
    expect(await answer('g.whatsapp.net')).toBe('HTTP/1.1 503 Service Unavailable');
  });

  it('10,000 denials then SIGTERM, with a rotation (move + SIGUSR1) in the middle: every record, complete, once', { timeout: 120_000 }, async () => {
    const { dir, file } = await writeTestConfig({ listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [443] }] }, audit: { file: 'audit.log' } });
    const serve = await spawnServe(['--config', file], { stdout: 'ignore' });
    cleanup.push(() => serve.stop('SIGKILL'));
    const port = serve.ports.proxy!;

    await batches(port, 0, 5000);
    renameSync(join(dir, 'audit.log'), join(dir, 'audit.log.1'));
    serve.child.kill('SIGUSR1');
    await eventually(() => serve.stderr().includes('audit file reopened'));
    await batches(port, 5000, 5000);
    expect(await serve.stop('SIGTERM')).toBe(0);

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
