import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Audit } from '../../src/audit.js';
import { eventually } from '../helpers.js';

/**
 * A reload that moves the audit log while the old file cannot be written:
 * the old one keeps its records until its path works again, writes them,
 * and is then closed (its descriptor and its path watch go), instead of
 * being held open and watched for as long as the process runs.
 */

const dir = mkdtempSync(join(tmpdir(), 'wa-egress-audit-switch-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const linux = process.platform === 'linux';
if (!linux) console.warn('audit-switch.test.ts: skipped: needs /proc/self/fd (Linux)');

function openPaths(): string[] {
  return readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      return [readlinkSync(`/proc/self/fd/${fd}`)];
    } catch {
      return [];
    }
  });
}

it.skipIf(!linux)('an old destination that failed is closed once it has written its records', async () => {
  const a = join(dir, 'a.log');
  const b = join(dir, 'b.log');
  const audit = new Audit({ file: a, onError: 'continue' });
  try {
    audit.allowed({ id: '1', client: 'c', listener: 'proxy', proto: 'connect' }, {});
    audit.flushSync();
    // A directory in place of the file: the path watch cannot reopen it, so the writer fails.
    rmSync(a);
    mkdirSync(a);
    await eventually(() => !audit.writable);
    audit.allowed({ id: '2', client: 'c', listener: 'proxy', proto: 'connect' }, {});
    audit.configure(b, 'continue');
    audit.allowed({ id: '3', client: 'c', listener: 'proxy', proto: 'connect' }, {});
    rmdirSync(a);
    // The old file's watch reopens its path, writes record 2 there, and the old file is closed.
    await eventually(() => existsSync(a) && readFileSync(a, 'utf8').includes('"id":"2"'));
    await eventually(() => !openPaths().includes(a));
    audit.flushSync();
    expect(readFileSync(b, 'utf8')).toContain('"id":"3"');
  } finally {
    audit.close();
  }
});
