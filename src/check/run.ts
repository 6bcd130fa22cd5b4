import type { CheckHost } from './hosts.js';
import { probe, proxyReachable, type Outcome, type ProbeOptions } from './probe.js';
import type { NoProxy, ProxyUrl } from './proxy.js';

/**
 * check-network's plan and verdicts: every host on each of its ports, in
 * bounded parallel, then the vendor's rule: 443 must work for every host;
 * 5222 failing while 443 works is a warning (Coreapp falls back to 443);
 * 443 failing is a problem whatever 5222 does. Results take the shape
 * wadebug's JSON output has: one object per check.
 */

export type ResultKind = 'OK' | 'problem' | 'warning' | 'skipped' | 'error';

export interface CheckResult {
  result: ResultKind;
  short_description: string;
  message: string;
  details: string;
  remediation: string;
}

export interface CheckOptions {
  /** Undefined: every host directly (--direct). */
  proxy?: ProxyUrl;
  noProxy: NoProxy;
  timeoutMs: number;
  parallel: number;
  /** Port checked → port dialled (--ports 443=8443). */
  portMap: ReadonlyMap<number, number>;
  /** Ports whose check includes a TLS handshake (443, by the port checked). */
  tlsPorts: ReadonlySet<number>;
  ca?: string[];
}

interface Planned {
  key: string;
  host: string;
  port: number;
  dial: number;
  proxy?: ProxyUrl;
  tls: boolean;
}

/** Run `fn` over `items`, at most `limit` at a time, results in order. */
async function pool<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

const REMEDY: Record<string, (p: Planned, o: Extract<Outcome, { ok: false }>) => string> = {
  proxy_unreachable: () => 'Check the proxy URL (--proxy, https_proxy) and that the gateway runs and is reachable from this host (firewall, port).',
  proxy_timeout: () => 'The proxy accepted the connection but did not answer CONNECT: check its logs; it may be overloaded or not an HTTP proxy.',
  proxy_auth: () => 'Give the proxy credentials in the URL: --proxy http://USER:PASSWORD@HOST:PORT (or in https_proxy).',
  proxy_denied: (p) => `Allow ${p.host}:${p.port} in the proxy's access rules.`,
  gateway_denied: (p, o) =>
    o.reason === 'special_range'
      ? `${p.host} resolves to a private or special address at the gateway: check the gateway's DNS (dns.hosts, dns.servers), or allow_ranges if that address is intended.`
      : o.reason === 'port_not_allowed'
        ? `Add port ${p.port} to the rule for ${p.host} in the gateway's policy (see: wa-egress policy explain ${p.host}:${p.port}).`
        : `Add ${p.host} (or its pattern) with port ${p.port} to a rule in the gateway's policy (see: wa-egress policy explain ${p.host}:${p.port}).`,
  upstream_unreachable: (p, o) =>
    o.reason === 'dns_failed'
      ? `The gateway allowed ${p.host} but cannot resolve it: check the gateway's DNS servers.`
      : `The gateway allowed ${p.host}:${p.port} but cannot reach it: check the gateway host's outbound firewall and routing for port ${p.port}.`,
  proxy_bad_answer: () => 'The proxy answered CONNECT in an unexpected way: check that the URL points at an HTTP proxy.',
  dns: (p) => `${p.host} does not resolve from this host: check DNS, or go through the gateway (--proxy).`,
  refused: (p) => `Nothing accepts connections on ${p.host}:${p.dial}, or a firewall rejects them: open outbound TCP ${p.port}.`,
  timeout: (p) => `No answer from ${p.host}:${p.port} in time: a firewall may drop the packets; open outbound TCP ${p.port} (or raise --timeout).`,
  unreachable: (p) => `Check routing and the firewall for outbound TCP ${p.port} to ${p.host}.`,
  tls: (p, o) =>
    /ALTNAME|HOSTNAME/.test(o.code ?? '')
      ? `The certificate is not valid for ${p.host}: something between here and the vendor (a TLS-inspecting proxy?) answers for it.`
      : `The certificate chain is not trusted: if a TLS-inspecting proxy sits in between, pass its CA with --ca FILE (Coreapp must trust it too); otherwise check the system clock and CA store.`,
};

function via(p: Planned, opts: CheckOptions): string {
  if (p.proxy) return `through the proxy ${p.proxy.display}`;
  return opts.proxy ? 'directly (no_proxy)' : 'directly';
}

function describe(p: Planned, o: Outcome, opts: CheckOptions): CheckResult {
  const route = via(p, opts);
  const dialled = p.dial !== p.port ? ` (dialled on port ${p.dial})` : '';
  const short_description = `TCP ${p.port}${p.tls ? ' and TLS' : ''} to ${p.host} ${route}`;
  if (o.ok) {
    const bits = [p.proxy ? `CONNECT ${p.host}:${p.dial} answered ${o.status}` : `connected to ${p.host}:${p.dial}`];
    if (o.tls) bits.push(`${o.tls.protocol}, certificate CN=${o.tls.subject || '(none)'} issued by ${o.tls.issuer || '(unknown)'}, valid until ${o.tls.validTo}`);
    bits.push(`${o.ms} ms`);
    return {
      result: 'OK',
      short_description,
      message: `${p.host}:${p.port} reached ${route}${p.tls ? `; TLS certificate valid for ${p.host.replace(/^\[(.*)\]$/, '$1')}` : ''}`,
      details: bits.join('; ') + dialled,
      remediation: '',
    };
  }
  return {
    result: 'problem',
    short_description,
    message: o.message,
    details: [`${route}${dialled}`, o.status !== undefined ? `status ${o.status}` : '', o.reason ? `reason ${o.reason}` : '', o.code ? `code ${o.code}` : '', `${o.ms} ms`]
      .filter(Boolean)
      .join('; '),
    remediation: REMEDY[o.kind]!(p, o),
  };
}

