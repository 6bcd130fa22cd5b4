import type { Config } from '../config/schema.js';
import type { Target } from '../policy/hostport.js';
import { DIRECT, type RouteConfig, type Upstream } from './config.js';

/**
 * The route table: which way an allowed destination leaves. The first route
 * whose `match` holds (hosts by the policy's pattern compiler, ports) wins,
 * else `default_route`. Built from the config with the egress context, so a
 * reload swaps it with everything else.
 */

/** A hop of a route: a parent, or `direct` (dial the checked address). */
export type Hop = Upstream | typeof DIRECT;

export interface Route {
  /** Tried in order until one connects. */
  hops: readonly Hop[];
  /** `local`: the parent gets the address the gateway checked, not the name. */
  resolve: 'local' | 'parent';
}

const DIRECT_ROUTE: Route = { hops: [DIRECT], resolve: 'parent' };

export class RouteTable {
  private constructor(
    private readonly routes: readonly (Route & { match: RouteConfig })[],
    private readonly fallback: Route,
  ) {}

  static from(config: Pick<Config, 'upstreams' | 'routes' | 'default_route'>): RouteTable {
    const hops = (names: readonly string[]): Hop[] => names.map((n) => (n === DIRECT ? DIRECT : config.upstreams.get(n)!));
    const fallback = config.default_route.length === 1 && config.default_route[0] === DIRECT ? DIRECT_ROUTE : { hops: hops(config.default_route), resolve: 'parent' as const };
    return new RouteTable(
      config.routes.map((r) => ({ match: r, hops: hops(r.via), resolve: r.resolve })),
      fallback,
    );
  }

  /** Whether every destination is dialled directly (no parent configured in any route). */
  get direct(): boolean {
    return this.routes.length === 0 && this.fallback === DIRECT_ROUTE;
  }

  /**
   * The longest a dial along any route may take: each hop in turn, a parent
   * with its own connect_timeout and the lookup of its name. Shutdown waits
   * this long for dials under way, so their records are written.
   */
  longestDialMs(connectMs: number, dnsMs: number): number {
    const hop = (h: Hop) => (h === DIRECT ? connectMs : (h.connectTimeoutMs ?? connectMs) + (h.family === undefined ? dnsMs : 0));
    return Math.max(...[this.fallback, ...this.routes].map((r) => r.hops.reduce((ms, h) => ms + hop(h), 0)));
  }

  choose(target: Target): Route {
    for (const r of this.routes) {
      const m = r.match;
      if (m.ports && !m.ports.has(target.port)) continue;
      // Host patterns name hostnames; an IP-literal destination matches only a ports-only route.
      if (m.hosts && (target.family !== undefined || !m.hosts.matches(target.host))) continue;
      return r;
    }
    return this.fallback;
  }
}
