import type { Config } from '../config/schema.js';
import { parseCidr } from '../net/ip.js';
import { Resolver } from '../net/resolve.js';
import { fetchList } from './fetch.js';
import { parseList } from './parse.js';

/**
 * `config check --fetch`: fetch every `url:` list and resolve every `dns:`
 * name once, as the gateway would at start (without cache or validators),
 * and say what each yields.
 */
export async function fetchSources(config: Config): Promise<{ lines: string[]; failed: number }> {
  const resolver = new Resolver({ hosts: config.dns.hosts, servers: config.dns.servers, timeoutMs: config.timeouts.dns });
  const jobs = config.policy.rules.flatMap((rule) =>
    rule.sources.map(async (source) => {
      try {
        let n: number;
        if (source.kind === 'url') {
          const got = await fetchList(source.url, { ca: config.ranges.ca, timeoutMs: config.ranges.timeout });
          if (got.status !== 'ok') throw new Error('unexpected 304 to an unconditional request');
          n = parseList(got.body, source.selector, source.text).length;
        } else {
          n = (await resolver.resolve(source.host)).map((a) => parseCidr(a)).length;
        }
        return { ok: true, line: `${rule.name}: ${source.text}: ${n} range${n === 1 ? '' : 's'}` };
      } catch (err) {
        return { ok: false, line: `${rule.name}: ${source.text}: FAILED: ${(err as Error).message}` };
      }
    }),
  );
  const results = await Promise.all(jobs);
  return { lines: results.map((r) => r.line), failed: results.filter((r) => !r.ok).length };
}
