import { decideConnected } from '../decide.js';
import type { Gateway } from '../gateway.js';
import type { Logger } from '../log.js';
import { canonicalIp } from '../net/ip.js';
import type { Target } from '../policy/hostport.js';

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
    // A user the new configuration no longer has, or no longer allows from this source,
    // would be refused at login: its tunnel goes too (judged by the whole policy otherwise).
    const from = a.user !== undefined ? ctx.clients.usersFrom(tunnel.client.remoteAddress) : 'any';
    if (a.user !== undefined && (!ctx.clients.users.has(a.user) || (from !== 'any' && !from?.has(a.user)))) {
      checked++;
      ctx.audit.denied(a, { reason: 'auth_failed', dest_ip: tunnel.destIp, enforced: true, error: `user "${a.user}" may no longer connect from this address (clients.users, clients.allow)` });
      tunnel.destroy('policy_changed');
      closed++;
      continue;
    }
    const d = await decideConnected(ctx, target, tunnel.destIp, a.user);
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
