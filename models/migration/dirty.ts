/**
 * The reference model of a dirtying workload: what guest RAM must hold after a thread has
 * completed a given number of ops.
 *
 * A migration workload thread is: a prelude (sentinel pages written once, then a marker), then a
 * loop that never ends over a body of dirtying passes (each adds 1 to a u64 counter in every page
 * of its region, with one store instruction kind) and delays. The guest counts every op it
 * completes (ops_done, loop ops included, harness/guest/src/interp.c), and that counter lives in
 * guest RAM, so it migrates with the pages: from a VM's own ops_done the model knows exactly how
 * many times each pass completed. The one pass in progress when the vCPU stopped has done a prefix
 * of its region: its counters read c+1 up to some page and c from there (QEMU's migration-test
 * invariant, "every page equal except one +1 edge", made exact). Every other byte of the arena is
 * zero: the arena starts zeroed and nothing but the workload writes it.
 */

/** The store instruction a pass uses (ir/ops.ts dirtyWrite: writer). */
export type WriterKind = 'mov' | 'lock-add' | 'movnti' | 'rep-stosq' | 'rep-movsq' | 'avx' | 'avx512';
export const WRITER_CODES: Readonly<Record<WriterKind, number>> = { mov: 0, 'lock-add': 1, movnti: 2, 'rep-stosq': 3, 'rep-movsq': 4, avx: 5, avx512: 6 };

/**
 * The bytes one store of a writer covers, from the counter's address: 8 for the scalar kinds; 32
 * for 'avx' (VMOVDQU ymm) and 64 for 'avx512' (VMOVDQU64 zmm), which read that span, add 1 to its
 * low qword and store it all back. So the other bytes keep their values only while nobody else
 * writes them meanwhile: no other region's counter, sentinel or watch may lie in a span
 * (`spanOverlaps`), and every page a span touches is dirtied, even where no byte changes.
 */
export function writerBytes(w: WriterKind): number {
  return w === 'avx' ? 32 : w === 'avx512' ? 64 : 8;
}

/** The vector writers: they need the vCPU's AVX (AVX512F) and the guest's AVX state (ir/program.ts avxState). */
export function isVectorWriter(w: WriterKind): boolean {
  return w === 'avx' || w === 'avx512';
}

/** [addr, addr + len) of every store of a region. */
export function regionSpans(r: DirtyRegion): { addr: number; len: number }[] {
  return Array.from({ length: r.pages }, (_, i) => ({ addr: r.base + i * r.stride, len: writerBytes(r.writer) }));
}

/**
 * Pairs of spans that overlap though different writers may write them concurrently: a vector
 * store's span of one region and another region's counter or span, a sentinel's words or a
 * reserved span (two overlapping words are layoutProblems' own finding). Empty for a
 * workload whose read-modify-write stores give back every byte the model predicts.
 */
export function spanOverlaps(w: DirtyWorkload): { region: number; addr: number; other: string }[] {
  type Span = { lo: number; hi: number; who: string; region: number | null };
  const spans: Span[] = [
    ...w.regions.flatMap((r, ri) => regionSpans(r).map((s) => ({ lo: s.addr, hi: s.addr + s.len, who: `region ${ri}`, region: ri }))),
    ...w.sentinels.map((p, i) => ({ lo: p, hi: p + 16, who: `sentinel ${i}`, region: null })),
    ...w.reserved.map((x, i) => ({ lo: x.addr, hi: x.addr + x.len, who: `reserved ${i}`, region: null })),
  ].sort((a, b) => a.lo - b.lo);
  const out: { region: number; addr: number; other: string }[] = [];
  // Sorted by start: a span overlaps a later one iff that one starts before it ends.
  for (let i = 0; i < spans.length; i++) {
    const a = spans[i]!;
    for (let j = i + 1; j < spans.length && spans[j]!.lo < a.hi; j++) {
      const b = spans[j]!;
      if (a.region !== null && a.region === b.region) continue; // one region, one thread, in order
      if (a.hi - a.lo <= 8 && b.hi - b.lo <= 8) continue; // two words: layoutProblems' own overlap check
      const r = a.region ?? b.region;
      if (r === null) continue;
      out.push({ region: r, addr: Math.max(a.lo, b.lo), other: a.region === r ? b.who : a.who });
    }
  }
  return out;
}

