/**
 * Device-read workloads aimed at the device map QEMU reports: port reads (IN b/w/l, REP INS b/w/l)
 * and MMIO reads (MOV of 1/2/4/8 bytes, REP MOVS b/w/l/q), inside claimed regions, on their edges,
 * in the gaps between them, across page boundaries and at random addresses.
 *
 * Like CPUID workloads they are sweeps: `count` reads `stride` apart from `base`, so one case reads
 * thousands of bytes and still shrinks to one read.
 */
import fc from 'fast-check';
import type { Op } from '../ir/ops.js';
import { gaps, type DeviceMap } from '../ir/deviceMap.js';

export type ReadSpace = 'pio' | 'mmio';

/**
 * `count` reads (each of `width` bytes, or `repCount` x `width` for string forms) at
 * windowStart + ((offset + i*stride) mod windowSize): a sweep stays inside the window it was aimed
 * at (a register block, an edge, a gap, a page boundary), however many reads it makes.
 */
export interface ReadSweep {
  readonly space: ReadSpace;
  /** 'reg': IN / MOV into RAX; 'string': REP INS / REP MOVS into a buffer. */
  readonly form: 'reg' | 'string';
  readonly windowStart: bigint;
  readonly windowSize: number;
  readonly offset: number;
  readonly width: 1 | 2 | 4 | 8;
  readonly count: number;
  readonly stride: number;
  /** Elements per string instruction (REP count). */
  readonly repCount: number;
}

export interface DeviceReadWorkload {
  readonly sweeps: readonly ReadSweep[];
}

/** Upper bound of guest-physical space the generator ever aims at (64 GiB). */
export const MMIO_LIMIT = 1n << 36n;
export const PORT_LIMIT = 0x10000n;
const GIB = 1n << 30n;

/**
 * The guest-physical space sweeps aim at for a device map: everything below 4 GiB, every claimed
 * region above it, and one more GiB of unclaimed space. The guest maps all of it (Program.mapLimit);
 * mapping costs boot time (~3 ms per GiB where supervisor mode is emulated), so not 64 GiB blindly.
 */
export function mmioLimit(map: DeviceMap): bigint {
  const top = map.memory.reduce((m, r) => (r.end + 1n > m ? r.end + 1n : m), 4n * GIB);
  const limit = ((top + GIB - 1n) / GIB + 1n) * GIB;
  return limit < MMIO_LIMIT ? limit : MMIO_LIMIT;
}

export function sweepAddresses(s: ReadSweep): bigint[] {
  // The generator keeps MMIO windows below mmioLimit(map); MMIO_LIMIT is only the hard ceiling.
  const limit = s.space === 'pio' ? PORT_LIMIT : MMIO_LIMIT;
  const span = BigInt(s.width * (s.form === 'string' ? s.repCount : 1));
  const out: bigint[] = [];
  const size = Math.max(1, s.windowSize);
  for (let i = 0; i < s.count; i++) {
    const a = s.windowStart + BigInt((s.offset + i * s.stride) % size);
    // Every access stays inside the space; one that would run off its end is dropped.
    if (a + span <= limit) out.push(a);
  }
  return out;
}

export function sweepOps(s: ReadSweep): Op[] {
  return sweepAddresses(s).map((a): Op => {
    if (s.space === 'pio') {
      const width = Math.min(s.width, 4);
      return s.form === 'reg'
        ? { op: 'pioIn', port: Number(a), width }
        : { op: 'pioIns', port: Number(a), width, count: s.repCount };
    }
    return s.form === 'reg'
      ? { op: 'mmioRead', addr: a, width: s.width }
      : { op: 'mmioMovs', addr: a, width: s.width, count: s.repCount };
  });
}

export function deviceReadOps(w: DeviceReadWorkload): Op[] {
  return w.sweeps.flatMap(sweepOps);
}

/** Number of read instructions and of bytes they read. */
export function readStats(w: DeviceReadWorkload): { reads: number; bytes: number } {
  let reads = 0;
  let bytes = 0;
  for (const op of deviceReadOps(w)) {
    reads++;
    if (op.op === 'pioIn' || op.op === 'mmioRead') bytes += op.width;
    else if (op.op === 'pioIns' || op.op === 'mmioMovs') bytes += op.width * op.count;
  }
  return { reads, bytes };
}

function bigintIn(lo: bigint, hi: bigint): fc.Arbitrary<bigint> {
  return hi <= lo ? fc.constant(lo) : fc.bigInt({ min: lo, max: hi });
}

