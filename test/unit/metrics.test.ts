import { describe, expect, it } from 'vitest';
import type { Audit } from '../../src/audit.js';
import { parseConfig } from '../../src/config/load.js';
import { auditChannel, configChannel, connectionChannel, dialChannel, dnsChannel, rangeFeedChannel } from '../../src/events.js';
import { Admission } from '../../src/inbound/admission.js';
import { Metrics, type MetricsParts, type Observed } from '../../src/ops/metrics.js';
import { parseProm } from '../integration/prom.js';

/** Label values stay bounded whatever is published: unknown names and codes become `other`. */

const config = parseConfig(
  JSON.stringify({
    listen: { proxy: '127.0.0.1:0', forwards: [{ name: 'chat', listen: '127.0.0.1:0', to: 'g.whatsapp.net:5222' }] },
    policy: { rules: [{ name: 'wa', hosts: ['g.whatsapp.net'], ports: [443] }] },
  }),
  '/tmp/c.yaml',
);

const audit = { stats: () => ({ written: 7, waitingLines: 2, waitingBytes: 300, dropped: 1, replaced: 2, reopenFailures: 3 }), writable: true } as unknown as Audit;

function observed(): Observed {
  return { config, tunnels: new Set(), admission: new Admission(() => config.limits), openConnections: () => [['proxy', 3]] };
}

/** Every part, as a single process counts. */
function parts(gw: Observed): MetricsParts {
  return { gateway: gw, audit, config: true };
}

describe('metrics labels', () => {
  it('maps a listener, rule, reason or close reason the configuration does not know to "other"', async () => {
    const m = new Metrics(parts(observed()));
    try {
      auditChannel.publish({ event: 'egress.denied', listener: 'proxy', proto: 'connect', reason: 'host_not_allowed', enforced: true });
      auditChannel.publish({ event: 'egress.denied', listener: 'evil.example', proto: 'connect', reason: 'made_up', rule: 'nope', enforced: false });
      auditChannel.publish({ event: 'egress.allowed', listener: 'chat', proto: 'tcp', rule: 'wa' });
      auditChannel.publish({ event: 'egress.closed', listener: 'chat', proto: 'tcp', bytes_up: 5, bytes_down: 9, duration_ms: 1500, close_reason: 'weird' });
      connectionChannel.publish({ listener: '10.0.0.1:4000', open: true });
      dnsChannel.publish({ ms: 12, ok: true });
      dialChannel.publish({ ms: 3, ok: false });
      configChannel.publish({ result: 'invalid' });
      rangeFeedChannel.publish({ rule: 'wa', source: 'url', result: 'updated', ranges: 10 });
      rangeFeedChannel.publish({ rule: 'nope', source: 'url', result: 'failed', ranges: 0 });
      const p = parseProm(await m.text());
      expect(p.get('wa_egress_range_feed_refreshes_total{rule="wa",source="url",result="updated"}')).toBe(1);
      expect(p.get('wa_egress_range_feed_refreshes_total{rule="other",source="url",result="failed"}')).toBe(1);
      expect(p.get('wa_egress_decisions_total{listener="proxy",decision="denied",rule="",reason="host_not_allowed",enforced="true"}')).toBe(1);
      expect(p.get('wa_egress_decisions_total{listener="other",decision="denied",rule="other",reason="other",enforced="false"}')).toBe(1);
      expect(p.get('wa_egress_decisions_total{listener="chat",decision="allowed",rule="wa",reason="",enforced=""}')).toBe(1);
      expect(p.get('wa_egress_closed_total{listener="chat",close_reason="other"}')).toBe(1);
      expect(p.get('wa_egress_bytes_total{listener="chat",direction="down"}')).toBe(9);
      expect(p.get('wa_egress_tunnel_duration_seconds_sum{listener="chat"}')).toBe(1.5);
      expect(p.get('wa_egress_connections_accepted_total{listener="other"}')).toBe(1);
      expect(p.get('wa_egress_connections_open{listener="proxy"}')).toBe(3);
      expect(p.get('wa_egress_dns_lookup_duration_seconds_count{result="ok"}')).toBe(1);
      expect(p.get('wa_egress_dial_duration_seconds_count{result="error"}')).toBe(1);
      expect(p.get('wa_egress_config_loads_total{result="invalid"}')).toBe(1);
      expect(p.get('wa_egress_audit_records_written_total')).toBe(7);
      expect(p.get('wa_egress_audit_records_waiting')).toBe(2);
      expect(p.get('wa_egress_audit_waiting_bytes')).toBe(300);
      expect(p.get('wa_egress_audit_records_dropped_total')).toBe(1);
      expect(p.get('wa_egress_audit_file_replaced_total')).toBe(2);
      expect(p.get('wa_egress_audit_file_reopen_failures_total')).toBe(3);
      // A reload's ok event replaces the configuration in force.
      configChannel.publish({ result: 'ok', hash: 'ab12', loadedAt: 1700000000.5 });
      const q = parseProm(await m.text());
      expect(q.get('wa_egress_config_info{hash="ab12"}')).toBe(1);
      expect([...q.keys()].filter((k) => k.startsWith('wa_egress_config_info'))).toHaveLength(1);
      expect(q.get('wa_egress_config_loaded_timestamp_seconds')).toBe(1700000000.5);
      expect(q.get('wa_egress_config_loads_total{result="ok"}')).toBe(1);
      for (const k of p.keys()) expect(k).not.toMatch(/evil|10\.0\.0\.1|made_up|nope|weird/);
    } finally {
      m.close();
    }
    // Closed: nothing listens any more.
    expect(auditChannel.hasSubscribers).toBe(false);
  });
});
