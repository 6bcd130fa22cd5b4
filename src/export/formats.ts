import type { Family } from '../net/ip.js';
import type { ExportModel, ExportRule } from './model.js';

/**
 * An export model as firewall input: an nftables script, an
 * `iptables-restore` (or `ip6tables-restore`) file, an `ipset restore` file,
 * a plain CIDR list, or JSON. Every text format opens with a comment header
 * naming the config, the rules, the time and how to load it.
 */

export type Format = 'nftables' | 'iptables' | 'ipset' | 'cidr' | 'json';
export const FORMATS: readonly Format[] = ['nftables', 'iptables', 'ipset', 'cidr', 'json'];

export interface FormatOptions {
  /** Only this family (iptables: which of iptables-restore/ip6tables-restore; default 4). */
  family?: Family;
  /** iptables: match ipset sets (made by `--format ipset`) instead of listing CIDRs. */
  ipset?: boolean;
}

export function render(format: Format, m: ExportModel, opts: FormatOptions = {}): string {
  switch (format) {
    case 'nftables':
      return nftables(m, opts);
    case 'iptables':
      return iptables(m, opts);
    case 'ipset':
      return ipset(m, opts);
    case 'cidr':
      return cidr(m, opts);
    case 'json':
      return json(m, opts);
  }
}

const families = (opts: FormatOptions): Family[] => (opts.family ? [opts.family] : [4, 6]);
const ranges = (r: ExportRule, f: Family) => (f === 4 ? r.v4 : r.v6);
const resolvedOf = (r: ExportRule, f: Family) => r.resolved.filter((a) => a.family === f);
const hasEntries = (r: ExportRule, f: Family) => ranges(r, f).length > 0 || resolvedOf(r, f).length > 0;
/** Double quotes and backslashes never reach a quoted comment. */
const quote = (s: string) => `"${s.replace(/["\\]/g, '_')}"`;

function header(m: ExportModel, what: string, load: string[]): string[] {
  const lines = [
    `wa-egress export: ${what}`,
    `config: ${m.config}`,
    `rules: ${m.rules.map((r) => `${r.name} (tcp ${r.ports.join(',')})`).join(', ') || 'none'}`,
    `generated: ${m.generatedAt.toISOString()}`,
    ...m.sources.map((s) => `source: ${s}`),
  ];
  if (m.snapshot) {
    lines.push(
      `entries marked "resolved" are a DNS snapshot taken at ${m.generatedAt.toISOString()}, not a policy:`,
      'names move between addresses, so export again regularly',
    );
  }
  for (const r of m.rules) {
    if (r.unresolved.length) lines.push(`rule ${r.name}: did not resolve: ${r.unresolved.join(', ')}`);
    if (r.hostPatterns) {
      const hint = m.snapshot || r.plainNames === 0 ? '' : '; --resolve adds a snapshot of the plain names';
      lines.push(`rule ${r.name}: ${r.hostPatterns} of its hosts not exported (firewalls match addresses${hint})`);
    }
    if (![4, 6].some((f) => hasEntries(r, f as Family))) lines.push(`rule ${r.name}: no addresses to export`);
  }
  return [...lines, ...load].map((l) => (l ? `# ${l}` : '#'));
}

/** Names for per-rule sets: `[A-Za-z0-9_]`, unique, at most `max` characters with `suffix`. */
function setNames(rules: ExportRule[], sep: string, max: number): Map<string, string> {
  const out = new Map<string, string>();
  const used = new Set<string>();
  for (const r of rules) {
    let base = r.name.replace(/[^A-Za-z0-9_]/g, '_').slice(0, max);
    for (let i = 2; used.has(base); i++) base = `${base.slice(0, max - String(i).length - 1)}${sep}${i}`;
    used.add(base);
    out.set(r.name, base);
  }
  return out;
}

function nftables(m: ExportModel, opts: FormatOptions): string {
  const names = setNames(m.rules, '_', 40);
  const out = header(m, 'nftables', [
    '',
    'load with: nft -f FILE (one transaction: the sets below and the chain "allow" of table inet wa_egress',
    'are emptied and refilled; other chains of the table, such as the one jumping here, are kept)',
    'send traffic through it from a base chain of this table, once, e.g.',
    '  nft add chain inet wa_egress forward "{ type filter hook forward priority 0; policy drop; }"',
    '  nft add rule inet wa_egress forward ct state established,related accept',
    '  nft add rule inet wa_egress forward jump allow',
  ]);
  const sets: { name: string; family: 4 | 6; elements: string[] }[] = [];
  const rules: string[] = [];
  for (const r of m.rules) {
    for (const f of families(opts)) {
      if (!hasEntries(r, f)) continue;
      const name = `${names.get(r.name)}_v${f}`;
      sets.push({
        name,
        family: f,
        elements: [...ranges(r, f), ...resolvedOf(r, f).map((a) => `${a.address} comment ${quote(`resolved ${a.host}`)}`)],
      });
      const ports = r.ports.length === 1 ? `${r.ports[0]}` : `{ ${r.ports.join(', ')} }`;
      rules.push(`    ${f === 4 ? 'ip' : 'ip6'} daddr @${name} tcp dport ${ports} accept comment ${quote(`rule ${r.name}`)}`);
    }
  }
  const declare = (s: (typeof sets)[number]) => [`  set ${s.name} {`, `    type ipv${s.family}_addr`, '    flags interval'];
  // Declare (a no-op when they exist), empty, then fill.
  out.push('', 'table inet wa_egress {');
  for (const s of sets) out.push(...declare(s), '  }');
  out.push('  chain allow {', '  }', '}');
  for (const s of sets) out.push(`flush set inet wa_egress ${s.name}`);
  out.push('flush chain inet wa_egress allow', 'table inet wa_egress {');
  for (const s of sets) {
    out.push(...declare(s), '    elements = {');
    s.elements.forEach((e, i) => out.push(`      ${e}${i < s.elements.length - 1 ? ',' : ''}`));
    out.push('    }', '  }');
  }
  out.push('  chain allow {', ...rules, '  }', '}');
  return `${out.join('\n')}\n`;
}

