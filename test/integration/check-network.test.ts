import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startClosedPort, startGateway, startTcpServer, type TestGateway, type TestServer } from '../helpers.js';

/**
 * check-network through a real gateway, against loopback sinks only: the
 * vendor names are mapped to 127.0.0.1 with the gateway's dns.hosts, a TLS
 * echo server holds a certificate from a CA made here with openssl, and
 * --ports maps 443 and 5222 to the sinks' own ports. The CLI's environment
 * has no proxy variables except the ones a test sets.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const haveOpenssl = spawnSync('openssl', ['version']).status === 0;
if (!haveOpenssl) console.warn('check-network tests skipped: openssl is not on PATH (needed to make a test CA)');

const NAMES = ['g.whatsapp.net', 'v.whatsapp.net', 'mmg.whatsapp.net', 'evil.example', 'wrongcert.whatsapp.net'];
const CERT_NAMES = ['g.whatsapp.net', 'v.whatsapp.net', 'mmg.whatsapp.net', 'evil.example'];

function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/_proxy$/i.test(k)) env[k] = v;
  return { ...env, ...extra };
}

function cli(args: string[], env = cleanEnv()): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((r) => {
    execFile(process.execPath, [CLI, 'check-network', ...args], { env }, (err, stdout, stderr) =>
      r({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

function openssl(dir: string, args: string[]): void {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

/** A CA and a server certificate for CERT_NAMES and 127.0.0.1, signed by it. */
function makeCerts(dir: string): { ca: string; key: string; cert: string; other: string } {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=wa-egress test CA']);
  openssl(dir, ['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=g.whatsapp.net']);
  writeFileSync(join(dir, 'ext.cnf'), `subjectAltName=${[...CERT_NAMES.map((n) => `DNS:${n}`), 'IP:127.0.0.1'].join(',')}\n`);
  openssl(dir, ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf']);
  // A second CA that signed nothing here: trusting it is not enough.
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'other.key', '-out', 'other.pem', '-days', '2', '-subj', '/CN=unrelated CA']);
  const read = (f: string) => readFileSync(join(dir, f), 'utf8');
  return { ca: join(dir, 'ca.pem'), key: read('server.key'), cert: read('server.pem'), other: join(dir, 'other.pem') };
}

