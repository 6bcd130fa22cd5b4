import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { has, inNs, must, record, sh, type Proc } from './netns-fixture.js';

/**
 * The loop check of a wildcard listener knows every local address, also
 * one on an interface libuv does not list (os.networkInterfaces() leaves
 * out links that are not RUNNING: no carrier, or up for less than the
 * kernel's link-watch delay) although the address already accepts local
 * connections. Here a veth whose peer is down: NO-CARRIER for good.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const NS = `was${process.pid}`;
const PEER = `was${process.pid}p`;
// Exists only inside NS, the namespace this test creates; every connection is made from inside it.
const ADDR = '10.234.0.1';
// The namespace is the test's own: a fixed port, which the rule names.
const PORT = 3128;

function probe(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'needs root for ip netns';
  if (!has('curl', '--version')) return 'curl not found';
  const made = sh('ip', 'netns', 'add', `${NS}x`);
  if (!made.ok) return `ip netns unavailable: ${made.out.trim()}`;
  sh('ip', 'netns', 'del', `${NS}x`);
  return undefined;
}
const why = probe();
if (why) console.warn(`self-addresses.test.ts skipped: ${why}`);

let dir: string;
let gateway: Proc;

beforeAll(async () => {
  if (why) return;
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-self-'));
  must('ip', 'netns', 'add', NS);
  must('ip', 'netns', 'add', PEER);
  must('ip', '-n', NS, 'link', 'add', 'nc', 'type', 'veth', 'peer', 'name', 'pc', 'netns', PEER);
  must('ip', '-n', NS, 'addr', 'add', `${ADDR}/24`, 'dev', 'nc');
  must('ip', '-n', NS, 'link', 'set', 'nc', 'up');
  must('ip', '-n', NS, 'link', 'set', 'lo', 'up');
  const config = join(dir, 'config.yaml');
  writeFileSync(
    config,
    stringify({
      listen: { proxy: `0.0.0.0:${PORT}` },
      policy: { rules: [{ name: 'all', ip_ranges: ['10.234.0.0/24'], ports: [PORT] }], allow_ranges: ['10.234.0.0/24'] },
      dns: { hosts: {}, servers: ['127.0.0.1:9'] },
      audit: { file: join(dir, 'audit.log') },
    }),
  );
  gateway = inNs(NS, [process.execPath, CLI, 'serve', '--config', config]);
  await gateway.waitFor(/"msg":"listening"/, 10_000);
}, 30_000);

afterAll(() => {
  if (why) return;
  gateway?.kill();
  sh('ip', 'netns', 'del', NS);
  sh('ip', 'netns', 'del', PEER);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!!why)('the loop check and local addresses libuv does not list', () => {
  it('a CONNECT to the listener port at the address of a link without carrier is a loop', () => {
    // The premise: Node does not list the address.
    const listed = sh('ip', 'netns', 'exec', NS, process.execPath, '-e', 'console.log(JSON.stringify(Object.keys(require("os").networkInterfaces())))');
    expect(JSON.parse(listed.out)).not.toContain('nc');
    expect(must('ip', '-n', NS, 'link', 'show', 'nc')).toContain('NO-CARRIER');

    const r = sh('ip', 'netns', 'exec', NS, 'curl', '-q', '-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10',
      '-p', '-x', `http://127.0.0.1:${PORT}`, `http://${ADDR}:${PORT}/`);
    expect(r.out).toContain('403');
    return record(join(dir, 'audit.log'), { event: 'egress.denied', reason: 'loop', dest_ip: ADDR });
  });
});
