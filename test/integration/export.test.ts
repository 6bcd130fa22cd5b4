import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { aggregate } from '../../src/export/aggregate.js';
import { parseCidr } from '../../src/net/ip.js';
import { startDns, type TestDns } from '../fixtures/dns-server.js';

/**
 * `wa-egress export`: every format loaded into the real tool inside a
 * network namespace of its own (nothing on the host changes), and the
 * aggregation checked against interval arithmetic written here
 * independently, on the shipped vendor list and on random lists.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const FIXTURE = resolve(import.meta.dirname, '../fixtures/whatsapp_cidr_ipv4.txt');
const run = promisify(execFile);

/** Whether `sh -c script` succeeds in a new network namespace (tool present, kernel support). */
function works(script: string): boolean {
  return spawnSync('unshare', ['-n', 'sh', '-c', script], { stdio: 'ignore' }).status === 0;
}
const have = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
const netns = works('true');
const nft = netns && have('nft') && works('nft list ruleset');
const iptables = netns && have('iptables-restore') && works('iptables -S');
const ip6tables = netns && have('ip6tables-restore') && works('ip6tables -S');
const ipset = netns && have('ipset') && works('ipset create t hash:net && ipset destroy t');
for (const [ok, what] of [
  [netns, 'unshare -n (network namespaces)'],
  [nft, 'nft in a network namespace'],
  [iptables, 'iptables-restore in a network namespace'],
  [ip6tables, 'ip6tables-restore in a network namespace'],
  [ipset, 'ipset (needs the ip_set kernel module)'],
] as const) {
  if (!ok) console.warn(`export tests: skipping the checks that need ${what}: not available here`);
}

