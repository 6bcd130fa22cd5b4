import { clientWarnings } from '../access/clients.js';
import { auditPathProblem } from '../audit-path.js';
import type { ConfigIssue } from '../errors.js';
import { classify } from '../net/classify.js';
import { bigIntToV6, numberToV4, parseCidr, v4ToNumber, v6ToBigInt, type Cidr } from '../net/ip.js';
import type { ConfigSource } from './load.js';
import type { Config } from './schema.js';

/**
 * What `config check` and `serve` both look at once a configuration is
 * valid: `problems` (what would stop serve at start, so check finds it
 * first), `warnings` (rules that cannot work) and `notes` (how ambiguous
 * patterns were read). One function each, so the two commands agree.
 */

/** Listener addresses are the one thing only binding can prove. */
export const BIND_NOTE = 'listener addresses are not bound by a check: one in use or not on this host shows when serve starts';

/** What serve would fail on at start, besides binding its listeners. */
export function startProblems(loaded: ConfigSource): ConfigIssue[] {
  const problem = auditPathProblem(loaded.config.audit.file);
  return problem ? [loaded.at(['audit', 'file'], problem)] : [];
}

/** The key path of a listener, by the name Gateway gives it. */
export function listenerPath(config: Config, name: string): (string | number)[] {
  if (name !== 'forwards' && name in config.listen) return ['listen', name];
  const i = config.listen.forwards.findIndex((f) => f.name === name);
  return i < 0 ? ['listen'] : ['listen', 'forwards', i, 'listen'];
}

/** A bind error (EADDRINUSE, EACCES, EADDRNOTAVAIL) in words, at the listener's key. */
export function bindProblem(loaded: ConfigSource, name: string, err: NodeJS.ErrnoException & { address?: string; port?: number }): ConfigIssue {
  const path = listenerPath(loaded.config, name);
  const address = err.address !== undefined ? `${err.address.includes(':') ? `[${err.address}]` : err.address}:${err.port}` : name;
  const why: Record<string, string> = {
    EADDRINUSE: 'the address is already in use (another process listens there)',
    EACCES: 'permission denied (ports below 1024 need privileges: CAP_NET_BIND_SERVICE)',
    EADDRNOTAVAIL: 'the address is not one of this host\'s',
  };
  return loaded.at(path, `cannot listen on ${address}: ${why[err.code ?? ''] ?? err.message} (${err.code ?? 'error'})`);
}

/** A range as two comparable numbers in the family the policy judges it by (embedded IPv4 as IPv4). */
function judged(c: Cidr): { family: 4 | 6; start: bigint; end: bigint; range: string | null } {
  const text = (n: bigint) => (c.family === 4 ? numberToV4(Number(n)) : bigIntToV6(n));
  const a = classify(text(c.start));
  const b = classify(text(c.end));
  const num = (ip: string) => {
    const v4 = v4ToNumber(ip);
    return v4 !== null ? { family: 4 as const, n: BigInt(v4) } : { family: 6 as const, n: v6ToBigInt(ip)! };
  };
  const s = num(a.effective);
  const e = num(b.effective);
  return { family: s.family, start: s.n, end: e.n, range: a.range !== null && a.range === b.range && s.family === e.family ? a.range : null };
}

/** Rules that cannot work, and a policy that allows nothing. */
export function warnings(loaded: ConfigSource): ConfigIssue[] {
  const { config, raw } = loaded;
  const out: ConfigIssue[] = clientWarnings(config).map((w) => loaded.at(w.path, w.message));
  const rules = config.policy.rules;
  if (rules.length === 0) {
    out.push(
      loaded.at(
        ['policy'],
        config.policy.mode === 'enforce'
          ? 'policy.rules is empty: every connection is denied'
          : 'policy.rules is empty: report mode lets every connection through and records each as one enforce would deny',
      ),
    );
    return out;
  }
  const rawAllow = (raw as { policy?: { allow_ranges?: unknown } }).policy?.allow_ranges;
  const allow = (Array.isArray(rawAllow) ? rawAllow : []).map((t) => judged(parseCidr(String(t))));
  const exempt = (r: ReturnType<typeof judged>) => allow.some((a) => a.family === r.family && a.start <= r.end && a.end >= r.start);
  let dead = 0;
  rules.forEach((rule, i) => {
    let live = rule.source.hosts.length > 0;
    rule.source.ipRanges.forEach((entry, j) => {
      // A feed (url:, dns:) changes while serving: judged by what it holds then, not here.
      if (!Array.isArray(entry)) {
        live = true;
        return;
      }
      const deadHere = entry.map(judged).filter((r) => r.range !== null && !exempt(r));
      const rawEntry = String((raw as { policy: { rules: { ip_ranges: unknown[] }[] } }).policy.rules[i]!.ip_ranges[j]);
      if (deadHere.length < entry.length) live = true;
      if (deadHere.length === 0) return;
      const first = entry.find((c) => {
        const r = judged(c);
        return r.range !== null && !exempt(r);
      })!;
      const which = entry.length === 1 ? `${rawEntry} lies` : `${deadHere.length} of the ${entry.length} ranges of ${rawEntry} lie (first: ${first.text})`;
      out.push(
        loaded.at(
          ['policy', 'rules', i, 'ip_ranges', j],
          `${which} inside a special range (${deadHere[0]!.range}), denied unless policy.allow_ranges exempts it: ` +
            `${entry.length === 1 || deadHere.length === entry.length ? 'this entry can never allow a connection' : 'those can never allow a connection'}`,
        ),
      );
    });
    if (!live) {
      dead++;
      out.push(loaded.at(['policy', 'rules', i], `rule "${rule.name}" can never allow a connection: all its ip_ranges are special addresses and it has no hosts`));
    }
  });
  if (dead === rules.length) out.push(loaded.at(['policy', 'rules'], 'no rule can allow a connection: every connection is denied'));
  return out;
}

/** How each unprefixed pattern that both notations could read was read (always the vendor's way: see patterns.ts). */
export function notes(loaded: ConfigSource): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  loaded.config.policy.rules.forEach((rule, i) => {
    rule.source.hosts.forEach((p, j) => {
      if (!p.ambiguous) return;
      const body = p.source.trim();
      const reading = `read in the vendor's notation (".*" is one or more hostname characters, dots included); write "glob:${body}" to read it as a glob`;
      out.push(loaded.at(['policy', 'rules', i, 'hosts', j], `"${body}" ${reading}`));
    });
  });
  return out;
}
