import type { Config, RangesConfig } from '../config/schema.js';
import { rangeFeedChannel, type RangeFeedEvent } from '../events.js';
import type { Logger } from '../log.js';
import { CidrSet, parseCidr, type Cidr } from '../net/ip.js';
import type { Resolver } from '../net/resolve.js';
import { readCached, writeCached } from './cache.js';
import { fetchList, type Validators } from './fetch.js';
import { parseList } from './parse.js';
import type { RangeSource } from './source.js';

/**
 * Keeps the `url:` and `dns:` entries of the policy's rules current. Each
 * entry holds its last good list; when one changes, the rule's whole range
 * set is rebuilt and swapped in with one assignment (`rule.ranges`), so a
 * decision reads either the old set or the new one and the hot path pays
 * nothing. A failed refresh keeps the last good list in force, logs and
 * publishes on `rangeFeedChannel`. `url:` lists are cached in
 * `ranges.cache_dir`: a start without network uses the cached copy, and
 * the first request after it is conditional.
 */

type ConfigRule = Config['policy']['rules'][number];

interface Entry {
  rule: ConfigRule;
  source: RangeSource;
  current: Cidr[];
  validators: Validators;
  /** When `current` was fetched or resolved (ms since the epoch), 0 if never. */
  updatedAt: number;
  error?: string;
  timer?: NodeJS.Timeout;
}

export interface FeedStatus {
  rule: string;
  entry: string;
  ranges: number;
  updatedAt: number;
  error?: string;
}

/** Retry a failed refresh no later than this. */
const MAX_RETRY_MS = 60_000;
/** Re-resolve a `dns:` name this long after its cached answer expires. */
const TTL_MARGIN_MS = 50;

export class RangeFeeds {
  private readonly entries: Entry[];
  private readonly abort = new AbortController();
  private stopped = false;

  constructor(
    rules: readonly ConfigRule[],
    private readonly opts: RangesConfig,
    private readonly resolver: Resolver,
    private readonly log?: Logger,
  ) {
    this.entries = rules.flatMap((rule) => rule.sources.map((source) => ({ rule, source, current: [], validators: {}, updatedAt: 0 })));
  }

  get size(): number {
    return this.entries.length;
  }

  /**
   * Load every entry once (a cached list is used at once and refreshed in
   * the background; otherwise the first fetch or resolution is awaited,
   * bounded by its timeout), then keep refreshing until `stop`.
   */
  async start(): Promise<void> {
    await Promise.all(this.entries.map((e) => this.first(e)));
  }

  stop(): void {
    this.stopped = true;
    this.abort.abort();
    for (const e of this.entries) clearTimeout(e.timer);
  }

  /** The ranges the `url:`/`dns:` entries of `rule` currently hold. */
  cidrsOf(rule: string): Cidr[] {
    return this.entries.filter((e) => e.rule.name === rule).flatMap((e) => e.current);
  }

  status(): FeedStatus[] {
    return this.entries.map((e) => ({
      rule: e.rule.name,
      entry: e.source.text,
      ranges: e.current.length,
      updatedAt: e.updatedAt,
      ...(e.error && { error: e.error }),
    }));
  }

  private async first(e: Entry): Promise<void> {
    if (e.source.kind === 'url' && this.opts.cache_dir) {
      try {
        const cached = await readCached(this.opts.cache_dir, e.source.url);
        if (cached) {
          e.current = parseList(cached.body, e.source.selector, `${e.source.text} (cached)`);
          e.validators = cached.validators;
          e.updatedAt = cached.fetchedAt;
          this.apply(e.rule);
          this.log?.info({ rule: e.rule.name, entry: e.source.text, ranges: e.current.length, fetched_at: new Date(cached.fetchedAt).toISOString() }, 'range list loaded from cache');
          this.schedule(e, 0);
          return;
        }
      } catch (err) {
        this.log?.warn({ rule: e.rule.name, entry: e.source.text, err: (err as Error).message }, 'cached range list unusable');
      }
    }
    await this.refresh(e);
    if (e.updatedAt === 0) {
      this.log?.error({ rule: e.rule.name, entry: e.source.text }, 'range list unavailable: the rule runs without it until a refresh succeeds');
    }
  }

