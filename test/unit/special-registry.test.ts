import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { decide, decisionContext } from '../../src/decide.js';
import { classify } from '../../src/net/classify.js';
import { bigIntToV6, canonicalIp, numberToV4, parseCidr } from '../../src/net/ip.js';
import { SelfAddresses } from '../../src/net/self.js';
import { IPV4_REGISTRY, IPV6_REGISTRY, LOCAL_ROWS, type RegistryRow } from '../../src/net/special-registry.js';
import { parseHostPort } from '../../src/policy/hostport.js';

/**
 * The special-purpose registries: the dated CSV copies under data/ and the
 * table in src/net/special-registry.ts say the same, and every block that
 * is not globally reachable is denied unless allow_ranges lists it.
 */

/** RFC 4180 CSV (quoted fields may hold commas, quotes and newlines). */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n') {
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
    } else field += c;
  }
  if (field || row.length) rows.push([...row, field]);
  return rows;
}

const footnote = (s: string) => s.replace(/\s*\[\d+\]$/, '').trim();

function csvRows(file: string) {
  const [header, ...rows] = parseCsv(readFileSync(join(__dirname, '../../data', file), 'utf8'));
  expect(header).toEqual(['Address Block', 'Name', 'RFC', 'Allocation Date', 'Termination Date', 'Source', 'Destination', 'Forwardable', 'Globally Reachable', 'Reserved-by-Protocol']);
  return rows.map((r) => ({
    blocks: footnote(r[0]!).split(/,\s*/).map(footnote),
    name: r[1]!,
    rfc: /RFC\d+/.exec(r[2]!)![0],
    allocated: r[3]!,
    terminated: r[4] === 'N/A' ? undefined : r[4],
    reachable: footnote(r[8]!).toLowerCase(),
  }));
}

describe('the registry table matches the dated CSV copies', () => {
  for (const [file, table] of [
    ['iana-ipv4-special-registry.csv', IPV4_REGISTRY],
    ['iana-ipv6-special-registry.csv', IPV6_REGISTRY],
  ] as const) {
    it(file, () => {
      const fromCsv = csvRows(file);
      expect(table.map(({ range: _range, ...r }) => ({ ...r, terminated: r.terminated }))).toEqual(fromCsv);
    });
  }

  it('a row is denied exactly when it is not globally reachable', () => {
    for (const row of [...IPV4_REGISTRY, ...IPV6_REGISTRY]) {
      expect(row.range === null, row.blocks.join()).toBe(row.reachable === 'true');
    }
  });
});

/** First, last and a middle address of a block. */
function samples(block: string): string[] {
  const c = parseCidr(block);
  const text = (n: bigint) => (c.family === 4 ? numberToV4(Number(n)) : bigIntToV6(n));
  return [...new Set([c.start, c.end, c.start + (c.end - c.start) / 2n].map(text))];
}

/** The most specific row that contains an address (the one that decides). */
function decidingRow(ip: string, table: readonly RegistryRow[]): RegistryRow | undefined {
  const c = parseCidr(ip);
  let best: { row: RegistryRow; bits: number } | undefined;
  for (const row of table) {
    for (const b of row.blocks) {
      const r = parseCidr(b);
      const bits = Number(b.split('/')[1]);
      if (r.family === c.family && c.start >= r.start && c.start <= r.end && (!best || bits > best.bits)) best = { row, bits };
    }
  }
  return best?.row;
}

function context(allow: string[]) {
  const text = stringify({
    listen: { proxy: '127.0.0.1:3128' },
    policy: { rules: [{ name: 'any', ip_ranges: ['0.0.0.0/0', '::/0'], ports: [443] }], allow_ranges: allow },
    dns: { servers: ['127.0.0.1:9'] },
  });
  return decisionContext(parseConfig(text, '/nonexistent/config.yaml'), new SelfAddresses());
}

const target = (ip: string) => parseHostPort(ip.includes(':') ? `[${ip}]:443` : `${ip}:443`);

