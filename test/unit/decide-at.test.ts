import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { decideAt, decisionContext, type DecisionContext } from '../../src/decide.js';
import { Resolver } from '../../src/net/resolve.js';
import { SelfAddresses } from '../../src/net/self.js';
import { parseHostPort } from '../../src/policy/hostport.js';

/**
 * decideAt(): a target judged at an address the network fixed (a
 * transparent connection's original destination), never with a DNS query:
 * the resolver answers nothing and counts what it is asked.
 */

class NoDns extends Resolver {
  asked = 0;
  override known(): undefined {
    this.asked++;
    return undefined;
  }
  override resolve(): Promise<readonly string[]> {
    this.asked++;
    return Promise.reject(new Error('no DNS in decideAt'));
  }
}

function setup(policy: Record<string, unknown>, self: [string, number][] = []): DecisionContext & { resolver: NoDns } {
  const config = parseConfig(stringify({ listen: { proxy: '127.0.0.1:3128' }, policy }), '/nonexistent/config.yaml');
  const resolver = new NoDns({ hosts: new Map(), servers: ['127.0.0.1:9'], timeoutMs: 100 });
  const s = new SelfAddresses();
  for (const [ip, port] of self) s.add(ip, port);
  return { ...decisionContext(config, s), resolver };
}

const RULES = [
  { name: 'chat', hosts: ['g.whatsapp.net', '.*.cdn.whatsapp.net'], ports: [443, 5222] },
  { name: 'ranges', ip_ranges: ['157.240.0.0/16'], ports: [443, 5222] },
  { name: 'strict', ip_ranges: ['31.13.64.0/18'], ports: [443], require_sni: true },
];

describe('decideAt', () => {
  const ctx = setup({ rules: RULES });
  const at = (authority: string, ip: string, nameless = false) => decideAt(ctx, parseHostPort(authority), ip, { nameless });

  it.each([
    // [target (SNI or the address), original destination, verdict, reason or rule]
    ['g.whatsapp.net:443', '93.184.216.34', 'allow', 'chat'], // the name allows; any public address
    ['media-x.cdn.whatsapp.net:5222', '93.184.216.34', 'allow', 'chat'],
    ['evil.example:443', '157.240.1.1', 'allow', 'ranges'], // the address allows whatever the name
    ['evil.example:443', '93.184.216.34', 'deny', 'host_not_allowed'],
    ['g.whatsapp.net:80', '93.184.216.34', 'deny', 'port_not_allowed'],
    ['g.whatsapp.net:443', '10.1.2.3', 'deny', 'special_range'], // a name never opens a private address
    ['g.whatsapp.net:443', '169.254.169.254', 'deny', 'special_range'],
    ['157.240.1.1:5222', '157.240.1.1', 'allow', 'ranges'],
    ['93.184.216.34:5222', '93.184.216.34', 'deny', 'ip_not_allowed'],
  ])('%s at %s: %s (%s)', async (target, ip, verdict, why) => {
    const d = await at(target, ip);
    expect(d.verdict).toBe(verdict);
    if (verdict === 'allow') {
      expect(d.rule).toBe(why);
      expect(d.addresses).toEqual([ip]);
    } else {
      expect(d).toMatchObject({ reason: why, addresses: [ip] });
    }
    expect(ctx.resolver.asked).toBe(0);
  });

  it('an address that is one of our listeners is a loop, whatever the name', async () => {
    const c = setup({ rules: RULES, allow_ranges: ['127.0.0.0/8'] }, [['127.0.0.1', 443]]);
    await expect(decideAt(c, parseHostPort('g.whatsapp.net:443'), '127.0.0.1')).resolves.toMatchObject({ verdict: 'deny', reason: 'loop' });
  });

  it('nameless TLS: a rule with require_sni does not allow by address; others still do', async () => {
    await expect(at('31.13.64.1:443', '31.13.64.1', true)).resolves.toMatchObject({ verdict: 'deny', reason: 'sni_required', rule: 'strict' });
    await expect(at('31.13.64.1:443', '31.13.64.1', false)).resolves.toMatchObject({ verdict: 'allow', rule: 'strict' });
    await expect(at('157.240.1.1:443', '157.240.1.1', true)).resolves.toMatchObject({ verdict: 'allow', rule: 'ranges' });
  });

  it('policy.require_sni refuses every nameless TLS connection', async () => {
    const c = setup({ rules: RULES, require_sni: true });
    await expect(decideAt(c, parseHostPort('157.240.1.1:443'), '157.240.1.1', { nameless: true })).resolves.toMatchObject({ verdict: 'deny', reason: 'sni_required' });
    await expect(decideAt(c, parseHostPort('157.240.1.1:443'), '157.240.1.1')).resolves.toMatchObject({ verdict: 'allow' });
  });

  it('report mode lets a denial through at the same address and says what enforce would do', async () => {
    const c = setup({ rules: RULES, mode: 'report', require_sni: true });
    const d = await decideAt(c, parseHostPort('evil.example:443'), '93.184.216.34');
    expect(d).toMatchObject({ verdict: 'allow', addresses: ['93.184.216.34'], wouldDeny: { reason: 'host_not_allowed' } });
    const n = await decideAt(c, parseHostPort('157.240.1.1:443'), '157.240.1.1', { nameless: true });
    expect(n).toMatchObject({ verdict: 'allow', addresses: ['157.240.1.1'], wouldDeny: { reason: 'sni_required' } });
    expect(c.resolver.asked).toBe(0);
  });
});

describe('match_dns in the config', () => {
  it("adds a dns: entry for each of the rule's plain names", () => {
    const config = parseConfig(
      stringify({
        listen: { transparent: '0.0.0.0:15001' },
        policy: { rules: [{ name: 'chat', hosts: ['g.whatsapp.net', '.*.cdn.whatsapp.net', 'v.whatsapp.net'], ip_ranges: ['dns:v.whatsapp.net'], match_dns: true, ports: [5222] }] },
      }),
      '/nonexistent/config.yaml',
    );
    expect(config.policy.rules[0]!.sources.map((s) => s.text)).toEqual(['dns:v.whatsapp.net', 'dns:g.whatsapp.net']);
  });

  it('is an error on a rule with only patterns', () => {
    expect(() =>
      parseConfig(stringify({ listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'p', hosts: ['*.example.org'], match_dns: true, ports: [443] }] } }), '/x/c.yaml'),
    ).toThrow(/rules.*0.*match_dns: match_dns follows the addresses/);
  });

  it('listen.transparent takes part in the overlap and name checks', () => {
    expect(() => parseConfig(stringify({ listen: { proxy: '0.0.0.0:15001', transparent: '127.0.0.1:15001' }, policy: { rules: [] } }), '/x/c.yaml')).toThrow(
      /listen\.transparent: 127\.0\.0\.1:15001 overlaps listener "proxy"/,
    );
    expect(() =>
      parseConfig(stringify({ listen: { transparent: '127.0.0.1:1', forwards: [{ name: 'transparent', listen: '127.0.0.1:2', to: 'a.example:1' }] }, policy: { rules: [] } }), '/x/c.yaml'),
    ).toThrow(/duplicate listener name "transparent"/);
  });
});
