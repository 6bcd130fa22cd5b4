#!/usr/bin/env node
// Write a synthetic audit log (the writer's record shapes) to stdout, for
// measuring `audit summary` on big inputs:
//   node scripts/gen-audit.mjs --bytes 1073741824 --distinct 5000000 > /tmp/audit.log
// Deterministic: the same options give the same file.
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    bytes: { type: 'string', default: String(64 << 20) },
    start: { type: 'string', default: '2026-11-20T00:00:00Z' },
    days: { type: 'string', default: '7' },
    distinct: { type: 'string', default: '1000000' },
  },
});
const target = Number(values.bytes);
const start = Date.parse(values.start);
const spanMs = Number(values.days) * 86_400_000;
const distinct = Number(values.distinct);
// mulberry32: small, fast, and good enough that picks are not correlated.
let seed = 42;
const rand = () => {
  let t = (seed = (seed + 0x6d2b79f5) >>> 0);
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
};
const pick = (a) => a[Math.floor(rand() * a.length)];
const hosts = ['g.whatsapp.net', 'graph.facebook.com', 'mmg.whatsapp.net', 'media-sin6-1.cdn.whatsapp.net'];
const reasons = ['host_not_allowed', 'host_not_allowed', 'port_not_allowed', 'ip_not_allowed', 'special_range'];
const fails = ['connect_failed', 'connect_timeout', 'dns_failed'];

let written = 0;
let n = 0;
let buf = '';
const out = (o) => {
  buf += `${JSON.stringify(o)}\n`;
};
while (written < target) {
  // Records spread evenly over the span (about 260 bytes per attempt).
  const t = start + Math.min(spanMs - 1, Math.floor((n / (target / 260)) * spanMs));
  const time = new Date(t).toISOString();
  const client = `10.0.${Math.floor(rand() * 4)}.${Math.floor(rand() * 250)}:${40000 + Math.floor(rand() * 20000)}`;
  const id = `gen-${n++}`;
  const base = { level: 'info', time, id, client, listener: 'proxy', proto: 'connect' };
  const r = rand();
  if (r < 0.7) {
    const dest_host = pick(hosts);
    const dest_port = rand() < 0.5 ? 443 : 5222;
    out({ ...base, event: 'egress.allowed', dest_host, dest_port, rule: 'whatsapp', dest_ip: '31.13.65.49' });
    out({ ...base, event: 'egress.closed', dest_host, dest_port, dest_ip: '31.13.65.49', bytes_up: Math.floor(rand() * 5000), bytes_down: Math.floor(rand() * 50000), duration_ms: Math.floor(rand() * 60000), close_reason: 'client_closed' });
  } else if (r < 0.95) {
    const dest_host = `h${Math.floor(rand() * distinct).toString(36)}.example.com`;
    out({ ...base, event: 'egress.denied', dest_host, dest_port: 443, reason: pick(reasons), enforced: true });
  } else {
    out({ ...base, event: 'egress.failed', dest_host: pick(hosts), dest_port: 443, rule: 'whatsapp', reason: pick(fails) });
  }
  if (buf.length > 1 << 20) {
    written += Buffer.byteLength(buf);
    if (!process.stdout.write(buf)) await new Promise((r) => process.stdout.once('drain', r));
    buf = '';
  }
}
process.stdout.write(buf);
