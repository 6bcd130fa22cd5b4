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

/** The keys a (wrapped) object schema accepts at `path`, for "did you mean" hints. */
export function knownKeys(schema: z.core.$ZodType, path: readonly PropertyKey[]): string[] {
  let t: z.core.$ZodType | undefined = unwrap(schema);
  for (const seg of path) {
    const def = t?._zod.def as { type: string; shape?: Record<string, z.core.$ZodType>; element?: z.core.$ZodType } | undefined;
    if (def?.type === 'array' && typeof seg === 'number') t = unwrap(def.element!);
    else if (def?.type === 'object' && typeof seg === 'string' && def.shape?.[seg]) t = unwrap(def.shape[seg]);
    else return [];
  }
  const def = t?._zod.def as { type: string; shape?: Record<string, unknown> } | undefined;
  return def?.type === 'object' ? Object.keys(def.shape ?? {}) : [];
}

/** Through defaults, optionals and transforms to the schema that holds the shape. */
function unwrap(t: z.core.$ZodType): z.core.$ZodType {
  for (let i = 0; i < 20; i++) {
    const def = t._zod.def as { type: string; in?: z.core.$ZodType; innerType?: z.core.$ZodType };
    if (def.type === 'pipe' && def.in) t = def.in;
    else if (def.innerType) t = def.innerType;
    else break;
  }
  return t;
}

/** The known key nearest to a misspelt one (at most two edits), if any. */
export function nearest(key: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const k of known) {
    const d = distance(key.toLowerCase(), k);
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best;
}

function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}
