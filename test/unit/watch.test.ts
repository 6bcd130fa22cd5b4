import { mkdirSync, mkdtempSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileWatch, fingerprints } from '../../src/ops/watch.js';
import { eventually } from '../helpers.js';

/** FileWatch on real files: what a path leads to, through renames and symlink swaps. */

let watches: FileWatch[] = [];
afterEach(() => {
  for (const w of watches) w.stop();
  watches = [];
});

function watch(files: string[], opts: { pollMs?: number } = {}): { changes: () => number } {
  let n = 0;
  watches.push(new FileWatch(files, fingerprints(files), () => n++, { settleMs: 20, ...opts }));
  return { changes: () => n };
}

const NO_POLL = { pollMs: 3_600_000 };

describe('FileWatch', () => {
  it('sees a new file renamed over the old one (directory events alone)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-watch-'));
    const file = join(dir, 'config.yaml');
    writeFileSync(file, 'a: 1\n');
    const w = watch([file], NO_POLL);
    writeFileSync(`${file}.swp`, 'a: 2\n');
    renameSync(`${file}.swp`, file);
    await eventually(() => w.changes() === 1);
    // And again: the watch did not stay on the old inode.
    writeFileSync(`${file}.swp`, 'a: 3\n');
    renameSync(`${file}.swp`, file);
    await eventually(() => w.changes() === 2);
  });

  it('sees a ConfigMap swap of ..data, twice (directory events alone)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-watch-'));
    const rev = (name: string) => {
      mkdirSync(join(dir, name));
      writeFileSync(join(dir, name, 'config.yaml'), `${name}\n`);
      symlinkSync(name, join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    };
    mkdirSync(join(dir, '..1'));
    writeFileSync(join(dir, '..1', 'config.yaml'), 'one\n');
    symlinkSync('..1', join(dir, '..data'));
    symlinkSync('..data/config.yaml', join(dir, 'config.yaml'));
    const w = watch([join(dir, 'config.yaml')], NO_POLL);
    rev('..2');
    await eventually(() => w.changes() === 1);
    rev('..3');
    await eventually(() => w.changes() === 2);
  });

  it('finds, by polling, a file whose directory did not exist when the watch began', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-watch-'));
    const file = join(dir, 'later', 'ranges.txt');
    const w = watch([file], { pollMs: 50 });
    mkdirSync(join(dir, 'later'));
    writeFileSync(file, '10.0.0.0/8\n');
    await eventually(() => w.changes() === 1);
  });

  it('reports a change made before it started, against the fingerprints it was given', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wa-egress-watch-'));
    const file = join(dir, 'config.yaml');
    writeFileSync(file, 'a: 1\n');
    const before = fingerprints([file]);
    writeFileSync(`${file}.new`, 'a: 2\n');
    renameSync(`${file}.new`, file);
    let n = 0;
    watches.push(new FileWatch([file], before, () => n++, { settleMs: 20, ...NO_POLL }));
    await eventually(() => n === 1);
  });
});
