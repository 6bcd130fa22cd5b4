import type { Socket } from 'node:net';
import type { Authenticator } from './access/auth.js';
import type { ClientAccess } from './access/clients.js';
import type { Attempt, Audit } from './audit.js';
import { decide, decideAt, type Decision, type DecisionContext } from './decide.js';
import type { Logger } from './log.js';
import { EgressError, type Reason } from './errors.js';
import { dial } from './net/dial.js';
import type { KeepAlive } from './net/keepalive.js';
import type { Target } from './policy/hostport.js';
import { Tunnel } from './tunnel.js';
import { dialRoute, type RouteDialled } from './upstream/dial.js';
import type { RouteTable } from './upstream/routes.js';

/**
 * Open an egress connection for any listener: decide, audit, dial the checked
 * addresses, audit again. Listeners only translate the outcome into their
 * protocol's answer (an HTTP status, later a SOCKS reply).
 */

export interface EgressContext extends DecisionContext {
  audit: Audit;
  /** Operational log: debug lines only, each behind isLevelEnabled so they cost nothing when off. */
  log?: Logger;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  keepAlive: KeepAlive;
  /** Open tunnels, so shutdown (and later drain) can reach them. */
  tunnels: Set<Tunnel>;
  /** Set at shutdown: a tunnel whose dial finishes after that is cut at once. */
  stopped: boolean;
  /** Attempts between decision and dial result; shutdown waits for them. */
  inflight: number;
  /** `routes:` / `default_route:`: which parent, if any, an allowed destination leaves through (absent: direct). */
  routes?: RouteTable;
  /** Who may connect, and the proxy users (clients:). */
  clients: ClientAccess;
  auth: Authenticator;
}

export interface EgressOpen {
  ok: true;
  upstream: Socket;
  /** The checked address the upstream is connected to. */
  destIp: string;
  rule?: string;
  /** The upstream (its key) the connection goes through. */
  via?: string;
  /** A plain connection to an HTTP parent: the request goes in absolute form with these headers (upstream/forward.ts). */
  parentForward?: { headers: string[] };
}

export interface OpenOptions {
  /**
   * Asked after the decision and after the dial: true when the listener has
   * refused the request meanwhile (and written its one record), so no
   * decision record is written and nothing is dialled or kept.
   */
  cancelled?: () => boolean;
  /** An address fixed by the network (an intercepted connection's original destination): judged and dialled, no DNS. */
  at?: FixedAddress;
  /** An absolute-form HTTP request (an HTTP parent may take it without CONNECT). */
  forward?: boolean;
}

export interface FixedAddress {
  address: string;
  /** TLS that names no server (see DecideAtOptions). */
  nameless?: boolean;
}

/** What a listener gets: an open upstream, or the reason it was refused. */
export type EgressResult = EgressOpen | { ok: false; reason: Reason; message?: string; cancelled?: boolean };

export async function openEgress(ctx: EgressContext, attempt: Attempt, target: Target, opts: OpenOptions = {}): Promise<EgressResult> {
  ctx.inflight++;
  try {
    const d = await judge(ctx, attempt, target, opts);
    if (!d.ok) return d;
    return await dialChecked(ctx, attempt, target, d.decision, opts);
  } finally {
    ctx.inflight--;
  }
}

/**
 * The decision alone, for a request the proxy answers itself (Max-Forwards:
 * 0): the same records as openEgress for a denial; for an allow, the
 * `egress.allowed` record says `local: true` and nothing is dialled.
 */
export async function judgeLocal(ctx: EgressContext, attempt: Attempt, target: Target, opts: OpenOptions = {}): Promise<{ ok: true; rule?: string } | Extract<EgressResult, { ok: false }>> {
  ctx.inflight++;
  try {
    const d = await judge(ctx, attempt, target, opts);
    if (!d.ok) return d;
    ctx.audit.allowed(attempt, { rule: d.decision.rule, local: true });
    return { ok: true, rule: d.decision.rule };
  } finally {
    ctx.inflight--;
  }
}

type Allow = Extract<Decision, { verdict: 'allow' }>;

const CANCELLED = { ok: false, reason: 'bad_request', cancelled: true } as const;

