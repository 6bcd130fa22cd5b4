import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { Authenticator, failureDelay, parseBasic } from '../../src/access/auth.js';
import { ClientAccess, clientWarnings, sourceIp } from '../../src/access/clients.js';
import { hashPassword, parsePasswordHash, verifyPassword } from '../../src/access/password.js';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

/** clients: allow-lists, users, hashes and the authenticator, without sockets. */

// Cheap parameters: these tests are about behaviour, not strength.
const FAST = { N: 1024, r: 8, p: 1 };

function config(extra: Record<string, unknown>, listen: Record<string, unknown> = { proxy: '127.0.0.1:3128' }) {
  return parseConfig(
    stringify({ listen, policy: { rules: [{ name: 'chat', hosts: ['a.test'], ports: [443] }, { name: 'web', hosts: ['b.test'], ports: [443] }] }, ...extra }),
    '/nonexistent/config.yaml',
  );
}

function issues(extra: Record<string, unknown>, listen?: Record<string, unknown>): string[] {
  try {
    config(extra, listen);
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => `${i.path}: ${i.message}`);
    throw err;
  }
  return [];
}

describe('sourceIp', () => {
  it.each([
    ['10.1.2.3', '10.1.2.3'],
    ['::ffff:10.1.2.3', '10.1.2.3'],
    ['::ffff:a01:203', '10.1.2.3'],
    ['fe80::1%eth0', 'fe80::1'],
    ['2001:DB8::1', '2001:db8::1'],
    ['::1', '::1'],
    ['not-an-ip', null],
    [undefined, null],
  ])('%s → %s', (input, out) => {
    expect(sourceIp(input)).toBe(out);
  });
});

describe('ClientAccess', () => {
  it('admits loopback and the private ranges by default (Squid localnet), nothing else', () => {
    const a = new ClientAccess(config({}));
    for (const ip of ['127.0.0.1', '127.9.9.9', '::1', '10.0.0.1', '172.31.255.255', '192.168.1.1', '100.64.0.1', 'fd00::1', 'fe80::1', '::ffff:192.168.0.7']) {
      expect(a.admits(ip), ip).toBe(true);
    }
    for (const ip of ['8.8.8.8', '172.32.0.1', '100.128.0.1', '2001:db8::1', '::ffff:8.8.8.8', '192.0.2.1']) {
      expect(a.admits(ip), ip).toBe(false);
    }
    expect(a.authRequired).toBe(false);
  });

  it('0.0.0.0/0 and ::/0 open it', () => {
    const a = new ClientAccess(config({ clients: { allow: ['0.0.0.0/0', '::/0'] } }));
    expect(a.admits('8.8.8.8')).toBe(true);
    expect(a.admits('2001:db8::1')).toBe(true);
  });

  it('names the users allowed from a range; a forward listener admits only its own list or the entries without users', async () => {
    const hash = await hashPassword('pw', FAST);
    const a = new ClientAccess(
      config(
        {
          clients: {
            allow: ['127.0.0.1/32', { cidr: '10.1.0.0/16', users: ['ops'] }, { cidr: '10.1.2.0/24', users: ['coreapp'] }],
            users: [
              { name: 'coreapp', password_hash: hash },
              { name: 'ops', password_hash: hash },
            ],
          },
        },
        { proxy: '127.0.0.1:3128', forwards: [{ name: 'f', listen: '127.0.0.1:5222', to: 'a.test:443', clients: ['10.9.0.0/16'] }, { name: 'g', listen: '127.0.0.1:5223', to: 'a.test:443' }] },
      ),
    );
    expect(a.usersFrom('127.0.0.1')).toBe('any');
    expect([...(a.usersFrom('10.1.9.9') as Set<string>)]).toEqual(['ops']);
    expect([...(a.usersFrom('10.1.2.3') as Set<string>)].sort()).toEqual(['coreapp', 'ops']);
    expect(a.usersFrom('10.2.0.1')).toBeNull();
    expect(a.admits('10.1.9.9')).toBe(true);
    expect(a.admits('10.1.9.9', 'f')).toBe(false);
    expect(a.admits('10.9.1.1', 'f')).toBe(true);
    expect(a.admits('127.0.0.1', 'f')).toBe(false);
    expect(a.admits('127.0.0.1', 'g')).toBe(true);
    expect(a.admits('10.1.9.9', 'g')).toBe(false);
    expect(a.authRequired).toBe(true);
  });
});

