import type { AuthFailure } from '../access/auth.js';
import type { Attempt } from '../audit.js';
import type { EgressContext } from '../egress.js';

/**
 * Proxy-Authorization for the HTTP listener (CONNECT, on either path, and
 * absolute-form requests): the request carries a user, or is answered 407
 * with the challenge below. Call only when `ctx.clients.authRequired`, so a
 * gateway without users pays nothing per request.
 */

export const PROXY_AUTHENTICATE = 'Basic realm="wa-egress"';

/** What the client is told: the audit record has the detail, the client learns nothing about which part was wrong. */
const ANSWER: Record<AuthFailure['reason'], string> = {
  auth_required: 'Proxy-Authorization: Basic is required',
  auth_failed: 'proxy authentication failed',
};

/** Null when the request may go on (its records now carry `user`); else the answer to give, the failure audited. */
export async function authorize(
  ctx: EgressContext,
  attempt: Attempt,
  source: string | undefined,
  header: string | undefined,
): Promise<{ reason: AuthFailure['reason']; message: string } | null> {
  const r = await ctx.auth.basic(ctx.clients, source, header);
  if (r.user !== undefined) attempt.user = r.user;
  if (r.ok) return null;
  ctx.audit.denied(attempt, { reason: r.reason, enforced: true, error: r.detail });
  return { reason: r.reason, message: ANSWER[r.reason] };
}
