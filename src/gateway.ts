import { randomBytes } from 'node:crypto';
import { Authenticator } from './access/auth.js';
import { ClientAccess } from './access/clients.js';
import type net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Audit, formatClient } from './audit.js';
import type { AuditSink } from './audit-sink.js';
import { keepAliveSettings, type Config, type ListenAddress } from './config/schema.js';
import { decisionContext } from './decide.js';
import type { EgressContext } from './egress.js';
import { connectionChannel, type ConnectionEvent } from './events.js';
import { Admission } from './inbound/admission.js';
import { createForwardServer, type ForwardListenerOptions } from './inbound/forward.js';
import { createHttpProxy } from './inbound/http.js';
import { createSocksServer } from './inbound/socks.js';
import { createTransparentServer, transparentUnavailable } from './inbound/transparent.js';
import type { Logger } from './log.js';
import { localDestination, transparentListen } from './native/sockopt.js';
import { fdLimit as readFdLimit } from './limits.js';
import { canonicalIp } from './net/ip.js';
import { SelfAddresses } from './net/self.js';
import type { Target } from './policy/hostport.js';
import { RangeFeeds } from './ranges/feeds.js';
import type { Tunnel } from './tunnel.js';
import { RouteTable } from './upstream/routes.js';

/**
 * Wires a validated configuration into running listeners. Listeners read the
 * egress context through a getter on every connection, so a reload swaps
 * policy, resolver, timeouts and audit settings without touching established
 * tunnels. ops/ drives the lifecycle through `apply` (reload), `drain`,
 * `stopAccepting` and `close`.
 */

type Kind = 'proxy' | 'socks' | 'transparent' | 'forward';

/** A listener as the configuration names it. */
interface ListenerSpec {
  name: string;
  kind: Kind;
  at: ListenAddress;
  to?: Target;
  /** The transparent listener's: TPROXY needs its own socket and reads destinations differently. */
  mode?: 'redirect' | 'tproxy';
}

interface Listener extends ListenerSpec {
  server: net.Server;
  /** The forward listener's options: its `to` changes on reload without a rebind. */
  forward?: ForwardListenerOptions;
}

export interface GatewayOptions {
  /** Where audit lines go (a cluster worker: to the primary); by default `audit.file`. */
  sink?: AuditSink;
  /** Connection ids start with it (unique across a cluster's workers). */
  idPrefix?: string;
}

/** Emitted on every listener when the drain starts; inbound/http.ts listens for it. */
const DRAINING_EVENT = 'draining';

export class Gateway {
  readonly audit: Audit;
  readonly tunnels = new Set<Tunnel>();
  private readonly self = new SelfAddresses();
  /** The listeners the configuration names, by name. */
  private readonly listeners = new Map<string, Listener>();
  /** Every server until its 'close' (a replaced listener still holds tunnels); its close, once asked. */
  private readonly servers = new Map<net.Server, Promise<void> | undefined>();
  /** Each server's listener name, while it has connections. */
  private readonly names = new Map<net.Server, string>();
  /** Every accepted client socket, so shutdown can close them all. */
  private readonly sockets = new Set<net.Socket>();
  /** Each listener's own count of client sockets, for the shared budget. */
  private readonly perServer = new Map<net.Server, number>();
  readonly fdLimit = readFdLimit();
  /** `limits:` over all listeners; reads the configuration in force on each accept. */
  readonly admission = new Admission(() => this.config.limits, () => this.ctx.clients);
  /** Proxy users' verified credentials and per-source failures; kept across reloads. */
  readonly auth = new Authenticator();
  /** Sockets of this process that do not proxy (the admin listener), for the loop check. */
  private readonly own: AddressInfo[] = [];
  private ctx: EgressContext;
  /** Keeps the rules' `url:`/`dns:` ranges current; a reload starts the new config's and stops these. */
  feeds: RangeFeeds;
  /** Shared by every context, old and new: a connection may keep the one it was accepted with. */
  private stopped = false;
  private inflight = 0;
  /** Connection ids: this start's random tag (a cluster worker's names the primary's start and the worker). */
  private readonly boot: string;
  private seq = 0;
  private closing: Promise<void> | undefined;
  private drainingSince: number | undefined;
  private accepting = true;

  private constructor(
    private current: Config,
    private readonly log?: Logger,
    opts: GatewayOptions = {},
  ) {
    this.boot = opts.idPrefix ?? randomBytes(3).toString('hex');
    this.audit = new Audit({ file: current.audit.file, onError: current.audit.on_error, log, sink: opts.sink });
    this.ctx = this.contextFor(current);
    this.feeds = new RangeFeeds(current.policy.rules, current.ranges, this.ctx.resolver, log);
  }

