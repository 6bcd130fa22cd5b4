import { readFileSync } from 'node:fs';

/**
 * The open-file limit the process runs under. Every tunnel costs two
 * descriptors (client and upstream); `clientBudget` is how many client
 * connections fit, after a reserve for the process's own files (stdio, the
 * event loop, audit file, listeners, DNS sockets).
 */

const RESERVE = 32;

export interface FdLimit {
  soft: number;
  hard: number;
  clientBudget: number;
}

/** Read from /proc (Linux); null where it cannot be read or is unlimited. */
export function fdLimit(): FdLimit | null {
  let text: string;
  try {
    text = readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return null;
  }
  const m = /^Max open files\s+(\d+)\s+(\d+|unlimited)/m.exec(text);
  if (!m) return null;
  const soft = Number(m[1]);
  return { soft, hard: m[2] === 'unlimited' ? Infinity : Number(m[2]), clientBudget: Math.max(1, Math.floor((soft - RESERVE) / 2)) };
}
