import net from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { keepAliveSettings } from '../../src/config/schema.js';
import { ConfigError, type ConfigIssue } from '../../src/errors.js';
import { describeKeepAlive, keepAliveWarning, silentPeerDropMs, type KeepAlive } from '../../src/net/keepalive.js';
import { getTcpOptions, keepaliveMode, nativeUnavailableReason } from '../../src/native/sockopt.js';
import type { Audit } from '../../src/audit.js';
import { Admission } from '../../src/inbound/admission.js';
import { Metrics } from '../../src/ops/metrics.js';
import { parseProm } from '../integration/prom.js';
import { eventually } from '../helpers.js';

/** `keepalive:` and `timeouts.user_timeout`: parsing, the arithmetic of the log line, the forced fallback. */

const HEAD = 'listen: { proxy: "127.0.0.1:3128" }\npolicy: { rules: [{ name: r, hosts: [a.example.com], ports: [443] }] }\n';
const parse = (extra: string) => parseConfig(HEAD + extra, '/tmp/wa-egress-keepalive.yaml');
function issues(extra: string): ConfigIssue[] {
  try {
    parse(extra);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).issues;
  }
  throw new Error('expected a ConfigError');
}

describe('keepalive config', () => {
  it('the plain form is the idle time, with interval 10 s and count 6', () => {
    expect(parse('keepalive: 45s\n').keepalive).toEqual({ idle: 45_000, interval: 10_000, count: 6 });
    expect(parse('').keepalive).toEqual({ idle: 30_000, interval: 10_000, count: 6 });
    expect(parse('keepalive: 0\n').keepalive.idle).toBe(0);
  });

  it('the object form, with defaults for what it leaves out; user_timeout', () => {
    const c = parse('keepalive: { idle: 2s, interval: 3s, count: 6 }\ntimeouts: { user_timeout: 20s }\n');
    expect(c.keepalive).toEqual({ idle: 2000, interval: 3000, count: 6 });
    expect(keepAliveSettings(c)).toEqual({ idleMs: 2000, intervalMs: 3000, count: 6, userTimeoutMs: 20_000 });
    expect(parse('keepalive: { count: 3 }\n').keepalive).toEqual({ idle: 30_000, interval: 10_000, count: 3 });
    expect(parse('').timeouts.user_timeout).toBe(0);
  });

  it.each([
    ['keepalive: 500ms', 'keepalive', /at least 1s \(or 0: off\)/],
    ['keepalive: 999', 'keepalive', /999 has no unit: write 999s/],
    ['keepalive: { idle: 200ms }', 'keepalive.idle', /at least 1s/],
    ['keepalive: { interval: 0 }', 'keepalive.interval', /at least 1s/],
    ['keepalive: { interval: 500ms }', 'keepalive.interval', /at least 1s/],
    ['keepalive: { interval: 1500ms }', 'keepalive.interval', /whole seconds/],
    ['keepalive: { interval: 10h }', 'keepalive.interval', /at most 32767s/],
    ['keepalive: { count: 0 }', 'keepalive.count', /at least 1/],
    ['keepalive: { count: 200 }', 'keepalive.count', /at most 127/],
    ['keepalive: { count: 2.5 }', 'keepalive.count', /whole number/],
    ['keepalive: { count: "6" }', 'keepalive.count', /whole number of probes/],
    ['keepalive: { idle: 30s, probes: 3 }', 'keepalive.probes', /unknown key/],
    ['keepalive: [30s]', 'keepalive', /expected a duration such as 30s, or \{idle, interval, count\}/],
    ['timeouts: { user_timeout: 300ms }', 'timeouts.user_timeout', /at least 1s \(or 0: off\)/],
    ['timeouts: { user_timeout: soon }', 'timeouts.user_timeout', /expected a duration/],
  ])('%s: an error at %s', (text, path, message) => {
    const found = issues(`${text}\n`);
    expect(found, JSON.stringify(found)).toHaveLength(1);
    expect(found[0]!.path).toBe(path);
    expect(found[0]!.message).toMatch(message);
    expect(found[0]!.line).toBe(3);
  });
});

