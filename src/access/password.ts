import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

/**
 * Proxy users' password hashes: `scrypt:N=16384,r=8,p=1:SALT:KEY`, salt and
 * key in base64url. The parameters travel in the string, so a stronger
 * setting can be introduced later without invalidating existing hashes.
 * scrypt runs on libuv's thread pool (crypto.scrypt), never on the event loop.
 */

export interface PasswordHash {
  N: number;
  r: number;
  p: number;
  salt: Buffer;
  key: Buffer;
  /** The string as written in the configuration. */
  text: string;
}

/** Interactive-login strength (RFC 7914's example; ~16 MiB, tens of ms). */
export const DEFAULT_PARAMS = { N: 16384, r: 8, p: 1 } as const;
const KEY_BYTES = 32;
const SALT_BYTES = 16;
// Bounds keep one configured hash from costing the gateway gigabytes or seconds per check.
const MAX_N = 1 << 20;
const MAX_R = 32;
const MAX_P = 16;
const MAX_MEM = 128 * MAX_N * 8 + (1 << 20);

const FORM = /^scrypt:N=(\d{1,8}),r=(\d{1,3}),p=(\d{1,3}):([A-Za-z0-9_-]{16,128}):([A-Za-z0-9_-]{22,256})$/;

/** Parse a configured hash; throws an Error saying what is wrong. */
export function parsePasswordHash(text: string): PasswordHash {
  const m = FORM.exec(text);
  if (!m) {
    throw new Error('expected "scrypt:N=…,r=…,p=…:SALT:KEY" as printed by `wa-egress passwd` (never a plain password)');
  }
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (N < 2 || N > MAX_N || (N & (N - 1)) !== 0) throw new Error(`N must be a power of two from 2 to ${MAX_N}, got ${N}`);
  if (r < 1 || r > MAX_R) throw new Error(`r must be 1-${MAX_R}, got ${r}`);
  if (p < 1 || p > MAX_P) throw new Error(`p must be 1-${MAX_P}, got ${p}`);
  const salt = Buffer.from(m[4]!, 'base64url');
  const key = Buffer.from(m[5]!, 'base64url');
  if (salt.length < 8) throw new Error('the salt must be at least 8 bytes');
  if (key.length < 16) throw new Error('the key must be at least 16 bytes');
  return { N, r, p, salt, key, text };
}

function derive(password: string, salt: Buffer, N: number, r: number, p: number, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, length, { N, r, p, maxmem: Math.max(MAX_MEM, 256 * N * r) }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** A new hash of `password` with fresh salt. */
export async function hashPassword(password: string, params: { N: number; r: number; p: number } = DEFAULT_PARAMS): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, params.N, params.r, params.p, KEY_BYTES);
  return `scrypt:N=${params.N},r=${params.r},p=${params.p}:${salt.toString('base64url')}:${key.toString('base64url')}`;
}

/** Whether `password` matches; the comparison takes the same time wherever the keys differ. */
export async function verifyPassword(password: string, hash: PasswordHash): Promise<boolean> {
  const key = await derive(password, hash.salt, hash.N, hash.r, hash.p, hash.key.length);
  return timingSafeEqual(key, hash.key);
}
