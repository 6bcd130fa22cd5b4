import { decideAt, decideConnected } from '../decide.js';
import type { Gateway } from '../gateway.js';
import type { Logger } from '../log.js';
import { canonicalIp } from '../net/ip.js';
import type { Target } from '../policy/hostport.js';
import type { Attempt } from '../audit.js';
import type { EgressContext } from '../egress.js';
import type { Config } from '../config/schema.js';

/**
 * After a reload put `next` in force: with `reload.recheck_tunnels`, judge
 * the open tunnels again, and once more when the dials that were under way
 * are over: they were opened on the old policy's word (bounded by the timeouts).
 */
export async function recheckAfterReload(gw: Gateway, next: Config, log: Logger): Promise<void> {
  if (!next.reload.recheck_tunnels) return;
  await recheckTunnels(gw, log);
  if (gw.pending === 0) return;
  const { connect, dns } = next.timeouts;
  const dialMs = gw.context.routes?.longestDialMs(connect, dns) ?? connect;
  setTimeout(() => {
    if (!gw.draining) void recheckTunnels(gw, log).catch((err) => log.error({ err }, 'recheck of open tunnels failed'));
  }, dns + dialMs).unref();
}

/**
 * `reload.recheck_tunnels`: judge every open tunnel again by the policy now
 * in force, through the one decision path, with the address it is connected
 * to in place of a DNS answer (no query is made). A tunnel now denied gets
 * its `egress.denied` record (enforced, the new reason) and is closed with
 * `close_reason: policy_changed`; in report mode it stays open and the
 * record says `enforced: false`.
 */
export async function recheckTunnels(gw: Gateway, log?: Logger): Promise<{ checked: number; closed: number }> {
  const ctx = gw.context;
  let checked = 0;
  let closed = 0;
  for (const tunnel of [...gw.tunnels]) {
    const a = tunnel.attempt;
    if (a.dest_host === undefined || a.dest_port === undefined) continue;
    // Attempts hold the canonical host: a name, or an address without brackets.
    const ip = canonicalIp(a.dest_host);
    const target: Target = ip ? { host: ip.ip, family: ip.family, port: a.dest_port } : { host: a.dest_host, port: a.dest_port };
    // Who may connect is judged again too, as at accept and login: a source the
    // new `clients` no longer admits, or a user it no longer has (or allows from
    // this source; otherwise the user would be judged by the whole policy).
    const refused = clientRefusal(ctx, a, tunnel.client.remoteAddress);
    if (refused) {
      checked++;
      ctx.audit.denied(a, { ...refused, dest_ip: tunnel.destIp, enforced: true });
      tunnel.destroy('policy_changed');
      closed++;
      continue;
    }
    // A transparent tunnel judged by its address alone had no SNI: a rule's (or the policy's) require_sni applies to it.
    const d =
      a.proto === 'transparent' && ip ? await decideAt(ctx, target, tunnel.destIp, { nameless: true }) : await decideConnected(ctx, target, tunnel.destIp, a.user);
    checked++;
    if (!gw.tunnels.has(tunnel)) continue; // closed meanwhile
    if (d.wouldDeny) ctx.audit.denied(a, { ...d.wouldDeny, dest_ip: tunnel.destIp, enforced: false });
    if (d.verdict !== 'deny') continue;
    ctx.audit.denied(a, { reason: d.reason, rule: d.rule, range: d.range, dest_ip: tunnel.destIp, enforced: true });
    tunnel.destroy('policy_changed');
    closed++;
  }
  log?.info({ tunnels: checked, closed }, 'open tunnels judged by the new policy');
  return { checked, closed };
}

/** Why the new `clients` would refuse this tunnel's client or user now, if they would. */
function clientRefusal(ctx: EgressContext, a: Attempt, source: string | undefined): { reason: 'client_not_allowed' | 'auth_failed'; error: string } | undefined {
  // Forward and transparent listeners carry no credentials: judged by their own list (admission.ts).
  const forward = a.proto === 'tcp' || a.proto === 'transparent' ? a.listener : undefined;
  if (!ctx.clients.admits(source, forward)) return { reason: 'client_not_allowed', error: `source ${source ?? 'unknown'} is no longer admitted (clients)` };
  if (a.user === undefined) return undefined;
  const from = ctx.clients.usersFrom(source);
  if (ctx.clients.users.has(a.user) && (from === 'any' || from?.has(a.user))) return undefined;
  return { reason: 'auth_failed', error: `user "${a.user}" may no longer connect from this address (clients.users, clients.allow)` };
}
