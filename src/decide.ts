import { EgressError, type Reason } from './errors.js';
import { classify, type Classified, type SpecialRange } from './net/classify.js';
import type { Config } from './config/schema.js';
import type { CidrSet } from './net/ip.js';
import { Resolver } from './net/resolve.js';
import type { SelfAddresses } from './net/self.js';
import type { Target } from './policy/hostport.js';
import { Policy, type Rule } from './policy/policy.js';

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
  /** `policy.require_sni`: a TLS connection that names no server is refused (see decideAt). */
  requireSni: boolean;
  /** The policy of each proxy user with its own `rules` (the same Rule objects, a subset). */
  userPolicies?: ReadonlyMap<string, Policy>;
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
    requireSni: config.policy.require_sni,
    userPolicies: userPolicies(config),
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

/**
 * What decide() saw on its way, for `policy explain`: filled in only when a
 * trace is passed, so the gateway's decisions pay one check per step.
 */
export interface DecisionTrace {
  /** Names of the rules that list the port, in order. */
  rules: string[];
  /** The rule whose `hosts` matched the name, and the pattern as written. */
  hostRule?: string;
  hostPattern?: string;
  /** How addresses were found: not needed, known without a query (dns.hosts or cache), queried, or failed. */
  dns: 'none' | 'known' | 'query' | 'failed';
  dnsError?: string;
  /** Each address judged, in the order the answer gave them. */
  addresses: AddressTrace[];
}

export interface AddressTrace {
  ip: string;
  /** The address the policy judged (the embedded IPv4 address, where there is one). */
  effective: string;
  range: SpecialRange | null;
  verdict: 'allow' | 'loop' | 'special_range' | 'not_allowed';
  rule?: string;
  /** The `ip_ranges` entry that holds the address, when the rule matched by range. */
  cidr?: string;
  /** The `allow_ranges` entry that exempted a special address. */
  allowRange?: string;
}

export function newTrace(): DecisionTrace {
  return { rules: [], dns: 'none', addresses: [] };
}

/** `user`: a proxy user, judged only against its own `rules`. */
export function decide(ctx: DecisionContext, target: Target, trace?: DecisionTrace, user?: string): Promise<Decision> {
  return judge(ctx, target, null, trace, user);
}

/** Computed once per configuration load: a user's request is judged only against its rules. */
function userPolicies(config: Config): Map<string, Policy> {
  const map = new Map<string, Policy>();
  for (const u of config.clients.users) {
    if (!u.rules) continue;
    const names = new Set(u.rules);
    map.set(u.name, new Policy(config.policy.rules.filter((r) => names.has(r.name))));
  }
  return map;
}

export interface DecideAtOptions {
  /**
   * The client spoke TLS but named no server (no SNI, or a ClientHello that
   * cannot be read): an allow by address is refused (`sni_required`) where
   * `policy.require_sni` or the allowing rule's `require_sni` says so.
   */
  nameless?: boolean;
}

/**
 * Judge a target whose address is already fixed (the original destination
 * of an intercepted connection), without any DNS query: `target` is the
 * name the client claims (TLS SNI) or the address itself. The name is
 * matched against `hosts` as in decide(); the address is the only one
 * judged (ranges, special ranges, the loop check) and dialled.
 */
export async function decideAt(ctx: DecisionContext, target: Target, address: string, opts: DecideAtOptions = {}, trace?: DecisionTrace): Promise<Decision> {
  const d = await judge(ctx, target, [address], trace);
  if (!opts.nameless || d.verdict !== 'allow' || d.wouldDeny) return d;
  const rule = ctx.policy.rules.find((r) => r.name === d.rule);
  if (!ctx.requireSni && !rule?.requireSni) return d;
  return policyDenial(ctx, target, { reason: 'sni_required', rule: d.rule }, [address], undefined, trace);
}

