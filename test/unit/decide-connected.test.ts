import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { decideConnected, decisionContext, type DecisionContext } from '../../src/decide.js';
import { Resolver } from '../../src/net/resolve.js';
import { SelfAddresses } from '../../src/net/self.js';
import { parseHostPort } from '../../src/policy/hostport.js';

/**
 * decideConnected(): an open connection judged again (a reload's
 * recheck_tunnels) through decide(), with the address it is connected to in
 * place of a DNS answer. The resolver throws if it is ever asked.
 */

class NoQueries extends Resolver {
  override known(name: string): readonly string[] | undefined {
    throw new Error(`resolver asked for ${name}`);
  }
  override resolve(name: string): Promise<readonly string[]> {
    throw new Error(`resolver asked for ${name}`);
  }
}

function ctx(policy: Record<string, unknown>, resolveUnlisted = true): DecisionContext {
  const config = parseConfig(stringify({ listen: { proxy: '127.0.0.1:3128' }, policy, dns: { resolve_unlisted: resolveUnlisted } }), '/nonexistent/config.yaml');
  return { ...decisionContext(config, new SelfAddresses()), resolver: new NoQueries({ hosts: new Map(), servers: [], timeoutMs: 100 }) };
}

const rules = [
  { name: 'web', hosts: ['chat.example.com'], ports: [443] },
  { name: 'ranges', ip_ranges: ['157.240.0.0/16'], ports: [443, 5222] },
];

describe('decideConnected', () => {
  const table: [string, string, string, string | undefined][] = [
    // authority, connected address, verdict, reason
    ['chat.example.com:443', '93.184.216.34', 'allow', undefined],
    ['other.example.com:443', '157.240.1.1', 'allow', undefined], // by range, no query
    ['other.example.com:443', '93.184.216.34', 'deny', 'host_not_allowed'],
    ['chat.example.com:5222', '93.184.216.34', 'deny', 'host_not_allowed'],
    ['chat.example.com:80', '93.184.216.34', 'deny', 'port_not_allowed'],
    ['chat.example.com:443', '10.0.0.1', 'deny', 'special_range'],
    ['157.240.1.1:5222', '157.240.1.1', 'allow', undefined],
    ['[::ffff:157.240.1.1]:443', '157.240.1.1', 'allow', undefined],
  ];
  for (const [authority, address, verdict, reason] of table) {
    it(`${authority} connected to ${address}: ${verdict}${reason ? ` (${reason})` : ''}`, async () => {
      const d = await decideConnected(ctx({ rules }), parseHostPort(authority), address);
      expect(d.verdict).toBe(verdict);
      if (reason) expect(d).toMatchObject({ reason, addresses: [address] });
    });
  }

  it('denies an unlisted name without a query when resolve_unlisted is off', async () => {
    const d = await decideConnected(ctx({ rules }, false), parseHostPort('other.example.com:443'), '157.240.1.1');
    expect(d).toMatchObject({ verdict: 'deny', reason: 'host_not_allowed' });
  });

  it('in report mode allows and says what enforce would deny, without a query', async () => {
    const d = await decideConnected(ctx({ rules, mode: 'report' }), parseHostPort('other.example.com:80'), '93.184.216.34');
    expect(d).toMatchObject({ verdict: 'allow', addresses: ['93.184.216.34'], wouldDeny: { reason: 'port_not_allowed' } });
  });
});
