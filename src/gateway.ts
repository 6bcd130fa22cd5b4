import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Audit, formatClient } from './audit.js';
import { keepAliveSettings, type Config, type ListenAddress } from './config/schema.js';
import { decisionContext } from './decide.js';
import type { EgressContext } from './egress.js';
import { connectionChannel, type ConnectionEvent } from './events.js';
import { Admission } from './inbound/admission.js';
import { createForwardServer } from './inbound/forward.js';
import { createHttpProxy } from './inbound/http.js';
import { createSocksServer } from './inbound/socks.js';
import type { Logger } from './log.js';
import { fdLimit as readFdLimit } from './limits.js';
import { SelfAddresses } from './net/self.js';
import { RangeFeeds } from './ranges/feeds.js';
import type { Tunnel } from './tunnel.js';
import { RouteTable } from './upstream/routes.js';

/**
 * Wires a validated configuration into running listeners. Listeners read the
 * egress context through a getter on every connection, so a later reload can
 * swap policy and resolver without touching established tunnels.
 */
export class Gateway {
  readonly audit: Audit;
  readonly tunnels = new Set<Tunnel>();
  private readonly self = new SelfAddresses();
  private readonly servers = new Map<string, net.Server>();
  /** Every accepted client socket, so shutdown can close them all. */
  private readonly sockets = new Set<net.Socket>();
  /** Each listener's own count of client sockets, for the shared budget. */
  private readonly perServer = new Map<net.Server, number>();
  readonly fdLimit = readFdLimit();
  /** `limits:` over all listeners; reads the configuration in force on each accept. */
  readonly admission = new Admission(() => this.config.limits);
  private ctx: EgressContext;
  /** Keeps the rules' `url:`/`dns:` ranges current; a reload starts the new config's and stops these. */
  feeds: RangeFeeds;
  private readonly boot = randomBytes(3).toString('hex');
  private seq = 0;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly config: Config,
    private readonly log?: Logger,
  ) {
    this.audit = new Audit({ file: config.audit.file, onError: config.audit.on_error, log });
    this.ctx = this.contextFor(config);
    this.feeds = new RangeFeeds(config.policy.rules, config.ranges, this.ctx.resolver, log);
  }

  static async start(config: Config, log?: Logger): Promise<Gateway> {
    const gw = new Gateway(config, log);
    const ctx = () => gw.ctx;
    const nextId = () => gw.nextId();
    const handshakeTimeoutMs = config.timeouts.handshake;
    const { admission } = gw;
    const { proxy, socks, forwards } = config.listen;
    try {
      await gw.feeds.start();
      if (proxy) {
        const maxHeadBytes = config.limits.max_head_bytes;
        await gw.listen('proxy', createHttpProxy(ctx, { name: 'proxy', handshakeTimeoutMs, nextId, admission, maxHeadBytes }), proxy);
      }
      if (socks) {
        await gw.listen('socks', createSocksServer(ctx, { name: 'socks', handshakeTimeoutMs, nextId, admission }), socks);
      }
      for (const f of forwards) {
        await gw.listen(f.name, createForwardServer(ctx, { name: f.name, to: f.to, nextId, admission }), f.listen);
      }
    } catch (err) {
      await gw.close();
      throw err;
    }
    return gw;
  }

  private contextFor(config: Config): EgressContext {
    return {
      ...decisionContext(config, this.self),
      audit: this.audit,
      log: this.log,
      connectTimeoutMs: config.timeouts.connect,
      idleTimeoutMs: config.timeouts.idle,
      keepAlive: keepAliveSettings(config),
      tunnels: this.tunnels,
      stopped: false,
      inflight: 0,
      routes: RouteTable.from(config),
    };
  }

  private nextId(): string {
    return `${this.boot}-${++this.seq}`;
  }

  private listen(name: string, server: net.Server, { host, port }: ListenAddress): Promise<void> {
    return new Promise((resolve, reject) => {
      // The listener's name goes with a bind error, so serve can point at its key.
      const failed = (err: Error) => reject(Object.assign(err, { listener: name }));
      server.once('error', failed);
      this.limitConnections(name, server);
      server.listen({ host, port, ipv6Only: host === '::' ? false : undefined }, () => {
        server.removeListener('error', failed);
        server.on('error', (err) => this.log?.error({ err, listener: name }, 'listener error'));
        const a = server.address() as AddressInfo;
        this.self.add(a.address, a.port);
        this.servers.set(name, server);
        this.log?.info({ listener: name, address: formatClient(a.address, a.port) }, 'listening');
        resolve();
      });
    });
  }

  /**
   * Keep the client connections of all listeners within the descriptor
   * budget: past it, Node's `maxConnections` closes a new connection before
   * any handler sees it, and the refusal is audited (`over_capacity`)
   * instead of the process failing on EMFILE.
   */
  private limitConnections(name: string, server: net.Server): void {
    const count = (delta: number) => {
      this.perServer.set(server, (this.perServer.get(server) ?? 0) + delta);
      const budget = this.fdLimit?.clientBudget;
      if (budget === undefined) return;
      for (const [s, own] of this.perServer) s.maxConnections = Math.max(1, budget - (this.sockets.size - own));
    };
    const sockets = this.sockets;
    // One function for every socket of this listener: idle tunnels keep no closure.
    const opened: ConnectionEvent = { listener: name, open: true };
    const closed: ConnectionEvent = { listener: name, open: false };
    function onClose(this: net.Socket) {
      sockets.delete(this);
      count(-1);
      if (connectionChannel.hasSubscribers) connectionChannel.publish(closed);
    }
    server.on('connection', (s: net.Socket) => {
      sockets.add(s);
      count(+1);
      s.on('close', onClose);
      if (connectionChannel.hasSubscribers) connectionChannel.publish(opened);
    });
    server.on('drop', (d?: { remoteAddress?: string; remotePort?: number }) => {
      const proto = name === 'proxy' ? 'http' : name === 'socks' ? 'socks' : 'tcp';
      this.audit.denied(
        { id: this.nextId(), client: formatClient(d?.remoteAddress, d?.remotePort), listener: name, proto },
        { reason: 'over_capacity', enforced: true, error: `${this.sockets.size} client connections: the descriptor budget is used up` },
      );
    });
    count(0);
  }

  /** Listening and not closing (the admin listener's /readyz; draining comes with the drain). */
  get listening(): boolean {
    return this.closing === undefined && this.servers.size > 0 && [...this.servers.values()].every((s) => s.listening);
  }

  /** A socket of this process that does not proxy (the admin listener): a destination there is a loop. */
  addOwnAddress(a: AddressInfo): void {
    this.self.add(a.address, a.port);
  }

  /** Client connections open, per listener (metrics). */
  *openConnections(): Iterable<[string, number]> {
    for (const [name, server] of this.servers) yield [name, this.perServer.get(server) ?? 0];
  }

  /** Bound address of a listener (tests use port 0). */
  address(name = 'proxy'): AddressInfo {
    const server = this.servers.get(name);
    if (!server) throw new Error(`no listener named ${name}`);
    return server.address() as AddressInfo;
  }

  /**
   * Stop listening, cut open connections (their close records are written),
   * flush the audit log. Graceful drain is a separate, later mode.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.ctx.stopped = true;
      this.feeds.stop();
      const closed = [...this.servers.values()].map((s) => new Promise<void>((r) => s.close(() => r())));
      for (const t of this.tunnels) t.destroy('shutdown');
      for (const s of this.sockets) s.destroy();
      // Attempts still resolving or dialling finish (bounded by their own
      // timeouts) and write their records; tunnels they open are cut at once.
      const { connect, dns } = this.config.timeouts;
      const deadline = Date.now() + connect + dns + 1000;
      while (this.ctx.inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      await Promise.all(closed);
      // Close records are written from 'close' events, a tick after destroy.
      for (let i = 0; i < 100 && this.tunnels.size > 0; i++) await new Promise((r) => setImmediate(r));
      this.self.clear();
      this.audit.close();
    })();
    return this.closing;
  }
}
