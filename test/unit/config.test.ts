import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { strToU8, zipSync } from 'fflate';
import { DEFAULT_CONFIG, formatPath, loadConfigFile, parseConfig, summarize } from '../../src/config/load.js';
import { loadRangeFile, parseRangeText } from '../../src/config/ranges.js';
import { parseDuration, parseListenAddress } from '../../src/config/schema.js';
import { ConfigError, type ConfigIssue } from '../../src/errors.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');

let dir: string;
let file: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'wa-egress-config-'));
  file = join(dir, 'config.yaml');
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** YAML lines joined; keeps line numbers in the tests easy to count. */
const y = (...lines: string[]) => `${lines.join('\n')}\n`;

const HEAD = ['listen:', '  proxy: "127.0.0.1:3128"'];
/** A valid config with one rule; `extra` lines are appended (line 8 onwards). */
const withRule = (...extra: string[]) =>
  y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: ["a.example.com"]', '      ports: [443]', ...extra);

function configErrors(text: string, at = file): ConfigIssue[] {
  try {
    parseConfig(text, at);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const e = err as ConfigError;
    // Every issue is in the message, with its file, line and key path.
    for (const i of e.issues) {
      expect(e.message).toContain(i.message);
      if (i.line !== undefined) expect(e.message).toContain(`${at}:${i.line}:`);
      if (i.path) expect(e.message).toContain(`${i.path}: `);
    }
    return e.issues;
  }
  throw new Error('expected a ConfigError');
}

/** The single issue for `text`, which must name `path` at `line`. */
function oneError(text: string, path: string, line: number, message?: RegExp): ConfigIssue {
  const issues = configErrors(text);
  expect(issues, JSON.stringify(issues)).toHaveLength(1);
  const i = issues[0]!;
  expect(i.path).toBe(path);
  expect(i.line).toBe(line);
  expect(i.file).toBe(file);
  if (message) expect(i.message).toMatch(message);
  return i;
}

describe('parseConfig: unknown keys', () => {
  it('at the top level', () => {
    oneError(withRule('bogus: 1'), 'bogus', 8, /unknown key/);
  });
  it('in listen, in a rule, in dns, timeouts and audit', () => {
    const issues = configErrors(
      y(
        'listen:', //                      1
        '  proxy: "127.0.0.1:3128"', //   2
        '  sock: "127.0.0.1:1080"', //    3
        'policy:', //                      4
        '  rules:', //                     5
        '    - name: r', //                6
        '      hosts: [a.example.com]', // 7
        '      ports: [443]', //           8
        '      colour: red', //            9
        '  default: deny', //              10
        'dns:', //                         11
        '  resolver: x', //                12
        'timeouts:', //                    13
        '  read: 10s', //                  14
        'audit:', //                       15
        '  path: x.log', //                16
      ),
    );
    expect(issues.map((i) => [i.path, i.line, i.message])).toEqual([
      ['listen.sock', 3, expect.stringMatching(/^unknown key/)],
      ['policy.rules[0].colour', 9, expect.stringMatching(/^unknown key/)],
      ['policy.default', 10, expect.stringMatching(/^unknown key/)],
      ['dns.resolver', 12, expect.stringMatching(/^unknown key/)],
      ['timeouts.read', 14, expect.stringMatching(/^unknown key/)],
      ['audit.path', 16, expect.stringMatching(/^unknown key/)],
    ]);
  });
  it('a misspelt key in the second rule', () => {
    oneError(
      y(...HEAD, 'policy:', '  rules:', '    - name: a', '      hosts: [a.com]', '      ports: [443]', '    - name: b', '      host: [b.com]', '      hosts: [b.com]', '      ports: [443]'),
      'policy.rules[1].host',
      9,
      /unknown key/,
    );
  });
  it('column points at the key', () => {
    const i = oneError(withRule('extra: 1'), 'extra', 8);
    expect(i.column).toBe(1);
  });
});

