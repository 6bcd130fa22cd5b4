import { REASONS, type Reason } from '../errors.js';
import { addPin, type Pins } from './pins.js';
import type { Explanation } from './explain.js';

/**
 * Policy test files: one expectation a line, checked by `policy test`.
 *
 *   allow g.whatsapp.net:5222
 *   allow graph.facebook.com:443 rule whatsapp
 *   deny  evil.example:443
 *   deny  10.1.2.3:443 reason special_range
 *   dns   157.240.0.53 media.cdn.whatsapp.net     # pin a DNS answer (hosts-file order)
 *
 * `#` starts a comment; blank lines are ignored. `deny` holds for any outcome
 * that does not let the connection through (a denial, or a failure such as
 * dns_failed); `reason` and `rule` narrow it. In report mode the policy's
 * enforce-mode verdict is what counts.
 */

export interface Expectation {
  line: number;
  text: string;
  verdict: 'allow' | 'deny';
  destination: string;
  reason?: Reason;
  rule?: string;
}

export interface TestFile {
  expectations: Expectation[];
  pins: Pins;
}

/** Parse a test file; throws an Error listing every bad line as `file:line: problem`. */
export function parseTestFile(text: string, file: string): TestFile {
  const expectations: Expectation[] = [];
  const pins: Pins = new Map();
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = i + 1;
    const body = raw.replace(/#.*/, '').trim();
    if (!body) return;
    const problem = (m: string) => problems.push(`${file}:${line}: ${m}`);
    const [verb, ...words] = body.split(/\s+/);
    if (verb === 'dns') {
      const p = words.length ? addPin(pins, words[0]!, words.slice(1)) : 'expected: dns ADDRESS NAME...';
      if (p) problem(p);
      return;
    }
    if (verb !== 'allow' && verb !== 'deny') return void problem(`expected "allow", "deny" or "dns", got ${JSON.stringify(verb)}`);
    const [destination, ...opts] = words;
    if (!destination) return void problem(`expected: ${verb} HOST:PORT`);
    const e: Expectation = { line, text: body, verdict: verb, destination };
    for (let k = 0; k < opts.length; k += 2) {
      const key = opts[k]!;
      const value = opts[k + 1];
      if (value === undefined) return void problem(`"${key}" needs a value`);
      if (key === 'reason') {
        if (!(value in REASONS)) return void problem(`unknown reason ${JSON.stringify(value)} (one of ${Object.keys(REASONS).join(', ')})`);
        if (verb === 'allow') return void problem('an allowed destination has no reason');
        e.reason = value as Reason;
      } else if (key === 'rule') {
        e.rule = value;
      } else {
        return void problem(`unknown option ${JSON.stringify(key)} (reason, rule)`);
      }
    }
    expectations.push(e);
  });
  if (problems.length) throw new Error(problems.join('\n'));
  return { expectations, pins };
}

/** Why the explanation contradicts the expectation, or undefined when it holds. */
export function mismatch(e: Expectation, x: Explanation): string | undefined {
  const got = x.policy;
  const allowed = got.verdict === 'allow';
  if (e.verdict === 'allow' && !allowed) return `expected allow, got ${got.verdict} (${got.reason})`;
  if (e.verdict === 'deny' && allowed) return `expected deny, got allow${x.rule ? ` (rule ${x.rule})` : ''}`;
  if (e.reason && got.reason !== e.reason) return `expected reason ${e.reason}, got ${got.reason}`;
  if (e.rule !== undefined) {
    const rule = allowed ? x.rule : (x.would_deny?.rule ?? x.rule);
    if (rule !== e.rule) return `expected rule ${e.rule}, got ${rule ?? 'none'}`;
  }
  return undefined;
}
