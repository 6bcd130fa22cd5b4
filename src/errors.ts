/**
 * Stable reason codes. One code names one outcome everywhere: the
 * `X-Wa-Egress-Reason` header, the audit record's `reason` and (later) metric
 * labels. Add codes; never rename one.
 */
export const REASONS = {
  // Policy denials (403): a value of the decision, not an exception.
  host_not_allowed: 403,
  port_not_allowed: 403,
  ip_not_allowed: 403,
  special_range: 403,
  loop: 403,
  /** A TLS connection that names no server (SNI) where `require_sni` asks for one (transparent listener). */
  sni_required: 403,
  /** A proxy user's request that only rules outside the user's `rules` allow. */
  user_not_allowed: 403,
  // Who may use the gateway (clients:).
  /** The source address is outside `clients.allow` (or the forward listener's `clients`). */
  client_not_allowed: 403,
  /** Proxy users are configured and the request carries no credentials. */
  auth_required: 407,
  /** Wrong, malformed or unknown credentials, or a user not allowed from this source. */
  auth_failed: 407,
  // The client's fault.
  bad_request: 400,
  handshake_timeout: 408,
  /** A request head over the size or header-count limit. */
  head_too_large: 431,
  /** Over the per-client connection limit. */
  client_limit: 429,
  // Failures of an allowed destination.
  dns_failed: 502,
  connect_failed: 502,
  connect_timeout: 504,
  /** The origin closed without a response, or sent one that cannot be relayed safely. */
  upstream_bad_response: 502,
  /** A parent proxy (`upstreams:`) refused, reset, or answered anything but success (407 aside). */
  upstream_failed: 502,
  /** A parent proxy did not connect or answer within its connect timeout. */
  upstream_timeout: 504,
  /** A parent proxy refused the gateway's credentials (HTTP 407, SOCKS5 authentication). */
  upstream_auth: 502,
  // The gateway's own state.
  audit_unavailable: 503,
  over_capacity: 503,
} as const;

export type Reason = keyof typeof REASONS;

/** Reasons that mean "the policy said no" (report mode lets these through). */
export const POLICY_REASONS: ReadonlySet<Reason> = new Set([
  'host_not_allowed',
  'port_not_allowed',
  'ip_not_allowed',
  'special_range',
  'sni_required',
  'user_not_allowed',
]);

export function httpStatus(reason: Reason): number {
  return REASONS[reason];
}

/** An error that carries a stable reason code. */
export class EgressError extends Error {
  readonly reason: Reason;
  constructor(reason: Reason, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EgressError';
    this.reason = reason;
  }
}

/** A configuration problem, located by key path and (when known) file line. */
export interface ConfigIssue {
  path: string;
  message: string;
  file?: string;
  line?: number;
  column?: number;
}

export class ConfigError extends Error {
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

export function formatIssue(i: ConfigIssue): string {
  const where = i.file ? `${i.file}${i.line ? `:${i.line}${i.column ? `:${i.column}` : ''}` : ''}: ` : '';
  return `${where}${i.path || '(root)'}: ${i.message}`;
}
