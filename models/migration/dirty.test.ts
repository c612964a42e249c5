/** The dirtying workload's model (dirty.ts) and the convergence prediction (convergence.ts). */
import { describe, expect, it } from 'vitest';
import { expectedCounters, judgeCounters, layoutProblems, progressOf, scatterStep, spanOverlaps, visitIndex, WRITER_CODES, writerBytes, type DirtyWorkload } from './dirty.js';
import { predictConvergence } from './convergence.js';

// Thread 0: prelude of 3 ops; body: pass over region 0, pass over region 1, pass over region 0 again (a hot set), delay.
const w: DirtyWorkload = {
  arenaBase: 0x200_0000,
  arenaEnd: 0x400_0000,
  regions: [
    { base: 0x200_0000, pages: 4, stride: 4096, writer: 'mov' },
    { base: 0x210_0ffc, pages: 3, stride: 4096, writer: 'rep-stosq' },
  ],
  sentinels: [0x300_0000],
  magic: 0x1234n,
  watches: [],
  reserved: [],
  threads: [{ preludeOps: 3, body: [{ kind: 'pass', region: 0 }, { kind: 'pass', region: 1 }, { kind: 'pass', region: 0 }, { kind: 'delay' }] }],
};

describe('where a thread stands after ops_done ops', () => {
  it('counts the prelude, loopBegin once, then body and loopEnd per iteration', () => {
    expect(progressOf(w.threads[0]!, 3)).toEqual({ completed: [0, 0, 0, 0], inProgress: null, iterations: 0 });
    expect(progressOf(w.threads[0]!, 4)).toEqual({ completed: [0, 0, 0, 0], inProgress: 0, iterations: 0 });
    expect(progressOf(w.threads[0]!, 6)).toEqual({ completed: [1, 1, 0, 0], inProgress: 2, iterations: 0 });
    // 4 + 5 × 2: two whole iterations (4 body ops + loopEnd each), the third not begun.
    expect(progressOf(w.threads[0]!, 14)).toEqual({ completed: [2, 2, 2, 2], inProgress: 0, iterations: 2 });
    // At the loopEnd of the third: every body op done three times, none in progress.
    expect(progressOf(w.threads[0]!, 18)).toEqual({ completed: [3, 3, 3, 3], inProgress: null, iterations: 2 });
  });
});

describe('the counters the model expects', () => {
  it('sums a hot region’s passes, and marks the pass in progress as one edge', () => {
    const e = expectedCounters(w, [6]); // region 0 passed once (+ once in progress), region 1 once
    expect(e.filter((x) => x.addr < 0x210_0000).map((x) => [x.value, !!x.edge])).toEqual([
      [1n, true],
      [1n, true],
      [1n, true],
      [1n, true],
    ]);
    expect(e.filter((x) => x.addr > 0x210_0000).map((x) => [x.value, !!x.edge])).toEqual([
      [1n, false],
      [1n, false],
      [1n, false],
    ]);
  });

  it('accepts exactly one +1 edge in the pass in progress, and nothing else', () => {
    const e = expectedCounters(w, [6]);
    const reading = (vals: bigint[]) => (addr: number) => (addr < 0x210_0000 ? vals[(addr - 0x200_0000) / 4096]! : 1n);
    expect(judgeCounters(e, reading([2n, 2n, 1n, 1n]))).toEqual([]);
    expect(judgeCounters(e, reading([1n, 1n, 1n, 1n]))).toEqual([]);
    expect(judgeCounters(e, reading([2n, 2n, 2n, 2n]))).toEqual([]);
    // A page after the edge that reads +1: a page whose update went missing before it.
    expect(judgeCounters(e, reading([2n, 1n, 2n, 1n])).map((d) => d.addr)).toEqual([0x200_2000]);
    expect(judgeCounters(e, reading([3n, 1n, 1n, 1n])).map((d) => d.addr)).toEqual([0x200_0000]);
    expect(judgeCounters(e, reading([1n, 1n, 0n, 1n])).map((d) => d.why)).toEqual(['counter of the pass in progress']);
  });

  it('judges a counter outside the pass in progress exactly', () => {
    const e = expectedCounters(w, [6]);
    const d = judgeCounters(e, (addr) => (addr === 0x210_1ffc ? 0n : addr < 0x210_0000 ? 1n : 1n));
    expect(d).toEqual([{ addr: 0x210_1ffc, expected: '0x1', observed: '0x0', why: 'counter' }]);
  });

  it('finds layouts the generator must never make', () => {
    expect(layoutProblems(w)).toEqual([]);
    expect(layoutProblems({ ...w, regions: [...w.regions, { base: 0x200_0004, pages: 1, stride: 4096, writer: 'mov' }] })).toEqual(['0x2000004 overlaps the word before it']);
    expect(layoutProblems({ ...w, regions: [{ base: 0x200_003c, pages: 1, stride: 4096, writer: 'lock-add' }] })[0]).toMatch(/split lock/);
    expect(layoutProblems({ ...w, sentinels: [0x400_0000] })[0]).toMatch(/outside the arena/);
  });

  it('a vector store covers 32 (ymm) or 64 (zmm) bytes from its counter, which no other writer may change', () => {
    expect([writerBytes('mov'), writerBytes('rep-movsq'), writerBytes('avx'), writerBytes('avx512')]).toEqual([8, 8, 32, 64]);
    expect([WRITER_CODES.avx, WRITER_CODES.avx512]).toEqual([5, 6]);
    // Region 1's last counter at 0x2102ffc with a ymm store runs to 0x210301c: a counter at 0x2103010 lies under it.
    const avx: DirtyWorkload = { ...w, regions: [w.regions[0]!, { ...w.regions[1]!, writer: 'avx' }] };
    expect(layoutProblems(avx)).toEqual([]);
    const under = { ...avx, regions: [...avx.regions, { base: 0x210_3010, pages: 1, stride: 4096, writer: 'mov' as const }] };
    expect(spanOverlaps(under)).toEqual([{ region: 1, addr: 0x210_3010, other: 'region 2' }]);
    expect(layoutProblems(under)).toEqual(['region 1: a store at 0x2103010 covers region 2, which another writer changes']);
    // Past it (0x210301c) is free; a zmm store reaches 0x210303c and covers it again.
    expect(layoutProblems({ ...avx, regions: [...avx.regions, { base: 0x210_3020, pages: 1, stride: 4096, writer: 'mov' }] })).toEqual([]);
    const zmm = { ...avx, regions: [w.regions[0]!, { ...w.regions[1]!, writer: 'avx512' as const }, { base: 0x210_3020, pages: 1, stride: 4096, writer: 'mov' as const }] };
    expect(layoutProblems(zmm)).toEqual(['region 1: a store at 0x2103020 covers region 2, which another writer changes']);
    // Sentinels and reserved spans count too; a store past the arena's end is named.
    expect(spanOverlaps({ ...avx, sentinels: [0x210_3000] })).toEqual([{ region: 1, addr: 0x210_3000, other: 'sentinel 0' }]);
    expect(spanOverlaps({ ...avx, reserved: [{ addr: 0x210_3018, len: 4096 }] })).toEqual([{ region: 1, addr: 0x210_3018, other: 'reserved 0' }]);
    expect(layoutProblems({ ...avx, arenaEnd: 0x210_3010 })).toContain('region 1: its last store ends at 0x210301c, past the arena');
  });

  it('the model of a vector writer is the scalar one: +1 per pass on the counter, the rest of its span unchanged', () => {
    const avx: DirtyWorkload = { ...w, regions: w.regions.map((r) => ({ ...r, writer: 'avx' as const })) };
    expect(expectedCounters(avx, [9])).toEqual(expectedCounters(w, [9]));
  });
});