export async function checkNetwork(hosts: readonly CheckHost[], opts: CheckOptions): Promise<Record<string, CheckResult>> {
  const results: Record<string, CheckResult> = {};
  const plan: Planned[] = hosts.flatMap((h) =>
    h.ports.map((port) => {
      const bare = h.host.replace(/^\[(.*)\]$/, '$1');
      const direct = !opts.proxy || opts.noProxy.matches(bare, port);
      return { key: `${h.host}:${port}`, host: h.host, port, dial: opts.portMap.get(port) ?? port, proxy: direct ? undefined : opts.proxy, tls: opts.tlsPorts.has(port) };
    }),
  );
  let proxyDown = false;
  if (opts.proxy && plan.some((p) => p.proxy)) {
    const o = await proxyReachable(opts.proxy, opts.timeoutMs);
    proxyDown = !o.ok;
    results.proxy = o.ok
      ? { result: 'OK', short_description: `the proxy ${opts.proxy.display}`, message: `proxy ${opts.proxy.display} accepts connections`, details: `${o.ms} ms`, remediation: '' }
      : { result: 'problem', short_description: `the proxy ${opts.proxy.display}`, message: `proxy unreachable: ${o.message}`, details: o.code ?? '', remediation: REMEDY.proxy_unreachable!(plan[0]!, o) };
  }
  const probeOpts = (p: Planned): ProbeOptions => ({ proxy: p.proxy, timeoutMs: opts.timeoutMs, tls: p.tls, ca: opts.ca });
  const outcomes = await pool(plan, opts.parallel, async (p) => {
    if (p.proxy && proxyDown) return null;
    try {
      return await probe(p.host, p.dial, probeOpts(p));
    } catch (err) {
      return err as Error;
    }
  });
  const byKey = new Map(plan.map((p, i) => [p.key, outcomes[i]]));
  plan.forEach((p, i) => {
    const o = outcomes[i];
    if (o === null) {
      results[p.key] = {
        result: 'skipped',
        short_description: `TCP ${p.port} to ${p.host} through the proxy`,
        message: 'not checked: the proxy is unreachable',
        details: '',
        remediation: 'Fix the proxy check first.',
      };
      return;
    }
    if (o instanceof Error) {
      results[p.key] = { result: 'error', short_description: `TCP ${p.port} to ${p.host}`, message: `the check itself failed: ${o.message}`, details: o.stack ?? '', remediation: 'Report this as a bug in wa-egress check-network.' };
      return;
    }
    const r = describe(p, o, opts);
    // The vendor's rule: chat falls back from 5222 to 443.
    const https = byKey.get(`${p.host}:443`);
    if (p.port === 5222 && !o.ok && https && !(https instanceof Error) && https.ok) {
      r.result = 'warning';
      r.message += '; Coreapp falls back to 443 (chat works, less efficiently)';
    }
    results[p.key] = r;
  });
  return results;
}

/** 0 all OK (or skipped), 1 warnings only, 2 any problem or error. */
export function exitCode(results: Record<string, CheckResult>): number {
  const kinds = new Set(Object.values(results).map((r) => r.result));
  if (kinds.has('problem') || kinds.has('error')) return 2;
  return kinds.has('warning') ? 1 : 0;
}

const COLOURS: Record<ResultKind, string> = { OK: '32', warning: '33', problem: '31', error: '31', skipped: '2' };

/** A table for the terminal, with the remediation of every check that is not OK after it. */
export function formatTable(results: Record<string, CheckResult>, colour: boolean): string {
  const entries = Object.entries(results);
  const paint = (k: ResultKind, text: string) => (colour ? `\x1b[${COLOURS[k]}m${text}\x1b[0m` : text);
  const w = Math.max(5, ...entries.map(([k]) => k.length));
  const lines = [`${'CHECK'.padEnd(w)}  ${'RESULT'.padEnd(8)}  MESSAGE`];
  for (const [key, r] of entries) lines.push(`${key.padEnd(w)}  ${paint(r.result, r.result.padEnd(8))}  ${r.message}`);
  const fixes = entries.filter(([, r]) => r.remediation && r.result !== 'OK' && r.result !== 'skipped');
  if (fixes.length) {
    lines.push('', 'What to do:');
    for (const [key, r] of fixes) lines.push(`  ${key}: ${r.remediation}${r.details ? `\n    (${r.details})` : ''}`);
  }
  const count = (k: ResultKind) => entries.filter(([, r]) => r.result === k).length;
  lines.push(
    '',
    `${count('OK')} OK, ${count('warning')} warning${count('warning') === 1 ? '' : 's'}, ${count('problem')} problem${count('problem') === 1 ? '' : 's'}` +
      `${count('error') ? `, ${count('error')} errors` : ''}${count('skipped') ? `, ${count('skipped')} skipped` : ''}`,
  );
  return `${lines.join('\n')}\n`;
}
