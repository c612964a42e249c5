/** Migration cases (generators/migration.ts): every layout is one the model can judge, and every program encodes. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeProgram } from '../harness/bytecode.js';
import { isVectorWriter, layoutProblems, writerBytes, type WriterKind } from '../models/migration/dirty.js';
import { ARENA_BASE, hopVia, layoutWorkload, migrationCaseArb, migrationProgram, MSR_KVM_PV_EOI_EN, PAGE, pvEoiOf, workingSetPages, writersFor, writersNotGenerated } from './migration.js';

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

  it('draw a vector writer only where the vCPU has it, and turn AVX state on exactly then', () => {
    const drawn = (l: typeof lim & { avx?: boolean; avx512?: boolean }) => {
      const seen = new Set<WriterKind>();
      fc.assert(
        fc.property(migrationCaseArb(l), (c) => {
          c.threads.forEach((t) => t.regions.forEach((r) => seen.add(r.writer)));
          const { workload } = layoutWorkload(c);
          expect(layoutProblems(workload)).toEqual([]);
          const p = migrationProgram(c, workload, TSC_HZ);
          expect(p.avxState === true).toBe(workload.regions.some((r) => isVectorWriter(r.writer)));
          encodeProgram(p);
        }),
        { numRuns: 100 },
      );
      return [...seen].filter(isVectorWriter).sort();
    };
    expect(drawn(lim)).toEqual([]);
    expect(drawn({ ...lim, avx: true })).toEqual(['avx']);
    expect(drawn({ ...lim, avx: true, avx512: true })).toEqual(['avx', 'avx512']);
    expect(drawn({ ...lim, avx512: true })).toEqual([]); // AVX512F without AVX state to hold it: neither
    expect(writersFor({ avx: true, avx512: true })).toHaveLength(7);
    expect(writersNotGenerated({ avx: true, avx512: false })).toEqual([{ what: "dirtyWrite writer 'avx512' (VMOVDQU64 zmm)", why: "the vCPU's CPUID has no AVX512F" }]);
    expect(writersNotGenerated({ avx: false }).map((n) => n.why)).toEqual(["the vCPU's CPUID has no XSAVE or no AVX", "the vCPU's CPUID has no XSAVE or no AVX"]);
    expect(writersNotGenerated({ avx: true, avx512: true })).toEqual([]);
  });

  it('enable PV EOI on every vCPU, at its own flag, only where the vCPU offers it and the case asks', () => {
    const pvEoiWrites = (c: Parameters<typeof layoutWorkload>[0]) => {
      const p = migrationProgram(c, layoutWorkload(c).workload, TSC_HZ);
      return p.threads.map((ops) => ops.filter((o) => o.op === 'wrmsr' && o.msr === MSR_KVM_PV_EOI_EN).map((o) => (o as { value: bigint }).value));
    };
    let on = 0;
    for (const c of fc.sample(migrationCaseArb({ ...lim, pvEoi: true }), { seed: 4, numRuns: 60 })) {
      const writes = pvEoiWrites(c);
      if (c.pvEoi) on++;
      // bit 0 enables; the flag is 4-byte aligned (msr.rst), one per vCPU.
      writes.forEach((w, t) => expect(w).toEqual(c.pvEoi ? [BigInt(pvEoiOf(t)) | 1n] : []));
    }
    expect(on).toBeGreaterThan(10);
    expect(pvEoiOf(1) % 4).toBe(0);
    expect(fc.sample(migrationCaseArb(lim), { seed: 4, numRuns: 60 }).some((c) => c.pvEoi)).toBe(false);
  });

  it("lay the next region past a vector store's whole span, and count the page it reaches into", () => {
    const c = fc.sample(migrationCaseArb(lim), { seed: 1, numRuns: 1 })[0]!;
    for (const writer of ['mov', 'avx', 'avx512'] as const) {
      const lastWord = { pages: 2, stridePages: 1, placement: 'in-page' as const, offset: PAGE - 8, writer, passes: 1, gapPages: 0 };
      const next = { pages: 1, stridePages: 1, placement: 'page-start' as const, offset: 8, writer: 'mov' as const, passes: 1, gapPages: 0 };
      const { workload } = layoutWorkload({ ...c, ramMiB: 64, threads: [{ delayUs: 0, regions: [lastWord, next] }] });
      const [a, b] = workload.regions;
      const spanEnd = a!.base + a!.stride + writerBytes(writer);
      // A scalar word ends at its page's end: the next region starts there; a vector span reaches into the page after.
      expect(b!.base).toBe(Math.ceil(spanEnd / PAGE) * PAGE);
      expect(b!.base - (a!.base + a!.stride + 8)).toBe(writer === 'mov' ? 0 : PAGE);
      expect(layoutProblems(workload)).toEqual([]);
      // Counters at the last word of 2 pages, plus (vector) the page each span reaches into, plus the next region's.
      expect(workingSetPages(workload)).toBe(writer === 'mov' ? 3 : 4);
    }
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
