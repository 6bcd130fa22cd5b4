import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { parse as parseYaml, stringify } from 'yaml';
import { DEFAULT_CONFIG, parseConfig } from '../../src/config/load.js';
import { decide, decisionContext, type Decision, type DecisionContext } from '../../src/decide.js';
import { Resolver } from '../../src/net/resolve.js';
import { SelfAddresses } from '../../src/net/self.js';
import { parseHostPort } from '../../src/policy/hostport.js';
import { deadDns } from '../helpers.js';

/**
 * decide() with a real Policy from parseConfig and a Resolver that answers
 * only from static hosts: its one DNS server is the helpers' dead DNS
 * server, which refuses every query, so any other name fails with
 * dns_failed. The system resolver is never used.
 */

const DEAD_DNS = await deadDns();

/**
 * A Resolver that records the names it was asked for. Every lookup starts
 * with `known()` (decide's no-await path; `resolve()` looks there first too),
 * so that is where a name is recorded, once per lookup.
 */
class CountingResolver extends Resolver {
  readonly asked: string[] = [];
  private inResolve = false;
  override known(name: string): readonly string[] | undefined {
    if (!this.inResolve) this.asked.push(name);
    return super.known(name);
  }
  override async resolve(name: string): Promise<readonly string[]> {
    if (this.asked.at(-1) !== name) this.asked.push(name);
    this.inResolve = true;
    try {
      return super.resolve(name);
    } finally {
      this.inResolve = false;
    }
  }
}

interface Setup {
  rules: Record<string, unknown>[];
  allow_ranges?: string[];
  hosts?: Record<string, string | string[]>;
  mode?: 'enforce' | 'report';
  self?: [string, number][];
  /** The config file name, which anchors `file:` ranges. */
  file?: string;
  resolveUnlisted?: boolean;
}

function setup(s: Setup): DecisionContext & { resolver: CountingResolver } {
  const text = stringify({
    listen: { proxy: '127.0.0.1:3128' },
    policy: { mode: s.mode ?? 'enforce', rules: s.rules, allow_ranges: s.allow_ranges ?? [] },
    dns: { hosts: s.hosts ?? {}, servers: [DEAD_DNS] },
  });
  const config = parseConfig(text, s.file ?? '/nonexistent/config.yaml');
  const resolver = new CountingResolver({ hosts: config.dns.hosts, servers: [DEAD_DNS], timeoutMs: 5000 });
  const self = new SelfAddresses();
  for (const [ip, port] of s.self ?? []) self.add(ip, port);
  return { ...decisionContext(config, self), resolver, resolveUnlisted: s.resolveUnlisted ?? true };
}

const run = (ctx: DecisionContext, authority: string): Promise<Decision> => decide(ctx, parseHostPort(authority));

// The main policy used by most tests.
const RULES = [
  {
    name: 'web',
    hosts: ['allowed.example.com', '*.wild.example.org', 'unresolvable.example.com', 'special.example.com', 'mixed.example.com', 'loop.example.com', 'embedded.example.com', 'both.example.com'],
    ports: [443],
  },
  { name: 'ranges', ip_ranges: ['157.240.0.0/16', '2a03:2880::/29', '10.0.0.0/8', '127.0.0.0/8'], ports: [443, 5222] },
  { name: 'chat', hosts: ['chat.example.com'], ports: [5222] },
];
const HOSTS: Record<string, string | string[]> = {
  'allowed.example.com': '93.184.216.34',
  'a.wild.example.org': '93.184.216.35',
  'byip.example.net': '157.240.2.2',
  'byip6.example.net': '2a03:2880:f12f::1',
  'unmatched.example.net': '8.8.8.8',
  'special.example.com': ['10.0.0.1', '192.168.1.1'],
  'mixed.example.com': ['10.0.0.1', '157.240.1.1', '127.0.0.1', '::1', '2a03:2880::1', '93.184.216.34', '169.254.169.254', 'fe80::1'],
  'embedded.example.com': ['::ffff:157.240.1.1', '157.240.1.1', '64:ff9b::9df0:101', '::ffff:127.0.0.1', '64:ff9b::a00:1'],
  'loop.example.com': '127.0.0.1',
  'both.example.com': ['157.240.1.1', '93.184.216.34'],
  'chat.example.com': '31.13.64.1',
  'private.example.net': '10.1.1.1',
};

