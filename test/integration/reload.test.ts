import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { RawClient, startTcpServer, type TestServer } from '../helpers.js';
import { connectTunnel, NO_DNS, perTest, refused, reload, roundTrip, serve, socksTunnel, writeConfig, type Served } from './serve-child.js';

/**
 * Hot reload on a real `wa-egress serve` child: SIGHUP and watched files
 * (a ConfigMap-style symlink swap, an editor's rename, a range file), an
 * invalid configuration that changes nothing, `recheck_tunnels`, listener
 * rebinding and an audit destination that moves without losing a record.
 */

const { defer, echoServer } = perTest();

const names = { 'a.test': '127.0.0.1', 'b.test': '127.0.0.1', 'c.test': '127.0.0.1' };

/** A proxy; `hosts` allowed to the echo's port; extra keys merged in. */
function config(echoPort: number, hosts: string[], extra: Record<string, unknown> = {}) {
  return {
    listen: { proxy: '127.0.0.1:0' },
    policy: { rules: [{ name: 'chat', hosts, ports: [echoPort] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: names, servers: [NO_DNS] },
    audit: { file: 'audit.log' },
    ...extra,
  };
}

async function status(s: Served, authority: string): Promise<number> {
  const { client, status } = await connectTunnel(s.port('proxy'), authority);
  client.destroy();
  return status;
}

describe('hot reload', () => {
  it('rejects an invalid configuration naming every problem, keeps the old policy and stays up', async () => {
    const echo = await echoServer();
    const { dir, file } = writeConfig(config(echo.port, ['a.test']));
    const s = await serve(file, dir, ['proxy']);
    const { client: tunnel } = await connectTunnel(s.port('proxy'), `a.test:${echo.port}`);

    writeFileSync(file, stringify({ ...config(echo.port, ['b.test']), extra: 1, timeouts: { connect: 'soon' } }));
    const rejected = await reload(s);
    expect(rejected.msg).toMatch(/^reload rejected: 2 problems/);
    const problems = rejected.problems as string[];
    expect(problems.some((p) => p.includes('extra: unknown key'))).toBe(true);
    expect(problems.some((p) => p.includes('timeouts.connect: expected a duration'))).toBe(true);
    expect(s.logs().filter((l) => l.msg === 'config error')).toHaveLength(2);
    expect(s.child.exitCode).toBeNull();
    expect(await status(s, `a.test:${echo.port}`)).toBe(200);
    expect(await status(s, `b.test:${echo.port}`)).toBe(403);
    expect(await roundTrip(tunnel, 'kept')).toBe(true);

    // Unreadable YAML is rejected the same way.
    writeFileSync(file, 'listen: [');
    expect((await reload(s)).msg).toMatch(/^reload rejected/);
    expect(await status(s, `a.test:${echo.port}`)).toBe(200);

    // The start-up checks apply too: an audit path that cannot be a file.
    s.rewrite(config(echo.port, ['b.test'], { audit: { file: '/proc/self/wa-egress/audit.log' } }));
    const unusable = await reload(s);
    expect(unusable.msg).toMatch(/^reload rejected/);
    expect((unusable.problems as string[]).some((p) => p.includes('audit.file'))).toBe(true);
    expect(await status(s, `a.test:${echo.port}`)).toBe(200);

    // A valid one afterwards is taken.
    s.rewrite(config(echo.port, ['b.test']));
    expect((await reload(s)).msg).toBe('configuration reloaded');
    expect(await status(s, `b.test:${echo.port}`)).toBe(200);
    expect(await status(s, `a.test:${echo.port}`)).toBe(403);
    expect(await roundTrip(tunnel, 'still kept')).toBe(true);
  });

  it('reloads when a watched ConfigMap volume swaps its ..data symlink', async () => {
    const echo = await echoServer();
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-configmap-'));
    // Kubernetes' layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>.
    const revision = (name: string, hosts: string[]) => {
      mkdirSync(join(dir, name));
      writeFileSync(join(dir, name, 'config.yaml'), stringify(config(echo.port, hosts, { reload: { watch: true }, audit: { file: join(dir, 'audit.log') } })));
    };
    revision('..2026_12_02_01_00_00.1', ['a.test']);
    symlinkSync('..2026_12_02_01_00_00.1', join(dir, '..data'));
    symlinkSync('..data/config.yaml', join(dir, 'config.yaml'));
    const s = await serve(join(dir, 'config.yaml'), dir, ['proxy']);
    expect(await status(s, `b.test:${echo.port}`)).toBe(403);

    const n = s.logs().length;
    revision('..2026_12_02_01_05_00.2', ['b.test']);
    symlinkSync('..2026_12_02_01_05_00.2', join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    rmSync(join(dir, '..2026_12_02_01_00_00.1'), { recursive: true });
    expect(await s.waitLog((l) => l.msg === 'configuration reloaded', n)).toMatchObject({ trigger: 'watch' });
    expect(await status(s, `b.test:${echo.port}`)).toBe(200);
    expect(await status(s, `a.test:${echo.port}`)).toBe(403);

    // And again: the watch follows the new revision.
    const m = s.logs().length;
    revision('..2026_12_02_01_10_00.3', ['c.test']);
    symlinkSync('..2026_12_02_01_10_00.3', join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    await s.waitLog((l) => l.msg === 'configuration reloaded', m);
    expect(await status(s, `c.test:${echo.port}`)).toBe(200);
  });

  it('reloads when an editor renames a new file over the config, and when a range file changes', async () => {
    const echo = await echoServer();
    const { dir, file } = writeConfig({});
    writeFileSync(join(dir, 'ranges.txt'), '# nothing yet\n');
    const withRanges = (hosts: string[]) => ({
      ...config(echo.port, hosts, { reload: { watch: true } }),
      policy: {
        rules: [
          { name: 'chat', hosts, ports: [echo.port] },
          { name: 'ranges', ip_ranges: ['file:ranges.txt'], ports: [echo.port] },
        ],
        allow_ranges: ['127.0.0.1/32'],
      },
    });
    writeFileSync(file, stringify(withRanges(['a.test'])));
    const s = await serve(file, dir, ['proxy']);
    expect(await status(s, `b.test:${echo.port}`)).toBe(403);
    expect(await status(s, `127.0.0.1:${echo.port}`)).toBe(403);

    let n = s.logs().length;
    s.rewrite(withRanges(['b.test'])); // a new file renamed over the old one
    expect(await s.waitLog((l) => l.msg === 'configuration reloaded', n)).toMatchObject({ trigger: 'watch' });
    expect(await status(s, `b.test:${echo.port}`)).toBe(200);

    n = s.logs().length;
    writeFileSync(join(dir, 'ranges.txt'), '127.0.0.1/32\n'); // written in place
    await s.waitLog((l) => l.msg === 'configuration reloaded', n);
    expect(await status(s, `127.0.0.1:${echo.port}`)).toBe(200);

    // A config naming a range file that is not there yet is rejected; the file's arrival reloads it.
    n = s.logs().length;
    const later = withRanges(['b.test']);
    later.policy.rules[1]!.ip_ranges = ['file:later.txt'];
    s.rewrite(later);
    expect((await s.waitLog((l) => String(l.msg).startsWith('reload rejected'), n)).problems).toEqual([expect.stringContaining('later.txt')]);
    n = s.logs().length;
    writeFileSync(join(dir, 'later.txt'), '# empty\n');
    await s.waitLog((l) => l.msg === 'configuration reloaded', n);
    expect(await status(s, `127.0.0.1:${echo.port}`)).toBe(403);
  });

  it('with recheck_tunnels closes only the tunnels the new policy denies (policy_changed)', async () => {
    const echo = await echoServer();
    const { dir, file } = writeConfig({
      ...config(echo.port, ['a.test', 'b.test'], { reload: { recheck_tunnels: true }, shutdown: { drain_timeout: 0 } }),
      listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0' },
    });
    const s = await serve(file, dir, ['proxy', 'socks']);
    const a = (await connectTunnel(s.port('proxy'), `a.test:${echo.port}`)).client;
    const b = (await connectTunnel(s.port('proxy'), `b.test:${echo.port}`)).client;
    const aSocks = (await socksTunnel(s.port('socks'), 'a.test', echo.port)).client;
    const bSocks = (await socksTunnel(s.port('socks'), 'b.test', echo.port)).client;
    for (const t of [a, b, aSocks, bSocks]) expect(await roundTrip(t, 'hi')).toBe(true);

    s.rewrite({ ...config(echo.port, ['b.test'], { reload: { recheck_tunnels: true }, shutdown: { drain_timeout: 0 } }), listen: { proxy: '127.0.0.1:0', socks: '127.0.0.1:0' } });
    const n = s.logs().length;
    await reload(s);
    expect(await s.waitLog((l) => l.msg === 'open tunnels judged by the new policy', n)).toMatchObject({ tunnels: 4, closed: 2 });
    await a.waitClosed();
    await aSocks.waitClosed();
    expect(await roundTrip(b, 'still open')).toBe(true);
    expect(await roundTrip(bSocks, 'still open')).toBe(true);

    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
    const records = s.audit();
    const denied = records.filter((r) => r.event === 'egress.denied');
    expect(denied).toHaveLength(2);
    for (const r of denied) expect(r).toMatchObject({ dest_host: 'a.test', dest_ip: '127.0.0.1', reason: 'host_not_allowed', enforced: true });
    const closed = records.filter((r) => r.event === 'egress.closed');
    expect(closed.filter((r) => r.close_reason === 'policy_changed').map((r) => r.dest_host)).toEqual(['a.test', 'a.test']);
    expect(closed.filter((r) => r.close_reason === 'shutdown').map((r) => r.dest_host)).toEqual(['b.test', 'b.test']);
  });

  it('rebinds a moved listener, stops a removed one, starts an added one, keeps unchanged ones and every open tunnel', async () => {
    const echo = await echoServer();
    const listen = { proxy: '127.0.0.1:0', socks: '127.0.0.1:0', admin: '127.0.0.1:0', forwards: [{ name: 'f1', listen: '127.0.0.1:0', to: `a.test:${echo.port}` }] };
    const { dir, file } = writeConfig({ ...config(echo.port, ['a.test']), listen });
    const s = await serve(file, dir, ['proxy', 'socks', 'f1', 'admin']);
    const oldAdmin = s.port('admin');
    const oldProxy = s.port('proxy');
    const socksPort = s.port('socks');
    const f1 = s.port('f1');
    const viaProxy = (await connectTunnel(oldProxy, `a.test:${echo.port}`)).client;
    const viaSocks = (await socksTunnel(socksPort, 'a.test', echo.port)).client;
    const viaF1 = await RawClient.connect(f1);

    // proxy moves to another loopback address, socks goes, f2 comes, f1 stays.
    const moved = {
      proxy: '127.0.0.2:0',
      admin: '127.0.0.2:0',
      forwards: [listen.forwards[0]!, { name: 'f2', listen: '127.0.0.1:0', to: `a.test:${echo.port}` }],
    };
    s.rewrite({ ...config(echo.port, ['a.test']), listen: moved });
    let n = s.logs().length;
    expect((await reload(s)).msg).toBe('configuration reloaded');
    const newProxy = await s.waitLog((l) => l.msg === 'listening' && l.listener === 'proxy', n);
    expect(newProxy.address).toMatch(/^127\.0\.0\.2:/);
    await s.waitLog((l) => l.msg === 'listening' && l.listener === 'f2', n);
    expect(s.logs().slice(n).some((l) => l.msg === 'listening' && l.listener === 'f1')).toBe(false);

    const newAdmin = await s.waitLog((l) => l.msg === 'listening' && l.listener === 'admin', n);
    expect(newAdmin.address).toMatch(/^127\.0\.0\.2:/);
    expect((await fetch(`http://127.0.0.2:${s.port('admin')}/readyz`)).status).toBe(200);
    expect(await refused(oldAdmin)).toBe(true);
    expect(await refused(oldProxy)).toBe(true);
    expect(await refused(socksPort)).toBe(true);
    const { client: fresh, status } = await (async () => {
      const c = await RawClient.connect(s.port('proxy'), '127.0.0.2');
      c.write(`CONNECT a.test:${echo.port} HTTP/1.1\r\n\r\n`);
      return { client: c, status: (await c.head()).status };
    })();
    expect(status).toBe(200);
    expect(await roundTrip(fresh, 'new address')).toBe(true);
    const viaF2 = await RawClient.connect(s.port('f2'));
    expect(await roundTrip(viaF2, 'added')).toBe(true);
    const again = await RawClient.connect(f1);
    expect(await roundTrip(again, 'unchanged')).toBe(true);
    for (const t of [viaProxy, viaSocks, viaF1]) expect(await roundTrip(t, 'kept')).toBe(true);

    // A new address that cannot be bound: the listener stays where it was.
    const squatter = await startTcpServer('127.0.0.1');
    defer(() => squatter.close());
    s.rewrite({ ...config(echo.port, ['a.test']), listen: { ...moved, proxy: `127.0.0.1:${squatter.port}` } });
    n = s.logs().length;
    expect((await reload(s)).problems).toEqual([expect.stringContaining('EADDRINUSE')]);
    expect(s.logs().slice(n).find((l) => l.msg.startsWith('cannot bind'))).toMatchObject({ listener: 'proxy' });
    const stayed = await RawClient.connect(s.port('proxy'), '127.0.0.2');
    stayed.write(`CONNECT a.test:${echo.port} HTTP/1.1\r\n\r\n`);
    expect((await stayed.head()).status).toBe(200);
    stayed.destroy();
  });

  it('moves the audit log to a new file without losing or repeating a record', async () => {
    const echo = await echoServer();
    const { dir, file } = writeConfig(config(echo.port, ['a.test']));
    const s = await serve(file, dir, ['proxy']);
    for (let i = 0; i < 50; i++) expect(await status(s, `denied-${i}.test:${echo.port}`)).toBe(403);
    const tunnel = (await connectTunnel(s.port('proxy'), `a.test:${echo.port}`)).client;
    s.rewrite(config(echo.port, ['a.test'], { audit: { file: 'moved/audit.log' } }));
    // Denials race the reload: each lands in exactly one of the files.
    const during = Array.from({ length: 50 }, (_, i) => status(s, `during-${i}.test:${echo.port}`));
    expect((await reload(s)).msg).toBe('configuration reloaded');
    await Promise.all(during);
    for (let i = 0; i < 50; i++) expect(await status(s, `after-${i}.test:${echo.port}`)).toBe(403);
    tunnel.destroy();
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);

    const before = s.audit();
    const after = s.audit('moved/audit.log');
    const hosts = (rs: typeof before) => rs.filter((r) => r.event === 'egress.denied').map((r) => String(r.dest_host));
    expect(hosts(before).filter((h) => h.startsWith('denied-'))).toHaveLength(50);
    expect(hosts(after).filter((h) => h.startsWith('after-'))).toHaveLength(50);
    const all = [...hosts(before), ...hosts(after)];
    expect(new Set(all).size).toBe(all.length);
    expect(all.filter((h) => h.startsWith('during-'))).toHaveLength(50);
    // The tunnel opened before the switch closes in the new file.
    expect(before.find((r) => r.event === 'egress.allowed')).toMatchObject({ dest_host: 'a.test' });
    expect(after.find((r) => r.event === 'egress.closed')).toMatchObject({ dest_host: 'a.test', close_reason: 'client_closed' });
  });
});
