import { expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { explain, explainer } from '../../src/explain/explain.js';

/** `policy explain` knows every socket the gateway counts as its own: a destination there is a loop. */

const config = parseConfig(
  stringify({
    listen: { proxy: '127.0.0.1:3128', transparent: '127.0.0.1:15001', admin: '127.0.0.1:9090' },
    policy: { rules: [{ name: 'local', ip_ranges: ['127.0.0.1/32'], ports: [3128, 15001, 9090, 443] }], allow_ranges: ['127.0.0.1/32'] },
    dns: { servers: ['127.0.0.1:9'] },
  }),
  '/tmp/c.yaml',
);
const ex = explainer(config, { offline: true, pins: new Map() });

it.each(['127.0.0.1:3128', '127.0.0.1:15001', '127.0.0.1:9090'])('%s (a listener of this config) is a loop', async (dest) => {
  expect(await explain(ex, dest)).toMatchObject({ verdict: 'deny', reason: 'loop' });
});

it('another port of the same address is judged by the rules', async () => {
  expect(await explain(ex, '127.0.0.1:443')).toMatchObject({ verdict: 'allow', rule: 'local' });
});
