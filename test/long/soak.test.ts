import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { cleanEnv } from '../helpers.js';

/**
 * A 2-minute soak (`npm run soak -- --minutes 2`): mixed traffic through every
 * listener while RSS and descriptors are sampled; the script exits 1 if they grow.
 */
describe('soak', () => {
  it('keeps memory and descriptors flat under 2 minutes of mixed traffic', async () => {
    const script = resolve(import.meta.dirname, '../../scripts/soak.mjs');
    const { stdout } = await promisify(execFile)(process.execPath, [script, '--minutes', '2', '--sample', '5'], { maxBuffer: 16 * 1024 * 1024, env: cleanEnv() }).catch(
      (err: { stdout: string; stderr: string; code: number }) => {
        throw new Error(`soak failed (exit ${err.code}):\n${err.stdout}\n${err.stderr}`);
      },
    );
    expect(stdout).toMatch(/RSS flat: .*; fds flat/);
  });
});
