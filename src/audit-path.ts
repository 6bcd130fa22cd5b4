import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, rmdirSync, statSync, unlinkSync, type Stats } from 'node:fs';
import { dirname, join } from 'node:path';

/**
 * Whether a path can be the audit file, judged one way for `config check`
 * (probe, leave nothing behind) and for `serve` (create what is missing,
 * open). Missing directories are created one at a time: Node's recursive
 * mkdir spins forever where mkdir answers ENOENT for an existing parent
 * (under /proc), and a bounded walk cannot.
 */

/** Carries the errno code (EISDIR, ENOTDIR, EACCES, ...) as Node's own errors do, for callers that count them. */
export class AuditPathError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
    this.name = 'AuditPathError';
  }
}

const codeOf = (err: unknown) => (err as NodeJS.ErrnoException).code;

const WORDS: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOENT: 'no such file or directory, and none can be made there',
  ENOTDIR: 'a part of the path is not a directory',
  EISDIR: 'is a directory',
  ENOSPC: 'no space left on the device',
  EEXIST: 'already exists',
};

function words(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code ? `${WORDS[code] ?? 'failed'} (${code})` : (err as Error).message;
}

function stat(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // ENOTDIR: some ancestor is a file; the walk up names it.
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new AuditPathError(`cannot look at ${path}: ${words(err)}`, codeOf(err));
  }
}

/** The deepest ancestor of `path` that exists (a directory), and the directories to create below it. */
function plan(path: string): { base: string; missing: string[]; file?: Stats } {
  const file = stat(path);
  if (file?.isDirectory()) throw new AuditPathError(`${path} is a directory; audit.file names a file`, 'EISDIR');
  if (file) return { base: dirname(path), missing: [], file };
  const missing: string[] = [];
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    const s = stat(dir);
    if (s && !s.isDirectory()) throw new AuditPathError(`${dir} is not a directory`, 'ENOTDIR');
    if (s) return { base: dir, missing: missing.reverse() };
    if (dirname(dir) === dir) throw new AuditPathError(`${path}: no part of the path exists`, 'ENOENT');
    missing.push(dir);
  }
}

/** Why `path` cannot be the audit file, or undefined when it can ("-" is stdout). */
export function auditPathProblem(path: string): string | undefined {
  if (path === '-') return undefined;
  try {
    const { base, missing, file } = plan(path);
    if (file) {
      // A FIFO would block an open until someone reads it; a character device (/dev/null) is fine.
      if (file.isFIFO()) return undefined;
      closeSync(tryOpen(path, 'a', `cannot open ${path} for appending`));
      return undefined;
    }
    // A name of its own, so a check never races a serve creating the real path.
    const probe = join(base, `.wa-egress-check-${process.pid}-${randomBytes(4).toString('hex')}`);
    if (missing.length) {
      try {
        mkdirSync(probe);
      } catch (err) {
        return `cannot create directory ${missing[0]}: ${words(err)}`;
      }
      rmdirSync(probe);
    } else {
      closeSync(tryOpen(probe, 'wx', `cannot create ${path}`));
      unlinkSync(probe);
    }
    return undefined;
  } catch (err) {
    if (err instanceof AuditPathError) return err.message;
    throw err;
  }
}

/** Open `path` for appending, creating missing directories; throws AuditPathError in the words of auditPathProblem. */
export function openAuditPath(path: string): number {
  const { missing } = plan(path);
  for (const dir of missing) {
    try {
      mkdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new AuditPathError(`cannot create directory ${dir}: ${words(err)}`, codeOf(err));
    }
  }
  return tryOpen(path, 'a', `cannot open ${path} for appending`);
}

function tryOpen(path: string, flags: string, what: string): number {
  try {
    return openSync(path, flags);
  } catch (err) {
    throw new AuditPathError(`${what}: ${words(err)}`, codeOf(err));
  }
}
