import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { nativeUnavailableReason } from '../../src/native/sockopt.js';
import {
  buildNetwork,
  curl as runCurl,
  GW_IP,
  has,
  inNs,
  makeCertificate,
  must,
  OTHER_IP,
  raw as rawClient,
  record as waitRecord,
  SERVER_IP,
  SERVERS,
  sh,
  teardown,
  type Proc,
} from './netns-fixture.js';

/**
 * The transparent gateway with TPROXY (`listen.transparent_mode: tproxy`)
 * in the namespaces of netns-fixture.ts: the gateway namespace marks and
 * TPROXYs (nftables, else iptables' TPROXY target) every TCP connection
 * from the client to the gateway's IP_TRANSPARENT listener, and a policy
 * route delivers the marked packets locally. The original destination is
 * the accepted socket's local address; nothing is NATed.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const ns = { client: `wap${process.pid}c`, gateway: `wap${process.pid}g`, server: `wap${process.pid}s` };

const NFT_RULES = (port: number) =>
  `table ip wa_tproxy { chain pre { type filter hook prerouting priority mangle; iifname "gc" meta l4proto tcp tproxy to :${port} meta mark set 1 accept; }; }`;
const nft = (netns: string, port: number) => sh('ip', 'netns', 'exec', netns, 'sh', '-c', `printf '%s' '${NFT_RULES(port)}' | nft -f -`);
const iptables = (netns: string, port: number) =>
  sh('ip', 'netns', 'exec', netns, 'iptables', '-w', '-t', 'mangle', '-A', 'PREROUTING', '-i', 'gc', '-p', 'tcp', '-j', 'TPROXY', '--on-port', String(port), '--tproxy-mark', '0x1/0x1');

/** How TPROXY rules are made here ('nft' or 'iptables'), or why this test cannot run. */
function probe(): { how?: 'nft' | 'iptables'; why?: string } {
  if (process.platform !== 'linux') return { why: 'not Linux' };
  if (process.getuid?.() !== 0) return { why: 'needs root for ip netns and IP_TRANSPARENT' };
  const native = nativeUnavailableReason();
  if (native) return { why: `the native addon (IP_TRANSPARENT listener) is unavailable: ${native}` };
  if (!has('curl', '--version')) return { why: 'curl not found' };
  if (!has('openssl', 'version')) return { why: 'openssl not found (for the certificate)' };
  const p = `wap${process.pid}p`;
  const made = sh('ip', 'netns', 'add', p);
  if (!made.ok) return { why: `ip netns unavailable: ${made.out.trim()}` };
  try {
    const t = nft(p, 1);
    if (t.ok) return { how: 'nft' };
    const i = iptables(p, 1);
    if (i.ok) return { how: 'iptables' };
    return { why: `no TPROXY in a namespace (nft tproxy expression / xt_TPROXY): nft: ${t.out.trim()}; iptables: ${i.out.trim()}` };
  } finally {
    sh('ip', 'netns', 'del', p);
  }
}

const { how, why } = probe();
if (why) console.warn(`transparent-tproxy.test.ts skipped: ${why}`);

let dir: string;
let auditFile: string;
let gateway: Proc;
let gwPort: number;
const record = (match: Record<string, unknown>) => waitRecord(auditFile, match);
const curl = (...args: string[]) => runCurl(ns, dir, ...args);
const raw = (host: string, port: number) => rawClient(ns, host, port);