describe('decide: reasons', () => {
  const ctx = setup({ rules: RULES, hosts: HOSTS });

  it('port_not_allowed, without any DNS query', async () => {
    const asked = ctx.resolver.asked.length;
    expect(await run(ctx, 'allowed.example.com:80')).toEqual({ verdict: 'deny', reason: 'port_not_allowed', addresses: [] });
    expect(await run(ctx, 'unresolvable.example.com:8443')).toMatchObject({ verdict: 'deny', reason: 'port_not_allowed' });
    expect(await run(ctx, '157.240.1.1:22')).toMatchObject({ verdict: 'deny', reason: 'port_not_allowed' });
    expect(await run(ctx, '[2a03:2880::1]:80')).toMatchObject({ verdict: 'deny', reason: 'port_not_allowed' });
    expect(ctx.resolver.asked.length).toBe(asked);
  });

  it('allows a name its rule lists', async () => {
    expect(await run(ctx, 'allowed.example.com:443')).toEqual({ verdict: 'allow', rule: 'web', addresses: ['93.184.216.34'] });
    expect(await run(ctx, 'ALLOWED.Example.com.:443')).toEqual({ verdict: 'allow', rule: 'web', addresses: ['93.184.216.34'] });
    expect(await run(ctx, 'a.wild.example.org:443')).toEqual({ verdict: 'allow', rule: 'web', addresses: ['93.184.216.35'] });
  });

  it('host_not_allowed: a name no rule lists, whose address is in no range', async () => {
    expect(await run(ctx, 'unmatched.example.net:443')).toEqual({ verdict: 'deny', reason: 'host_not_allowed', addresses: ['8.8.8.8'] });
  });

  it('host_not_allowed: the port is listed, but only by a rule for other names', async () => {
    // Port 5222: rules "ranges" and "chat"; allowed.example.com is only in "web" (443).
    expect(await run(ctx, 'allowed.example.com:5222')).toMatchObject({ verdict: 'deny', reason: 'host_not_allowed' });
    expect(await run(ctx, 'chat.example.com:5222')).toEqual({ verdict: 'allow', rule: 'chat', addresses: ['31.13.64.1'] });
    expect(await run(ctx, 'chat.example.com:443')).toMatchObject({ verdict: 'deny', reason: 'host_not_allowed' });
  });

  it('host_not_allowed (403), not dns_failed, for an unmatched name that does not resolve while ip_ranges exist', async () => {
    const before = ctx.resolver.asked.length;
    const d = await run(ctx, 'nowhere.example.net:443');
    expect(d).toEqual({ verdict: 'deny', reason: 'host_not_allowed', addresses: [] });
    // It was resolved (to test ip_ranges), once.
    expect(ctx.resolver.asked.slice(before)).toEqual(['nowhere.example.net']);
  });

  it('dns_failed (502) for a name a rule matched that does not resolve', async () => {
    expect(await run(ctx, 'unresolvable.example.com:443')).toEqual({ verdict: 'fail', reason: 'dns_failed', rule: 'web', addresses: [] });
    expect(await run(ctx, 'b.wild.example.org:443')).toEqual({ verdict: 'fail', reason: 'dns_failed', rule: 'web', addresses: [] });
  });

  it('ip_ranges allow a name through its resolved address', async () => {
    expect(await run(ctx, 'byip.example.net:443')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['157.240.2.2'] });
    expect(await run(ctx, 'byip.example.net:5222')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['157.240.2.2'] });
    expect(await run(ctx, 'byip6.example.net:443')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['2a03:2880:f12f::1'] });
  });

  it('ip_ranges allow IP literals in every form', async () => {
    for (const literal of ['157.240.1.1', '2649751809', '0x9df00101', '0235.0360.1.1', '157.240.257', '157.240.1.1.']) {
      expect(await run(ctx, `${literal}:443`), literal).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['157.240.1.1'] });
    }
    expect(await run(ctx, '[2a03:2880::1]:443')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['2a03:2880::1'] });
    // A mapped literal is judged and dialled as its IPv4 address.
    expect(await run(ctx, '[::ffff:157.240.1.1]:443')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['157.240.1.1'] });
  });

  it('ip_not_allowed for an IP literal outside every range, even a special one', async () => {
    expect(await run(ctx, '8.8.8.8:443')).toEqual({ verdict: 'deny', reason: 'ip_not_allowed', addresses: ['8.8.8.8'] });
    expect(await run(ctx, '[2001:4860:4860::8888]:443')).toMatchObject({ verdict: 'deny', reason: 'ip_not_allowed' });
    expect(await run(ctx, '192.168.1.1:443')).toMatchObject({ verdict: 'deny', reason: 'ip_not_allowed' });
    expect(await run(ctx, '[::1]:443')).toMatchObject({ verdict: 'deny', reason: 'ip_not_allowed' });
  });

  it('special_range for a listed name that resolves only to special addresses', async () => {
    expect(await run(ctx, 'special.example.com:443')).toEqual({
      verdict: 'deny',
      reason: 'special_range',
      rule: 'web',
      range: 'private',
      addresses: ['10.0.0.1', '192.168.1.1'],
    });
  });

  it('special_range for an address in ip_ranges that is also special', async () => {
    expect(await run(ctx, 'private.example.net:443')).toMatchObject({ verdict: 'deny', reason: 'special_range', rule: 'ranges', range: 'private' });
    expect(await run(ctx, '10.0.0.1:443')).toMatchObject({ verdict: 'deny', reason: 'special_range', rule: 'ranges', range: 'private' });
    // Every loopback literal form.
    for (const literal of ['127.0.0.1', '2130706433', '0x7f000001', '0177.0.0.1', '127.1', '127.0.0.1.', '[::ffff:127.0.0.1]', '[::127.0.0.1]', '[::ffff:0:7f00:1]']) {
      expect(await run(ctx, `${literal}:443`), literal).toMatchObject({ verdict: 'deny', reason: 'special_range', range: 'loopback' });
    }
  });

  it('multiple addresses: only the allowed ones are returned, in order, without duplicates', async () => {
    expect(await run(ctx, 'mixed.example.com:443')).toEqual({
      verdict: 'allow',
      rule: 'web',
      addresses: ['157.240.1.1', '2a03:2880::1', '93.184.216.34'],
    });
  });

  it('embedded IPv4: judged as IPv4; mapped dialled as IPv4, NAT64 as IPv6', async () => {
    expect(await run(ctx, 'embedded.example.com:443')).toEqual({
      verdict: 'allow',
      rule: 'web',
      addresses: ['157.240.1.1', '64:ff9b::9df0:101'],
    });
  });
});

