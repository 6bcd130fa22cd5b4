import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { nativeUnavailableReason } from '../../src/native/sockopt.js';
import {
  buildNetwork,
  CLIENT_IP,
  curl as runCurl,
  GW_IP,
  has,
  inNs,
  type Proc,
  makeCertificate,
  must,
  OTHER_IP,
  raw as rawClient,
  record as waitRecord,
  SERVER_IP,
  SERVERS,
  sh,
  teardown,
} from './netns-fixture.js';

/**
 * The transparent gateway on a real network: client, gateway and server
 * network namespaces this test creates, joined by veth pairs
 * (10.233.1.0/24 client-gateway, 10.233.2.0/24 gateway-server; the
 * addresses exist only inside them). The client's default route is the
 * gateway, whose namespace REDIRECTs (nftables, else iptables) every TCP
 * connection arriving from the client to the gateway process
 * (`node dist/cli.js serve`, run with `ip netns exec`). The server
 * namespace has a TLS server on 443 and 8443 (an openssl-made certificate)
 * and an echo server on 5222, on 10.233.2.2 and 10.233.2.3. curl and a
 * raw TCP client in the client namespace connect to the servers' addresses
 * as if no gateway were there.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const ns = { client: `wat${process.pid}c`, gateway: `wat${process.pid}g`, server: `wat${process.pid}s` };

/** How REDIRECT rules are made here ('nft' or 'iptables'), or why this test cannot run. */
function probe(): { how?: 'nft' | 'iptables'; why?: string } {
  if (process.platform !== 'linux') return { why: 'not Linux' };
  if (process.getuid?.() !== 0) return { why: 'needs root for ip netns' };
  const native = nativeUnavailableReason();
  if (native) return { why: `the native addon (SO_ORIGINAL_DST) is unavailable: ${native}` };
  if (!has('curl', '--version')) return { why: 'curl not found' };
  if (!has('openssl', 'version')) return { why: 'openssl not found (for the certificate)' };
  const p = `wat${process.pid}p`;
  const made = sh('ip', 'netns', 'add', p);
  if (!made.ok) return { why: `ip netns unavailable: ${made.out.trim()}` };
  try {
    const table = sh('ip', 'netns', 'exec', p, 'sh', '-c', `printf '%s' '${NFT_RULES(1)}' | nft -f -`);
    if (table.ok) return { how: 'nft' };
    const ipt = sh('ip', 'netns', 'exec', p, 'iptables', '-w', '-t', 'nat', '-A', 'PREROUTING', '-i', 'lo', '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', '1');
    if (ipt.ok) return { how: 'iptables' };
    return { why: `no REDIRECT in a namespace: nft: ${table.out.trim()}; iptables: ${ipt.out.trim()}` };
  } finally {
    sh('ip', 'netns', 'del', p);
  }
}

function NFT_RULES(port: number): string {
  return `table ip wa_test { chain pre { type nat hook prerouting priority dstnat; iifname "gc" meta l4proto tcp redirect to :${port}; }; }`;
}

const { how, why } = probe();
if (why) console.warn(`transparent.test.ts skipped: ${why}`);

// TLS whose ClientHello goes out in two segments 300 ms apart; prints the server's answer.
const SPLIT = `
const fs = require('fs'), net = require('net'), tls = require('tls'), { Duplex } = require('stream');
const [host, ca] = process.argv.slice(1);
const raw = net.connect({ host, port: 443, noDelay: true });
let first = true;
const d = new Duplex({
  write(chunk, _enc, cb) {
    if (!first) return raw.write(chunk, cb);
    first = false;
    raw.write(chunk.subarray(0, 7));
    setTimeout(() => raw.write(chunk.subarray(7), cb), 300);
  },
  read() {},
});
raw.on('data', (c) => d.push(c)).on('end', () => d.push(null)).on('error', (e) => console.log('ERROR ' + e.code));
const t = tls.connect({ socket: d, servername: 'allowed.test', ca: fs.readFileSync(ca) }, () => t.write('GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'));
let got = '';
t.on('data', (x) => (got += x)).on('error', (e) => console.log('TLSERROR ' + e.code));
// The wrapped stream ends without a 'close' on the TLS socket: report at exit.
process.on('exit', () => console.log('GOT ' + got.split('\\r\\n').pop()));
`;

