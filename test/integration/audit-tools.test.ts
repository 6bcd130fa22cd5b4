import { execFile, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { inflateSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectVia, startGateway, startTcpServer, eventually } from '../helpers.js';

/**
 * `audit summary` and `audit report` through the built CLI, on generated logs
 * (rotated, gzipped, with malformed lines) and on a log the real writer wrote;
 * the report is opened in a real headless browser (Debian's chromium).
 */

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');

function cli(args: string[], input?: Buffer): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((r) => {
    const child = execFile(process.execPath, [CLI, ...args], { maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      r({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    if (input) child.stdin!.end(input);
    else child.stdin!.end();
  });
}

const T0 = Date.parse('2026-11-25T10:00:00Z');
const iso = (minutes: number) => new Date(T0 + minutes * 60_000).toISOString();
const base = (n: number, minutes: number, client = '10.0.0.1') => ({
  level: 'info',
  time: iso(minutes),
  id: `t-${n}`,
  client: `${client}:4${String(n).padStart(4, '0')}`,
  listener: 'proxy',
  proto: 'connect',
});
const line = (o: object) => `${JSON.stringify(o)}\n`;

/** Three "rotated" files: hour 0 (gzip, .2), hour 1 (.1), hour 2 (current). */
function rotated(dir: string): { files: string[] } {
  const hours: string[] = ['', '', ''];
  let n = 0;
  for (let h = 0; h < 3; h++) {
    for (let m = 0; m < 60; m += 2) {
      const minute = h * 60 + m;
      // Per 2 minutes: 3 allowed (+closed), 1 denied; every 10 minutes a failure.
      for (let k = 0; k < 3; k++) {
        hours[h] += line({ ...base(n, minute, `10.0.0.${1 + (k % 2)}`), event: 'egress.allowed', dest_host: 'g.whatsapp.net', dest_port: 443, rule: 'whatsapp', dest_ip: '31.13.65.49' });
        hours[h] += line({ ...base(n++, minute), event: 'egress.closed', dest_host: 'g.whatsapp.net', dest_port: 443, dest_ip: '31.13.65.49', bytes_up: 100, bytes_down: 1000, duration_ms: 5, close_reason: 'client_closed' });
      }
      const reason = m % 4 === 0 ? 'host_not_allowed' : 'port_not_allowed';
      const dest_host = m % 4 === 0 ? 'evil.example' : 'g.whatsapp.net';
      hours[h] += line({ ...base(n++, minute, '10.0.0.9'), event: 'egress.denied', dest_host, dest_port: m % 4 === 0 ? 443 : 80, reason, enforced: true });
      if (m % 10 === 0) hours[h] += line({ ...base(n++, minute), event: 'egress.failed', dest_host: 'v.whatsapp.net', dest_port: 443, rule: 'whatsapp', reason: 'connect_timeout' });
    }
  }
  // Malformed lines (one of them CRLF-terminated), an operational log line, a report-mode denial.
  hours[1] += 'not json at all\r\n{"event":"egress.denied","time":\n[1,2,3]\n{"level":30,"msg":"listening"}\n';
  hours[1] += line({ ...base(n++, 119), event: 'egress.denied', dest_host: 'report.example', dest_port: 443, reason: 'host_not_allowed', enforced: false });
  const files = [join(dir, 'audit.log'), join(dir, 'audit.log.1'), join(dir, 'audit.log.2.gz')];
  writeFileSync(files[0]!, hours[2]!);
  writeFileSync(files[1]!, hours[1]!);
  writeFileSync(files[2]!, gzipSync(hours[0]!));
  return { files };
}

let dir: string;
let files: string[];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-audit-tools-'));
  ({ files } = rotated(dir));
});

describe('audit summary', () => {
  it('reads rotated, gzipped files in time order; counts malformed lines without failing', async () => {
    const r = await cli(['audit', 'summary', '--json', ...files]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    // Read oldest first, whatever the order on the command line.
    expect(s.input.sources.map((x: { name: string }) => x.name)).toEqual([files[2], files[1], files[0]]);
    expect(s.input.sources[0].gzip).toBe(true);
    expect(s.input.malformed).toBe(3);
    expect(s.input.ignored).toBe(1);
    expect(s.first).toBe(iso(0));
    expect(s.last).toBe(iso(178));
    expect(s.events).toEqual({ allowed: 270, denied: 91, failed: 18, closed: 270 });
    expect(s).toMatchObject({ attempts: 378, denied: 90, would_deny: 1, bytes: { up: 27_000, down: 270_000 } });
    expect(s.denials_by_reason.rows).toEqual([
      { key: 'host_not_allowed', count: 45 },
      { key: 'port_not_allowed', count: 45 },
    ]);
    expect(s.would_deny_by_reason.rows).toEqual([{ key: 'host_not_allowed', count: 1 }]);
    expect(s.failures_by_reason.rows).toEqual([{ key: 'connect_timeout', count: 18 }]);
    expect(s.top_denied_destinations.rows).toEqual([
      { key: 'evil.example:443', count: 45 },
      { key: 'g.whatsapp.net:80', count: 45 },
      { key: 'report.example:443', count: 1 },
    ]);
    expect(s.top_clients.rows[0]).toEqual({ key: '10.0.0.1', count: 198 });
    expect(s.top_denied_clients.rows).toEqual([{ key: '10.0.0.9', count: 90 }]);
    expect(s.top_destinations_by_bytes.rows).toEqual([{ key: 'g.whatsapp.net:443', count: 297_000 }]);
    const buckets = s.timeline.buckets as { allowed: number; denied: number; failed: number }[];
    expect(buckets.reduce((n, b) => n + b.allowed, 0)).toBe(270);
    expect(buckets.reduce((n, b) => n + b.denied, 0)).toBe(90);
  });

  it('text output names the malformed lines', async () => {
    const r = await cli(['audit', 'summary', ...files]);
    expect(r.stdout).toContain('3 malformed lines, 1 other JSON line skipped');
    expect(r.stdout).toContain(`malformed: ${files[1]}:`);
    expect(r.stdout).toContain('Connections: 378 attempts: 270 allowed, 90 denied, 18 failed; report mode would have denied 1');
    expect(r.stdout).toMatch(/Denials by reason\n {2}host_not_allowed {2}45\n {2}port_not_allowed {2}45/);
  });

  it('--since/--until select a window; stdin (gzip) works', async () => {
    const r = await cli(['audit', 'summary', '--json', '--since', iso(60), '--until', iso(120), ...files]);
    const s = JSON.parse(r.stdout);
    expect(s.events.allowed).toBe(90);
    expect(s.denied).toBe(30);
    expect(s.first).toBe(iso(60));
    const piped = await cli(['audit', 'summary', '--json'], readFileSync(files[2]!));
    const p = JSON.parse(piped.stdout);
    expect(p.input.sources).toMatchObject([{ name: 'stdin', gzip: true }]);
    expect(p.events.allowed).toBe(90);
  });

  it('bad usage: a missing file and a bad time are clear errors', async () => {
    const missing = await cli(['audit', 'summary', join(dir, 'nope.log')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('nope.log: cannot read: ENOENT');
    const bad = await cli(['audit', 'summary', '--since', 'yesterday', files[0]!]);
    expect(bad.stderr).toContain('--since: expected an ISO 8601 date or time');
  });

  it('a truncated gzip counts what it held and says it broke off', async () => {
    const gz = readFileSync(files[2]!);
    const cut = join(dir, 'cut.gz');
    writeFileSync(cut, gz.subarray(0, Math.floor(gz.length / 2)));
    const r = await cli(['audit', 'summary', '--json', cut]);
    const s = JSON.parse(r.stdout);
    expect(r.code).toBe(0);
    expect(s.input.sources[0].error).toBeTruthy();
    expect(s.records).toBeGreaterThan(0);
  });

  it("reads what the gateway's own writer wrote", async () => {
    const echo = await startTcpServer();
    const gw = await startGateway({
      policy: { rules: [{ name: 'local', hosts: ['echo.test'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'echo.test': '127.0.0.1' } },
    });
    try {
      const ok = await connectVia(gw.port, `echo.test:${echo.port}`);
      expect(ok.status).toBe(200);
      ok.client.write('ping');
      await ok.client.bytes(4);
      ok.client.destroy();
      const no = await connectVia(gw.port, 'denied.test:443');
      expect(no.status).toBe(403);
      no.client.destroy();
      await eventually(() => gw.audit().some((r) => r.event === 'egress.closed'));
      const r = await cli(['audit', 'summary', '--json', join(gw.dir, 'audit.log')]);
      const s = JSON.parse(r.stdout);
      expect(s.input.malformed).toBe(0);
      expect(s).toMatchObject({ attempts: 2, denied: 1, events: { allowed: 1, closed: 1 }, bytes: { up: 4, down: 4 } });
      expect(s.top_denied_destinations.rows).toEqual([{ key: 'denied.test:443', count: 1 }]);
    } finally {
      await gw.close();
      await echo.close();
    }
  });
});

const chromium = ['chromium', 'chromium-browser'].find((c) => spawnSync(c, ['--version']).status === 0);
if (!chromium) console.warn('audit report browser test skipped: no chromium on PATH (.ci/run installs it)');

/** Headless chromium: a screenshot and the DOM, as rendered. */
function browse(file: string, out: string, size: string): Promise<string> {
  const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', `--window-size=${size}`];
  const url = `file://${file}`;
  return new Promise((resolveDom, reject) => {
    const shot = spawn(chromium!, [...flags, `--screenshot=${out}`, url], { stdio: 'ignore' });
    shot.on('error', reject);
    shot.on('exit', () => {
      let dom = '';
      const dump = spawn(chromium!, [...flags, '--dump-dom', url], { stdio: ['ignore', 'pipe', 'ignore'] });
      dump.stdout.on('data', (d) => (dom += d));
      dump.on('error', reject);
      dump.on('exit', () => resolveDom(dom));
    });
  });
}

/** RGBA pixels of an 8-bit RGB/RGBA PNG (what chromium writes). */
function pngPixels(png: Buffer): { width: number; height: number; px: (x: number, y: number) => [number, number, number] } {
  let pos = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  while (pos < png.length) {
    const len = png.readUInt32BE(pos);
    const type = png.toString('latin1', pos + 4, pos + 8);
    const data = png.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      channels = data[9] === 6 ? 4 : 3;
      expect(data[8]).toBe(8);
    } else if (type === 'IDAT') idat.push(data);
    pos += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    for (let x = 0; x < stride; x++) {
      const v = raw[y * (stride + 1) + 1 + x]!;
      const a = x >= channels ? out[y * stride + x - channels]! : 0;
      const b = y > 0 ? out[(y - 1) * stride + x]! : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels]! : 0;
      const p = a + b - c;
      const pa = Math.abs(p - a);
      const pb = Math.abs(p - b);
      const pc = Math.abs(p - c);
      const paeth = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      const pred = [0, a, b, (a + b) >> 1, paeth][filter]!;
      out[y * stride + x] = (v + pred) & 255;
    }
  }
  return { width, height, px: (x, y) => [out[y * stride + x * channels]!, out[y * stride + x * channels + 1]!, out[y * stride + x * channels + 2]!] };
}

describe('audit report', () => {
  let html: string;
  afterAll(() => {});

  it('writes one self-contained HTML file', async () => {
    const out = join(dir, 'report.html');
    const r = await cli(['audit', 'report', '--out', out, ...files]);
    expect(r.code).toBe(0);
    html = readFileSync(out, 'utf8');
    // Nothing fetched from anywhere: no script, no external style, font or image.
    expect(html).not.toMatch(/<script|<link|@import|url\(|src=/i);
    expect(html).toContain('<meta name="viewport"');
    // One bar a minute with records in it: every 2 minutes for 3 hours.
    expect(html.match(/<rect class="allowed"/g)?.length).toBe(2 * 90);
  });

  it.skipIf(!chromium).each([
    ['desktop', '1280,1400'],
    ['phone', '390,1600'],
  ])('renders in headless chromium (%s): chart marks drawn, tables hold the counts', async (name, size) => {
    // Its own report, so the test passes alone and in any order.
    const file = join(dir, `report-${name}.html`);
    expect((await cli(['audit', 'report', '--out', file, ...files])).code).toBe(0);
    const png = join(dir, `report-${name}.png`);
    const dom = await browse(file, png, size);
    // The DOM as chromium built it: bars with their counts, tables with theirs.
    // Both layouts carry the bars (one is hidden by the viewport's width); count the desktop one.
    const wide = /<svg id="timeline".*?<\/svg>/s.exec(dom)![0];
    const bars = [...wide.matchAll(/<rect class="(allowed|denied|failed)"[^>]*data-count="(\d+)"/g)];
    const sum = (series: string) => bars.filter((m) => m[1] === series).reduce((n, m) => n + Number(m[2]), 0);
    expect(sum('allowed')).toBe(270);
    expect(sum('denied')).toBe(90);
    expect(sum('failed')).toBe(18);
    const table = (id: string) => {
      const body = new RegExp(`<table id="${id}">(.*?)</table>`, 's').exec(dom)![1]!;
      return [...body.matchAll(/<td class="key">([^<]*)<\/td><td class="num" data-count="(\d+)"/g)].map((m) => [m[1], Number(m[2])]);
    };
    expect(table('denials-by-reason')).toEqual([
      ['host_not_allowed', 45],
      ['port_not_allowed', 45],
    ]);
    expect(table('top-denied-destinations')[0]).toEqual(['evil.example:443', 45]);
    expect(dom).toMatch(/id="card-denied"><div class="v">90</);
    // The screenshot: the chart's colours are on screen (green allowed, red denied bars).
    const img = pngPixels(readFileSync(png));
    let green = 0;
    let red = 0;
    for (let y = 0; y < img.height; y += 2) {
      for (let x = 0; x < img.width; x += 2) {
        const [r, g, b] = img.px(x, y);
        if (g > 100 && g > r + 40 && g > b + 40) green++;
        if (r > 150 && r > g + 80 && r > b + 80) red++;
      }
    }
    expect(green).toBeGreaterThan(200);
    expect(red).toBeGreaterThan(50);
  });
});
