/** The run's progress display and KTAP stream, from files as the workers write them. */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KtapStream } from '../reports/ktap.js';
import { writePropertyRecord } from '../reports/results.js';
import { parseTap } from '../reports/tapImport.js';
import { parseRunOptions } from './cli.js';
import { statusLine, watchRun } from './progress.js';

const dir = mkdtempSync(join(tmpdir(), 'kvmprop-progress-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const rec = (id: string, status: 'pass' | 'fail' | 'skip' | 'known-deviation') => ({
  id, family: id.split('.')[0]!, statement: 's', status, numRuns: 3, seed: 1, durationMs: 5, metrics: {},
  ...(status === 'fail' ? { reason: 'r <x>\n# not a directive', rule: 'rule', counterexample: 'c.json' } : status === 'skip' || status === 'known-deviation' ? { reason: 'why' } : {}),
});

describe('watchRun', () => {
  it('streams each finished property once as KTAP, plain status lines without a TTY, and the missing ones at the end', () => {
    const out = join(dir, 'out');
    const root = join(dir, 'root');
    mkdirSync(join(root, 'progress'), { recursive: true });
    writeFileSync(join(root, 'progress', 'timers.a.json'), JSON.stringify({ id: 'timers.a', family: 'timers', done: 4, total: 10, phase: 'running', current: '{}', at: 1 }));
    let ktapText = '';
    let status = '';
    const ktap = new KtapStream((s) => (ktapText += s));
    ktap.begin(3, 'kvmprop test');
    const w = watchRun({ out, root, expected: ['leaks.x', 'timers.a', 'nested.b'], status: { write: (s: string) => (status += s) }, ktap, intervalMs: 1e9, plainEveryMs: 0 });
    writePropertyRecord(out, rec('leaks.x', 'pass'));
    w.tick();
    writePropertyRecord(out, rec('timers.a', 'fail'));
    w.tick();
    w.stop();
    ktap.end(['leaks.x', 'timers.a', 'nested.b'], 'pass 1, fail 1');
    expect(status).toContain('kvmprop: timers.a: case 4/10');
    expect(status).toContain('kvmprop: PASS leaks.x (1/3 properties)');
    expect(status).toContain('kvmprop: FAIL timers.a (2/3 properties)');
    const doc = parseTap(ktapText);
    expect(doc.problems).toEqual([]);
    expect(doc.plan?.count).toBe(3);
    expect(doc.results.map((r) => [r.ok, r.description, r.directive?.kind])).toEqual([
      [true, 'leaks.x', undefined],
      [false, 'timers.a', undefined],
      [false, 'nested.b', 'ERROR'],
    ]);
  });

  it('draws one status line on a terminal, cut to its width', () => {
    const line = statusLine(2, 5, [{ id: 'timers.lapic.schedule', family: 'timers', done: 7, total: 25, phase: 'shrinking', current: 'x'.repeat(300), at: 1 }], 80);
    expect(line.startsWith('[2/5 properties] timers.lapic.schedule: case 7/25 (shrinking)')).toBe(true);
    expect(line.length).toBeLessThanOrEqual(79);
  });
});

describe('--shard', () => {
  it('splits the selected properties round-robin, disjoint and complete', () => {
    const all = parseRunOptions(['--family', 'leaks,nested']);
    const shards = [1, 2, 3].map((i) => parseRunOptions(['--family', 'leaks,nested', '--shard', `${i}/3`]).properties);
    expect(shards.flat().sort()).toEqual(
      parseRunOptions(['--family', 'leaks,nested', '--shard', '1/1']).properties.slice().sort(),
    );
    expect(new Set(shards.flat()).size).toBe(shards.flat().length);
    expect(all.properties).toEqual([]);
  });

  it('refuses a malformed or empty shard in one line', () => {
    expect(() => parseRunOptions(['--shard', '0/2'])).toThrow(/--shard must be I\/N/);
    expect(() => parseRunOptions(['--shard', 'a'])).toThrow(/--shard must be I\/N/);
    expect(() => parseRunOptions(['--family', 'nested', '--shard', '3/3'])).toThrow(/no property falls in this shard/);
  });
});
