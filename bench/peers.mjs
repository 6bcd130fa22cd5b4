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

function waEgressVersion() {
  const v = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
  let git = '';
  try {
    git = execFileSync('git', ['-C', root, 'describe', '--always', '--dirty'], { encoding: 'utf8' }).trim();
  } catch {
    // not a checkout
  }
  return `${v}${git ? ` (${git})` : ''}`;
}

/**
 * Start `dist/cli.js serve` with the bench's policy: `sink.bench` pinned to
 * 127.0.0.1 with `dns.hosts`, the given ports allowed. `listen` is the
 * config's listen section; the first port in `ports` is waited for.
 */
async function startWaEgress(name, env, { listen, waitPort, ports, workers = 1, sched }) {
  const dir = peerDir(env, name);
  const config = {
    ...(workers > 1 ? { workers } : {}),
    listen,
    policy: {
      mode: 'enforce',
      rules: [
        {
          name: 'bench',
          hosts: ['sink.bench', `**.${env.dnsZone}`],
          ip_ranges: ['127.0.0.1/32'],
          ports,
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
  const profileDir = env.profileDir && (workers > 1 ? join(env.profileDir, name) : env.profileDir);
  if (profileDir) {
    // Workers inherit the primary's flags: with several processes each writes CPU.<date>.<pid>...cpuprofile.
    mkdirSync(profileDir, { recursive: true });
    nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${profileDir}`, ...(workers > 1 ? [] : [`--cpu-prof-name=${name}.cpuprofile`]));
  }
  const childEnv = { ...process.env };
  if (sched) childEnv.NODE_CLUSTER_SCHED_POLICY = sched;
  else delete childEnv.NODE_CLUSTER_SCHED_POLICY;
  const p = await spawnProxy(name, process.execPath, [...nodeArgs, CLI, 'serve', '--config', file], { dir, port: waitPort, env: childEnv });
  // With workers, the primary binds nothing itself: wait until a worker has taken the listener.
  return { ...p, targetHost: 'sink.bench', configFile: file, auditFile: config.audit.file, workers, sched: sched ?? (workers > 1 ? 'rr' : undefined), profileDir };
}

/** wa-egress as a CONNECT proxy, with `workers` processes and, optionally, NODE_CLUSTER_SCHED_POLICY. */
function waEgressPeer(name, { workers = 1, sched } = {}) {
  return {
    name,
    kind: 'node',
    workers,
    sched: sched ?? (workers > 1 ? 'rr' : undefined),
    available: () => (existsSync(CLI) ? { ok: true } : { ok: false, reason: 'dist/cli.js missing: run npm run build' }),
    version: () => `${waEgressVersion()}${workers > 1 ? `, workers: ${workers}${sched ? `, NODE_CLUSTER_SCHED_POLICY=${sched}` : ' (round robin)'}` : ''}`,
    async start(env) {
      const port = await freePort();
      return startWaEgress(name, env, { listen: { proxy: `127.0.0.1:${port}` }, waitPort: port, ports: env.sinkPorts, workers, sched });
    },
  };
}

export const waEgress = waEgressPeer('wa-egress');
export const waEgressW2 = waEgressPeer('wa-egress-w2', { workers: 2 });
export const waEgressW2None = waEgressPeer('wa-egress-w2-none', { workers: 2, sched: 'none' });

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

export const ALL_PEERS = [direct, waEgress, waEgressW2, waEgressW2None, squid, tinyproxy, proxyChain, proxyPkg, floorNet, floorHttp];

// ------------------------------------------------------------------ forward peers
// Raw TCP forwards for the forward phase (bench/forward.mjs): each listens
// on one port per sink listener in `targets` ([{ port }]) and relays every
// connection to it. `start(env, targets)` returns { pid, child, ports, stop() }
// with `ports[i]` the listener for `targets[i]`.

export const directForward = {
  name: 'direct',
  available: () => ({ ok: true }),
  version: () => 'no forward: the client talks to the sink',
  start: async (env, targets) => ({ pid: null, child: null, ports: targets.map((t) => t.port), stop: async () => {} }),
};

function waEgressForward(name, { workers = 1, sched } = {}) {
  return {
    name,
    workers,
    available: () => (existsSync(CLI) ? { ok: true } : { ok: false, reason: 'dist/cli.js missing: run npm run build' }),
    version: () => `${waEgressVersion()}, listen.forwards${workers > 1 ? `, workers: ${workers}${sched ? `, NODE_CLUSTER_SCHED_POLICY=${sched}` : ''}` : ''}`,
    async start(env, targets) {
      const ports = [];
      for (let i = 0; i < targets.length; i++) ports.push(await freePort());
      const forwards = targets.map((t, i) => ({ name: `fwd${i}`, listen: `127.0.0.1:${ports[i]}`, to: `sink.bench:${t.port}` }));
      const p = await startWaEgress(name, env, { listen: { forwards }, waitPort: ports[0], ports: targets.map((t) => t.port), workers, sched });
      for (const port of ports.slice(1)) await waitForPort(port);
      return { ...p, ports };
    },
  };
}

export const waEgressFwd = waEgressForward('wa-egress');
export const waEgressW2Fwd = waEgressForward('wa-egress-w2', { workers: 2 });

function haproxyVersion() {
  try {
    return execFileSync(which('haproxy'), ['-v'], { encoding: 'utf8' }).split('\n')[0].replace(/ - https?:.*$/, '').trim();
  } catch (err) {
    return `unknown (${err.message})`;
  }
}

/** HAProxy in `mode tcp`; `splice`: `option splice-auto` (kernel splice(2) between the sockets) or none. */
function haproxyPeer(name, splice) {
  return {
    name,
    available: (opts) => ensureBinary('haproxy', 'haproxy', opts),
    version: () => `${haproxyVersion()}, mode tcp, ${splice ? 'option splice-auto' : 'no splice'}`,
    async start(env, targets) {
      const dir = peerDir(env, name);
      const ports = [];
      for (let i = 0; i < targets.length; i++) ports.push(await freePort());
      const conf = [
        'global',
        // Two descriptors per connection, and with splice two per pipe: under the 20,000 cap.
        '  maxconn 8000',
        '  maxpipes 1000',
        `  pidfile ${join(dir, 'haproxy.pid')}`,
        'defaults',
        '  mode tcp',
        '  timeout connect 10s',
        '  timeout client 1d',
        '  timeout server 1d',
        ...(splice ? ['  option splice-auto'] : ['  no option splice-auto', '  no option splice-request', '  no option splice-response']),
        ...targets.flatMap((t, i) => [`listen fwd${i}`, `  bind 127.0.0.1:${ports[i]}`, '  maxconn 8000', `  server sink${i} 127.0.0.1:${t.port}`]),
        '',
      ].join('\n');
      const file = join(dir, 'haproxy.cfg');
      writeFileSync(file, conf);
      const p = await spawnProxy(name, which('haproxy'), ['-db', '-f', file], { dir, port: ports[0] });
      for (const port of ports.slice(1)) await waitForPort(port);
      return { ...p, ports, configFile: file };
    },
  };
}

export const haproxy = haproxyPeer('haproxy', false);
export const haproxySplice = haproxyPeer('haproxy-splice', true);

/** socat, one `TCP-LISTEN:...,fork` per target under one shell: a process per connection. */
export const socat = {
  name: 'socat',
  available: (opts) => ensureBinary('socat', 'socat', opts),
  version() {
    try {
      const out = execFileSync(which('socat'), ['-V'], { encoding: 'utf8' });
      return `${/socat version (\S+)/.exec(out)?.[0] ?? 'socat'}, TCP-LISTEN fork (a process per connection)`;
    } catch (err) {
      return `unknown (${err.message})`;
    }
  },
  async start(env, targets) {
    const dir = peerDir(env, 'socat');
    const ports = [];
    for (let i = 0; i < targets.length; i++) ports.push(await freePort());
    const bin = which('socat');
    const script = `${targets
      .map((t, i) => `'${bin}' TCP-LISTEN:${ports[i]},bind=127.0.0.1,fork,reuseaddr,backlog=4096 TCP:127.0.0.1:${t.port} &`)
      .join('\n')}\nwait\n`;
    const file = join(dir, 'socat.sh');
    writeFileSync(file, script);
    const out = openSync(join(dir, 'socat.out.log'), 'a');
    // Its own process group: stopping it ends the shell, every listener and every forked relay.
    const child = spawn('/bin/sh', [file], { stdio: ['ignore', out, out], detached: true });
    let exited = null;
    child.on('exit', (code, signal) => (exited = code ?? signal));
    const killGroup = (sig) => {
      try {
        process.kill(-child.pid, sig);
      } catch {
        // gone
      }
    };
    try {
      for (const port of ports) await waitForPort(port, '127.0.0.1', 20_000, () => exited === null);
    } catch (err) {
      killGroup('SIGKILL');
      throw new Error(`socat did not start: ${err.message}`);
    }
    return {
      pid: child.pid,
      child,
      ports,
      kill: () => killGroup('SIGKILL'),
      async stop() {
        killGroup('SIGTERM');
        if (exited === null) await Promise.race([new Promise((r) => child.once('exit', r)), new Promise((r) => setTimeout(r, 5000))]);
        killGroup('SIGKILL');
      },
    };
  },
};

export const FORWARD_PEERS = [directForward, waEgressFwd, waEgressW2Fwd, haproxy, haproxySplice, socat];

export { pkgVersion };
