import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { suggest, type Destination } from '../../src/learn/suggest.js';
import { connectVia, startGateway, startTcpServer, type TestServer } from '../helpers.js';

/**
 * `policy suggest` on audit logs a report-mode gateway wrote for real
 * CONNECTs; the rules it prints are pasted into a config, checked by
 * `config check`, and an enforce-mode gateway with them allows what was seen.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const run = promisify(execFile);

const NAMES = [
  'g.whatsapp.net',
  'media-a.cdn.whatsapp.net',
  'media-b.cdn.whatsapp.net',
  'media-c.cdn.whatsapp.net',
  'x.y.cdn.whatsapp.net',
  'graph.facebook.com',
  'one.s3.amazonaws.com',
  'two.s3.amazonaws.com',
  'three.s3.amazonaws.com',
  'rare.example.net',
];
let echo: TestServer;
let others: TestServer[] = [];
let dir: string;
let log: string;
// Every name any gateway here is asked for, pinned (the last two are only asked of the enforcing one).
const dnsHosts: Record<string, string> = {
  ...Object.fromEntries([...NAMES, 'media-z.cdn.whatsapp.net'].map((n) => [n, '127.0.0.1'])),
  // Outside the learnt 127.0.0.0/24.
  'other.whatsapp.net': '127.0.1.1',
};

beforeAll(async () => {
  echo = await startTcpServer('127.0.0.1');
  // The same port on the loopback addresses used as IP-literal destinations.
  others = await Promise.all(['127.0.0.7', '127.0.0.8', '127.0.0.9'].map((h) => startTcpServer(h, undefined, echo.port)));
  // A report-mode run: nothing is allowed by rule, everything goes through and is recorded.
  const g = await startGateway({
    policy: { mode: 'report', rules: [{ name: 'existing', hosts: ['graph.facebook.com'], ports: [1] }] },
    dns: { hosts: dnsHosts },
  });
  for (const name of NAMES) {
    for (let i = 0; i < (name.startsWith('rare') ? 1 : 2); i++) {
      const { client, status } = await connectVia(g.port, `${name}:${echo.port}`);
      expect(status).toBe(200);
      client.destroy();
    }
  }
  for (const ip of ['127.0.0.7', '127.0.0.8', '127.0.0.9']) {
    const { client } = await connectVia(g.port, `${ip}:${echo.port}`);
    client.destroy();
  }
  await g.close();
  dir = g.dir;
  log = join(dir, 'audit.log');
  expect(readFileSync(log, 'utf8')).toContain('"enforced":false');
});
afterAll(async () => {
  await echo.close();
  for (const o of others) await o.close();
});

async function suggestCli(...args: string[]): Promise<string> {
  return (await run(process.execPath, [CLI, 'policy', 'suggest', ...args])).stdout;
}

/** A config with the suggestion pasted under policy.rules. */
function pasted(snippet: string, extra: string[] = []): string {
  const file = join(mkdtempSync(join(tmpdir(), 'wa-egress-suggest-')), 'config.yaml');
  // Pinned: a name the hosts miss goes to a loopback port with no DNS server, never the system resolver.
  const dns = `dns:\n  servers: ["127.0.0.1:9"]\n  hosts:\n${Object.keys(dnsHosts).map((n) => `    ${n}: 127.0.0.1`).join('\n')}\n`;
  writeFileSync(file, `listen:\n  proxy: "127.0.0.1:0"\npolicy:\n  allow_ranges: ["127.0.0.0/8"]\n  rules:\n${extra.join('\n')}${extra.length ? '\n' : ''}${snippet}${dns}`);
  return file;
}

