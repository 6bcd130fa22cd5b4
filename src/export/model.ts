import type { Config } from '../config/schema.js';
import { EgressError } from '../errors.js';
import { CidrSet, parseCidr, type Cidr, type Family } from '../net/ip.js';
import type { Resolver } from '../net/resolve.js';
import { aggregate } from './aggregate.js';

/**
 * What an export says, whatever its format: per rule, its TCP ports, its
 * ranges aggregated per family, and (with `--resolve`) the current
 * addresses of its plain hostnames that its ranges do not already cover.
 */

export interface ResolvedAddress {
  host: string;
  address: string;
  family: Family;
}

export interface ExportRule {
  name: string;
  ports: number[];
  v4: string[];
  v6: string[];
  /** A DNS snapshot (`--resolve`), outside `v4`/`v6`. */
  resolved: ResolvedAddress[];
  /** Names that could not be resolved. */
  unresolved: string[];
  /** Entries of `hosts` left out: patterns, and plain names unless resolved. */
  hostPatterns: number;
  /** Plain names among `hosts` (what `--resolve` looks up). */
  plainNames: number;
}

export interface ExportModel {
  config: string;
  generatedAt: Date;
  /** Whether `--resolve` was asked for: the output holds a DNS snapshot. */
  snapshot: boolean;
  rules: ExportRule[];
  /** `url:`/`dns:` entries and the state their lists were in. */
  sources: string[];
}

type ConfigRule = Config['policy']['rules'][number];

export async function buildRule(rule: ConfigRule, dynamic: Cidr[], resolver: Resolver | null): Promise<ExportRule> {
  const cidrs = [...rule.fixed, ...dynamic];
  const { v4, v6 } = aggregate(cidrs);
  const resolved: ResolvedAddress[] = [];
  const unresolved: string[] = [];
  if (resolver && rule.hosts) {
    const covered = new CidrSet(cidrs);
    const seen = new Set<string>();
    for (const host of rule.hosts.exactNames().sort()) {
      let addresses: readonly string[];
      try {
        addresses = await resolver.resolve(host);
      } catch (err) {
        if (!(err instanceof EgressError)) throw err;
        unresolved.push(host);
        continue;
      }
      for (const address of addresses) {
        if (covered.has(address) || seen.has(address)) continue;
        seen.add(address);
        resolved.push({ host, address, family: parseCidr(address).family });
      }
    }
  }
  const names = rule.hosts?.exactNames().length ?? 0;
  const hostPatterns = rule.patterns - (resolver ? names : 0);
  return { name: rule.name, ports: [...rule.ports].sort((a, b) => a - b), v4, v6, resolved, unresolved, hostPatterns, plainNames: names };
}
