import { describe, expect, it } from 'vitest';
import type { ObservedInterrupt } from './common.js';
import { DEFAULT_PIT, KVM_PIT, judgePit, pitCount, pitMode, predictPit, type PitEvent, type PitSwitches, type PitTimeline } from './pit.js';

// One PIT clock = 2000 TSC cycles exactly. KVM's floor: 200 µs = 238.6 clocks.
const CLOCK = { tscHz: 1_193_182n * 2000n, minPeriodNs: 200_000 };
const CLK = 2000n;
const V = 0x22;
const W = 500n;
const LAT = 10_000n;
const L = 200_000n;
const T0 = 5_000_000n;

const at = (t: bigint, e: { kind: 'program'; mode: number; count: number } | { kind: 'reload'; count: number } | { kind: 'sti' | 'cli' | 'mark' }): PitEvent => ({ ...e, tscBefore: t, tscAfter: t + W }) as PitEvent;
const tl = (events: PitEvent[], endTsc: bigint): PitTimeline => ({ events, endTsc, vector: V });
const irqs = (ts: bigint[]): ObservedInterrupt[] => ts.map((tsc) => ({ tsc, vector: V }));
const rules = (d: { rule: string }[]) => [...new Set(d.map((x) => x.rule))];
const judge = (events: PitEvent[], end: bigint, ts: bigint[], sw: PitSwitches = DEFAULT_PIT) => judgePit(predictPit(CLOCK, tl(events, end), sw), irqs(ts), { latenessTsc: L });
const earliest = (events: PitEvent[], end: bigint, sw: PitSwitches = DEFAULT_PIT) => predictPit(CLOCK, tl(events, end), sw).interrupts.map((e) => e.earliest);

describe('encoding', () => {
  it('count 0 is 65536; modes 6, 7 alias 2, 3', () => {
    expect(pitCount(0)).toBe(65536n);
    expect(pitCount(11932)).toBe(11932n);
    expect([0, 2, 3, 6, 7].map(pitMode)).toEqual([0, 2, 3, 2, 3]);
  });
});

describe('mode 2, rate generator', () => {
  const N = 11_932n; // ~10 ms
  const P = N * CLK;
  const ev = [at(T0, { kind: 'program', mode: 2, count: Number(N) })];
  const end = T0 + 10n * P + P / 2n;
  const ticks = Array.from({ length: 10 }, (_, k) => T0 + BigInt(k + 1) * P);
  it('one interrupt per N clocks from the load', () => {
    expect(earliest(ev, end)).toEqual(ticks);
    expect(judge(ev, end, ticks.map((t) => t + LAT))).toEqual([]);
    expect(rules(judge(ev, end, [...ticks.map((t) => t + LAT), ticks[3]! + 2n * LAT]))).toEqual(['never-early']); // 11 deliveries: within the window's 10 + 1 edge
    expect(rules(judge(ev, end, ticks.filter((_, k) => k !== 5).map((t) => t + LAT)))).toContain('exact-count');
  });
  describe('a reload takes effect at the next period (8254) or at once (KVM)', () => {
    const M = N / 2n;
    const r = T0 + P + (3n * P) / 10n; // 30% into the second period
    const rev = [...ev, at(r, { kind: 'reload', count: Number(M) })];
    const e8254 = [T0 + P, T0 + 2n * P, T0 + 2n * P + M * CLK, T0 + 2n * P + 2n * M * CLK];
    const eKvm = [T0 + P, r + M * CLK, r + 2n * M * CLK, r + 3n * M * CLK];
    const end2 = T0 + 2n * P + 2n * M * CLK + 1000n;
    it("'next-period' (the datasheet): the present period is not affected", () => {
      expect(earliest(rev, end2)).toEqual(e8254);
    });
    it("'restart' (KVM create_pit_timer(), 'TODO The new value only affected after the retriggered')", () => {
      expect(earliest(rev, r + 3n * M * CLK + 1000n, KVM_PIT)).toEqual(eKvm);
    });
    it("KVM's behaviour is flagged under the default switches, and passes KVM_PIT", () => {
      const kvmLog = eKvm.map((t) => t + LAT);
      expect(rules(judge(rev, end2, kvmLog))).toContain('never-early');
      expect(judge(rev, r + 3n * M * CLK + 1000n, kvmLog, KVM_PIT)).toEqual([]);
      expect(judge(rev, end2, e8254.map((t) => t + LAT))).toEqual([]);
    });
  });
  it("KVM's floor: a period under min_timer_period_us runs at it, from the second expiry", () => {
    // 200 µs = 477 272.8 TSC cycles (earliest times round down).
    const e = earliest([at(T0, { kind: 'program', mode: 2, count: 100 })], T0 + 1_200_000n);
    expect(e.slice(0, 3)).toEqual([T0 + 100n * CLK, T0 + 100n * CLK + 477_272n, T0 + 100n * CLK + 954_545n]);
    const bare = earliest([at(T0, { kind: 'program', mode: 2, count: 100 })], T0 + 700_000n, { ...DEFAULT_PIT, periodicClamp: 'none' });
    expect(bare).toEqual([1n, 2n, 3n].map((k) => T0 + k * 200_000n));
  });
});

