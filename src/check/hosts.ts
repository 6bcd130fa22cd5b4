import { readFileSync } from 'node:fs';
import { normalizeHost, parsePort } from '../policy/hostport.js';

/**
 * What check-network checks: the vendor's documented destinations for the
 * WhatsApp Business API client (Coreapp), as data, or another application's
 * list from a file. Wildcard patterns cannot be dialled, so each has a
 * representative name, replaceable with --sample PATTERN=NAME.
 */

export interface CheckHost {
  host: string;
  ports: number[];
  /** The wildcard pattern this name stands for. */
  pattern?: string;
}

/** Coreapp: chat on 5222 with 443 as the fallback; media and graph on 443 (5222 checked too, as the vendor lists it). */
const CHAT = [443, 5222];

export const WHATSAPP_HOSTS: readonly CheckHost[] = [
  { host: 'g.whatsapp.net', ports: CHAT },
  { host: 'v.whatsapp.net', ports: CHAT },
  { host: 'mmg.whatsapp.net', ports: CHAT },
  { host: 'pps.whatsapp.net', ports: CHAT },
  { host: 'static.whatsapp.net', ports: CHAT },
  { host: 'graph.facebook.com', ports: CHAT },
  { host: 'graph.whatsapp.com', ports: CHAT },
  { host: 'mmx-ds.cdn.whatsapp.net', ports: CHAT, pattern: '.*.cdn.whatsapp.net' },
  { host: 'media-sin6-1.cdn.whatsapp.net', ports: CHAT, pattern: 'media-.*.cdn.whatsapp.net' },
  { host: 'media.fada1-1.fna.whatsapp.net', ports: CHAT, pattern: 'media..*.fna.whatsapp.net' },
  // Image and package downloads (docker pull, installers): HTTPS only.
  { host: 'docker.whatsapp.biz', ports: [443] },
  { host: 'dl.bintray.com', ports: [443] },
  { host: 'akamai.bintray.com', ports: [443] },
];

function canonicalHost(raw: string): string {
  const n = normalizeHost(raw);
  return n.family === 6 ? `[${n.host}]` : n.host;
}

/** The vendor list with `PATTERN=NAME` samples replacing the representatives. */
export function withSamples(hosts: readonly CheckHost[], samples: readonly string[]): CheckHost[] {
  const out = hosts.map((h) => ({ ...h }));
  for (const s of samples) {
    const eq = s.indexOf('=');
    if (eq < 0) throw new Error(`--sample: expected PATTERN=NAME, got ${JSON.stringify(s)}`);
    const pattern = s.slice(0, eq);
    const entry = out.find((h) => h.pattern === pattern);
    if (!entry) throw new Error(`--sample: no wildcard pattern ${JSON.stringify(pattern)} (${out.filter((h) => h.pattern).map((h) => h.pattern).join(', ')})`);
    entry.host = canonicalHost(s.slice(eq + 1));
  }
  return out;
}

/**
 * A hosts file: one destination a line, `HOST [PORT...]` or `HOST:PORT[,PORT...]`
 * (IPv6 in brackets), port 443 when none is given; `#` comments.
 */
export function readHostsFile(file: string): CheckHost[] {
  const text = readFileSync(file, 'utf8');
  const out: CheckHost[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    try {
      const [first, ...rest] = line.split(/[\s]+/);
      let host = first!;
      let ports = rest.flatMap((p) => p.split(','));
      const m = /^(\[[^\]]+\]|[^:]+):([\d,]+)$/.exec(first!);
      if (m) {
        host = m[1]!;
        ports = [...m[2]!.split(','), ...ports];
      }
      const list = ports.filter(Boolean).map(parsePort);
      out.push({ host: canonicalHost(host), ports: list.length ? [...new Set(list)] : [443] });
    } catch (err) {
      throw new Error(`${file}:${i + 1}: ${(err as Error).message}`);
    }
  });
  if (out.length === 0) throw new Error(`${file}: no hosts in it`);
  return out;
}
