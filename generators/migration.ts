/**
 * Migration cases: a dirtying workload (models/migration/dirty.ts) and the parameters of the
 * migration that moves it: dirty bitmap or dirty ring, multifd and its channels, xbzrle and its
 * cache, auto-converge, max-bandwidth and downtime-limit, postcopy (and preempt), a first attempt
 * that cannot converge and is cancelled before the retry, ping-pong A→B→C, RAM size and vCPUs,
 * and how each hop goes: live over a unix socket, or saved into a file and restored from it.
 *
 * The workload is data, not a command sequence: per thread, regions (how many pages, how far
 * apart, where in the page, in address order or scattered, which store instruction, how often per loop: a hot set is a region
 * passed several times) and a delay per loop (the dirty rate). `layoutWorkload` places the regions
 * in the arena deterministically, so a shrunk case places them the same way again.
 */
import fc from 'fast-check';
import type { Op } from '../ir/ops.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { LAYOUT } from '../harness/guest/abi.js';
import type { RamBackend } from '../harness/ramMap.js';
import { scatterStep, WRITER_CODES, isVectorWriter, writerBytes, type BodyStep, type ClockWatch, type DirtyRegion, type DirtyWorkload, type WriterKind } from '../models/migration/dirty.js';
import { APIC_LVTT, IOAPIC_BASE, LAPIC_VECTOR, lvttValue, MSR_KVM_SYSTEM_TIME_NEW, MSR_TSC_DEADLINE, PIT_VECTOR } from './timers.js';

export const PAGE = 4096;
/** The arena starts above the guest's own areas (observations end well below 32 MiB here). */
export const ARENA_BASE = 0x0200_0000;
/** What thread i publishes once its prelude is done and it loops: the host waits for it. */
export const LOOPING_MARK = 0x4d49_4752n; // 'MIGR'
/** The sentinel pages' first word: found again in the stream by the sensitivity proxies. */
export const SENTINEL_MAGIC = 0x5047_5053_4d56_4b70n; // 'pKVMSPGP'

export type Placement = 'page-start' | 'in-page' | 'straddle';

export interface RegionSpec {
  readonly pages: number;
  /** Counters this many pages apart (1: every page). */
  readonly stridePages: number;
  readonly placement: Placement;
  /** For 'in-page': the counter's 8-aligned offset in its page. */
  readonly offset: number;
  readonly writer: WriterKind;
  /** Passes over it per loop (more than 1: a hot set). */
  readonly passes: number;
  /** Untouched pages before it. */
  readonly gapPages: number;
  /**
   * Null or absent: a pass writes the counters in address order. A number: in a scattered order
   * (models/migration/dirty.ts scatterStep), as a random-access writer does. Absent in cases saved
   * before it existed.
   */
  readonly scatter?: number | null;
}

export interface ThreadSpec {
  readonly regions: readonly RegionSpec[];
  /** Busy-wait per loop, in µs (0: dirty as fast as the vCPU can). */
  readonly delayUs: number;
}

export type DirtyTracking = { readonly kind: 'bitmap' } | { readonly kind: 'ring'; readonly size: number };

export interface StreamParams {
  readonly multifdChannels: number | null;
  readonly xbzrleCacheMiB: number | null;
  readonly autoConverge: boolean;
  /** MiB/s; null: QEMU's default. */
  readonly maxBandwidthMiBs: number | null;
  readonly downtimeLimitMs: number;
  /** Switch to postcopy this long after the start (postcopy-ram; postcopy-preempt too when preempt). */
  readonly postcopy: { readonly afterMs: number; readonly preempt: boolean } | null;
}

/** How one hop moves the guest: live over a unix socket, or saved into a file and restored from it. */
export type HopVia = 'socket' | 'file';