/** A region one pass dirties: a u64 counter at base + i * stride for i below pages. */
export interface DirtyRegion {
  readonly base: number;
  readonly pages: number;
  readonly stride: number;
  readonly writer: WriterKind;
  /**
   * The order a pass visits the counters in: the i-th store goes to counter (i*step) mod pages
   * (step coprime with pages). Absent or 1: in address order; larger: scattered, as a random
   * access pattern is, so that no run of consecutive pages is written in order.
   */
  readonly step?: number;
}

/** The counter index the i-th store of a pass over r goes to. */
export function visitIndex(r: DirtyRegion, i: number): number {
  return Number((BigInt(i) * BigInt(r.step ?? 1)) % BigInt(r.pages));
}

/** A step of the loop body: a pass over a region, a busy-wait or a clock watch (neither changes a counter). */
export type BodyStep = { readonly kind: 'pass'; readonly region: number } | { readonly kind: 'delay' } | { readonly kind: 'watch' };

/** A clock watch (ir/ops.ts clockWatch): four u64 at slot, last reading, steps back, the largest step back, samples. */
export interface ClockWatch {
  readonly thread: number;
  readonly kind: 'tsc' | 'kvmclock' | 'steal';
  readonly slot: number;
}

export interface ThreadWorkload {
  /** How many ops come before the loop (sentinel writes and the marker). */
  readonly preludeOps: number;
  /** The loop body, run forever. */
  readonly body: readonly BodyStep[];
}

export interface DirtyWorkload {
  /** Where the workload writes: [arenaBase, arenaEnd). */
  readonly arenaBase: number;
  readonly arenaEnd: number;
  /** Regions, none overlapping another's counters. */
  readonly regions: readonly DirtyRegion[];
  /** Pages written once in thread 0's prelude: `magic` at offset 0, their index at offset 8. */
  readonly sentinels: readonly number[];
  readonly magic: bigint;
  readonly threads: readonly ThreadWorkload[];
  readonly watches: readonly ClockWatch[];
  /** Spans whose bytes the model does not predict (the clock watches' page). */
  readonly reserved: readonly { readonly addr: number; readonly len: number }[];
}

/** What a counter must read: exactly `value`, or (in the pass in progress) `value` or `value + 1` with one edge. */
export interface CounterExpectation {
  readonly addr: number;
  readonly value: bigint;
  /** Set for the counters of the pass in progress: the region and the page's index in it. */
  readonly edge?: { readonly region: number; readonly thread: number; readonly index: number };
}

export interface ThreadProgress {
  /** Completed passes of each body step (delays counted too, for the record). */
  readonly completed: readonly number[];
  /** The body step in progress, or null (between passes, at the loop end or still in the prelude). */
  readonly inProgress: number | null;
  readonly iterations: number;
}

/** Where a thread stands after `opsDone` ops: the loop is loopBegin once, then (body, loopEnd) forever. */
export function progressOf(t: ThreadWorkload, opsDone: number): ThreadProgress {
  const inLoop = opsDone - t.preludeOps - 1;
  if (inLoop < 0) return { completed: t.body.map(() => 0), inProgress: null, iterations: 0 };
  const per = t.body.length + 1;
  const iterations = Math.floor(inLoop / per);
  const pos = inLoop % per;
  return { completed: t.body.map((_, j) => iterations + (j < pos ? 1 : 0)), inProgress: pos < t.body.length ? pos : null, iterations };
}

/** Every counter and what it must read, given each thread's ops_done. */
export function expectedCounters(w: DirtyWorkload, opsDone: readonly number[]): CounterExpectation[] {
  const counts = w.regions.map(() => 0n);
  const edges: (null | { thread: number })[] = w.regions.map(() => null);
  w.threads.forEach((t, ti) => {
    const p = progressOf(t, opsDone[ti] ?? 0);
    t.body.forEach((s, j) => {
      if (s.kind !== 'pass') return;
      counts[s.region]! += BigInt(p.completed[j]!);
      if (p.inProgress === j) edges[s.region] = { thread: ti };
    });
  });
  return w.regions.flatMap((r, ri) =>
    Array.from({ length: r.pages }, (_, i): CounterExpectation => {
      const e = edges[ri];
      // In visit order: the edge of a pass in progress is the first counter the pass has not reached.
      return { addr: r.base + visitIndex(r, i) * r.stride, value: counts[ri]!, ...(e ? { edge: { region: ri, thread: e.thread, index: i } } : {}) };
    }),
  );
}

