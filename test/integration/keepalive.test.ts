import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { getTcpOptions, keepaliveMode, nativeUnavailableReason, originalDestination, setTcpOptions, SockoptError } from '../../src/native/sockopt.js';
import type { Tunnel } from '../../src/tunnel.js';
import { cleanEnv, eventually, RawClient, startGateway, startTcpServer } from '../helpers.js';

/**
 * The native addon on real tunnels: keepalive timing and TCP_USER_TIMEOUT
 * read back with getsockopt from the gateway's own sockets, both legs, IPv4
 * and IPv6; SO_ORIGINAL_DST's answer on a connection nobody redirected; and
 * the CLI with the addon forced off (WA_EGRESS_NO_NATIVE=1).
 */

const run = promisify(execFile);
const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const native = keepaliveMode() === 'native';
// CI builds the addon (.ci/run sets WA_EGRESS_REQUIRE_NATIVE): there a missing addon fails instead of skipping.
const required = process.env.WA_EGRESS_REQUIRE_NATIVE === '1';
if (!native && !required) console.warn(`keepalive.test.ts: native addon tests skipped: ${nativeUnavailableReason()}`);

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

describe.skipIf(!native && !required)('native socket options', () => {
  it('the addon is loaded', () => {
    expect(nativeUnavailableReason()).toBeUndefined();
    expect(keepaliveMode()).toBe('native');
  });

  it.each([
    ['IPv4', '127.0.0.1', 'g.whatsapp.net'],
    ['IPv6', '::1', 'v6.whatsapp.net'],
  ])('sets idle, interval, count and TCP_USER_TIMEOUT on both legs of a tunnel (%s)', async (_family, ip, host) => {
    const echo = await startTcpServer(ip);
    const gw = await startGateway({
      listen: { proxy: ip.includes(':') ? `[${ip}]:0` : `${ip}:0` },
      policy: { rules: [{ name: 'chat', hosts: [host], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32', '::1/128'] },
      dns: { hosts: { [host]: ip }, servers: ['127.0.0.1:9'] },
      keepalive: { idle: '8s', interval: '3s', count: 4 },
      timeouts: { user_timeout: '25s' },
    });
    cleanup.push(() => echo.close(), () => gw.close());
    const client = await RawClient.connect(gw.port, ip);
    cleanup.push(async () => client.destroy());
    client.write(`CONNECT ${host}:${echo.port} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    expect((await client.head()).status).toBe(200);
    const tunnel = await eventually(() => [...gw.gw.tunnels][0] as Tunnel | undefined);
    expect(tunnel.client.remoteFamily).toBe(ip.includes(':') ? 'IPv6' : 'IPv4');
    // Applied by the keepalive sweep, within a second or so.
    const legs = await eventually(() => {
      const both = [getTcpOptions(tunnel.client), getTcpOptions(tunnel.upstream)];
      return both.every((o) => o.keepalive) && both;
    });
    for (const o of legs) {
      // The idle time is drawn between 3/4 of it and all of it, in whole seconds.
      expect(o.idle).toBeGreaterThanOrEqual(6);
      expect(o.idle).toBeLessThanOrEqual(8);
      expect(o).toMatchObject({ keepalive: true, interval: 3, count: 4, userTimeout: 25_000 });
    }
    client.write('still a tunnel');
    expect((await client.bytes(14)).toString()).toBe('still a tunnel');
  });

  it('leaves TCP_USER_TIMEOUT at the kernel default when it is 0, and keepalive off when idle is 0', async () => {
    const echo = await startTcpServer();
    const gw = await startGateway({
      policy: { rules: [{ name: 'chat', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' }, servers: ['127.0.0.1:9'] },
      keepalive: { idle: 0 },
    });
    cleanup.push(() => echo.close(), () => gw.close());
    const client = await RawClient.connect(gw.port);
    cleanup.push(async () => client.destroy());
    client.write(`CONNECT g.whatsapp.net:${echo.port} HTTP/1.1\r\n\r\n`);
    expect((await client.head()).status).toBe(200);
    const tunnel = await eventually(() => [...gw.gw.tunnels][0] as Tunnel | undefined);
    // Nothing is queued for the sweep; proven by a round trip, read at once.
    client.write('x');
    await client.bytes(1);
    for (const s of [tunnel.client, tunnel.upstream]) expect(getTcpOptions(s)).toMatchObject({ keepalive: false, userTimeout: 0 });
  });

  it('SO_ORIGINAL_DST: a connection that was not redirected says so, v4 and v6', async () => {
    for (const ip of ['127.0.0.1', '::1']) {
      const accepted: net.Socket[] = [];
      const server = net.createServer((s) => accepted.push(s));
      await new Promise<void>((r) => server.listen(0, ip, () => r()));
      const c = net.connect((server.address() as net.AddressInfo).port, ip);
      await eventually(() => accepted.length > 0);
      let err: unknown;
      try {
        originalDestination(accepted[0]!);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SockoptError);
      expect((err as SockoptError).code).toBe('ENOTREDIRECTED');
      c.destroy();
      accepted[0]!.destroy();
      await new Promise((r) => server.close(r));
    }
  });

  it('a value the kernel refuses is a SockoptError with the errno name', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const c = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await new Promise((r) => c.once('connect', r));
    let err: unknown;
    try {
      setTcpOptions(c, { idleSec: 5, intervalSec: 5, count: 500, userTimeoutMs: 0 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SockoptError);
    expect(err).toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/TCP_KEEPCNT/) });
    c.destroy();
    await new Promise((r) => server.close(r));
  });

  it('a socket without a descriptor is an ENOFD error, not a crash', () => {
    let err: unknown;
    try {
      getTcpOptions(new net.Socket());
    } catch (e) {
      err = e;
    }
    expect((err as SockoptError).code).toBe('ENOFD');
  });
});

describe('a leg that times out', () => {
  // What the kernel reports when keepalive or TCP_USER_TIMEOUT gives up on a
  // peer; test/long/keepalive-blip.test.ts makes a real one in namespaces.
  it.each([
    ['upstream', 'upstream_timeout'],
    ['client', 'client_timeout'],
  ] as const)('ETIMEDOUT on the %s leg closes the tunnel with %s', async (leg, reason) => {
    const echo = await startTcpServer();
    const gw = await startGateway({
      policy: { rules: [{ name: 'chat', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' }, servers: ['127.0.0.1:9'] },
    });
    cleanup.push(() => echo.close(), () => gw.close());
    const client = await RawClient.connect(gw.port);
    cleanup.push(async () => client.destroy());
    client.write(`CONNECT g.whatsapp.net:${echo.port} HTTP/1.1\r\n\r\n`);
    expect((await client.head()).status).toBe(200);
    const tunnel = await eventually(() => [...gw.gw.tunnels][0] as Tunnel | undefined);
    tunnel[leg].destroy(Object.assign(new Error('read ETIMEDOUT'), { code: 'ETIMEDOUT', errno: -110, syscall: 'read' }));
    await client.waitClosed();
    expect(await eventually(() => gw.audit().find((r) => r.event === 'egress.closed'))).toMatchObject({ close_reason: reason });
  });
});

describe('without the addon (WA_EGRESS_NO_NATIVE=1)', () => {
  const env = cleanEnv({ WA_EGRESS_NO_NATIVE: '1' });
  function configFile(extra: string): string {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-ka-'));
    const file = join(dir, 'config.yaml');
    const base = { listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'r', hosts: ['a.example'], ports: [443] }] }, dns: { servers: ['127.0.0.1:9'] }, audit: { file: 'audit.log' } };
    writeFileSync(file, `${stringify(base)}${extra}`);
    return file;
  }

  it('config check warns that interval, count and user_timeout are not applied, and still passes', async () => {
    const file = configFile('keepalive: { idle: 30s, interval: 10s, count: 6 }\ntimeouts: { user_timeout: 75s }\n');
    const { stdout, stderr } = await run(process.execPath, [CLI, 'config', 'check', file], { env });
    expect(stdout).toMatch(/OK/);
    expect(stderr).toMatch(/warning: native socket options unavailable \(WA_EGRESS_NO_NATIVE=1\)/);
    expect(stderr).toMatch(/10 probes 1 s apart: a silent peer is dropped after 40 s, not 80 s/);
    expect(stderr).toMatch(/timeouts\.user_timeout is not applied/);
  });

  it('serve logs one warning at start, and what a silent peer gets', async () => {
    const child = spawn(process.execPath, [CLI, 'serve', '--config', configFile('keepalive: { idle: 2s, interval: 3s, count: 6 }\n')], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    cleanup.push(async () => void child.kill('SIGKILL'));
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    await eventually(() => err.includes('"msg":"listening"'), 10_000);
    const lines = err.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: string; msg: string; keepalive_mode?: string });
    const warnings = lines.filter((l) => l.level === 'warn');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.msg).toMatch(/^native socket options unavailable \(WA_EGRESS_NO_NATIVE=1\); falling back to Node's keepalive/);
    expect(lines.find((l) => l.keepalive_mode === 'node' && l.level === 'info')?.msg).toBe(
      "a silent peer is dropped after 12 s (idle 2 s + 10 probes × 1 s: Node's keepalive)",
    );
  });

  it('config check has nothing to warn about when keepalive is off', async () => {
    const { stderr } = await run(process.execPath, [CLI, 'config', 'check', configFile('keepalive: 0\n')], { env });
    expect(stderr).toBe('');
  });

  it.skipIf(!native && !required)('config check does not warn when the addon is loaded', async () => {
    const { stderr } = await run(process.execPath, [CLI, 'config', 'check', configFile('keepalive: { idle: 30s, interval: 10s, count: 6 }\n')]);
    expect(stderr).toBe('');
  });
});