// Connect, send nothing, print what the server says.
const LISTEN = `
const net = require('net');
const [host, port] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) });
let got = '';
s.on('data', (d) => (got += d)).on('error', (e) => console.log('ERROR ' + e.code));
s.on('close', () => { console.log('GOT ' + got.trim()); process.exit(0); });
`;

let dir: string;
let auditFile: string;
let gateway: Proc;
let gwPort: number;

const record = (match: Record<string, unknown>, ms?: number) => waitRecord(auditFile, match, ms);
const curl = (...args: string[]) => runCurl(ns, dir, ...args);
const raw = (host: string, port: number) => rawClient(ns, host, port);

beforeAll(async () => {
  if (why) return;
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-transparent-'));
  makeCertificate(dir);
  buildNetwork(ns);

  const servers = inNs(ns.server, [process.execPath, '-e', SERVERS, join(dir, 'key.pem'), join(dir, 'cert.pem')]);
  await servers.waitFor(/^READY$/, 10_000);

  auditFile = join(dir, 'audit.log');
  const config = join(dir, 'config.yaml');
  writeFileSync(
    config,
    stringify({
      listen: { transparent: '0.0.0.0:0' },
      policy: {
        rules: [
          { name: 'tls', hosts: ['allowed.test'], ports: [443] },
          { name: 'chat', ip_ranges: [`${SERVER_IP}/32`], ports: [5222] },
          { name: 'strict', ip_ranges: [`${SERVER_IP}/32`], ports: [8443], require_sni: true },
          { name: 'banner', ip_ranges: [`${SERVER_IP}/32`], ports: [2525] },
          { name: 'byname', hosts: ['chat.test'], match_dns: true, ports: [5223] },
        ],
        allow_ranges: ['10.233.2.0/24'],
      },
      dns: { hosts: { 'allowed.test': SERVER_IP, 'chat.test': OTHER_IP }, servers: ['127.0.0.1:9'] },
      timeouts: { handshake: '2s' },
      audit: { file: auditFile },
    }),
  );
  gateway = inNs(ns.gateway, [process.execPath, CLI, 'serve', '--config', config]);
  const listening = JSON.parse(await gateway.waitFor(/"msg":"listening"/, 10_000)) as { address: string };
  gwPort = Number(listening.address.split(':').at(-1));
  // Every TCP connection from the client's side goes to the gateway's bound port.
  if (how === 'nft') must('ip', 'netns', 'exec', ns.gateway, 'sh', '-c', `printf '%s' '${NFT_RULES(gwPort)}' | nft -f -`);
  else must('ip', 'netns', 'exec', ns.gateway, 'iptables', '-w', '-t', 'nat', '-A', 'PREROUTING', '-i', 'gc', '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', String(gwPort));
}, 60_000);