describe('every block that is not globally reachable is denied unless allow_ranges lists it', () => {
  const denied = [
    ...IPV4_REGISTRY.filter((r) => r.range !== null).flatMap((r) => r.blocks.map((b) => [b, IPV4_REGISTRY] as const)),
    ...IPV6_REGISTRY.filter((r) => r.range !== null).flatMap((r) => r.blocks.map((b) => [b, IPV6_REGISTRY] as const)),
  ];
  const open = context([]);
  it.each(denied.map(([b, t]) => [b, t]))('%s', async (block, table) => {
    let checked = 0;
    for (const ip of samples(block)) {
      // A more specific row decides this address (and may allow it).
      if (decidingRow(ip, table)!.range === null) continue;
      checked++;
      const c = classify(canonicalIp(ip)!.ip);
      expect(c.range, ip).not.toBeNull();
      const d = await decide(open, target(ip));
      expect(d.verdict, ip).toBe('deny');
      expect(d.verdict === 'deny' && d.reason, ip).toBe('special_range');
      // Listed in allow_ranges (the address the policy judges: the embedded
      // IPv4 address for the forms that have one): allowed.
      const listed = await decide(context([c.effective]), target(ip));
      expect(listed.verdict, ip).toBe('allow');
    }
    expect(checked).toBeGreaterThan(0);
  });

  it('blocks decided locally (not in the special-purpose registries)', () => {
    const want: Record<string, string> = {
      '224.0.0.1': 'multicast',
      'ff02::1': 'multicast',
      'fec0::1': 'site_local',
      'feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff': 'site_local',
      '::808:808': 'deprecated',
      '::a9fe:a9fe': 'link_local',
      '1::': 'reserved',
      '4000::1': 'reserved',
      'e000::1': 'reserved',
    };
    for (const [ip, range] of Object.entries(want)) expect(classify(canonicalIp(ip)!.ip).range, ip).toBe(range);
    expect(LOCAL_ROWS.map((r) => r.block)).toEqual(expect.arrayContaining(['224.0.0.0/4', 'ff00::/8', 'fec0::/10', '::/96']));
  });

  it('deprecated blocks, on purpose: 192.88.99.0/24 denied, fec0::/10 denied, ::/96 denied', () => {
    expect(classify('192.88.99.1').range).toBe('deprecated');
    expect(classify('192.88.99.2').range).toBe('deprecated');
    expect(classify('fec0::1').range).toBe('site_local');
    expect(classify('::9df0:101').range).toBe('deprecated');
  });

  it('globally reachable rows are not denied (where no translation applies)', () => {
    for (const ip of ['192.0.0.9', '192.0.0.10', '192.31.196.1', '192.52.193.1', '192.175.48.1', '2001:1::1', '2001:1::3', '2001:3::1', '2001:4:112::1', '2001:20::1', '2001:30::1', '2620:4f:8000::1']) {
      expect(classify(canonicalIp(ip)!.ip).range, ip).toBeNull();
    }
  });
});

describe('embedded IPv4 addresses in every translation prefix', () => {
  // [address, range, effective, dial, embedded]
  const rows: [string, string | null, string, string, string?][] = [
    ['64:ff9b::a9fe:a9fe', 'link_local', '169.254.169.254', '64:ff9b::a9fe:a9fe'],
    ['64:ff9b::808:808', null, '8.8.8.8', '64:ff9b::808:808'],
    ['64:ff9b:1::a9fe:a9fe', 'link_local', '169.254.169.254', '64:ff9b:1::a9fe:a9fe'],
    ['64:ff9b:1::7f00:1', 'loopback', '127.0.0.1', '64:ff9b:1::7f00:1'],
    ['64:ff9b:1:ffff::808:808', 'nat64_local', '8.8.8.8', '64:ff9b:1:ffff::808:808'],
    ['::ffff:169.254.169.254', 'link_local', '169.254.169.254', '169.254.169.254'],
    ['::ffff:0:a9fe:a9fe', 'link_local', '169.254.169.254', '169.254.169.254'],
    // 6to4 and Teredo: denied as tunnels whatever they embed; the IPv4 endpoint is extracted.
    ['2002:a9fe:a9fe::1', 'ipv6_6to4', '2002:a9fe:a9fe::1', '2002:a9fe:a9fe::1', '169.254.169.254'],
    ['2002:808:808::1', 'ipv6_6to4', '2002:808:808::1', '2002:808:808::1', '8.8.8.8'],
    // RFC 4380 5.1's example: server 65.54.227.120, client 192.0.2.45 (obfuscated 3fff:fdd2).
    ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'ipv6_teredo', '2001:0:4136:e378:8000:63bf:3fff:fdd2', '2001:0:4136:e378:8000:63bf:3fff:fdd2', '192.0.2.45'],
    // Client 169.254.169.254 inverted: 5601:5601.
    ['2001:0:4136:e378:8000:63bf:5601:5601', 'ipv6_teredo', '2001:0:4136:e378:8000:63bf:5601:5601', '2001:0:4136:e378:8000:63bf:5601:5601', '169.254.169.254'],
  ];
  it.each(rows)('%s → %s', (ip, range, effective, dial, embedded) => {
    expect(classify(canonicalIp(ip)!.ip)).toEqual({ range, effective, dial, ...(embedded && { embedded }) });
  });

  it('64:ff9b:1::a9fe:a9fe is denied by decide() (the issue\'s example)', async () => {
    const d = await decide(context([]), target('64:ff9b:1::a9fe:a9fe'));
    expect(d).toMatchObject({ verdict: 'deny', reason: 'special_range', range: 'link_local' });
  });
});
