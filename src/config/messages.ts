import type { z } from 'zod';

/**
 * Schema errors in the project's words: what the key expects, never zod's
 * own text. Custom issues raised by the schema's transforms keep their
 * messages; this map only words the generic ones (wrong type, missing key,
 * not one of the choices, too short).
 */

/** What a required key holds, by key path with list indexes written `[]`. */
const REQUIRED: Record<string, string> = {
  listen: 'required: the listen section, with at least one of listen.proxy, listen.socks or listen.forwards',
  policy: 'required: the policy section, with policy.rules listing the destinations clients may reach',
  'policy.rules[].name': 'required: a name for the rule (it is named in audit records)',
  'policy.rules[].ports': 'a rule needs ports: the destination ports it covers, e.g. [443]',
  'listen.forwards[].name': 'required: a name for the forward listener (it is named in audit records)',
  'listen.forwards[].listen': 'required: the address the forward listener binds, "ip:port"',
  'listen.forwards[].to': 'required: the "host:port" every connection of this listener goes to',
};

const KINDS: Record<string, string> = {
  object: 'a mapping of keys',
  record: 'a mapping of keys',
  array: 'a list',
  string: 'text',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
};

function kindOf(input: unknown): string {
  if (input === null) return 'nothing (null)';
  if (Array.isArray(input)) return 'a list';
  if (typeof input === 'object') return 'a mapping';
  if (typeof input === 'string') return `text ${JSON.stringify(input)}`;
  return `${typeof input === 'boolean' ? '' : `${typeof input} `}${String(input)}`;
}

/** The key path with every list index replaced by `[]`. */
function shape(path: readonly PropertyKey[] | undefined): string {
  let out = '';
  for (const p of path ?? []) out += typeof p === 'number' ? '[]' : out ? `.${String(p)}` : String(p);
  return out;
}

export function configErrorMap(iss: z.core.$ZodRawIssue): string | undefined {
  switch (iss.code) {
    case 'invalid_type': {
      const expected = KINDS[iss.expected] ?? iss.expected;
      if (iss.input === undefined) return REQUIRED[shape(iss.path)] ?? `required: expected ${expected}`;
      return `expected ${expected}, got ${kindOf(iss.input)}`;
    }
    case 'invalid_value':
      return `expected one of ${iss.values.map((v) => JSON.stringify(v)).join(', ')}, got ${kindOf(iss.input)}`;
    case 'too_small':
      if (iss.origin === 'string') return 'must not be empty';
      if (iss.origin === 'array') return `needs at least ${String(iss.minimum)} entr${iss.minimum === 1 ? 'y' : 'ies'}`;
      return `must be at least ${String(iss.minimum)}`;
    case 'too_big':
      return `must be at most ${String(iss.maximum)}`;
    case 'invalid_union':
      return `not a valid value: got ${kindOf(iss.input)}`;
    case 'invalid_format':
      return `not in the expected format, got ${kindOf(iss.input)}`;
    case 'invalid_key':
      return 'not a valid key';
    default:
      return undefined;
  }
}
