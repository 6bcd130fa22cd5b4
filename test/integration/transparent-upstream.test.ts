import { mkdtempSync, rmSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { Authenticator } from '../../src/access/auth.js';
import { ClientAccess } from '../../src/access/clients.js';
import { Audit } from '../../src/audit.js';
import { parseConfig } from '../../src/config/load.js';
import { keepAliveSettings } from '../../src/config/schema.js';
import { decisionContext } from '../../src/decide.js';
import type { EgressContext } from '../../src/egress.js';
import { createTransparentServer } from '../../src/inbound/transparent.js';
import { SelfAddresses } from '../../src/net/self.js';
import { RouteTable } from '../../src/upstream/routes.js';
import { eventually, startTcpServer, type TestServer } from '../helpers.js';

/**
 * A transparent connection through an HTTP parent: it was judged at its
 * original address (SNI or not), so the parent is asked for that address,
 * never for the SNI name it would resolve on its own.
 */

let dir: string;
let parent: TestServer;
const asked: string[] = [];
let server: net.Server;
let audit: Audit;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-transparent-up-'));
  parent = await startTcpServer('127.0.0.1', (s) => {
    s.once('data', (d: Buffer) => {
      asked.push(d.toString('latin1').split('\r\n', 1)[0]!);
      s.write('HTTP/1.1 200 Connection established\r\n\r\n');
      s.pipe(s);
    });
  });
  const config = parseConfig(
    stringify({
      listen: { transparent: '127.0.0.1:0' },
      policy: { rules: [{ name: 'named', hosts: ['allowed.example'], ports: [443] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { servers: ['127.0.0.1:9'] },
      upstreams: { corp: { url: `http://127.0.0.1:${parent.port}` } },
      default_route: 'corp',
    }),
    join(dir, 'config.yaml'),
  );
  audit = new Audit({ file: join(dir, 'audit.log'), onError: 'deny' });
  const ctx: EgressContext = {
    ...decisionContext(config, new SelfAddresses()),
    audit,
    connectTimeoutMs: 2000,
    idleTimeoutMs: 0,
    keepAlive: keepAliveSettings(config),
    tunnels: new Set(),
    stopped: false,
    inflight: 0,
    routes: RouteTable.from(config),
    clients: new ClientAccess(config),
    auth: new Authenticator(),
  };
  server = createTransparentServer(() => ctx, {
    name: 'transparent',
    handshakeTimeoutMs: 2000,
    nextId: () => 't-1',
    originalDestination: () => ({ address: '127.0.0.1', port: 443, family: 4 }),
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
});
afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  audit.close();
  await parent.close();
  rmSync(dir, { recursive: true, force: true });
});

it('asks the parent for the original address, not the SNI name', async () => {
  const { port } = server.address() as AddressInfo;
  const client = tls.connect({ host: '127.0.0.1', port, servername: 'allowed.example', rejectUnauthorized: false });
  client.on('error', () => {});
  try {
    expect(await eventually(() => asked[0])).toBe('CONNECT 127.0.0.1:443 HTTP/1.1');
  } finally {
    client.destroy();
  }
});
