/**
 * CPUID workloads: sweeps over (leaf, subleaf) rectangles drawn from every range — basic up to the
 * max leaf and beyond, the 0x4000_0000 hypervisor range, the 0x8000_0000 extended range, the
 * 0xC000_0000 range and random 32-bit leaves — with small, boundary and random subleaves.
 *
 * A sweep is compact (a case can hold thousands of queries, which is what makes the end-to-end rate
 * approach the exit cost) and shrinks well: fast-check drops whole sweeps first, then narrows each
 * one down to a single (leaf, subleaf).
 */
import fc from 'fast-check';
import type { Op } from '../ir/ops.js';

/** The privilege level a CPUID executes at: the hypervisor must answer both alike. */
export type Cpl = 0 | 3;

export interface CpuidQuery {
  readonly leaf: number;
  readonly subleaf: number;
  readonly cpl: Cpl;
}

/** leaf..leaf+leafCount-1 × subleaf..subleaf+subleafCount-1, wrapping at 2^32. */
export interface CpuidSweep {
  readonly leaf: number;
  readonly leafCount: number;
  readonly subleaf: number;
  readonly subleafCount: number;
  /** Every query of the sweep executes at this CPL. */
  readonly cpl: Cpl;
}

export interface CpuidWorkload {
  readonly sweeps: readonly CpuidSweep[];
  /** How many times each vCPU runs the whole query list. */
  readonly repeat: number;
}

/** The ranges' max leaves, as QEMU reports them (query-cpu-model-expansion: level, xlevel). */
export interface CpuidRanges {
  readonly maxBasic: number;
  readonly maxExtended: number;
  readonly maxHypervisor: number;
}

const u32 = (n: number) => n >>> 0;

export function expandQueries(w: Pick<CpuidWorkload, 'sweeps'>): CpuidQuery[] {
  const out: CpuidQuery[] = [];
  for (const s of w.sweeps) {
    for (let l = 0; l < s.leafCount; l++) {
      for (let k = 0; k < s.subleafCount; k++) out.push({ leaf: u32(s.leaf + l), subleaf: u32(s.subleaf + k), cpl: s.cpl });
    }
  }
  return out;
}

export function queryCount(w: CpuidWorkload): number {
  return w.sweeps.reduce((n, s) => n + s.leafCount * s.subleafCount, 0) * w.repeat;
}

/** One thread's ops: the query list, run `repeat` times. */
export function cpuidOps(w: CpuidWorkload): Op[] {
  const body: Op[] = expandQueries(w).map(cpuidOp);
  return w.repeat > 1 ? [{ op: 'loopBegin', count: w.repeat }, ...body, { op: 'loopEnd' }] : body;
}

export function cpuidOp(q: CpuidQuery): Op {
  return { op: 'cpuid', leaf: q.leaf, subleaf: q.subleaf, cpl: q.cpl };
}

function leafArb(r: CpuidRanges): fc.Arbitrary<number> {
  const around = (base: number, max: number) => fc.integer({ min: base, max: max + 8 });
  return fc.oneof(
    { weight: 4, arbitrary: around(0, r.maxBasic) },
    { weight: 2, arbitrary: around(0x4000_0000, r.maxHypervisor) },
    { weight: 1, arbitrary: fc.integer({ min: 0x4000_0000, max: 0x4fff_ffff }) },
    { weight: 3, arbitrary: around(0x8000_0000, r.maxExtended) },
    { weight: 1, arbitrary: fc.integer({ min: 0xc000_0000, max: 0xc000_0010 }) },
    { weight: 1, arbitrary: fc.constantFrom(r.maxBasic + 1, r.maxExtended + 1, 0x3fff_ffff, 0x7fff_ffff, 0xffff_ffff, 0x8fff_ffff) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: 0xffff_ffff }) },
  );
}

const subleafArb: fc.Arbitrary<number> = fc.oneof(
  { weight: 5, arbitrary: fc.integer({ min: 0, max: 8 }) },
  { weight: 2, arbitrary: fc.constantFrom(0xffff_ffff, 0x7fff_ffff, 0x8000_0000, 63, 64, 0xff, 0x100, 0xffff) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 0xffff_ffff }) },
);

export function cpuidSweepArb(r: CpuidRanges, cpls: readonly Cpl[] = [0, 3]): fc.Arbitrary<CpuidSweep> {
  return fc.record({
    leaf: leafArb(r),
    leafCount: fc.integer({ min: 1, max: 24 }),
    subleaf: subleafArb,
    subleafCount: fc.integer({ min: 1, max: 12 }),
    cpl: fc.constantFrom(...cpls),
  });
}

export function cpuidWorkloadArb(
  r: CpuidRanges,
  opts: { maxSweeps?: number; maxRepeat?: number; minRepeat?: number; cpls?: readonly Cpl[] } = {},
): fc.Arbitrary<CpuidWorkload> {
  return fc.record({
    // size 'max': lengths spread over the whole range. A VM boot costs ~100 ms; a case should hold
    // thousands of queries so the exits, not the boots, dominate (shrinking takes it down anyway).
    sweeps: fc.array(cpuidSweepArb(r, opts.cpls), { minLength: 1, maxLength: opts.maxSweeps ?? 48, size: 'max' }),
    repeat: fc.integer({ min: opts.minRepeat ?? 1, max: opts.maxRepeat ?? 3 }),
  });
}
