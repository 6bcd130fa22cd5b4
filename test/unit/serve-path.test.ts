import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG } from '../../src/config/load.js';
import { serveConfigPath, SYSTEM_CONFIG } from '../../src/config/serve-path.js';

describe('serveConfigPath: which file serve reads', () => {
  it('takes --config first, then WA_EGRESS_CONFIG', () => {
    expect(serveConfigPath('/x/given.yaml', { WA_EGRESS_CONFIG: '/y/env.yaml' })).toBe('/x/given.yaml');
    expect(serveConfigPath(undefined, { WA_EGRESS_CONFIG: '/y/env.yaml' })).toBe('/y/env.yaml');
  });

  it('a named file is used even when missing (serve then reports it), never a silent fallback', () => {
    expect(serveConfigPath(undefined, { WA_EGRESS_CONFIG: '/nonexistent/config.yaml' })).toBe('/nonexistent/config.yaml');
  });

  const installed = existsSync(SYSTEM_CONFIG);
  if (installed) console.warn(`${SYSTEM_CONFIG} exists on this machine: the bundled-default case is not checked`);
  it.skipIf(installed)('without either, the bundled default when /etc/wa-egress/config.yaml is absent', () => {
    expect(serveConfigPath(undefined, {})).toBe(DEFAULT_CONFIG);
  });

  it.skipIf(!installed)('without either, /etc/wa-egress/config.yaml when it exists', () => {
    expect(serveConfigPath(undefined, {})).toBe(SYSTEM_CONFIG);
  });
});