export interface MigrationCase {
  readonly cpus: 1 | 2;
  readonly ramMiB: number;
  readonly tracking: DirtyTracking;
  readonly stream: StreamParams;
  /** Start a migration that cannot converge (1 MiB/s, 1 ms downtime), cancel it, then migrate for real. */
  readonly cancelFirst: boolean;
  /** A→B, then B (resumed, run, stopped) → C. */
  readonly pingPong: boolean;
  /**
   * Per hop (A→B, B→C): live over a socket, or saved into a file (the guest stopped first, as a
   * save does) and restored from it (a file has one channel and no return path: never with
   * multifd or postcopy). Absent in cases saved before it
   * existed: every hop over a socket.
   */
  readonly via?: readonly HopVia[];
  /** How long the guest dirties before the migration starts, and how long the destination runs after. */
  readonly warmupMs: number;
  readonly runAfterMs: number;
  readonly sentinels: number;
  readonly threads: readonly ThreadSpec[];
  /** Every thread also watches kvmclock (TSC always) for steps back across the switchovers. */
  readonly kvmclock: boolean;
  /**
   * Every vCPU enables KVM steal time (a page KVM itself writes for the guest at each entry after
   * the vCPU waited to run: Linux Documentation/virt/kvm/x86/msr.rst MSR_KVM_STEAL_TIME) and every
   * thread watches it: the steal a guest was told of never shrinks across a switchover. Absent in
   * cases saved before it existed: off.
   */
  readonly stealTime?: boolean;
  /**
   * Every vCPU enables PV EOI (MSR_KVM_PV_EOI_EN, Linux Documentation/virt/kvm/x86/msr.rst): a
   * flag in guest RAM that KVM itself sets when it injects an interrupt (the deadline's, the
   * PIT's) and clears after: another page only KVM writes, which dirty tracking must send.
   * Absent in cases saved before it existed: off.
   */
  readonly pvEoi?: boolean;
  /** vCPU 0 arms a TSC deadline this far ahead before the migration (it may fall before, during or after it). */
  readonly deadlineMs: number | null;
  /**
   * With a deadline or a PIT one-shot: vCPU 0 keeps interrupts off this long after arming them
   * (the marker comes first, so the migration starts meanwhile): an interrupt that comes then is
   * pending, perhaps across the switchover, and must be delivered once, after STI.
   */
  readonly maskedForMs: number | null;
  /**
   * vCPU 0 starts PIT channel 0 in mode 0 (interrupt on terminal count: one rising edge of OUT,
   * Intel 8254 data sheet) this far ahead, IRQ0 routed through the IOAPIC to it with the 8259s
   * masked: a device interrupt that may come before, during or after the switchover (pending in
   * the IOAPIC's and LAPIC's state, or still counting in the PIT's), delivered exactly once.
   * Absent in cases saved before it existed: none.
   */
  readonly pitOneShotMs?: number | null;
  /**
   * What backs guest RAM on every VM of the case (MachineConfig.ramBackend): the source, each
   * destination, a file hop's restore. Absent in cases saved before it existed: 'file'.
   */
  readonly ramBackend?: RamBackend;
}

export interface CaseLimits {
  /** The family's RAM sizes (MiB) to draw from. */
  readonly ramMiB: readonly number[];
  readonly maxCpus: 1 | 2;
  readonly dirtyRing: boolean;
  readonly postcopy: boolean;
  /** kvmclock exists (KVM). */
  readonly kvmclock: boolean;
  /** The vCPU's KVM leaf offers PV EOI (QEMU's kvm-pv-eoi). Absent: no PV EOI cases. */
  readonly pvEoi?: boolean;
  readonly tscDeadline: boolean;
  /** The machine has an 8254 PIT on IRQ0 and an IOAPIC (microvm's defaults). Absent: no PIT cases. */
  readonly pit?: boolean;
  /** Only plain precopy (a stream proxy that understands nothing else), one hop, the smallest RAM. */
  readonly plainStream?: boolean;
  /** The vCPU's CPUID has XSAVE and AVX (the 'avx' writer), and AVX512F too ('avx512'): from QEMU's facts, not the host's. */
  readonly avx?: boolean;
  readonly avx512?: boolean;
  /**
   * The RAM backends the host runs ('file' first: what a case shrinks to). 'hugetlbfs' only with
   * `hugePagesMiB`, the host's free 2 MiB huge pages in MiB: a case that would need more (all its
   * VMs at once) runs on 'file'. Absent: 'file' only.
   */
  readonly ramBackends?: readonly RamBackend[];
  readonly hugePagesMiB?: number;
}

/** How many VMs of a case hold its RAM at once: source, destination, the cancelled one, ping-pong's third. */
export function vmsOf(c: Pick<MigrationCase, 'cancelFirst' | 'pingPong'>): number {
  return 2 + (c.cancelFirst ? 1 : 0) + (c.pingPong ? 1 : 0);
}