describe('decide: rule order', () => {
  const hosts = { 'x.example.com': ['157.240.1.1'], 'y.example.com': ['8.8.8.8'], 'z.example.com': ['8.8.8.8', '157.240.1.1'] };
  const byRange = { name: 'by-range', ip_ranges: ['157.240.0.0/16'], ports: [443] };
  const byName = { name: 'by-name', hosts: ['x.example.com', 'y.example.com', 'z.example.com'], ports: [443] };

  it('the first rule that allows wins: ranges first', async () => {
    const ctx = setup({ rules: [byRange, byName], hosts });
    expect(await run(ctx, 'x.example.com:443')).toMatchObject({ verdict: 'allow', rule: 'by-range' });
    expect(await run(ctx, 'y.example.com:443')).toMatchObject({ verdict: 'allow', rule: 'by-name' });
    // The rule of the first allowed address is reported.
    expect(await run(ctx, 'z.example.com:443')).toEqual({ verdict: 'allow', rule: 'by-name', addresses: ['8.8.8.8', '157.240.1.1'] });
  });

  it('the first rule that allows wins: names first', async () => {
    const ctx = setup({ rules: [byName, byRange], hosts });
    expect(await run(ctx, 'x.example.com:443')).toMatchObject({ verdict: 'allow', rule: 'by-name' });
    expect(await run(ctx, 'y.example.com:443')).toMatchObject({ verdict: 'allow', rule: 'by-name' });
  });

  it('the first of two name rules wins', async () => {
    const ctx = setup({
      rules: [
        { name: 'one', hosts: ['*.example.com'], ports: [443] },
        { name: 'two', hosts: ['x.example.com'], ports: [443, 5222] },
      ],
      hosts,
    });
    expect(await run(ctx, 'x.example.com:443')).toMatchObject({ rule: 'one' });
    expect(await run(ctx, 'x.example.com:5222')).toMatchObject({ rule: 'two' });
  });

  it('rules that do not list the port are skipped', async () => {
    const ctx = setup({
      rules: [
        { name: 'https-only', hosts: ['x.example.com'], ports: [443] },
        { name: 'chat', ip_ranges: ['157.240.0.0/16'], ports: [5222] },
      ],
      hosts,
    });
    expect(await run(ctx, 'x.example.com:5222')).toMatchObject({ verdict: 'allow', rule: 'chat' });
    expect(await run(ctx, 'y.example.com:5222')).toMatchObject({ verdict: 'deny', reason: 'host_not_allowed' });
  });

  it('an IP literal is never allowed by a hosts entry that spells it', async () => {
    const ctx = setup({ rules: [{ name: 'r', hosts: ['157.240.1.1', 'x.example.com'], ports: [443] }], hosts });
    expect(await run(ctx, '157.240.1.1:443')).toMatchObject({ verdict: 'deny', reason: 'ip_not_allowed' });
  });

  it('without any ip_ranges an unmatched name is denied without a DNS query', async () => {
    const ctx = setup({ rules: [byName], hosts });
    expect(await run(ctx, 'other.example.net:443')).toEqual({ verdict: 'deny', reason: 'host_not_allowed', addresses: [] });
    expect(ctx.resolver.asked).toEqual([]);
  });

  it('with dns.resolve_unlisted false an unmatched name is denied without a DNS query, even with ip_ranges', async () => {
    const ctx = setup({ rules: RULES, hosts: HOSTS, resolveUnlisted: false });
    expect(await run(ctx, 'byip.example.net:443')).toEqual({ verdict: 'deny', reason: 'host_not_allowed', addresses: [] });
    expect(ctx.resolver.asked).toEqual([]);
    // Listed names and IP literals are judged as before.
    expect(await run(ctx, 'allowed.example.com:443')).toMatchObject({ verdict: 'allow', rule: 'web' });
    expect(await run(ctx, '157.240.2.2:443')).toMatchObject({ verdict: 'allow', rule: 'ranges' });
  });
});

