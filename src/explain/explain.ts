import { DEFAULT_CONFIG, loadConfigFile } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { decide, decisionContext, newTrace, type DecisionContext, type DecisionTrace } from '../decide.js';
import { EgressError, type Reason } from '../errors.js';
import { Resolver } from '../net/resolve.js';
import { SelfAddresses } from '../net/self.js';
import { RangeFeeds } from '../ranges/feeds.js';
import { formatAuthority, parseHostPort } from '../policy/hostport.js';
import { readPins, type Pins } from './pins.js';

/**
 * `policy explain`: one destination judged by the gateway's own decide(),
 * with a trace of what matched. Only the inputs differ from the gateway's:
 * DNS can be pinned (extra static answers) or forbidden (offline), so an
 * explanation, and a policy test, need not depend on live DNS.
 */

export interface ExplainOptions {
  /** Never query DNS: names not in dns.hosts or `pins` fail to resolve. */
  offline: boolean;
  /** Extra static answers (canonical name → addresses), over the config's dns.hosts. */
  pins: ReadonlyMap<string, readonly string[]>;
}

/** A Resolver that answers from static hosts only. */
class OfflineResolver extends Resolver {
  override async resolve(name: string): Promise<readonly string[]> {
    const known = this.known(name);
    if (known) return known;
    throw new EgressError('dns_failed', `${name} is not in dns.hosts and --offline forbids a DNS query`);
  }
}

export interface Explainer {
  ctx: DecisionContext;
  config: Config;
  opts: ExplainOptions;
  /** The rules' `url:`/`dns:` range entries and what they held when judged. */
  feeds?: FeedState[];
}

export interface FeedState {
  rule: string;
  entry: string;
  ranges: number;
  error?: string;
}

/** The decision inputs of `config`, as the gateway builds them, with the DNS options applied. */
export function explainer(config: Config, opts: ExplainOptions): Explainer {
  const self = new SelfAddresses();
  // Every socket the gateway counts as its own (the loop check), the admin listener's too.
  const { proxy, socks, transparent, admin, forwards } = config.listen;
  for (const l of [proxy, socks, transparent, admin, ...forwards.map((f) => f.listen)]) if (l && l.port !== 0) self.add(l.host, l.port);
  const ctx = decisionContext(config, self);
  const hosts = new Map(config.dns.hosts);
  for (const [name, addresses] of opts.pins) hosts.set(name, [...addresses]);
  const resolverOpts = { hosts, servers: config.dns.servers, timeoutMs: config.timeouts.dns };
  ctx.resolver = opts.offline ? new OfflineResolver(resolverOpts) : new Resolver(resolverOpts);
  return { ctx, config, opts };
}

export type Verdict = 'allow' | 'deny' | 'fail';

export interface AddressExplanation {
  address: string;
  /** Set when the policy judged another address (the IPv4 address embedded in an IPv6 one). */
  judged_as?: string;
  verdict: 'allow' | 'loop' | 'special_range' | 'not_allowed';
  special_range?: string;
  rule?: string;
  ip_range?: string;
  allow_range?: string;
}

export interface Explanation {
  destination: string;
  mode: 'enforce' | 'report';
  /** What the gateway does with a connection to the destination. */
  verdict: Verdict;
  reason?: Reason;
  rule?: string;
  /** The hosts pattern that matched, when the deciding rule matched by name. */
  pattern?: string;
  /** The ip_ranges entry that matched, when the deciding rule matched by address. */
  ip_range?: string;
  special_range?: string;
  /** Report mode: what enforce mode would have denied. */
  would_deny?: { reason: Reason; rule?: string; special_range?: string };
  /** The policy's verdict with enforce semantics (what `policy test` compares). */
  policy: { verdict: Verdict; reason?: Reason };
  rules_for_port: string[];
  host_rule?: string;
  host_pattern?: string;
  dns: { needed: boolean; answer: 'none' | 'dns.hosts' | 'pinned' | 'resolver' | 'failed'; error?: string };
  addresses: AddressExplanation[];
  /** The `url:`/`dns:` range entries of the rules for this port, as loaded. */
  range_feeds?: FeedState[];
  /** A malformed destination: what is wrong with it. */
  error?: string;
  /** Judged for this proxy user, and the rules it is limited to (absent: all of them). */
  user?: { name: string; rules?: string[] };
}

