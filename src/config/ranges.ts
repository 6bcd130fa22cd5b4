import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { unzipSync } from 'fflate';
import { parseCidr, type Cidr } from '../net/ip.js';
import { readConfigFile } from './read.js';

/**
 * IP range files: text (one CIDR or address a line, `#` comments, blank
 * lines, LF or CRLF) or a zip of such text files, as the vendor ships it.
 * Errors name the file (and zip entry) and line.
 */

/** Range lists the package ships, by the name `builtin:NAME` gives them: valid wherever the config file is. */
const DATA = resolve(dirname(fileURLToPath(import.meta.url)), '../../config');
export const BUILTIN_RANGES: Readonly<Record<string, string>> = { whatsapp: resolve(DATA, 'whatsapp_ips.zip') };

// A local file header, or the end record that is all an empty zip holds.
const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];
const EMPTY_ZIP_MAGIC = [0x50, 0x4b, 0x05, 0x06];

export function loadRangeFile(path: string): Cidr[] {
  let data: Buffer;
  try {
    data = readConfigFile(path);
  } catch (err) {
    throw new Error(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseRangeData(data, path);
}

/** Range data as read or downloaded: a zip of text files, or text. */
export function parseRangeData(data: Buffer, where: string): Cidr[] {
  if ([ZIP_MAGIC, EMPTY_ZIP_MAGIC].some((m) => m.every((b, i) => data[i] === b))) return fromZip(where, data);
  return parseRangeText(data.toString('utf8'), where);
}

function fromZip(path: string, data: Buffer): Cidr[] {
  let entries: Record<string, Uint8Array>;
  try {
    entries = unzipSync(data);
  } catch (err) {
    throw new Error(`${path}: not a readable zip file (${(err as Error).message})`);
  }
  const cidrs: Cidr[] = [];
  let files = 0;
  for (const [name, bytes] of Object.entries(entries)) {
    if (name.endsWith('/') || name.startsWith('__MACOSX/')) continue;
    files++;
    cidrs.push(...parseRangeText(Buffer.from(bytes).toString('utf8'), `${path}!${name}`));
  }
  if (files === 0) throw new Error(`${path}: the zip holds no files`);
  return cidrs;
}

export function parseRangeText(text: string, where: string): Cidr[] {
  const cidrs: Cidr[] = [];
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const hash = lines[i]!.indexOf('#');
    const entry = (hash < 0 ? lines[i]! : lines[i]!.slice(0, hash)).trim();
    if (entry === '') continue;
    try {
      cidrs.push(parseCidr(entry));
    } catch (err) {
      throw new Error(`${where}:${i + 1}: ${(err as Error).message}`);
    }
  }
  return cidrs;
}
