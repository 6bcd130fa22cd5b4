import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { connectVia, RawClient, startGateway, startTcpServer } from '../helpers.js';

/**
 * Chat tunnels stay up for days: with the default `timeouts.idle: 0` no
 * timeout of Node's HTTP machinery (requestTimeout 300 s, headersTimeout,
 * keepAliveTimeout) may reach a tunnel once it is established. Idle for
 * longer than the 300 s default requestTimeout, then exchange data.
 */

const IDLE_MS = 310_000;

describe('long-lived tunnels', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterAll(async () => {
    for (const c of cleanup.reverse()) await c();
  });

  it(`keeps idle tunnels open for ${IDLE_MS / 1000} s, also one opened after a keep-alive request`, async () => {
    const echo = await startTcpServer('127.0.0.1');
    const origin = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', () => r()));
    const originPort = (origin.address() as AddressInfo).port;
    const gw = await startGateway({
      policy: { rules: [{ name: 'chat', hosts: ['g.whatsapp.net'], ports: [echo.port, originPort] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    });
    cleanup.push(() => echo.close(), () => new Promise((r) => origin.close(() => r())), () => gw.close());

    // 1. A plain CONNECT tunnel.
    const plain = await connectVia(gw.port, `g.whatsapp.net:${echo.port}`);
    expect(plain.status).toBe(200);

    // 2. A CONNECT that follows a proxied request on the same keep-alive connection.
    const reused = await RawClient.connect(gw.port);
    reused.write(`GET http://g.whatsapp.net:${originPort}/ HTTP/1.1\r\nHost: g.whatsapp.net\r\n\r\n`);
    expect((await reused.head()).status).toBe(200);
    await reused.bytes(2);
    reused.data = Buffer.alloc(0);
    reused.write(`CONNECT g.whatsapp.net:${echo.port} HTTP/1.1\r\n\r\n`);
    expect((await reused.head()).status).toBe(200);

    await new Promise((r) => setTimeout(r, IDLE_MS));

    for (const client of [plain.client, reused]) {
      expect(client.closed).toBe(false);
      expect(client.ended).toBe(false);
      client.write('still here');
      expect((await client.bytes(10)).toString()).toBe('still here');
    }
    expect(gw.audit().filter((r) => r.event === 'egress.closed' && r.proto === 'connect')).toHaveLength(0);
    plain.client.destroy();
    reused.destroy();
  });
});