const SCALAR_WRITERS: readonly WriterKind[] = ['mov', 'lock-add', 'movnti', 'rep-stosq', 'rep-movsq'];

/** The store instructions a case may draw: the scalar kinds always, a vector kind where the vCPU has it. */
export function writersFor(lim: Pick<CaseLimits, 'avx' | 'avx512'>): WriterKind[] {
  return [...SCALAR_WRITERS, ...(lim.avx ? (['avx'] as const) : []), ...(lim.avx && lim.avx512 ? (['avx512'] as const) : [])];
}

/** The writers a case cannot draw under these limits, each with why (a run says so once: family notGenerated). */
export function writersNotGenerated(lim: Pick<CaseLimits, 'avx' | 'avx512'>): { what: string; why: string }[] {
  const out: { what: string; why: string }[] = [];
  if (!lim.avx) out.push({ what: "dirtyWrite writer 'avx' (VMOVDQU ymm)", why: "the vCPU's CPUID has no XSAVE or no AVX" });
  if (!(lim.avx && lim.avx512)) out.push({ what: "dirtyWrite writer 'avx512' (VMOVDQU64 zmm)", why: lim.avx ? "the vCPU's CPUID has no AVX512F" : "the vCPU's CPUID has no XSAVE or no AVX" });
  return out;
}

function regionArb(writers: readonly WriterKind[]): fc.Arbitrary<RegionSpec> {
  return fc.record({
    pages: fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 1, max: 64 }) }, { weight: 2, arbitrary: fc.integer({ min: 65, max: 2048 }) }, { weight: 1, arbitrary: fc.integer({ min: 2049, max: 8192 }) }),
    stridePages: fc.constantFrom(1, 1, 1, 2, 16, 512),
    placement: fc.constantFrom<Placement>('page-start', 'page-start', 'in-page', 'straddle'),
    offset: fc.integer({ min: 1, max: 511 }).map((q) => q * 8),
    writer: fc.constantFrom(...writers),
    passes: fc.oneof({ weight: 4, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.integer({ min: 2, max: 8 }) }),
    gapPages: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 600 })),
    scatter: fc.oneof({ weight: 2, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 0xffff }) }),
  }).map((r) => ({ ...r, pages: Math.min(r.pages, Math.floor(8192 / r.stridePages)) })); // at most 32 MiB apart end to end
}

