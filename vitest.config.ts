import { defineConfig } from 'vitest/config';

// Two projects run together by `npm test`: the main suite, and long tests
// (idle tunnels past Node's 300 s requestTimeout) that run beside it.
//
// Every run is shuffled (files, and tests within files), so a test that
// depends on another's leftovers fails in ordinary runs, not only in CI.
// The seed is printed at the start ("Running tests with seed ..."); repeat
// an order with `npx vitest run --sequence.seed=<seed>`.
const sequence = { shuffle: true };

export default defineConfig({
  test: {
    sequence,
    projects: [
      {
        test: {
          name: 'main',
          include: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts', 'test/security/**/*.test.ts'],
          testTimeout: 30_000,
          hookTimeout: 30_000,
          sequence,
        },
      },
      {
        test: {
          name: 'long',
          include: ['test/long/**/*.test.ts'],
          testTimeout: 420_000,
          hookTimeout: 30_000,
          sequence,
        },
      },
    ],
  },
});
