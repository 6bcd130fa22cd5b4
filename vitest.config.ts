import { defineConfig } from 'vitest/config';

// Two projects run together by `npm test`: the main suite, and long tests
// (idle tunnels past Node's 300 s requestTimeout) that run beside it.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'main',
          include: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts', 'test/security/**/*.test.ts'],
          testTimeout: 30_000,
          hookTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'long',
          include: ['test/long/**/*.test.ts'],
          testTimeout: 420_000,
          hookTimeout: 30_000,
        },
      },
    ],
  },
});