describe('whether precopy converges', () => {
  it('converges when the working set fits half of bandwidth × downtime, or with postcopy', () => {
    expect(predictConvergence({ workingSetBytes: 19 << 20, bandwidth: 128 << 20, downtimeMs: 300, postcopy: false })).toBe('converges');
    expect(predictConvergence({ workingSetBytes: 20 << 20, bandwidth: 128 << 20, downtimeMs: 300, postcopy: false })).toBe('no-claim');
    expect(predictConvergence({ workingSetBytes: 1 << 30, bandwidth: 1 << 20, downtimeMs: 1, postcopy: true })).toBe('converges');
  });
  it('claims nothing from a working set that does not fit: a descheduled guest dirties nothing', () => {
    expect(predictConvergence({ workingSetBytes: 4096, bandwidth: 1 << 20, downtimeMs: 1, postcopy: false })).toBe('no-claim');
  });
  it('cannot complete within a window when the pages it must send take longer at its rate limit', async () => {
    const { cannotCompleteWithin, firstPassBytes } = await import('./convergence.js');
    // 64 MiB: 16,384 zero-page records of 9 bytes; at 16 KiB/s in 300 ms at most 4 windows of 1.6 + 8 KiB.
    expect(firstPassBytes(64 << 20)).toBe(147_456);
    expect(cannotCompleteWithin(firstPassBytes(64 << 20), 16 << 10, 300)).toBe(true);
    expect(cannotCompleteWithin(firstPassBytes(64 << 20), 1 << 20, 300)).toBe(false);
  });
});