/** multiport takes at most 15 ports. */
function portGroups(ports: number[]): number[][] {
  const groups: number[][] = [];
  for (let i = 0; i < ports.length; i += 15) groups.push(ports.slice(i, i + 15));
  return groups;
}

function iptables(m: ExportModel, opts: FormatOptions): string {
  const f = opts.family ?? 4;
  const tool = f === 4 ? 'iptables-restore' : 'ip6tables-restore';
  const names = setNames(m.rules, '_', 24);
  const out = header(m, `${tool}${opts.ipset ? ' with ipset sets (load the ipset export first)' : ''}`, [
    '',
    `load with: ${tool} --noflush FILE (only the chain WA-EGRESS is replaced; without --noflush the whole filter table is)`,
    `then: ${f === 4 ? 'iptables' : 'ip6tables'} -A FORWARD -j WA-EGRESS (or OUTPUT, for this host's own traffic)`,
  ]);
  out.push('', '*filter', ':WA-EGRESS - [0:0]');
  for (const r of m.rules) {
    if (!hasEntries(r, f)) continue;
    for (const ports of portGroups(r.ports)) {
      const match = `-p tcp ${ports.length === 1 ? `--dport ${ports[0]}` : `-m multiport --dports ${ports.join(',')}`}`;
      if (opts.ipset) {
        out.push(`-A WA-EGRESS -m set --match-set wa-${names.get(r.name)}-v${f} dst ${match} -m comment --comment ${quote(`rule ${r.name}`)} -j ACCEPT`);
        continue;
      }
      for (const c of ranges(r, f)) out.push(`-A WA-EGRESS -d ${c} ${match} -m comment --comment ${quote(`rule ${r.name}`)} -j ACCEPT`);
      for (const a of resolvedOf(r, f)) {
        out.push(`-A WA-EGRESS -d ${a.address} ${match} -m comment --comment ${quote(`rule ${r.name}: resolved ${a.host}`)} -j ACCEPT`);
      }
    }
  }
  out.push('COMMIT');
  return `${out.join('\n')}\n`;
}

function ipset(m: ExportModel, opts: FormatOptions): string {
  const names = setNames(m.rules, '_', 24);
  const out = header(m, 'ipset', [
    '',
    'load with: ipset restore -exist < FILE',
    'each set is filled under a temporary name and swapped in, so a loaded set is never half full',
    'ipset matches addresses only: the ports are in the rules line above (or use --format iptables --ipset)',
  ]);
  for (const r of m.rules) {
    for (const f of families(opts)) {
      if (!hasEntries(r, f)) continue;
      const set = `wa-${names.get(r.name)}-v${f}`;
      const entries = ranges(r, f).length + resolvedOf(r, f).length;
      const create = `hash:net family ${f === 4 ? 'inet' : 'inet6'} comment maxelem ${Math.max(65536, entries)}`;
      out.push(`create ${set} ${create}`, `create ${set}-new ${create}`, `flush ${set}-new`);
      for (const c of ranges(r, f)) out.push(`add ${set}-new ${c} comment ${quote(`rule ${r.name}`)}`);
      for (const a of resolvedOf(r, f)) out.push(`add ${set}-new ${a.address} comment ${quote(`resolved ${a.host}`)}`);
      out.push(`swap ${set}-new ${set}`, `destroy ${set}-new`);
    }
  }
  return `${out.join('\n')}\n`;
}

function cidr(m: ExportModel, opts: FormatOptions): string {
  const out = header(m, 'CIDR list', ['', 'one CIDR a line, IPv4 first; lines starting with # are comments']);
  for (const r of m.rules) {
    for (const f of families(opts)) {
      if (!hasEntries(r, f)) continue;
      out.push(`# rule ${r.name}: IPv${f}, tcp ${r.ports.join(',')}`, ...ranges(r, f));
      const res = resolvedOf(r, f);
      if (res.length) out.push(`# rule ${r.name}: resolved (DNS snapshot)`, ...res.map((a) => `${a.address}/${f === 4 ? 32 : 128}`));
    }
  }
  return `${out.join('\n')}\n`;
}

function json(m: ExportModel, opts: FormatOptions): string {
  const fam = families(opts);
  const doc = {
    generated_by: 'wa-egress export',
    config: m.config,
    generated_at: m.generatedAt.toISOString(),
    snapshot: m.snapshot,
    sources: m.sources,
    rules: m.rules.map((r) => ({
      name: r.name,
      protocol: 'tcp',
      ports: r.ports,
      ipv4: fam.includes(4) ? r.v4 : [],
      ipv6: fam.includes(6) ? r.v6 : [],
      resolved: r.resolved
        .filter((a) => fam.includes(a.family))
        .map((a) => ({ host: a.host, cidr: `${a.address}/${a.family === 4 ? 32 : 128}` })),
      unresolved: r.unresolved,
      host_patterns_not_exported: r.hostPatterns,
    })),
  };
  return `${JSON.stringify(doc, null, 2)}\n`;
}
