import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readHostsFile, WHATSAPP_HOSTS, withSamples } from '../../src/check/hosts.js';
import { NoProxy, parseProxyUrl, proxyFromEnv } from '../../src/check/proxy.js';
import { exitCode, formatTable, type CheckResult } from '../../src/check/run.js';
import { parseConfig, DEFAULT_CONFIG } from '../../src/config/load.js';
import { readFileSync } from 'node:fs';
import { compilePattern, HostMatcher } from '../../src/policy/patterns.js';

describe('check-network host list', () => {
  it("every built-in name is allowed by the bundled policy on its ports, and samples stand for their patterns", () => {
    const config = parseConfig(readFileSync(DEFAULT_CONFIG, 'utf8'), DEFAULT_CONFIG);
    for (const h of WHATSAPP_HOSTS) {
      for (const port of h.ports) {
        const rule = config.policy.rules.find((r) => r.ports.has(port) && r.hosts?.matches(h.host));
        expect(rule, `${h.host}:${port}`).toBeDefined();
        if (h.pattern) expect(new HostMatcher([compilePattern(h.pattern)]).matching(h.host)).toBe(h.pattern);
      }
    }
    const replaced = withSamples(WHATSAPP_HOSTS, ['.*.cdn.whatsapp.net=MMG.cdn.whatsapp.net']);
    expect(replaced.find((h) => h.pattern === '.*.cdn.whatsapp.net')!.host).toBe('mmg.cdn.whatsapp.net');
    expect(() => withSamples(WHATSAPP_HOSTS, ['*.nope=a.nope'])).toThrow(/no wildcard pattern/);
  });

  it('reads HOST [PORT...] and HOST:PORT,PORT lines; bad lines name file and line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-hosts-'));
    const file = join(dir, 'hosts');
    writeFileSync(file, '# list\nA.example\nb.example 443 8443\nc.example:5222,443  # chat\n[::1]:443\n');
    expect(readHostsFile(file)).toEqual([
      { host: 'a.example', ports: [443] },
      { host: 'b.example', ports: [443, 8443] },
      { host: 'c.example', ports: [5222, 443] },
      { host: '[::1]', ports: [443] },
    ]);
    writeFileSync(file, 'ok.example\nbad.example 99999\n');
    expect(() => readHostsFile(file)).toThrow(`${file}:2: port out of range: 99999`);
  });
});

describe('proxy settings', () => {
  it('parses proxy URLs with credentials, and refuses what it cannot speak', () => {
    expect(parseProxyUrl('http://user:p%40ss@gw.internal:3128')).toEqual({
      host: 'gw.internal',
      port: 3128,
      auth: `Basic ${Buffer.from('user:p@ss').toString('base64')}`,
      display: 'http://gw.internal:3128',
    });
    expect(parseProxyUrl('127.0.0.1:3128')).toMatchObject({ host: '127.0.0.1', port: 3128, auth: undefined });
    expect(parseProxyUrl('http://[::1]:3128')).toMatchObject({ host: '::1', port: 3128 });
    expect(() => parseProxyUrl('https://gw:3128')).toThrow(/only http:\/\//);
    expect(proxyFromEnv({ HTTPS_PROXY: 'http://b:1' })).toBe('http://b:1');
    expect(proxyFromEnv({ https_proxy: 'http://a:1', HTTPS_PROXY: 'http://b:1' })).toBe('http://a:1');
    expect(proxyFromEnv({ http_proxy: 'http://c:1' })).toBeUndefined();
  });

  it("no_proxy follows curl's rules", () => {
    const n = new NoProxy('.internal.example, whatsapp.biz:443 10.0.0.0/8,::1');
    expect(n.matches('a.internal.example', 443)).toBe(true);
    expect(n.matches('internal.example', 443)).toBe(true);
    expect(n.matches('xinternal.example', 443)).toBe(false);
    expect(n.matches('docker.whatsapp.biz', 443)).toBe(true);
    expect(n.matches('docker.whatsapp.biz', 5222)).toBe(false);
    expect(n.matches('10.1.2.3', 443)).toBe(true);
    expect(n.matches('::1', 443)).toBe(true);
    expect(n.matches('g.whatsapp.net', 443)).toBe(false);
    expect(new NoProxy('*').matches('g.whatsapp.net', 443)).toBe(true);
    expect(new NoProxy(undefined).matches('g.whatsapp.net', 443)).toBe(false);
  });
});

describe('results', () => {
  const r = (result: CheckResult['result']): CheckResult => ({ result, short_description: 's', message: 'm', details: 'd', remediation: 'fix it' });
  it('exit codes: 0 all OK, 1 warnings only, 2 any problem or error', () => {
    expect(exitCode({ a: r('OK'), b: r('skipped') })).toBe(0);
    expect(exitCode({ a: r('OK'), b: r('warning') })).toBe(1);
    expect(exitCode({ a: r('warning'), b: r('problem') })).toBe(2);
    expect(exitCode({ a: r('error') })).toBe(2);
  });

  it('colours the result column only when asked (a TTY)', () => {
    expect(formatTable({ a: r('problem') }, false)).not.toContain('\x1b[');
    expect(formatTable({ a: r('problem') }, true)).toContain('\x1b[31mproblem');
  });
});
