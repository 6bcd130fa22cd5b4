import { realpathSync, statSync, watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Tells when any of a set of files changes, by what a path now leads to:
 * each file's fingerprint is its resolved path (through every symlink) and
 * that file's inode, size and times. This survives what a path watch loses:
 * an editor writing a new file and renaming it over the old one (a new
 * inode), and a Kubernetes ConfigMap volume, where `config.yaml ->
 * ..data/config.yaml` and the `..data` symlink is swapped atomically to a
 * new directory (a new resolved path).
 *
 * The directories holding each path and its resolved target are watched
 * (fs.watch), so a change is seen at once; a poll every `pollMs` catches
 * what directory events miss (network filesystems, a directory created
 * later). A change is reported once the files have stayed as they are for
 * `settleMs` (a burst of events, a file written in two steps: one report).
 * The caller passes the fingerprints taken before it read the files, so a
 * change made while it was reading is not missed. Nothing here keeps the
 * process alive.
 */

const SETTLE_MS = 100;
const POLL_MS = 1000;

export class FileWatch {
  private readonly watchers = new Map<string, FSWatcher>();
  /** A change seen, waiting to stay as it is for settleMs. */
  private candidate: string[] | undefined;
  private settle: NodeJS.Timeout | undefined;
  private readonly poll: NodeJS.Timeout;
  private stopped = false;

  constructor(
    private readonly files: readonly string[],
    private prints: string[],
    private readonly onChange: () => void,
    private readonly opts: { settleMs?: number; pollMs?: number } = {},
  ) {
    this.rewatch();
    // Changed already since the caller's fingerprints? Look soon.
    this.poke();
    this.poll = setInterval(() => this.check(), opts.pollMs ?? POLL_MS).unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.poll);
    clearTimeout(this.settle);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }

  /** A directory event: check once the burst has settled (at most one check per burst). */
  private poke(): void {
    this.settle ??= setTimeout(() => {
      this.settle = undefined;
      this.check();
    }, this.opts.settleMs ?? SETTLE_MS).unref();
  }

  private check(): void {
    if (this.stopped) return;
    const prints = fingerprints(this.files);
    // A swapped ConfigMap resolves into a new directory: watch that one.
    this.rewatch();
    if (same(prints, this.prints)) {
      this.candidate = undefined;
    } else if (this.candidate && same(prints, this.candidate)) {
      this.candidate = undefined;
      this.prints = prints;
      this.onChange();
    } else {
      this.candidate = prints;
      this.poke();
    }
  }

  /** Watch each path's directory and its resolved target's; drop directories no longer involved. */
  private rewatch(): void {
    const dirs = new Set<string>();
    for (const f of this.files) {
      dirs.add(dirname(f));
      try {
        dirs.add(dirname(realpathSync(f)));
      } catch {
        // Missing for now: its directory is watched, the poll sees it come back.
      }
    }
    for (const [dir, w] of this.watchers) {
      if (!dirs.has(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
    for (const dir of dirs) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, () => this.poke());
        // A deleted directory (an old ConfigMap revision) ends its watch.
        w.on('error', () => {
          w.close();
          if (this.watchers.get(dir) === w) this.watchers.delete(dir);
        });
        this.watchers.set(dir, w);
      } catch {
        // Cannot watch (missing, no permission): the poll still covers it.
      }
    }
  }
}

export function fingerprints(files: readonly string[]): string[] {
  return files.map(fingerprint);
}

function same(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((p, i) => p === b[i]);
}

function fingerprint(file: string): string {
  try {
    const real = realpathSync(file);
    const st = statSync(real);
    return `${real}|${st.dev}|${st.ino}|${st.size}|${st.mtimeMs}|${st.ctimeMs}`;
  } catch (err) {
    return `missing|${(err as NodeJS.ErrnoException).code}`;
  }
}