interface Window {
  readonly start: bigint;
  readonly size: number;
}

const PAGE = 4096n;

/** Windows worth reading in one space, built from the device map. */
function windowArb(space: ReadSpace, map: DeviceMap): fc.Arbitrary<Window> {
  const limit = space === 'pio' ? PORT_LIMIT : mmioLimit(map);
  const regions = (space === 'pio' ? map.io : map.memory).filter((r) => r.start < limit);
  const holes = gaps(regions, 0n, limit - 1n);
  const clampStart = (a: bigint) => (a < 0n ? 0n : a >= limit ? limit - 1n : a);
  // Choose a region by name first: microvm's 32 virtio-mmio copies must not drown the APIC.
  const byName = new Map<string, typeof regions>();
  for (const r of regions) byName.set(r.name, [...(byName.get(r.name) ?? []), r]);
  const region = byName.size ? fc.constantFrom(...byName.keys()).chain((n) => fc.constantFrom(...byName.get(n)!)) : null;
  /** Up to a page of [lo, hi], starting at a page-aligned offset (biased to the start). */
  const pageOf = (lo: bigint, hi: bigint): fc.Arbitrary<Window> => {
    const pages = (hi - lo) / PAGE;
    return bigintIn(0n, pages).map((p) => {
      const start = lo + p * PAGE;
      const end = hi < start + PAGE - 1n ? hi : start + PAGE - 1n;
      return { start, size: Number(end - start + 1n) };
    });
  };
  const choices: { weight: number; arbitrary: fc.Arbitrary<Window> }[] = [];
  if (region) {
    choices.push({ weight: 6, arbitrary: region.chain((r) => pageOf(r.start, r.end < limit ? r.end : limit - 1n)) });
    // Edges: 8 bytes either side of a region's first or one-past-last address.
    choices.push({
      weight: 3,
      arbitrary: fc.tuple(region, fc.boolean()).map(([r, atEnd]) => ({ start: clampStart((atEnd ? r.end + 1n : r.start) - 8n), size: 16 })),
    });
  }
  if (holes.length > 0) choices.push({ weight: 2, arbitrary: fc.constantFrom(...holes).chain((h) => pageOf(h.start, h.end)) });
  if (space === 'mmio') {
    // Page boundaries: the 16 bytes around one, inside or at the end of a region.
    choices.push({
      weight: 2,
      arbitrary: fc.tuple(region ?? fc.constant(null), fc.boolean()).map(([r, last]) => {
        const anchor = r ? (last ? r.end : r.start) : 0xfee00000n;
        return { start: clampStart(((anchor >> 12n) + 1n) * PAGE - 8n), size: 16 };
      }),
    });
  }
  choices.push({ weight: 1, arbitrary: bigintIn(0n, limit / PAGE - 1n).map((p) => ({ start: p * PAGE, size: Number(limit < PAGE ? limit : PAGE) })) });
  return fc.oneof(...choices);
}

export function readSweepArb(map: DeviceMap, opts: { maxCount?: number } = {}): fc.Arbitrary<ReadSweep> {
  const maxCount = opts.maxCount ?? 384;
  return fc.constantFrom<ReadSpace>('pio', 'mmio').chain((space) =>
    windowArb(space, map).chain((win) =>
      fc.record({
        space: fc.constant(space),
        form: fc.constantFrom<'reg' | 'string'>('reg', 'reg', 'string'),
        windowStart: fc.constant(win.start),
        windowSize: fc.constant(win.size),
        offset: fc.integer({ min: 0, max: win.size - 1 }),
        width: space === 'pio' ? fc.constantFrom<1 | 2 | 4>(1, 2, 4) : fc.constantFrom<1 | 2 | 4 | 8>(1, 2, 4, 8),
        count: fc.integer({ min: 1, max: maxCount }),
        stride: fc.oneof(fc.integer({ min: 1, max: 8 }), fc.constantFrom(16, 64, 0x100)),
        repCount: fc.integer({ min: 1, max: 16 }),
      }),
    ),
  );
}

export function deviceReadWorkloadArb(map: DeviceMap, opts: { maxSweeps?: number; maxCount?: number } = {}): fc.Arbitrary<DeviceReadWorkload> {
  // size 'max' for the same reason as CPUID workloads: thousands of reads per VM boot.
  return fc.record({ sweeps: fc.array(readSweepArb(map, opts), { minLength: 1, maxLength: opts.maxSweeps ?? 48, size: 'max' }) });
}
