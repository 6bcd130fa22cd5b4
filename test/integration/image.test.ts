import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDocument } from 'yaml';
import { SYSTEM_CONFIG } from '../../src/config/serve-path.js';
import { eventually, RawClient } from '../helpers.js';
import { NO_DNS } from './serve-child.js';

/**
 * The container image, replayed without a container engine (none can start
 * containers here): the final stage of the Dockerfile, read instruction by
 * instruction, is rebuilt in a temp directory standing in for the image's
 * root; its production install runs there; the gateway is started as an
 * unprivileged user with the image's ENTRYPOINT, CMD and ENV, answers the
 * HEALTHCHECK command and drains on the STOPSIGNAL.
 */

const REPO = resolve(import.meta.dirname, '../..');
const run = promisify(execFile);

interface Instruction {
  op: string;
  args: string;
}

/** The Dockerfile's stages: instructions (continuation lines joined, comments dropped), split at FROM. */
function stages(text: string): Instruction[][] {
  const out: Instruction[][] = [];
  for (const line of text.replace(/\\\n/g, ' ').split('\n')) {
    const m = /^\s*([A-Z]+)\s+(.*)$/.exec(line);
    if (!m || line.trimStart().startsWith('#')) continue;
    if (m[1] === 'FROM') out.push([]);
    out.at(-1)?.push({ op: m[1]!, args: m[2]!.trim() });
  }
  return out;
}

const dockerfile = stages(readFileSync(join(REPO, 'Dockerfile'), 'utf8'));
const build = dockerfile[0]!;
const final = dockerfile.at(-1)!;
const all = (op: string) => final.filter((i) => i.op === op);
const last = (op: string) => all(op).at(-1)?.args;
const exec = (op: string): string[] => JSON.parse(last(op)!) as string[];
const buildWorkdir = build.find((i) => i.op === 'WORKDIR')!.args;
const workdir = last('WORKDIR')!;
const env = Object.fromEntries(all('ENV').map((i) => i.args.split('=') as [string, string]));
const healthcheck = JSON.parse(/\bCMD\s+(\[.*\])$/.exec(last('HEALTHCHECK')!)![1]!) as string[];
const install = all('RUN').find((i) => /\bnpm ci\b/.test(i.args))!.args;

const setpriv = ['/usr/bin/setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups'];
const canSetpriv = process.getuid?.() === 0 && existsSync(setpriv[0]!);
if (!canSetpriv) console.warn('image test skipped: needs root and setpriv to start the gateway as an unprivileged user');

let root = '';
let etc = '';
let installError: string | undefined;
const inRoot = (p: string) => join(root, p);

/** A file the build stage made: /app/... is the repository built here (npm run build); /out/... a RUN's output. */
async function fromBuild(src: string, scratch: string): Promise<string> {
  if (src.startsWith(`${buildWorkdir}/`)) return join(REPO, relative(buildWorkdir, src));
  const maker = build.find((i) => i.op === 'RUN' && i.args.includes(`> ${src}`))!;
  const out = join(scratch, src);
  mkdirSync(dirname(out), { recursive: true });
  await run('sh', ['-c', maker.args.replace(/^mkdir -p \S+ && /, '').replaceAll(dirname(src), join(scratch, dirname(src)))], { cwd: REPO });
  return out;
}

/** COPY [--from=build] SRC... DEST, relative DEST under WORKDIR. */
async function copy(args: string, scratch: string): Promise<void> {
  const parts = args.split(/\s+/);
  const fromStage = parts[0]!.startsWith('--from=') ? parts.shift() : undefined;
  const dest = parts.pop()!;
  const target = dest.startsWith('/') ? inRoot(dest) : inRoot(join(workdir, dest));
  for (const src of parts) {
    const from = fromStage ? await fromBuild(src, scratch) : join(REPO, src);
    const to = dest.endsWith('/') || parts.length > 1 ? join(target, src.split('/').at(-1)!) : target;
    mkdirSync(dirname(to), { recursive: true });
    cpSync(from, to, { recursive: true });
  }
}

function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true }).map((d) => join(d.parentPath, d.name)).sort();
}

beforeAll(async () => {
  if (!canSetpriv) return;
  if (!existsSync(join(REPO, 'dist/cli.js')) || !existsSync(join(REPO, 'native/build/Release/wa_sockopt.node'))) {
    throw new Error('dist/ or the addon is missing: run `npm install` and `npm run build` first');
  }
  const base = mkdtempSync(join(tmpdir(), 'wa-egress-image-'));
  root = join(base, 'root');
  const scratch = join(base, 'scratch');
  etc = join(base, 'etc-wa-egress');
  mkdirSync(inRoot(workdir), { recursive: true });
  for (const i of final) {
    if (i.op === 'COPY') await copy(i.args, scratch);
    if (i.op === 'RUN' && i.args === install) {
      try {
        // The RUN as written, with npm's cache in the scratch directory (the image's is cleaned).
        await run('sh', ['-c', install], {
          cwd: inRoot(workdir),
          env: { PATH: process.env.PATH, HOME: scratch, npm_config_cache: join(scratch, 'npm-cache'), npm_config_registry: process.env.npm_config_registry ?? 'https://registry.npmjs.org/' },
          timeout: 240_000,
        });
      } catch (err) {
        installError = String((err as { stderr?: string }).stderr ?? err).slice(-2000);
      }
    }
  }
  // The image's files belong to root and are read-only for its user, as a read-only root filesystem is.
  for (const p of [base, root, ...files(root)]) chmodSync(p, statSync(p).isDirectory() ? 0o755 : statSync(p).mode & 0o755);
}, 300_000);