describe('parseConfig: wrong types', () => {
  it.each([
    ['listen.proxy', y('listen:', '  proxy: 3128', 'policy: {}'), 2],
    ['policy.mode', y(...HEAD, 'policy:', '  mode: strict'), 4],
    ['policy.rules', y(...HEAD, 'policy:', '  rules: {}'), 4],
    ['policy.rules[0].hosts', y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: "a.example.com"', '      ports: [443]'), 6],
    ['policy.rules[0].ports[1]', y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: [a.com]', '      ports: [443, "x"]'), 7],
    ['policy.rules[0].ports', y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: [a.com]', '      ports: 443'), 7],
    ['policy.rules[0].name', y(...HEAD, 'policy:', '  rules:', '    - name: 5', '      hosts: [a.com]', '      ports: [443]'), 5],
    ['policy.rules[0].hosts[0]', y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: [5]', '      ports: [443]'), 6],
    ['policy.allow_ranges', y(...HEAD, 'policy:', '  allow_ranges: 5'), 4],
    ['dns.servers', y(...HEAD, 'policy: {}', 'dns:', '  servers: "1.1.1.1"'), 5],
    ['dns.hosts', y(...HEAD, 'policy: {}', 'dns:', '  hosts: ["a"]'), 5],
    ['timeouts.connect', y(...HEAD, 'policy: {}', 'timeouts:', '  connect: true'), 5],
    ['keepalive', y(...HEAD, 'policy: {}', 'keepalive: [1]'), 4],
    ['audit.file', y(...HEAD, 'policy: {}', 'audit:', '  file: 5'), 5],
    ['audit.file', y(...HEAD, 'policy: {}', 'audit:', '  file: ""'), 5],
    ['policy', y(...HEAD, 'policy: 5'), 3],
  ])('%s', (path, text, line) => {
    oneError(text, path, line);
  });

  it('the second rule’s bad port is named by index', () => {
    oneError(
      y(...HEAD, 'policy:', '  rules:', '    - name: a', '      hosts: [a.com]', '      ports: [443]', '    - name: b', '      hosts: [b.com]', '      ports: [443, 80, "https"]'),
      'policy.rules[1].ports[2]',
      10,
    );
  });
});

describe('parseConfig: CIDRs', () => {
  it.each([
    ['157.240.1.1/16', /host bits are set \(did you mean 157\.240\.0\.0\/16\?\)/],
    ['1.2.3.4/33', /prefix length must be 0-32/],
    ['0177.0.0.0/8', /not an IP address or CIDR/],
    ['not-a-cidr', /not an IP address or CIDR/],
    ['2001:db8::1/32', /did you mean 2001:db8::\/32/],
  ])('rule ip_ranges: %s', (cidr, message) => {
    oneError(y(...HEAD, 'policy:', '  rules:', '    - name: r', `      ip_ranges: ["10.0.0.0/8", "${cidr}"]`, '      ports: [443]'), 'policy.rules[0].ip_ranges[1]', 6, message);
  });
  it('allow_ranges', () => {
    oneError(y(...HEAD, 'policy:', '  allow_ranges:', '    - 127.0.0.1/32', '    - 127.0.0.1/8'), 'policy.allow_ranges[1]', 6, /host bits/);
  });
  it('"file:" is not accepted in allow_ranges', () => {
    oneError(y(...HEAD, 'policy:', '  allow_ranges: ["file:x.txt"]'), 'policy.allow_ranges[0]', 4, /not an IP address/);
  });
});

describe('parseConfig: patterns', () => {
  it.each([
    ['*', /would match every name/],
    ['**', /would match every name/],
    ['.*', /would match every name/],
    ['a*.*.cdn.com', /mixes/],
    ['a b.com', /not a valid hostname/],
    ['', /empty pattern/],
  ])('%j', (pattern, message) => {
    oneError(
      y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts:', '        - ok.example.com', `        - "${pattern}"`, '      ports: [443]'),
      'policy.rules[0].hosts[1]',
      8,
      message,
    );
  });
});

describe('parseConfig: rules', () => {
  it('missing ports', () => {
    oneError(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: [a.com]'), 'policy.rules[0].ports', 5);
  });
  it('empty ports', () => {
    oneError(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: [a.com]', '      ports: []'), 'policy.rules[0].ports', 7, /at least one port/);
  });
  it('ports 0, 65536, 1.5 and -443 are each rejected by index; 1, 443, 65535 pass', () => {
    const issues = configErrors(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: [a.com]', '      ports: [0, 65536, 1.5, -443, 443, 65535, 1]'));
    expect(issues.map((i) => [i.path, i.line])).toEqual([
      ['policy.rules[0].ports[0]', 7],
      ['policy.rules[0].ports[1]', 7],
      ['policy.rules[0].ports[2]', 7],
      ['policy.rules[0].ports[3]', 7],
    ]);
    expect(issues[0]!.message).toMatch(/1-65535/);
    expect(issues[1]!.message).toMatch(/1-65535/);
  });
  it('a rule without hosts and ip_ranges', () => {
    oneError(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      ports: [443]'), 'policy.rules[0]', 5, /hosts and\/or ip_ranges/);
  });
  it('a rule with empty hosts and ip_ranges', () => {
    oneError(y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: []', '      ip_ranges: []', '      ports: [443]'), 'policy.rules[0]', 5, /hosts and\/or ip_ranges/);
  });
  it('a rule without a name', () => {
    oneError(y(...HEAD, 'policy:', '  rules:', '    - hosts: [a.com]', '      ports: [443]'), 'policy.rules[0].name', 5);
  });
  it('duplicate rule names', () => {
    oneError(
      y(...HEAD, 'policy:', '  rules:', '    - name: r', '      hosts: [a.com]', '      ports: [443]', '    - name: r', '      hosts: [b.com]', '      ports: [443]'),
      'policy.rules[1].name',
      8,
      /duplicate/,
    );
  });
});

describe('parseConfig: durations', () => {
  it.each([
    ['10s', 10_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['250ms', 250],
    ['0', 0],
    ['"0"', 0],
    ['"10s"', 10_000],
    ['0s', 0],
  ])('idle: %s → %d ms', (text, ms) => {
    const c = parseConfig(withRule('timeouts:', `  idle: ${text}`), file);
    expect(c.timeouts.idle).toBe(ms);
  });

  it('all duration keys, with defaults', () => {
    const c = parseConfig(withRule('timeouts:', '  connect: 5m', '  handshake: 250ms', '  dns: 1h', 'keepalive: 0'), file);
    expect(c.timeouts).toEqual({ connect: 300_000, idle: 0, handshake: 250, dns: 3_600_000, user_timeout: 0 });
    expect(c.keepalive.idle).toBe(0);
    const d = parseConfig(withRule(), file);
    expect(d.timeouts).toEqual({ connect: 10_000, idle: 0, handshake: 10_000, dns: 5_000, user_timeout: 0 });
    expect(d.keepalive).toEqual({ idle: 30_000, interval: 10_000, count: 6 });
  });

  it.each([
    ['connect', '10x', /expected a duration/],
    ['connect', '1.5s', /expected a duration/],
    ['connect', '-1', /expected a duration/],
    ['connect', '10 s', /expected a duration/],
    ['connect', '1d', /expected a duration/],
    ['connect', '""', /expected a duration/],
    ['connect', '0', /at least 1 ms/],
    ['handshake', '0', /at least 1 ms/],
    ['dns', '0s', /at least 1 ms/],
    ['idle', '2.5', /expected a duration/],
    ['idle', 'forever', /expected a duration/],
  ])('timeouts.%s: %s', (key, value, message) => {
    oneError(withRule('timeouts:', `  ${key}: ${value}`), `timeouts.${key}`, 9, message);
  });

  it('keepalive: bad', () => {
    oneError(withRule('keepalive: 30 seconds'), 'keepalive', 8, /expected a duration/);
  });

  it('parseDuration', () => {
    expect(parseDuration('10s')).toBe(10_000);
    expect(parseDuration(' 5m ')).toBe(300_000);
    expect(parseDuration(250)).toBeNull();
    expect(parseDuration(0)).toBe(0);
    expect(parseDuration(-1)).toBeNull();
    expect(parseDuration(1.5)).toBeNull();
    expect(parseDuration('1.5s')).toBeNull();
    expect(parseDuration('s')).toBeNull();
  });
});

describe('parseConfig: listen addresses', () => {
  it.each([
    ['127.0.0.1:3128', '127.0.0.1', 3128],
    ['0.0.0.0:3128', '0.0.0.0', 3128],
    ['[::1]:3128', '::1', 3128],
    ['[::]:3128', '::', 3128],
    ['[0:0:0:0:0:0:0:1]:8080', '::1', 8080],
    ['127.0.0.1:0', '127.0.0.1', 0],
  ])('%s', (text, host, port) => {
    const c = parseConfig(y('listen:', `  proxy: "${text}"`, 'policy: {}'), file);
    expect(c.listen.proxy).toEqual({ host, port, text });
    expect(parseListenAddress(text)).toEqual({ host, port, text });
  });

  it.each(['localhost:3128', '::1:3128', '[127.0.0.1]:3128', '127.0.0.1', '127.0.0.1:', '127.0.0.1:70000', '0177.0.0.1:3128', '127.1:3128', ':3128', '[::1]', '[fe80::1%eth0]:3128', '127.0.0.1:port'])(
    'rejects %j',
    (text) => {
      oneError(y('listen:', `  proxy: "${text}"`, 'policy: {}'), 'listen.proxy', 2, /expected "ip:port"/);
      expect(parseListenAddress(text)).toBeNull();
    },
  );

  it('needs a listener', () => {
    oneError(y('listen: {}', 'policy: {}'), 'listen', 1, /at least one listener/);
  });
});

describe('parseConfig: dns', () => {
  it('dns.hosts: bad addresses, bad names and IP keys, each with its key path', () => {
    const issues = configErrors(
      withRule(
        'dns:', //                                           8
        '  hosts:', //                                       9
        '    "g.whatsapp.net": "not-an-ip"', //              10
        '    "x.example.com": ["1.2.3.4", "nope"]', //       11
        '    "bad host": "1.2.3.4"', //                      12
        '    "1.2.3.4": "1.2.3.4"', //                       13
        '    "y.example.com": "0177.0.0.1"', //              14
      ),
    );
    expect(issues.map((i) => [i.path, i.line]).sort()).toEqual(
      [
        ['dns.hosts["g.whatsapp.net"]', 10],
        ['dns.hosts["x.example.com"][1]', 11],
        ['dns.hosts["bad host"]', 12],
        ['dns.hosts["1.2.3.4"]', 13],
        ['dns.hosts["y.example.com"]', 14],
      ].sort(),
    );
    const byPath = new Map(issues.map((i) => [i.path, i.message]));
    expect(byPath.get('dns.hosts["g.whatsapp.net"]')).toMatch(/not an IP address/);
    expect(byPath.get('dns.hosts["x.example.com"][1]')).toMatch(/not an IP address: "nope"/);
    expect(byPath.get('dns.hosts["bad host"]')).toMatch(/bad hostname/);
    expect(byPath.get('dns.hosts["1.2.3.4"]')).toMatch(/IP address cannot be a key/);
    expect(byPath.get('dns.hosts["y.example.com"]')).toMatch(/not an IP address/);
  });

  it('dns.hosts: an empty address list', () => {
    oneError(withRule('dns:', '  hosts:', '    "z.example.com": []'), 'dns.hosts["z.example.com"]', 10);
  });

  it('dns.hosts keys are normalised like hostnames, values canonicalised', () => {
    const c = parseConfig(
      withRule(
        'dns:',
        '  hosts:',
        '    "G.WhatsApp.NET.": "127.0.0.1"',
        '    "bücher.de": ["::1", "0:0:0:0:0:0:0:1", "127.0.0.1"]',
        '    "ｗｗｗ．example．com": "::ffff:127.0.0.1"',
        '    "whats\u0430pp.net": "10.0.0.1"',
      ),
      file,
    );
    expect([...c.dns.hosts]).toEqual([
      ['g.whatsapp.net', ['127.0.0.1']],
      ['xn--bcher-kva.de', ['::1', '::1', '127.0.0.1']],
      ['www.example.com', ['::ffff:7f00:1']],
      ['xn--whatspp-6fg.net', ['10.0.0.1']],
    ]);
    expect(c.dns.hosts.has('whatsapp.net')).toBe(false);
  });

  it('dns.servers', () => {
    const c = parseConfig(withRule('dns:', '  servers: ["8.8.8.8", "1.1.1.1:53", "[::1]:5353", "::1"]'), file);
    expect(c.dns.servers).toEqual(['8.8.8.8', '1.1.1.1:53', '[::1]:5353', '::1']);
    oneError(withRule('dns:', '  servers: ["8.8.8.8", "dns.google"]'), 'dns.servers[1]', 9, /expected "ip"/);
  });

  it('defaults', () => {
    const c = parseConfig(withRule(), file);
    expect(c.dns.hosts.size).toBe(0);
    expect(c.dns.servers).toEqual([]);
    expect(c.policy.mode).toBe('enforce');
    expect(c.policy.allow_ranges.empty).toBe(true);
    expect(c.audit.file).toBe('-');
  });
});

describe('parseConfig: errors together, YAML errors, odd documents', () => {
  it('reports every problem at once, each with path and line', () => {
    const text = y(
      'listen:', //                            1
      '  proxy: "localhost:3128"', //          2
      'policy:', //                            3
      '  mode: enforced', //                   4
      '  rules:', //                           5
      '    - name: r', //                      6
      '      hosts: ["*", ok.com]', //         7
      '      ip_ranges: ["10.0.0.1/8"]', //    8
      '      ports: [443, 0]', //              9
      'timeouts:', //                          10
      '  connect: soon', //                    11
      'extra: 1', //                           12
    );
    const issues = configErrors(text);
    expect(issues.map((i) => [i.path, i.line]).sort()).toEqual(
      [
        ['listen.proxy', 2],
        ['policy.mode', 4],
        ['policy.rules[0].hosts[0]', 7],
        ['policy.rules[0].ip_ranges[0]', 8],
        ['policy.rules[0].ports[1]', 9],
        ['timeouts.connect', 11],
        ['extra', 12],
      ].sort(),
    );
    for (const i of issues) {
      expect(i.file).toBe(file);
      expect(i.line).toBeGreaterThan(0);
      expect(i.column).toBeGreaterThan(0);
    }
  });

  it('a YAML syntax error names the file and a line', () => {
    const issues = configErrors(y('listen:', '  proxy: "127.0.0.1:3128', 'policy: {}'));
    expect(issues.length).toBeGreaterThan(0);
    expect(issues[0]!.file).toBe(file);
    expect(issues[0]!.line).toBeGreaterThan(0);
  });

  it('a duplicate key is an error with its line', () => {
    const issues = configErrors(y(...HEAD, 'listen:', '  proxy: "127.0.0.1:3129"', 'policy: {}'));
    expect(issues[0]!.message).toMatch(/unique/);
    expect(issues[0]!.line).toBe(3);
  });

  it('an empty document lacks listen and policy', () => {
    expect(configErrors('').map((i) => i.path)).toEqual(['listen', 'policy']);
  });

  it('a document that is not a mapping', () => {
    const issues = configErrors('- a\n- b\n');
    expect(issues).toHaveLength(1);
    expect(issues[0]!.line).toBe(1);
  });

  it('report mode', () => {
    expect(parseConfig(y(...HEAD, 'policy:', '  mode: report'), file).policy.mode).toBe('report');
  });

  it('formatPath', () => {
    expect(formatPath(['policy', 'rules', 0, 'ports', 1])).toBe('policy.rules[0].ports[1]');
    expect(formatPath(['dns', 'hosts', 'g.whatsapp.net', 0])).toBe('dns.hosts["g.whatsapp.net"][0]');
    expect(formatPath([])).toBe('');
  });
});

describe('range files', () => {
  const rule = (range: string) => y(...HEAD, 'policy:', '  rules:', '    - name: r', `      ip_ranges: ["${range}"]`, '      ports: [443]');

  it('text with comments, blank lines, CRLF, a BOM and inline comments', () => {
    writeFileSync(
      join(dir, 'ranges.txt'),
      '\uFEFF# header\r\n\r\n10.0.0.0/8\r\n   \r\n  192.168.1.1  # one host\r\n2001:db8::/32\r\n#157.240.0.0/16\r\n\t157.240.1.60/31\n',
    );
    const c = parseConfig(rule('file:ranges.txt'), file);
    const r = c.policy.rules[0]!;
    expect(r.cidrs).toBe(4);
    expect(r.ranges!.has('10.1.2.3')).toBe(true);
    expect(r.ranges!.has('192.168.1.1')).toBe(true);
    expect(r.ranges!.has('192.168.1.2')).toBe(false);
    expect(r.ranges!.has('2001:db8::1')).toBe(true);
    expect(r.ranges!.has('157.240.0.1')).toBe(false);
    expect(r.ranges!.has('157.240.1.61')).toBe(true);
  });

  it('LF and CRLF give the same ranges', () => {
    const lines = ['# c', '1.0.0.0/24', '', '2.0.0.0/24', '3.0.0.1'];
    const lf = parseRangeText(lines.join('\n'), 'lf');
    const crlf = parseRangeText(lines.join('\r\n'), 'crlf');
    expect(crlf.map((c) => c.text)).toEqual(lf.map((c) => c.text));
    expect(lf.map((c) => c.text)).toEqual(['1.0.0.0/24', '2.0.0.0/24', '3.0.0.1']);
  });

  it('a bad line is reported with file name and line number', () => {
    writeFileSync(join(dir, 'bad.txt'), '# ok\n1.2.3.0/24\n\n1.2.3.4/24\n');
    const i = oneError(rule('file:bad.txt'), 'policy.rules[0].ip_ranges[0]', 6);
    expect(i.message).toContain(`${join(dir, 'bad.txt')}:4:`);
    expect(i.message).toMatch(/host bits are set/);
  });

  it('a bad line after CRLF lines keeps its line number', () => {
    writeFileSync(join(dir, 'bad-crlf.txt'), '1.0.0.0/24\r\n# x\r\n\r\nbogus\r\n');
    const i = oneError(rule('file:bad-crlf.txt'), 'policy.rules[0].ip_ranges[0]', 6);
    expect(i.message).toContain('bad-crlf.txt:4:');
    expect(i.message).toMatch(/"bogus" is not an IP address/);
  });

  it('a missing file', () => {
    const i = oneError(rule('file:nope.txt'), 'policy.rules[0].ip_ranges[0]', 6);
    expect(i.message).toContain(join(dir, 'nope.txt'));
    expect(i.message).toMatch(/ENOENT/);
  });

  it('the vendor zip (config/whatsapp_ips.zip) holds 229 CIDRs', () => {
    const cidrs = loadRangeFile(join(ROOT, 'config/whatsapp_ips.zip'));
    expect(cidrs).toHaveLength(229);
    expect(cidrs.every((c) => c.family === 4)).toBe(true);
    // The same list as the text fixture.
    const text = loadRangeFile(join(ROOT, 'test/fixtures/whatsapp_cidr_ipv4.txt'));
    expect(new Set(cidrs.map((c) => c.text))).toEqual(new Set(text.map((c) => c.text)));
  });

  it('a zip path relative to the config file, and an absolute one', () => {
    copyFileSync(join(ROOT, 'config/whatsapp_ips.zip'), join(dir, 'ips.zip'));
    expect(parseConfig(rule('file:ips.zip'), file).policy.rules[0]!.cidrs).toBe(229);
    expect(parseConfig(rule(`file:${join(ROOT, 'config/whatsapp_ips.zip')}`), file).policy.rules[0]!.cidrs).toBe(229);
  });

  it('a zip built here: several files, a folder, macOS metadata skipped', () => {
    writeFileSync(
      join(dir, 'built.zip'),
      zipSync({
        'lists/': {},
        'lists/a.txt': strToU8('# a\n1.0.0.0/24\n'),
        'b.txt': strToU8('# b\r\n2.0.0.0/24\r\n3.0.0.1\r\n2a03:2880::/29\r\n'),
        '__MACOSX/._b.txt': strToU8('\u0000\u0005binary junk'),
      }),
    );
    const c = parseConfig(rule('file:built.zip'), file);
    const r = c.policy.rules[0]!;
    expect(r.cidrs).toBe(4);
    for (const ip of ['1.0.0.1', '2.0.0.255', '3.0.0.1', '2a03:2880::1']) expect(r.ranges!.has(ip), ip).toBe(true);
    expect(r.ranges!.has('3.0.0.2')).toBe(false);
  });

  it('a bad line inside a zip names the zip, the entry and the line', () => {
    writeFileSync(join(dir, 'bad.zip'), zipSync({ 'ok.txt': strToU8('1.0.0.0/24\n'), 'x.txt': strToU8('1.0.0.0/24\n\n10.0.0.1/8\n') }));
    const i = oneError(rule('file:bad.zip'), 'policy.rules[0].ip_ranges[0]', 6);
    expect(i.message).toContain(`${join(dir, 'bad.zip')}!x.txt:3:`);
    expect(i.message).toMatch(/did you mean 10\.0\.0\.0\/8/);
  });

  it('a zip with no files', () => {
    writeFileSync(join(dir, 'empty.zip'), zipSync({}));
    const i = oneError(rule('file:empty.zip'), 'policy.rules[0].ip_ranges[0]', 6);
    expect(i.message).toMatch(/holds no files/);
  });

  it('a broken zip', () => {
    const good = zipSync({ 'a.txt': strToU8('1.0.0.0/24\n'.repeat(50)) });
    writeFileSync(join(dir, 'broken.zip'), good.subarray(0, 40));
    const i = oneError(rule('file:broken.zip'), 'policy.rules[0].ip_ranges[0]', 6);
    expect(i.message).toContain('broken.zip');
  });

  it('ranges from several sources add up in one rule', () => {
    writeFileSync(join(dir, 'one.txt'), '9.9.9.0/24\n');
    const c = parseConfig(
      y(...HEAD, 'policy:', '  rules:', '    - name: r', `      ip_ranges: ["157.240.0.0/16", "file:one.txt", "file:${join(ROOT, 'config/whatsapp_ips.zip')}"]`, '      ports: [443]'),
      file,
    );
    expect(c.policy.rules[0]!.cidrs).toBe(231);
    expect(c.policy.rules[0]!.ranges!.has('157.240.200.1')).toBe(true);
    expect(c.policy.rules[0]!.ranges!.has('9.9.9.9')).toBe(true);
  });
});

describe('config/default.yaml', () => {
  it('is the package default', () => {
    expect(DEFAULT_CONFIG).toBe(join(ROOT, 'config/default.yaml'));
  });

  it('loads: 2 rules, 13 host patterns, 229 CIDRs, ports 443 and 5222, 0.0.0.0:3128, audit on stdout', () => {
    const c = loadConfigFile(DEFAULT_CONFIG);
    expect(c.policy.rules).toHaveLength(2);
    expect(c.policy.rules.reduce((n, r) => n + r.patterns, 0)).toBe(13);
    expect(c.policy.rules.reduce((n, r) => n + r.cidrs, 0)).toBe(229);
    expect(c.policy.rules[0]!.name).toBe('whatsapp');
    expect([...c.policy.rules[0]!.ports].sort((a, b) => a - b)).toEqual([443, 5222]);
    expect([...c.policy.rules[1]!.ports]).toEqual([443]);
    expect(c.listen.proxy).toEqual({ host: '0.0.0.0', port: 3128, text: '0.0.0.0:3128' });
    expect(c.audit.file).toBe('-');
    expect(c.policy.mode).toBe('enforce');
    expect(c.timeouts.idle).toBe(0);
    expect(c.keepalive.idle).toBe(30_000);
    expect(c.policy.allow_ranges.empty).toBe(true);
    expect(summarize(c)).toBe('2 rules, 13 host patterns, 229 CIDRs, ports 443,5222; mode enforce; listen proxy 0.0.0.0:3128');
  });

  it('a missing config file is a ConfigError', () => {
    expect(() => loadConfigFile(join(dir, 'missing.yaml'))).toThrow(ConfigError);
    expect(() => loadConfigFile(join(dir, 'missing.yaml'))).toThrow(/cannot read: ENOENT/);
  });

  it('a relative audit file is resolved against the config file', () => {
    expect(parseConfig(withRule('audit:', '  file: audit.log'), file).audit.file).toBe(join(dir, 'audit.log'));
    expect(parseConfig(withRule('audit:', '  file: /var/log/x.log'), file).audit.file).toBe('/var/log/x.log');
  });
});
