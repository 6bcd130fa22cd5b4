import { writeFileSync } from 'node:fs';
import pino from 'pino';
import { afterEach, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { Gateway } from '../../src/gateway.js';
import { loadConfig } from '../../src/ops/config-load.js';
import { gatewayTarget, Reloader } from '../../src/ops/reload.js';
import { writeConfig } from './serve-child.js';

/** A reload that changes keepalive says what is now in force (and warns without the addon), as serve's start does. */

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

const config = (keepalive: string) => ({
  listen: { proxy: '127.0.0.1:0' },
  policy: { rules: [{ name: 'r', hosts: ['a.test'], ports: [443] }] },
  dns: { servers: ['127.0.0.1:9'] },
  keepalive,
  audit: { file: 'audit.log' },
});

it('logs the keepalive in force when a reload changes it, and only then', async () => {
  const { file } = writeConfig(config('30s'));
  const loaded = loadConfig(file);
  const gw = await Gateway.start(loaded.config);
  cleanup.push(() => gw.close());
  const lines: { msg: string }[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as { msg: string }) });
  const reloader = new Reloader(gatewayTarget(gw, log), loaded, log);
  cleanup.push(() => reloader.stop());
  const keepalive = () => lines.filter((l) => /silent peer/.test(l.msg));

  await reloader.request('SIGHUP');
  expect(keepalive()).toEqual([]);

  writeFileSync(file, stringify(config('45s')));
  await reloader.request('SIGHUP');
  expect(keepalive()).toHaveLength(1);
  expect(keepalive()[0]!.msg).toMatch(/idle 45 s/);
});
