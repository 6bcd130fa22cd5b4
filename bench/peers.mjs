// The proxies under test. Each peer: `available()` (installs it when it is
// missing and installing is allowed; returns { ok } or { ok: false, reason }),
// `version()`, and `start(env)` returning { pid, port, targetHost, stop() }.
// Every proxy runs as its own process on 127.0.0.1 with a config file in the
// bench's temp dir; none is started as a system service.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, openSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, waitForPort } from './lib.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..');
const CLI = join(root, 'dist/cli.js');

function which(bin) {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    const p = join(dir, bin);
    if (dir && existsSync(p)) return p;
  }
  return null;
}

function pkgVersion(name) {
  try {
    return JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')).version;
  } catch {
    return 'not installed';
  }
}

/** Install a Debian package with apt-get, never starting its service. */
function aptInstall(pkg, log) {
  if (process.getuid?.() !== 0) return { ok: false, reason: `not root: cannot apt-get install ${pkg}` };
  if (!which('apt-get')) return { ok: false, reason: 'apt-get not found' };
  // A policy-rc.d that says 101 keeps the package's init script from
  // starting a system-wide daemon; ours run from their own config files.
  const policy = '/usr/sbin/policy-rc.d';
  const ours = !existsSync(policy);
  if (ours) {
    writeFileSync(policy, '#!/bin/sh\n# written by wa-egress bench/peers.mjs during apt-get install\nexit 101\n');
    chmodSync(policy, 0o755);
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () =>
    spawnSync('apt-get', ['install', '-y', '--no-install-recommends', pkg], { env, encoding: 'utf8', timeout: 300_000 });
  try {
    log(`installing ${pkg} with apt-get`);
    let r = install();
    if (r.status !== 0) {
      log(`apt-get install ${pkg} failed; apt-get update and retry`);
      spawnSync('apt-get', ['update'], { env, encoding: 'utf8', timeout: 300_000 });
      r = install();
    }
    if (r.status !== 0) {
      const tail = `${r.stderr ?? ''}${r.error ? ` ${r.error.message}` : ''}`.trim().split('\n').slice(-2).join(' / ');
      return { ok: false, reason: `apt-get install ${pkg} failed (exit ${r.status}): ${tail}` };
    }
    return { ok: true };
  } finally {
    if (ours) unlinkSync(policy);
  }
}

function ensureBinary(bin, pkg, { install, log }) {
  if (which(bin)) return { ok: true };
  if (!install) return { ok: false, reason: `${bin} not installed (installing disabled)` };
  const r = aptInstall(pkg, log);
  if (!r.ok) return r;
  return which(bin) ? { ok: true } : { ok: false, reason: `${pkg} installed but ${bin} not found` };
}

/** Spawn a proxy process, wait for its port, give a stopper that kills only it. */
async function spawnProxy(name, cmd, args, { dir, port, env }) {
  const out = openSync(join(dir, `${name}.out.log`), 'a');
  const child = spawn(cmd, args, { stdio: ['ignore', out, out], env: env ?? process.env });
  let exited = null;
  child.on('exit', (code, signal) => (exited = code ?? signal));
  try {
    await waitForPort(port, '127.0.0.1', 20_000, () => exited === null);
  } catch (err) {
    child.kill('SIGKILL');
    let log = '';
    try {
      log = readFileSync(join(dir, `${name}.out.log`), 'utf8').trim().split('\n').slice(-5).join(' / ');
    } catch {
      // none
    }
    throw new Error(`${name} did not start: ${err.message}${log ? `; log: ${log}` : ''}`);
  }
  return {
    pid: child.pid,
    port,
    child,
    async stop() {
      if (exited !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    },
  };
}

function peerDir(env, name) {
  const dir = join(env.dir, name);
  mkdirSync(dir, { recursive: true });
  // squid and tinyproxy drop root for an unprivileged user that must write here.
  chmodSync(dir, 0o777);
  return dir;
}

// ------------------------------------------------------------------ peers

export const direct = {
  name: 'direct',
  kind: 'none',
  available: () => ({ ok: true }),
  version: () => 'no proxy: the client talks to the sink',
  start: async () => ({ pid: null, port: null, targetHost: '127.0.0.1', stop: async () => {} }),
};

export const waEgress = {
  name: 'wa-egress',
  kind: 'node',
  available: () => (existsSync(CLI) ? { ok: true } : { ok: false, reason: 'dist/cli.js missing: run npm run build' }),
  version() {
    const v = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
    let git = '';
    try {
      git = execFileSync('git', ['-C', root, 'describe', '--always', '--dirty'], { encoding: 'utf8' }).trim();
    } catch {
      // not a checkout
    }
    return `${v}${git ? ` (${git})` : ''}`;
  },
  async start(env) {
    const dir = peerDir(env, 'wa-egress');
    const port = await freePort();
    const config = {
      listen: { proxy: `127.0.0.1:${port}` },
      policy: {
        mode: 'enforce',
        rules: [
          {
            name: 'bench',
            hosts: ['sink.bench', `**.${env.dnsZone}`],
            ip_ranges: ['127.0.0.1/32'],
            ports: env.sinkPorts,
          },
        ],
        allow_ranges: ['127.0.0.1/32'],
      },
      dns: { hosts: { 'sink.bench': '127.0.0.1' }, servers: env.dnsServer ? [env.dnsServer] : [] },
      timeouts: { idle: 0 },
      audit: { file: join(dir, 'audit.log') },
    };
    const file = join(dir, 'config.yaml');
    writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`); // JSON is YAML
    const nodeArgs = [];
    if (env.profileDir) nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${env.profileDir}`, '--cpu-prof-name=wa-egress.cpuprofile');
    const p = await spawnProxy('wa-egress', process.execPath, [...nodeArgs, CLI, 'serve', '--config', file], { dir, port });
    return { ...p, targetHost: 'sink.bench', configFile: file, auditFile: config.audit.file };
  },
};

export const squid = {
  name: 'squid',
  kind: 'native',
  available: (opts) => ensureBinary('squid', 'squid', opts),
  version() {
    try {
      return execFileSync(which('squid'), ['-v'], { encoding: 'utf8' }).split('\n')[0].trim();
    } catch (err) {
      return `unknown (${err.message})`;
    }
  },
  async start(env) {
    const dir = peerDir(env, 'squid');
    const port = await freePort();
    const conf = [
      `http_port 127.0.0.1:${port}`,
      `acl bench_ports port ${env.sinkPorts.join(' ')}`,
      'acl CONNECT method CONNECT',
      'http_access allow CONNECT bench_ports',
      'http_access deny all',
      'cache deny all',
      'cache_mem 8 MB',
      `access_log stdio:${join(dir, 'access.log')}`,
      `cache_log ${join(dir, 'cache.log')}`,
      'cache_store_log none',
      `pid_filename ${join(dir, 'squid.pid')}`,
      `coredump_dir ${dir}`,
      'max_filedescriptors 20000',
      // No idle cut for tunnels (read_timeout governs an idle CONNECT tunnel).
      'read_timeout 1 day',
      'client_lifetime 30 days',
      'request_timeout 1 minute',
      'connect_timeout 10 seconds',
      'shutdown_lifetime 0 seconds',
      'pinger_enable off',
      'via off',
      'forwarded_for delete',
      'httpd_suppress_version_string on',
      'visible_hostname wa-egress-bench',
      ...(env.dnsServer && env.dnsServer.endsWith(':53') ? [`dns_nameservers ${env.dnsServer.slice(0, -3)}`] : []),
      '',
    ].join('\n');
    const file = join(dir, 'squid.conf');
    writeFileSync(file, conf);
    const p = await spawnProxy('squid', which('squid'), ['-N', '-f', file], { dir, port });
    return { ...p, targetHost: '127.0.0.1', configFile: file };
  },
};

export const tinyproxy = {
  name: 'tinyproxy',
  kind: 'native',
  available: (opts) => ensureBinary('tinyproxy', 'tinyproxy', opts),
  version() {
    try {
      return execFileSync(which('tinyproxy'), ['-v'], { encoding: 'utf8' }).split('\n')[0].trim();
    } catch (err) {
      return `unknown (${err.message})`;
    }
  },
  async start(env) {
    const dir = peerDir(env, 'tinyproxy');
    const port = await freePort();
    const root = process.getuid?.() === 0;
    const conf = [
      ...(root ? ['User nobody', 'Group nogroup'] : []),
      `Port ${port}`,
      'Listen 127.0.0.1',
      // Seconds of inactivity before a connection is cut: a year is "never".
      'Timeout 31536000',
      `LogFile "${join(dir, 'tinyproxy.log')}"`,
      'LogLevel Connect',
      `PidFile "${join(dir, 'tinyproxy.pid')}"`,
      'MaxClients 10000',
      'Allow 127.0.0.1',
      ...env.sinkPorts.map((p) => `ConnectPort ${p}`),
      'DisableViaHeader Yes',
      '',
    ].join('\n');
    const file = join(dir, 'tinyproxy.conf');
    writeFileSync(file, conf);
    const p = await spawnProxy('tinyproxy', which('tinyproxy'), ['-d', '-c', file], { dir, port });
    return { ...p, targetHost: '127.0.0.1', configFile: file };
  },
};

function nodePeer(name, script, pkg) {
  return {
    name,
    kind: 'node',
    available: () => (pkg && pkgVersion(pkg) === 'not installed' ? { ok: false, reason: `${pkg} is not installed (npm ci)` } : { ok: true }),
    version: () => (pkg ? `${pkg}@${pkgVersion(pkg)}` : `Node.js ${process.version}, bench/peers/${script}`),
    async start(env) {
      const dir = peerDir(env, name);
      const port = await freePort();
      const nodeArgs = env.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${env.profileDir}`, `--cpu-prof-name=${name}.cpuprofile`] : [];
      const p = await spawnProxy(name, process.execPath, [...nodeArgs, join(here, 'peers', script), String(port)], { dir, port });
      return { ...p, targetHost: '127.0.0.1' };
    },
  };
}

export const proxyChain = nodePeer('proxy-chain', 'proxy-chain.mjs', 'proxy-chain');
export const proxyPkg = nodePeer('proxy', 'proxy.mjs', 'proxy');
export const floorNet = nodePeer('floor-net', 'floor-net.mjs', null);
export const floorHttp = nodePeer('floor-http', 'floor-http.mjs', null);

export const ALL_PEERS = [direct, waEgress, squid, tinyproxy, proxyChain, proxyPkg, floorNet, floorHttp];

export { pkgVersion };
