import { afterEach, describe, expect, it } from 'vitest';
import { connectVia, eventually, RawClient, startBlackhole, startGateway } from '../helpers.js';

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

const policy = (port: number) => ({
  rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [port] }],
  allow_ranges: ['127.0.0.0/8'],
});

describe('timeouts', () => {
  it('drops a client that does not finish its request head within timeouts.handshake', async () => {
    const gw = await startGateway({ policy: policy(443), timeouts: { handshake: '500ms' } });
    cleanup.push(() => gw.close());
    const client = await RawClient.connect(gw.port);
    client.write('CONNECT g.whatsapp.net:443 HTTP/1.1\r\nX-Slow: ');
    await client.waitClosed();
    expect(client.text).toMatch(/^HTTP\/1.1 408/);
    const record = await eventually(() => gw.audit()[0]);
    // Node's parser keeps an unfinished head to itself: the target is not known.
    expect(record).toMatchObject({ event: 'egress.denied', reason: 'handshake_timeout', listener: 'proxy', enforced: true });
  });

  it('drops a client that connects and sends nothing', async () => {
    const gw = await startGateway({ policy: policy(443), timeouts: { handshake: '500ms' } });
    cleanup.push(() => gw.close());
    const client = await RawClient.connect(gw.port);
    await client.waitClosed();
    expect(client.text).toMatch(/^HTTP\/1.1 408 /);
    const record = await eventually(() => gw.audit()[0]);
    expect(record).toMatchObject({ event: 'egress.denied', reason: 'handshake_timeout', listener: 'proxy', proto: 'http', enforced: true });
    expect(record.dest_host).toBeUndefined();
    expect(gw.audit()).toHaveLength(1);
  });

  it('answers 504 connect_timeout when the destination never accepts', async () => {
    const blackhole = await startBlackhole();
    cleanup.push(() => blackhole.close());
    const port = blackhole.port;
    const gw = await startGateway({
      policy: policy(port),
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
      timeouts: { connect: '700ms' },
    });
    cleanup.push(() => gw.close());
    const { status, headers } = await connectVia(gw.port, `g.whatsapp.net:${port}`);
    expect(status).toBe(504);
    expect(headers['x-wa-egress-reason']).toBe('connect_timeout');
    expect(gw.audit()[0]).toMatchObject({ event: 'egress.failed', reason: 'connect_timeout' });
  });
});
