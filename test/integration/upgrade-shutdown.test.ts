import { afterEach, expect, it } from 'vitest';
import { eventually, RawClient, startGateway, startTcpServer, type TestGateway, type TestServer } from '../helpers.js';

/**
 * An Upgrade request the origin has not answered yet when the gateway shuts
 * down: its one close record says `shutdown`, as a CONNECT tunnel's does,
 * not `client_closed`.
 */

let g: TestGateway | undefined;
let origin: TestServer | undefined;
afterEach(async () => {
  await g?.close();
  await origin?.close();
  g = origin = undefined;
});

it('an unanswered Upgrade closed by shutdown is recorded as shutdown', async () => {
  let got = false;
  // Reads the request and never answers.
  origin = await startTcpServer('127.0.0.1', (s) => s.on('data', () => (got = true)));
  g = await startGateway({
    policy: { rules: [{ name: 'ws', hosts: ['ws.test'], ports: [origin.port] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { hosts: { 'ws.test': '127.0.0.1' } },
  });
  const c = await RawClient.connect(g.port);
  c.write(`GET http://ws.test:${origin.port}/chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
  await eventually(() => got);
  await g.close();
  const records = g.audit();
  const closed = records.filter((r) => r.event === 'egress.closed');
  expect(records.filter((r) => r.event === 'egress.allowed')).toHaveLength(1);
  expect(closed).toHaveLength(1);
  expect(closed[0]).toMatchObject({ close_reason: 'shutdown', dest_host: 'ws.test' });
  c.destroy();
});
