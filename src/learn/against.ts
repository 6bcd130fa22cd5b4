import type { Config } from '../config/schema.js';
import { decide, decisionContext, type DecisionContext } from '../decide.js';
import { EgressError } from '../errors.js';
import { Resolver } from '../net/resolve.js';
import { SelfAddresses } from '../net/self.js';
import type { Target } from '../policy/hostport.js';

/**
 * Judge seen destinations by a configuration, through the one decision path
 * (decide.ts) in enforce mode. Without `dns`, no query leaves the process:
 * names are judged by the rules and `dns.hosts` alone (a name no rule
 * lists counts as denied even if its addresses lie in some `ip_ranges`).
 */

class PinnedResolver extends Resolver {
  override async resolve(name: string): Promise<readonly string[]> {
    const known = this.known(name);
    if (known) return known;
    throw new EgressError('dns_failed', `${name}: DNS is off (only dns.hosts answers)`);
  }
}

export type Judgement = 'allowed' | 'denied' | 'special';

export function judge(config: Config, dns: boolean): (t: Target) => Promise<Judgement> {
  const base = decisionContext(config, new SelfAddresses());
  const ctx: DecisionContext = {
    ...base,
    mode: 'enforce',
    resolver: dns ? base.resolver : new PinnedResolver({ hosts: config.dns.hosts, servers: [], timeoutMs: config.timeouts.dns }),
  };
  return async (target) => {
    const d = await decide(ctx, target);
    // `fail` is a failure of a destination the policy allows (DNS off, or a name that does not resolve).
    if (d.verdict !== 'deny') return 'allowed';
    return d.reason === 'special_range' ? 'special' : 'denied';
  };
}
