// Policy microbenchmark on the real data: the 2,094 WhatsApp hostnames of
// test/fixtures/whatsapp_domainlist.txt judged against config/default.yaml
// (its rules and 229 vendor CIDRs), with the built code from dist/.
//
//   decide      the whole decision path (rules for the port, hostname rules,
//               resolve through a Resolver whose static hosts map every name to
//               157.240.0.1, classify, CIDR check), awaited one at a time;
//   hostname    Policy.rulesFor(port) + Policy.hostRuleIndex(rules, name).
//
// Usage: node bench/policy.mjs [--seconds S]   (prints one JSON object)

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => new URL(`../dist/${p}`, import.meta.url).href;
const { parseConfig } = await import(dist('config/load.js'));
const { decide, decisionContext } = await import(dist('decide.js'));
const { Policy } = await import(dist('policy/policy.js'));
const { Resolver } = await import(dist('net/resolve.js'));
const { SelfAddresses } = await import(dist('net/self.js'));
const { normalizeHost } = await import(dist('policy/hostport.js'));

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '2' } } });
const seconds = Number(values.seconds);
const PORT = 443;
const ANSWER = '157.240.0.1';

function percentile(sorted, p) {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

// ------------------------------------------------------------ the real data
const configFile = join(root, 'config/default.yaml');
const config = parseConfig(readFileSync(configFile, 'utf8'), configFile);
const cidrs = config.policy.rules.reduce((n, r) => n + r.cidrs, 0);
const patterns = config.policy.rules.reduce((n, r) => n + r.patterns, 0);

const lines = readFileSync(join(root, 'test/fixtures/whatsapp_domainlist.txt'), 'utf8').split(/\r?\n/);
const names = [];
let malformed = 0;
for (const line of lines) {
  const t = line.replace(/#.*/, '').trim();
  if (!t) continue;
  try {
    const n = normalizeHost(t);
    if (n.family === undefined) names.push(n.host);
    else malformed++;
  } catch {
    malformed++;
  }
}

// ------------------------------------------------------------ the context, as src/gateway.ts builds it
const self = new SelfAddresses();
const listen = config.listen.proxy; // 0.0.0.0:3128 in the default config
if (listen) self.add(listen.host, listen.port);
const ctx = {
  ...decisionContext(config, self),
  resolver: new Resolver({
    hosts: new Map(names.map((n) => [n, [ANSWER]])),
    servers: config.dns.servers,
    timeoutMs: config.timeouts.dns,
  }),
};
const targets = names.map((host) => ({ host, port: PORT }));

// Verdicts, once, for the record.
const verdicts = { allow_by_hostname: 0, allow_by_cidr: 0, deny: 0, fail: 0 };
const rules = ctx.policy.rulesFor(PORT);
for (const t of targets) {
  const d = await decide(ctx, t);
  if (d.verdict === 'allow') {
    if (Policy.hostRuleIndex(rules, t.host) >= 0) verdicts.allow_by_hostname++;
    else verdicts.allow_by_cidr++;
  } else verdicts[d.verdict]++;
}

// ------------------------------------------------------------ decide
async function decideRun(ms) {
  let n = 0;
  const end = performance.now() + ms;
  while (performance.now() < end) {
    for (let i = 0; i < targets.length; i++) await decide(ctx, targets[i]);
    n += targets.length;
  }
  return n;
}
await decideRun(Math.min(300, seconds * 200)); // warm-up
let t0 = process.hrtime.bigint();
const decisions = await decideRun(seconds * 1000);
const decideSec = Number(process.hrtime.bigint() - t0) / 1e9;

// Timer cost, to subtract from per-call latencies.
const overheadSamples = [];
for (let i = 0; i < 20000; i++) {
  const a = process.hrtime.bigint();
  overheadSamples.push(Number(process.hrtime.bigint() - a));
}
overheadSamples.sort((a, b) => a - b);
const timerNs = percentile(overheadSamples, 50);

const decideLat = [];
{
  const end = performance.now() + seconds * 500;
  while (performance.now() < end) {
    for (let i = 0; i < targets.length; i++) {
      const a = process.hrtime.bigint();
      await decide(ctx, targets[i]);
      decideLat.push(Number(process.hrtime.bigint() - a) - timerNs);
    }
  }
}
decideLat.sort((a, b) => a - b);

// ------------------------------------------------------------ hostname match
function hostRun(ms) {
  let n = 0;
  let sink = 0;
  const end = performance.now() + ms;
  while (performance.now() < end) {
    for (let i = 0; i < names.length; i++) sink += Policy.hostRuleIndex(ctx.policy.rulesFor(PORT), names[i]);
    n += names.length;
  }
  return { n, sink };
}
hostRun(Math.min(300, seconds * 200));
t0 = process.hrtime.bigint();
const host = hostRun(seconds * 1000);
const hostSec = Number(process.hrtime.bigint() - t0) / 1e9;

const hostLat = [];
{
  const end = performance.now() + seconds * 500;
  let sink = 0;
  while (performance.now() < end) {
    for (let i = 0; i < names.length; i++) {
      const a = process.hrtime.bigint();
      sink += Policy.hostRuleIndex(ctx.policy.rulesFor(PORT), names[i]);
      hostLat.push(Number(process.hrtime.bigint() - a) - timerNs);
    }
  }
  if (sink === 0.5) console.error(sink);
}
hostLat.sort((a, b) => a - b);

const ns = (sorted) => ({
  p50_ns: Math.max(0, percentile(sorted, 50)),
  p99_ns: Math.max(0, percentile(sorted, 99)),
  p999_ns: Math.max(0, percentile(sorted, 99.9)),
  max_ns: sorted[sorted.length - 1],
  samples: sorted.length,
});

process.stdout.write(
  `${JSON.stringify({
    names: names.length,
    malformed,
    rules: config.policy.rules.length,
    patterns,
    cidrs,
    port: PORT,
    answer: ANSWER,
    verdicts,
    timer_overhead_ns: timerNs,
    decide: { per_sec: decisions / decideSec, ...ns(decideLat) },
    hostname: { per_sec: host.n / hostSec, ...ns(hostLat) },
  })}\n`,
);
