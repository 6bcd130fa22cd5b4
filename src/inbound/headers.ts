/**
 * Header rewriting for absolute-form HTTP: hop-by-hop headers (RFC 9110
 * 7.6.1), every header the Connection header names, and all Proxy-* headers
 * stay on the hop they were meant for. The Host header is taken from the
 * URL, which is what the policy judged.
 */

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

function filter(raw: string[], dropHost: boolean): string[] {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') {
      for (const token of raw[i + 1]!.split(',')) named.add(token.trim().toLowerCase());
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(name) || name.startsWith('proxy-') || named.has(name) || (dropHost && name === 'host')) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

export function forwardRequestHeaders(raw: string[], authority: string): string[] {
  return ['Host', authority, ...filter(raw, true)];
}

export function forwardResponseHeaders(raw: string[]): string[] {
  return filter(raw, false);
}
