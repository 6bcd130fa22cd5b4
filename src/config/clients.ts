import { z } from 'zod';
import { parsePasswordHash } from '../access/password.js';
import { parseCidr } from '../net/ip.js';

/**
 * `clients:` (who may use the listeners, and the proxy users) and a forward
 * listener's own `clients` list. Parsed and checked here; src/access/clients.ts
 * compiles the result once per configuration load.
 */

/** Squid's `localnet`, plus loopback: the sources served when `clients.allow` is absent. */
export const DEFAULT_CLIENTS = [
  '127.0.0.0/8',
  '::1/128',
  '10.0.0.0/8',
  '172.16.0.0/12',
  '192.168.0.0/16',
  '100.64.0.0/10',
  'fc00::/7',
  'fe80::/10',
] as const;

const clientCidr = (message?: string) =>
  z.string(message ? { error: message } : undefined).transform((v, ctx) => {
    try {
      return parseCidr(v);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

/** RFC 7617 splits user-id from password at the first colon; RFC 1929 allows 255 bytes. */
const USER_NAME = /^[A-Za-z0-9_.@+-]{1,64}$/;

const allowObject = z.strictObject({
  cidr: clientCidr(),
  users: z.array(z.string().min(1)).min(1, 'list at least one user, or write the CIDR alone for any client').optional(),
});

/** `"10.0.0.0/8"` or `{cidr: "10.1.0.0/16", users: [coreapp]}`. */
const allowEntry = z.unknown().transform((v, ctx): z.output<typeof allowObject> => {
  if (typeof v !== 'string' && (typeof v !== 'object' || v === null || Array.isArray(v))) {
    ctx.addIssue({ code: 'custom', message: `expected a CIDR or {cidr, users}, got ${JSON.stringify(v)}` });
    return z.NEVER;
  }
  const r = typeof v === 'string' ? clientCidr().safeParse(v) : allowObject.safeParse(v);
  if (r.success) return 'family' in r.data ? { cidr: r.data } : r.data;
  for (const issue of r.error.issues) ctx.addIssue(issue as Parameters<typeof ctx.addIssue>[0] & object);
  return z.NEVER;
});

const user = z.strictObject({
  name: z.string().regex(USER_NAME, 'user names are 1-64 letters, digits and "_", ".", "@", "+", "-" (no ":")'),
  password_hash: z.string().transform((v, ctx) => {
    try {
      return parsePasswordHash(v);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  }),
  rules: z.array(z.string().min(1)).min(1, 'list at least one rule, or leave the key out for all rules').optional(),
});

export const clientsSchema = z
  .strictObject({
    allow: z
      .array(allowEntry)
      .min(1, 'an empty list admits no client: leave the key out for the default (loopback and private ranges)')
      .default(() => DEFAULT_CLIENTS.map((c) => ({ cidr: parseCidr(c) }))),
    users: z
      .array(user)
      .default([])
      .superRefine((users, ctx) => {
        const seen = new Set<string>();
        users.forEach((u, i) => {
          if (seen.has(u.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate user name "${u.name}"` });
          seen.add(u.name);
        });
      }),
  })
  .prefault({});

/** `listen.forwards[].clients`: CIDRs only, since a forward connection carries no credentials. */
export const forwardClients = z
  .array(clientCidr('forward listeners carry no credentials: list CIDRs ("10.0.0.0/8"), not users'))
  .min(1, 'an empty list admits no client: leave the key out to use clients.allow')
  .optional();

export type ClientsConfig = z.output<typeof clientsSchema>;

/** Names that must exist: every user an allow entry lists, every rule a user lists. */
export function checkClientRefs(c: { clients: ClientsConfig; policy: { rules: readonly { name: string }[] } }, ctx: z.RefinementCtx): void {
  const users = new Set(c.clients.users.map((u) => u.name));
  const rules = new Set(c.policy.rules.map((r) => r.name));
  c.clients.allow.forEach((e, i) =>
    e.users?.forEach((name, j) => {
      if (!users.has(name)) ctx.addIssue({ code: 'custom', path: ['clients', 'allow', i, 'users', j], message: `no user named "${name}" in clients.users` });
    }),
  );
  c.clients.users.forEach((u, i) =>
    u.rules?.forEach((name, j) => {
      if (!rules.has(name)) ctx.addIssue({ code: 'custom', path: ['clients', 'users', i, 'rules', j], message: `no policy rule named "${name}"` });
    }),
  );
}
