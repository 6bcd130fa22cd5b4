import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net, { type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { Authenticator } from '../../src/access/auth.js';
import { ClientAccess } from '../../src/access/clients.js';
import { Audit } from '../../src/audit.js';
import { parseConfig } from '../../src/config/load.js';
import { keepAliveSettings } from '../../src/config/schema.js';
import { decisionContext } from '../../src/decide.js';
import type { EgressContext } from '../../src/egress.js';
import { Admission } from '../../src/inbound/admission.js';
import { MAX_HELLO_BYTES } from '../../src/inbound/sni.js';
import { createTransparentServer } from '../../src/inbound/transparent.js';
import type { Gateway } from '../../src/gateway.js';
import { recheckTunnels } from '../../src/ops/recheck.js';
import { SelfAddresses } from '../../src/net/self.js';
import { eventually, startTcpServer, type AuditRecord, type TestServer } from '../helpers.js';

/**
 * The transparent listener on loopback, with the original destination
 * given by the test (the network-namespace test covers SO_ORIGINAL_DST):
 * what is forwarded, limits on accept, half-close, silent clients.
 */

let dir: string;
let echo: TestServer;
let server: net.Server | undefined;
let audit: Audit;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-transparent-'));
  echo = await startTcpServer('127.0.0.1');
});
afterAll(async () => {
  await echo.close();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  if (server) await new Promise<void>((r) => server!.close(() => r()));
  server = undefined;
});