describe('mode 0 and mode 3', () => {
  it('mode 0: one interrupt at terminal count; a reload restarts and the old count never fires', () => {
    const N = 50_000n;
    const ev = [at(T0, { kind: 'program', mode: 0, count: Number(N) }), at(T0 + 20_000n * CLK, { kind: 'reload', count: 10_000 })];
    const end = T0 + 100_000n * CLK;
    expect(earliest(ev, end)).toEqual([T0 + 30_000n * CLK]);
    expect(judge(ev, end, [T0 + 30_000n * CLK + LAT])).toEqual([]);
    expect(rules(judge(ev, end, [T0 + 30_000n * CLK + LAT, T0 + N * CLK + LAT]))).toContain('exact-count');
  });
  it('mode 3: one rising edge per period; a reload in the high half loads at the falling edge', () => {
    const N = 10_000n;
    const P = N * CLK;
    const M = 4_000n;
    const high = [at(T0, { kind: 'program', mode: 3, count: Number(N) }), at(T0 + P + P / 5n, { kind: 'reload', count: Number(M) })];
    // Falling edge at T0 + P + N/2 clocks, then a low half of M/2.
    expect(earliest(high, T0 + P + P / 2n + (M / 2n) * CLK + M * CLK + 1000n)).toEqual([T0 + P, T0 + P + P / 2n + (M / 2n) * CLK, T0 + P + P / 2n + (M / 2n + M) * CLK]);
    const low = [at(T0, { kind: 'program', mode: 3, count: Number(N) }), at(T0 + P + (4n * P) / 5n, { kind: 'reload', count: Number(M) })];
    expect(earliest(low, T0 + 2n * P + M * CLK + 1000n)).toEqual([T0 + P, T0 + 2n * P, T0 + 2n * P + M * CLK]);
  });
});

describe('re-injection', () => {
  const N = 11_932n;
  const P = N * CLK;
  const ev = [at(T0, { kind: 'program', mode: 2, count: Number(N) }), at(T0 + P + P / 2n, { kind: 'cli' }), at(T0 + 6n * P + P / 2n, { kind: 'sti' })];
  const end = T0 + 10n * P + P / 2n;
  const ticks = Array.from({ length: 10 }, (_, k) => T0 + BigInt(k + 1) * P);
  const sti = T0 + 6n * P + P / 2n + W;
  const backlog = [ticks[0]! + LAT, ...[0n, 1n, 2n, 3n, 4n].map((k) => sti + 100n + k * 20_000n), ...ticks.slice(6).map((t) => t + LAT)];
  const merged = [ticks[0]! + LAT, sti + 100n, ...ticks.slice(6).map((t) => t + LAT)];
  it('with re-injection (KVM, QEMU lost_tick_policy=delay) every tick comes, late ones one per EOI', () => {
    expect(judge(ev, end, backlog)).toEqual([]);
    expect(rules(judge(ev, end, merged))).toContain('exact-count');
  });
  it('without it (discard), ticks merge while one is pending', () => {
    const sw = { ...DEFAULT_PIT, reinject: false };
    expect(judge(ev, end, merged, sw)).toEqual([]);
    expect(rules(judge(ev, end, backlog, sw))).toContain('never-early');
  });
});

