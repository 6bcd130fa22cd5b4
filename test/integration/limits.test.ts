import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually, spawnServe, startTcpServer, writeTestConfig, type ServeProcess, type TestServer } from '../helpers.js';

/**
 * The open-file limit: the gateway reports it, and past its descriptor
 * budget refuses new connections with a record instead of failing.
 */

let child: ServeProcess | undefined;
let echo: TestServer | undefined;
afterEach(async () => {
  await child?.stop('SIGKILL');
  await echo?.close();
});

describe('open-file limit', () => {
  it('reports the limit and refuses connections past the budget with over_capacity records', async () => {
    echo = await startTcpServer();
    const { dir, file } = await writeTestConfig({
      listen: { proxy: '127.0.0.1:0' },
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
      audit: { file: 'audit.log' },
    });
    // 100 descriptors: a budget of 34 client connections.
    child = await spawnServe(['--config', file], { stdout: 'ignore', wrap: 'ulimit -n 100 &&' });
    const port = child.ports.proxy!;
    const err = child.stderr;
    const limit = JSON.parse(await eventually(() => err().split('\n').find((l) => l.includes('open-file limit'))));
    expect(limit).toMatchObject({ fd_soft: 100, max_client_connections: 34 });

    // 50 tunnels at once: 34 open, the rest are refused and audited.
    const sockets: net.Socket[] = [];
    const answers = await Promise.all(
      Array.from(
        { length: 50 },
        () =>
          new Promise<string>((done) => {
            const s = net.connect(port, '127.0.0.1', () => s.write(`CONNECT g.whatsapp.net:${echo!.port} HTTP/1.1\r\n\r\n`));
            sockets.push(s);
            s.on('data', (d) => done(String(d).slice(0, 12)));
            s.on('error', () => done('refused'));
            s.on('close', () => done('refused'));
          }),
      ),
    );
    expect(answers.filter((a) => a === 'HTTP/1.1 200')).toHaveLength(34);
    expect(answers.filter((a) => a === 'refused')).toHaveLength(16);
    for (const s of sockets) s.destroy();

    // The process is fine: once the tunnels are gone, a new one opens.
    const tryOnce = () =>
      new Promise<string>((done) => {
        const s = net.connect(port, '127.0.0.1', () => s.write(`CONNECT g.whatsapp.net:${echo!.port} HTTP/1.1\r\n\r\n`));
        s.on('data', (d) => {
          s.destroy();
          done(String(d).slice(0, 12));
        });
        s.on('error', () => done(''));
        s.on('close', () => done(''));
      });
    let again = '';
    for (let i = 0; i < 50 && again !== 'HTTP/1.1 200'; i++) {
      again = await tryOnce();
      if (again !== 'HTTP/1.1 200') await new Promise((r) => setTimeout(r, 100));
    }
    expect(again).toBe('HTTP/1.1 200');
    expect(await child.stop('SIGTERM')).toBe(0);
    const records = readFileSync(join(dir, 'audit.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const refused = records.filter((r) => r.reason === 'over_capacity');
    // The 16, and any retry above that came before the server saw the closes.
    expect(refused.length).toBeGreaterThanOrEqual(16);
    expect(refused[0]).toMatchObject({ event: 'egress.denied', listener: 'proxy', enforced: true });
    expect(refused[0].client).toMatch(/^127\.0\.0\.1:\d+$/);
  });
});
