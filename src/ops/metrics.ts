import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Audit } from '../audit.js';
import type { Config } from '../config/schema.js';
import { REASONS } from '../errors.js';
import {
  auditChannel,
  configChannel,
  connectionChannel,
  dialChannel,
  dnsChannel,
  rangeFeedChannel,
  type AuditEvent,
  type ConfigEvent,
  type ConnectionEvent,
  type DialEvent,
  type DnsEvent,
  type RangeFeedEvent,
} from '../events.js';
import type { Admission } from '../inbound/admission.js';
import { keepaliveMode } from '../native/sockopt.js';
import type { Tunnel } from '../tunnel.js';
import { configInForce } from './config-load.js';

/**
 * The Prometheus registry. It subscribes to the channels of events.ts (the
 * data path publishes, never imports prom-client) and reads a few gauges
 * from the gateway when scraped. Label values are bounded: listener and
 * rule names only from the configuration in force, reason codes from
 * errors.ts, fixed enums; anything else is counted as `other`.
 */

/** The audit writer's figures (Audit, or a cluster primary's sink). */
export type AuditWriterStats = Pick<Audit, 'stats' | 'writable'>;

/** What one registry counts: a single process has every part; a cluster's workers the gateway, its primary the rest. */
export interface MetricsParts {
  gateway?: Observed;
  audit?: AuditWriterStats;
  config?: boolean;
}

/** What the registry reads from the gateway at scrape time. */
export interface Observed {
  readonly config: Config;
  readonly tunnels: ReadonlySet<Tunnel>;
  readonly admission: Admission;
  /** Client connections open, per listener. */
  openConnections(): Iterable<[string, number]>;
}

const OTHER = 'other';
const REASON_CODES: ReadonlySet<string> = new Set(Object.keys(REASONS));
const CLOSE_REASONS: ReadonlySet<string> = new Set([
  'client_closed',
  'upstream_closed',
  'client_error',
  'upstream_error',
  'idle_timeout',
  'shutdown',
  'done',
  'policy_changed',
  'upstream_timeout',
  'client_timeout',
]);
const DECISIONS: Record<string, string> = { 'egress.allowed': 'allowed', 'egress.denied': 'denied', 'egress.failed': 'failed' };
const TUNNEL_PROTOS: ReadonlySet<string> = new Set(['connect', 'socks', 'tcp', 'transparent']);

/** Seconds: a DNS query or a dial (loopback to a slow far resolver). */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Seconds: tunnels live from a request to days (chat connections). */
const DURATION_BUCKETS = [0.1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 7 * 24 * 3600];

interface Names {
  listeners: ReadonlySet<string>;
  rules: ReadonlySet<string>;
}
const namesOf = new WeakMap<Config, Names>();

function names(config: Config): Names {
  let n = namesOf.get(config);
  if (!n) {
    const l = config.listen;
    const listeners = new Set<string>(l.forwards.map((f) => f.name));
    if (l.proxy) listeners.add('proxy');
    if (l.socks) listeners.add('socks');
    if (l.transparent) listeners.add('transparent');
    n = { listeners, rules: new Set(config.policy.rules.map((r) => r.name)) };
    namesOf.set(config, n);
  }
  return n;
}

