#!/usr/bin/env node
// Summarise a V8 .cpuprofile (node --cpu-prof): self time by function and
// total (inclusive) time for the project's own functions.
//   node bench/profile-summary.mjs FILE.cpuprofile [--top N]
// run.mjs imports summarizeProfile for the profile of a cluster's primary.

import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const label = (n) => {
  const f = n.callFrame;
  const url = f.url.replace(/^file:\/\//, '').replace(/^.*\/(dist|node_modules)\//, '$1/');
  return `${f.functionName || '(anonymous)'} ${url ? `${url}:${f.lineNumber + 1}` : ''}`.trim();
};

/**
 * Self and inclusive time (µs) by function label, and the sampled total.
 * `fromUs`/`toUs`: only the samples taken in that window (V8's clock, which
 * on Linux is CLOCK_MONOTONIC in µs, as process.hrtime() is in ns).
 * `categorize(labels)`: a name for a sample from the labels of its stack
 * (innermost first); their times are returned in `categories`.
 * Returns { totalUs, self: Map, incl: Map, categories: Map }.
 */
export function summarizeProfile(prof, { fromUs = -Infinity, toUs = Infinity, categorize } = {}) {
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  // Self time per node from samples and timeDeltas (µs).
  const selfUs = new Map();
  let t = prof.startTime;
  for (let i = 0; i < prof.samples.length; i++) {
    t += prof.timeDeltas[i] ?? 0;
    if (t < fromUs || t > toUs) continue;
    const id = prof.samples[i];
    selfUs.set(id, (selfUs.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
  }
  const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0);

  const self = new Map();
  const incl = new Map();
  const categories = new Map();
  for (const [id, us] of selfUs) {
    const key = label(byId.get(id));
    self.set(key, (self.get(key) ?? 0) + us);
    // Inclusive: every distinct function on the stack gets the sample once.
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const k = label(byId.get(cur));
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + us);
    }
    if (categorize) {
      const labels = [];
      for (let cur = id; cur !== undefined; cur = parent.get(cur)) labels.push(label(byId.get(cur)));
      const c = categorize(labels);
      categories.set(c, (categories.get(c) ?? 0) + us);
    }
  }
  return { totalUs, self, incl, categories };
}

/** The `top` largest entries of a Map of µs, as [label, µs] pairs. */
export function topEntries(map, top, filter = () => true) {
  return [...map].filter(([k]) => filter(k)).sort((a, b) => b[1] - a[1]).slice(0, top);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
  if (!positionals[0]) {
    process.stderr.write('usage: node bench/profile-summary.mjs FILE.cpuprofile [--top N]\n');
    process.exit(2);
  }
  process.stdout.on('error', () => process.exit(0)); // e.g. piped into head
  const { totalUs, self, incl } = summarizeProfile(JSON.parse(readFileSync(positionals[0], 'utf8')));
  const top = Number(values.top);
  const pct = (us) => `${((100 * us) / totalUs).toFixed(1).padStart(5)}%`;
  const print = (title, map, filter) => {
    process.stdout.write(`\n${title}\n`);
    for (const [k, us] of topEntries(map, top, filter)) process.stdout.write(`${pct(us)}  ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}\n`);
  };
  process.stdout.write(`${positionals[0]}: ${(totalUs / 1e6).toFixed(2)} s sampled\n`);
  print('self time', self);
  print('inclusive time, wa-egress code (dist/)', incl, (k) => k.includes('dist/'));
  print('inclusive time, dependencies (node_modules/)', incl, (k) => k.includes('node_modules/'));
}