export function migrationCaseArb(lim: CaseLimits): fc.Arbitrary<MigrationCase> {
  const threadArb = fc.record({ regions: fc.array(regionArb(writersFor(lim)), { minLength: 1, maxLength: 4 }), delayUs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 2000 })) });
  const tracking: fc.Arbitrary<DirtyTracking> = lim.dirtyRing
    ? fc.oneof(fc.constant({ kind: 'bitmap' as const }), fc.constantFrom(4096, 16384, 65536).map((size) => ({ kind: 'ring' as const, size })))
    : fc.constant({ kind: 'bitmap' as const });
  const stream: fc.Arbitrary<StreamParams> = lim.plainStream
    ? fc.record({ multifdChannels: fc.constant(null), xbzrleCacheMiB: fc.constant(null), autoConverge: fc.constant(false), maxBandwidthMiBs: fc.constant(null), downtimeLimitMs: fc.constant(300), postcopy: fc.constant(null) })
    : fc
        .record({
          multifdChannels: fc.option(fc.constantFrom(2, 4), { freq: 3 }),
          xbzrleCacheMiB: fc.option(fc.constantFrom(4, 16, 64), { freq: 3 }),
          autoConverge: fc.boolean(),
          maxBandwidthMiBs: fc.option(fc.constantFrom(64, 256, 1024), { freq: 2 }),
          downtimeLimitMs: fc.constantFrom(50, 300, 1000),
          postcopy: lim.postcopy ? fc.option(fc.record({ afterMs: fc.integer({ min: 0, max: 300 }), preempt: fc.boolean() }), { freq: 4 }) : fc.constant(null),
        })
        // QEMU 7.2 refuses these together: xbzrle rides the precopy RAM stream multifd replaces,
        // and postcopy cannot follow multifd.
        .map((s) => ({ ...s, xbzrleCacheMiB: s.multifdChannels ? null : s.xbzrleCacheMiB, postcopy: s.multifdChannels ? null : s.postcopy }));
  return fc.record({
    cpus: lim.maxCpus === 2 ? fc.constantFrom<1 | 2>(1, 2) : fc.constant<1 | 2>(1),
    ramMiB: lim.plainStream ? fc.constant(Math.min(...lim.ramMiB)) : fc.constantFrom(...lim.ramMiB),
    tracking,
    stream,
    cancelFirst: lim.plainStream ? fc.constant(false) : fc.boolean(),
    pingPong: lim.plainStream ? fc.constant(false) : fc.boolean(),
    via: lim.plainStream ? fc.constant<HopVia[]>(['socket', 'socket']) : fc.array(fc.constantFrom<HopVia>('socket', 'socket', 'file'), { minLength: 2, maxLength: 2 }),
    warmupMs: fc.integer({ min: 0, max: 200 }),
    runAfterMs: fc.integer({ min: 20, max: 200 }),
    sentinels: fc.integer({ min: 1, max: 8 }),
    threads: fc.array(threadArb, { minLength: 2, maxLength: 2 }),
    kvmclock: lim.kvmclock ? fc.boolean() : fc.constant(false),
    stealTime: lim.kvmclock ? fc.boolean() : fc.constant(false),
    pvEoi: lim.pvEoi ? fc.boolean() : fc.constant(false),
    deadlineMs: lim.tscDeadline ? fc.option(fc.integer({ min: 1, max: 800 }), { freq: 3 }) : fc.constant(null),
    maskedForMs: fc.option(fc.integer({ min: 1, max: 1500 }), { freq: 2 }),
    pitOneShotMs: lim.pit ? fc.option(fc.integer({ min: 1, max: PIT_ONE_SHOT_MAX_MS }), { freq: 3 }) : fc.constant(null),
    ramBackend: lim.plainStream || !lim.ramBackends?.length ? fc.constant<RamBackend>('file') : fc.constantFrom(...lim.ramBackends),
  }).map((c) => ({
    ...c,
    threads: c.threads.slice(0, c.cpus),
    maskedForMs: c.deadlineMs === null && c.pitOneShotMs === null ? null : c.maskedForMs,
    // Huge pages the host cannot hold for every VM of the case at once: the case runs on a file.
    ramBackend: c.ramBackend === 'hugetlbfs' && vmsOf(c) * c.ramMiB > (lim.hugePagesMiB ?? 0) ? 'file' : c.ramBackend,
  })).map((c) => {
    // A hop through a file takes one channel and has no return path: such a case runs without
    // multifd and postcopy (only the hops it makes count: a second hop needs ping-pong).
    const hops = c.pingPong ? 2 : 1;
    if (!c.via.slice(0, hops).includes('file')) return c;
    return { ...c, stream: { ...c.stream, multifdChannels: null, postcopy: null } };
  });
}

/**
 * A hand-written case: one 64 MiB VM over one socket hop, dirty bitmap, plain precopy with a
 * 300 ms downtime limit, nothing else on, with `over` on top (tests and benchmarks start here).
 */
export function plainCase(over: Partial<MigrationCase> & Pick<MigrationCase, 'threads'>): MigrationCase {
  return {
    cpus: 1,
    ramMiB: 64,
    tracking: { kind: 'bitmap' },
    stream: { multifdChannels: null, xbzrleCacheMiB: null, autoConverge: false, maxBandwidthMiBs: null, downtimeLimitMs: 300, postcopy: null },
    cancelFirst: false,
    pingPong: false,
    warmupMs: 0,
    runAfterMs: 20,
    sentinels: 1,
    kvmclock: false,
    deadlineMs: null,
    maskedForMs: null,
    ...over,
  };
}

/** How hop `i` of a case goes (a case saved before `via` existed: over a socket). */
export function hopVia(c: MigrationCase, i: number): HopVia {
  return c.via?.[i] ?? 'socket';
}

/** Where a region's first counter goes, relative to its first page. */
function offsetOf(r: RegionSpec): number {
  return r.placement === 'page-start' ? 0 : r.placement === 'straddle' ? PAGE - 4 : r.offset;
}

/**
 * Place every thread's regions, in order, each after its gap, then the sentinel pages; a region
 * that would run past the arena's end is left out (the RAM drawn was too small for it).
 */