/** decide() with `given` addresses (no DNS query) or null (resolve the name). */
async function judge(ctx: DecisionContext, target: Target, given: readonly string[] | null, trace?: DecisionTrace, user?: string): Promise<Decision> {
  const policy = (user !== undefined && ctx.userPolicies?.get(user)) || ctx.policy;
  const rules = policy.rulesFor(target.port);
  const isIp = target.family !== undefined;
  const notAllowed: Reason = isIp ? 'ip_not_allowed' : 'host_not_allowed';
  const hostIndex = isIp || rules.length === 0 ? -1 : Policy.hostRuleIndex(rules, target.host);
  const hostRule = hostIndex >= 0 ? rules[hostIndex]!.name : undefined;
  if (trace) {
    trace.rules = rules.map((r) => r.name);
    trace.hostRule = hostRule;
    trace.hostPattern = hostIndex >= 0 ? rules[hostIndex]!.hosts!.matching(target.host) : undefined;
  }

  // Deny before any DNS query when no rule could still allow the destination
  // (or when names no rule lists may not cause queries: a DNS side channel).
  const deny = (denial: Denial, resolved: readonly string[] | null, judged?: readonly string[]) =>
    policyDenial(ctx, target, policy === ctx.policy ? denial : outsideUserRules(ctx, target, denial, resolved), resolved, judged, trace);
  if (rules.length === 0) return deny({ reason: 'port_not_allowed' }, given);
  if (!isIp && hostIndex < 0 && (!ctx.resolveUnlisted || !Policy.hasRanges(rules))) {
    return deny({ reason: notAllowed }, given);
  }

  let resolved: readonly string[];
  if (given) {
    resolved = given;
  } else if (isIp) {
    resolved = [target.host];
  } else {
    try {
      // Static hosts and cached answers need no await.
      const known = ctx.resolver.known(target.host);
      if (trace) trace.dns = known ? 'known' : 'query';
      resolved = known ?? (await ctx.resolver.resolve(target.host));
    } catch (err) {
      if (!(err instanceof EgressError)) throw err;
      if (trace) traceDnsFailure(trace, err);
      // A name no rule names does not get to learn that it fails to resolve.
      if (hostIndex < 0) return deny({ reason: notAllowed }, []);
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
      if (trace) traceAddress(ctx, trace, ip, c, 'loop');
      continue;
    }
    const rule = Policy.ruleFor(rules, hostIndex, c.effective);
    if (!rule) {
      if (trace) traceAddress(ctx, trace, ip, c, 'not_allowed');
      continue;
    }
    const viaRange = hostIndex < 0 || rule !== rules[hostIndex];
    if (c.range !== null && !ctx.allowRanges.has(c.effective)) {
      special ??= { reason: 'special_range', rule: rule.name, range: c.range };
      if (trace) traceAddress(ctx, trace, ip, c, 'special_range', rule, viaRange);
      continue;
    }
    if (trace) traceAddress(ctx, trace, ip, c, 'allow', rule, viaRange);
    firstRule ??= rule.name;
    if (!allowed.includes(c.dial)) allowed.push(c.dial);
  }
  if (allowed.length) return { verdict: 'allow', rule: firstRule, addresses: allowed };
  // A loop is refused even in report mode: it could only hurt the proxy itself.
  if (loop) return { verdict: 'deny', reason: 'loop', addresses: judged };
  return deny(special ?? { reason: notAllowed }, resolved, judged);
}

const NOT_LISTED: ReadonlySet<Reason> = new Set(['port_not_allowed', 'host_not_allowed', 'ip_not_allowed']);

/**
 * A user's request its rules do not allow: `user_not_allowed`, naming the
 * rule outside them that matches the port and the name (or an address
 * already judged), so the record says why; otherwise the denial as it was.
 */
function outsideUserRules(ctx: DecisionContext, target: Target, denial: Denial, resolved: readonly string[] | null): Denial {
  if (!NOT_LISTED.has(denial.reason)) return denial;
  const all = ctx.policy.rulesFor(target.port);
  const hostIndex = target.family === undefined ? Policy.hostRuleIndex(all, target.host) : -1;
  let rule = hostIndex >= 0 ? all[hostIndex] : undefined;
  const ips = target.family !== undefined ? [target.host] : (resolved ?? []);
  for (const ip of ips) rule ??= Policy.ruleFor(all, -1, classify(ip).effective);
  return rule ? { reason: 'user_not_allowed', rule: rule.name } : denial;
}

function traceAddress(
  ctx: DecisionContext,
  trace: DecisionTrace,
  ip: string,
  c: Classified,
  verdict: AddressTrace['verdict'],
  rule?: Rule,
  viaRange = false,
): void {
  trace.addresses.push({
    ip,
    effective: c.effective,
    range: c.range,
    verdict,
    rule: rule?.name,
    cidr: viaRange ? rule?.ranges?.matching(c.effective) : undefined,
    allowRange: c.range !== null && verdict === 'allow' ? ctx.allowRanges.matching(c.effective) : undefined,
  });
}

function traceDnsFailure(trace: DecisionTrace, err: EgressError): void {
  trace.dns = 'failed';
  trace.dnsError = err.message;
}

/** Judge an open connection again (a reload): `target` as first asked for, `address` the one it is connected to. */
export function decideConnected(ctx: DecisionContext, target: Target, address: string, user?: string): Promise<Decision> {
  return judge(ctx, target, [address], undefined, user);
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
  trace?: DecisionTrace,
): Promise<Decision> {
  if (ctx.mode === 'enforce') return { verdict: 'deny', ...denial, addresses: judged };
  let addresses = resolved;
  if (addresses === null || addresses.length === 0) {
    try {
      if (trace && target.family === undefined) trace.dns = ctx.resolver.known(target.host) ? 'known' : 'query';
      addresses = target.family !== undefined ? [target.host] : await ctx.resolver.resolve(target.host);
    } catch (err) {
      if (!(err instanceof EgressError)) throw err;
      if (trace) traceDnsFailure(trace, err);
      return { verdict: 'fail', reason: 'dns_failed', addresses: [], wouldDeny: denial };
    }
  }
  const dial = [...new Set(addresses.map((ip) => classify(ip).dial))].filter((ip) => !ctx.self.has(ip, target.port));
  if (dial.length === 0) return { verdict: 'deny', reason: 'loop', addresses };
  return { verdict: 'allow', addresses: dial, wouldDeny: denial };
}
