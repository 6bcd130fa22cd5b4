import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { hashPassword } from '../../src/access/password.js';
import { parseConfig } from '../../src/config/load.js';
import { recheckTunnels } from '../../src/ops/recheck.js';
import { eventually, RawClient, startGateway, startTcpServer, testConfig, type TestGateway, type TestServer } from '../helpers.js';

/**
 * `recheck_tunnels` and proxy users: a tunnel whose user the new
 * configuration no longer has (or no longer allows from its source) is
 * refused as a new login would be (`auth_failed`) and closed with
 * `policy_changed`; another user's tunnel stays.
 */

const FAST = { N: 1024, r: 8, p: 1 };
let g: TestGateway;
let echo: TestServer;
let config: (users: { name: string; password_hash: string }[]) => Promise<Record<string, unknown>>;
let hashes: Record<string, string>;

beforeAll(async () => {
  echo = await startTcpServer('127.0.0.1');
  hashes = { alice: await hashPassword('a-pw', FAST), bob: await hashPassword('b-pw', FAST) };
  config = (users) =>
    testConfig({
      policy: { rules: [{ name: 'local', hosts: ['echo.test'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'echo.test': '127.0.0.1' } },
      reload: { recheck_tunnels: true },
      clients: { users },
    });
  g = await startGateway(await config([{ name: 'alice', password_hash: hashes.alice! }, { name: 'bob', password_hash: hashes.bob! }]));
});
afterAll(async () => {
  await g.close();
  await echo.close();
});

async function tunnel(user: string, pw: string): Promise<{ client: RawClient; status: number }> {
  const client = await RawClient.connect(g.port);
  const authority = `echo.test:${echo.port}`;
  client.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\nProxy-Authorization: Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}\r\n\r\n`);
  return { client, status: (await client.head()).status };
}

it("closes the tunnel of a user the reload removed, keeps another user's", async () => {
  const a = await tunnel('alice', 'a-pw');
  const b = await tunnel('bob', 'b-pw');
  expect([a.status, b.status]).toEqual([200, 200]);
  const file = join(g.dir, 'config.yaml');
  const text = stringify(await config([{ name: 'bob', password_hash: hashes.bob! }]));
  writeFileSync(file, text);
  await g.gw.apply(parseConfig(text, file));
  expect(await recheckTunnels(g.gw)).toEqual({ checked: 2, closed: 1 });
  const closed = await eventually(() => g.audit().find((r) => r.event === 'egress.closed'));
  expect(closed).toMatchObject({ user: 'alice', close_reason: 'policy_changed' });
  expect(g.audit().find((r) => r.event === 'egress.denied')).toMatchObject({ user: 'alice', reason: 'auth_failed', enforced: true });
  expect(g.gw.tunnels.size).toBe(1);
  a.client.destroy();
  b.client.destroy();
});