export function layoutWorkload(c: MigrationCase): { workload: DirtyWorkload; dropped: number } {
  const arenaEnd = c.ramMiB * 1024 * 1024;
  let cursor = ARENA_BASE;
  let dropped = 0;
  const regions: DirtyRegion[] = [];
  const threads = c.threads.map((t) => {
    const body: BodyStep[] = [];
    for (const r of t.regions) {
      const stride = r.stridePages * PAGE;
      // A locked add split across cache lines is a split lock (#AC or a bus lock): keep it whole.
      const writer = r.writer === 'lock-add' && r.placement === 'straddle' ? 'mov' : r.writer;
      const start = cursor + r.gapPages * PAGE;
      const base = start + offsetOf(r);
      // The whole span of the last store (32 or 64 bytes for a vector writer): the next region,
      // the sentinels and the watch page start past it, so a read-modify-write vector store never
      // rewrites a byte another writer may change meanwhile (models/migration/dirty.ts spanOverlaps).
      const end = base + (r.pages - 1) * stride + writerBytes(writer);
      if (end > arenaEnd - (c.sentinels + 2) * PAGE) { // room for the sentinels and the watch page
        dropped++;
        continue;
      }
      cursor = Math.ceil(end / PAGE) * PAGE;
      const step = r.scatter ? scatterStep(r.pages, r.scatter) : 1;
      const index = regions.push({ base, pages: r.pages, stride, writer, ...(step !== 1 ? { step } : {}) }) - 1;
      for (let p = 0; p < r.passes; p++) body.push({ kind: 'pass', region: index });
    }
    return { delayUs: t.delayUs, body };
  });
  const sentinels = Array.from({ length: c.sentinels }, (_, i) => cursor + (i + 1) * PAGE);
  // The clock watches' page, after the sentinels (its words change as the guest runs).
  const watchPage = cursor + (c.sentinels + 1) * PAGE;
  const watches: ClockWatch[] = threads.flatMap((_, t) => [
    { thread: t, kind: 'tsc' as const, slot: watchPage + t * 128 },
    ...(c.kvmclock ? [{ thread: t, kind: 'kvmclock' as const, slot: watchPage + t * 128 + 32 }] : []),
    ...(c.stealTime ? [{ thread: t, kind: 'steal' as const, slot: watchPage + t * 128 + 64 }] : []),
  ]);
  return {
    workload: {
      arenaBase: ARENA_BASE,
      arenaEnd,
      regions,
      sentinels,
      magic: SENTINEL_MAGIC,
      watches,
      reserved: [{ addr: watchPage, len: PAGE }],
      threads: threads.map((t, i) => ({
        preludeOps: preludeOf(c, sentinels, i).length,
        body: [
          ...t.body,
          ...(t.delayUs ? [{ kind: 'delay' as const }] : []),
          ...watches.filter((w) => w.thread === i).map(() => ({ kind: 'watch' as const })),
        ],
      })),
    },
    dropped,
  };
}

/** clockWatch's kind operand for each watched clock (ir/ops.ts). */
const WATCH_KINDS = { tsc: 0, kvmclock: 1, steal: 2 } as const;

/** The guest-physical address of vCPU t's steal time area (harness/guest/abi.ts LAYOUT.stealTime, PROGRAM_FLAGS.stealTime). */
export function stealTimeOf(t: number): number {
  return LAYOUT.stealTime + t * LAYOUT.stealTimeStride;
}

/** MSR_KVM_PV_EOI_EN (msr.rst): bit 0 enables, bits 63:2 the flag's guest-physical address. */
export const MSR_KVM_PV_EOI_EN = 0x4b56_4d04;

/** The guest-physical address of vCPU t's PV EOI flag (harness/guest/abi.ts LAYOUT.pvEoi). */
export function pvEoiOf(t: number): number {
  return LAYOUT.pvEoi + t * LAYOUT.pvEoiStride;
}

/** The guest-physical address of vCPU t's kvmclock area (harness/guest/abi.ts LAYOUT.pvclock). */
export function pvclockOf(t: number): number {
  return LAYOUT.pvclock + t * LAYOUT.pvclockStride;
}

/**
 * What a thread does once, before its loop: thread 0 writes the sentinels and arms the deadline
 * (LVTT in TSC-deadline mode, IA32_TSC_DEADLINE = now + the distance, interrupts on, or on only
 * after maskedForMs), every thread turns its kvmclock on and fills its vector registers; a marker
 * tells the host the migration may start.
 */
