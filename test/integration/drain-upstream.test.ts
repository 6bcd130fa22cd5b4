import { afterEach, expect, it } from 'vitest';
import { eventually, RawClient, startGateway, startTcpServer, type TestGateway, type TestServer } from '../helpers.js';

/**
 * Shutdown waits for a dial through a parent as long as that dial may take
 * (the parent's own connect_timeout, longer than timeouts.connect), so the
 * attempt's record is written before the audit log closes.
 */

let g: TestGateway | undefined;
let parent: TestServer | undefined;
afterEach(async () => {
  await g?.close();
  await parent?.close();
  g = parent = undefined;
});

it('a CONNECT still waiting for its parent at shutdown gets its record', async () => {
  let asked = false;
  // Takes the CONNECT and never answers it.
  parent = await startTcpServer('127.0.0.1', (s) => s.on('data', () => (asked = true)));
  g = await startGateway({
    policy: { rules: [{ name: 'r', hosts: ['far.test'], ports: [443] }], allow_ranges: ['192.0.2.0/24'] },
    dns: { hosts: { 'far.test': '192.0.2.10' } },
    timeouts: { connect: '100ms', dns: '100ms' },
    upstreams: { slow: { url: `http://127.0.0.1:${parent.port}`, connect_timeout: '2500ms' } },
    default_route: 'slow',
  });
  const c = await RawClient.connect(g.port);
  c.write('CONNECT far.test:443 HTTP/1.1\r\n\r\n');
  await eventually(() => asked);
  await g.close();
  const failed = g.audit().filter((r) => r.dest_host === 'far.test');
  expect(failed).toHaveLength(1);
  expect(failed[0]).toMatchObject({ event: 'egress.failed', reason: 'upstream_timeout', via: 'slow' });
  c.destroy();
});
