import { AuditPathError } from '../audit-path.js';
import { loadConfigSource, type ConfigSource } from '../config/load.js';
import { bindProblem, startProblems, warnings } from '../config/preflight.js';
import { recordReads, type FileSnapshot } from '../config/read.js';
import { ConfigError, formatIssue, type ConfigIssue } from '../errors.js';
import type { Logger } from '../log.js';
import { configHash } from './config-load.js';

/**
 * serve's start: load and check the configuration the way `config check`
 * does, log its warnings once, and report anything that stops the start
 * (a bad key, an unusable audit path, a listener that cannot bind) as
 * `file:line:column: key.path: message` on stderr, exit code 1.
 */

export function exitWith(issues: ConfigIssue[], log: Logger, what: string): never {
  for (const issue of issues) log.error({ ...issue }, what);
  process.stderr.write(`wa-egress: ${what}:\n${issues.map(formatIssue).join('\n')}\n`);
  process.exit(1);
}

/** The configuration serve runs (and the hash operations publish), or exit 1 with every problem located. */
export function loadForServe(file: string, log: Logger): { loaded: ConfigSource; hash: string; snapshot: FileSnapshot } {
  let loaded: ConfigSource;
  let snapshot: FileSnapshot;
  try {
    ({ value: loaded, files: snapshot } = recordReads(() => loadConfigSource(file)));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    exitWith(err.issues, log, 'invalid configuration');
  }
  const problems = startProblems(loaded);
  if (problems.length) exitWith(problems, log, 'cannot start');
  for (const w of warnings(loaded)) log.warn({ ...w }, 'config warning');
  return { loaded, hash: configHash(loaded.text, file), snapshot };
}

/** Gateway.start failed: name the key behind it where there is one. */
export function startFailure(loaded: ConfigSource, err: unknown, log: Logger): never {
  const e = err as NodeJS.ErrnoException & { listener?: string };
  if (e instanceof AuditPathError) exitWith([loaded.at(['audit', 'file'], e.message)], log, 'cannot start');
  if (typeof e?.listener === 'string') exitWith([bindProblem(loaded, e.listener, e)], log, 'cannot start');
  throw err;
}
