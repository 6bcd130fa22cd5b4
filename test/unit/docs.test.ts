import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { REASONS } from '../../src/errors.js';
import { compilePattern, HostMatcher } from '../../src/policy/patterns.js';

/**
 * The documentation a newcomer reads is true: every YAML block of the README
 * and every example passes the real `config check`; every reason code, close
 * reason and record field is in the README; the help names what serve does;
 * the shipped service unit and logrotate snippet are well-formed.
 */

const ROOT = resolve(import.meta.dirname, '../..');
const CLI = join(ROOT, 'dist/cli.js');
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const run = promisify(execFile);

async function check(file: string): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, 'config', 'check', file]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** ```yaml blocks of a markdown text, with the line each starts on. */
function yamlBlocks(md: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  const re = /^```ya?ml\n([\s\S]*?)^```/gm;
  for (const m of md.matchAll(re)) out.push({ line: md.slice(0, m.index).split('\n').length, text: m[1]! });
  return out;
}

/** A minimal configuration a README snippet of one or two sections is merged into. */
const BASE = { listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'base', hosts: ['base.example.com'], ports: [443] }] } };

function merge(base: unknown, over: unknown): unknown {
  if (typeof base !== 'object' || base === null || Array.isArray(base) || typeof over !== 'object' || over === null || Array.isArray(over)) return over;
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [k, v] of Object.entries(over as Record<string, unknown>)) out[k] = k in out ? merge(out[k], v) : v;
  return out;
}

/** The file to check for a README block: the example it names, or the block (merged into BASE unless complete). */
function blockFile(text: string, dir: string, n: number): { file: string; example?: string } {
  const named = /^# (examples\/\S+\.ya?ml)/.exec(text);
  if (named) return { file: join(ROOT, named[1]!), example: named[1] };
  const doc = parseYaml(text) as Record<string, unknown>;
  const full = doc && typeof doc === 'object' && 'listen' in doc && 'policy' in doc;
  const file = join(dir, `readme-${n}.yaml`);
  writeFileSync(file, full ? text : stringify(merge(BASE, doc)));
  return { file };
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

describe('README YAML blocks pass config check', () => {
  const blocks = yamlBlocks(README);
  const dir = mkdtempSync(join(tmpdir(), 'wa-egress-docs-'));

  it('there are blocks to check, among them the reference', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(2);
    expect(blocks.some((b) => b.text.startsWith('# examples/reference/config.yaml'))).toBe(true);
  });

  it.each(blocks.map((b, i) => [b.line, b.text, i] as const))('README.md:%i', async (_line, text, i) => {
    const { file, example } = blockFile(text, dir, i);
    if (example) expect(readFileSync(file, 'utf8'), `the README block is ${example} as shipped`).toBe(text);
    const r = await check(file);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/: warning: /);
  });

  it('the harness fails a snippet with a typo (unknown keys are not merged away)', async () => {
    const { file } = blockFile('dns:\n  resolve_unlistd: false\n', dir, 999);
    const r = await check(file);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/dns\.resolve_unlistd: unknown key/);
  });
});

describe('examples/', () => {
  const examples = readdirSync(join(ROOT, 'examples'), { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name);

  it('has the examples the README promises', () => {
    expect(examples).toEqual(expect.arrayContaining(['whatsapp', 'saas-allowlist', 'report-mode', 'forward-socks', 'reference']));
  });

  it.each(examples)('%s/config.yaml passes config check, with every file it names beside it', async (name) => {
    const file = join(ROOT, 'examples', name, 'config.yaml');
    const r = await check(file);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/: OK: /);
    expect(r.stdout).not.toMatch(/: warning: /);
    // file: entries are relative to the example: no path out of its directory.
    for (const m of readFileSync(file, 'utf8').matchAll(/"file:([^"]+)"/g)) {
      expect(relative(join(ROOT, 'examples', name), resolve(join(ROOT, 'examples', name), m[1]!))).not.toMatch(/^\.\./);
    }
  });

  it('every example is listed in examples/README.md', () => {
    const index = readFileSync(join(ROOT, 'examples/README.md'), 'utf8');
    for (const name of examples) expect(index).toContain(`(${name}/config.yaml)`);
  });

  it('every YAML file under examples/ passes config check', async () => {
    const yamls = filesUnder(join(ROOT, 'examples')).filter((f) => /\.ya?ml$/.test(f));
    for (const f of yamls) expect((await check(f)).code, f).toBe(0);
  });
});

describe('README reference tables', () => {
  /** The first cells of the table rows of a markdown text. */
  const firstCells = new Set([...README.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1]!));
  const auditSource = readFileSync(join(ROOT, 'src/audit.ts'), 'utf8');

  /** Members of a string-literal union type in src/audit.ts. */
  function union(name: string): string[] {
    const body = new RegExp(`export type ${name} =([^;]+);`).exec(auditSource)![1]!;
    return [...body.matchAll(/'([a-z_]+)'/g)].map((m) => m[1]!);
  }
  /** Field names of an interface in src/audit.ts. */
  function fields(name: string): string[] {
    const body = new RegExp(`export interface ${name} \\{([\\s\\S]*?)\\n\\}`).exec(auditSource)![1]!;
    return [...body.matchAll(/^\s+([a-z_]+)\??:/gm)].map((m) => m[1]!);
  }

  it.each(Object.keys(REASONS))('reason %s has a row with its HTTP status', (reason) => {
    const row = new RegExp(`^\\| \`${reason}\` \\| (\\d{3}|—) \\|`, 'm').exec(README);
    expect(row, `README reason table row for ${reason}`).not.toBeNull();
    if (row![1] !== '—') expect(Number(row![1])).toBe(REASONS[reason as keyof typeof REASONS]);
  });

  it.each(union('CloseReason'))('close reason %s has a row', (r) => {
    expect(firstCells.has(r)).toBe(true);
  });

  it.each([...fields('Attempt'), ...fields('Closed'), 'time', 'level', 'event', 'reason', 'rule', 'enforced', 'range', 'error', 'dest_ip'])('record field %s has a row', (f) => {
    expect(firstCells.has(f)).toBe(true);
  });

  it.each(['egress.allowed', 'egress.denied', 'egress.failed', 'egress.closed'])('event %s has a row', (e) => {
    expect(firstCells.has(e)).toBe(true);
    expect(auditSource).toContain(`'${e}'`);
  });

  it.each(['listen', 'policy', 'policy.rules[].name', 'policy.rules[].ports'])('required key %s is marked required', (key) => {
    expect(README).toMatch(new RegExp(`^\\| \`${key.replace(/[.[\]]/g, '\\$&')}\` \\| \\*\\*required\\*\\* \\|`, 'm'));
  });
});