describe('clients config', () => {
  it('names the key of an unknown user, an unknown rule, a bad hash and an empty list', async () => {
    const hash = await hashPassword('pw', FAST);
    expect(issues({ clients: { allow: [{ cidr: '10.0.0.0/8', users: ['nobody'] }] } })).toEqual(['clients.allow[0].users[0]: no user named "nobody" in clients.users']);
    expect(issues({ clients: { users: [{ name: 'coreapp', password_hash: hash, rules: ['chat', 'nope'] }] } })).toEqual([
      'clients.users[0].rules[1]: no policy rule named "nope"',
    ]);
    expect(issues({ clients: { users: [{ name: 'coreapp', password_hash: 'hunter2' }] } })[0]).toMatch(/^clients\.users\[0\]\.password_hash: expected "scrypt:/);
    expect(issues({ clients: { users: [{ name: 'a:b', password_hash: hash }] } })[0]).toMatch(/^clients\.users\[0\]\.name: /);
    expect(issues({ clients: { users: [{ name: 'x', password_hash: hash }, { name: 'x', password_hash: hash }] } })).toEqual([
      'clients.users[1].name: duplicate user name "x"',
    ]);
    expect(issues({ clients: { allow: [] } })[0]).toMatch(/^clients\.allow: an empty list admits no client/);
    expect(issues({ clients: { allow: ['10.0.0.1/8'] } })[0]).toMatch(/^clients\.allow\[0\]: .*host bits are set/);
    expect(issues({ clients: { allow: [{ cidr: '10.0.0.0/8', user: ['x'] }] } })).toEqual(['clients.allow[0].user: unknown key']);
    expect(issues({}, { proxy: '127.0.0.1:1', forwards: [{ name: 'f', listen: '127.0.0.1:2', to: 'a.test:443', clients: [{ cidr: '10.0.0.0/8', users: ['x'] }] }] })[0]).toMatch(
      /^listen\.forwards\[0\]\.clients\[0\]: forward listeners carry no credentials/,
    );
    expect(issues({ clients: { nope: 1 } })).toEqual(['clients.nope: unknown key']);
  });

  it('warns about an open list on a non-loopback listener without credentials', async () => {
    const open = { clients: { allow: ['0.0.0.0/0', '::/0'] } };
    expect(clientWarnings(config(open))).toEqual([]);
    expect(clientWarnings(config(open, { proxy: '0.0.0.0:3128' }))).toEqual([
      {
        path: ['listen', 'proxy'],
        message: 'listener "proxy" on 0.0.0.0:3128 serves any source (0.0.0.0/0, ::/0) without credentials: an open relay to every allowed destination',
      },
    ]);
    expect(clientWarnings(config({}, { proxy: '0.0.0.0:3128' }))).toEqual([]);
    const hash = await hashPassword('pw', FAST);
    const withUsers = { clients: { ...open.clients, users: [{ name: 'u', password_hash: hash }] } };
    expect(clientWarnings(config(withUsers, { socks: '[::]:1080', forwards: [{ name: 'f', listen: '0.0.0.0:5222', to: 'a.test:443' }] }))).toEqual([
      {
        path: ['listen', 'forwards', 0, 'listen'],
        message: 'listener "f" on 0.0.0.0:5222 serves any source (0.0.0.0/0, ::/0) without credentials: an open relay to every allowed destination',
      },
    ]);
  });
});

describe('password hashes', () => {
  it('round-trips with its parameters in the string', async () => {
    const h = await hashPassword('correct horse', FAST);
    expect(h).toMatch(/^scrypt:N=1024,r=8,p=1:[\w-]{22}:[\w-]{43}$/);
    const parsed = parsePasswordHash(h);
    expect(await verifyPassword('correct horse', parsed)).toBe(true);
    expect(await verifyPassword('correct horsf', parsed)).toBe(false);
    expect(await hashPassword('correct horse', FAST)).not.toBe(h); // fresh salt
  });

  it.each([
    ['plain', /never a plain password/],
    ['scrypt:N=1000,r=8,p=1:AAAAAAAAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', /power of two/],
    ['scrypt:N=2097152,r=8,p=1:AAAAAAAAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', /power of two from 2 to/],
    ['scrypt:N=1024,r=0,p=1:AAAAAAAAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', /^r must be/],
    ['scrypt:N=1024,r=8,p=99:AAAAAAAAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', /^p must be/],
  ])('refuses %s', (text, message) => {
    expect(() => parsePasswordHash(text)).toThrow(message);
  });
});

describe('Authenticator', () => {
  async function setup() {
    const hash = await hashPassword('right', FAST);
    const access = new ClientAccess(
      config({ clients: { allow: ['127.0.0.0/8', { cidr: '10.0.0.0/8', users: ['ops'] }], users: [{ name: 'coreapp', password_hash: hash }, { name: 'ops', password_hash: hash }] } }),
    );
    return { access, auth: new Authenticator() };
  }

  it('parses Basic credentials (the password may hold colons)', () => {
    expect(parseBasic(`Basic ${Buffer.from('u:p:q').toString('base64')}`)).toEqual({ user: 'u', password: 'p:q' });
    expect(parseBasic(`basic  ${Buffer.from('u:').toString('base64')} `)).toEqual({ user: 'u', password: '' });
    expect(parseBasic(`Basic ${Buffer.from('nocolon').toString('base64')}`)).toBeNull();
    expect(parseBasic('Bearer abc')).toBeNull();
  });

  it('verifies a credential once and then answers it from the cache', async () => {
    const { access, auth } = await setup();
    const header = `Basic ${Buffer.from('coreapp:right').toString('base64')}`;
    for (let i = 0; i < 5; i++) expect(await auth.basic(access, '127.0.0.1', header)).toEqual({ ok: true, user: 'coreapp' });
    // Many at once from one source: the first verifies, the rest find it cached.
    const many = await Promise.all(Array.from({ length: 10 }, () => auth.check(access, '127.0.0.5', 'ops', 'right')));
    expect(many.every((r) => r.ok)).toBe(true);
    expect(auth.verifications).toBe(2);
    expect(auth.failures('127.0.0.1')).toBe(0);
  });

  it('tells missing from wrong credentials, and names only configured users', async () => {
    const { access, auth } = await setup();
    expect(await auth.basic(access, '127.0.0.1', undefined)).toMatchObject({ ok: false, reason: 'auth_required' });
    expect(await auth.check(access, '127.0.0.1', 'coreapp', 'wrong')).toMatchObject({ ok: false, reason: 'auth_failed', user: 'coreapp' });
    const unknown = await auth.check(access, '127.0.0.1', 'my-password-typed-here', 'x');
    expect(unknown).toMatchObject({ ok: false, reason: 'auth_failed' });
    expect(unknown).not.toHaveProperty('user');
    expect(JSON.stringify(unknown)).not.toContain('my-password-typed-here');
  });

  it('refuses a user an allow entry does not list for the source, even with a cached credential', async () => {
    const { access, auth } = await setup();
    expect((await auth.check(access, '127.0.0.1', 'coreapp', 'right')).ok).toBe(true);
    expect(await auth.check(access, '10.1.1.1', 'coreapp', 'right')).toMatchObject({ ok: false, reason: 'auth_failed', user: 'coreapp' });
    expect((await auth.check(access, '10.1.1.1', 'ops', 'right')).ok).toBe(true);
  });

  it("answers one source's failures in order, each later one after a growing delay", async () => {
    const { access, auth } = await setup();
    const order: number[] = [];
    const attempts = Array.from({ length: 5 }, (_, i) => auth.check(access, '::ffff:127.0.0.9', 'coreapp', `wrong${i}`).then(() => order.push(i)));
    // Another source is not slowed by this one.
    expect((await auth.check(access, '127.0.0.8', 'coreapp', 'right')).ok).toBe(true);
    await Promise.all(attempts);
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect(auth.failures('127.0.0.9')).toBe(5);
    expect(auth.failures('127.0.0.8')).toBe(0);
    expect([1, 2, 3, 4, 5, 6, 20].map(failureDelay)).toEqual([0, 0, 0, 100, 200, 400, 5000]);
  });

  it('counts an IPv6 source by its /64', async () => {
    const { access, auth } = await setup();
    await auth.check(access, 'fd00::1', 'coreapp', 'wrong');
    await auth.check(access, 'fd00::2:3:4:5', 'coreapp', 'wrong');
    expect(auth.failures('fd00::ffff')).toBe(2);
    expect(auth.failures('fd00:0:0:1::1')).toBe(0);
  });
});
