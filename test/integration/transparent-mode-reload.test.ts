import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { nativeUnavailableReason } from '../../src/native/sockopt.js';
import { eventually } from '../helpers.js';

/** A reload that changes listen.transparent_mode at the same address rebinds the listener (loopback only). */

const why = process.platform !== 'linux' ? 'not Linux' : process.getuid?.() !== 0 ? 'IP_TRANSPARENT needs root (CAP_NET_ADMIN)' : nativeUnavailableReason();
if (why) console.warn(`transparent-mode-reload.test.ts skipped: ${why}`);

const dir = mkdtempSync(join(tmpdir(), 'wa-egress-tmode-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const audit = join(dir, 'audit.log');

const config = (mode: 'redirect' | 'tproxy') =>
  parseConfig(
    stringify({
      listen: { transparent: '127.0.0.1:0', transparent_mode: mode },
      policy: { rules: [{ name: 'local', ip_ranges: ['127.0.0.1/32'], ports: [9] }] },
      dns: { servers: ['127.0.0.1:9'] },
      audit: { file: audit },
    }),
    join(dir, 'config.yaml'),
  );

/** Connect to the listener directly: not intercepted, so a loop record; resolves when the gateway closes it. */
function direct(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('error', reject).on('close', () => resolve());
  });
}
const loops = () => (existsSync(audit) ? readFileSync(audit, 'utf8') : '').split('\n').filter((l) => l.includes('"reason":"loop"')).length;

describe.skipIf(!!why)('listen.transparent_mode on reload', () => {
  it('redirect → tproxy → redirect rebinds the listener each time; it accepts, and a direct connection is a loop', async () => {
    const gw = await Gateway.start(config('redirect'));
    try {
      for (const mode of ['tproxy', 'redirect'] as const) {
        const before = gw.address('transparent').port;
        expect(await gw.apply(config(mode))).toEqual([]);
        const { port } = gw.address('transparent');
        expect(port).not.toBe(before);
        const had = loops();
        await direct(port);
        await eventually(() => loops() === had + 1);
      }
      expect(gw.listening).toBe(true);
    } finally {
      await gw.close();
    }
  });
});
