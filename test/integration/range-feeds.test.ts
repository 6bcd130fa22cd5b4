import { execFileSync, execFile, spawnSync } from 'node:child_process';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { strToU8, zipSync } from 'fflate';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { stringify } from 'yaml';
import type { RangeFeedEvent } from '../../src/events.js';
import { startDns, type TestDns } from '../fixtures/dns-server.js';
import { connectVia, eventually, startClosedPort, startGateway, startTcpServer, type TestGateway, type TestServer } from '../helpers.js';

/**
 * `url:` and `dns:` ip_ranges entries against a local HTTPS server (a
 * self-signed certificate made with openssl, trusted through ranges.ca) and
 * the test DNS server. Decisions are checked with real CONNECTs to
 * loopback addresses the lists name (127.0.0.0/8 is exempted through
 * allow_ranges), and the feed's events say when a refresh has happened.
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');
const openssl = spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0;
if (!openssl) console.warn('range feed tests: skipped: the openssl command is needed to make the test certificate');
let dir: string;
let ca: string;
let key: string;
let echo: TestServer;
let others: TestServer[] = [];

type Handler = (req: IncomingMessage, res: ServerResponse) => void;
let handler: Handler;
let requests: IncomingMessage[] = [];
let server: https.Server;
let base: string;

beforeAll(async () => {
  if (!openssl) return;
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-feeds-'));
  ca = join(dir, 'cert.pem');
  key = join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-keyout', key, '-out', ca, '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
  ], { stdio: 'ignore' });
  server = https.createServer({ key: readFileSync(key), cert: readFileSync(ca) }, (req, res) => {
    requests.push(req);
    handler(req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  echo = await startTcpServer('127.0.0.1');
  // The same port on the other loopback addresses the lists name.
  others = await Promise.all(['127.0.0.2', '127.0.0.3', '127.0.0.4'].map((h) => startTcpServer(h, undefined, echo.port)));
});
afterAll(async () => {
  if (!openssl) return;
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await echo.close();
  for (const o of others) await o.close();
});

let gateways: TestGateway[] = [];
let unsubscribers: (() => void)[] = [];
afterEach(async () => {
  for (const u of unsubscribers) u();
  unsubscribers = [];
  for (const g of gateways) await g.close();
  gateways = [];
  requests = [];
});

/** Collect range-feed events; `next(pred)` resolves on the first matching one after the call. */
function feedEvents() {
  const seen: RangeFeedEvent[] = [];
  const fn = (m: unknown) => seen.push(m as RangeFeedEvent);
  subscribe('wa-egress:range-feed', fn);
  unsubscribers.push(() => unsubscribe('wa-egress:range-feed', fn));
  return {
    seen,
    next(pred: (e: RangeFeedEvent) => boolean): Promise<RangeFeedEvent> {
      const from = seen.length;
      return eventually(() => seen.slice(from).find(pred), 10_000);
    },
  };
}

/** Serve `body()` with an ETag; answers 304 when the client's If-None-Match matches. */
function serveList(body: () => string | Buffer, type = 'text/plain'): void {
  handler = (req, res) => {
    const b = body();
    const etag = `"${Buffer.from(b).toString('base64url').slice(-16)}-${Buffer.byteLength(b)}"`;
    if (req.headers['if-none-match'] === etag) return void res.writeHead(304, { etag }).end();
    res.writeHead(200, { 'content-type': type, etag }).end(b);
  };
}