beforeAll(async () => {
  if (why) return;
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-tproxy-'));
  makeCertificate(dir);
  buildNetwork(ns);
  const servers = inNs(ns.server, [process.execPath, '-e', SERVERS, join(dir, 'key.pem'), join(dir, 'cert.pem')]);
  await servers.waitFor(/^READY$/, 10_000);

  auditFile = join(dir, 'audit.log');
  const config = join(dir, 'config.yaml');
  writeFileSync(
    config,
    stringify({
      listen: { transparent: '0.0.0.0:0', transparent_mode: 'tproxy' },
      policy: {
        rules: [
          { name: 'tls', hosts: ['allowed.test'], ports: [443] },
          { name: 'chat', ip_ranges: [`${SERVER_IP}/32`], ports: [5222] },
        ],
        allow_ranges: ['10.233.2.0/24'],
      },
      dns: { hosts: { 'allowed.test': SERVER_IP }, servers: ['127.0.0.1:9'] },
      timeouts: { handshake: '2s' },
      audit: { file: auditFile },
    }),
  );
  gateway = inNs(ns.gateway, [process.execPath, CLI, 'serve', '--config', config]);
  const listening = JSON.parse(await gateway.waitFor(/"msg":"listening"/, 10_000)) as { address: string };
  gwPort = Number(listening.address.split(':').at(-1));
  // Marked packets are delivered locally, to the transparent socket TPROXY picked.
  must('ip', '-n', ns.gateway, 'rule', 'add', 'fwmark', '1', 'lookup', '100');
  must('ip', '-n', ns.gateway, 'route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '100');
  const r = how === 'nft' ? nft(ns.gateway, gwPort) : iptables(ns.gateway, gwPort);
  if (!r.ok) throw new Error(`TPROXY rule: ${r.out}`);
}, 60_000);

afterAll(() => {
  if (why) return;
  teardown(ns);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!!why)(`transparent gateway with TPROXY in network namespaces (${how})`, () => {
  it('TLS with an allowed SNI is tunnelled to the original destination (the local address)', async () => {
    const r = curl('--resolve', `allowed.test:443:${SERVER_IP}`, 'https://allowed.test/');
    expect(r.out).toBe('server-ok');
    const allowed = await record({ event: 'egress.allowed', dest_host: 'allowed.test' });
    expect(allowed).toMatchObject({ proto: 'transparent', listener: 'transparent', dest_port: 443, dest_ip: SERVER_IP, rule: 'tls' });
    const closed = await record({ event: 'egress.closed', id: allowed.id });
    expect(closed.bytes_up as number).toBeGreaterThan(200);
  });

  it('TLS with a denied SNI is closed with host_not_allowed', async () => {
    const r = curl('--resolve', `denied.test:443:${SERVER_IP}`, 'https://denied.test/');
    expect(r.ok).toBe(false);
    expect(r.out).not.toContain('server-ok');
    const denied = await record({ event: 'egress.denied', dest_host: 'denied.test' });
    expect(denied).toMatchObject({ proto: 'transparent', reason: 'host_not_allowed', dest_ip: SERVER_IP, dest_port: 443 });
  });

  it('raw TCP to an allowed address is tunnelled', async () => {
    expect(await raw(SERVER_IP, 5222)).toContain('ECHO ping-through-gateway');
    const allowed = await record({ event: 'egress.allowed', dest_port: 5222 });
    expect(allowed).toMatchObject({ proto: 'transparent', dest_host: SERVER_IP, dest_ip: SERVER_IP, rule: 'chat' });
  });

  it('raw TCP to a denied address is closed with ip_not_allowed', async () => {
    expect(await raw(OTHER_IP, 5222)).toContain('CLOSED no-data');
    const denied = await record({ event: 'egress.denied', dest_ip: OTHER_IP });
    expect(denied).toMatchObject({ proto: 'transparent', reason: 'ip_not_allowed', dest_port: 5222 });
  });

  it("a connection to the gateway's own listener address is a loop", async () => {
    expect(await raw(GW_IP, gwPort)).toContain('CLOSED no-data');
    const loop = await record({ event: 'egress.denied', reason: 'loop' });
    expect(loop).toMatchObject({ proto: 'transparent', enforced: true });
  });
});

describe('transparent_mode: tproxy outside namespaces', () => {
  const asNobody = process.getuid?.() === 0 && has('setpriv', '--version') && !nativeUnavailableReason();
  if (!asNobody) console.warn('transparent-tproxy.test.ts: the CAP_NET_ADMIN test is skipped: needs root, setpriv and the native addon');

  function config(d: string, listen: Record<string, string>): string {
    const file = join(d, 'config.yaml');
    writeFileSync(file, stringify({ listen, policy: { rules: [] }, dns: { servers: ['127.0.0.1:9'] }, audit: { file: join(d, 'a.log') } }));
    return file;
  }

  it.skipIf(!asNobody)('without CAP_NET_ADMIN the gateway does not start, and says what it needs', () => {
    const d = mkdtempSync(join(tmpdir(), 'wa-egress-tproxy-'));
    try {
      chmodSync(d, 0o777);
      const file = config(d, { transparent: '127.0.0.1:0', transparent_mode: 'tproxy' });
      chmodSync(file, 0o644);
      const r = spawnSync('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', process.execPath, CLI, 'serve', '--config', file], {
        encoding: 'utf8',
        env: { PATH: process.env.PATH },
        timeout: 20_000,
      });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/listen\.transparent.*IP_TRANSPARENT.*needs CAP_NET_ADMIN.*EPERM/);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('a mode without listen.transparent is a config error naming the key', () => {
    const d = mkdtempSync(join(tmpdir(), 'wa-egress-tproxy-'));
    try {
      const r = spawnSync(process.execPath, [CLI, 'config', 'check', config(d, { proxy: '127.0.0.1:0', transparent_mode: 'tproxy' })], { encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 20_000 });
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('listen.transparent_mode: tproxy is the mode of listen.transparent, which is not set');
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
