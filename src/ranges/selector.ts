/**
 * The selector of a JSON range feed: a small JSONPath subset, enough for
 * cloud vendors' feeds, with nothing to evaluate.
 *
 *   $                  the document
 *   .name  ['name']    a member of an object
 *   [*]  .*            every element of an array (every member of an object)
 *   [N]                one element of an array
 *   [?name=value]      the elements that are objects whose `name` is the string `value`
 *   A|B                the values of A, then those of B
 *
 * e.g. `$.prefixes[?service=CLOUDFRONT].ip_prefix|$.ipv6_prefixes[*].ipv6_prefix`.
 * Every value selected must be a string (a CIDR or address) or an array of strings.
 */

type Step = { key: string } | { all: true } | { index: number } | { where: string; equals: string };

export interface Selector {
  text: string;
  paths: Step[][];
}

const STEP = /^(?:\.([A-Za-z_$][\w$-]*)|\.\*|\[\*\]|\[(\d+)\]|\['([^']*)'\]|\["([^"]*)"\]|\[\?([A-Za-z_$][\w$-]*)=([^\]]*)\])/;

/** Parse a selector; throws an Error naming the position that is wrong. */
export function parseSelector(text: string): Selector {
  const paths = text.split('|').map((part) => {
    const p = part.trim();
    if (!p.startsWith('$')) throw new Error(`selector "${p}" must start with "$"`);
    const steps: Step[] = [];
    let rest = p.slice(1);
    while (rest.length) {
      const m = STEP.exec(rest);
      if (!m) throw new Error(`selector "${p}": cannot read "${rest}" (expected .name, ['name'], [*], .*, [N] or [?name=value])`);
      if (m[1] !== undefined) steps.push({ key: m[1] });
      else if (m[2] !== undefined) steps.push({ index: Number(m[2]) });
      else if (m[3] !== undefined || m[4] !== undefined) steps.push({ key: (m[3] ?? m[4])! });
      else if (m[5] !== undefined) steps.push({ where: m[5], equals: m[6]! });
      else steps.push({ all: true });
      rest = rest.slice(m[0].length);
    }
    return steps;
  });
  return { text, paths };
}

/** The strings a selector reaches in a parsed document; throws on a non-string value. */
export function select(doc: unknown, selector: Selector): string[] {
  const out: string[] = [];
  for (const path of selector.paths) {
    let values: unknown[] = [doc];
    for (const step of path) values = values.flatMap((v) => apply(v, step));
    for (const v of values) {
      if (typeof v === 'string') out.push(v);
      else if (Array.isArray(v) && v.every((x) => typeof x === 'string')) out.push(...(v as string[]));
      else throw new Error(`selector ${selector.text} reached a value that is not a string: ${JSON.stringify(v)?.slice(0, 80)}`);
    }
  }
  return out;
}

function apply(v: unknown, step: Step): unknown[] {
  if (v === null || typeof v !== 'object') return [];
  if ('key' in step) return Array.isArray(v) || !(step.key in v) ? [] : [(v as Record<string, unknown>)[step.key]];
  if ('index' in step) return Array.isArray(v) && step.index < v.length ? [v[step.index]] : [];
  if ('all' in step) return Array.isArray(v) ? v : Object.values(v);
  if (!Array.isArray(v)) return [];
  return v.filter((e) => e !== null && typeof e === 'object' && (e as Record<string, unknown>)[step.where] === step.equals);
}
