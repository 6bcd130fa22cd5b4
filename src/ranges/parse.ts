import { parseRangeData } from '../config/ranges.js';
import { parseCidr, type Cidr } from '../net/ip.js';
import { select, type Selector } from './selector.js';

/**
 * A downloaded range list → CIDRs, validated: a zip or text list as for
 * `file:`, or JSON read through the entry's selector (a JSON array of
 * strings needs none). A list must hold at least one range and none that
 * covers every address: either is a broken feed, not a policy.
 */
export function parseList(body: Buffer, selector: Selector | null, where: string): Cidr[] {
  const text = body.toString('utf8').replace(/^\uFEFF/, '');
  const json = selector !== null || /^\s*[[{]/.test(text);
  const cidrs = json ? fromJson(text, selector, where) : parseRangeData(body, where);
  if (cidrs.length === 0) throw new Error(`${where}: the list is empty`);
  const all = cidrs.find((c) => c.start === 0n && c.end === (c.family === 4 ? 0xffffffffn : (1n << 128n) - 1n));
  if (all) throw new Error(`${where}: ${all.text} covers every address`);
  return cidrs;
}

function fromJson(text: string, selector: Selector | null, where: string): Cidr[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new Error(`${where}: not valid JSON (${(err as Error).message})`);
  }
  let values: string[];
  if (selector) {
    try {
      values = select(doc, selector);
    } catch (err) {
      throw new Error(`${where}: ${(err as Error).message}`);
    }
  } else if (Array.isArray(doc) && doc.every((v) => typeof v === 'string')) {
    values = doc as string[];
  } else {
    throw new Error(`${where}: a JSON document needs a selector (url:…#$.path.to[*].prefix)`);
  }
  return values.map((v, i) => {
    try {
      return parseCidr(v);
    } catch (err) {
      throw new Error(`${where}: value ${i + 1}: ${(err as Error).message}`);
    }
  });
}
