import { existsSync } from 'node:fs';
import { DEFAULT_CONFIG } from './load.js';

/** Where an installed gateway keeps its configuration (the container image's path). */
export const SYSTEM_CONFIG = '/etc/wa-egress/config.yaml';

/**
 * The file `serve` (and `health`) read without --config: WA_EGRESS_CONFIG when set
 * (it must exist: a named file that is missing is an error, never a silent fallback),
 * else /etc/wa-egress/config.yaml when it exists, else the bundled default.
 */
export function serveConfigPath(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (explicit !== undefined) return explicit;
  const named = env.WA_EGRESS_CONFIG;
  if (named) return named;
  return existsSync(SYSTEM_CONFIG) ? SYSTEM_CONFIG : DEFAULT_CONFIG;
}
