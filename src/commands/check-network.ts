import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parseDuration } from '../config/schema.js';
import { readHostsFile, WHATSAPP_HOSTS, withSamples, type CheckHost } from '../check/hosts.js';
import { NoProxy, parseProxyUrl, proxyFromEnv, type ProxyUrl } from '../check/proxy.js';
import { checkNetwork, exitCode, formatTable } from '../check/run.js';
import { parsePort } from '../policy/hostport.js';
import type { Command } from './command.js';

const help = `Usage: wa-egress check-network [options]

Check that every destination the WhatsApp Business API client (Coreapp)
needs can be reached through the gateway: for each host, the TCP path through
the proxy (CONNECT answered 2xx, so the far end was reached) and on 443 a TLS
handshake verifying the certificate for that name. 443 must work for every
host; 5222 failing while 443 works is a warning (Coreapp falls back to 443).

Hosts: g.whatsapp.net, v.whatsapp.net, mmg.whatsapp.net, pps.whatsapp.net,
static.whatsapp.net, graph.facebook.com, graph.whatsapp.com (443, 5222),
a representative name for each wildcard pattern (443, 5222), and
docker.whatsapp.biz, dl.bintray.com, akamai.bintray.com (443).

Options:
      --proxy URL        the proxy (http://[USER:PASS@]HOST:PORT); default
                         https_proxy / HTTPS_PROXY; no_proxy / NO_PROXY honoured
      --direct           connect directly, not through a proxy
      --hosts FILE       check these instead: HOST [PORT...] or HOST:PORT,...
                         a line (port 443 when none; "#" comments)
      --sample P=NAME    the name to check for wildcard pattern P, e.g.
                         --sample '.*.cdn.whatsapp.net=mmg.cdn.whatsapp.net'
      --ports MAP        dial other ports than the ones checked: 443=8443,5222=15222
      --ca FILE          also trust the CA certificates in FILE (PEM)
      --timeout DUR      per check (default 10s)
      --parallel N       checks at once (default 8)
      --json             wadebug-style JSON: an object keyed by check, each with
                         result (OK|problem|warning|skipped|error),
                         short_description, message, details, remediation
  -h, --help             show this help

Exit status: 0 all OK, 1 warnings only, 2 any problem (or bad usage).
`;

function usage(message: string): never {
  process.stderr.write(`wa-egress: ${message}\n\n${help}`);
  process.exit(2);
}

function portMap(text: string | undefined): Map<number, number> {
  const map = new Map<number, number>();
  for (const pair of (text ?? '').split(',').filter(Boolean)) {
    const m = /^(\d+)=(\d+)$/.exec(pair.trim());
    if (!m) usage(`--ports: expected CHECKED=DIALLED pairs such as 443=8443, got ${JSON.stringify(pair)}`);
    map.set(parsePort(m[1]!), parsePort(m[2]!));
  }
  return map;
}

async function run(args: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        proxy: { type: 'string' },
        direct: { type: 'boolean' },
        hosts: { type: 'string' },
        sample: { type: 'string', multiple: true },
        ports: { type: 'string' },
        ca: { type: 'string' },
        timeout: { type: 'string' },
        parallel: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    usage((err as Error).message);
  }
  const { values } = parsed;
  if (values.help) return void process.stdout.write(help);
  if (values.direct && values.proxy) usage('--direct and --proxy exclude each other');

  let proxy: ProxyUrl | undefined;
  if (!values.direct) {
    const url = values.proxy ?? proxyFromEnv(process.env);
    if (!url) usage('no proxy: give --proxy URL, set https_proxy, or use --direct');
    try {
      proxy = parseProxyUrl(url);
    } catch (err) {
      usage((err as Error).message);
    }
  }
  let hosts: CheckHost[];
  try {
    hosts = values.hosts ? readHostsFile(values.hosts) : withSamples(WHATSAPP_HOSTS, values.sample ?? []);
  } catch (err) {
    usage((err as NodeJS.ErrnoException).code ? `${values.hosts}: cannot read: ${(err as NodeJS.ErrnoException).code}` : (err as Error).message);
  }
  if (values.hosts && values.sample) usage('--sample applies to the built-in list, not to --hosts');
  const timeoutMs = parseDuration(values.timeout ?? '10s');
  if (!timeoutMs) usage(`--timeout: expected a duration such as 5s, got ${JSON.stringify(values.timeout)}`);
  const parallel = Number(values.parallel ?? 8);
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > 256) usage('--parallel: expected a number from 1 to 256');
  let ca: string[] | undefined;
  if (values.ca) {
    try {
      const pem = readFileSync(values.ca, 'utf8');
      if (!pem.includes('-----BEGIN CERTIFICATE-----')) usage(`--ca ${values.ca}: no PEM certificate in it`);
      ca = [pem];
    } catch (err) {
      usage(`--ca ${values.ca}: cannot read: ${(err as NodeJS.ErrnoException).code ?? err}`);
    }
  }
  let ports: Map<number, number>;
  try {
    ports = portMap(values.ports);
  } catch (err) {
    usage(`--ports: ${(err as Error).message}`);
  }

  const results = await checkNetwork(hosts, {
    proxy,
    noProxy: new NoProxy(process.env.no_proxy ?? process.env.NO_PROXY),
    timeoutMs,
    parallel,
    portMap: ports,
    tlsPorts: new Set([443]),
    ca,
  });
  const colour = process.stdout.isTTY === true && !process.env.NO_COLOR;
  process.stdout.write(values.json ? `${JSON.stringify(results, null, 2)}\n` : formatTable(results, colour));
  process.exitCode = exitCode(results);
}

export const checkNetworkCommand: Command = {
  words: ['check-network'],
  summary: 'check-network             can Coreapp reach every vendor host through this gateway?',
  help,
  run,
};
