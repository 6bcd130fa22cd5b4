// Builds the socket-options addon (native/sockopt.cc) during `npm install` /
// `npm ci`. It never fails the install: where something is missing it says
// what, and the gateway runs with Node's own keepalive instead.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '..', 'package.json'));
const say = (msg) => process.stderr.write(`wa-egress native addon: ${msg}\n`);
const skip = (why) => {
  say(`${why}`);
  say('not built: the gateway will use Node\'s keepalive (1 s x 10 probes); keepalive.interval/count and timeouts.user_timeout are not applied.');
  process.exit(0);
};

if (process.platform !== 'linux') skip(`${process.platform} is not Linux`);

const onPath = (cmd) => (process.env.PATH ?? '').split(delimiter).some((d) => d && existsSync(join(d, cmd)));
const missing = [];
if (!(process.env.CXX ? onPath(process.env.CXX.split(' ')[0]) : onPath('g++') || onPath('c++'))) missing.push('a C++ compiler (g++)');
if (!onPath('make')) missing.push('make');
if (!onPath('python3')) missing.push('python3');

/** The running node's headers: node-gyp must never download them. */
function nodeDir() {
  const candidates = [process.env.npm_config_nodedir, dirname(dirname(process.execPath))].filter(Boolean);
  return candidates.find((d) => existsSync(join(d, 'include', 'node', 'node_api.h')) && existsSync(join(d, 'include', 'node', 'common.gypi')));
}
const nodedir = nodeDir();
if (!nodedir) {
  missing.push(`Node.js headers (include/node/node_api.h under ${dirname(dirname(process.execPath))}; Debian: apt-get install libnode-dev, or use the official Node.js build, which ships them)`);
}

function resolveOr(id) {
  try {
    return require.resolve(id);
  } catch {
    return undefined;
  }
}
// node-gyp from devDependencies, else the one npm itself bundles.
const gyp = resolveOr('node-gyp/bin/node-gyp.js') ?? process.env.npm_config_node_gyp;
if (!gyp || !existsSync(gyp)) missing.push('node-gyp (npm install node-gyp)');
if (!resolveOr('node-addon-api')) missing.push('node-addon-api (npm install node-addon-api)');

if (missing.length) skip(`missing ${missing.join(', ')}`);

const r = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '--loglevel=warn'], { cwd: here, stdio: ['ignore', 'inherit', 'inherit'] });
if (r.status !== 0) skip(`node-gyp failed (${r.error?.message ?? `exit ${r.status}`}), see above`);
say(`built ${join('native', 'build', 'Release', 'wa_sockopt.node')}`);
