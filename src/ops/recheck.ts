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