describe('decide: allow_ranges', () => {
  it('exempt special addresses inside them, and only those', async () => {
    const ctx = setup({ rules: RULES, hosts: HOSTS, allow_ranges: ['10.0.0.0/24', '127.0.0.1/32'] });
    expect(await run(ctx, 'special.example.com:443')).toEqual({ verdict: 'allow', rule: 'web', addresses: ['10.0.0.1'] });
    expect(await run(ctx, '10.0.0.1:443')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['10.0.0.1'] });
    expect(await run(ctx, '10.0.1.1:443')).toMatchObject({ verdict: 'deny', reason: 'special_range' });
    expect(await run(ctx, '127.0.0.1:443')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['127.0.0.1'] });
    expect(await run(ctx, '[::ffff:127.0.0.1]:443')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['127.0.0.1'] });
    expect(await run(ctx, '127.0.0.2:443')).toMatchObject({ verdict: 'deny', reason: 'special_range', range: 'loopback' });
    expect(await run(ctx, 'loop.example.com:443')).toEqual({ verdict: 'allow', rule: 'web', addresses: ['127.0.0.1'] });
  });

  it('do not allow anything by themselves: a rule must still match', async () => {
    const ctx = setup({ rules: RULES, hosts: { ...HOSTS, 'local.example.net': '192.168.1.1' }, allow_ranges: ['192.168.0.0/16'] });
    expect(await run(ctx, '192.168.1.1:443')).toMatchObject({ verdict: 'deny', reason: 'ip_not_allowed' });
    expect(await run(ctx, 'local.example.net:443')).toMatchObject({ verdict: 'deny', reason: 'host_not_allowed' });
    expect(await run(ctx, 'special.example.com:443')).toEqual({ verdict: 'allow', rule: 'web', addresses: ['192.168.1.1'] });
  });

  it('with several addresses, the exempted ones are allowed next to public ones', async () => {
    const ctx = setup({ rules: RULES, hosts: HOSTS, allow_ranges: ['127.0.0.0/8', 'fe80::/10'] });
    expect(await run(ctx, 'mixed.example.com:443')).toEqual({
      verdict: 'allow',
      rule: 'web',
      addresses: ['157.240.1.1', '127.0.0.1', '2a03:2880::1', '93.184.216.34', 'fe80::1'],
    });
  });
});

