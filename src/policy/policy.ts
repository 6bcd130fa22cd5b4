import type { CidrSet } from '../net/ip.js';
import type { HostMatcher } from './patterns.js';

/**
 * The compiled rule list. A destination is allowed by the first rule that
 * lists its port and whose `hosts` match the name or whose `ip_ranges` hold
 * the address that will be dialled. Rules are indexed by port so a decision
 * only looks at rules that can apply.
 */

export interface Rule {
  name: string;
  ports: ReadonlySet<number>;
  hosts: HostMatcher | null;
  /** Replaced whole (one assignment) when a `url:`/`dns:` entry changes: see ranges/feeds.ts. */
  ranges: CidrSet | null;
  /** `require_sni`: a TLS connection naming no server is not allowed by this rule's ranges (decideAt). */
  requireSni?: boolean;
}

export class Policy {
  private readonly byPort = new Map<number, Rule[]>();

  constructor(readonly rules: readonly Rule[]) {
    for (const rule of rules) {
      for (const port of rule.ports) {
        let list = this.byPort.get(port);
        if (!list) this.byPort.set(port, (list = []));
        list.push(rule);
      }
    }
  }

  /** Rules that list `port`, in order; empty means `port_not_allowed`. */
  rulesFor(port: number): readonly Rule[] {
    return this.byPort.get(port) ?? [];
  }

  /** Index of the first rule whose `hosts` match the canonical name, or -1. */
  static hostRuleIndex(rules: readonly Rule[], name: string): number {
    for (let i = 0; i < rules.length; i++) if (rules[i]!.hosts?.matches(name)) return i;
    return -1;
  }

  /**
   * The rule that allows address `ip`: the first one whose ranges hold it,
   * unless a rule at `hostIndex` (matched by name) comes first.
   */
  static ruleFor(rules: readonly Rule[], hostIndex: number, ip: string): Rule | undefined {
    const stop = hostIndex < 0 ? rules.length : hostIndex;
    for (let i = 0; i < stop; i++) if (rules[i]!.ranges?.has(ip)) return rules[i];
    return hostIndex < 0 ? undefined : rules[hostIndex];
  }

  static hasRanges(rules: readonly Rule[]): boolean {
    return rules.some((r) => r.ranges !== null && !r.ranges.empty);
  }
}
