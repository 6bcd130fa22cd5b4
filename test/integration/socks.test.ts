import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { curl, eventually, RawClient, startBlackhole, startClosedPort, startGateway, startGatewayOnPorts, startTcpServer, type AuditRecord, type TestGateway, type TestServer } from '../helpers.js';

/**
 * The SOCKS5 listener (RFC 1928, CONNECT only) on real loopback sockets: the
 * `socks` package and curl as clients, raw bytes for every reply code and for
 * malformed or truncated input, tunnel behaviour, and the audit records.
 */


let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

interface SocksGateway {
  gw: TestGateway['gw'];
  /** The SOCKS listener's port. */
  port: number;
  audit(): AuditRecord[];
}

/** A gateway with only the SOCKS listener (unless `config.listen` says otherwise). */
async function startSocksGateway(config: Record<string, unknown>): Promise<SocksGateway> {
  const t = await startGateway({ listen: { socks: '127.0.0.1:0' }, ...config });
  cleanup.push(() => t.close());
  return { gw: t.gw, port: t.gw.address('socks').port, audit: () => t.audit() };
}

/** One refusing port for the whole file, held (not found free and let go). */
let closed: ReturnType<typeof startClosedPort> | undefined;
const heldClosedPort = () => (closed ??= startClosedPort());
afterAll(async () => (await closed)?.close());

interface Env {
  gw: SocksGateway;
  echo: TestServer;
  /** A loopback port with nothing listening (allowed by the rules). */
  closedPort: number;
}

/**
 * An echo on 127.0.0.1 and a gateway whose rules allow it by name
 * (g.whatsapp.net, *.cdn.whatsapp.net, ten.example → 127.0.0.2) and by
 * address (127.0.0.1/32 only), plus a closed port for refusals.
 */
async function setup(extra: { timeouts?: Record<string, unknown>; ports?: number[] } = {}): Promise<Env> {
  const echo = await startTcpServer('127.0.0.1');
  cleanup.push(() => echo.close());
  const closedPort = (await heldClosedPort()).port;
  const ports = [echo.port, closedPort, ...(extra.ports ?? [])];
  const gw = await startSocksGateway({
    policy: {
      rules: [
        { name: 'chat', hosts: ['g.whatsapp.net', '.*.cdn.whatsapp.net', 'ten.example'], ports },
        { name: 'lo', ip_ranges: ['127.0.0.1/32'], ports },
      ],
      allow_ranges: ['127.0.0.1/32', '::1/128'],
    },
    dns: {
      hosts: { 'g.whatsapp.net': '127.0.0.1', 'media.cdn.whatsapp.net': '127.0.0.1', 'ten.example': '127.0.0.2' },
    },
    timeouts: { dns: '300ms', connect: '2s', ...extra.timeouts },
  });
  return { gw, echo, closedPort };
}

// ---------------------------------------------------------------- raw bytes

const GREETING = Buffer.from([5, 1, 0]);

function portBytes(port: number): number[] {
  return [port >> 8, port & 255];
}

function reqDomain(host: string, port: number, cmd = 1): Buffer {
  const name = Buffer.from(host, 'latin1');
  return Buffer.from([5, cmd, 0, 3, name.length, ...name, ...portBytes(port)]);
}

function reqV4(ip: string, port: number, cmd = 1): Buffer {
  return Buffer.from([5, cmd, 0, 1, ...ip.split('.').map(Number), ...portBytes(port)]);
}

function reqV6(ip: string, port: number, cmd = 1): Buffer {
  const out = Buffer.alloc(22);
  out.set([5, cmd, 0, 4]);
  // Expand `::` and a trailing dotted quad into eight groups.
  let text = ip;
  const dot = text.lastIndexOf(':');
  if (text.includes('.')) {
    const [a, b, c, d] = text.slice(dot + 1).split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, dot + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), 4 + 2 * i));
  out.writeUInt16BE(port, 20);
  return out;
}

interface Reply {
  ver: number;
  rep: number;
  atyp: number;
  host: string;
  port: number;
}

/** Read one SOCKS5 reply from the front of `client.data` (and drop it). */
async function readReply(client: RawClient, ms = 5000): Promise<Reply> {
  await eventually(() => client.data.length >= 5 || client.closed || client.ended, ms);
  const d = client.data;
  if (d.length < 5) throw new Error(`no SOCKS reply; got ${JSON.stringify([...d])}`);
  const atyp = d[3]!;
  const len = atyp === 1 ? 10 : atyp === 4 ? 22 : atyp === 3 ? 7 + d[4]! : -1;
  if (len < 0) throw new Error(`bad reply address type ${atyp}`);
  await eventually(() => client.data.length >= len || client.closed || client.ended, ms);
  const b = client.data;
  if (b.length < len) throw new Error(`truncated SOCKS reply ${JSON.stringify([...b])}`);
  let host: string;
  if (atyp === 1) host = [...b.subarray(4, 8)].join('.');
  else if (atyp === 4) host = toV6(b.subarray(4, 20));
  else host = b.subarray(5, 5 + b[4]!).toString('latin1');
  const reply = { ver: b[0]!, rep: b[1]!, atyp, host, port: b.readUInt16BE(len - 2) };
  client.data = b.subarray(len);
  return reply;
}

