import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AuditFile, type AuditFileEvents } from '../../src/audit-file.js';
import { Audit, escapeLine } from '../../src/audit.js';
import { type AuditSinkEvent } from '../../src/events.js';
import { eventually } from '../helpers.js';

/** The audit writer with the file system's faults injected, and the records' escaping. */

const dirs: string[] = [];
const files: AuditFile[] = [];
afterEach(() => {
  for (const f of files.splice(0)) f.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'wa-egress-audit-'));
  dirs.push(d);
  return d;
}

const quiet: AuditFileEvents = { onError: () => {}, onRecover: () => {}, onDrop: () => {} };

/** A writer whose system calls write at most `max` bytes, or fail, as the test says. */
class FaultyFile extends AuditFile {
  plan: ('short' | 'enospc' | 'ok')[] = [];
  max = 7;
  calls = 0;
  protected override writeFd(fd: number, data: Buffer): number {
    this.calls++;
    const step = this.plan.shift() ?? 'ok';
    if (step === 'enospc') throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    return super.writeFd(fd, step === 'short' ? data.subarray(0, Math.min(this.max, data.length)) : data);
  }
}

describe('partial writes resume at the exact byte', () => {
  it('short writes that split multi-byte characters leave every line intact', () => {
    const path = join(tmp(), 'audit.log');
    const f = new FaultyFile(path, quiet);
    files.push(f);
    // 'é' is 2 bytes, '€' 3, '😀' 4: a 7-byte write cuts inside one of them.
    const lines = ['{"host":"é€😀é€😀"}\n', '{"host":"ünïcödé…"}\n', '{"n":"😀😀😀😀"}\n'];
    for (let i = 0; i < 40; i++) f.plan.push('short');
    for (const l of lines) f.write(l);
    expect(f.flush()).toBe('done');
    expect(f.calls).toBeGreaterThan(3);
    expect(readFileSync(path, 'utf8')).toBe(lines.join(''));
    for (const l of readFileSync(path, 'utf8').split('\n').filter(Boolean)) JSON.parse(l);
  });

  it('a full disk (ENOSPC) between short writes: the rest is written once space returns, byte for byte', () => {
    const path = join(tmp(), 'audit.log');
    const errors: string[] = [];
    let recovered = 0;
    const f = new FaultyFile(path, { ...quiet, onError: (e) => errors.push(e.code!), onRecover: () => recovered++ });
    files.push(f);
    f.max = 5;
    f.plan = ['short', 'enospc'];
    const line = '{"host":"€€€€€€"}\n';
    f.write(line);
    expect(f.flush()).toBe('failed');
    expect(f.failing).toBe(true);
    expect(errors).toEqual(['ENOSPC']);
    // Part of a character is on disk; the rest waits as bytes.
    expect(readFileSync(path).length).toBe(5);
    f.write(line);
    expect(f.flush()).toBe('done');
    expect(recovered).toBe(1);
    expect(readFileSync(path, 'utf8')).toBe(line + line);
  });
});

describe('records are one line for any line-based tool', () => {
  it('every line separator and control character in any field is escaped', () => {
    const dir = tmp();
    const file = join(dir, 'audit.log');
    const audit = new Audit({ file, onError: 'deny' });
    const evil = 'a\u2028b\u2029c\u0085d\u007fe\u009bf\u0000g\nh\ri\ud800j\udc00k\u{1F600}';
    audit.denied({ id: 'x', client: '127.0.0.1:1', listener: 'socks', proto: 'socks', dest_host: evil, dest_port: 1 }, { reason: 'bad_request', enforced: true, error: evil });
    audit.close();
    const text = readFileSync(file, 'utf8');
    const lines = text.split(/\r\n|[\n\r\u2028\u2029\u0085\u000b\u000c\u001c\u001d\u001e]/).filter(Boolean);
    expect(lines).toHaveLength(1);
    // No raw control character or separator anywhere (the emoji stays as UTF-8).
    expect(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(text.slice(0, -1))).toBe(false);
    const rec = JSON.parse(lines[0]!) as { dest_host: string; error: string };
    expect(rec.dest_host).toBe(evil);
    expect(rec.error).toBe(evil);
  });

  it('escapeLine leaves ordinary lines alone and keeps JSON equivalent', () => {
    const plain = '{"a":"b é 😀"}\n';
    expect(escapeLine(plain)).toBe(plain);
    const raw = '{"a":"\u2028\\\\\u0085"}';
    expect(escapeLine(raw)).toBe('{"a":"\\u2028\\\\\\u0085"}');
    expect(JSON.parse(escapeLine(raw))).toEqual(JSON.parse(raw));
  });
});

