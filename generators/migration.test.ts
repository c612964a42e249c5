/** Migration cases (generators/migration.ts): every layout is one the model can judge, and every program encodes. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeProgram } from '../harness/bytecode.js';
import { layoutProblems } from '../models/migration/dirty.js';
import { ARENA_BASE, hopVia, layoutWorkload, migrationCaseArb, migrationProgram, workingSetPages } from './migration.js';

const lim = { ramMiB: [64, 128, 1024], maxCpus: 2 as const, dirtyRing: true, postcopy: true, kvmclock: true, tscDeadline: true };
const TSC_HZ = 2e9;

describe('migration cases', () => {
  it('lay out regions that never overlap, inside the arena, with no split lock, and programs that encode', () => {
    fc.assert(
      fc.property(migrationCaseArb(lim), (c) => {
        const { workload } = layoutWorkload(c);
        expect(layoutProblems(workload)).toEqual([]);
        expect(workload.watches.filter((x) => x.kind === 'kvmclock').length).toBe(c.kvmclock ? c.cpus : 0);
        expect(workload.threads.length).toBe(c.cpus);
        const p = migrationProgram(c, workload, TSC_HZ);
        expect(p.threads.length).toBe(c.cpus);
        encodeProgram(p);
        // The model's prelude count is the program's: every op before loopBegin.
        p.threads.forEach((ops, i) => expect(ops.findIndex((o) => o.op === 'loopBegin')).toBe(workload.threads[i]!.preludeOps));
        expect(workingSetPages(workload)).toBeGreaterThanOrEqual(0);
      }),
      { numRuns: 300 },
    );
  });

  it('never combine what QEMU 7.2 refuses: xbzrle or postcopy with multifd', () => {
    fc.assert(
      fc.property(migrationCaseArb(lim), (c) => {
        if (c.stream.multifdChannels) expect([c.stream.xbzrleCacheMiB, c.stream.postcopy]).toEqual([null, null]);
      }),
      { numRuns: 300 },
    );
  });

  it('a case with a hop through a file has neither multifd nor postcopy (one channel, no return path); both kinds of hop occur', () => {
    const seen = new Set<string>();
    fc.assert(
      fc.property(migrationCaseArb(lim), (c) => {
        const hops = [0, ...(c.pingPong ? [1] : [])].map((i) => hopVia(c, i));
        hops.forEach((v) => seen.add(v));
        if (hops.includes('file')) expect([c.stream.multifdChannels, c.stream.postcopy]).toEqual([null, null]);
      }),
      { numRuns: 300 },
    );
    expect([...seen].sort()).toEqual(['file', 'socket']);
    // A case saved before hops had a kind goes over a socket.
    expect(hopVia({ via: undefined } as never, 0)).toBe('socket');
  });

  it('for a stream proxy, generate plain precopy, one hop, the smallest RAM', () => {
    fc.assert(
      fc.property(migrationCaseArb({ ...lim, plainStream: true }), (c) => {
        expect(c.stream).toEqual({ multifdChannels: null, xbzrleCacheMiB: null, autoConverge: false, maxBandwidthMiBs: null, downtimeLimitMs: 300, postcopy: null });
        expect([c.cancelFirst, c.pingPong, c.ramMiB]).toEqual([false, false, 64]);
        expect(hopVia(c, 0)).toBe('socket');
      }),
    );
  });

  it('place a region whose end would pass the arena nowhere, and say so', () => {
    const c = fc.sample(migrationCaseArb(lim), { seed: 1, numRuns: 1 })[0]!;
    const big = { ...c, ramMiB: 64, threads: [{ delayUs: 0, regions: [{ pages: 8192, stridePages: 1, placement: 'page-start' as const, offset: 8, writer: 'mov' as const, passes: 1, gapPages: 0 }] }] };
    const { workload, dropped } = layoutWorkload(big);
    expect(dropped).toBe(1);
    expect(workload.regions).toEqual([]);
    expect(workload.sentinels[0]).toBeGreaterThan(ARENA_BASE);
  });
});