function bounded(value: string | undefined, known: ReadonlySet<string>): string {
  if (value === undefined) return '';
  return known.has(value) ? value : OTHER;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly subscriptions: [string, (m: unknown) => void][] = [];
  /** Bytes of closed tunnels and requests, per listener; open tunnels are added at scrape time. */
  private readonly closedBytes = new Map<string, { up: number; down: number }>();

  /** A single process counts every part; a cluster's workers their gateway, its primary the rest. */
  constructor(parts: MetricsParts) {
    collectDefaultMetrics({ register: this.registry });
    if (parts.gateway) this.gateway(parts.gateway);
    if (parts.audit) this.auditWriter(parts.audit);
    if (parts.config) this.configLoads();
  }

  /** The data path: connections, decisions, closes, bytes, tunnels, DNS, dials, keepalive, range feeds. */
  private gateway(gw: Observed): void {
    const registers = [this.registry];
    const listener = (name: string | undefined) => bounded(name, names(gw.config).listeners);

    const accepted = new Counter({
      name: 'wa_egress_connections_accepted_total',
      help: 'Client connections accepted, per listener (before limits and policy)',
      labelNames: ['listener'],
      registers,
    });
    new Gauge({
      name: 'wa_egress_connections_open',
      help: 'Client connections open, per listener',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const [name, n] of gw.openConnections()) this.inc({ listener: listener(name) }, n);
      },
    });
    new Gauge({
      name: 'wa_egress_handshakes_in_progress',
      help: 'Connections that have not yet sent a complete request (limits.max_handshakes)',
      registers,
      collect() {
        this.set(gw.admission.handshakes);
      },
    });
    const decisions = new Counter({
      name: 'wa_egress_decisions_total',
      help: 'Audited decisions: allowed, denied (enforced or not) and failed, per listener, rule and reason',
      labelNames: ['listener', 'decision', 'rule', 'reason', 'enforced'],
      registers,
    });
    const closes = new Counter({
      name: 'wa_egress_closed_total',
      help: 'Tunnels and HTTP requests closed, per listener and close reason',
      labelNames: ['listener', 'close_reason'],
      registers,
    });
    const duration = new Histogram({
      name: 'wa_egress_tunnel_duration_seconds',
      help: 'How long tunnels (CONNECT, SOCKS, forward) were open',
      labelNames: ['listener'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    const closedBytes = this.closedBytes;
    new Counter({
      name: 'wa_egress_bytes_total',
      help: 'Bytes relayed, per listener: up (client to destination) and down; open tunnels count as they flow',
      labelNames: ['listener', 'direction'],
      registers,
      collect() {
        const sums = new Map<string, { up: number; down: number }>();
        for (const [name, b] of closedBytes) sums.set(name, { ...b });
        for (const t of gw.tunnels) {
          const name = listener(t.attempt.listener);
          const s = sums.get(name) ?? { up: 0, down: 0 };
          s.up += t.bytesUp;
          s.down += t.bytesDown;
          sums.set(name, s);
        }
        this.reset();
        for (const [name, s] of sums) {
          this.inc({ listener: name, direction: 'up' }, s.up);
          this.inc({ listener: name, direction: 'down' }, s.down);
        }
      },
    });
    new Gauge({
      name: 'wa_egress_tunnels_open',
      help: 'Tunnels open, per listener',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const name of names(gw.config).listeners) this.set({ listener: name }, 0);
        for (const t of gw.tunnels) this.inc({ listener: listener(t.attempt.listener) });
      },
    });
    const dns = new Histogram({
      name: 'wa_egress_dns_lookup_duration_seconds',
      help: 'DNS queries sent to a resolver (static and cached answers are not counted), by result',
      labelNames: ['result'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    const dial = new Histogram({
      name: 'wa_egress_dial_duration_seconds',
      help: 'Dials of a destination (all its checked addresses together), by result',
      labelNames: ['result'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    new Gauge({
      name: 'wa_egress_keepalive_mode',
      help: "TCP keepalive in force, 1 for its mode: native (the addon sets keepalive interval, count and user_timeout) or node (Node's, probes 1 s apart, 10 of them)",
      labelNames: ['mode'],
      registers,
      // Every worker has the same addon: one value, not their sum.
      aggregator: 'max',
      collect() {
        const mode = keepaliveMode();
        this.set({ mode }, 1);
        this.set({ mode: mode === 'native' ? 'node' : 'native' }, 0);
      },
    });
    const feeds = new Counter({
      name: 'wa_egress_range_feed_refreshes_total',
      help: 'Refreshes of url: and dns: ip_ranges entries, by rule, source and result (updated, unchanged, not_modified, failed)',
      labelNames: ['rule', 'source', 'result'],
      registers,
    });
    const FEED_RESULTS: ReadonlySet<string> = new Set(['updated', 'unchanged', 'not_modified', 'failed']);
    const FEED_SOURCES: ReadonlySet<string> = new Set(['url', 'dns']);
    this.on(rangeFeedChannel.name, (m) => {
      const e = m as RangeFeedEvent;
      feeds.inc({ rule: bounded(e.rule, names(gw.config).rules), source: bounded(e.source, FEED_SOURCES), result: bounded(e.result, FEED_RESULTS) });
    });
    this.on(connectionChannel.name, (m) => {
      const e = m as ConnectionEvent;
      if (e.open) accepted.inc({ listener: listener(e.listener) });
    });
    this.on(auditChannel.name, (m) => {
      const r = m as AuditEvent;
      const l = listener(r.listener);
      if (r.event === 'egress.closed') {
        closes.inc({ listener: l, close_reason: bounded(r.close_reason, CLOSE_REASONS) });
        const b = closedBytes.get(l) ?? { up: 0, down: 0 };
        b.up += r.bytes_up ?? 0;
        b.down += r.bytes_down ?? 0;
        closedBytes.set(l, b);
        if (TUNNEL_PROTOS.has(r.proto) && r.duration_ms !== undefined) duration.observe({ listener: l }, r.duration_ms / 1000);
        return;
      }
      decisions.inc({
        listener: l,
        decision: DECISIONS[r.event] ?? OTHER,
        rule: bounded(r.rule, names(gw.config).rules),
        reason: bounded(r.reason, REASON_CODES),
        enforced: r.enforced === undefined ? '' : String(r.enforced),
      });
    });
    this.on(dnsChannel.name, (m) => {
      const e = m as DnsEvent;
      dns.observe({ result: e.ok ? 'ok' : 'error' }, e.ms / 1000);
    });
    this.on(dialChannel.name, (m) => {
      const e = m as DialEvent;
      dial.observe({ result: e.ok ? 'ok' : 'error' }, e.ms / 1000);
    });
  }

  /** The audit writer: where this process writes the log. */
  private auditWriter(audit: AuditWriterStats): void {
    const registers = [this.registry];
    const auditStat = (name: string, help: string, key: keyof ReturnType<Audit['stats']>, counter: boolean) => {
      const collect = function (this: Gauge | Counter) {
        const v = audit.stats()[key];
        this.reset();
        this.inc(v);
      };
      if (counter) new Counter({ name, help, registers, collect });
      else new Gauge({ name, help, registers, collect });
    };
    auditStat('wa_egress_audit_records_written_total', 'Audit records written to the destination', 'written', true);
    auditStat('wa_egress_audit_records_waiting', 'Audit records waiting to be written', 'waitingLines', false);
    auditStat('wa_egress_audit_waiting_bytes', 'Bytes of audit records waiting to be written', 'waitingBytes', false);
    auditStat('wa_egress_audit_records_dropped_total', 'Audit records dropped because too much was waiting', 'dropped', true);
    auditStat('wa_egress_audit_file_replaced_total', 'Times the audit file path was found deleted or replaced (and reopened)', 'replaced', true);
    auditStat('wa_egress_audit_file_reopen_failures_total', 'Failed attempts to reopen a deleted or replaced audit file path', 'reopenFailures', true);
    new Gauge({
      name: 'wa_egress_audit_writable',
      help: '1 while the audit destination takes writes, 0 while it fails',
      registers,
      // A cluster's workers say what their primary told them: one 0 is the answer.
      aggregator: 'min',
      collect() {
        this.set(audit.writable ? 1 : 0);
      },
    });
  }

  /** Configuration loads, where they are made. */
  private configLoads(): void {
    const registers = [this.registry];
    // The configuration in force: from configChannel, starting from a load published before this registry existed.
    let inForce: ConfigEvent | undefined = configInForce();
    const loads = new Counter({
      name: 'wa_egress_config_loads_total',
      help: 'Configuration loads (start and reloads), by result: ok, invalid (refused by validation), error',
      labelNames: ['result'],
      registers,
    });
    for (const result of ['ok', 'invalid', 'error']) loads.inc({ result }, 0);
    new Gauge({
      name: 'wa_egress_config_info',
      help: 'The configuration in force: 1, labelled with the sha256 of its text and the files it names',
      labelNames: ['hash'],
      registers,
      collect() {
        this.reset();
        if (inForce?.hash) this.set({ hash: inForce.hash }, 1);
      },
    });
    new Gauge({
      name: 'wa_egress_config_loaded_timestamp_seconds',
      help: 'When the configuration in force was loaded (Unix time)',
      registers,
      collect() {
        if (inForce?.loadedAt) this.set(inForce.loadedAt);
      },
    });

    this.on(configChannel.name, (m) => {
      const e = m as ConfigEvent;
      if (e.result === 'ok') inForce = e;
      loads.inc({ result: e.result === 'ok' || e.result === 'invalid' || e.result === 'error' ? e.result : OTHER });
    });
  }

  private on(name: string | symbol, fn: (m: unknown) => void): void {
    subscribe(name, fn);
    this.subscriptions.push([String(name), fn]);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text (Prometheus text format). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Stop listening to the channels (the gateway's hot path is back to no subscriber). */
  close(): void {
    for (const [name, fn] of this.subscriptions) unsubscribe(name, fn);
    this.subscriptions.length = 0;
  }
}