/** Run `script` in a fresh network namespace; throws with its stderr on failure. */
function inNetns(script: string): void {
  const r = spawnSync('unshare', ['-n', 'sh', '-c', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${script}: exit ${r.status}: ${r.stderr}`);
}

let dir: string;
let config: string;
let dns: TestDns;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-export-'));
  dns = await startDns({ 'chat.example.com': { A: ['192.0.2.10', '198.51.100.7'], AAAA: ['2001:db8:1::10'], ttl: 60 } });
  config = join(dir, 'config.yaml');
  writeFileSync(
    config,
    stringify({
      listen: { proxy: '127.0.0.1:0' },
      policy: {
        rules: [
          {
            name: 'vendor',
            hosts: ['chat.example.com', 'static.example.com', '*.cdn.example.com'],
            ip_ranges: [`file:${FIXTURE}`, '2001:db8:100::/48', '2001:db8:101::/48', '198.51.100.0/25'],
            ports: [443, 5222],
          },
          { name: 'mail relay', ip_ranges: ['203.0.113.0/26', '203.0.113.64/26'], ports: [25] },
          { name: 'names only', hosts: ['*.example.org'], ports: [443] },
        ],
      },
      dns: { hosts: { 'static.example.com': ['192.0.2.20', '192.0.2.10'] }, servers: [dns.server] },
    }),
  );
});
afterAll(async () => dns.close());

async function exportWith(...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [CLI, 'export', '--config', config, ...args]);
  return stdout;
}

function save(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

// ---- Independent interval arithmetic on IPv4, with plain numbers. ----
function v4(text: string): [number, number] {
  const [addr, len = '32'] = text.split('/');
  const n = addr!.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(len));
  expect(n % size).toBe(0); // aligned: a proper CIDR
  return [n, n + size - 1];
}
function covered(list: string[]): [number, number][] {
  const sorted = list.map(v4).sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [s, e] of sorted) {
    const last = out[out.length - 1];
    if (last && s <= last[1] + 1) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}
const fixtureCidrs = () =>
  readFileSync(FIXTURE, 'utf8')
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter(Boolean);

describe('aggregation', () => {
  it('covers exactly the addresses of the shipped vendor list, with no two blocks mergeable', async () => {
    const input = fixtureCidrs();
    expect(input).toHaveLength(229);
    const out = await exportWith('--format', 'cidr', '--rule', 'vendor', '--family', '4');
    const cidrs = out.split('\n').filter((l) => l && !l.startsWith('#'));
    // The rule holds the list plus one range of its own.
    expect(covered(cidrs)).toEqual(covered([...input, '198.51.100.0/25']));
    expect(cidrs.length).toBeLessThanOrEqual(input.length + 1);
    // No overlaps, and no pair of blocks that could be one bigger block.
    const blocks = cidrs.map(v4).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < blocks.length; i++) {
      const [a, b] = [blocks[i - 1]!, blocks[i]!];
      expect(b[0]).toBeGreaterThan(a[1]);
      const size = a[1] - a[0] + 1;
      const mergeable = b[0] === a[1] + 1 && b[1] - b[0] + 1 === size && a[0] % (2 * size) === 0;
      expect(mergeable).toBe(false);
    }
  });

  it('merges overlapping and adjacent ranges, per family', () => {
    const r = aggregate(['10.0.0.0/25', '10.0.0.128/25', '10.0.1.0/24', '10.0.0.5', '10.0.3.0/24', '2001:db8::/33', '2001:db8:8000::/33', '2001:db8::1'].map(parseCidr));
    expect(r.v4).toEqual(['10.0.0.0/23', '10.0.3.0/24']);
    expect(r.v6).toEqual(['2001:db8::/32']);
    expect(aggregate(['10.0.0.1', '10.0.0.2'].map(parseCidr)).v4).toEqual(['10.0.0.1/32', '10.0.0.2/32']);
    expect(aggregate(['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.0'].map(parseCidr)).v4).toEqual(['10.0.0.0/30']);
  });

  it('covers the same addresses as its input, on random lists', () => {
    const cidr = fc.tuple(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 8, max: 32 })).map(([n, len]) => {
      const size = 2 ** (32 - len);
      const base = n - (n % size);
      return `${[24, 16, 8, 0].map((s) => Math.floor(base / 2 ** s) % 256).join('.')}/${len}`;
    });
    fc.assert(
      fc.property(fc.array(cidr, { minLength: 1, maxLength: 40 }), (list) => {
        expect(covered(aggregate(list.map(parseCidr)).v4)).toEqual(covered(list));
      }),
    );
  });
});

describe('formats', () => {
  it.skipIf(!nft)('nftables: nft -c accepts it, and loading it twice keeps the operator’s chain', async () => {
    const file = save('rules.nft', await exportWith('--format', 'nftables', '--resolve'));
    inNetns(`nft -c -f ${file}`);
    const listed = spawnSync('unshare', ['-n', 'sh', '-c',
      `nft -f ${file} && nft add chain inet wa_egress forward '{ type filter hook forward priority 0; policy drop; }' && ` +
      `nft add rule inet wa_egress forward jump allow && nft -f ${file} && nft list table inet wa_egress`], { encoding: 'utf8' });
    expect(listed.status, listed.stderr).toBe(0);
    expect(listed.stdout).toContain('jump allow');
    expect(listed.stdout).toMatch(/ip daddr @vendor_v4 tcp dport \{ 443, 5222 \} accept/);
    expect(listed.stdout).toMatch(/ip6 daddr @vendor_v6/);
    expect(listed.stdout).toMatch(/mail_relay_v4 tcp dport 25 accept/);
  });

  it.skipIf(!iptables)('iptables: iptables-restore --test accepts it', async () => {
    const file = save('rules.v4', await exportWith('--format', 'iptables', '--resolve'));
    inNetns(`iptables-restore --test --noflush ${file}`);
    const text = readFileSync(file, 'utf8');
    expect(text).toContain('-A WA-EGRESS -d 203.0.113.0/25 -p tcp --dport 25 -m comment --comment "rule mail relay" -j ACCEPT');
    expect(text).toContain('-d 192.0.2.20 -p tcp -m multiport --dports 443,5222 -m comment --comment "rule vendor: resolved static.example.com"');
  });

  it.skipIf(!ip6tables)('iptables --family 6: ip6tables-restore --test accepts it', async () => {
    const file = save('rules.v6', await exportWith('--format', 'iptables', '--family', '6', '--resolve'));
    inNetns(`ip6tables-restore --test --noflush ${file}`);
    expect(readFileSync(file, 'utf8')).toContain('-d 2001:db8:100::/47');
  });

  it.skipIf(!ipset)('ipset: ipset restore loads it (twice), and iptables --ipset matches its sets', async () => {
    const sets = save('sets.ipset', await exportWith('--format', 'ipset', '--resolve'));
    const rules = save('rules-ipset.v4', await exportWith('--format', 'iptables', '--ipset'));
    const r = spawnSync('unshare', ['-n', 'sh', '-c',
      `ipset restore -exist < ${sets} && ipset restore -exist < ${sets} && ` +
      (iptables ? `iptables-restore --test --noflush ${rules} && ` : '') + 'ipset list wa-vendor-v4 && ipset list -n'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('192.0.2.10 comment "resolved chat.example.com"');
    expect(r.stdout.split('\n')).toEqual(expect.arrayContaining(['wa-vendor-v4', 'wa-vendor-v6', 'wa-mail_relay-v4']));
    expect(r.stdout).not.toContain('-new');
  });

  it('json: rules, ports, CIDRs per family, and the snapshot marked', async () => {
    const doc = JSON.parse(await exportWith('--format', 'json', '--resolve'));
    expect(doc).toMatchObject({ generated_by: 'wa-egress export', config, snapshot: true });
    const vendor = doc.rules.find((r: { name: string }) => r.name === 'vendor');
    expect(vendor.ports).toEqual([443, 5222]);
    expect(vendor.ipv6).toEqual(['2001:db8:100::/47']);
    expect(vendor.ipv4).toContain('198.51.100.0/25');
    // 192.0.2.10 resolves for both names: listed once; 198.51.100.7 lies in 198.51.100.0/25: already covered.
    expect(vendor.resolved).toEqual([
      { host: 'chat.example.com', cidr: '192.0.2.10/32' },
      { host: 'chat.example.com', cidr: '2001:db8:1::10/128' },
      { host: 'static.example.com', cidr: '192.0.2.20/32' },
    ]);
    expect(vendor.host_patterns_not_exported).toBe(1);
    expect(doc.rules.find((r: { name: string }) => r.name === 'mail relay').ipv4).toEqual(['203.0.113.0/25']);
  });

  it('cidr: a header naming config, rules and time; the snapshot said as such', async () => {
    const before = Date.now();
    const out = await exportWith('--format', 'cidr', '--resolve', '--rule', 'vendor', '--rule', 'names only');
    const lines = out.split('\n');
    expect(lines).toContain(`# config: ${config}`);
    expect(lines).toContain('# rules: vendor (tcp 443,5222), names only (tcp 443)');
    const at = Date.parse(/^# generated: (.+)$/m.exec(out)![1]!);
    expect(at).toBeGreaterThanOrEqual(before - 1000);
    expect(out).toMatch(/DNS snapshot taken at/);
    expect(out).toContain('# rule names only: no addresses to export');
    expect(out).toContain('# rule vendor: resolved (DNS snapshot)\n192.0.2.10/32\n192.0.2.20/32\n');
    expect(out).not.toContain('203.0.113.0/25');
  });

  it('without --resolve, no DNS query is made and no address is resolved', async () => {
    const queries = dns.queries.length;
    const out = await exportWith('--format', 'cidr');
    expect(out).not.toContain('resolved');
    expect(out).toContain('--resolve adds a snapshot');
    expect(dns.queries.length).toBe(queries);
  });

  it('refuses an unknown rule or format', async () => {
    const e1 = await exportWith('--format', 'cidr', '--rule', 'nope').catch((e) => e);
    expect(e1.code).toBe(1);
    expect(e1.stderr).toContain('no rule named "nope"');
    const e2 = await exportWith('--format', 'pf').catch((e) => e);
    expect(e2.code).toBe(1);
    expect(e2.stderr).toContain('--format must be one of');
  });

  it('exports the bundled WhatsApp policy by default', async () => {
    const { stdout } = await run(process.execPath, [CLI, 'export', '--format', 'cidr']);
    expect(covered(stdout.split('\n').filter((l) => l && !l.startsWith('#')))).toEqual(covered(fixtureCidrs()));
  });
});