/** `user`: a proxy user of `clients.users` (its `rules` limit what it may reach), checked by the caller. */
export async function explain(ex: Explainer, authority: string, user?: string): Promise<Explanation> {
  const who = user === undefined ? undefined : { name: user, rules: ex.config.clients.users.find((u) => u.name === user)?.rules };
  let target;
  try {
    target = parseHostPort(authority.trim());
  } catch (err) {
    if (!(err instanceof EgressError)) throw err;
    return {
      destination: authority,
      mode: ex.ctx.mode,
      verdict: 'deny',
      reason: err.reason,
      policy: { verdict: 'deny', reason: err.reason },
      rules_for_port: [],
      dns: { needed: false, answer: 'none' },
      addresses: [],
      error: err.message,
      user: who,
    };
  }
  const trace = newTrace();
  const d = await decide(ex.ctx, target, trace, user);
  const addresses = trace.addresses.map(
    (a): AddressExplanation => ({
      address: a.ip,
      judged_as: a.effective !== a.ip ? a.effective : undefined,
      verdict: a.verdict,
      special_range: a.range ?? undefined,
      rule: a.rule,
      ip_range: a.cidr,
      allow_range: a.allowRange,
    }),
  );
  const denial = d.verdict === 'allow' ? d.wouldDeny : d;
  const rule = d.rule;
  const byName = rule !== undefined && rule === trace.hostRule;
  const deciding = trace.addresses.find((a) => a.rule === rule && (d.verdict === 'allow' ? a.verdict === 'allow' : a.verdict !== 'not_allowed'));
  return {
    destination: formatAuthority(target),
    mode: ex.ctx.mode,
    verdict: d.verdict,
    reason: d.verdict === 'allow' ? undefined : d.reason,
    rule,
    pattern: byName ? trace.hostPattern : undefined,
    ip_range: !byName ? deciding?.cidr : undefined,
    special_range: d.verdict !== 'allow' ? d.range : undefined,
    would_deny: d.wouldDeny && { reason: d.wouldDeny.reason, rule: d.wouldDeny.rule, special_range: d.wouldDeny.range },
    policy: denial ? { verdict: d.verdict === 'fail' ? 'fail' : 'deny', reason: denial.reason } : { verdict: 'allow' },
    rules_for_port: trace.rules,
    host_rule: trace.hostRule,
    host_pattern: trace.hostPattern,
    dns: dnsAnswer(ex, target.host, trace),
    addresses,
    range_feeds: ex.feeds?.filter((f) => trace.rules.includes(f.rule)),
    user: who,
  };
}

function dnsAnswer(ex: Explainer, host: string, trace: DecisionTrace): Explanation['dns'] {
  if (trace.dns === 'none') return { needed: false, answer: 'none' };
  if (trace.dns === 'failed') return { needed: true, answer: 'failed', error: trace.dnsError };
  if (trace.dns === 'query') return { needed: true, answer: 'resolver' };
  return { needed: true, answer: ex.opts.pins.has(host) ? 'pinned' : 'dns.hosts' };
}

const DNS_TEXT: Record<Explanation['dns']['answer'], string> = {
  none: 'not needed',
  'dns.hosts': "needed: answered by the config's dns.hosts",
  pinned: 'needed: answered by a pinned address (--dns-hosts or the test file)',
  resolver: 'needed: answered by a DNS query',
  failed: 'needed: did not resolve',
};

