import { normalizeHost } from '../policy/hostport.js';
import { parseSelector, type Selector } from './selector.js';

/**
 * `ip_ranges` entries whose addresses change while the gateway runs:
 * `url:https://…[#SELECTOR]` (a published range list) and `dns:HOSTNAME`
 * (the current addresses of a name). Parsed at load; the range feeds
 * (feeds.ts) keep them current.
 */

export type RangeSource =
  | { kind: 'url'; text: string; url: string; selector: Selector | null }
  | { kind: 'dns'; text: string; host: string };

export function parseUrlSource(rest: string): RangeSource {
  const text = `url:${rest}`;
  const hash = rest.indexOf('#');
  const href = hash < 0 ? rest : rest.slice(0, hash);
  let url: URL;
  try {
    url = new URL(href);
  } catch {
    throw new Error(`"${text}": not a URL`);
  }
  if (url.protocol !== 'https:') throw new Error(`"${text}": range lists are fetched over https:// only`);
  if (url.username || url.password) throw new Error(`"${text}": credentials in the URL are not supported`);
  const selector = hash < 0 ? null : parseSelector(decodeURIComponent(rest.slice(hash + 1)));
  return { kind: 'url', text, url: url.href, selector };
}

export function parseDnsSource(rest: string): RangeSource {
  let host: string;
  try {
    const n = normalizeHost(rest);
    if (n.family !== undefined) throw new Error('an IP address needs no dns: prefix');
    host = n.host;
  } catch (err) {
    throw new Error(`"dns:${rest}": ${(err as Error).message}`);
  }
  return { kind: 'dns', text: `dns:${rest}`, host };
}
