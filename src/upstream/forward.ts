import type { EgressOpen } from '../egress.js';
import type { Reason } from '../errors.js';

/**
 * Absolute-form HTTP through an HTTP parent: the request line keeps the
 * absolute URL the policy judged, and the parent's Proxy-Authorization is
 * added (the client's Proxy-* headers are already gone: headers.ts). Over a
 * direct connection or a tunnel (CONNECT, SOCKS) the request is origin-form.
 */
export function upstreamRequest(open: EgressOpen, url: { authority: string; path: string }): { path: string; headers: string[] } {
  if (!open.parentForward) return { path: url.path, headers: [] };
  return { path: `http://${url.authority}${url.path}`, headers: open.parentForward.headers };
}

/** A parent's own refusal of a forwarded request (407: our credentials), which the client must not see as its own. */
export function parentRefusal(open: EgressOpen, status: number | undefined): { reason: Reason; error: string } | undefined {
  if (!open.parentForward || status !== 407) return undefined;
  return { reason: 'upstream_auth', error: `upstream ${open.via}: the parent answered 407` };
}