  static async start(config: Config, log?: Logger, opts?: GatewayOptions): Promise<Gateway> {
    const gw = new Gateway(config, log, opts);
    try {
      await gw.feeds.start();
      for (const spec of listenerSpecs(config)) await gw.bind(spec);
    } catch (err) {
      await gw.close();
      throw err;
    }
    return gw;
  }

  /** The configuration in force (the last one applied). */
  get config(): Config {
    return this.current;
  }

  /** The egress context new connections get. */
  get context(): EgressContext {
    return this.ctx;
  }

  /** True from the start of a drain on: readiness checks answer "not ready". */
  get draining(): boolean {
    return this.drainingSince !== undefined;
  }

  /** Listeners are accepting connections (the admin listener's /readyz: listening and not draining). */
  get listening(): boolean {
    return this.accepting && this.closing === undefined && this.listeners.size > 0 && [...this.listeners.values()].every((l) => l.server.listening);
  }

  /** A socket of this process that does not proxy (the admin listener): a destination there is a loop. */
  addOwnAddress(a: AddressInfo): void {
    this.own.push(a);
    this.self.add(a.address, a.port);
  }

  /** That socket is closed (the admin listener moved). */
  removeOwnAddress(a: AddressInfo): void {
    const i = this.own.findIndex((o) => o.address === a.address && o.port === a.port);
    if (i >= 0) this.own.splice(i, 1);
    this.refreshSelf();
  }

  /** The sockets of this process group that do not proxy, all at once (a cluster worker: the primary's admin listener). */
  setOwnAddresses(list: readonly AddressInfo[]): void {
    this.own.splice(0, this.own.length, ...list);
    this.refreshSelf();
  }

  /** Client connections open, per listener (metrics); a moved listener's old socket counts under its name. */
  *openConnections(): Iterable<[string, number]> {
    const byName = new Map<string, number>();
    for (const l of this.listeners.values()) byName.set(l.name, 0);
    for (const [server, name] of this.names) byName.set(name, (byName.get(name) ?? 0) + (this.perServer.get(server) ?? 0));
    yield* byName;
  }

  /** Client connections open (tunnels, HTTP connections, handshakes). */
  get connections(): number {
    return this.sockets.size;
  }

  /** Attempts between decision and dial result. */
  get pending(): number {
    return this.inflight;
  }

  private contextFor(config: Config): EgressContext {
    const gw = this;
    return {
      ...decisionContext(config, this.self),
      audit: this.audit,
      log: this.log,
      connectTimeoutMs: config.timeouts.connect,
      idleTimeoutMs: config.timeouts.idle,
      keepAlive: keepAliveSettings(config),
      tunnels: this.tunnels,
      get stopped() {
        return gw.stopped;
      },
      get inflight() {
        return gw.inflight;
      },
      set inflight(n: number) {
        gw.inflight = n;
      },
      routes: RouteTable.from(config),
      clients: new ClientAccess(config),
      auth: this.auth,
    };
  }

  private nextId(): string {
    return `${this.boot}-${++this.seq}`;
  }

  private create(spec: ListenerSpec): Listener {
    const ctx = () => this.ctx;
    const nextId = () => this.nextId();
    const gw = this;
    const { admission } = this;
    // Read on every connection, so a reload's values apply at once (Node's
    // own HTTP parser keeps the head size it was created with).
    const common = {
      name: spec.name,
      nextId,
      admission,
      get handshakeTimeoutMs() {
        return gw.current.timeouts.handshake;
      },
      get maxHeadBytes() {
        return gw.current.limits.max_head_bytes;
      },
    };
    if (spec.kind === 'proxy') return { ...spec, server: createHttpProxy(ctx, common) };
    if (spec.kind === 'socks') return { ...spec, server: createSocksServer(ctx, common) };
    if (spec.kind === 'transparent') {
      // Without SO_ORIGINAL_DST every intercepted connection would be unjudgeable: refuse to start.
      const why = transparentUnavailable(spec.at, spec.mode);
      if (why) throw new Error(why);
      // TPROXY: the local address is the destination; one of our own listeners' is a loop, as under REDIRECT.
      const own = (address: string, port: number) => this.self.has(canonicalIp(address)?.ip ?? address, port);
      const lookup = spec.mode === 'tproxy' ? { originalDestination: (s: net.Socket) => localDestination(s, own) } : {};
      return { ...spec, server: createTransparentServer(ctx, Object.assign(common, lookup)) };
    }
    const forward: ForwardListenerOptions = { name: spec.name, to: spec.to!, nextId, admission };
    return { ...spec, server: createForwardServer(ctx, forward), forward };
  }

