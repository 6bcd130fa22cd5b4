import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';

/** `policy explain` and `policy test` as a user runs them: the built CLI, offline or with pinned DNS only. */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const ROOT = resolve(import.meta.dirname, '../..');

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((r) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT }, (err, stdout, stderr) =>
      r({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

function write(name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'wa-egress-policy-'));
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

const config = write(
  'config.yaml',
  stringify({
    listen: { proxy: '127.0.0.1:3999' },
    policy: {
      rules: [
        { name: 'api', hosts: ['api.example.com', '.*.cdn.example.net'], ports: [443] },
        { name: 'ranges', ip_ranges: ['203.0.113.0/24', '198.51.100.7', '127.0.0.0/8'], ports: [443, 3999] },
        { name: 'lab', hosts: ['lab.example.com'], ports: [8443] },
      ],
      allow_ranges: ['198.51.100.7/32'],
    },
    dns: {
      hosts: {
        'api.example.com': ['192.0.2.1', '93.184.216.34'],
        'private.cdn.example.net': '10.1.2.3',
        'lab.example.com': '198.51.100.7',
      },
      servers: ['127.0.0.1:9'],
    },
  }),
);

async function explainJson(dest: string, ...extra: string[]) {
  const r = await cli(['policy', 'explain', dest, '--config', config, '--offline', '--json', ...extra]);
  return { code: r.code, e: JSON.parse(r.stdout) as Record<string, any> };
}

describe('policy explain', () => {
  it('allow by hosts pattern: the pattern, each address with its verdict, and that DNS was needed', async () => {
    const { code, e } = await explainJson('API.example.com.:443');
    expect(code).toBe(0);
    expect(e).toMatchObject({ destination: 'api.example.com:443', verdict: 'allow', rule: 'api', pattern: 'api.example.com' });
    expect(e.dns).toEqual({ needed: true, answer: 'dns.hosts' });
    expect(e.addresses).toEqual([
      { address: '192.0.2.1', verdict: 'special_range', special_range: 'documentation', rule: 'api' },
      { address: '93.184.216.34', verdict: 'allow', rule: 'api' },
    ]);
  });

  it('allow by ip_ranges names the range; an allow_ranges exemption is shown', async () => {
    const lit = await explainJson('203.0.113.9:443');
    // 203.0.113.0/24 is documentation space: listed in ip_ranges, still special.
    expect(lit.e).toMatchObject({ verdict: 'deny', reason: 'special_range', special_range: 'documentation', rule: 'ranges' });
    const exempt = await explainJson('198.51.100.7:443');
    expect(exempt.e).toMatchObject({ verdict: 'allow', rule: 'ranges', ip_range: '198.51.100.7' });
    expect(exempt.e.addresses[0]).toMatchObject({ verdict: 'allow', ip_range: '198.51.100.7', allow_range: '198.51.100.7/32' });
    expect(exempt.e.dns.needed).toBe(false);
  });

  it.each([
    ['api.example.com:80', 'port_not_allowed', false],
    ['other.example.org:443', 'host_not_allowed', true],
    ['8.8.8.8:443', 'ip_not_allowed', false],
    ['private.cdn.example.net:443', 'special_range', true],
    ['127.0.0.1:3999', 'loop', false],
    ['unpinned.cdn.example.net:443', 'dns_failed', true],
    ['bad host:443', 'bad_request', false],
  ])('%s: %s', async (dest, reason, needed) => {
    const { code, e } = await explainJson(dest);
    expect(code).toBe(1);
    expect(e.reason).toBe(reason);
    expect(e.dns.needed).toBe(needed);
  });

  it('--dns-hosts pins an answer; the text output says so', async () => {
    const pins = write('hosts', '# pins\n203.0.113.50 other.example.org\n93.184.216.34 unpinned.cdn.example.net\n');
    const r = await cli(['policy', 'explain', 'unpinned.cdn.example.net:443', '--config', config, '--offline', '--dns-hosts', pins]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('unpinned.cdn.example.net:443: allow');
    expect(r.stdout).toContain('rule      api (hosts pattern ".*.cdn.example.net")');
    expect(r.stdout).toContain('answered by a pinned address');
    expect(r.stdout).toMatch(/93\.184\.216\.34\s+allow; rule api/);
  });

  it('report mode: allowed, with what enforce would have said', async () => {
    const report = write('report.yaml', stringify({ listen: { proxy: '127.0.0.1:0' }, policy: { mode: 'report', rules: [{ name: 'a', hosts: ['a.example'], ports: [443] }] } }));
    const r = await cli(['policy', 'explain', '9.9.9.9:443', '--config', report, '--json']);
    expect(JSON.parse(r.stdout)).toMatchObject({ verdict: 'allow', would_deny: { reason: 'ip_not_allowed' }, policy: { verdict: 'deny', reason: 'ip_not_allowed' } });
  });

  it('dns: range entries are loaded as the gateway loads them (from pinned DNS), but not offline', async () => {
    const feed = write(
      'feed.yaml',
      stringify({
        listen: { proxy: '127.0.0.1:0' },
        policy: { rules: [{ name: 'fed', ip_ranges: ['dns:ranges.test'], ports: [443] }] },
        dns: { hosts: { 'ranges.test': '93.184.216.34' }, servers: ['127.0.0.1:9'] },
      }),
    );
    const on = await cli(['policy', 'explain', '93.184.216.34:443', '--config', feed, '--json']);
    const e = JSON.parse(on.stdout);
    expect(e).toMatchObject({ verdict: 'allow', rule: 'fed' });
    expect(e.range_feeds).toEqual([{ rule: 'fed', entry: 'dns:ranges.test', ranges: 1 }]);
    const off = await cli(['policy', 'explain', '93.184.216.34:443', '--config', feed, '--offline']);
    expect(off.code).toBe(1);
    expect(off.stdout).toContain('ranges    fed: dns:ranges.test: not loaded: --offline');
  });

  it('--user judges for a proxy user: only its rules, user_not_allowed naming the one outside them; an unknown user is exit 2', async () => {
    const hash = 'scrypt:N=16384,r=8,p=1:xxoZUUujBElziKWt7P9PcQ:5btsbcidK6OPKtbgKAYslWvobvFOErua_ASKlfj04LM';
    const users = write(
      'users.yaml',
      stringify({
        listen: { proxy: '127.0.0.1:3999' },
        clients: { users: [{ name: 'coreapp', password_hash: hash, rules: ['lab'] }, { name: 'ops', password_hash: hash }] },
        policy: { rules: [{ name: 'api', hosts: ['api.example.com'], ports: [443] }, { name: 'lab', hosts: ['lab.example.com'], ports: [8443] }], allow_ranges: ['198.51.100.7/32'] },
        dns: { hosts: { 'api.example.com': '93.184.216.34', 'lab.example.com': '198.51.100.7' }, servers: ['127.0.0.1:9'] },
      }),
    );
    const run = (dest: string, ...extra: string[]) => cli(['policy', 'explain', dest, '--config', users, '--offline', ...extra]);
    const outside = await run('api.example.com:443', '--user', 'coreapp', '--json');
    expect(outside.code).toBe(1);
    expect(JSON.parse(outside.stdout)).toMatchObject({ verdict: 'deny', reason: 'user_not_allowed', rule: 'api', user: { name: 'coreapp', rules: ['lab'] } });
    const inside = await run('lab.example.com:8443', '--user', 'coreapp');
    expect(inside.code).toBe(0);
    expect(inside.stdout).toContain('user      coreapp: limited to rules lab');
    // A user without rules, and no --user at all: every rule.
    expect((await run('api.example.com:443', '--user', 'ops')).stdout).toContain('user      ops: every rule');
    expect((await run('api.example.com:443')).code).toBe(0);
    const unknown = await run('api.example.com:443', '--user', 'nobody');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--user nobody: no such user in clients.users (coreapp, ops)');
  });

  it('a bad configuration is reported with its key path, exit 2', async () => {
    const bad = write('bad.yaml', 'listen: {proxy: "127.0.0.1:0"}\npolicy: {rules: [{name: x, hosts: ["*"], ports: [443]}]}\n');
    const r = await cli(['policy', 'explain', 'a.example:443', '--config', bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/policy\.rules\[0\]\.hosts\[0\]: .*every name/);
  });
});

describe('policy test', () => {
  it('the shipped tests hold for the default config, offline', async () => {
    const r = await cli(['policy', 'test', 'config/default.policy-test', '--offline']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/config\/default\.policy-test: (\d+) of \1 expectations hold; \d+ needed DNS \(offline/);
    expect(r.code).toBe(0);
  });

  it('prints each mismatch with the explanation and exits 1', async () => {
    const tests = write(
      'x.policy-test',
      [
        '# comments and blank lines are fine',
        '',
        'allow api.example.com:443 rule api',
        'allow other.example.org:443   # fails: host_not_allowed',
        'deny  api.example.com:443',
        'deny  8.8.8.8:443 reason special_range',
        'dns 93.184.216.34 new.cdn.example.net',
        'allow new.cdn.example.net:443 rule ranges',
      ].join('\n'),
    );
    const r = await cli(['policy', 'test', tests, '--config', config, '--offline']);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(`${tests}:4: FAIL: allow other.example.org:443: expected allow, got deny (host_not_allowed)`);
    expect(r.stdout).toContain(`${tests}:5: FAIL: deny  api.example.com:443: expected deny, got allow (rule api)`);
    expect(r.stdout).toContain(`${tests}:6: FAIL: deny  8.8.8.8:443 reason special_range: expected reason special_range, got ip_not_allowed`);
    expect(r.stdout).toContain(`${tests}:8: FAIL: allow new.cdn.example.net:443 rule ranges: expected rule ranges, got api`);
    expect(r.stdout).toContain('    other.example.org:443: deny (host_not_allowed)');
    expect(r.stdout).toContain('1 of 5 expectations hold, 4 failed');
    const json = await cli(['policy', 'test', tests, '--config', config, '--offline', '--json']);
    expect(JSON.parse(json.stdout)).toMatchObject({ passed: 1, failed: 4 });
  });

  it('a malformed test file: every bad line named, exit 2', async () => {
    const tests = write('bad.policy-test', 'permit a.example:443\ndeny a.example:443 reason nope\ndns not-an-ip a.example\nallow\n');
    const r = await cli(['policy', 'test', tests, '--config', config, '--offline']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${tests}:1: expected "allow", "deny" or "dns", got "permit"`);
    expect(r.stderr).toContain(`${tests}:2: unknown reason "nope"`);
    expect(r.stderr).toContain(`${tests}:3: not an IP address: "not-an-ip"`);
    expect(r.stderr).toContain(`${tests}:4: expected: allow HOST:PORT`);
  });
});
