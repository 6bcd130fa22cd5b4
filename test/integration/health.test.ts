import { execFile } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI, cleanEnv, startClosedPort, writeTestConfig } from '../helpers.js';

/** `wa-egress health` (the image's HEALTHCHECK) when there is nothing healthy to ask. */

function health(env: Record<string, string>): Promise<{ code: number; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [CLI, 'health'], { env: cleanEnv(env), timeout: 20_000 }, (err, _out, stderr) => {
      done({ code: err ? Number((err as { code?: number }).code) : 0, stderr: String(stderr) });
    });
  });
}

const closers: (() => void)[] = [];
afterEach(() => closers.splice(0).forEach((c) => c()));

describe('wa-egress health', () => {
  it('fails, naming the key, when the config has no admin listener', async () => {
    const { file } = await writeTestConfig({ listen: { proxy: '127.0.0.1:0' }, policy: { rules: [] } });
    const r = await health({ WA_EGRESS_CONFIG: file });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('listen.admin is not set');
  });

  it('fails when nothing answers on the admin address', async () => {
    const closed = await startClosedPort();
    closers.push(closed.close);
    const { file } = await writeTestConfig({ listen: { proxy: '127.0.0.1:0', admin: `127.0.0.1:${closed.port}` }, policy: { rules: [] } });
    const r = await health({ WA_EGRESS_CONFIG: file });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`http://127.0.0.1:${closed.port}/healthz`);
  });
});