function preludeOf(c: MigrationCase, sentinels: readonly number[], t: number, tscHz = 0): Op[] {
  const cycles = (ms: number) => BigInt(Math.round(ms * 1e-3 * tscHz));
  const ops: Op[] = [];
  if (t === 0) {
    sentinels.forEach((page, i) => {
      ops.push({ op: 'mmioWrite', addr: BigInt(page), width: 8, value: SENTINEL_MAGIC }, { op: 'mmioWrite', addr: BigInt(page + 8), width: 8, value: BigInt(i) });
    });
  }
  if (c.kvmclock) ops.push({ op: 'wrmsr', msr: MSR_KVM_SYSTEM_TIME_NEW, value: BigInt(pvclockOf(t)) | 1n });
  if (c.pvEoi) ops.push({ op: 'wrmsr', msr: MSR_KVM_PV_EOI_EN, value: BigInt(pvEoiOf(t)) | 1n });
  ops.push({ op: 'fillXmm', seed: xmmSeed(t) });
  const pitMs = c.pitOneShotMs ?? null;
  if (t !== 0 || (c.deadlineMs === null && pitMs === null)) return [...ops, { op: 'mark', value: LOOPING_MARK }];
  // relative 1: the TSC just before the write plus the distance; the record keeps the value written.
  if (c.deadlineMs !== null) ops.push({ op: 'apicWrite', reg: APIC_LVTT, value: BigInt(lvttValue('tsc-deadline', false)) }, { op: 'wrmsrAt', msr: MSR_TSC_DEADLINE, relative: 1, value: cycles(c.deadlineMs) });
  if (pitMs !== null) ops.push(...pitOneShotOps(pitMs));
  if (c.maskedForMs === null) return [...ops, { op: 'sti' }, { op: 'mark', value: LOOPING_MARK }];
  // Interrupts stay off for a while with the migration under way; the rdtsc record says when they came on.
  return [...ops, { op: 'mark', value: LOOPING_MARK }, { op: 'delayTsc', cycles: cycles(c.maskedForMs) }, { op: 'rdtsc' }, { op: 'sti' }];
}

/** The 8254's input clock, Hz. */
export const PIT_HZ = 1_193_182;
/** A mode 0 count is at most 65535 ticks: 54.9 ms. */
export const PIT_ONE_SHOT_MAX_MS = 54;
/** The vector IRQ0 is routed to (the timer family's). */
export const PIT_ONE_SHOT_VECTOR = PIT_VECTOR;

/** The mode 0 count of a one-shot `ms` ahead. */
export function pitOneShotCount(ms: number): number {
  return Math.min(0xffff, Math.max(1, Math.round((ms * PIT_HZ) / 1000)));
}

/**
 * PIT channel 0 in mode 0 with the count of `ms`, between two RDTSCs (counting starts with the
 * count's high byte), then IRQ0 routed: the 8259s masked, IOAPIC pins 0 and 2 (QEMU's userspace
 * IOAPIC without the ISA override, and KVM's routing with it) fixed to vCPU 0, edge, unmasked.
 * The mode write drops OUT at once (mode 0), so routing after it sees no edge of the reset mode 3.
 */
function pitOneShotOps(ms: number): Op[] {
  const count = pitOneShotCount(ms);
  const route = (pin: number): Op[] => [
    { op: 'mmioWrite', addr: IOAPIC_BASE, width: 4, value: BigInt(0x11 + 2 * pin) },
    { op: 'mmioWrite', addr: IOAPIC_BASE + 0x10n, width: 4, value: 0n },
    { op: 'mmioWrite', addr: IOAPIC_BASE, width: 4, value: BigInt(0x10 + 2 * pin) },
    { op: 'mmioWrite', addr: IOAPIC_BASE + 0x10n, width: 4, value: BigInt(PIT_ONE_SHOT_VECTOR) },
  ];
  return [
    { op: 'pioOut', port: 0x21, width: 1, value: 0xff },
    { op: 'pioOut', port: 0xa1, width: 1, value: 0xff },
    { op: 'rdtsc' },
    { op: 'pioOut', port: 0x43, width: 1, value: 0x30 }, // channel 0, LSB then MSB, mode 0, binary
    { op: 'pioOut', port: 0x40, width: 1, value: count & 0xff },
    { op: 'pioOut', port: 0x40, width: 1, value: count >> 8 },
    { op: 'rdtsc' },
    ...route(0),
    ...route(2),
  ];
}