function toV6(b: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}

/** Greet (no authentication), check the method choice, send `request`, read the reply. */
async function socks(port: number, request: Buffer, extra?: Buffer): Promise<{ client: RawClient; reply: Reply }> {
  const client = await RawClient.connect(port);
  cleanup.push(() => client.destroy());
  client.write(GREETING);
  await client.bytes(2);
  expect([...client.data.subarray(0, 2)]).toEqual([5, 0]);
  client.data = client.data.subarray(2);
  client.write(extra ? Buffer.concat([request, extra]) : request);
  return { client, reply: await readReply(client) };
}

/** A raw client whose bytes are written as given; returns it after the proxy has closed. */
async function rawExchange(port: number, chunks: Buffer[], endAfter = false): Promise<RawClient> {
  const client = await RawClient.connect(port);
  cleanup.push(() => client.destroy());
  for (const c of chunks) {
    client.write(c);
    await new Promise((r) => setTimeout(r, 20));
  }
  if (endAfter) client.socket.end();
  await client.waitClosed();
  return client;
}

/** A well-formed CONNECT still works (nothing crashed, the listener still answers). */
async function expectWorking(env: Env): Promise<void> {
  const { client, reply } = await socks(env.gw.port, reqDomain('g.whatsapp.net', env.echo.port), Buffer.from('still-ok'));
  expect(reply.rep).toBe(0);
  expect((await client.bytes(8)).toString()).toBe('still-ok');
  client.destroy();
}

// ---------------------------------------------------------------- the socks package

describe('SOCKS5 with the socks package as client', () => {
  async function viaSocksClient(port: number, host: string, destPort: number) {
    const { socket, remoteHost } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port, type: 5 },
      command: 'connect',
      destination: { host, port: destPort },
      timeout: 5000,
    });
    cleanup.push(() => void socket.destroy());
    return { socket, remoteHost };
  }

  async function echoRoundTrip(socket: net.Socket, text: string): Promise<void> {
    const got: Buffer[] = [];
    socket.on('data', (d: Buffer) => got.push(d));
    socket.write(text);
    await eventually(() => Buffer.concat(got).length >= text.length);
    expect(Buffer.concat(got).toString()).toBe(text);
    socket.end();
    await new Promise<void>((r) => (socket.closed ? r() : socket.once('close', () => r())));
  }

  it('connects by name (resolved by the proxy, socks5h) and audits allowed and closed', async () => {
    const { gw, echo } = await setup();
    const { socket, remoteHost } = await viaSocksClient(gw.port, 'g.whatsapp.net', echo.port);
    expect(remoteHost).toMatchObject({ host: '127.0.0.1' });
    expect(remoteHost!.port).toBeGreaterThan(0);
    await echoRoundTrip(socket, 'hello chatd');
    const records = await eventually(() => {
      const r = gw.audit();
      return r.some((x) => x.event === 'egress.closed') && r;
    });
    expect(records.map((r) => r.event)).toEqual(['egress.allowed', 'egress.closed']);
    const [allowed, closed] = records as [AuditRecord, AuditRecord];
    expect(allowed).toMatchObject({
      listener: 'socks',
      proto: 'socks',
      dest_host: 'g.whatsapp.net',
      dest_port: echo.port,
      dest_ip: '127.0.0.1',
      rule: 'chat',
    });
    expect(allowed.client).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(typeof allowed.id).toBe('string');
    expect(closed).toMatchObject({
      id: allowed.id,
      listener: 'socks',
      proto: 'socks',
      dest_host: 'g.whatsapp.net',
      dest_port: echo.port,
      dest_ip: '127.0.0.1',
      bytes_up: 11,
      bytes_down: 11,
      close_reason: 'client_closed',
    });
    expect(typeof closed.duration_ms).toBe('number');
    expect(echo.connections).toBe(1);
  });

  it('connects by IPv4 address', async () => {
    const { gw, echo } = await setup();
    const { socket } = await viaSocksClient(gw.port, '127.0.0.1', echo.port);
    await echoRoundTrip(socket, 'v4 data');
    const closed = await eventually(() => gw.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ listener: 'socks', proto: 'socks', dest_host: '127.0.0.1', dest_port: echo.port, dest_ip: '127.0.0.1', bytes_up: 7, bytes_down: 7 });
    expect(gw.audit().find((r) => r.event === 'egress.allowed')).toMatchObject({ rule: 'lo', dest_ip: '127.0.0.1' });
  });

  it('connects by IPv6 address, with an IPv6 bound address in the reply', async () => {
    const echo6 = await startTcpServer('::1');
    cleanup.push(() => echo6.close());
    const gw = await startSocksGateway({
      policy: { rules: [{ name: 'v6', ip_ranges: ['::1/128'], ports: [echo6.port] }], allow_ranges: ['127.0.0.1/32', '::1/128'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
      timeouts: { dns: '300ms' },
    });
    const { socket, remoteHost } = await viaSocksClient(gw.port, '::1', echo6.port);
    // The socks package writes the bound IPv6 address out in full.
    expect(new URL(`http://[${remoteHost!.host}]/`).hostname).toBe('[::1]');
    await echoRoundTrip(socket, 'v6 data!');
    const records = await eventually(() => {
      const r = gw.audit();
      return r.some((x) => x.event === 'egress.closed') && r;
    });
    expect(records.find((r) => r.event === 'egress.allowed')).toMatchObject({
      listener: 'socks',
      proto: 'socks',
      dest_host: '::1',
      dest_port: echo6.port,
      dest_ip: '::1',
      rule: 'v6',
    });
    expect(records.find((r) => r.event === 'egress.closed')).toMatchObject({ dest_ip: '::1', bytes_up: 8, bytes_down: 8 });
  });

  it('rejects a denied destination with "not allowed by ruleset"', async () => {
    const { gw, echo } = await setup();
    await expect(viaSocksClient(gw.port, 'evil.example', echo.port)).rejects.toThrow(/rejected connection - NotAllowed/);
    expect(gw.audit()).toHaveLength(1);
    expect(gw.audit()[0]).toMatchObject({ event: 'egress.denied', reason: 'host_not_allowed', listener: 'socks', proto: 'socks', enforced: true });
    expect(echo.connections).toBe(0);
  });
});