describe.skipIf(!haveOpenssl)('check-network', () => {
  let dir: string;
  let certs: ReturnType<typeof makeCerts>;
  let tlsServer: tls.Server;
  let tlsPort: number;
  let chat: TestServer;
  let gw: TestGateway;
  let hostsFile: string;
  const sockets = new Set<net.Socket>();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wa-egress-check-'));
    certs = makeCerts(dir);
    tlsServer = tls.createServer({ key: certs.key, cert: certs.cert }, (s) => {
      s.on('error', () => {});
      s.pipe(s);
    });
    tlsServer.on('connection', (s: net.Socket) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', () => r()));
    tlsPort = (tlsServer.address() as net.AddressInfo).port;
    chat = await startTcpServer();
    gw = await startGateway({
      policy: {
        rules: [
          // g and v: both ports; mmg: the TLS port only, so its 5222 is refused.
          { name: 'whatsapp', hosts: ['g.whatsapp.net', 'v.whatsapp.net', 'wrongcert.whatsapp.net'], ports: [tlsPort, chat.port] },
          { name: 'https-only', hosts: ['mmg.whatsapp.net'], ports: [tlsPort] },
        ],
        allow_ranges: ['127.0.0.1/32'],
      },
      dns: { hosts: Object.fromEntries(NAMES.map((n) => [n, '127.0.0.1'])) },
    });
    hostsFile = join(dir, 'hosts');
    writeFileSync(hostsFile, '# chat hosts\ng.whatsapp.net 443 5222\nv.whatsapp.net:443,5222\n');
  });

  afterAll(async () => {
    await gw?.close();
    await chat?.close();
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => (tlsServer ? tlsServer.close(() => r()) : r()));
  });

  const ports = () => `443=${tlsPort},5222=${chat.port}`;
  const proxy = () => `http://127.0.0.1:${gw.port}`;

  it('all OK through the gateway: exit 0, the wadebug JSON shape, the TLS certificate checked', async () => {
    const r = await cli(['--proxy', proxy(), '--hosts', hostsFile, '--ports', ports(), '--ca', certs.ca, '--json']);
    expect(r.stderr).toBe('');
    const json = JSON.parse(r.stdout) as Record<string, Record<string, string>>;
    expect(Object.keys(json)).toEqual(['proxy', 'g.whatsapp.net:443', 'g.whatsapp.net:5222', 'v.whatsapp.net:443', 'v.whatsapp.net:5222']);
    for (const check of Object.values(json)) {
      expect(Object.keys(check).sort()).toEqual(['details', 'message', 'remediation', 'result', 'short_description']);
      expect(check.result).toBe('OK');
    }
    expect(json['g.whatsapp.net:443']!.message).toContain('TLS certificate valid for g.whatsapp.net');
    expect(json['g.whatsapp.net:443']!.details).toContain(`CONNECT g.whatsapp.net:${tlsPort} answered 200`);
    expect(json['g.whatsapp.net:443']!.details).toContain('issued by wa-egress test CA');
    expect(r.code).toBe(0);
    // The gateway saw exactly these tunnels: nothing else was contacted through it.
    const allowed = gw.audit().filter((a) => a.event === 'egress.allowed').map((a) => `${a.dest_host}:${a.dest_port}`);
    expect(allowed).toEqual(expect.arrayContaining([`g.whatsapp.net:${tlsPort}`, `v.whatsapp.net:${chat.port}`]));
  });

  it('5222 refused while 443 works is a warning (exit 1); the table has no colour off a TTY', async () => {
    const file = join(dir, 'mmg');
    writeFileSync(file, 'mmg.whatsapp.net 443 5222\n');
    const r = await cli(['--proxy', proxy(), '--hosts', file, '--ports', ports(), '--ca', certs.ca]);
    expect(r.code).toBe(1);
    expect(r.stdout).not.toContain('\x1b[');
    expect(r.stdout).toMatch(/mmg\.whatsapp\.net:443\s+OK/);
    // No rule lists mmg.whatsapp.net with the chat port.
    expect(r.stdout).toMatch(/mmg\.whatsapp\.net:5222\s+warning\s+refused by the gateway's policy: 403 \(X-Wa-Egress-Reason: host_not_allowed\); Coreapp falls back to 443/);
    expect(r.stdout).toContain('1 warning');
  });

  it('a closed 5222 at the far end: the gateway answers 502 connect_failed, a warning', async () => {
    // A gateway whose policy lists the closed port, so it dials and is refused.
    const held = await startClosedPort();
    const closed = held.port;
    const wide = await startGateway({
      policy: { rules: [{ name: 'w', hosts: ['g.whatsapp.net'], ports: [tlsPort, closed] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
    });
    try {
      const one = join(dir, 'g-only');
      writeFileSync(one, 'g.whatsapp.net 443 5222\n');
      const r2 = await cli(['--proxy', `http://127.0.0.1:${wide.port}`, '--hosts', one, '--ports', `443=${tlsPort},5222=${closed}`, '--ca', certs.ca, '--json']);
      const j2 = JSON.parse(r2.stdout) as Record<string, Record<string, string>>;
      expect(j2['g.whatsapp.net:5222']).toMatchObject({ result: 'warning' });
      expect(j2['g.whatsapp.net:5222']!.message).toContain('the proxy could not reach the destination: 502 (X-Wa-Egress-Reason: connect_failed)');
      expect(j2['g.whatsapp.net:5222']!.remediation).toContain('outbound firewall');
      expect(r2.code).toBe(1);
    } finally {
      await wide.close();
      held.close();
    }
  });

  it('a denied host is a problem naming the reason (exit 2); 443 failing with 5222 working is a problem too', async () => {
    const file = join(dir, 'denied');
    writeFileSync(file, 'evil.example 443\n');
    const r = await cli(['--proxy', proxy(), '--hosts', file, '--ports', ports(), '--ca', certs.ca, '--json']);
    const json = JSON.parse(r.stdout) as Record<string, Record<string, string>>;
    expect(json['evil.example:443']).toMatchObject({ result: 'problem' });
    expect(json['evil.example:443']!.message).toBe("refused by the gateway's policy: 403 (X-Wa-Egress-Reason: host_not_allowed)");
    expect(json['evil.example:443']!.remediation).toContain('wa-egress policy explain evil.example:443');
    expect(r.code).toBe(2);
    // 443 answered by a plain TCP echo (no TLS), 5222 fine: the reverse of the fallback is a problem.
    const r2 = await cli(['--proxy', proxy(), '--hosts', hostsFile, '--ports', `443=${chat.port},5222=${chat.port}`, '--timeout', '3s', '--json']);
    const j2 = JSON.parse(r2.stdout) as Record<string, Record<string, string>>;
    expect(j2['g.whatsapp.net:443']!.result).toBe('problem');
    expect(j2['g.whatsapp.net:5222']!.result).toBe('OK');
    expect(r2.code).toBe(2);
  });

  it('TLS: an untrusted CA and a certificate for another name are problems', async () => {
    const r = await cli(['--proxy', proxy(), '--hosts', hostsFile, '--ports', ports(), '--ca', certs.other, '--json']);
    const json = JSON.parse(r.stdout) as Record<string, Record<string, string>>;
    expect(json['g.whatsapp.net:443']!.result).toBe('problem');
    expect(json['g.whatsapp.net:443']!.message).toMatch(/TLS handshake for g\.whatsapp\.net failed: (UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)/);
    expect(json['g.whatsapp.net:443']!.remediation).toContain('--ca FILE');
    const wrong = join(dir, 'wrong');
    writeFileSync(wrong, 'wrongcert.whatsapp.net 443\n');
    const r2 = await cli(['--proxy', proxy(), '--hosts', wrong, '--ports', ports(), '--ca', certs.ca, '--json']);
    const j2 = JSON.parse(r2.stdout) as Record<string, Record<string, string>>;
    expect(j2['wrongcert.whatsapp.net:443']!.message).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
    expect(r2.code).toBe(2);
  });

  it('the proxy down: one problem, every check skipped, exit 2', async () => {
    const held = await startClosedPort();
    const down = held.port;
    const r = await cli(['--proxy', `http://127.0.0.1:${down}`, '--hosts', hostsFile, '--ports', ports(), '--json']).finally(() => held.close());
    const json = JSON.parse(r.stdout) as Record<string, Record<string, string>>;
    expect(json.proxy).toMatchObject({ result: 'problem' });
    expect(json.proxy!.message).toBe(`proxy unreachable: cannot connect to the proxy http://127.0.0.1:${down}: ECONNREFUSED`);
    expect(Object.entries(json).filter(([k]) => k !== 'proxy').every(([, v]) => v.result === 'skipped')).toBe(true);
    expect(r.code).toBe(2);
  });

  it('407 from the proxy is named as such', async () => {
    const auth = await startTcpServer('127.0.0.1', (s) => {
      s.once('data', () => s.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\nContent-Length: 0\r\n\r\n'));
    });
    try {
      const r = await cli(['--proxy', `http://127.0.0.1:${auth.port}`, '--hosts', hostsFile, '--ports', ports(), '--json']);
      const json = JSON.parse(r.stdout) as Record<string, Record<string, string>>;
      expect(json['g.whatsapp.net:443']!.message).toContain('407 Proxy Authentication Required');
      expect(json['g.whatsapp.net:443']!.remediation).toContain('USER:PASSWORD');
      expect(r.code).toBe(2);
    } finally {
      await auth.close();
    }
  });

  it('https_proxy from the environment; no_proxy sends a destination direct', async () => {
    const file = join(dir, 'mixed');
    writeFileSync(file, 'g.whatsapp.net 443\n127.0.0.1 443\n');
    const env = cleanEnv({ https_proxy: proxy(), no_proxy: 'localhost,127.0.0.1' });
    const r = await cli(['--hosts', file, '--ports', ports(), '--ca', certs.ca, '--json'], env);
    const json = JSON.parse(r.stdout) as Record<string, Record<string, string>>;
    expect(json['g.whatsapp.net:443']).toMatchObject({ result: 'OK', short_description: `TCP 443 and TLS to g.whatsapp.net through the proxy ${proxy()}` });
    expect(json['127.0.0.1:443']).toMatchObject({ result: 'OK', short_description: 'TCP 443 and TLS to 127.0.0.1 directly (no_proxy)' });
    expect(r.code).toBe(0);
    const none = await cli(['--hosts', file]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('no proxy: give --proxy URL, set https_proxy, or use --direct');
  });

  it('--direct reaches an address without any proxy', async () => {
    const file = join(dir, 'direct');
    writeFileSync(file, '127.0.0.1 443\n');
    const r = await cli(['--direct', '--hosts', file, '--ports', ports(), '--ca', certs.ca, '--json']);
    expect(JSON.parse(r.stdout)['127.0.0.1:443']).toMatchObject({ result: 'OK', short_description: 'TCP 443 and TLS to 127.0.0.1 directly' });
    expect(r.code).toBe(0);
  });
});
