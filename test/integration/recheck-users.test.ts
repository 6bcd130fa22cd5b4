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
type User = { name: string; password_hash: string };
let config: (users: User[], allow?: string[]) => Promise<Record<string, unknown>>;
let hashes: Record<string, string>;

beforeAll(async () => {
  echo = await startTcpServer('127.0.0.1');
  hashes = { alice: await hashPassword('a-pw', FAST), bob: await hashPassword('b-pw', FAST) };
  config = (users, allow) =>
    testConfig({
      policy: { rules: [{ name: 'local', hosts: ['echo.test'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'echo.test': '127.0.0.1' } },
      reload: { recheck_tunnels: true },
      clients: { users, ...(allow && { allow }) },
    });
  g = await startGateway(await config(both()));
});
afterAll(async () => {
  await g.close();
  await echo.close();
});

const both = (): User[] => [
  { name: 'alice', password_hash: hashes.alice! },
  { name: 'bob', password_hash: hashes.bob! },
];

/** Put a configuration in force as a reload does (the file too, so the helpers read the same). */
async function reload(c: Record<string, unknown>): Promise<void> {
  const file = join(g.dir, 'config.yaml');
  const text = stringify(c);
  writeFileSync(file, text);
  await g.gw.apply(parseConfig(text, file));
}

const records = (id: string) => g.audit().filter((r) => r.id === id);

async function tunnel(user: string, pw: string): Promise<{ client: RawClient; status: number }> {
  const client = await RawClient.connect(g.port);
  const authority = `echo.test:${echo.port}`;
  client.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\nProxy-Authorization: Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}\r\n\r\n`);
  return { client, status: (await client.head()).status };
}

it("closes the tunnel of a user the reload removed, keeps another user's", async () => {
  await reload(await config(both()));
  const a = await tunnel('alice', 'a-pw');
  const b = await tunnel('bob', 'b-pw');
  expect([a.status, b.status]).toEqual([200, 200]);
  const [ida, idb] = [...g.gw.tunnels].map((t) => t.attempt.id);
  await reload(await config([{ name: 'bob', password_hash: hashes.bob! }]));
  expect(await recheckTunnels(g.gw)).toEqual({ checked: 2, closed: 1 });
  const closed = await eventually(() => records(ida!).find((r) => r.event === 'egress.closed'));
  expect(closed).toMatchObject({ user: 'alice', close_reason: 'policy_changed' });
  expect(records(ida!).find((r) => r.event === 'egress.denied')).toMatchObject({ user: 'alice', reason: 'auth_failed', enforced: true });
  expect([...g.gw.tunnels].map((t) => t.attempt.id)).toEqual([idb]);
  a.client.destroy();
  b.client.destroy();
});

it('closes a tunnel whose source the new clients.allow no longer admits', async () => {
  await reload(await config(both()));
  const b = await tunnel('bob', 'b-pw');
  expect(b.status).toBe(200);
  const id = [...g.gw.tunnels].find((t) => t.attempt.user === 'bob' && !t.client.destroyed)!.attempt.id;
  await reload(await config(both(), ['10.0.0.0/8']));
  await recheckTunnels(g.gw);
  const closed = await eventually(() => records(id).find((r) => r.event === 'egress.closed'));
  expect(closed).toMatchObject({ close_reason: 'policy_changed' });
  expect(records(id).find((r) => r.event === 'egress.denied')).toMatchObject({ reason: 'client_not_allowed', enforced: true });
  b.client.destroy();
});
