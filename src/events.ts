import { channel } from 'node:diagnostics_channel';

/**
 * What the data path tells the rest of the process. Listeners, the tunnel,
 * the resolver, the dialler and the audit writer publish here and import
 * nothing from ops/; ops/ (metrics, logs of state changes) subscribes. A
 * channel with no subscriber costs one property check per publish, so the
 * hot path guards with `hasSubscribers` before building a message.
 *
 * Message shapes are part of the contract: add fields, never rename one.
 * Label-like fields carry only bounded values (listener and rule names from
 * the configuration, reason codes, fixed enums): never a host, an address
 * or a string a client sent.
 */

/** Every audit record, as written (the object handed to the writer). */
export interface AuditEvent {
  event: 'egress.denied' | 'egress.failed' | 'egress.allowed' | 'egress.closed';
  listener: string;
  proto: string;
  reason?: string;
  rule?: string;
  enforced?: boolean;
  bytes_up?: number;
  bytes_down?: number;
  duration_ms?: number;
  close_reason?: string;
}
export const auditChannel = channel('wa-egress:audit');

/** A client connection accepted (`open: true`) or closed by a listener. */
export interface ConnectionEvent {
  listener: string;
  open: boolean;
}
export const connectionChannel = channel('wa-egress:connection');

/** A DNS resolution that went to a resolver (static and cached answers are not timed). */
export interface DnsEvent {
  ms: number;
  ok: boolean;
}
export const dnsChannel = channel('wa-egress:dns');

/** One dial of the checked addresses of a destination (all attempts together). */
export interface DialEvent {
  ms: number;
  ok: boolean;
}
export const dialChannel = channel('wa-egress:dial');

/** A configuration load at start or on reload. */
export interface ConfigEvent {
  result: 'ok' | 'invalid' | 'error';
  /** sha256 of the configuration text and the files it names (ok only). */
  hash?: string;
  /** Unix time in seconds (ok only). */
  loadedAt?: number;
}
export const configChannel = channel('wa-egress:config');

/** The audit destination's state changes. */
export interface AuditSinkEvent {
  state: 'failing' | 'recovered' | 'dropped' | 'reopened' | 'reopen_failed' | 'replaced';
}
export const auditSinkChannel = channel('wa-egress:audit-sink');

/**
 * A range feed's attempt to refresh a `url:` or `dns:` entry of a rule.
 * `updated`: a new list is in force; `unchanged`: fetched, same list;
 * `not_modified`: the server answered 304; `failed`: fetch, parse or
 * validation failed and the last good copy stays in force.
 */
export interface RangeFeedEvent {
  rule: string;
  source: 'url' | 'dns';
  result: 'updated' | 'unchanged' | 'not_modified' | 'failed';
  /** Ranges of this entry now in force. */
  ranges: number;
  /** The update dropped more than `ranges.max_shrink` of the previous list (logged). */
  shrunk?: boolean;
}
export const rangeFeedChannel = channel('wa-egress:range-feed');