async function gateway(ipRanges: string[], ranges: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Promise<TestGateway> {
  const g = await startGateway({
    policy: { rules: [{ name: 'feed', ip_ranges: ipRanges, ports: [echo.port] }], allow_ranges: ['127.0.0.0/8'] },
    ranges: { ca, refresh: '200ms', timeout: '2s', ...ranges },
    ...extra,
  });
  gateways.push(g);
  return g;
}

async function status(g: TestGateway, ip: string): Promise<number> {
  const { client, status } = await connectVia(g.port, `${ip}:${echo.port}`);
  client.destroy();
  return status;
}

const ruleRanges = (g: TestGateway) => g.gw.config.policy.rules[0]!.ranges!;

describe.skipIf(!openssl)('url: ranges', () => {
  it('fetches at start, serves by it, and swaps in a changed list', async () => {
    let list = '# test list\n127.0.0.2/32\n';
    serveList(() => list);
    const events = feedEvents();
    const g = await gateway([`url:${base}/list.txt`]);
    expect(await status(g, '127.0.0.2')).toBe(200);
    expect(await status(g, '127.0.0.3')).toBe(403);
    list = '127.0.0.2/32\n127.0.0.3/32\n';
    await events.next((e) => e.result === 'updated' && e.ranges === 2);
    expect(await status(g, '127.0.0.3')).toBe(200);
  });

  it('sends conditional requests and keeps the list on 304', async () => {
    serveList(() => '127.0.0.2\n');
    const events = feedEvents();
    const g = await gateway([`url:${base}/list.txt`]);
    await events.next((e) => e.result === 'not_modified');
    expect(requests.at(-1)!.headers['if-none-match']).toMatch(/^".+"$/);
    expect(ruleRanges(g).has('127.0.0.2')).toBe(true);
  });

  it('sends If-Modified-Since when the server gives Last-Modified', async () => {
    const lastModified = new Date(Date.UTC(2026, 0, 1)).toUTCString();
    handler = (req, res) => {
      if (req.headers['if-modified-since'] === lastModified) return void res.writeHead(304).end();
      res.writeHead(200, { 'last-modified': lastModified }).end('127.0.0.2\n');
    };
    const events = feedEvents();
    await gateway([`url:${base}/list.txt`]);
    await events.next((e) => e.result === 'not_modified');
  });

  const failures: [string, Handler][] = [
    ['an error status', (_req, res) => void res.writeHead(500).end('oops')],
    ['an empty list', (_req, res) => void res.writeHead(200).end('# nothing here\n')],
    ['a list covering everything', (_req, res) => void res.writeHead(200).end('127.0.0.2\n0.0.0.0/0\n')],
    ['an unparsable list', (_req, res) => void res.writeHead(200).end('127.0.0.2\nnot-a-cidr\n')],
    ['a redirect', (_req, res) => void res.writeHead(302, { location: 'https://elsewhere.invalid/' }).end()],
    ['no answer in time', () => {}],
    [
      'a connection cut mid-list',
      (req, res) => {
        res.writeHead(200, { 'content-length': '100' });
        res.write('127.0.0.2\n127.0.');
        setImmediate(() => req.socket.destroy());
      },
    ],
  ];
  for (const [what, failing] of failures) {
    it(`keeps the last good list on ${what}`, async () => {
      let good = true;
      const ok: Handler = (_req, res) => void res.writeHead(200).end('127.0.0.2\n');
      handler = (req, res) => (good ? ok : failing)(req, res);
      const events = feedEvents();
      const g = await gateway([`url:${base}/list.txt`], { timeout: '1500ms' });
      expect(await status(g, '127.0.0.2')).toBe(200);
      good = false;
      const failed = await events.next((e) => e.result === 'failed');
      expect(failed).toMatchObject({ rule: 'feed', source: 'url', ranges: 1 });
      expect(await status(g, '127.0.0.2')).toBe(200);
      // And a good answer afterwards is taken again.
      handler = (_req, res) => void res.writeHead(200).end('127.0.0.3\n');
      await events.next((e) => e.result === 'updated');
      expect(await status(g, '127.0.0.3')).toBe(200);
      expect(await status(g, '127.0.0.2')).toBe(403);
    });
  }

  it('reads JSON through a selector, with a filter and a union', async () => {
    const doc = {
      prefixes: [
        { ip_prefix: '127.0.0.2/32', service: 'CDN' },
        { ip_prefix: '127.0.0.3/32', service: 'OTHER' },
      ],
      ipv6_prefixes: [{ ipv6_prefix: '2001:db8::/32', service: 'CDN' }],
    };
    serveList(() => JSON.stringify(doc), 'application/json');
    const g = await gateway([`url:${base}/ranges.json#$.prefixes[?service=CDN].ip_prefix|$.ipv6_prefixes[*].ipv6_prefix`]);
    expect(await status(g, '127.0.0.2')).toBe(200);
    expect(await status(g, '127.0.0.3')).toBe(403);
    expect(ruleRanges(g).has('2001:db8::1')).toBe(true);
  });

  it('takes a gzip-encoded answer', async () => {
    handler = (_req, res) => void res.writeHead(200, { 'content-encoding': 'gzip' }).end(gzipSync('127.0.0.2\n'));
    const g = await gateway([`url:${base}/list.txt`]);
    expect(await status(g, '127.0.0.2')).toBe(200);
  });

  it('reads a zip of text files', async () => {
    const zip = Buffer.from(zipSync({ 'ips.txt': strToU8('127.0.0.2/32\r\n') }));
    serveList(() => zip, 'application/zip');
    const g = await gateway([`url:${base}/ips.zip`]);
    expect(await status(g, '127.0.0.2')).toBe(200);
  });

  it('logs a large shrink and applies it', async () => {
    let list = Array.from({ length: 10 }, (_, i) => `127.0.1.${i}`).join('\n');
    serveList(() => list);
    const events = feedEvents();
    const g = await gateway([`url:${base}/list.txt`], { max_shrink: 0.5 });
    list = '127.0.0.2\n';
    const e = await events.next((x) => x.result === 'updated');
    expect(e).toMatchObject({ ranges: 1, shrunk: true });
    expect(await status(g, '127.0.0.2')).toBe(200);
    expect(await status(g, '127.0.1.1')).toBe(403);
  });

  it('starts from the cached copy when the server cannot be reached', async () => {
    const cacheDir = mkdtempSync(join(tmpdir(), 'wa-egress-cache-'));
    // A server of its own, so that it can be gone: connections to its port are refused.
    const own = https.createServer({ key: readFileSync(key), cert: readFileSync(ca) }, (_req, res) => void res.end('127.0.0.2\n'));
    await new Promise<void>((r) => own.listen(0, '127.0.0.1', () => r()));
    const url = `url:https://127.0.0.1:${(own.address() as AddressInfo).port}/list.txt`;
    const first = await gateway([url], { cache_dir: cacheDir });
    expect(await status(first, '127.0.0.2')).toBe(200);
    await first.close();
    own.closeAllConnections();
    await new Promise((r) => own.close(r));

    const events = feedEvents();
    const g = await gateway([url], { cache_dir: cacheDir });
    expect(await status(g, '127.0.0.2')).toBe(200);
    const failed = await events.next((e) => e.result === 'failed');
    expect(failed.ranges).toBe(1);
    expect(await status(g, '127.0.0.2')).toBe(200);
  });

  it('after a restart, asks with the cached validators', async () => {
    const cacheDir = mkdtempSync(join(tmpdir(), 'wa-egress-cache-'));
    serveList(() => '127.0.0.2\n');
    const first = await gateway([`url:${base}/list.txt`], { cache_dir: cacheDir, refresh: '1h' });
    await first.close();
    expect(requests).toHaveLength(1);
    const events = feedEvents();
    const g = await gateway([`url:${base}/list.txt`], { cache_dir: cacheDir, refresh: '1h' });
    await events.next((e) => e.result === 'not_modified');
    expect(requests).toHaveLength(2);
    expect(requests[1]!.headers['if-none-match']).toMatch(/^".+"$/);
    expect(await status(g, '127.0.0.2')).toBe(200);
  });

  it('starts with a fetch that fails and no cache: the rule has its fixed ranges only', async () => {
    const closed = await startClosedPort();
    onTestFinished(() => closed.close());
    const dead = `https://127.0.0.1:${closed.port}/list.txt`;
    const g = await gateway(['127.0.0.4/32', `url:${dead}`]);
    expect(await status(g, '127.0.0.4')).toBe(200);
    expect(await status(g, '127.0.0.2')).toBe(403);
  });

  it('refuses a certificate it does not trust', async () => {
    serveList(() => '127.0.0.2\n');
    const events = feedEvents();
    const g = await startGateway({
      policy: { rules: [{ name: 'feed', ip_ranges: [`url:${base}/list.txt`], ports: [echo.port] }] },
      ranges: { refresh: '1h' },
    });
    gateways.push(g);
    expect(events.seen.find((e) => e.result === 'failed')).toBeTruthy();
    expect(ruleRanges(g).has('127.0.0.2')).toBe(false);
  });
});

describe.skipIf(!openssl)('dns: ranges', () => {
  let dns: TestDns;
  afterEach(async () => dns?.close());

  it('follows a name’s addresses, refreshed by TTL', async () => {
    dns = await startDns({ 'feed.test': (n) => (n <= 1 ? { A: ['127.0.0.2'], ttl: 1 } : { A: ['127.0.0.3'], AAAA: ['2001:db8::3'], ttl: 1 }) });
    const events = feedEvents();
    const g = await gateway(['dns:feed.test'], {}, { dns: { servers: [dns.server] } });
    expect(await status(g, '127.0.0.2')).toBe(200);
    await events.next((e) => e.source === 'dns' && e.result === 'updated');
    expect(await status(g, '127.0.0.3')).toBe(200);
    expect(await status(g, '127.0.0.2')).toBe(403);
    expect(ruleRanges(g).has('2001:db8::3')).toBe(true);
  });

  it('keeps the last addresses when the name stops resolving', async () => {
    dns = await startDns({ 'feed.test': (n) => (n <= 1 ? { A: ['127.0.0.2'], ttl: 1 } : { A: [], ttl: 1 }) }, {});
    const events = feedEvents();
    const g = await gateway(['dns:feed.test'], { dns_refresh: '200ms' }, { dns: { servers: [dns.server] } });
    await events.next((e) => e.source === 'dns' && e.result === 'failed');
    expect(await status(g, '127.0.0.2')).toBe(200);
  });
});

describe.skipIf(!openssl)('config check', () => {
  const run = promisify(execFile);
  function write(config: object): string {
    const d = mkdtempSync(join(tmpdir(), 'wa-egress-feedcheck-'));
    const file = join(d, 'config.yaml');
    writeFileSync(file, stringify(config));
    return file;
  }

  it('checks url: and dns: entries without fetching, and fetches with --fetch', async () => {
    serveList(() => '127.0.0.2\n127.0.0.3\n');
    const file = write({
      listen: { proxy: '127.0.0.1:0' },
      policy: { rules: [{ name: 'feed', ip_ranges: [`url:${base}/list.txt`, 'dns:feed.test'], ports: [443] }] },
      dns: { hosts: { 'feed.test': '127.0.0.5' } },
      ranges: { ca },
    });
    const quiet = await run(process.execPath, [CLI, 'config', 'check', file]);
    expect(quiet.stdout).toContain('+ 2 url:/dns: sources');
    expect(requests).toHaveLength(0);
    const fetched = await run(process.execPath, [CLI, 'config', 'check', '--fetch', file]);
    expect(fetched.stdout).toContain(`feed: url:${base}/list.txt: 2 ranges`);
    expect(fetched.stdout).toContain('feed: dns:feed.test: 1 range');
    expect(requests).toHaveLength(1);
  });

  it('export includes the current list of url: and dns: entries, from the cache when there is one', async () => {
    serveList(() => '127.0.0.2\n127.0.0.3\n');
    const cacheDir = mkdtempSync(join(tmpdir(), 'wa-egress-cache-'));
    const file = write({
      listen: { proxy: '127.0.0.1:0' },
      policy: { rules: [{ name: 'feed', ip_ranges: ['192.0.2.0/24', `url:${base}/list.txt`, 'dns:feed.test'], ports: [443] }] },
      dns: { hosts: { 'feed.test': '198.51.100.1' } },
      ranges: { ca, cache_dir: cacheDir },
    });
    const fetched = await run(process.execPath, [CLI, 'export', '--format', 'cidr', '--config', file]);
    expect(fetched.stdout.split('\n').filter((l) => l && !l.startsWith('#'))).toEqual(['127.0.0.2/31', '192.0.2.0/24', '198.51.100.1/32']);
    expect(fetched.stdout).toMatch(new RegExp(`# source: rule feed: url:${base}/list.txt: 2 ranges as of `));
    expect(requests).toHaveLength(1);
    const cached = await run(process.execPath, [CLI, 'export', '--format', 'cidr', '--config', file]);
    expect(cached.stdout).toContain('127.0.0.2/31');
    expect(requests).toHaveLength(1);
  });

  it('--fetch fails on a list that does not validate', async () => {
    handler = (_req, res) => void res.writeHead(200).end('');
    const file = write({
      listen: { proxy: '127.0.0.1:0' },
      policy: { rules: [{ name: 'feed', ip_ranges: [`url:${base}/list.txt`], ports: [443] }] },
    });
    // Trusted through the environment this time.
    const err = await run(process.execPath, [CLI, 'config', 'check', '--fetch', file], { env: { ...process.env, NODE_EXTRA_CA_CERTS: ca } }).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stdout).toContain('FAILED: url:');
    expect(err.stdout).toContain('the list is empty');
  });

  it('names the key of a bad entry', async () => {
    const file = write({
      listen: { proxy: '127.0.0.1:0' },
      policy: { rules: [{ name: 'feed', ip_ranges: ['url:http://plain.example/x', 'url:https://a.example/x#prefixes', 'dns:1.2.3.4'], ports: [443] }] },
      ranges: { ca: join(dir, 'missing.pem'), max_shrink: 2 },
    });
    const err = await run(process.execPath, [CLI, 'config', 'check', file]).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stderr).toContain('policy.rules[0].ip_ranges[0]');
    expect(err.stderr).toContain('https:// only');
    expect(err.stderr).toContain('must start with "$"');
    expect(err.stderr).toContain('no dns: prefix');
    expect(err.stderr).toContain('ranges.ca');
    expect(err.stderr).toContain('ranges.max_shrink');
  });
});