/** The explanation as the terminal shows it. */
export function formatExplanation(e: Explanation): string {
  const head = e.verdict === 'allow' ? 'allow' : `${e.verdict} (${e.reason})`;
  const lines = [`${e.destination}: ${head}${e.mode === 'report' ? '   [report mode]' : ''}`];
  const row = (k: string, v: string) => lines.push(`  ${k.padEnd(10)}${v}`);
  if (e.user) row('user', `${e.user.name}: ${e.user.rules ? `limited to rules ${e.user.rules.join(', ')}` : 'every rule'}`);
  if (e.error) {
    row('error', e.error);
    return `${lines.join('\n')}\n`;
  }
  if (e.would_deny) row('enforce', `would deny (${e.would_deny.reason}${e.would_deny.rule ? `, rule ${e.would_deny.rule}` : ''})`);
  if (e.rule) {
    const how = e.pattern ? `hosts pattern "${e.pattern}"` : e.ip_range ? `ip_ranges entry ${e.ip_range}` : '';
    row('rule', `${e.rule}${how ? ` (${how})` : ''}`);
  } else if (e.host_rule) {
    row('rule', `${e.host_rule} (hosts pattern "${e.host_pattern}")`);
  }
  if (e.special_range) row('range', e.special_range);
  row('port', e.rules_for_port.length ? `rules listing it: ${e.rules_for_port.join(', ')}` : 'no rule lists it');
  if (e.rules_for_port.length && !e.host_rule && !isIpLiteral(e.destination)) row('hosts', 'no rule for this port matches the name');
  row('dns', `${DNS_TEXT[e.dns.answer]}${e.dns.error ? `: ${e.dns.error}` : ''}`);
  for (const f of e.range_feeds ?? []) row('ranges', `${f.rule}: ${f.entry}: ${f.error ? f.error : `${f.ranges} ranges`}`);
  if (e.addresses.length) {
    lines.push('  addresses:');
    const width = Math.max(...e.addresses.map((a) => a.address.length));
    for (const a of e.addresses) {
      const bits: string[] = [a.verdict === 'special_range' ? `special_range (${a.special_range})` : a.verdict];
      if (a.judged_as) bits.push(`judged as ${a.judged_as}`);
      if (a.allow_range) bits.push(`special range ${a.special_range} exempt by allow_ranges ${a.allow_range}`);
      if (a.rule) bits.push(`rule ${a.rule}${a.ip_range ? ` via ${a.ip_range}` : ''}`);
      lines.push(`    ${a.address.padEnd(width)}  ${bits.join('; ')}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/**
 * The config file (default: the bundled one) and DNS options of the explain
 * commands, loaded; `url:`/`dns:` range entries are loaded once as the
 * gateway loads them at start (cache, fetch, resolution), except offline.
 */
export async function loadExplainer(opts: { config?: string; offline?: boolean; dnsHosts?: string; pins?: Pins }): Promise<Explainer> {
  const config = loadConfigFile(opts.config ?? DEFAULT_CONFIG);
  const pins = opts.dnsHosts ? readPins(opts.dnsHosts) : new Map<string, string[]>();
  for (const [name, addresses] of opts.pins ?? []) pins.set(name, addresses);
  const ex = explainer(config, { offline: opts.offline ?? false, pins });
  const feeds = new RangeFeeds(config.policy.rules, config.ranges, ex.ctx.resolver);
  if (feeds.size && !ex.opts.offline) {
    await feeds.start();
    feeds.stop();
    ex.feeds = feeds.status().map((f) => ({ rule: f.rule, entry: f.entry, ranges: f.ranges, ...(f.error && { error: f.error }) }));
  } else if (feeds.size) {
    ex.feeds = feeds.status().map((f) => ({ rule: f.rule, entry: f.entry, ranges: 0, error: 'not loaded: --offline' }));
  }
  return ex;
}

function isIpLiteral(destination: string): boolean {
  return destination.startsWith('[') || /^\d+\.\d+\.\d+\.\d+:/.test(destination);
}