describe('policy suggest', () => {
  it('prints rules that pass config check and allow, in enforce mode, what was seen', async () => {
    const out = await suggestCli(log);
    expect(out).toMatch(/^# wa-egress policy suggest: 22 denial record\(s\)/);
    expect(out).toContain('"**.cdn.whatsapp.net" # 4 names seen');
    expect(out).toContain('- 127.0.0.0/24');
    // Each rule says what it covers.
    expect(out).toMatch(/# 2 record\(s\), 1 destination\(s\): graph\.facebook\.com:\d+\n {4}- name: facebook\.com\n/);
    const file = pasted(out);
    const check = await run(process.execPath, [CLI, 'config', 'check', file]);
    expect(check.stdout).toContain(': OK:');

    const rules = parse(readFileSync(file, 'utf8')).policy.rules;
    const g = await startGateway({ policy: { rules, allow_ranges: ['127.0.0.0/8'] }, dns: { hosts: dnsHosts } });
    try {
      for (const dest of [...NAMES, '127.0.0.7', 'media-z.cdn.whatsapp.net']) {
        const { client, status } = await connectVia(g.port, `${dest}:${echo.port}`);
        client.destroy();
        expect([dest, status]).toEqual([dest, 200]);
      }
      // Nothing wider than seen where no pattern was earned.
      const { client, status } = await connectVia(g.port, `other.whatsapp.net:${echo.port}`);
      client.destroy();
      expect(status).toBe(403);
    } finally {
      await g.close();
    }
  });

  it('--min-count leaves out rare destinations', async () => {
    const out = await suggestCli('--min-count', '2', log);
    expect(out).not.toContain('rare.example.net');
    expect(out).toContain('--min-count 2: 4 destination(s) seen fewer times left out');
  });

  it('--against shows only what the policy would still deny', async () => {
    const current = pasted('', [
      '    - name: whatsapp.net',
      '      hosts: ["g.whatsapp.net", "**.cdn.whatsapp.net"]',
      `      ports: [${echo.port}]`,
    ]);
    const out = await suggestCli('--against', current, log);
    expect(out).not.toContain('whatsapp.net\n');
    expect(out).not.toMatch(/hosts:\n\s+- g\.whatsapp\.net/);
    expect(out).toContain('graph.facebook.com');
    expect(out).toContain('destination(s) the policy already allows left out');
    // The suggestion's names do not clash with the config's, and the pasted whole is valid.
    const both = pasted(out.split('\n').filter((l) => !l.startsWith('#')).join('\n'), [
      '    - name: whatsapp.net',
      '      hosts: ["g.whatsapp.net", "**.cdn.whatsapp.net"]',
      `      ports: [${echo.port}]`,
    ]);
    expect((await run(process.execPath, [CLI, 'config', 'check', both])).stdout).toContain(': OK:');
  });

  it('reads gzip logs and stdin-less multiple files, and skips lines that are not records', async () => {
    const gz = join(dir, 'audit.log.1.gz');
    writeFileSync(gz, gzipSync(readFileSync(log)));
    const broken = join(dir, 'broken.log');
    writeFileSync(broken, '{"time":"2026-12-01T10:00:00.000Z","event":"egress.denied","reason":"host_not_allowed","dest_host":"new.example.org","dest_port":443}\n{cut off');
    const out = await suggestCli(gz, broken);
    expect(out).toContain('# 1 malformed line(s) skipped');
    expect(out).toContain('new.example.org');
    expect(out).toMatch(/suggest: 23 denial record/);
  });

  it('fails clearly on a missing file', async () => {
    const err = await suggestCli(join(dir, 'nope.log')).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stderr).toContain('cannot read');
    expect(err.stderr).toContain('ENOENT');
  });
});

describe('suggest (the grouping)', () => {
  const d = (host: string, port = 443, count = 1): Destination => {
    const family = host.includes(':') ? 6 : /^\d+\.\d+\.\d+\.\d+$/.test(host) ? 4 : undefined;
    return family ? { host, port, count, family } : { host, port, count };
  };
  const entries = (list: Destination[], siblings = 3) => suggest(list, { siblings }).map((r) => [r.name, r.hosts.map((h) => h.entry), r.ip_ranges, r.ports]);

  it.each([
    ['siblings earn *.', ['a.x.com', 'b.x.com', 'c.x.com'], [['x.com', ['*.x.com'], [], [443]]]],
    ['too few siblings stay exact', ['a.x.com', 'b.x.com'], [['x.com', ['a.x.com', 'b.x.com'], [], [443]]]],
    ['*. plus deeper names earn **.', ['a.x.com', 'b.x.com', 'c.x.com', 'd.e.x.com'], [['x.com', ['**.x.com'], [], [443]]]],
    ['never wider than the registered domain', ['a.co.uk', 'b.co.uk', 'c.co.uk'], [['a.co.uk', ['a.co.uk'], [], [443]], ['b.co.uk', ['b.co.uk'], [], [443]], ['c.co.uk', ['c.co.uk'], [], [443]]]],
    ['private suffixes count', ['a.github.io', 'b.github.io', 'c.github.io'], [['github.io', ['a.github.io', 'b.github.io', 'c.github.io'], [], [443]]]],
    ['the domain itself stays exact', ['x.com', 'a.x.com', 'b.x.com', 'c.x.com'], [['x.com', ['*.x.com', 'x.com'], [], [443]]]],
  ] as const)('%s', (_what, names, expected) => {
    expect(entries(names.map((n) => d(n)))).toEqual(expected);
  });

  it('keeps ports per rule', () => {
    expect(entries([d('g.x.com', 5222, 5), d('g.x.com', 443), d('m.x.com', 443)])).toEqual([
      ['x.com-443-5222', ['g.x.com'], [], [443, 5222]],
      ['x.com-443', ['m.x.com'], [], [443]],
    ]);
  });

  it('turns IP literals into exact and block ranges, per family', () => {
    const list = [d('10.0.0.1'), d('10.0.0.2'), d('10.0.0.200'), d('10.0.1.5'), d('2001:db8::1'), d('2001:db8::2'), d('2001:db8::3'), d('2001:db8:1::1')];
    expect(entries(list)).toEqual([['addresses', [], ['10.0.0.0/24', '10.0.1.5/32', '2001:db8::/64', '2001:db8:1::1/128'], [443]]]);
  });

  it('names rules apart from the taken ones', () => {
    expect(suggest([d('a.x.com')], { siblings: 3, taken: new Set(['x.com']) })[0]!.name).toBe('x.com-2');
  });
});