let n = 0;
function configWith(limits: Record<string, number>, handshake: string, policy: Record<string, unknown> = {}) {
  return parseConfig(
    stringify({
      listen: { transparent: '127.0.0.1:0' },
      policy: { rules: [{ name: 'local', ip_ranges: ['127.0.0.1/32'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'], ...policy },
      dns: { servers: ['127.0.0.1:9'] },
      timeouts: { handshake },
      limits,
    }),
    join(dir, 'config.yaml'),
  );
}

async function start(limits: Record<string, number> = {}, handshake = '2s'): Promise<{ port: number; records: () => AuditRecord[]; accepted: () => number; ctx: EgressContext }> {
  const file = join(dir, `audit-${++n}.log`);
  const config = configWith(limits, handshake);
  audit = new Audit({ file, onError: 'deny' });
  const ctx: EgressContext = {
    ...decisionContext(config, new SelfAddresses()),
    audit,
    connectTimeoutMs: 2000,
    idleTimeoutMs: 0,
    keepAlive: keepAliveSettings(config),
    tunnels: new Set(),
    stopped: false,
    inflight: 0,
    clients: new ClientAccess(config),
    auth: new Authenticator(),
  };
  server = createTransparentServer(() => ctx, {
    name: 'transparent',
    handshakeTimeoutMs: config.timeouts.handshake,
    nextId: () => `t-${++n}`,
    admission: new Admission(() => config.limits),
    originalDestination: () => ({ address: '127.0.0.1', port: echo.port, family: 4 }),
  });
  let accepted = 0;
  server.on('connection', () => accepted++);
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const records = () => {
    audit.flushSync();
    return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRecord) : [];
  };
  return { port: (server.address() as AddressInfo).port, records, accepted: () => accepted, ctx };
}

/** Send `data` (then FIN), collect everything that comes back until the connection closes. */
function exchange(port: number, data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => s.end(data));
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', reject);
    s.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

describe('transparent listener', () => {
  it('plain bytes larger than the sniffing cap are forwarded whole, then half-close ends the tunnel', async () => {
    const { port, records } = await start();
    const data = Buffer.alloc(MAX_HELLO_BYTES * 3, 'x');
    expect((await exchange(port, data)).equals(data)).toBe(true);
    const closed = await eventually(() => records().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ proto: 'transparent', bytes_up: data.length, bytes_down: data.length, close_reason: 'client_closed' });
  });

  it('a ClientHello that cannot be read is judged by address, and its bytes reach the destination unchanged', async () => {
    const { port, records } = await start();
    const bogus = Buffer.concat([Buffer.from([22, 3, 1, 0, 8, 9, 9, 9, 9]), Buffer.from('and more')]);
    expect((await exchange(port, bogus)).equals(bogus)).toBe(true);
    expect(records().find((r) => r.event === 'egress.allowed')).toMatchObject({ rule: 'local', dest_host: '127.0.0.1', dest_ip: '127.0.0.1' });
  });

  it('recheck_tunnels: a tunnel judged by its address alone (no SNI) is closed when the new policy requires SNI', async () => {
    const { port, records, ctx } = await start();
    const client = net.connect(port, '127.0.0.1');
    await new Promise((r) => client.once('connect', r));
    client.write('plain bytes');
    await new Promise((r) => client.once('data', r));
    const allowed = await eventually(() => records().find((r) => r.event === 'egress.allowed'));
    expect(allowed).toMatchObject({ dest_host: '127.0.0.1', rule: 'local' });

    // The same policy judges the tunnel allowed again; with require_sni it is denied.
    const same = { context: { ...ctx, ...decisionContext(configWith({}, '2s'), new SelfAddresses()) }, tunnels: ctx.tunnels } as unknown as Gateway;
    expect(await recheckTunnels(same)).toEqual({ checked: 1, closed: 0 });
    const strict = { context: { ...ctx, ...decisionContext(configWith({}, '2s', { require_sni: true }), new SelfAddresses()) }, tunnels: ctx.tunnels } as unknown as Gateway;
    const closedNow = new Promise((r) => client.once('close', r));
    expect(await recheckTunnels(strict)).toEqual({ checked: 1, closed: 1 });
    await closedNow;
    const denied = await eventually(() => records().find((r) => r.event === 'egress.denied'));
    expect(denied).toMatchObject({ id: allowed.id, reason: 'sni_required', enforced: true, dest_ip: '127.0.0.1' });
    expect(await eventually(() => records().find((r) => r.event === 'egress.closed'))).toMatchObject({ id: allowed.id, close_reason: 'policy_changed' });
  });

  it('a client that closes without a byte leaves no record', async () => {
    const { port, records } = await start();
    expect((await exchange(port, Buffer.alloc(0))).length).toBe(0);
    // A second, real connection's records prove the first was handled (and wrote nothing).
    await exchange(port, Buffer.from('ping'));
    await eventually(() => records().find((r) => r.event === 'egress.closed'));
    expect(records().filter((r) => r.event !== 'egress.allowed' && r.event !== 'egress.closed')).toEqual([]);
    expect(records().filter((r) => r.event === 'egress.allowed')).toHaveLength(1);
  });

  it('limits.max_connections_per_client refuses on accept with client_limit', async () => {
    const { port, records, accepted } = await start({ max_connections_per_client: 1 });
    const first: Socket = net.connect({ port, host: '127.0.0.1' });
    await new Promise((r) => first.once('connect', r));
    first.write(Buffer.from([22, 3, 1])); // an unfinished hello keeps it waiting
    await eventually(() => accepted() === 1);
    const second = await exchange(port, Buffer.from('ping'));
    expect(second.length).toBe(0);
    expect(await eventually(() => records().find((r) => r.reason === 'client_limit'))).toMatchObject({ event: 'egress.denied', proto: 'transparent', enforced: true });
    first.destroy();
  });

  it('limits.max_handshakes: a new connection drops the oldest one still waiting for its first bytes', async () => {
    const { port, records, accepted } = await start({ max_handshakes: 1 }, '30s');
    const first: Socket = net.connect({ port, host: '127.0.0.1' });
    const firstClosed = new Promise((r) => first.once('close', r));
    first.on('error', () => {});
    await new Promise((r) => first.once('connect', r));
    first.write(Buffer.from([22, 3, 1, 0])); // a hello that never completes
    await eventually(() => accepted() === 1); // the first holds the one slot before the second comes
    const second = net.connect({ port, host: '127.0.0.1' });
    second.on('error', () => {});
    await firstClosed;
    expect(await eventually(() => records().find((r) => r.reason === 'over_capacity'))).toMatchObject({ event: 'egress.denied', proto: 'transparent' });
    second.destroy();
  });
});