describe('record times', () => {
  afterEach(() => vi.restoreAllMocks());

  it('are toISOString of the moment, across seconds, and when the clock goes back', () => {
    const file = join(tmp(), 'audit.log');
    const audit = new Audit({ file, onError: 'deny' });
    const base = Date.UTC(2026, 11, 31, 23, 59, 59, 0);
    const times = [base, base + 5, base + 5, base + 99, base + 999, base + 1000, base + 1001, base + 61_234, base - 1, base - 1000, base + 3_600_000 + 10];
    let now = 0;
    vi.spyOn(Date, 'now').mockImplementation(() => now);
    for (const t of times) {
      now = t;
      audit.closed({ id: 'x', client: '127.0.0.1:1', listener: 'proxy', proto: 'connect' }, { bytes_up: 0, bytes_down: 0, duration_ms: 0, close_reason: 'done' });
    }
    vi.restoreAllMocks();
    audit.close();
    const got = readFileSync(file, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { time: string }).time);
    expect(got).toEqual(times.map((t) => new Date(t).toISOString()));
  });
});

describe('the audit path deleted or replaced under the writer', () => {
  const events: AuditSinkEvent['state'][] = [];
  const onSink = (m: unknown) => events.push((m as AuditSinkEvent).state);
  afterEach(() => {
    unsubscribe('wa-egress:audit-sink', onSink);
    events.length = 0;
  });

  it('deleted: noticed by the periodic check, reopened, and later records go to the new file', async () => {
    subscribe('wa-egress:audit-sink', onSink);
    const path = join(tmp(), 'audit.log');
    const replaced: boolean[] = [];
    const f = new AuditFile(path, { ...quiet, onReplaced: (reopened) => replaced.push(reopened) });
    files.push(f);
    f.write('one\n');
    f.flush();
    unlinkSync(path);
    // The unref'd timer notices within seconds (a hang guard, not a speed test).
    await eventually(() => events.includes('reopened'), 5000);
    expect(events).toEqual(['replaced', 'reopened']);
    expect(replaced).toEqual([true]);
    expect(f.replaced).toBe(1);
    f.write('two\n');
    f.flush();
    expect(readFileSync(path, 'utf8')).toBe('two\n');
  });

  it('replaced by another file (renamed away, new file created): the new file gets the records', () => {
    subscribe('wa-egress:audit-sink', onSink);
    const dir = tmp();
    const path = join(dir, 'audit.log');
    const f = new AuditFile(path, quiet);
    files.push(f);
    f.write('old\n');
    f.flush();
    renameSync(path, join(dir, 'audit.log.1'));
    writeFileSync(path, 'someone else\n');
    f.check();
    f.write('new\n');
    f.flush();
    expect(readFileSync(join(dir, 'audit.log.1'), 'utf8')).toBe('old\n');
    expect(readFileSync(path, 'utf8')).toBe('someone else\nnew\n');
    expect(events).toEqual(['replaced', 'reopened']);
  });

  it('a path that cannot be reopened: failing (audit.on_error applies), records wait, then go to the reopened file', () => {
    subscribe('wa-egress:audit-sink', onSink);
    const dir = tmp();
    const path = join(dir, 'audit.log');
    const errors: string[] = [];
    const replaced: boolean[] = [];
    const f = new AuditFile(path, { ...quiet, onError: (e) => errors.push(e.code!), onReplaced: (r) => replaced.push(r) });
    files.push(f);
    unlinkSync(path);
    mkdirSync(path); // a directory cannot be opened for appending
    f.check();
    expect(f.failing).toBe(true);
    expect(errors).toEqual(['EISDIR']);
    expect(f.reopenFailures).toBe(1);
    f.write('waiting\n');
    expect(f.flush()).toBe('failed');
    f.check();
    expect(f.reopenFailures).toBe(2);
    rmSync(path, { recursive: true });
    f.check();
    expect(f.failing).toBe(false);
    expect(readFileSync(path, 'utf8')).toBe('waiting\n');
    expect(events).toEqual(['replaced', 'reopen_failed', 'reopen_failed', 'reopened']);
    expect(replaced).toEqual([false, true]);
  });

  it('a lost path reopened by SIGUSR1 (reopen) before the next check: what waited is written there', () => {
    const dir = tmp();
    const path = join(dir, 'audit.log');
    const f = new AuditFile(path, quiet);
    files.push(f);
    unlinkSync(path);
    mkdirSync(path);
    f.check();
    f.write('waiting\n');
    rmSync(path, { recursive: true });
    f.reopen();
    expect(f.failing).toBe(false);
    expect(readFileSync(path, 'utf8')).toBe('waiting\n');
  });

  it('Audit: a replaced path that cannot be reopened refuses new connections under on_error: deny', () => {
    const dir = tmp();
    const file = join(dir, 'audit.log');
    const audit = new Audit({ file, onError: 'deny' });
    expect(audit.accepting).toBe(true);
    unlinkSync(file);
    mkdirSync(file);
    (audit as unknown as { sink: { out: AuditFile } }).sink.out.check();
    expect(audit.accepting).toBe(false);
    expect(audit.stats()).toMatchObject({ replaced: 1, reopenFailures: 1 });
    rmSync(file, { recursive: true });
    (audit as unknown as { sink: { out: AuditFile } }).sink.out.check();
    expect(audit.accepting).toBe(true);
    audit.close();
  });
});
