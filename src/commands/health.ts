import { request } from 'node:http';
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.js';
import { serveConfigPath } from '../config/serve-path.js';
import { fail, type Command } from './command.js';

const help = `Usage: wa-egress health [--config FILE]

Ask the running gateway's admin listener (listen.admin of the configuration
serve reads: --config, WA_EGRESS_CONFIG, /etc/wa-egress/config.yaml or the
bundled default, as for serve) for GET /healthz. Exit 0 when it answers 200,
1 otherwise. An unspecified admin address (0.0.0.0, [::]) is asked on
loopback. The container image's HEALTHCHECK runs this (no curl needed).

Options:
  -c, --config FILE   configuration file (YAML)
  -h, --help          show this help
`;

const TIMEOUT_MS = 3000;

function probeHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

function get(host: string, port: number): Promise<number> {
  return new Promise((done, failed) => {
    const req = request({ host, port, path: '/healthz', method: 'GET', timeout: TIMEOUT_MS, agent: false }, (res) => {
      res.resume();
      done(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
    req.on('error', failed);
    req.end();
  });
}

async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) return void process.stdout.write(help);
  const file = serveConfigPath(values.config);
  const admin = loadConfigFile(file).listen.admin;
  if (!admin) fail(`${file}: listen.admin is not set: there is no admin listener to ask`);
  if (admin.port === 0) fail(`${file}: listen.admin has port 0: the bound port is not known to ask it`);
  const host = probeHost(admin.host);
  const where = `http://${host.includes(':') ? `[${host}]` : host}:${admin.port}/healthz`;
  const status = await get(host, admin.port).catch((err: Error) => fail(`${where}: ${err.message}`));
  if (status !== 200) fail(`${where}: HTTP ${status}`);
  process.stdout.write(`${where}: OK\n`);
}

export const health: Command = { words: ['health'], summary: 'health [--config FILE]    ask the running gateway\'s /healthz (container HEALTHCHECK)', help, run };