describe('README pattern table', () => {
  const section = README.slice(README.indexOf('**Patterns**'), README.indexOf('Two notations:'));
  const rows = [...section.matchAll(/^\| `([^`]+)`[^|]*\| ([^|]+) \| ([^|]+) \|$/gm)].map((m) => ({
    pattern: m[1]!,
    yes: [...m[2]!.matchAll(/`([^`]+)`/g)].map((x) => x[1]!),
    no: [...m[3]!.matchAll(/`([^`]+)`/g)].map((x) => x[1]!),
  }));

  it('has its rows', () => {
    expect(rows.length).toBeGreaterThanOrEqual(9);
  });

  it.each(rows.map((r) => [r.pattern, r] as const))('%s matches what the row says', (_p, r) => {
    const m = new HostMatcher([compilePattern(r.pattern)]);
    for (const n of r.yes) expect(m.matches(n), `${r.pattern} ~ ${n}`).toBe(true);
    for (const n of r.no) expect(m.matches(n), `${r.pattern} !~ ${n}`).toBe(false);
  });
});

describe('help', () => {
  const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

  it('the main help names the listeners and that allowed connections are audited', () => {
    const out = cli('--help').stdout;
    expect(out).toMatch(/SOCKS5/);
    expect(out).toMatch(/forward listeners/);
    expect(out).toMatch(/Every connection is audited: allowed ones/);
    expect(out).toMatch(/help COMMAND/);
  });

  it('`help serve` prints serve --help, which lists every signal', () => {
    const viaHelp = cli('help', 'serve');
    expect(viaHelp.status).toBe(0);
    expect(viaHelp.stdout).toBe(cli('serve', '--help').stdout);
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR1']) expect(viaHelp.stdout).toContain(signal);
    expect(viaHelp.stdout).toMatch(/second signal/);
    expect(viaHelp.stdout).toMatch(/exec node/);
  });

  it('every command of the main help has a row in the README commands table', () => {
    const section = cli('--help').stdout.split('Commands:\n')[1]!.split('\n\n')[0]!;
    const commands = section.split('\n').map((l) => {
      const words: string[] = [];
      // The words before the gap that starts the description, up to the first option or argument.
      for (const t of l.trim().split(/\s{2,}/)[0]!.split(/\s+/)) {
        if (!/^[a-z][a-z-]*$/.test(t)) break;
        words.push(t);
      }
      return words.join(' ');
    });
    expect(commands).toContain('serve');
    for (const c of commands) expect(README, c).toMatch(new RegExp(`^\\| \`wa-egress ${c}[ \`]`, 'm'));
  });

  it('`help config check` describes warnings and notes', () => {
    const out = cli('help', 'config', 'check').stdout;
    expect(out).toMatch(/warning:/);
    expect(out).toMatch(/note:/);
    expect(out).toMatch(/not bound/);
  });
});

