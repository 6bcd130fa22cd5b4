import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/**
 * How many CPUs this process may use: the cores it may run on, bounded by
 * a cgroup CPU quota (a container's CPU limit), rounded up. `workers: auto`
 * starts one worker per CPU.
 */
export function cpuBudget(root = '/sys/fs/cgroup'): number {
  const cores = availableParallelism();
  const quota = cgroupQuota(root);
  return quota === undefined ? cores : Math.max(1, Math.min(cores, Math.ceil(quota)));
}

/** The quota in CPUs (cgroup v2 `cpu.max`, else v1 `cfs_quota_us`/`cfs_period_us`), undefined without one. */
export function cgroupQuota(root = '/sys/fs/cgroup'): number | undefined {
  const v2 = read(`${root}/cpu.max`)?.split(/\s+/);
  if (v2) return v2[0] === 'max' ? undefined : ratio(v2[0], v2[1]);
  return ratio(read(`${root}/cpu/cpu.cfs_quota_us`), read(`${root}/cpu/cpu.cfs_period_us`));
}

function ratio(quota: string | undefined, period: string | undefined): number | undefined {
  const q = Number(quota);
  const p = Number(period);
  return Number.isFinite(q) && q > 0 && Number.isFinite(p) && p > 0 ? q / p : undefined;
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** The number of workers a `workers:` setting asks for. */
export function workerCount(setting: number | 'auto', budget = cpuBudget): number {
  return setting === 'auto' ? budget() : setting;
}