  /** Create and bind a listener; it replaces the one of the same name only once bound. */
  private bind(spec: ListenerSpec): Promise<Listener> {
    const l = this.create(spec);
    const { server } = l;
    const { host, port } = spec.at;
    return new Promise((resolve, reject) => {
      const failed = (err: NodeJS.ErrnoException & { address?: string; port?: number }) => {
        // Not bound: its own timers (the HTTP head checks) stop too.
        server.close();
        // The listener's name and address go with a bind error, so serve can point at its key
        // (the addon's TPROXY socket fails before Node knows the address).
        reject(Object.assign(err, { listener: spec.name, address: err.address ?? host, port: err.port ?? port }));
      };
      server.once('error', failed);
      const bound = () => {
        server.removeListener('error', failed);
        server.on('error', (err) => this.log?.error({ err, listener: spec.name }, 'listener error'));
        this.limitConnections(spec.name, server);
        const a = server.address() as AddressInfo;
        this.self.add(a.address, a.port);
        this.servers.set(server, undefined);
        this.names.set(server, spec.name);
        // Bound while the drain stopped the others: it stops too.
        if (!this.accepting) void this.stopServer(server);
        server.once('close', () => {
          this.servers.delete(server);
          this.names.delete(server);
          this.perServer.delete(server);
        });
        this.listeners.set(spec.name, l);
        this.log?.info({ listener: spec.name, address: formatClient(a.address, a.port) }, 'listening');
        resolve(l);
      };
      if (spec.mode !== 'tproxy') return void server.listen({ host, port, ipv6Only: host === '::' ? false : undefined }, bound);
      // TPROXY: the kernel delivers only to a socket made transparent before bind, which Node cannot make.
      let fd: number;
      try {
        fd = transparentListen(host, port);
      } catch (err) {
        return failed(err as Error);
      }
      server.listen({ fd }, bound);
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
      const proto = name === 'proxy' ? 'http' : name === 'socks' ? 'socks' : name === 'transparent' ? 'transparent' : 'tcp';
      this.audit.denied(
        { id: this.nextId(), client: formatClient(d?.remoteAddress, d?.remotePort), listener: name, proto },
        { reason: 'over_capacity', enforced: true, error: `${this.sockets.size} client connections: the descriptor budget is used up` },
      );
    });
    count(0);
  }

  /** Bound address of a listener (tests use port 0). */
  address(name = 'proxy'): AddressInfo {
    const l = this.listeners.get(name);
    if (!l) throw new Error(`no listener named ${name}`);
    return l.server.address() as AddressInfo;
  }

  /**
   * Put a reloaded configuration in force: its range feeds' first lists, the
   * audit destination, the context new connections get, then the listeners. A listener whose
   * address is unchanged keeps its socket; a moved one is bound anew before
   * the old one stops accepting (if the new address cannot be bound, the old
   * listener stays); a removed one stops accepting. Open tunnels are never
   * touched. Returns the problems, already logged; never throws for them.
   */
  async apply(next: Config): Promise<string[]> {
    const problems: string[] = [];
    // The new rules' url:/dns: ranges are loaded before they decide anything.
    const ctx = this.contextFor(next);
    const feeds = new RangeFeeds(next.policy.rules, next.ranges, ctx.resolver, this.log);
    try {
      await feeds.start();
    } catch (err) {
      feeds.stop();
      throw err;
    }
    try {
      this.audit.configure(next.audit.file, next.audit.on_error);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      problems.push(`audit.file: cannot open ${next.audit.file}: ${e.code ?? e.message}`);
      this.log?.error({ err, file: next.audit.file }, 'cannot open the new audit destination; still writing to the old one');
    }
    this.ctx = ctx;
    this.feeds.stop();
    this.feeds = feeds;
    this.current = next;

    const wanted = listenerSpecs(next);
    for (const spec of wanted) {
      const had = this.listeners.get(spec.name);
      if (had?.forward && spec.to) had.forward.to = spec.to;
      const same = had && had.at.host === spec.at.host && had.at.port === spec.at.port;
      if (same && had.mode === spec.mode) continue;
      // While draining, listeners stay closed.
      if (!this.accepting) continue;
      if (same) {
        // The mode changed at the same address: the old socket must go first (both cannot bind it).
        this.listeners.delete(spec.name);
        // close() frees the port at once; its open connections stay.
        void this.stopServer(had.server);
        try {
          await this.bind(spec);
          this.log?.info({ listener: spec.name, mode: spec.mode }, 'transparent listener rebound in its new mode; its open connections stay');
        } catch (err) {
          const e = err as NodeJS.ErrnoException;
          problems.push(`${spec.name}: cannot listen on ${spec.at.text} (${spec.mode}): ${e.code ?? e.message}`);
          this.log?.error({ err, listener: spec.name, address: spec.at.text }, 'cannot rebind the listener in its new mode; it is not accepting');
        }
        continue;
      }
      try {
        await this.bind(spec);
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        problems.push(`${spec.name}: cannot listen on ${spec.at.text}: ${e.code ?? e.message}`);
        this.log?.error({ err, listener: spec.name, address: spec.at.text }, had ? 'cannot bind the new address; the listener stays where it was' : 'cannot bind the new listener');
        continue;
      }
      if (had) {
        void this.stopServer(had.server);
        this.log?.info({ listener: spec.name, from: had.at.text, to: spec.at.text }, 'listener moved; its open connections stay');
      }
    }
    for (const [name, l] of this.listeners) {
      if (wanted.some((w) => w.name === name)) continue;
      this.listeners.delete(name);
      void this.stopServer(l.server);
      this.log?.info({ listener: name, address: l.at.text }, 'listener removed; its open connections stay');
    }
    this.refreshSelf();
    return problems;
  }