/** The sentinel pages' non-zero bytes: magic at 0, the page's index at 8 (u64, little-endian). */
export function sentinelWords(w: DirtyWorkload): { addr: number; value: bigint }[] {
  return w.sentinels.flatMap((page, i) => [
    { addr: page, value: w.magic },
    { addr: page + 8, value: BigInt(i) },
  ]);
}

export interface ArenaDifference {
  readonly addr: number;
  readonly expected: string;
  readonly observed: string;
  readonly why: string;
}

/**
 * Judge counter values read from RAM (`read(addr)` → the u64 there) against the model: each must
 * equal its count, except that a pass in progress shows one edge, c+1 before it and c after.
 */
export function judgeCounters(expect: readonly CounterExpectation[], read: (addr: number) => bigint): ArenaDifference[] {
  const out: ArenaDifference[] = [];
  // Where the edge of each in-progress region is: the first page that still reads c.
  const edgeAt = new Map<number, number>();
  for (const e of expect) {
    const v = read(e.addr);
    if (!e.edge) {
      if (v !== e.value) out.push({ addr: e.addr, expected: hex(e.value), observed: hex(v), why: 'counter' });
      continue;
    }
    const seen = edgeAt.get(e.edge.region);
    if (v === e.value + 1n && seen === undefined) continue; // still before the edge
    if (v === e.value) {
      if (seen === undefined) edgeAt.set(e.edge.region, e.edge.index);
      continue;
    }
    const why = v === e.value + 1n ? `counter after the edge of the pass in progress (page ${seen} of its region already read ${hex(e.value)})` : 'counter of the pass in progress';
    out.push({ addr: e.addr, expected: v === e.value + 1n ? hex(e.value) : `${hex(e.value)} or ${hex(e.value + 1n)}`, observed: hex(v), why });
  }
  return out;
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

/** The 8-byte spans the model knows the value of (counters and sentinel words), for a zero check of the rest. */
export function knownSpans(w: DirtyWorkload): { addr: number; len: number }[] {
  const counters = w.regions.flatMap((r) => Array.from({ length: r.pages }, (_, i) => ({ addr: r.base + i * r.stride, len: 8 })));
  return [...counters, ...sentinelWords(w).map((s) => ({ addr: s.addr, len: 8 }))].sort((a, b) => a.addr - b.addr);
}

/** Everything the zero check skips: the known words and the reserved spans. */
export function unpredictedOrKnown(w: DirtyWorkload): { addr: number; len: number }[] {
  return [...knownSpans(w), ...w.reserved].sort((a, b) => a.addr - b.addr);
}

/** Two regions (or a sentinel) whose counters overlap, a store span over another writer's bytes, or one outside the arena: a generator bug. */
export function layoutProblems(w: DirtyWorkload): string[] {
  const spans = unpredictedOrKnown(w);
  const out: string[] = [];
  for (let i = 0; i < spans.length; i++) {
    const s = spans[i]!;
    if (s.addr < w.arenaBase || s.addr + s.len > w.arenaEnd) out.push(`0x${s.addr.toString(16)} lies outside the arena`);
    if (i > 0 && spans[i - 1]!.addr + spans[i - 1]!.len > s.addr) out.push(`0x${s.addr.toString(16)} overlaps the word before it`);
  }
  w.regions.forEach((r, i) => {
    if (r.writer === 'lock-add' && Math.floor(r.base / 64) !== Math.floor((r.base + 7) / 64)) out.push(`region ${i}: a locked add across a cache line is a split lock`);
    if (r.stride < writerBytes(r.writer)) out.push(`region ${i}: stride ${r.stride} makes its stores overlap`);
    const last = r.base + (r.pages - 1) * r.stride + writerBytes(r.writer);
    if (last > w.arenaEnd) out.push(`region ${i}: its last store ends at 0x${last.toString(16)}, past the arena`);
    if (gcd(r.step ?? 1, r.pages) !== 1 || (r.step ?? 1) < 1) out.push(`region ${i}: step ${r.step} is not coprime with its ${r.pages} pages: a pass would skip counters`);
  });
  for (const o of spanOverlaps(w)) out.push(`region ${o.region}: a store at 0x${o.addr.toString(16)} covers ${o.other}, which another writer changes`);
  return out;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** A step coprime with pages near `scatter` mod pages (1 for a region of 1 or 2 pages: no other order exists). */
export function scatterStep(pages: number, scatter: number): number {
  if (pages <= 2) return 1;
  for (let k = Math.max(2, scatter % pages); ; k = k + 1 >= pages ? 2 : k + 1) if (gcd(k, pages) === 1) return k;
}