describe("edgeInput 'every-update' (a root-cause variant for QEMU's own PIT, never a preset)", () => {
  const N = 1000n;
  const P = N * CLK;
  const ev = [at(T0, { kind: 'program', mode: 3, count: Number(N) })];
  const end = T0 + 4n * P + P / 4n;
  const rising = Array.from({ length: 4 }, (_, k) => T0 + BigInt(k + 1) * P);
  const halves = rising.map((t) => t - P / 2n);
  const both = [...halves, ...rising].sort((a, b) => (a < b ? -1 : 1)).map((t) => t + LAT);
  const qemu: PitSwitches = { periodicReload: 'restart', periodicClamp: 'none', reinject: false };

  it('the 8254 rule: a square wave interrupts once per period, so one at each half period is early', () => {
    expect(rules(judge(ev, end, both, qemu))).toContain('never-early');
  });
  it('the variant allows an interrupt at each falling transition as well', () => {
    expect(judge(ev, end, both, { ...qemu, edgeInput: 'every-update' })).toEqual([]);
  });
});

describe('latched count reads (pit-count-read)', () => {
  const read = (t: bigint, value: number): PitEvent => ({ kind: 'readCount', read: value, tscBefore: t, tscAfter: t + W });
  const judgeReads = (events: PitEvent[], sw: PitSwitches = KVM_PIT) => {
    const p = predictPit(CLOCK, tl(events, events[events.length - 1]!.tscAfter), sw);
    const reads = events.flatMap((e, eventIndex) => (e.kind === 'readCount' && e.read !== undefined ? [{ eventIndex, value: e.read }] : []));
    return { p, diffs: judgePit(p, [], { latenessTsc: L, reads }).filter((d) => d.rule === 'pit-count-read') };
  };
  it('mode 2 reads N − (d mod N): 25.3 periods after the load, 30% of the count has gone', () => {
    const N = 1000;
    const ev = [at(T0, { kind: 'program', mode: 2, count: N }), read(T0 + 25_300n * CLK, 700)];
    const { p, diffs } = judgeReads(ev);
    expect(diffs).toEqual([]);
    const [a] = p.reads[0]!.allowed!;
    expect(a!.min).toBeLessThanOrEqual(700);
    expect(a!.max - a!.min).toBeLessThan(5); // the stamps' width and the load's one pulse
  });
  it('a PIT 1% slow is told at once: the phase has moved 253 pulses', () => {
    const ev = [at(T0, { kind: 'program', mode: 2, count: 1000 }), read(T0 + 25_300n * CLK, 953)];
    expect(judgeReads(ev).diffs.map((d) => d.rule)).toEqual(['pit-count-read']);
  });
  it('mode 0 counts past 0 and wraps to FFFFh; count 0 (65536) reads 0 at the load', () => {
    const ev = [at(T0, { kind: 'program', mode: 0, count: 100 }), read(T0 + 150n * CLK, 65486), at(T0 + 200n * CLK, { kind: 'program', mode: 0, count: 0 }), read(T0 + 200n * CLK, 0)];
    expect(judgeReads(ev).diffs).toEqual([]);
    expect(judgeReads([ev[0]!, read(T0 + 150n * CLK, 50)]).diffs.length).toBe(1);
  });
  it('mode 3 (even N) counts down by two, twice a period; an odd N is not judged', () => {
    const ev = [at(T0, { kind: 'program', mode: 3, count: 1000 }), read(T0 + 1_100n * CLK, 800)];
    expect(judgeReads(ev).diffs).toEqual([]);
    expect(judgeReads([ev[0]!, read(T0 + 1_100n * CLK, 400)]).diffs.length).toBe(1);
    const odd = judgeReads([at(T0, { kind: 'program', mode: 3, count: 1001 }), read(T0 + 1_100n * CLK, 1)]);
    expect(odd.p.reads[0]!.allowed).toBeNull();
  });
  it('a read whose range spans a wrap allows both ends; a wide latch allows any count', () => {
    const ev = [at(T0, { kind: 'program', mode: 2, count: 1000 }), { kind: 'readCount', read: 2, tscBefore: T0 + 999n * CLK, tscAfter: T0 + 1_003n * CLK } as PitEvent];
    const { p, diffs } = judgeReads(ev);
    expect(diffs).toEqual([]);
    expect(p.reads[0]!.allowed!.length).toBe(2);
    const wide = judgeReads([ev[0]!, { kind: 'readCount', read: 123, tscBefore: T0, tscAfter: T0 + 5_000n * CLK } as PitEvent]);
    expect(wide.diffs).toEqual([]);
  });
});