  /** The loop check knows exactly the addresses that still accept. */
  private refreshSelf(): void {
    this.self.clear();
    for (const l of this.listeners.values()) {
      const a = l.server.address() as AddressInfo | null;
      if (a) this.self.add(a.address, a.port);
    }
    for (const a of this.own) this.self.add(a.address, a.port);
  }

  /**
   * Start a drain: `draining` turns true, and HTTP listeners answer every
   * request from now on with `Connection: close` and close their idle
   * keep-alive connections. Listeners keep accepting until stopAccepting().
   */
  drain(): void {
    if (this.drainingSince !== undefined) return;
    this.drainingSince = Date.now();
    for (const server of this.servers.keys()) server.emit(DRAINING_EVENT);
  }

  /** Listeners stop accepting; open connections go on. */
  stopAccepting(): void {
    this.accepting = false;
    for (const server of this.servers.keys()) void this.stopServer(server);
  }

  /** Close a server once; resolves when its last connection has gone. */
  private stopServer(server: net.Server): Promise<void> {
    let closed = this.servers.get(server);
    if (!closed) {
      closed = new Promise<void>((r) => server.close(() => r()));
      this.servers.set(server, closed);
    }
    return closed;
  }

  /**
   * Stop listening, cut open connections (their close records are written
   * with `close_reason: shutdown`), flush the audit log. The end of a drain,
   * or a plain stop.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.feeds.stop();
      this.stopped = true;
      this.accepting = false;
      const closed = [...this.servers.keys()].map((s) => this.stopServer(s));
      for (const t of this.tunnels) t.destroy('shutdown');
      for (const s of this.sockets) s.destroy();
      // Attempts still resolving or dialling finish (bounded by their own
      // timeouts) and write their records; tunnels they open are cut at once.
      const { connect, dns } = this.current.timeouts;
      // Through parents a dial may take longer than timeouts.connect (their own connect_timeout, several hops).
      const deadline = Date.now() + dns + (this.ctx.routes?.longestDialMs(connect, dns) ?? connect) + 1000;
      while (this.inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      await Promise.all(closed);
      // Close records are written from 'close' events, a tick after destroy
      // (tunnels', and a socket's own, as an Upgrade's before its 101); a
      // server can report closed before its sockets' 'close' events have run.
      for (let i = 0; i < 100 && (this.tunnels.size > 0 || this.sockets.size > 0); i++) await new Promise((r) => setImmediate(r));
      this.self.clear();
      this.audit.close();
    })();
    return this.closing;
  }
}

function listenerSpecs(config: Config): ListenerSpec[] {
  const { proxy, socks, transparent, forwards } = config.listen;
  const specs: ListenerSpec[] = [];
  if (proxy) specs.push({ name: 'proxy', kind: 'proxy', at: proxy });
  if (socks) specs.push({ name: 'socks', kind: 'socks', at: socks });
  if (transparent) specs.push({ name: 'transparent', kind: 'transparent', at: transparent, mode: config.listen.transparent_mode });
  for (const f of forwards) specs.push({ name: f.name, kind: 'forward', at: f.listen, to: f.to });
  return specs;
}
