import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { configInForce, loadConfig } from '../../src/ops/config-load.js';
import { decide } from '../../src/decide.js';
import type { ConfigEvent } from '../../src/events.js';
import { Gateway } from '../../src/gateway.js';
import { gatewayTarget, Reloader } from '../../src/ops/reload.js';
import { writeConfig } from './serve-child.js';

/**
 * What a reload publishes on `configChannel` (metrics read it): each load's
 * result, and for a good one the hash of the config file plus every file it
 * names, and the load time. Also the Gateway's `draining` state, and a
 * reload's `dns:` range entries loaded before its policy is used.
 */

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

function policy(ranges: string[]) {
  return {
    listen: { proxy: '127.0.0.1:0' },
    policy: { rules: [{ name: 'r', hosts: ['a.test'], ip_ranges: ranges, ports: [443] }] },
    audit: { file: 'audit.log' },
  };
}

describe('config loads on configChannel', () => {
  it('publishes ok with hash and time, invalid without, and the hash follows the range files', async () => {
    const events: ConfigEvent[] = [];
    const onEvent = (m: unknown) => events.push(m as ConfigEvent);
    subscribe('wa-egress:config', onEvent);
    cleanup.push(() => void unsubscribe('wa-egress:config', onEvent));

    const { dir, file } = writeConfig(policy(['file:ranges.txt']));
    writeFileSync(join(dir, 'ranges.txt'), '157.240.0.0/16\n');
    const loaded = loadConfig(file);
    expect(loaded.files).toEqual([file, join(dir, 'ranges.txt')]);
    const gw = await Gateway.start(loaded.config);
    cleanup.push(() => gw.close());
    const reloader = new Reloader(gatewayTarget(gw, pino({ level: 'silent' })), loaded, pino({ level: 'silent' }));
    cleanup.push(() => reloader.stop());
    expect(loaded.hash).toMatch(/^[0-9a-f]{64}$/);

    // The same files: the same hash.
    await reloader.request('SIGHUP');
    expect(events).toEqual([{ result: 'ok', hash: loaded.hash, loadedAt: expect.any(Number) }]);

    // Only the range file changes: a new hash.
    writeFileSync(join(dir, 'ranges.txt'), '157.240.0.0/17\n');
    await reloader.request('SIGHUP');
    expect(events[1]!.result).toBe('ok');
    expect(events[1]!.hash).not.toBe(loaded.hash);
    expect(reloader.current.hash).toBe(events[1]!.hash);

    // A bad range file: invalid, and the configuration in force is unchanged.
    writeFileSync(join(dir, 'ranges.txt'), 'not a cidr\n');
    await reloader.request('SIGHUP');
    expect(events[2]).toEqual({ result: 'invalid' });
    expect(reloader.current.hash).toBe(events[1]!.hash);
    expect(configInForce()?.hash).toBe(events[1]!.hash);
    expect(gw.config).toBe(reloader.current.config);
  });

  it('says draining from the start of a drain, and listening until the listeners stop', async () => {
    const { file } = writeConfig(policy([]));
    const gw = await Gateway.start(loadConfig(file).config);
    cleanup.push(() => gw.close());
    expect([gw.listening, gw.draining]).toEqual([true, false]);
    gw.drain();
    expect([gw.listening, gw.draining]).toEqual([true, true]);
    gw.stopAccepting();
    expect([gw.listening, gw.draining]).toEqual([false, true]);
  });

  it('puts the dns: range entries of a reloaded config in force before its policy decides anything', async () => {
    const { file } = writeConfig(policy([]));
    const gw = await Gateway.start(loadConfig(file).config);
    cleanup.push(() => gw.close());
    const target = { host: '157.240.9.9', family: 4 as const, port: 443 };
    expect((await decide(gw.context, target)).verdict).toBe('deny');
    const oldFeeds = gw.feeds;
    const next = { ...policy(['dns:feed.test']), dns: { hosts: { 'feed.test': '157.240.9.9' } } };
    expect(await gw.apply(parseConfig(stringify(next), file))).toEqual([]);
    expect(gw.feeds).not.toBe(oldFeeds);
    expect((await decide(gw.context, target)).verdict).toBe('allow');
  });
});
