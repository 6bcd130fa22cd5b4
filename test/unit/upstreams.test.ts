import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { parseHostPort } from '../../src/policy/hostport.js';
import { parseUpstreamUrl } from '../../src/upstream/config.js';
import { RouteTable } from '../../src/upstream/routes.js';

/** Upstream URLs, route-table choice, and the config errors (which never show a password). */

const base = { listen: { proxy: '127.0.0.1:0' }, policy: { rules: [{ name: 'r', hosts: ['a.example.com'], ports: [443] }] } };
const config = (extra: Record<string, unknown>) => parseConfig(stringify({ ...base, ...extra }), '/tmp/c.yaml');
function errors(extra: Record<string, unknown>): string {
  try {
    config(extra);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a config error');
}

describe('parseUpstreamUrl', () => {
  it.each([
    ['http://user:p%40ss@parent.corp:3128', { kind: 'http', host: 'parent.corp', port: 3128, username: 'user', password: 'p@ss', display: 'http://user:***@parent.corp:3128' }],
    ['socks5h://Parent.Corp.:1080', { kind: 'socks5h', host: 'parent.corp', port: 1080, username: undefined }],
    ['socks5://[::1]:1080', { kind: 'socks5', host: '::1', port: 1080 }],
    ['http://10.0.0.1:8080/', { kind: 'http', host: '10.0.0.1', port: 8080 }],
    ['http://u:hunter2@p:80', { port: 80, display: 'http://u:***@p:80' }],
    ['socks5h://u@[::1]:1080', { host: '::1', display: 'socks5h://u@[::1]:1080' }],
  ])('%s', (url, want) => {
    expect(parseUpstreamUrl('p', url)).toMatchObject(want);
  });

  it.each([
    ['https://u:hunter2@p:443', /scheme must be http/],
    ['http://u:hunter2@p', /port is required/],
    ['http://u:hunter2@p:3128/path', /no path/],
    ['not a url hunter2', /not a URL/],
    ['http://u:hunter2@:3128', /not a URL|no host/],
  ])('refuses %s without showing the password', (url, why) => {
    let msg = '';
    try {
      parseUpstreamUrl('p', url);
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg).toMatch(why);
    expect(msg).not.toContain('hunter2');
  });
});

describe('route table', () => {
  const c = config({
    upstreams: { corp: { url: 'http://parent:3128' }, socks: { url: 'socks5h://parent:1080', connect_timeout: '2s' } },
    routes: [
      { match: { hosts: ['.*.cdn.example.com'] }, via: 'corp' },
      { match: { hosts: ['*.example.org'], ports: [5222] }, via: ['socks', 'corp'], resolve: 'local' },
      { match: { ports: [8443] }, via: 'direct' },
    ],
    default_route: ['corp', 'direct'],
  });
  const table = RouteTable.from(c);
  const hops = (t: string) => table.choose(parseHostPort(t)).hops.map((h) => (typeof h === 'string' ? h : h.name));

  it('first match wins; hosts use the policy pattern notation; ports and hosts both hold', () => {
    expect(hops('a.b.cdn.example.com:443')).toEqual(['corp']);
    expect(hops('x.example.org:5222')).toEqual(['socks', 'corp']);
    expect(table.choose(parseHostPort('x.example.org:5222')).resolve).toBe('local');
    expect(hops('x.example.org:443')).toEqual(['corp', 'direct']);
    expect(hops('anything.net:8443')).toEqual(['direct']);
    // Host patterns never match IP literals; the default applies.
    expect(hops('192.0.2.1:443')).toEqual(['corp', 'direct']);
    expect(c.upstreams.get('socks')!.connectTimeoutMs).toBe(2000);
  });

  it('no upstreams: every destination is direct', () => {
    expect(RouteTable.from(config({})).direct).toBe(true);
    expect(table.direct).toBe(false);
  });
});

describe('config errors', () => {
  it('names the key of an unknown upstream, in routes and default_route', () => {
    const msg = errors({ upstreams: { corp: { url: 'http://u:hunter2@p:3128' } }, routes: [{ match: { ports: [443] }, via: 'crop' }], default_route: ['corp', 'nope'] });
    expect(msg).toContain('routes[0].via: unknown upstream "crop" (known: corp');
    expect(msg).toContain('default_route[1]: unknown upstream "nope"');
    expect(msg).not.toContain('hunter2');
  });

  it('rejects a match with neither hosts nor ports, a bad pattern, a reserved name, unknown keys', () => {
    expect(errors({ upstreams: { p: { url: 'http://p:1' } }, routes: [{ match: {}, via: 'p' }] })).toContain('a match needs hosts and/or ports');
    expect(errors({ upstreams: { p: { url: 'http://p:1' } }, routes: [{ match: { hosts: ['*'] }, via: 'p' }] })).toContain('would match every name');
    expect(errors({ upstreams: { direct: { url: 'http://p:1' } } })).toContain('"direct" is reserved');
    expect(errors({ upstreams: { p: { url: 'http://p:1', user: 'x' } } })).toContain('upstreams.p.user');
    expect(errors({ upstreams: { p: { url: 'http://p:1', connect_timeout: 'soon' } } })).toContain('upstreams.p.connect_timeout');
  });
});