describe('decide: loop', () => {
  it('a destination equal to a listener is refused whatever allow_ranges says', async () => {
    const ctx = setup({ rules: RULES, hosts: HOSTS, allow_ranges: ['127.0.0.0/8', '::1/128'], self: [['127.0.0.1', 443]] });
    expect(await run(ctx, 'loop.example.com:443')).toEqual({ verdict: 'deny', reason: 'loop', addresses: ['127.0.0.1'] });
    expect(await run(ctx, '127.0.0.1:443')).toMatchObject({ verdict: 'deny', reason: 'loop' });
    expect(await run(ctx, '2130706433:443')).toMatchObject({ verdict: 'deny', reason: 'loop' });
    expect(await run(ctx, '[::ffff:127.0.0.1]:443')).toMatchObject({ verdict: 'deny', reason: 'loop' });
    // Another address or another port is not the listener.
    expect(await run(ctx, '127.0.0.2:443')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['127.0.0.2'] });
    expect(await run(ctx, '127.0.0.1:5222')).toEqual({ verdict: 'allow', rule: 'ranges', addresses: ['127.0.0.1'] });
  });

  it('with several addresses, the loop address is dropped and the rest allowed', async () => {
    const ctx = setup({ rules: RULES, hosts: HOSTS, allow_ranges: ['127.0.0.0/8'], self: [['127.0.0.1', 443]] });
    expect(await run(ctx, 'mixed.example.com:443')).toEqual({
      verdict: 'allow',
      rule: 'web',
      addresses: ['157.240.1.1', '2a03:2880::1', '93.184.216.34'],
    });
  });

  it('a wildcard listener covers every local address on its port', async () => {
    const ctx = setup({ rules: RULES, hosts: HOSTS, allow_ranges: ['127.0.0.0/8', '0.0.0.0/8', '::1/128'], self: [['0.0.0.0', 443]] });
    expect(await run(ctx, '127.0.0.5:443')).toMatchObject({ verdict: 'deny', reason: 'loop' });
    expect(await run(ctx, '0.0.0.0:443')).toMatchObject({ verdict: 'deny', reason: 'loop' });
    expect(await run(ctx, '127.0.0.5:5222')).toMatchObject({ verdict: 'allow' });
  });

  it('is refused even in report mode', async () => {
    const ctx = setup({ rules: RULES, hosts: HOSTS, mode: 'report', self: [['127.0.0.1', 443]] });
    expect(await run(ctx, 'loop.example.com:443')).toMatchObject({ verdict: 'deny', reason: 'loop' });
    expect(await run(ctx, '127.0.0.1:443')).toMatchObject({ verdict: 'deny', reason: 'loop' });
  });
});

