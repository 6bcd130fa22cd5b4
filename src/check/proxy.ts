import { canonicalIp, CidrSet, parseCidr } from '../net/ip.js';

/**
 * Which proxy check-network goes through: --proxy, else https_proxy /
 * HTTPS_PROXY, with no_proxy / NO_PROXY naming destinations reached directly
 * (curl's rules: `*`, a domain and its subdomains with or without a leading
 * dot, an optional `:port`, IP addresses and CIDRs).
 */

export interface ProxyUrl {
  host: string;
  port: number;
  /** `Proxy-Authorization` value, from user:password in the URL. */
  auth?: string;
  /** The URL without credentials, for output. */
  display: string;
}

export function parseProxyUrl(text: string): ProxyUrl {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw new Error(`bad proxy URL ${JSON.stringify(text)}`);
  }
  if (u.protocol !== 'http:') throw new Error(`proxy URL ${JSON.stringify(text)}: only http:// proxies are supported`);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = u.port ? Number(u.port) : 80;
  const auth = u.username
    ? `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}`
    : undefined;
  return { host, port, auth, display: `http://${u.host}` };
}

/** The proxy from the environment, as curl reads it for https URLs. */
export function proxyFromEnv(env: NodeJS.ProcessEnv): string | undefined {
  return env.https_proxy || env.HTTPS_PROXY || undefined;
}

export class NoProxy {
  private readonly all: boolean;
  private readonly names: { suffix: string; port?: number }[] = [];
  private readonly ranges: CidrSet;

  constructor(spec: string | undefined) {
    const entries = (spec ?? '').split(/[\s,]+/).filter(Boolean);
    this.all = entries.includes('*');
    const cidrs: string[] = [];
    for (const e of entries) {
      // `[v6]:port`, a bare IPv6 address or CIDR (more than one colon), or `name[:port]`.
      const m = e.startsWith('[') ? /^\[([^\]]+)\](?::(\d+))?$/.exec(e) : e.indexOf(':') !== e.lastIndexOf(':') ? [e, e] : /^(.*?)(?::(\d+))?$/.exec(e);
      if (!m) continue;
      const name = m[1]!.toLowerCase().replace(/^\*?\./, '');
      const ip = canonicalIp(name.split('/')[0]!);
      if (ip && m[2]) this.names.push({ suffix: ip.ip, port: Number(m[2]) });
      else if (ip) cidrs.push(name);
      else if (name) this.names.push({ suffix: name.replace(/\.$/, ''), port: m[2] ? Number(m[2]) : undefined });
    }
    // An entry that is not a valid CIDR matches nothing (curl ignores it too).
    this.ranges = new CidrSet(cidrs.flatMap((c) => {
      try {
        return [parseCidr(c)];
      } catch {
        return [];
      }
    }));
  }

  /** Should `host:port` (canonical host, IPv6 without brackets) bypass the proxy? */
  matches(host: string, port: number): boolean {
    if (this.all) return true;
    const ip = canonicalIp(host);
    if (ip) return this.ranges.has(ip.ip) || this.names.some((n) => n.suffix === ip.ip && (n.port === undefined || n.port === port));
    return this.names.some((n) => (host === n.suffix || host.endsWith(`.${n.suffix}`)) && (n.port === undefined || n.port === port));
  }
}