afterAll(() => {
  if (root) rmSync(dirname(root), { recursive: true, force: true });
});

describe.skipIf(!canSetpriv)('container image (Dockerfile final stage, replayed)', () => {
  it('declares an unprivileged user, a stop signal, a healthcheck and the /etc/wa-egress config', () => {
    expect(last('USER')).toMatch(/^(?!root$|0$)\w+/);
    expect(last('STOPSIGNAL')).toBe('SIGTERM');
    expect(all('COPY').some((i) => i.args.endsWith(` ${SYSTEM_CONFIG}`))).toBe(true);
    expect(exec('ENTRYPOINT')[0]).toBe('node');
    expect(install).toMatch(/--omit=dev/);
  });

  it('installs production dependencies only, the addon and dist/ present', () => {
    if (installError) {
      console.warn(`image test: npm ci could not run (offline?), install checks skipped:\n${installError}`);
      return;
    }
    const app = inRoot(workdir);
    expect(existsSync(join(app, 'native/build/Release/wa_sockopt.node'))).toBe(true);
    const pkg = JSON.parse(readFileSync(join(app, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    const resolves = (name: string) => {
      try {
        return Boolean(require.resolve(`${name}/package.json`, { paths: [app] }));
      } catch {
        return false;
      }
    };
    for (const dep of Object.keys(pkg.dependencies)) expect(resolves(dep), dep).toBe(true);
    for (const dev of Object.keys(pkg.devDependencies)) expect(resolves(dev), `dev dependency ${dev} reachable`).toBe(false);
  });

  it('runs as nobody with the image entrypoint and config path, answers the healthcheck, drains on SIGTERM', async () => {
    if (installError) return void console.warn('image test: npm ci could not run, the start is skipped');
    // The image's config, with the test's ports (never 0.0.0.0:3128) and pinned DNS, where /etc/wa-egress would be.
    const doc = parseDocument(readFileSync(inRoot(SYSTEM_CONFIG), 'utf8'));
    expect(doc.getIn(['listen', 'admin'])).toMatch(/^127\.0\.0\.1:\d+$/);
    doc.setIn(['listen', 'proxy'], '127.0.0.1:0');
    doc.setIn(['dns', 'servers'], [NO_DNS]);
    mkdirSync(etc, { recursive: true, mode: 0o755 });
    const config = join(etc, 'config.yaml');
    const before = files(root);
    const [cmd, ...entry] = [...exec('ENTRYPOINT'), ...exec('CMD')];
    const node = cmd === 'node' ? process.execPath : cmd!;
    const childEnv = { PATH: process.env.PATH!, ...env, WA_EGRESS_CONFIG: config };
    const asNobody = (args: string[]) => spawn(setpriv[0]!, [...setpriv.slice(1), node, ...args], { cwd: inRoot(workdir), env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    // The admin port must be known to the healthcheck: one below the ephemeral range, retried when taken.
    let child: ChildProcess | undefined;
    let err = '';
    let out = '';
    for (let attempt = 0; !child && attempt < 10; attempt++) {
      doc.setIn(['listen', 'admin'], `127.0.0.1:${20_000 + Math.floor(Math.random() * 8000)}`);
      writeFileSync(config, String(doc), { mode: 0o644 });
      const c = asNobody(entry);
      err = '';
      out = '';
      c.stderr!.on('data', (d) => (err += d));
      c.stdout!.on('data', (d) => (out += d));
      const exited = new Promise<number | null>((r) => c.once('exit', r));
      const up = await Promise.race([eventually(() => err.split('\n').filter((l) => l.includes('"listening"')).length >= 2, 20_000).then(() => true), exited.then(() => false)]);
      if (up) child = c;
      else if (!/EADDRINUSE/.test(err)) throw new Error(`serve exited before listening:\n${err}`);
    }
    const exited = new Promise<number | null>((r) => child!.once('exit', r));
    try {
      expect(err).toContain(config);
      const uid = readFileSync(`/proc/${child!.pid}/status`, 'utf8').match(/^Uid:\s+(\d+)/m)![1];
      expect(uid).toBe('65534');
      const proxyPort = Number(/"listener":"proxy","address":"[^"]*:(\d+)"/.exec(err)![1]);

      const probe = asNobody(healthcheck.slice(1));
      let probeOut = '';
      probe.stdout!.on('data', (d) => (probeOut += d));
      expect(await new Promise((r) => probe.once('exit', r))).toBe(0);
      expect(probeOut).toContain('/healthz: OK');

      // The policy is the image's: an unlisted host is refused, and its record goes to stdout.
      const c = await RawClient.connect(proxyPort);
      c.socket.write('CONNECT refused.invalid:443 HTTP/1.1\r\nHost: refused.invalid:443\r\n\r\n');
      await eventually(() => c.data.includes('\r\n\r\n'));
      expect(c.data.toString('latin1')).toMatch(/^HTTP\/1\.1 403/);
      c.socket.destroy();
      await eventually(() => out.includes('refused.invalid'));

      child!.kill(last('STOPSIGNAL') as NodeJS.Signals);
      expect(await exited).toBe(0);
      // Nothing was written inside the image's filesystem.
      expect(files(root)).toEqual(before);
    } finally {
      child!.kill('SIGKILL');
    }
  }, 60_000);
});