describe("countRead 'kvm-hrtimer': KVM reads channel 0's count from its (raised) hrtimer period (seed 410)", () => {
  // N = 148 at CLK = 2000 TSC: 124 µs, under KVM's 200 µs floor (238.6 clocks): the hrtimer runs a
  // 200 µs period, its first expiry one unraised interval after the load.
  const read = (t: bigint, value: number): PitEvent => ({ kind: 'readCount', read: value, tscBefore: t, tscAfter: t + W });
  const judgeWith = (events: PitEvent[], sw: PitSwitches) => {
    const p = predictPit(CLOCK, tl(events, events[events.length - 1]!.tscAfter), sw);
    const reads = events.flatMap((e, eventIndex) => (e.kind === 'readCount' && e.read !== undefined ? [{ eventIndex, value: e.read }] : []));
    return judgePit(p, [], { latenessTsc: L, reads }).filter((d) => d.rule === 'pit-count-read');
  };
  it('15 clocks after the load KVM reads N − ((238.6 − 148 + 15) mod N); the datasheet reads N − 15', () => {
    const ev = [at(T0, { kind: 'program', mode: 2, count: 148 }), read(T0 + 15n * CLK, 43)];
    expect(judgeWith(ev, KVM_PIT)).toEqual([]);
    expect(judgeWith(ev, { ...KVM_PIT, countRead: 'load' }).length).toBe(1);
    expect(judgeWith([ev[0]!, read(T0 + 15n * CLK, 133)], { ...KVM_PIT, countRead: 'load' })).toEqual([]);
  });
  it('after the first expiry: the phase within the current raised period', () => {
    // 148 + 2 × 238.6 + 50 clocks: 50.x into the third raised period → d ≈ 50..52, 148 − d.
    const ev = [at(T0, { kind: 'program', mode: 2, count: 148 }), read(T0 + 148n * CLK + 477_272n * 2n + 50n * CLK, 97)];
    expect(judgeWith(ev, KVM_PIT)).toEqual([]);
    expect(judgeWith([ev[0]!, read(ev[1]!.tscBefore, 120)], KVM_PIT).length).toBe(1);
  });
  it('a period N keeps its own: the two agree', () => {
    const ev = [at(T0, { kind: 'program', mode: 2, count: 1000 }), read(T0 + 25_300n * CLK, 700)];
    expect(judgeWith(ev, KVM_PIT)).toEqual([]);
    expect(judgeWith(ev, { ...KVM_PIT, countRead: 'load' })).toEqual([]);
  });
});