describe('a silent peer is dropped after …', () => {
  const ka = (idleMs: number, intervalMs: number, count: number, userTimeoutMs = 0): KeepAlive => ({ idleMs, intervalMs, count, userTimeoutMs });

  it('idle + interval × count with the addon; idle + 1 s × 10 with Node', () => {
    expect(silentPeerDropMs(ka(2000, 3000, 6), 'native')).toBe(20_000);
    expect(silentPeerDropMs(ka(2000, 3000, 6), 'node')).toBe(12_000);
    expect(silentPeerDropMs(ka(30_000, 10_000, 6), 'native')).toBe(90_000);
    expect(silentPeerDropMs(ka(0, 10_000, 6), 'native')).toBe(0);
    expect(describeKeepAlive(ka(2000, 3000, 6), 'native')).toBe('a silent peer is dropped after 20 s (idle 2 s + 6 probes × 3 s)');
    expect(describeKeepAlive(ka(2000, 3000, 6), 'node')).toBe("a silent peer is dropped after 12 s (idle 2 s + 10 probes × 1 s: Node's keepalive)");
    expect(describeKeepAlive(ka(0, 3000, 6), 'native')).toMatch(/^keepalive off/);
  });

  it('with TCP_USER_TIMEOUT: the first probe after user_timeout, whatever the count', () => {
    // Probes at 30, 40, 50 …: the kernel checks at each one after the first.
    expect(silentPeerDropMs(ka(30_000, 10_000, 6, 20_000), 'native')).toBe(40_000);
    expect(silentPeerDropMs(ka(30_000, 10_000, 6, 45_000), 'native')).toBe(50_000);
    expect(silentPeerDropMs(ka(30_000, 10_000, 6, 200_000), 'native')).toBe(200_000);
    expect(describeKeepAlive(ka(30_000, 10_000, 6, 45_000), 'native')).toMatch(
      /^a silent peer is dropped after 50 s .*; unacknowledged data is given up after 45 s \(timeouts\.user_timeout\)$/,
    );
  });

  it('no warning with the addon, or with nothing to apply', () => {
    expect(keepAliveWarning(ka(30_000, 10_000, 6), 'native')).toBeUndefined();
    expect(keepAliveWarning(ka(0, 10_000, 6), 'node')).toBeUndefined();
    expect(keepAliveWarning(ka(30_000, 10_000, 6), 'node')).toMatch(/falling back to Node's keepalive.*after 40 s, not 90 s/);
  });
});

describe('the forced fallback (WA_EGRESS_NO_NATIVE=1)', () => {
  afterEach(() => {
    vi.unstubAllEnvs();
    vi.resetModules();
  });

  it('says so, and the sweep uses Node\'s keepalive (1 s × 10, read back where the addon is built)', async () => {
    vi.stubEnv('WA_EGRESS_NO_NATIVE', '1');
    vi.resetModules();
    const fresh = await import('../../src/native/sockopt.js');
    const sweep = await import('../../src/net/keepalive.js');
    expect(fresh.keepaliveMode()).toBe('node');
    expect(fresh.nativeUnavailableReason()).toBe('WA_EGRESS_NO_NATIVE=1');
    expect(() => fresh.getTcpOptions(new net.Socket())).toThrow(/native socket options unavailable: WA_EGRESS_NO_NATIVE=1/);

    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const socket = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    sweep.keepAliveSoon(socket, { idleMs: 4000, intervalMs: 3000, count: 6, userTimeoutMs: 9000 });
    // This file's own instance of the wrapper was loaded before the variable was set.
    if (keepaliveMode() === 'native') {
      const o = await eventually(() => {
        const got = getTcpOptions(socket);
        return got.keepalive && got;
      });
      expect(o).toMatchObject({ interval: 1, count: 10, userTimeout: 0 });
      expect(o.idle).toBeGreaterThanOrEqual(3);
    } else {
      console.warn(`keepalive.test.ts: fallback options not read back: ${nativeUnavailableReason()}`);
    }
    socket.destroy();
    await new Promise((r) => server.close(r));
  });
});

describe('/metrics', () => {
  it('wa_egress_keepalive_mode says which keepalive is in force', async () => {
    const config = parse('');
    const audit = { stats: () => ({ written: 0, waitingLines: 0, waitingBytes: 0, dropped: 0 }), writable: true } as unknown as Audit;
    const m = new Metrics({ gateway: { config, tunnels: new Set(), admission: new Admission(() => config.limits), openConnections: () => [] }, audit });
    try {
      const p = parseProm(await m.text());
      const mode = keepaliveMode();
      expect(p.get(`wa_egress_keepalive_mode{mode="${mode}"}`)).toBe(1);
      expect(p.get(`wa_egress_keepalive_mode{mode="${mode === 'native' ? 'node' : 'native'}"}`)).toBe(0);
    } finally {
      m.close();
    }
  });
});