afterAll(() => {
  if (why) return;
  teardown(ns);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!!why)(`transparent gateway in network namespaces (REDIRECT by ${how})`, () => {
  it('TLS with an allowed SNI is tunnelled to the original destination', async () => {
    const r = curl('--resolve', `allowed.test:443:${SERVER_IP}`, 'https://allowed.test/');
    expect(r.out).toBe('server-ok');
    const allowed = await record({ event: 'egress.allowed', dest_host: 'allowed.test' });
    expect(allowed).toMatchObject({ proto: 'transparent', listener: 'transparent', dest_port: 443, dest_ip: SERVER_IP, rule: 'tls' });
    expect(allowed.client).toMatch(new RegExp(`^${CLIENT_IP.replaceAll('.', '\\.')}:\\d+$`));
    const closed = await record({ event: 'egress.closed', id: allowed.id });
    expect(closed.bytes_up as number).toBeGreaterThan(200); // the ClientHello was forwarded, not swallowed
    expect(closed.bytes_down as number).toBeGreaterThan(0);
  });

  it('a ClientHello in two segments is read whole and forwarded intact (the handshake completes)', async () => {
    const p = inNs(ns.client, [process.execPath, '-e', SPLIT, SERVER_IP, join(dir, 'cert.pem')]);
    await p.waitFor(/^EXITED$/, 20_000);
    expect(p.lines).toContain('GOT server-ok');
    await record({ event: 'egress.allowed', dest_host: 'allowed.test', rule: 'tls' });
  });

  it('a protocol whose server speaks first is judged by address once timeouts.handshake passes', async () => {
    const p = inNs(ns.client, [process.execPath, '-e', LISTEN, SERVER_IP, '2525']);
    await p.waitFor(/^EXITED$/, 20_000);
    expect(p.lines).toContain('GOT 220 banner');
    await record({ event: 'egress.allowed', dest_port: 2525, rule: 'banner', dest_host: SERVER_IP });
  });

  it('TLS with a denied SNI is closed, and the record names the SNI and the address', async () => {
    const r = curl('--resolve', `denied.test:443:${SERVER_IP}`, 'https://denied.test/');
    expect(r.ok).toBe(false);
    expect(r.out).not.toContain('server-ok');
    const denied = await record({ event: 'egress.denied', dest_host: 'denied.test' });
    expect(denied).toMatchObject({ proto: 'transparent', reason: 'host_not_allowed', dest_ip: SERVER_IP, dest_port: 443, enforced: true });
  });

  it('TLS without SNI to a require_sni rule is refused with sni_required', async () => {
    // curl sends no SNI to an IP address.
    const r = curl(`https://${SERVER_IP}:8443/`);
    expect(r.ok).toBe(false);
    const denied = await record({ event: 'egress.denied', dest_port: 8443 });
    expect(denied).toMatchObject({ proto: 'transparent', reason: 'sni_required', rule: 'strict', dest_host: SERVER_IP, dest_ip: SERVER_IP });
  });

  it('raw TCP to an allowed address is tunnelled', async () => {
    const lines = await raw(SERVER_IP, 5222);
    expect(lines).toContain('ECHO ping-through-gateway');
    const allowed = await record({ event: 'egress.allowed', dest_port: 5222 });
    expect(allowed).toMatchObject({ proto: 'transparent', dest_host: SERVER_IP, dest_ip: SERVER_IP, rule: 'chat' });
    await record({ event: 'egress.closed', id: allowed.id });
  });

  it('raw TCP to a denied address is closed with ip_not_allowed', async () => {
    const lines = await raw(OTHER_IP, 5222);
    expect(lines).toContain('CLOSED no-data');
    const denied = await record({ event: 'egress.denied', dest_ip: OTHER_IP });
    expect(denied).toMatchObject({ proto: 'transparent', reason: 'ip_not_allowed', dest_host: OTHER_IP, dest_port: 5222 });
  });

  it("match_dns: an address among the answers for a rule's name is allowed; another is not", async () => {
    expect(await raw(OTHER_IP, 5223)).toContain('ECHO ping-through-gateway');
    await record({ event: 'egress.allowed', dest_ip: OTHER_IP, dest_port: 5223, rule: 'byname' });
    expect(await raw(SERVER_IP, 5223)).toContain('CLOSED no-data');
    await record({ event: 'egress.denied', dest_ip: SERVER_IP, dest_port: 5223, reason: 'ip_not_allowed' });
  });

  it("a connection to the gateway's own transparent port is a loop", async () => {
    const lines = await raw(GW_IP, gwPort);
    expect(lines).toContain('CLOSED no-data');
    const loop = await record({ event: 'egress.denied', reason: 'loop' });
    expect(loop).toMatchObject({ proto: 'transparent', enforced: true });
  });
});

describe('transparent listener without the addon', () => {
  it('refuses to start with a message that names the key', () => {
    const d = mkdtempSync(join(tmpdir(), 'wa-egress-transparent-'));
    try {
      const config = join(d, 'config.yaml');
      writeFileSync(config, stringify({ listen: { transparent: '127.0.0.1:0' }, policy: { rules: [] }, dns: { servers: ['127.0.0.1:9'] }, audit: { file: join(d, 'a.log') } }));
      const r = spawnSync(process.execPath, [CLI, 'serve', '--config', config], { encoding: 'utf8', env: { PATH: process.env.PATH, WA_EGRESS_NO_NATIVE: '1' }, timeout: 20_000 });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/listen\.transparent 127\.0\.0\.1:0: needs the native addon .*SO_ORIGINAL_DST.*WA_EGRESS_NO_NATIVE=1/);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