// ---------------------------------------------------------------- curl

describe('SOCKS5 with curl', () => {
  async function origin(): Promise<{ port: number; requests: number }> {
    const state = { port: 0, requests: 0 };
    const server = http.createServer((_req, res) => {
      state.requests++;
      res.end('hello through socks');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    state.port = (server.address() as net.AddressInfo).port;
    cleanup.push(
      () =>
        new Promise<void>((r) => {
          server.closeAllConnections();
          server.close(() => r());
        }),
    );
    return state;
  }

  // curl from the helpers: `-q` and no proxy variables, so it talks to our listener only.

  it('--socks5-hostname (the proxy resolves) and --socks5 (curl resolves, IP literal) reach the origin', async () => {
    const o = await origin();
    const { gw } = await setup({ ports: [o.port] });
    const proxy = `127.0.0.1:${gw.port}`;
    const byName = await curl(['-s', '--max-time', '20', '--socks5-hostname', proxy, `http://g.whatsapp.net:${o.port}/`]);
    expect(byName.stdout).toBe('hello through socks');
    const byIp = await curl(['-s', '--max-time', '20', '--socks5', proxy, `http://127.0.0.1:${o.port}/`]);
    expect(byIp.stdout).toBe('hello through socks');
    expect(o.requests).toBe(2);
    const records = await eventually(() => {
      const r = gw.audit();
      return r.filter((x) => x.event === 'egress.closed').length === 2 && r;
    });
    const allowed = records.filter((r) => r.event === 'egress.allowed');
    expect(allowed).toHaveLength(2);
    expect(allowed[0]).toMatchObject({ listener: 'socks', proto: 'socks', dest_host: 'g.whatsapp.net', dest_port: o.port, dest_ip: '127.0.0.1', rule: 'chat' });
    expect(allowed[1]).toMatchObject({ listener: 'socks', proto: 'socks', dest_host: '127.0.0.1', dest_port: o.port, dest_ip: '127.0.0.1', rule: 'lo' });
    for (const c of records.filter((r) => r.event === 'egress.closed')) {
      expect(c.bytes_up as number).toBeGreaterThan(0);
      expect(c.bytes_down as number).toBeGreaterThan(19);
    }
  });

  it('fails a denied destination (curl exit 97) and audits it', async () => {
    const o = await origin();
    const { gw } = await setup({ ports: [o.port] });
    const proxy = `127.0.0.1:${gw.port}`;
    const byName = await curl(['-s', '--max-time', '20', '--socks5-hostname', proxy, `http://evil.example:${o.port}/`]);
    expect(byName.code).toBe(97);
    const byIp = await curl(['-s', '--max-time', '20', '--socks5', proxy, `http://127.0.0.3:${o.port}/`]);
    expect(byIp.code).toBe(97);
    expect(o.requests).toBe(0);
    const records = gw.audit();
    expect(records).toHaveLength(2);
    expect(records[0]).toMatchObject({ event: 'egress.denied', listener: 'socks', proto: 'socks', dest_host: 'evil.example', reason: 'host_not_allowed', enforced: true });
    expect(records[1]).toMatchObject({ event: 'egress.denied', listener: 'socks', proto: 'socks', dest_host: '127.0.0.3', reason: 'ip_not_allowed', enforced: true });
  });
});

// ---------------------------------------------------------------- reply codes

describe('SOCKS5 reply codes (raw bytes)', () => {
  it('0x00 with the bound address (ATYP 1, 127.0.0.1, the upstream socket\'s port)', async () => {
    let upstreamPort = 0;
    const echo = await startTcpServer('127.0.0.1', (s) => {
      upstreamPort = s.remotePort!;
      s.pipe(s);
    });
    cleanup.push(() => echo.close());
    const gw = await startSocksGateway({
      policy: { rules: [{ name: 'chat', hosts: ['g.whatsapp.net'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
      timeouts: { dns: '300ms' },
    });
    const { client, reply } = await socks(gw.port, reqDomain('g.whatsapp.net', echo.port));
    expect(reply).toEqual({ ver: 5, rep: 0, atyp: 1, host: '127.0.0.1', port: upstreamPort });
    expect(reply.port).toBeGreaterThan(0);
    client.write('ping');
    expect((await client.bytes(4)).toString()).toBe('ping');
    client.destroy();
  });

  it.each<[string, number, (e: Env) => Buffer, string, string, Record<string, unknown>]>([
    ['host_not_allowed', 2, (e) => reqDomain('evil.example', e.echo.port), 'egress.denied', 'host_not_allowed', { dest_host: 'evil.example' }],
    ['host_not_allowed (look-alike)', 2, (e) => reqDomain('evilg.whatsapp.net', e.echo.port), 'egress.denied', 'host_not_allowed', {}],
    ['port_not_allowed', 2, () => reqDomain('g.whatsapp.net', 1), 'egress.denied', 'port_not_allowed', { dest_host: 'g.whatsapp.net', dest_port: 1 }],
    ['ip_not_allowed (IPv4)', 2, (e) => reqV4('127.0.0.3', e.echo.port), 'egress.denied', 'ip_not_allowed', { dest_host: '127.0.0.3' }],
    ['ip_not_allowed (IPv6)', 2, (e) => reqV6('::1', e.echo.port), 'egress.denied', 'ip_not_allowed', { dest_host: '::1' }],
    ['ip_not_allowed (IP literal as a name)', 2, (e) => reqDomain('127.0.0.3', e.echo.port), 'egress.denied', 'ip_not_allowed', { dest_host: '127.0.0.3' }],
    ['special_range', 2, (e) => reqDomain('ten.example', e.echo.port), 'egress.denied', 'special_range', { dest_host: 'ten.example', dest_ip: '127.0.0.2', rule: 'chat', range: 'loopback' }],
    ['ip_not_allowed (IPv4-mapped IPv6)', 2, (e) => reqV6('::ffff:127.0.0.2', e.echo.port), 'egress.denied', 'ip_not_allowed', {}],
    ['dns_failed', 4, (e) => reqDomain('unmapped.cdn.whatsapp.net', e.echo.port), 'egress.failed', 'dns_failed', { dest_host: 'unmapped.cdn.whatsapp.net', rule: 'chat' }],
    ['connect_failed', 5, (e) => reqDomain('g.whatsapp.net', e.closedPort), 'egress.failed', 'connect_failed', { dest_ip: '127.0.0.1', rule: 'chat' }],
    ['BIND', 7, (e) => reqDomain('g.whatsapp.net', e.echo.port, 2), 'egress.denied', 'bad_request', {}],
    ['UDP ASSOCIATE', 7, (e) => reqV4('127.0.0.1', e.echo.port, 3), 'egress.denied', 'bad_request', {}],
    ['UDP ASSOCIATE with the all-zero address (RFC 1928 section 7)', 7, () => reqV4('0.0.0.0', 0, 3), 'egress.denied', 'bad_request', {}],
    ['BIND with port 0', 7, () => reqV4('127.0.0.1', 0, 2), 'egress.denied', 'bad_request', { dest_host: '127.0.0.1', dest_port: 0 }],
    ['unknown command 9', 7, (e) => reqV4('127.0.0.1', e.echo.port, 9), 'egress.denied', 'bad_request', {}],
    ['address type 5', 8, () => Buffer.from([5, 1, 0, 5, 127, 0, 0, 1, 0, 80]), 'egress.denied', 'bad_request', {}],
  ])('%s → reply 0x0%i', async (_name, code, request, event, reason, fields) => {
    const env = await setup();
    const { client, reply } = await socks(env.gw.port, request(env));
    expect(reply.ver).toBe(5);
    expect(reply.rep).toBe(code);
    await client.waitClosed();
    expect(client.data.length).toBe(0);
    const records = env.gw.audit();
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ event, reason, listener: 'socks', proto: 'socks', ...fields });
    expect(records[0]!.client).toMatch(/^127\.0\.0\.1:\d+$/);
    if (event === 'egress.denied') expect(records[0]!.enforced).toBe(true);
    expect(env.echo.connections).toBe(0);
  });

  it('judges IPv4 literal forms in any address field as the address they name', async () => {
    const env = await setup();
    for (const req of [reqDomain('2130706433', env.echo.port), reqDomain('0x7f000001.', env.echo.port), reqV6('::ffff:127.0.0.1', env.echo.port)]) {
      const { client, reply } = await socks(env.gw.port, req, Buffer.from('x'));
      expect(reply.rep).toBe(0);
      expect((await client.bytes(1)).toString()).toBe('x');
      client.destroy();
    }
    const allowed = env.gw.audit().filter((r) => r.event === 'egress.allowed');
    expect(allowed.map((r) => [r.dest_host, r.dest_ip, r.rule])).toEqual([
      ['127.0.0.1', '127.0.0.1', 'lo'],
      ['127.0.0.1', '127.0.0.1', 'lo'],
      ['::ffff:7f00:1', '127.0.0.1', 'lo'],
    ]);
  });

  it('judges an internationalised name in its punycode form, sent as UTF-8 or as ASCII', async () => {
    const echo = await startTcpServer('127.0.0.1');
    cleanup.push(() => echo.close());
    const gw = await startSocksGateway({
      policy: { rules: [{ name: 'idn', hosts: ['bücher.example'], ports: [echo.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'bücher.example': '127.0.0.1' } },
      timeouts: { dns: '300ms' },
    });
    const utf8 = Buffer.from('bücher.example', 'utf8');
    const requests = [
      Buffer.from([5, 1, 0, 3, utf8.length, ...utf8, ...portBytes(echo.port)]),
      reqDomain('xn--bcher-kva.example', echo.port),
      reqDomain('XN--BCHER-KVA.EXAMPLE.', echo.port),
    ];
    for (const req of requests) {
      const { client, reply } = await socks(gw.port, req, Buffer.from('i'));
      expect(reply.rep).toBe(0);
      expect((await client.bytes(1)).toString()).toBe('i');
      client.destroy();
    }
    expect(gw.audit().filter((r) => r.event === 'egress.allowed').map((r) => r.dest_host)).toEqual(Array(3).fill('xn--bcher-kva.example'));
  });

  it('0x02 loop for a destination that is the SOCKS listener itself', async () => {
    const { gw: t, ports } = await startGatewayOnPorts(1, ([port]) => ({
      listen: { socks: `127.0.0.1:${port}` },
      policy: { rules: [{ name: 'self', ip_ranges: ['127.0.0.0/8'], ports: [port] }], allow_ranges: ['127.0.0.0/8'] },
    }));
    cleanup.push(() => t.close());
    const port = ports[0]!;
    const { client, reply } = await socks(port, reqV4('127.0.0.1', port));
    expect(reply.rep).toBe(2);
    await client.waitClosed();
    expect(t.audit()).toEqual([expect.objectContaining({ event: 'egress.denied', reason: 'loop', listener: 'socks', enforced: true })]);
  });

  it('0x06 when the dial times out (a destination that never accepts)', async () => {
    const blackhole = await startBlackhole();
    cleanup.push(() => blackhole.close());
    const port = blackhole.port;
    const gw = await startSocksGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
      timeouts: { connect: '700ms', dns: '300ms' },
    });
    const { client, reply } = await socks(gw.port, reqDomain('g.whatsapp.net', port));
    expect(reply.rep).toBe(6);
    await client.waitClosed();
    expect(gw.audit()).toEqual([
      expect.objectContaining({ event: 'egress.failed', reason: 'connect_timeout', listener: 'socks', proto: 'socks', dest_host: 'g.whatsapp.net', dest_port: port }),
    ]);
  });

  it('answers a greeting without "no authentication" with [5, 0xFF] and closes', async () => {
    const env = await setup();
    const client = await rawExchange(env.gw.port, [Buffer.from([5, 2, 1, 2])]);
    expect([...client.data]).toEqual([5, 0xff]);
    expect(env.gw.audit()).toEqual([expect.objectContaining({ event: 'egress.denied', reason: 'bad_request', listener: 'socks', proto: 'socks', enforced: true })]);
    await expectWorking(env);
  });

  it.each([
    ['SOCKS4', () => Buffer.from([4, 1, 0, 80, 127, 0, 0, 1, ...Buffer.from('user'), 0])],
    ['SOCKS4a', () => Buffer.from([4, 1, 0, 80, 0, 0, 0, 1, 0, ...Buffer.from('g.whatsapp.net'), 0])],
    ['SOCKS4 (first byte only)', () => Buffer.from([4])],
  ])('answers a %s request with a SOCKS4 rejection (0x5B) and closes', async (_name, request) => {
    const env = await setup();
    const client = await rawExchange(env.gw.port, [request()]);
    expect(client.data.length).toBe(8);
    expect(client.data[0]).toBe(0);
    expect(client.data[1]).toBe(0x5b);
    expect(env.gw.audit()).toEqual([expect.objectContaining({ event: 'egress.denied', reason: 'bad_request', listener: 'socks', proto: 'socks', enforced: true })]);
    expect(env.echo.connections).toBe(0);
    await expectWorking(env);
  });

  it('curl --socks4 gets a clear failure, not a hang', async () => {
    const env = await setup();
    // --max-time is the hang guard: a hang would be exit code 28, not 97.
    const res = await curl(['-s', '--max-time', '20', '--socks4', `127.0.0.1:${env.gw.port}`, `http://127.0.0.1:${env.echo.port}/`]);
    expect(res.code).toBe(97);
    expect(env.gw.audit()).toEqual([expect.objectContaining({ event: 'egress.denied', reason: 'bad_request', listener: 'socks' })]);
  });
});

// ---------------------------------------------------------------- malformed input

describe('SOCKS5 malformed and truncated input', () => {
  const handshake = (request: Buffer) => [GREETING, request];

  it.each<[string, Buffer[], boolean, number[] | null]>([
    // name, chunks written, client half-closes afterwards, exact bytes expected back (null: any non-success reply)
    ['a truncated greeting, then close', [Buffer.from([5])], true, []],
    ['a greeting shorter than its method count, then close', [Buffer.from([5, 3, 0])], true, []],
    ['a garbage first byte', [Buffer.from('GET / HTTP/1.1\r\n\r\n')], false, []],
    ['a TLS ClientHello', [Buffer.from([0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0])], false, []],
    ['zero methods', [Buffer.from([5, 0])], false, []],
    ['a truncated request (header only), then close', handshake(Buffer.from([5, 1, 0])), true, [5, 0]],
    ['a truncated request (half a name), then close', handshake(Buffer.from([5, 1, 0, 3, 14, ...Buffer.from('g.what')])), true, [5, 0]],
    ['a truncated request (no port), then close', handshake(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1])), true, [5, 0]],
    ['a request with a bad version', handshake(Buffer.from([4, 1, 0, 1, 127, 0, 0, 1, 0, 80])), false, null],
    ['a name with a space', handshake(reqDomain('g.whats app.net', 443)), false, null],
    ['a name with a slash', handshake(reqDomain('g.whatsapp.net/x', 443)), false, null],
    ['a name with a colon', handshake(reqDomain('g.whatsapp.net:443', 443)), false, null],
    ['a name with a NUL byte', handshake(reqDomain('g.whatsapp.net\0.evil', 443)), false, null],
    ['a name with a label over 63 bytes', handshake(reqDomain(`${'a'.repeat(64)}.whatsapp.net`, 443)), false, null],
    ['a name over 253 bytes', handshake(reqDomain(Array(5).fill('a'.repeat(50)).join('.'), 443)), false, null],
    ['an empty name', handshake(reqDomain('', 443)), false, null],
    ['port 0', handshake(reqDomain('g.whatsapp.net', 0)), false, null],
    ['port 0 on an IPv4 address', handshake(reqV4('127.0.0.1', 0)), false, null],
  ])('%s → closed, bad_request, listener still works', async (_name, chunks, endAfter, expected) => {
    const env = await setup();
    const client = await rawExchange(env.gw.port, chunks, endAfter);
    if (expected) {
      expect([...client.data]).toEqual(expected);
    } else {
      expect([...client.data.subarray(0, 2)]).toEqual([5, 0]);
      const rest = client.data.subarray(2);
      expect(rest.length).toBe(10);
      expect(rest[0]).toBe(5);
      expect(rest[1]).toBe(1); // general failure
    }
    const records = env.gw.audit();
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ event: 'egress.denied', reason: 'bad_request', listener: 'socks', proto: 'socks', enforced: true });
    expect(records[0]!.client).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(env.echo.connections).toBe(0);
    await expectWorking(env);
  });

  it('a client that resets the connection in the middle of its request leaves a bad_request record', async () => {
    const env = await setup();
    const client = await RawClient.connect(env.gw.port);
    client.write(GREETING);
    await client.bytes(2); // the greeting was read: the handshake is under way
    await new Promise((r) => client.socket.write(Buffer.from([5, 1, 0, 3, 14, ...Buffer.from('g.what')]), r));
    client.socket.resetAndDestroy();
    const records = await eventually(() => env.gw.audit().length > 0 && env.gw.audit());
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ event: 'egress.denied', reason: 'bad_request', listener: 'socks', enforced: true });
    // The kernel reports the reset as an error or, with the data read first, as the end of the stream.
    expect(String(records[0]!.error)).toMatch(/^client (connection failed during the request: ECONNRESET|ended the request early)$/);
    await expectWorking(env);
  });

  it('records what of the target could be read (port 0)', async () => {
    const env = await setup();
    await rawExchange(env.gw.port, handshake(reqDomain('G.WhatsApp.net', 0)));
    expect(env.gw.audit()[0]).toMatchObject({ reason: 'bad_request', dest_host: 'g.whatsapp.net', dest_port: 0 });
  });

  it('parses a greeting and request delivered one byte at a time', async () => {
    const env = await setup();
    const client = await RawClient.connect(env.gw.port);
    cleanup.push(() => client.destroy());
    client.socket.setNoDelay(true);
    for (const b of Buffer.concat([GREETING, reqDomain('g.whatsapp.net', env.echo.port)])) {
      client.write(Buffer.from([b]));
      await new Promise((r) => setTimeout(r, 2));
    }
    await client.bytes(2);
    client.data = client.data.subarray(2);
    expect((await readReply(client)).rep).toBe(0);
    client.write('bytewise');
    expect((await client.bytes(8)).toString()).toBe('bytewise');
  });

  it.each([
    ['a partial greeting', [Buffer.from([5])]],
    ['a complete greeting and no request', [GREETING]],
    ['half a request', [GREETING, Buffer.from([5, 1, 0, 3, 14, 0x67])]],
    ['nothing at all', []],
  ])('drops a client that stalls after %s at timeouts.handshake', async (_name, chunks) => {
    const env = await setup({ timeouts: { handshake: '500ms' } });
    const client = await RawClient.connect(env.gw.port);
    cleanup.push(() => client.destroy());
    for (const c of chunks) client.write(c);
    await client.waitClosed();
    expect(env.gw.audit()).toEqual([
      expect.objectContaining({ event: 'egress.denied', reason: 'handshake_timeout', listener: 'socks', proto: 'socks', enforced: true }),
    ]);
    await expectWorking(env);
  });

  it('does not apply the handshake timeout to an established tunnel', async () => {
    const env = await setup({ timeouts: { handshake: '300ms' } });
    const { client, reply } = await socks(env.gw.port, reqDomain('g.whatsapp.net', env.echo.port));
    expect(reply.rep).toBe(0);
    // A connection opened after the tunnel, that stalls, is dropped at its
    // handshake timeout: by then the tunnel's would have fired too.
    const stalled = await RawClient.connect(env.gw.port);
    cleanup.push(() => stalled.destroy());
    await stalled.waitClosed();
    await eventually(() => env.gw.audit().some((r) => r.reason === 'handshake_timeout'));
    expect(client.closed || client.ended).toBe(false);
    client.write('late');
    expect((await client.bytes(4)).toString()).toBe('late');
    expect(env.gw.audit().map((r) => `${r.event}:${r.reason ?? ''}`)).toEqual(['egress.allowed:', 'egress.denied:handshake_timeout']);
  });
});

