import { parseArgs } from 'node:util';
import { Document, isMap, isSeq, type Node, type YAMLMap } from 'yaml';
import { loadConfigFile } from '../config/load.js';
import { ConfigError, type Reason } from '../errors.js';
import { judge } from '../learn/against.js';
import { newStats, readAudit, unreadable } from '../audit/read.js';
import { suggest, type Destination, type SuggestedRule } from '../learn/suggest.js';
import { canonicalIp } from '../net/ip.js';
import { normalizeHost } from '../policy/hostport.js';
import { fail, type Command } from './command.js';

const help = `Usage: wa-egress policy suggest [options] AUDIT_FILE...

Read audit logs of a run in report mode (egress.denied with enforced:false),
or the denials of enforce mode, and print the fewest readable rules that
allow what was seen, as YAML to paste under policy.rules. Each rule says in
a comment how many records and distinct destinations it covers.

Names become exact entries, "*.P" where several names sit one label below P,
"**.P" where they sit at several depths below P; never wider than the
registered domain (Public Suffix List). IP literals become /32 and /128
entries, or their /24 and /64 where several share one. Ports per rule.

Options:
      --min-count N     leave out destinations (host:port) seen fewer than N times
      --siblings N      names (addresses) needed before a pattern (block) is used (default 3)
      --against CONFIG  only what this configuration would still deny (judged by
                        its policy in enforce mode, without DNS: names by the rules
                        and dns.hosts only)
      --dns             with --against: resolve names through the config's dns settings
  -h, --help            show this help

AUDIT_FILE may be gzip-compressed; "-" reads stdin.
`;

/** Denials a new rule would turn into allows. */
const LEARNABLE: ReadonlySet<string> = new Set<Reason>(['host_not_allowed', 'ip_not_allowed', 'port_not_allowed']);

function positiveInt(v: string | undefined, flag: string, dflt: number): number {
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v) || Number(v) < 1) fail(`${flag} needs a whole number of at least 1`, help);
  return Number(v);
}

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      'min-count': { type: 'string' },
      siblings: { type: 'string' },
      against: { type: 'string' },
      dns: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return void process.stdout.write(help);
  if (positionals.length === 0) fail('expected at least one AUDIT_FILE', help);
  const minCount = positiveInt(values['min-count'], '--min-count', 1);
  const siblings = positiveInt(values.siblings, '--siblings', 3);
  if (values.dns && !values.against) fail('--dns goes with --against', help);
  let config;
  if (values.against) {
    try {
      config = loadConfigFile(values.against);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      fail(`invalid configuration:\n${err.message}`);
    }
  }

  const problem = unreadable(positionals);
  if (problem) fail(problem);
  const stats = newStats();
  const seen = new Map<string, Destination>();
  let records = 0;
  let first: string | undefined;
  let last: string | undefined;
  try {
    for await (const { record: r } of readAudit(positionals, stats)) {
      if (r.event !== 'egress.denied' || !LEARNABLE.has(String(r.reason))) continue;
      const dest = destination(r.dest_host, r.dest_port);
      if (!dest) continue;
      records++;
      if (typeof r.time === 'string') {
        if (!first || r.time < first) first = r.time;
        if (!last || r.time > last) last = r.time;
      }
      const key = `${dest.host} ${dest.port}`;
      const d = seen.get(key);
      if (d) d.count++;
      else seen.set(key, { ...dest, count: 1 });
    }
  } catch (err) {
    fail((err as Error).message);
  }

  let list = [...seen.values()];
  const rare = list.filter((d) => d.count < minCount);
  list = list.filter((d) => d.count >= minCount);
  const notes: string[] = [];
  if (rare.length) notes.push(`--min-count ${minCount}: ${rare.length} destination(s) seen fewer times left out`);
  if (config) {
    const verdict = judge(config, values.dns === true);
    const judged = await Promise.all(list.map(async (d) => ({ d, j: await verdict(d) })));
    const allowed = judged.filter((x) => x.j === 'allowed').length;
    const special = judged.filter((x) => x.j === 'special');
    list = judged.filter((x) => x.j === 'denied').map((x) => x.d);
    notes.push(`--against ${values.against}: ${allowed} destination(s) the policy already allows left out`);
    if (special.length) {
      notes.push(`${special.length} destination(s) match a rule but resolve to special addresses (see policy.allow_ranges), left out`);
    }
  }
  const rules = suggest(list, { siblings, taken: new Set(config?.policy.rules.map((r) => r.name)) });

  const head = [
    `wa-egress policy suggest: ${records} denial record(s) in ${positionals.join(', ')}${first ? ` (${first} to ${last})` : ''}`,
    `${seen.size} distinct destination(s); ${rules.length} rule(s) below cover ${list.length}`,
    ...(stats.malformed ? [`${stats.malformed} malformed line(s) skipped`] : []),
    ...notes,
    'paste under policy.rules:',
  ];
  process.stdout.write(`${head.map((l) => `# ${l}`).join('\n')}\n${rules.length ? render(rules) : '    # (nothing to add)\n'}`);
}

/** A record's destination, canonical; undefined when it has none or it is malformed. */
function destination(host: unknown, port: unknown): Omit<Destination, 'count'> | undefined {
  if (typeof host !== 'string' || typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  const ip = canonicalIp(host.startsWith('[') ? host.slice(1, -1) : host);
  if (ip) return { host: ip.ip, family: ip.family, port };
  try {
    const n = normalizeHost(host);
    return n.family === undefined ? { host: n.host, port } : { host: n.host, family: n.family, port };
  } catch {
    return undefined;
  }
}

/** YAML for the rules, indented to sit under `policy:` / `  rules:`. */
function render(rules: SuggestedRule[]): string {
  const doc = new Document(
    rules.map((r) => ({
      name: r.name,
      ...(r.hosts.length && { hosts: r.hosts.map((h) => h.entry) }),
      ...(r.ip_ranges.length && { ip_ranges: r.ip_ranges }),
      ports: r.ports,
    })),
  );
  const seq = doc.contents;
  if (isSeq(seq)) {
    seq.items.forEach((item, i) => {
      const r = rules[i]!;
      const shown = r.destinations.slice(0, 5).join(', ') + (r.destinations.length > 5 ? ', …' : '');
      (item as Node).commentBefore = ` ${r.records} record(s), ${r.destinations.length} destination(s): ${shown}`;
      if (!isMap(item)) return;
      const map = item as YAMLMap;
      const ports = map.get('ports', true);
      if (isSeq(ports)) ports.flow = true;
      const hosts = map.get('hosts', true);
      if (isSeq(hosts)) {
        hosts.items.forEach((h, j) => {
          const covers = r.hosts[j]!.covers;
          if (covers.length) (h as Node).comment = ` ${covers.length} names seen: ${covers.slice(0, 4).join(', ')}${covers.length > 4 ? ', …' : ''}`;
        });
      }
    });
  }
  return doc
    .toString({ lineWidth: 0 })
    .split('\n')
    .map((l) => (l ? `    ${l}` : l))
    .join('\n');
}

export const policySuggest: Command = {
  words: ['policy', 'suggest'],
  summary: 'policy suggest AUDIT_FILE  rules that allow what an audit log saw denied (YAML)',
  help,
  run,
};
