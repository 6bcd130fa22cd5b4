import { parseArgs } from 'node:util';
import { DEFAULT_CONFIG, loadConfigFile } from '../config/load.js';
import { ConfigError } from '../errors.js';
import { FORMATS, render, type Format } from '../export/formats.js';
import { buildRule, type ExportModel } from '../export/model.js';
import { Resolver } from '../net/resolve.js';
import { RangeFeeds } from '../ranges/feeds.js';
import { fail, type Command } from './command.js';

const help = `Usage: wa-egress export --format FORMAT [--config FILE] [--rule NAME]... [--resolve]

Turn the policy's ip_ranges and ports into rules for a perimeter firewall.
Ranges are aggregated (overlapping and adjacent CIDRs merged), IPv4 and IPv6
apart; a comment header names the config, the rules and the time.

Formats:
  nftables   a table inet wa_egress: one interval set per rule and family,
             accept rules per port in chain "allow" (nft -f FILE)
  iptables   an iptables-restore file: chain WA-EGRESS with accept rules
             (iptables-restore --noflush FILE); --family 6 for ip6tables-restore,
             --ipset to match the sets of the ipset export instead of CIDRs
  ipset      an ipset restore file: one hash:net set per rule and family,
             filled and swapped in atomically (ipset restore -exist < FILE)
  cidr       a plain CIDR list, one a line
  json       rules, ports and CIDRs as JSON (for cloud security groups)

Options:
  -f, --format FORMAT   one of ${FORMATS.join(', ')}
  -c, --config FILE     configuration file (default: the bundled WhatsApp policy)
  -r, --rule NAME       only this rule (repeatable; default: every rule)
      --resolve         add the current addresses of the rules' plain hostnames
                        (not patterns) as /32 and /128 entries, marked as a DNS
                        snapshot; resolved through the config's dns settings
      --family 4|6      only IPv4 or IPv6
      --ipset           iptables: match ipset sets instead of listing CIDRs
  -h, --help            show this help

url: lists come from ranges.cache_dir when cached there, else are fetched;
dns: entries are resolved once.
`;

async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      format: { type: 'string', short: 'f' },
      config: { type: 'string', short: 'c' },
      rule: { type: 'string', short: 'r', multiple: true },
      resolve: { type: 'boolean' },
      family: { type: 'string' },
      ipset: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return void process.stdout.write(help);
  const format = values.format as Format | undefined;
  if (!format || !FORMATS.includes(format)) fail(`--format must be one of ${FORMATS.join(', ')}`, help);
  if (values.family !== undefined && values.family !== '4' && values.family !== '6') fail('--family must be 4 or 6', help);
  if (values.ipset && format !== 'iptables') fail('--ipset goes with --format iptables', help);
  const file = values.config ?? DEFAULT_CONFIG;
  let config;
  try {
    config = loadConfigFile(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    fail(`invalid configuration:\n${err.message}`);
  }
  const all = config.policy.rules;
  const unknown = (values.rule ?? []).filter((n) => !all.some((r) => r.name === n));
  if (unknown.length) fail(`no rule named ${unknown.map((n) => `"${n}"`).join(', ')} (rules: ${all.map((r) => r.name).join(', ')})`);
  const rules = values.rule ? all.filter((r) => values.rule!.includes(r.name)) : all;

  const resolver = new Resolver({ hosts: config.dns.hosts, servers: config.dns.servers, timeoutMs: config.timeouts.dns });
  const feeds = new RangeFeeds(rules, config.ranges, resolver);
  await feeds.start();
  feeds.stop();
  const model: ExportModel = {
    config: file,
    generatedAt: new Date(),
    snapshot: values.resolve === true,
    rules: await Promise.all(rules.map((r) => buildRule(r, feeds.cidrsOf(r.name), values.resolve ? resolver : null))),
    sources: feeds.status().map((s) =>
      s.updatedAt
        ? `rule ${s.rule}: ${s.entry}: ${s.ranges} ranges as of ${new Date(s.updatedAt).toISOString()}`
        : `rule ${s.rule}: ${s.entry}: UNAVAILABLE (${s.error ?? 'no list'}): not included`,
    ),
  };
  process.stdout.write(render(format, model, { family: values.family ? (Number(values.family) as 4 | 6) : undefined, ipset: values.ipset }));
}

export const exportCommand: Command = {
  words: ['export'],
  summary: 'export --format FORMAT     firewall rules (nftables, iptables, ipset, cidr, json) from the policy',
  help,
  run,
};
