import { readFileSync } from 'node:fs';
import { canonicalIp } from '../net/ip.js';
import { normalizeHost } from '../policy/hostport.js';

/**
 * Pinned DNS answers for explain and policy tests, in /etc/hosts format:
 * `ADDRESS NAME [NAME...]`, `#` comments. A name listed on several lines
 * gets every address, in order.
 */

export type Pins = Map<string, string[]>;

/** Add `address name...` to `pins`; returns an error message or undefined. */
export function addPin(pins: Pins, address: string, names: string[]): string | undefined {
  const ip = canonicalIp(address.replace(/^\[(.*)\]$/, '$1'));
  if (!ip) return `not an IP address: ${JSON.stringify(address)}`;
  if (names.length === 0) return `no name after ${address}`;
  for (const raw of names) {
    let host: string;
    try {
      const n = normalizeHost(raw);
      if (n.family !== undefined) return `${raw} is an address, not a name`;
      host = n.host;
    } catch (err) {
      return `bad name ${JSON.stringify(raw)}: ${(err as Error).message}`;
    }
    const list = pins.get(host) ?? [];
    if (!list.includes(ip.ip)) list.push(ip.ip);
    pins.set(host, list);
  }
  return undefined;
}

/** Read a hosts file; throws an Error naming file and line. */
export function readPins(file: string, pins: Pins = new Map()): Pins {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  text.split(/\r?\n/).forEach((line, i) => {
    const words = line.replace(/#.*/, '').trim().split(/\s+/).filter(Boolean);
    if (words.length === 0) return;
    const problem = addPin(pins, words[0]!, words.slice(1));
    if (problem) throw new Error(`${file}:${i + 1}: ${problem}`);
  });
  return pins;
}