describe('time across a migration', async () => {
  const { judgeWatches, judgeDeadline } = await import('./time.js');
  it('a watch that went back is named, with its worst step', () => {
    expect(judgeWatches([{ thread: 0, kind: 'tsc', last: 10n, backwards: 0n, worstBack: 0n, samples: 5n }])).toEqual([]);
    expect(judgeWatches([{ thread: 1, kind: 'kvmclock', last: 10n, backwards: 2n, worstBack: 700n, samples: 5n }])[0]!.summary).toBe("vCPU 1's kvmclock went back 2 time(s) in 5 readings, at worst by 700 ns");
  });
  it('a deadline interrupts once, not early, and not never', () => {
    const base = { deadline: 1000n, graceTsc: 100n };
    expect(judgeDeadline({ ...base, nowTsc: 5000n, interrupts: [1010n] })).toEqual([]);
    expect(judgeDeadline({ ...base, nowTsc: 900n, interrupts: [] })).toEqual([]);
    expect(judgeDeadline({ ...base, nowTsc: 1050n, interrupts: [] })).toEqual([]); // inside the grace: no claim yet
    expect(judgeDeadline({ ...base, nowTsc: 5000n, interrupts: [] }).map((d) => d.rule)).toEqual(['deadline-delivered']);
    expect(judgeDeadline({ ...base, nowTsc: 5000n, interrupts: [999n] }).map((d) => d.rule)).toEqual(['deadline-not-early']);
    expect(judgeDeadline({ ...base, nowTsc: 5000n, interrupts: [1001n, 1200n] }).map((d) => d.rule)).toEqual(['deadline-once']);
  });
  it('with interrupts off after arming, the expired deadline waits for STI, then comes once', () => {
    const base = { deadline: 1000n, graceTsc: 100n, unmaskedAt: 3000n };
    expect(judgeDeadline({ ...base, nowTsc: 5000n, interrupts: [3005n] })).toEqual([]);
    expect(judgeDeadline({ ...base, nowTsc: 5000n, interrupts: [1500n] }).map((d) => d.summary)).toEqual(['the timer interrupted at TSC 0x5dc, while interrupts were off (until 0xbb8)']);
    expect(judgeDeadline({ ...base, nowTsc: 3050n, interrupts: [] })).toEqual([]); // due at STI, inside the grace
    expect(judgeDeadline({ ...base, nowTsc: 5000n, interrupts: [] }).map((d) => d.rule)).toEqual(['deadline-delivered']);
  });
});

describe('kvmclock areas at the switchover', async () => {
  const { explainPvclockPage } = await import('./pvclock.js');
  const page = 0x68_0000;
  const src = Buffer.alloc(4096);
  src.writeUInt32LE(4, 0);
  src.writeBigUInt64LE(0x1234n, 8);
  src.writeBigUInt64LE(1000n, 16);
  it('allows a later, complete update inside an enabled area, and nothing else', () => {
    const later = Buffer.from(src);
    later.writeUInt32LE(6, 0);
    later.writeBigUInt64LE(1010n, 16);
    expect(explainPvclockPage(page, src, later, [page])).toMatchObject({ explained: true, updates: [{ addr: page, source: { version: 4 }, destination: { version: 6 } }] });
    const outside = Buffer.from(later);
    outside[64] = 1;
    expect(explainPvclockPage(page, src, outside, [page])).toEqual({ explained: false, why: 'byte 0x680040 differs outside every enabled kvmclock area' });
    expect(explainPvclockPage(page, src, later, [])).toMatchObject({ explained: false });
  });
  it('a stale or torn copy is still a difference', () => {
    const stale = Buffer.from(src);
    stale.writeUInt32LE(2, 0);
    expect(explainPvclockPage(page, src, stale, [page])).toMatchObject({ explained: false, why: expect.stringMatching(/not a later update/) });
    const torn = Buffer.from(src);
    torn.writeUInt32LE(5, 0);
    expect(explainPvclockPage(page, src, torn, [page])).toMatchObject({ explained: false, why: expect.stringMatching(/mid-update/) });
  });
});

describe('a scattered pass (counters visited as (i*step) mod pages)', () => {
  const sw: DirtyWorkload = { ...w, regions: [{ base: 0x200_0000, pages: 5, stride: 4096, writer: 'mov', step: 2 }], threads: [{ preludeOps: 3, body: [{ kind: 'pass', region: 0 }] }] };

  it('visits every counter once, out of address order', () => {
    const r = sw.regions[0]!;
    expect(Array.from({ length: 5 }, (_, i) => visitIndex(r, i))).toEqual([0, 2, 4, 1, 3]);
    for (const [pages, scatter] of [[1, 9], [2, 7], [3, 3], [4, 2], [512, 256], [4095, 4096], [6, 0xffff]] as const) {
      const k = scatterStep(pages, scatter);
      const seen = new Set(Array.from({ length: pages }, (_, i) => (i * k) % pages));
      expect(seen.size).toBe(pages);
      expect(layoutProblems({ ...sw, regions: [{ ...r, pages, step: k }] })).toEqual([]);
    }
    expect(layoutProblems({ ...sw, regions: [{ ...r, pages: 4, step: 2 }] })).toEqual(['region 0: step 2 is not coprime with its 4 pages: a pass would skip counters']);
  });

  it('puts the edge of a pass in progress in visit order, not address order', () => {
    const e = expectedCounters(sw, [4]); // the prelude and loopBegin done: the first pass in progress
    const reading = (vals: bigint[]) => (addr: number) => vals[(addr - 0x200_0000) / 4096]!;
    // Visited so far: counters 0 and 2 (by address): they read 1, the rest 0.
    expect(judgeCounters(e, reading([1n, 0n, 1n, 0n, 0n]))).toEqual([]);
    // The first two by address written instead: counter 1 is past the edge in visit order.
    expect(judgeCounters(e, reading([1n, 1n, 0n, 0n, 0n])).map((d) => d.addr)).toEqual([0x200_1000]);
  });
});