describe('decide: report mode', () => {
  const ctx = setup({ rules: RULES, hosts: HOSTS, mode: 'report' });

  it('allowed destinations are allowed as in enforce mode, without wouldDeny', async () => {
    expect(await run(ctx, 'allowed.example.com:443')).toEqual({ verdict: 'allow', rule: 'web', addresses: ['93.184.216.34'] });
  });

  it('port_not_allowed: allowed, with what enforce would deny', async () => {
    expect(await run(ctx, 'allowed.example.com:80')).toEqual({
      verdict: 'allow',
      addresses: ['93.184.216.34'],
      wouldDeny: { reason: 'port_not_allowed' },
    });
  });

  it('host_not_allowed', async () => {
    expect(await run(ctx, 'unmatched.example.net:443')).toEqual({
      verdict: 'allow',
      addresses: ['8.8.8.8'],
      wouldDeny: { reason: 'host_not_allowed' },
    });
  });

  it('ip_not_allowed', async () => {
    expect(await run(ctx, '8.8.8.8:443')).toEqual({ verdict: 'allow', addresses: ['8.8.8.8'], wouldDeny: { reason: 'ip_not_allowed' } });
  });

  it('special_range', async () => {
    expect(await run(ctx, 'special.example.com:443')).toEqual({
      verdict: 'allow',
      addresses: ['10.0.0.1', '192.168.1.1'],
      wouldDeny: { reason: 'special_range', rule: 'web', range: 'private' },
    });
  });

  it('mapped addresses are dialled as IPv4 in report mode too', async () => {
    expect(await run(ctx, '[::ffff:8.8.8.8]:80')).toEqual({ verdict: 'allow', addresses: ['8.8.8.8'], wouldDeny: { reason: 'port_not_allowed' } });
  });

  it('a name that does not resolve fails with dns_failed, still saying what enforce would deny', async () => {
    expect(await run(ctx, 'nowhere.example.net:443')).toEqual({
      verdict: 'fail',
      reason: 'dns_failed',
      addresses: [],
      wouldDeny: { reason: 'host_not_allowed' },
    });
    expect(await run(ctx, 'nowhere.example.net:80')).toMatchObject({ verdict: 'fail', reason: 'dns_failed', wouldDeny: { reason: 'port_not_allowed' } });
  });

  it('a listed name that does not resolve is dns_failed as in enforce mode', async () => {
    expect(await run(ctx, 'unresolvable.example.com:443')).toEqual({ verdict: 'fail', reason: 'dns_failed', rule: 'web', addresses: [] });
  });
});

describe('decide: the default policy', () => {
  it('allows the vendor names and ranges, denies the rest', async () => {
    const raw = parseYaml(readFileSync(DEFAULT_CONFIG, 'utf8')) as { policy: Setup };
    const ctx = setup({
      file: DEFAULT_CONFIG,
      rules: raw.policy.rules,
      hosts: {
        'g.whatsapp.net': '157.240.1.53',
        'media-sin6-1.cdn.whatsapp.net': '93.184.216.34',
        'docker.whatsapp.biz': '93.184.216.35',
        'web.whatsapp.com': '93.184.216.36',
        'evil.example': '157.240.1.60',
      },
    });
    expect(await run(ctx, 'g.whatsapp.net:5222')).toMatchObject({ verdict: 'allow', rule: 'whatsapp' });
    expect(await run(ctx, 'media-sin6-1.cdn.whatsapp.net:443')).toMatchObject({ verdict: 'allow', rule: 'whatsapp' });
    expect(await run(ctx, 'docker.whatsapp.biz:443')).toMatchObject({ verdict: 'allow', rule: 'whatsapp-images' });
    expect(await run(ctx, 'docker.whatsapp.biz:5222')).toMatchObject({ verdict: 'deny', reason: 'host_not_allowed' });
    expect(await run(ctx, 'web.whatsapp.com:443')).toMatchObject({ verdict: 'deny', reason: 'host_not_allowed' });
    // 157.240.1.60/31 is in the vendor's list: a name resolving there is allowed through ip_ranges.
    expect(await run(ctx, 'evil.example:443')).toMatchObject({ verdict: 'allow', rule: 'whatsapp' });
    expect(await run(ctx, '157.240.1.60:5222')).toMatchObject({ verdict: 'allow', rule: 'whatsapp' });
    expect(await run(ctx, '157.240.1.1:443')).toMatchObject({ verdict: 'deny', reason: 'ip_not_allowed' });
    expect(await run(ctx, 'g.whatsapp.net:80')).toMatchObject({ verdict: 'deny', reason: 'port_not_allowed' });
    expect(await run(ctx, 'mmg.whatsapp.net:443')).toMatchObject({ verdict: 'fail', reason: 'dns_failed', rule: 'whatsapp' });
  });
});