async function judge(ctx: EgressContext, attempt: Attempt, target: Target, opts: OpenOptions): Promise<{ ok: true; decision: Allow } | Extract<EgressResult, { ok: false }>> {
  // No connection the audit log cannot record (unless the operator chose to continue).
  if (!ctx.audit.accepting) {
    ctx.audit.denied(attempt, { reason: 'audit_unavailable', enforced: true });
    return { ok: false, reason: 'audit_unavailable' };
  }
  const d = opts.at ? await decideAt(ctx, target, opts.at.address, { nameless: opts.at.nameless }) : await decide(ctx, target, undefined, attempt.user);
  if (ctx.log?.isLevelEnabled('debug')) {
    ctx.log.debug({ id: attempt.id, dest: `${target.host}:${target.port}`, verdict: d.verdict, rule: d.rule, addresses: d.addresses }, 'decision');
  }
  if (opts.cancelled?.()) return CANCELLED;
  if (d.wouldDeny) {
    ctx.audit.denied(attempt, { ...d.wouldDeny, dest_ip: d.addresses[0], enforced: false });
  }
  if (d.verdict === 'deny') {
    ctx.audit.denied(attempt, { reason: d.reason, rule: d.rule, range: d.range, dest_ip: d.addresses[0], enforced: true });
    return { ok: false, reason: d.reason };
  }
  if (d.verdict === 'fail') {
    ctx.audit.failed(attempt, { reason: d.reason, rule: d.rule });
    return { ok: false, reason: d.reason };
  }
  return { ok: true, decision: d as Allow };
}

async function dialChecked(ctx: EgressContext, attempt: Attempt, target: Target, d: Allow, opts: OpenOptions): Promise<EgressResult> {
  try {
    const { socket, address, via, parentForward } = await dialAlong(ctx, attempt, target, d.addresses, opts);
    if (opts.cancelled?.()) {
      // Refused while dialling: the origin got a connection and no byte.
      socket.destroy();
      return CANCELLED;
    }
    ctx.audit.allowed(attempt, { rule: d.rule, dest_ip: address });
    return { ok: true, upstream: socket, destIp: address, rule: d.rule, via, parentForward };
  } catch (err) {
    if (!(err instanceof EgressError)) throw err;
    if (opts.cancelled?.()) return CANCELLED;
    ctx.audit.failed(attempt, { reason: err.reason, rule: d.rule, dest_ip: d.addresses.at(-1), error: err.message });
    return { ok: false, reason: err.reason, message: err.message };
  }
}

/**
 * The route is chosen only now that the policy has allowed the destination.
 * Through a parent, the attempt names it (`via`) in this and every later record.
 */
function dialAlong(ctx: EgressContext, attempt: Attempt, target: Target, addresses: readonly string[], opts: OpenOptions): Promise<RouteDialled> {
  const dialOpts = { timeoutMs: ctx.connectTimeoutMs, keepAlive: ctx.keepAlive };
  if (!ctx.routes || ctx.routes.direct) return dial(addresses, target.port, dialOpts);
  const onHop = (via: string | undefined) => {
    if (via === undefined) delete attempt.via;
    else attempt.via = via;
  };
  const route = ctx.routes.choose(target);
  // An intercepted connection was judged at its original address, not by its
  // SNI name: the parent gets that address, never the name to resolve anew.
  const chosen = opts.at && route.resolve !== 'local' ? { ...route, resolve: 'local' as const } : route;
  return dialRoute(chosen, target, addresses, { ...dialOpts, resolver: ctx.resolver, forward: opts.forward ?? false, onHop });
}

/** Join client and upstream; the tunnel is tracked in `ctx.tunnels` and audits its own close. */
export function startTunnel(ctx: EgressContext, attempt: Attempt, client: Socket, open: EgressOpen, head?: Buffer, status?: number): Tunnel {
  const opts = { idleMs: ctx.idleTimeoutMs, keepAlive: ctx.keepAlive, destIp: open.destIp, head, status };
  // The tunnel handles the client's errors from now on (one listener less to keep).
  client.removeListener('error', destroySocket);
  const tunnel = new Tunnel(client, open.upstream, opts, ctx, attempt);
  ctx.tunnels.add(tunnel);
  if (ctx.stopped) tunnel.destroy('shutdown');
  return tunnel;
}

/** The 'error' listener of a client socket before its tunnel exists: drop it (shared: no closure per socket). */
export function destroySocket(this: Socket): void {
  this.destroy();
}
