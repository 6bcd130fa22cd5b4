import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { eventually } from '../helpers.js';

/** The installed command: `wa-egress serve` and `wa-egress config check`, as a user runs them. */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const run = promisify(execFile);
let children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children) c.kill('SIGKILL');
  children = [];
});

function writeConfig(config: object): { dir: string; file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'wa-egress-cli-'));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, stringify(config));
  return { dir, file };
}

/** Start `serve` and wait for its "listening" log line; returns the port. */
async function serve(file: string): Promise<{ child: ChildProcess; port: number; stdout: () => string; stderr: () => string }> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const line = await eventually(() => err.split('\n').find((l) => l.includes('"listening"')), 10_000);
  const port = Number(/"address":"[^"]*:(\d+)"/.exec(line)![1]);
  return { child, port, stdout: () => out, stderr: () => err };
}

function exitCode(child: ChildProcess): Promise<number | null> {
  return new Promise((r) => (child.exitCode !== null ? r(child.exitCode) : child.once('exit', (code) => r(code))));
}

/** One denied CONNECT; resolves when the 403 has arrived. */
function denied(port: number, i: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`CONNECT denied-${i}.example:443 HTTP/1.1\r\n\r\n`));
    let data = '';
    s.on('data', (d) => {
      data += d;
      if (data.includes('\r\n\r\n')) {
        expect(data.startsWith('HTTP/1.1 403')).toBe(true);
        s.destroy();
        resolve();
      }
    });
    s.on('error', reject);
  });
}

const policy = { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [443] }] };

describe('wa-egress serve', () => {
  it('writes one record per denial and loses none on SIGTERM right after (file audit)', async () => {
    const { dir, file } = writeConfig({ listen: { proxy: '127.0.0.1:0' }, policy, audit: { file: 'audit.log' } });
    const { child, port } = await serve(file);
    const N = 2000;
    for (let i = 0; i < N; i += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => denied(port, i + j)));
    child.kill('SIGTERM');
    expect(await exitCode(child)).toBe(0);
    const lines = readFileSync(join(dir, 'audit.log'), 'utf8').split('\n').filter(Boolean);
    expect(lines).toHaveLength(N);
    const records = lines.map((l) => JSON.parse(l));
    expect(records.every((r) => r.event === 'egress.denied' && r.reason === 'host_not_allowed')).toBe(true);
    expect(new Set(records.map((r) => r.dest_host)).size).toBe(N);
  });

  it('writes audit records to stdout with audit.file "-" and flushes them on SIGINT', async () => {
    const { file } = writeConfig({ listen: { proxy: '127.0.0.1:0' }, policy, audit: { file: '-' } });
    const { child, port, stdout, stderr } = await serve(file);
    const N = 500;
    for (let i = 0; i < N; i += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => denied(port, i + j)));
    child.kill('SIGINT');
    expect(await exitCode(child)).toBe(0);
    const records = stdout().split('\n').filter(Boolean).map((l) => JSON.parse(l));
    expect(records).toHaveLength(N);
    expect(records[0]).toMatchObject({ event: 'egress.denied', listener: 'proxy', proto: 'connect', dest_port: 443, enforced: true });
    expect(stderr()).toContain('"stopping"');
  });

  it('refuses to start on a bad config, naming the key, with exit code 1', async () => {
    const { file } = writeConfig({ listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'r', hosts: ['*'], ports: [443] }] } });
    const err = await run(process.execPath, [CLI, 'serve', '--config', file]).catch((e: { code: number; stderr: string }) => e) as { code: number; stderr: string };
    expect(err.code).toBe(1);
    expect(err.stderr).toContain('policy.rules[0].hosts[0]');
    expect(err.stderr).toContain('would match every name');
  });
});

describe('wa-egress config check', () => {
  it('accepts the default config with a one-line summary', async () => {
    const { stdout } = await run(process.execPath, [CLI, 'config', 'check', resolve(import.meta.dirname, '../../config/default.yaml')]);
    expect(stdout.trim().split('\n')).toHaveLength(1);
    expect(stdout).toContain('2 rules, 13 host patterns, 229 CIDRs, ports 443,5222');
  });

  it('lists every error with key path and line, exit code 1', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-cli-'));
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'listen:\n  proxy: "127.0.0.1:3128"\n  extra: 1\npolicy:\n  rules:\n    - name: a\n      ip_ranges: ["10.0.0.1/8"]\n      ports: [70000]\n');
    const err = await run(process.execPath, [CLI, 'config', 'check', file]).catch((e: { code: number; stderr: string }) => e) as { code: number; stderr: string };
    expect(err.code).toBe(1);
    expect(err.stderr).toContain(`${file}:3:3: listen.extra: unknown key`);
    expect(err.stderr).toContain(`${file}:7:19: policy.rules[0].ip_ranges[0]: "10.0.0.1/8": host bits are set`);
    expect(err.stderr).toContain(`${file}:8:15: policy.rules[0].ports[0]`);
  });

  it('prints help for every command', async () => {
    for (const args of [['--help'], ['serve', '--help'], ['config', '--help']]) {
      const { stdout } = await run(process.execPath, [CLI, ...args]);
      expect(stdout).toMatch(/^Usage: wa-egress/);
    }
  });

  it('rejects an unknown command', async () => {
    const err = await run(process.execPath, [CLI, 'frobnicate']).catch((e: { code: number; stderr: string }) => e) as { code: number; stderr: string };
    expect(err.code).toBe(1);
    expect(err.stderr).toContain('unknown command');
  });
});
