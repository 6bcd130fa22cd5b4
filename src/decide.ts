import { EgressError, type Reason } from './errors.js';
import { classify, type SpecialRange } from './net/classify.js';
import type { Config } from './config/schema.js';
import type { CidrSet } from './net/ip.js';
import { Resolver } from './net/resolve.js';
import type { SelfAddresses } from './net/self.js';
import type { Target } from './policy/hostport.js';
import { Policy } from './policy/policy.js';

/**
 * The one decision path shared by every listener:
 * port → hostname rules → resolve once → classify every address → the
 * checked addresses to dial. A denial is a value, not an exception.
 */

export interface DecisionContext {
  policy: Policy;
  mode: 'enforce' | 'report';
  allowRanges: CidrSet;
  resolver: Resolver;
  self: SelfAddresses;
  /** Resolve names no rule's `hosts` match, to test them against `ip_ranges`. */
  resolveUnlisted: boolean;
}

/** The decision inputs a validated configuration describes. */
export function decisionContext(config: Config, self: SelfAddresses): DecisionContext {
  return {
    policy: new Policy(config.policy.rules),
    mode: config.policy.mode,
    allowRanges: config.policy.allow_ranges,
    resolver: new Resolver({ hosts: config.dns.hosts, servers: config.dns.servers, timeoutMs: config.timeouts.dns }),
    self,
    resolveUnlisted: config.dns.resolve_unlisted,
  };
}

export interface Denial {
  reason: Reason;
  rule?: string;
  /** The special range that caused `special_range`. */
  range?: SpecialRange;
}

export type Decision =
  | {
      verdict: 'allow';
      rule?: string;
      /** Checked addresses, in the order to dial them. */
      addresses: readonly string[];
      /** Report mode: what enforce mode would have denied. */
      wouldDeny?: Denial;
    }
  | ({ verdict: 'deny' | 'fail'; addresses: readonly string[]; wouldDeny?: Denial } & Denial);

export async function decide(ctx: DecisionContext, target: Target): Promise<Decision> {
  const rules = ctx.policy.rulesFor(target.port);
  const isIp = target.family !== undefined;
  const notAllowed: Reason = isIp ? 'ip_not_allowed' : 'host_not_allowed';
  const hostIndex = isIp || rules.length === 0 ? -1 : Policy.hostRuleIndex(rules, target.host);
  const hostRule = hostIndex >= 0 ? rules[hostIndex]!.name : undefined;

  // Deny before any DNS query when no rule could still allow the destination
  // (or when names no rule lists may not cause queries: a DNS side channel).
  if (rules.length === 0) return policyDenial(ctx, target, { reason: 'port_not_allowed' }, null);
  if (!isIp && hostIndex < 0 && (!ctx.resolveUnlisted || !Policy.hasRanges(rules))) {
    return policyDenial(ctx, target, { reason: notAllowed }, null);
  }

  let resolved: readonly string[];
  if (isIp) {
    resolved = [target.host];
  } else {
    try {
      // Static hosts and cached answers need no await.
      resolved = ctx.resolver.known(target.host) ?? (await ctx.resolver.resolve(target.host));
    } catch (err) {
      if (!(err instanceof EgressError)) throw err;
      // A name no rule names does not get to learn that it fails to resolve.
      if (hostIndex < 0) return policyDenial(ctx, target, { reason: notAllowed }, []);
      return { verdict: 'fail', reason: 'dns_failed', rule: hostRule, addresses: [] };
    }
  }

  const allowed: string[] = [];
  const judged: string[] = [];
  let firstRule: string | undefined;
  let loop = false;
  let special: Denial | undefined;
  for (const ip of resolved) {
    const c = classify(ip);
    judged.push(c.effective);
    if (ctx.self.has(c.dial, target.port)) {
      loop = true;
      continue;
    }
    const rule = Policy.ruleFor(rules, hostIndex, c.effective);
    if (!rule) continue;
    if (c.range !== null && !ctx.allowRanges.has(c.effective)) {
      special ??= { reason: 'special_range', rule: rule.name, range: c.range };
      continue;
    }
    firstRule ??= rule.name;
    if (!allowed.includes(c.dial)) allowed.push(c.dial);
  }
  if (allowed.length) return { verdict: 'allow', rule: firstRule, addresses: allowed };
  // A loop is refused even in report mode: it could only hurt the proxy itself.
  if (loop) return { verdict: 'deny', reason: 'loop', addresses: judged };
  return policyDenial(ctx, target, special ?? { reason: notAllowed }, resolved, judged);
}

/**
 * Enforce mode: a denial. Report mode: allow anyway, remembering what enforce
 * would have said; the name is resolved here if the policy did not need to.
 */
async function policyDenial(
  ctx: DecisionContext,
  target: Target,
  denial: Denial,
  resolved: readonly string[] | null,
  judged: readonly string[] = resolved ?? [],
): Promise<Decision> {
  if (ctx.mode === 'enforce') return { verdict: 'deny', ...denial, addresses: judged };
  let addresses = resolved;
  if (addresses === null || addresses.length === 0) {
    try {
      addresses = target.family !== undefined ? [target.host] : await ctx.resolver.resolve(target.host);
    } catch (err) {
      if (!(err instanceof EgressError)) throw err;
      return { verdict: 'fail', reason: 'dns_failed', addresses: [], wouldDeny: denial };
    }
  }
  const dial = [...new Set(addresses.map((ip) => classify(ip).dial))].filter((ip) => !ctx.self.has(ip, target.port));
  if (dial.length === 0) return { verdict: 'deny', reason: 'loop', addresses };
  return { verdict: 'allow', addresses: dial, wouldDeny: denial };
}