/** Where in a thread's prelude (its ops before loopBegin) the stamps the judge reads are: op indexes, or null. */
export interface PreludeStamps {
  /** The wrmsrAt that armed the deadline. */
  readonly deadline: number | null;
  /** The RDTSCs around the PIT's mode and count writes. */
  readonly pitBefore: number | null;
  readonly pitAfter: number | null;
  /** The RDTSC just before the STI that ends a masked window. */
  readonly unmask: number | null;
}

export function preludeStamps(prelude: readonly Op[]): PreludeStamps {
  const at = (i: number) => prelude[i];
  const pitBefore = prelude.findIndex((o, i) => o.op === 'rdtsc' && at(i + 1)?.op === 'pioOut' && (at(i + 1) as { port: number }).port === 0x43);
  const pitAfter = pitBefore < 0 ? -1 : prelude.findIndex((o, i) => i > pitBefore && o.op === 'rdtsc');
  const unmask = prelude.findIndex((o, i) => o.op === 'rdtsc' && at(i + 1)?.op === 'sti');
  const deadline = prelude.findIndex((o) => o.op === 'wrmsrAt');
  const orNull = (i: number) => (i < 0 ? null : i);
  return { deadline: orNull(deadline), pitBefore: orNull(pitBefore), pitAfter: orNull(pitAfter), unmask: orNull(unmask) };
}

/** The seed of thread t's vector-register pattern (ir/ops.ts fillXmm). */
export function xmmSeed(t: number): bigint {
  return 0x584d_4d00_0000_0000n + (BigInt(t) << 32n);
}

/** What XMMi of thread t's vCPU holds, as QEMU's `info registers` prints it: high quadword, then low. */
export function xmmPattern(t: number, i: number): string {
  const lo = BigInt.asUintN(64, xmmSeed(t) + BigInt(i));
  const hi = BigInt.asUintN(64, ~lo);
  return `${hi.toString(16).padStart(16, '0')} ${lo.toString(16).padStart(16, '0')}`;
}

/** The vector the deadline interrupts with (the timer family's). */
export const DEADLINE_VECTOR = LAPIC_VECTOR;

/** The guest program of a workload: sentinels and a marker, then each thread's loop forever. */
export function migrationProgram(c: MigrationCase, w: DirtyWorkload, tscHz: number): Program {
  const threads = w.threads.map((t, ti): Op[] => {
    const prelude = preludeOf(c, w.sentinels, ti, tscHz);
    const delayCycles = BigInt(Math.round((c.threads[ti]!.delayUs * tscHz) / 1e6));
    const watches = w.watches.filter((x) => x.thread === ti);
    let wi = 0;
    const body = t.body.map((s): Op => {
      if (s.kind === 'delay') return { op: 'delayTsc', cycles: delayCycles };
      if (s.kind === 'watch') {
        const x = watches[wi++]!;
        return { op: 'clockWatch', slot: BigInt(x.slot), kind: WATCH_KINDS[x.kind], clock: BigInt(x.kind === 'steal' ? stealTimeOf(ti) : pvclockOf(ti)) };
      }
      const r = w.regions[s.region]!;
      return { op: 'dirtyWrite', base: BigInt(r.base), pages: r.pages, stride: r.stride, writer: WRITER_CODES[r.writer], step: r.step ?? 1 };
    });
    return [...prelude, { op: 'loopBegin', count: 0 }, ...body, { op: 'loopEnd' }];
  });
  // AVX state only where a writer needs it: CR4.OSXSAVE and XCR0 show in CPUID and `info registers`.
  const avxState = w.regions.some((r) => isVectorWriter(r.writer));
  return { threads, canary: DEFAULT_CANARY, ...(c.stealTime ? { stealTime: true } : {}), ...(avxState ? { avxState: true } : {}) };
}

/** Distinct pages one loop of the workload writes: what precopy must re-send each iteration. */
export function workingSetPages(w: DirtyWorkload): number {
  const pages = new Set<number>();
  for (const r of w.regions) {
    for (let i = 0; i < r.pages; i++) {
      const a = r.base + i * r.stride;
      pages.add(Math.floor(a / PAGE));
      pages.add(Math.floor((a + writerBytes(r.writer) - 1) / PAGE));
    }
  }
  return pages.size;
}
