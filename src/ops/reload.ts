import { summarize } from '../config/load.js';
import { warnings } from '../config/preflight.js';
import { keepAliveSettings, type Config } from '../config/schema.js';
import { ConfigError, formatIssue } from '../errors.js';
import type { Gateway } from '../gateway.js';
import type { Logger } from '../log.js';
import { keepaliveMode } from '../native/sockopt.js';
import { describeKeepAlive, keepAliveWarning } from '../net/keepalive.js';
import { filesOf, loadConfig, publishConfigLoad, type LoadedConfig } from './config-load.js';
import { recheckAfterReload } from './recheck.js';
import { FileWatch, fingerprints } from './watch.js';

/**
 * Hot reload: on SIGHUP, and with `reload.watch` when the config file or a
 * file it names changes, the whole configuration is read and validated as
 * `config check` does and, if valid, put in force (Gateway.apply). An
 * invalid one is logged problem by problem and the running configuration
 * stays. Reloads run one at a time; one asked for during another runs after
 * it. Nothing here throws to the caller: a reload never ends the process.
 */

export type ReloadTrigger = 'SIGHUP' | 'watch';

/** What a reload puts a validated configuration in force in: one gateway, or a cluster's workers. */
export interface ReloadTarget {
  /** Put it in force; resolves with the problems (already logged), never throws for them. */
  apply(next: Loaded): Promise<string[]>;
  /** Once the reload is logged: `reload.recheck_tunnels`. */
  settle?(next: Config): Promise<void>;
}

type Loaded = ReturnType<typeof loadConfig>;

/** The gateway of this process as the target. */
export function gatewayTarget(gw: Gateway, log: Logger): ReloadTarget {
  return { apply: (next) => gw.apply(next.config), settle: (next) => recheckAfterReload(gw, next, log) };
}

export class Reloader {
  private running: Promise<void> | undefined;
  private queued: ReloadTrigger | undefined;
  private watch: FileWatch | undefined;
  private stopped = false;

  constructor(
    private readonly target: ReloadTarget,
    private loaded: LoadedConfig,
    private readonly log: Logger,
    /** What the gateway does not own and a reload changes too (the admin listener); logs its own errors. */
    private readonly applied?: (next: Config) => Promise<void>,
  ) {
    this.rewatch();
  }

  /** The configuration in force, as loaded. */
  get current(): LoadedConfig {
    return this.loaded;
  }

  /** Ask for a reload; resolves when it (and any queued after it) is done. */
  request(trigger: ReloadTrigger): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      // A SIGHUP outranks a watch event: it reloads even an unchanged file.
      if (this.queued !== 'SIGHUP') this.queued = trigger;
      return this.running;
    }
    // Started on a later tick, so `running` is set before any of it runs.
    this.running = Promise.resolve().then(async () => {
      for (let next: ReloadTrigger | undefined = trigger; next && !this.stopped; next = this.takeQueued()) {
        try {
          await this.reload(next);
        } catch (err) {
          this.log.error({ err, trigger: next }, 'reload failed; the running configuration stays');
          publishConfigLoad('error');
        }
      }
      this.running = undefined;
    });
    return this.running;
  }

  /** No more reloads (the drain has started). */
  stop(): void {
    this.stopped = true;
    this.watch?.stop();
    this.watch = undefined;
  }

  private takeQueued(): ReloadTrigger | undefined {
    const q = this.queued;
    this.queued = undefined;
    return q;
  }

  private async reload(trigger: ReloadTrigger): Promise<void> {
    const file = this.loaded.file;
    // Before reading: a change made while the files are read is seen after.
    const files = [...new Set([...this.loaded.files, ...filesOf(file)])];
    const prints = fingerprints(files);
    let next: Loaded;
    try {
      next = loadConfig(file);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      for (const issue of err.issues) this.log.error({ ...issue }, 'config error');
      this.log.error(
        { trigger, config: file, problems: err.issues.map(formatIssue) },
        `reload rejected: ${err.issues.length} problem${err.issues.length === 1 ? '' : 's'} in the configuration; the running configuration stays`,
      );
      publishConfigLoad('invalid');
      this.rewatch(files, prints);
      return;
    }
    // A watch event that changed nothing the configuration is made of (a
    // touch, an editor's backup file): nothing to do.
    if (trigger === 'watch' && next.hash === this.loaded.hash) return void this.rewatch(files, prints);
    for (const w of warnings(next.source)) this.log.warn({ ...w }, 'config warning');
    this.logKeepAlive(next.config);
    const problems = await this.target.apply(next);
    await this.applied?.(next.config);
    this.loaded = next;
    publishConfigLoad('ok', next);
    this.log.info({ trigger, config: file, hash: next.hash, summary: summarize(next.config), problems: problems.length ? problems : undefined }, 'configuration reloaded');
    this.rewatch(files, prints);
    await this.target.settle?.(next.config);
  }

  /** Changed keepalive settings are described (and warned about without the addon) as at start. */
  private logKeepAlive(next: Config): void {
    const was = keepAliveSettings(this.loaded.config);
    const ka = keepAliveSettings(next);
    if (was.idleMs === ka.idleMs && was.intervalMs === ka.intervalMs && was.count === ka.count && was.userTimeoutMs === ka.userTimeoutMs) return;
    this.log.info({ keepalive_mode: keepaliveMode() }, describeKeepAlive(ka));
    const warning = keepAliveWarning(ka);
    if (warning) this.log.warn({ keepalive_mode: 'node' }, warning);
  }

  /**
   * Watch what the configuration in force is made of and what the file on
   * disk names now (a rejected configuration's range files too: fixing one
   * reloads), if the configuration in force asks for that. `prints`: their
   * fingerprints from before they were read.
   */
  private rewatch(files = this.loaded.files, prints = fingerprints(files)): void {
    this.watch?.stop();
    this.watch = undefined;
    if (this.stopped || !this.loaded.config.reload.watch) return;
    this.watch = new FileWatch(files, prints, () => void this.request('watch'));
  }
}