// ---------------------------------------------------------------- tunnels

describe('SOCKS5 tunnel behaviour', () => {
  it('forwards bytes sent right after the request, before the reply was read', async () => {
    const env = await setup();
    const { client, reply } = await socks(env.gw.port, reqDomain('media.cdn.whatsapp.net', env.echo.port), Buffer.from('early-bytes'));
    expect(reply.rep).toBe(0);
    expect((await client.bytes(11)).toString()).toBe('early-bytes');
    client.destroy();
    const closed = await eventually(() => env.gw.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ bytes_up: 11, bytes_down: 11 });
  });

  it('forwards a fully pipelined greeting + request + data, also with more data while dialling', async () => {
    const env = await setup();
    const client = await RawClient.connect(env.gw.port);
    cleanup.push(() => client.destroy());
    client.write(Buffer.concat([GREETING, reqDomain('g.whatsapp.net', env.echo.port), Buffer.from('one,')]));
    client.write('two');
    await client.bytes(2);
    expect([...client.data.subarray(0, 2)]).toEqual([5, 0]);
    client.data = client.data.subarray(2);
    expect((await readReply(client)).rep).toBe(0);
    expect((await client.bytes(7)).toString()).toBe('one,two');
  });

  it('preserves half-close: the client ends its side and still receives the reply', async () => {
    const server = await startTcpServer('127.0.0.1', (s) => {
      const chunks: Buffer[] = [];
      s.on('data', (d) => chunks.push(d));
      s.on('end', () => {
        setTimeout(() => s.end(`got ${Buffer.concat(chunks).length} bytes`), 50);
      });
    });
    cleanup.push(() => server.close());
    const gw = await startSocksGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [server.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
      timeouts: { dns: '300ms' },
    });
    const { client, reply } = await socks(gw.port, reqDomain('g.whatsapp.net', server.port));
    expect(reply.rep).toBe(0);
    client.write('x'.repeat(1000));
    client.socket.end();
    await eventually(() => client.ended);
    expect(client.text).toBe('got 1000 bytes');
    await client.waitClosed();
    const closed = await eventually(() => gw.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ listener: 'socks', proto: 'socks', bytes_up: 1000, bytes_down: 14, close_reason: 'client_closed' });
  });

  it('half-close right after the request (before the reply) still gets the reply and the answer', async () => {
    const server = await startTcpServer('127.0.0.1', (s) => {
      const chunks: Buffer[] = [];
      s.on('data', (d) => chunks.push(d));
      s.on('end', () => s.end(`echo:${Buffer.concat(chunks).toString()}`));
    });
    cleanup.push(() => server.close());
    const gw = await startSocksGateway({
      policy: { rules: [{ name: 'r', hosts: ['g.whatsapp.net'], ports: [server.port] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
      timeouts: { dns: '300ms' },
    });
    const client = await RawClient.connect(gw.port);
    cleanup.push(() => client.destroy());
    client.write(GREETING);
    await client.bytes(2);
    client.data = client.data.subarray(2);
    client.write(Buffer.concat([reqDomain('g.whatsapp.net', server.port), Buffer.from('last words')]));
    client.socket.end();
    expect((await readReply(client)).rep).toBe(0);
    await eventually(() => client.ended);
    expect(client.text).toBe('echo:last words');
    await client.waitClosed();
    const records = await eventually(() => {
      const r = gw.audit();
      return r.some((x) => x.event === 'egress.closed') && r;
    });
    expect(records.map((r) => r.event)).toEqual(['egress.allowed', 'egress.closed']);
    expect(records[1]).toMatchObject({ bytes_up: 10, bytes_down: 15, close_reason: 'client_closed' });
  });

  it('moves a multi-MiB transfer intact both ways (socks package client, echo)', async () => {
    const env = await setup();
    const { socket } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port: env.gw.port, type: 5 },
      command: 'connect',
      destination: { host: 'g.whatsapp.net', port: env.echo.port },
      timeout: 5000,
    });
    cleanup.push(() => void socket.destroy());
    const size = 24 * 1024 * 1024;
    const chunk = randomBytes(1024 * 1024);
    const sent = createHash('sha256');
    const got = createHash('sha256');
    let received = 0;
    const done = new Promise<void>((resolve, reject) => {
      socket.on('data', (d: Buffer) => {
        received += d.length;
        got.update(d);
      });
      socket.on('end', () => resolve());
      socket.on('error', reject);
    });
    let written = 0;
    await new Promise<void>((resolve) => {
      const pump = () => {
        while (written < size) {
          written += chunk.length;
          sent.update(chunk);
          if (!socket.write(chunk)) return void socket.once('drain', pump);
        }
        socket.end();
        resolve();
      };
      pump();
    });
    await done;
    expect(received).toBe(size);
    expect(got.digest('hex')).toBe(sent.digest('hex'));
    const closed = await eventually(() => env.gw.audit().find((r) => r.event === 'egress.closed'));
    expect(closed).toMatchObject({ listener: 'socks', bytes_up: size, bytes_down: size, close_reason: 'client_closed' });
  });

  it('report mode lets a denied destination through with the same records as the other listeners', async () => {
    const echo = await startTcpServer('127.0.0.1');
    cleanup.push(() => echo.close());
    const gw = await startSocksGateway({
      policy: { mode: 'report', rules: [{ name: 'chat', hosts: ['g.whatsapp.net'], ports: [443] }], allow_ranges: ['127.0.0.1/32'] },
      dns: { hosts: { 'g.whatsapp.net': '127.0.0.1' } },
      timeouts: { dns: '300ms' },
    });
    const { client, reply } = await socks(gw.port, reqDomain('g.whatsapp.net', echo.port), Buffer.from('reported'));
    expect(reply.rep).toBe(0);
    expect((await client.bytes(8)).toString()).toBe('reported');
    client.socket.end();
    await client.waitClosed();
    const records = await eventually(() => {
      const r = gw.audit();
      return r.some((x) => x.event === 'egress.closed') && r;
    });
    expect(records.map((r) => [r.event, r.reason, r.enforced])).toEqual([
      ['egress.denied', 'port_not_allowed', false],
      ['egress.allowed', undefined, undefined],
      ['egress.closed', undefined, undefined],
    ]);
    for (const r of records) expect(r).toMatchObject({ listener: 'socks', proto: 'socks', dest_host: 'g.whatsapp.net', dest_port: echo.port });
  });

  it('denied destinations never reach the destination and are audited once each', async () => {
    const env = await setup();
    const requests = [
      reqDomain('evil.example', env.echo.port),
      reqDomain('g.whatsapp.net', 2),
      reqV4('127.0.0.3', env.echo.port),
      reqDomain('ten.example', env.echo.port),
    ];
    for (const r of requests) {
      const { client, reply } = await socks(env.gw.port, r, Buffer.from('should never arrive'));
      expect(reply.rep).toBe(2);
      await client.waitClosed();
    }
    expect(env.echo.connections).toBe(0);
    expect(env.gw.audit().map((r) => r.reason)).toEqual(['host_not_allowed', 'port_not_allowed', 'ip_not_allowed', 'special_range']);
    expect(env.gw.gw.tunnels.size).toBe(0);
  });
});