  private schedule(e: Entry, ms: number): void {
    if (this.stopped) return;
    clearTimeout(e.timer);
    e.timer = setTimeout(() => void this.refresh(e), ms).unref();
  }

  private async refresh(e: Entry): Promise<void> {
    try {
      if (e.source.kind === 'url') await this.refreshUrl(e, e.source);
      else await this.refreshDns(e, e.source.host);
    } catch (err) {
      if (this.stopped) return;
      e.error = (err as Error).message;
      this.publish(e, 'failed');
      this.log?.warn(
        { rule: e.rule.name, entry: e.source.text, err: e.error, ranges: e.current.length, ...(e.updatedAt && { since: new Date(e.updatedAt).toISOString() }) },
        'range list refresh failed; the last good copy stays in force',
      );
      const every = e.source.kind === 'url' ? this.opts.refresh : this.opts.dns_refresh;
      this.schedule(e, Math.min(every, MAX_RETRY_MS));
    }
  }

  private async refreshUrl(e: Entry, source: Extract<RangeSource, { kind: 'url' }>): Promise<void> {
    const got = await fetchList(source.url, { validators: e.validators, ca: this.opts.ca, timeoutMs: this.opts.timeout, signal: this.abort.signal });
    if (this.stopped) return;
    if (got.status === 'not_modified') {
      e.error = undefined;
      this.publish(e, 'not_modified');
    } else {
      const cidrs = parseList(got.body, source.selector, source.text);
      e.validators = got.validators;
      this.adopt(e, cidrs);
      if (this.opts.cache_dir) {
        await writeCached(this.opts.cache_dir, source.url, { body: got.body, validators: got.validators, fetchedAt: e.updatedAt }).catch((err: Error) =>
          this.log?.warn({ entry: source.text, err: err.message }, 'cannot write the range list cache'),
        );
      }
    }
    this.schedule(e, this.opts.refresh);
  }

  private async refreshDns(e: Entry, host: string): Promise<void> {
    const addresses = await this.resolver.resolve(host);
    if (this.stopped) return;
    this.adopt(e, addresses.map((a) => parseCidr(a)));
    // The resolver caches answers for their TTL (with dns.servers); the system resolver tells no TTL.
    const expires = this.resolver.expiresAt(host);
    this.schedule(e, expires !== undefined ? Math.max(0, expires - Date.now()) + TTL_MARGIN_MS : this.opts.dns_refresh);
  }

  /** Put a validated list in force for its entry and rebuild the rule's set. */
  private adopt(e: Entry, cidrs: Cidr[]): void {
    const key = (list: Cidr[]) => list.map((c) => `${c.family}:${c.start}-${c.end}`).sort().join(',');
    const first = e.updatedAt === 0;
    e.updatedAt = Date.now();
    e.error = undefined;
    if (!first && key(cidrs) === key(e.current)) return this.publish(e, 'unchanged');
    // Shrinking only ever denies more, so it is applied; a large drop is said out loud.
    const shrunk = !first && cidrs.length < e.current.length * (1 - this.opts.max_shrink);
    if (shrunk) {
      this.log?.warn(
        { rule: e.rule.name, entry: e.source.text, before: e.current.length, after: cidrs.length, max_shrink: this.opts.max_shrink },
        'range list shrank by more than ranges.max_shrink',
      );
    }
    const before = e.current.length;
    e.current = cidrs;
    this.apply(e.rule);
    this.publish(e, 'updated', shrunk);
    if (!first || e.source.kind === 'url') {
      this.log?.info({ rule: e.rule.name, entry: e.source.text, before, after: cidrs.length }, 'range list updated');
    }
  }

  private apply(rule: ConfigRule): void {
    const dynamic = this.entries.filter((x) => x.rule === rule).flatMap((x) => x.current);
    rule.ranges = new CidrSet([...rule.fixed, ...dynamic]);
  }

  private publish(e: Entry, result: RangeFeedEvent['result'], shrunk?: boolean): void {
    if (!rangeFeedChannel.hasSubscribers) return;
    const msg: RangeFeedEvent = { rule: e.rule.name, source: e.source.kind, result, ranges: e.current.length, ...(shrunk && { shrunk }) };
    rangeFeedChannel.publish(msg);
  }
}
