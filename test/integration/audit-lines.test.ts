import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, eventually, startGateway, type TestGateway } from '../helpers.js';

/**
 * A client-supplied string with line separators (a SOCKS domain name) does
 * not forge audit lines: split on every separator a line-based tool might
 * use, the file is still exactly one JSON record per line.
 */

const gateways: TestGateway[] = [];
afterEach(async () => {
  await Promise.all(gateways.splice(0).map((g) => g.close()));
});

const SEPARATORS = /\r\n|[\n\r\u000b\u000c\u001c\u001d\u001e\u0085\u2028\u2029]/;

describe('audit lines cannot be forged by client strings', () => {
  it('a SOCKS domain with U+2028, U+2029 and U+0085', async () => {
    const g = await startGateway({
      listen: { socks: '127.0.0.1:0' },
      policy: { rules: [{ name: 'r', hosts: ['allowed.test'], ports: [443] }] },
      dns: { hosts: { 'allowed.test': '127.0.0.1' }, servers: ['127.0.0.1:9'] },
    });
    gateways.push(g);
    // No ':' (the name would be read as an IPv6 literal): a forged line's start is enough.
    const forged = '{"event"';
    const name = Buffer.from(`a\u2028${forged}\u2029b\u0085${forged}\u007f.example`, 'utf8');
    const c = await RawClient.connect(g.gw.address('socks').port);
    c.write(Buffer.from([5, 1, 0]));
    await c.bytes(2);
    c.data = Buffer.alloc(0);
    c.write(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, Buffer.from([1, 187])]));
    await c.bytes(2);
    expect(c.data[1]).not.toBe(0);
    c.destroy();
    const recs = await eventually(() => g.audit().length >= 1 && g.audit());
    expect(recs).toHaveLength(1);
    const text = readFileSync(join(g.dir, 'audit.log'), 'utf8');
    const lines = text.split(SEPARATORS).filter(Boolean);
    expect(lines).toHaveLength(1);
    const rec = JSON.parse(lines[0]!) as { event: string; dest_host?: string; error?: string };
    expect(rec.event).toBe('egress.denied');
    // The name reached the record (decoded as the gateway decodes it), escaped.
    expect(`${rec.dest_host ?? ''}${rec.error ?? ''}`).toMatch(/[\u0080-\u009f\u2028\u2029]/);
  });
});
