import { describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, cleanEnv, eventually, RawClient, type AuditRecord } from '../helpers.js';
import { parseProm } from './prom.js';
import { connectTunnel, NO_DNS, perTest, reload, roundTrip, serve, writeConfig, type Served } from './serve-child.js';

/**
 * `workers: 2` on a real `wa-egress serve` child: one primary, two workers
 * sharing the listeners. Connections reach both workers; the audit log
 * (a file, or stdout as a pipe) stays one whole JSON line per record with
 * ids unique across workers; /metrics answers for the group; a reload and
 * a drain reach every worker; a worker that dies is replaced.
 */

const { echoServer } = perTest();

function config(echoPort: number, extra: Record<string, unknown> = {}, hosts = ['a.test']) {
  return {
    workers: 2,
    listen: { proxy: '127.0.0.1:0', admin: '127.0.0.1:0' },
    policy: { rules: [{ name: 'echo', hosts, ports: [echoPort] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: { 'a.test': '127.0.0.1', 'b.test': '127.0.0.1' }, servers: [NO_DNS] },
    audit: { file: 'audit.log' },
    ...extra,
  };
}

/** Started, with both workers serving (the admin listener opens once they are). */
async function start(cfg: object): Promise<Served> {
  const { dir, file } = writeConfig(cfg);
  const s = await serve(file, dir, ['admin']);
  await s.waitLog((l) => l.msg === 'listening' && l.listener === 'proxy');
  return s;
}

async function scrape(s: Served): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${s.port('admin')}/metrics`);
  expect(res.status).toBe(200);
  return parseProm(await res.text());
}

/** Poll an asynchronous condition (a scrape); the deadline is a hang guard. */
async function until(fn: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `<boot>.<worker>-<seq>`: the worker part of a connection id. */
const workerOf = (r: AuditRecord) => /^[0-9a-f]+\.(\d+)-\d+$/.exec(String(r.id))?.[1];

/** One CONNECT tunnel after another, each with an echo round trip, then closed. */
async function tunnels(s: Served, authority: string, n: number): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < n; i++) {
    const { client, status } = await connectTunnel(s.port('proxy'), authority);
    statuses.push(status);
    if (status === 200) expect(await roundTrip(client, `hello ${i}`)).toBe(true);
    client.destroy();
  }
  return statuses;
}

describe('workers: 2', () => {
  it('both workers serve one listener; ids are unique across them; /metrics sums the group; /readyz is 200', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port));
    expect(s.logs().filter((l) => l.msg === 'worker serving')).toHaveLength(2);
    expect(await tunnels(s, `a.test:${echo.port}`, 12)).toEqual(Array(12).fill(200));
    expect((await connectTunnel(s.port('proxy'), `b.test:${echo.port}`)).status).toBe(403);

    const records = await eventually(() => {
      const r = s.audit();
      return r.filter((x) => x.event === 'egress.closed').length === 12 && r.length === 25 && r;
    });
    const decisions = records.filter((r) => r.event !== 'egress.closed');
    expect(new Set(decisions.map((r) => r.id)).size).toBe(13);
    expect(new Set(records.map(workerOf))).toEqual(new Set(['1', '2']));

    const m = await scrape(s);
    expect(m.get('wa_egress_connections_accepted_total{listener="proxy"}')).toBe(13);
    expect(m.get('wa_egress_decisions_total{listener="proxy",decision="allowed",rule="echo",reason="",enforced=""}')).toBe(12);
    expect(m.get('wa_egress_decisions_total{listener="proxy",decision="denied",rule="",reason="host_not_allowed",enforced="true"}')).toBe(1);
    expect(m.get('wa_egress_audit_records_written_total')).toBe(25);
    expect(m.get('wa_egress_workers{state="serving"}')).toBe(2);
    expect(m.get('wa_egress_worker_restarts_total')).toBe(0);
    // The group's configuration, once; one keepalive mode, not a sum.
    expect([...m.keys()].filter((k) => k.startsWith('wa_egress_config_info{'))).toHaveLength(1);
    expect([...m.entries()].filter(([k, v]) => k.startsWith('wa_egress_keepalive_mode{') && v === 1)).toHaveLength(1);
    expect((await fetch(`http://127.0.0.1:${s.port('admin')}/readyz`)).status).toBe(200);
  });

  it('audit on stdout as a pipe: records longer than PIPE_BUF from both workers at once stay whole lines, none lost', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port, { audit: { file: '-' } }));
    // A bad port is quoted in the record's error: 6,000 digits make a record over 4 KiB.
    const long = '9'.repeat(6000);
    const clients = await Promise.all(Array.from({ length: 40 }, () => RawClient.connect(s.port('proxy'))));
    await Promise.all(
      clients.map(async (c, i) => {
        c.write(`CONNECT a.test:${long}${i} HTTP/1.1\r\nHost: x\r\n\r\n`);
        expect((await c.head()).status).toBe(400);
        c.destroy();
      }),
    );
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
    const lines = s.stdout().split('\n').filter(Boolean);
    const records = lines.map((l) => JSON.parse(l) as AuditRecord);
    const denied = records.filter((r) => r.event === 'egress.denied');
    expect(denied).toHaveLength(40);
    expect(denied.every((r) => r.reason === 'bad_request' && String(r.error).includes(long))).toBe(true);
    expect(lines.every((l) => l.length > 4096)).toBe(true);
    expect(new Set(denied.map((r) => r.id)).size).toBe(40);
    expect(new Set(denied.map(workerOf))).toEqual(new Set(['1', '2']));
  });

  it('a reload reaches every worker, and a refused one changes none', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port));
    expect(await tunnels(s, `b.test:${echo.port}`, 4)).toEqual([403, 403, 403, 403]);

    s.rewrite(config(echo.port, {}, ['a.test', 'b.test']));
    expect((await reload(s)).msg).toBe('configuration reloaded');
    const before = s.audit().length;
    expect(await tunnels(s, `b.test:${echo.port}`, 6)).toEqual(Array(6).fill(200));

    s.rewrite({ ...config(echo.port, {}, ['a.test']), workers: 0 });
    const rejected = await reload(s);
    expect(rejected.msg).toMatch(/^reload rejected/);
    expect(String(rejected.problems)).toContain('workers');
    expect(await tunnels(s, `b.test:${echo.port}`, 6)).toEqual(Array(6).fill(200));

    const after = await eventually(() => {
      const r = s.audit().slice(before);
      return r.filter((x) => x.event === 'egress.closed').length === 12 && r;
    });
    const allowed = after.filter((r) => r.event === 'egress.allowed');
    expect(allowed).toHaveLength(12);
    expect(new Set(allowed.map(workerOf))).toEqual(new Set(['1', '2']));
    expect((await scrape(s)).get('wa_egress_config_loads_total{result="invalid"}')).toBe(1);
  });

  it('a worker that dies is replaced, logged and counted; the others keep their tunnels', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port));
    expect(await tunnels(s, `a.test:${echo.port}`, 6)).toEqual(Array(6).fill(200));
    const open = await connectTunnel(s.port('proxy'), `a.test:${echo.port}`);
    expect(open.status).toBe(200);
    const served = s.logs().filter((l) => l.msg === 'worker serving');
    const accepted = 'wa_egress_connections_accepted_total{listener="proxy"}';
    expect((await scrape(s)).get(accepted)).toBe(7);
    // The worker that does not hold the tunnel dies.
    const holder = await eventually(() => s.audit().filter((r) => r.event === 'egress.allowed').at(6));
    const victim = served.find((l) => String(l.worker) !== workerOf(holder))!;
    const n = s.logs().length;
    process.kill(Number(victim.worker_pid), 'SIGKILL');
    const died = await s.waitLog((l) => l.msg === 'worker died; starting another', n);
    expect(died).toMatchObject({ worker: victim.worker, signal: 'SIGKILL' });
    const fresh = await s.waitLog((l) => l.msg === 'worker serving', n);
    expect(fresh.worker).toBe(3);
    expect(await roundTrip(open.client, 'still here')).toBe(true);
    expect(await tunnels(s, `a.test:${echo.port}`, 4)).toEqual(Array(4).fill(200));
    const m = await scrape(s);
    expect(m.get('wa_egress_worker_restarts_total')).toBe(1);
    expect(m.get('wa_egress_workers{state="serving"}')).toBe(2);
    // The dead worker's counts stay in the sums (as of its last scrape): a counter never goes back.
    expect(m.get(accepted)).toBe(11);
    open.client.destroy();
  });

  it('SIGTERM drains every worker: /readyz 503 at once, open tunnels in both finish, every record written, exit 0', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port, { shutdown: { delay: '1s', drain_timeout: '1m' } }));
    const open: RawClient[] = [];
    for (let i = 0; i < 4; i++) {
      const t = await connectTunnel(s.port('proxy'), `a.test:${echo.port}`);
      expect(t.status).toBe(200);
      open.push(t.client);
    }
    const holders = await eventually(() => {
      const r = s.audit().filter((x) => x.event === 'egress.allowed');
      return r.length === 4 && r;
    });
    expect(new Set(holders.map(workerOf))).toEqual(new Set(['1', '2']));
    const n = s.logs().length;
    s.child.kill('SIGTERM');
    await s.waitLog((l) => l.msg === 'stopping: draining every worker', n);
    expect((await fetch(`http://127.0.0.1:${s.port('admin')}/readyz`)).status).toBe(503);
    await eventually(() => s.logs().slice(n).filter((l) => l.msg === 'listeners stopped accepting').length === 2);
    for (const c of open) expect(await roundTrip(c, 'draining')).toBe(true);
    for (const c of open) c.destroy();
    expect(await s.exited).toBe(0);
    const closed = s.audit().filter((r) => r.event === 'egress.closed');
    expect(closed).toHaveLength(4);
    expect(closed.every((r) => r.close_reason === 'client_closed')).toBe(true);
  });

  it('audit.on_error deny: once the primary cannot write (stdout a closed pipe), every worker refuses new connections', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port, { audit: { file: '-' } }));
    s.child.stdout!.destroy();
    expect((await connectTunnel(s.port('proxy'), `b.test:${echo.port}`)).status).toBe(403);
    await s.waitLog((l) => l.msg === 'audit log cannot be written: refusing new connections');
    const answers = await Promise.all(Array.from({ length: 6 }, () => connectTunnel(s.port('proxy'), `a.test:${echo.port}`)));
    expect(answers.map((a) => a.status)).toEqual(Array(6).fill(503));
    for (const a of answers) a.client.destroy();
  });

  it('SIGUSR1 to the primary reopens the audit file: records of both workers after a move land in the new file', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port));
    expect(await tunnels(s, `a.test:${echo.port}`, 4)).toEqual(Array(4).fill(200));
    await eventually(() => s.audit().length === 8);
    renameSync(join(s.dir, 'audit.log'), join(s.dir, 'audit.log.1'));
    const n = s.logs().length;
    s.child.kill('SIGUSR1');
    await s.waitLog((l) => l.msg === 'audit file reopened', n);
    expect(await tunnels(s, `a.test:${echo.port}`, 4)).toEqual(Array(4).fill(200));
    const fresh = await eventually(() => s.audit().length === 8 && s.audit());
    expect(new Set(fresh.map(workerOf))).toEqual(new Set(['1', '2']));
    expect(s.audit('audit.log.1')).toHaveLength(8);
  });

  it("a signal to the whole process group (a terminal's Ctrl-C) is one drain, not a drain and its end", async () => {
    const echo = await echoServer();
    const { dir, file } = writeConfig(config(echo.port, { shutdown: { delay: '0s', drain_timeout: '1m' } }));
    const child = spawn(process.execPath, [CLI, 'serve', '--config', file], { cwd: dir, env: cleanEnv(), detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const admin = await eventually(() => /"listener":"admin","address":"127\.0\.0\.1:(\d+)"/.exec(err)?.[1], 15_000);
      const proxy = Number(/"listener":"proxy","address":"127\.0\.0\.1:(\d+)"/.exec(err)![1]);
      expect((await fetch(`http://127.0.0.1:${admin}/readyz`)).status).toBe(200);
      const open = await connectTunnel(proxy, `a.test:${echo.port}`);
      expect(open.status).toBe(200);
      process.kill(-child.pid!, 'SIGINT');
      await eventually(() => err.split('\n').filter((l) => l.includes('"msg":"listeners stopped accepting"')).length === 2);
      // Still draining, not closed: the tunnel works.
      expect(await roundTrip(open.client, 'after ctrl-c')).toBe(true);
      expect(err).not.toContain('second signal');
      open.client.destroy();
      expect(await exited).toBe(0);
      const closed = readFileSync(join(dir, 'audit.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRecord).filter((r) => r.event === 'egress.closed');
      expect(closed).toMatchObject([{ close_reason: 'client_closed' }]);
    } finally {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });

  it('a reload that changes workers starts more, or drains the newest and lets them go', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port));
    s.rewrite({ ...config(echo.port), workers: 3 });
    let n = s.logs().length;
    expect((await reload(s)).msg).toBe('configuration reloaded');
    await s.waitLog((l) => l.msg === 'worker serving' && l.worker === 3, n);
    await until(async () => (await scrape(s)).get('wa_egress_workers{state="serving"}') === 3);
    expect(await tunnels(s, `a.test:${echo.port}`, 6)).toEqual(Array(6).fill(200));
    await eventually(() => s.audit().filter((r) => r.event === 'egress.closed').length === 6);
    expect(new Set(s.audit().map(workerOf))).toEqual(new Set(['1', '2', '3']));

    s.rewrite({ ...config(echo.port), workers: 1 });
    n = s.logs().length;
    expect((await reload(s)).msg).toBe('configuration reloaded');
    await eventually(() => s.logs().slice(n).filter((l) => String(l.msg).startsWith('drain ended')).length === 2);
    await until(async () => {
      const m = await scrape(s);
      return m.get('wa_egress_workers{state="serving"}') === 1 && m.get('wa_egress_workers{state="draining"}') === 0;
    });
    expect(s.logs().slice(n).some((l) => l.msg === 'worker died; starting another')).toBe(false);
    expect(await tunnels(s, `a.test:${echo.port}`, 3)).toEqual(Array(3).fill(200));
    // Workers that left said their last counts on the way out.
    expect((await scrape(s)).get('wa_egress_connections_accepted_total{listener="proxy"}')).toBe(9);
    expect((await fetch(`http://127.0.0.1:${s.port('admin')}/readyz`)).status).toBe(200);
  });

  it('a SIGTERM right behind a reload that adds workers: the new ones leave unstarted or drain too, exit 0', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port, { shutdown: { delay: 0, drain_timeout: '1s' } }));
    s.rewrite({ ...config(echo.port, { shutdown: { delay: 0, drain_timeout: '1s' } }), workers: 4 });
    s.child.kill('SIGHUP');
    s.child.kill('SIGTERM');
    // Had a new worker missed its drain, it would serve on until the guard's kill (31 s), exit 1.
    expect(await s.exited).toBe(0);
    expect(s.logs().some((l) => l.msg === 'every worker has stopped')).toBe(true);
    expect(s.logs().some((l) => String(l.msg).startsWith('worker still running'))).toBe(false);
  });

  it('a very long drain_timeout is waited for, not cut at once (the guard timer stays in range)', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port, { shutdown: { delay: 0, drain_timeout: '1000h' } }));
    const open = await connectTunnel(s.port('proxy'), `a.test:${echo.port}`);
    expect(open.status).toBe(200);
    const n = s.logs().length;
    s.child.kill('SIGTERM');
    await s.waitLog((l) => String(l.msg).startsWith('drain started') || l.msg === 'stopping: draining every worker', n);
    await new Promise((r) => setTimeout(r, 500));
    expect(await roundTrip(open.client, 'still draining')).toBe(true);
    expect(s.logs().some((l) => String(l.msg).startsWith('worker still running'))).toBe(false);
    // A second signal ends the drain.
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
  });

  it('a reload to transparent_mode: tproxy is refused while workers run, also as workers: 1', async () => {
    const echo = await echoServer();
    const s = await start(config(echo.port));
    s.rewrite({ ...config(echo.port), workers: 1, listen: { proxy: '127.0.0.1:0', admin: '127.0.0.1:0', transparent: '127.0.0.1:0', transparent_mode: 'tproxy' } });
    const failed = await reload(s);
    expect(failed.msg).toMatch(/^reload failed/);
    expect(JSON.stringify(failed)).toContain('tproxy is served by one process');
    expect(await tunnels(s, `a.test:${echo.port}`, 2)).toEqual([200, 200]);
    expect((await scrape(s)).get('wa_egress_workers{state="serving"}')).toBe(2);
  });

  it('a listener that cannot bind stops the start at its key (exit 1)', async () => {
    const echo = await echoServer();
    const cfg = config(echo.port);
    const { dir, file } = writeConfig({ ...cfg, listen: { proxy: `127.0.0.1:${echo.port}` } });
    const r = spawnSync(process.execPath, [CLI, 'serve', '--config', file], { cwd: dir, env: cleanEnv(), encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/config\.yaml:\d+:\d+: listen\.proxy: cannot listen on 127\.0\.0\.1:\d+: the address is already in use/);
  });
});
