/** What a generator could not draw on this host: per property, once per family in results.json and the summary. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { summarize } from '../bin/cli.js';
import { defaultOptions } from '../suites/lib/options.js';
import { assembleResults, writePropertyRecord } from './results.js';
import type { PropertyResult, RunOptionsRecord } from './schema.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-notgen-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('not generated', () => {
  it('is said once per family, and only where a property says so', () => {
    const avx512 = { what: "dirtyWrite writer 'avx512' (VMOVDQU64 zmm)", why: "the vCPU's CPUID has no AVX512F" };
    const base = { family: 'migration', statement: 's', status: 'pass', numRuns: 1, seed: 1, durationMs: 1, metrics: {} } as const;
    const props: PropertyResult[] = [
      { ...base, id: 'migration.switchover', notGenerated: [avx512] },
      { ...base, id: 'migration.resume', notGenerated: [avx512] },
      { ...base, id: 'timers.lapic', family: 'timers' },
    ];
    for (const p of props) writePropertyRecord(out, p);
    const r = assembleResults({ out, expected: props, options: {} as RunOptionsRecord, host: {} as never, hostId: 'h', startedAt: new Date(), toolVersion: '0', errors: [], findings: [] });
    expect(r.notGenerated).toEqual([{ family: 'migration', ...avx512 }]);
    expect(r.status).toBe('pass');
    const text = summarize(r, join(out, 'results.json'), defaultOptions({ families: ['migration'], out, seed: 1 }));
    expect(text.split('\n').filter((l) => l.includes('not generated'))).toEqual([`migration: not generated: ${avx512.what} (${avx512.why})`]);
  });
});