describe('deploy/', () => {
  const unit = readFileSync(join(ROOT, 'deploy/systemd/wa-egress.service'), 'utf8');
  const logrotate = readFileSync(join(ROOT, 'deploy/logrotate/wa-egress'), 'utf8');

  /** key=value lines of one [section] of a unit file. */
  function section(name: string): Map<string, string[]> {
    const out = new Map<string, string[]>();
    let current = '';
    for (const raw of unit.split('\n')) {
      const line = raw.trim();
      if (line.startsWith('[')) current = line;
      else if (current === `[${name}]` && line && !line.startsWith('#')) {
        const eq = line.indexOf('=');
        out.set(line.slice(0, eq), [...(out.get(line.slice(0, eq)) ?? []), line.slice(eq + 1)]);
      }
    }
    return out;
  }

  it('the unit runs node directly, reloads with SIGHUP, and is hardened', () => {
    const s = section('Service');
    expect(s.get('ExecStart')![0]).toMatch(/^\/usr\/bin\/node \S+\/dist\/cli\.js serve --config \S+$/);
    expect(unit).not.toMatch(/^ExecStart=.*npx/m);
    expect(s.get('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID']);
    expect(s.get('KillMode')).toEqual(['mixed']);
    expect(s.get('KillSignal')).toEqual(['SIGTERM']);
    expect(Number(s.get('LimitNOFILE')![0])).toBeGreaterThanOrEqual(65536);
    expect(s.get('User')).toEqual(['wa-egress']);
    for (const key of ['NoNewPrivileges', 'ProtectSystem', 'ProtectHome', 'PrivateTmp', 'CapabilityBoundingSet', 'SystemCallFilter', 'RestrictAddressFamilies']) {
      expect(s.has(key), key).toBe(true);
    }
    expect(s.get('MemoryDenyWriteExecute')).toBeUndefined(); // V8's JIT needs it off
    // systemd must not kill a drain the default configuration still allows.
    const stopSec = Number(/^(\d+)s$/.exec(s.get('TimeoutStopSec')![0])![1]);
    const { shutdown } = parseConfig('listen: {proxy: "127.0.0.1:0"}\npolicy: {rules: []}\n', '/tmp/defaults.yaml');
    expect(stopSec * 1000).toBeGreaterThan(shutdown.delay + shutdown.drain_timeout);
    expect(section('Install').get('WantedBy')).toEqual(['multi-user.target']);
  });

  const analyze = spawnSync('systemd-analyze', ['--version']).status === 0;
  if (!analyze) console.warn('systemd-analyze is not installed: the unit gets the structural check only');
  it.skipIf(!analyze)('systemd-analyze verify accepts the unit, with no warning', () => {
    // The unit as installed: node and the package where the unit expects them.
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-unit-'));
    const file = join(dir, 'wa-egress.service');
    writeFileSync(file, unit.replaceAll('/usr/bin/node', process.execPath).replaceAll('/opt/wa-egress', ROOT));
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', file], { encoding: 'utf8' });
    expect(r.stderr.split('\n').filter((l) => l && !/^(Failed to|.*\.socket|.*Unit .* not found)/.test(l) && l.includes('wa-egress'))).toEqual([]);
    expect(r.status, r.stderr).toBe(0);
  });

  it('the logrotate snippet rotates the unit\'s log directory and signals SIGUSR1 to the main process', () => {
    expect(section('Service').get('LogsDirectory')).toEqual(['wa-egress']);
    expect(logrotate).toMatch(/^\/var\/log\/wa-egress\/audit\.log \{$/m);
    expect(logrotate).toMatch(/postrotate\n\s+systemctl kill --kill-whom=main --signal=SIGUSR1 wa-egress\.service/);
    expect(logrotate).not.toMatch(/copytruncate/);
    expect(logrotate).toMatch(/create 0640 wa-egress wa-egress/);
  });
});
