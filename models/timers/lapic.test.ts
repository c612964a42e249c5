import { describe, expect, it } from 'vitest';
import type { ObservedInterrupt } from './common.js';
import {
  KVM_LAPIC,
  QEMU_USERSPACE_LAPIC,
  SDM_LAPIC,
  decodeLvtt,
  divideOf,
  judgeLapic,
  predictLapic,
  type LapicClock,
  type LapicEvent,
  type LapicSwitches,
  type LapicTimeline,
} from './lapic.js';

// 2 GHz TSC, KVM's 1 GHz APIC bus: one count at divide d lasts 2·d TSC cycles. 200 µs floor = 400 000 cycles.
const CLOCK: LapicClock = { tscHz: 2_000_000_000, apicBusHz: 1_000_000_000, minPeriodNs: 200_000 };
const V = 0xec;
const ONE_SHOT = V;
const PERIODIC = 0x20000 | V;
const DEADLINE = 0x40000 | V;
const MASKED = 0x10000;
const DIV1 = 0xb;
const DIV2 = 0x0;
const W = 100n; // stamp width
const L = 50_000n; // lateness bound for the judge (25 µs)
const T0 = 1_000_000n;

type Ev = { [K in LapicEvent['kind']]: Omit<Extract<LapicEvent, { kind: K }>, 'tscBefore' | 'tscAfter'> }[LapicEvent['kind']];
const at = (t: bigint, e: Ev, width = W): LapicEvent => ({ ...e, tscBefore: t, tscAfter: t + width }) as LapicEvent;
const tl = (events: LapicEvent[], endTsc: bigint, extra: Partial<LapicTimeline> = {}): LapicTimeline => ({ events, endTsc, ...extra });
const irq = (tsc: bigint, vector = V): ObservedInterrupt => ({ tsc, vector });
const judge = (events: LapicEvent[], end: bigint, irqs: ObservedInterrupt[], reads: { eventIndex: number; value: bigint | number }[] = [], sw: LapicSwitches = KVM_LAPIC, extra: Partial<LapicTimeline> = {}) =>
  judgeLapic(predictLapic(CLOCK, tl(events, end, extra), sw), irqs, reads, { latenessTsc: L });
const rules = (d: { rule: string }[]) => d.map((x) => x.rule);

/** LVTT + TDCR set up at T0, then the arming events. */
const setup = (lvtt: number, tdcr = DIV1): LapicEvent[] => [at(T0, { kind: 'tdcr', value: tdcr }), at(T0 + 1000n, { kind: 'lvtt', value: lvtt })];

describe('register decoding', () => {
  it('decodes the eight TDCR divide values (SDM Figure 10-10)', () => {
    expect([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xa, 0xb].map(divideOf)).toEqual([2, 4, 8, 16, 32, 64, 128, 1]);
  });
  it('decodes LVTT modes, and ignores bit 18 without TSC-deadline', () => {
    expect(decodeLvtt(0x10000 | 0x20000 | 0x31)).toEqual({ vector: 0x31, masked: true, mode: 'periodic' });
    expect(decodeLvtt(DEADLINE).mode).toBe('tsc-deadline');
    expect(decodeLvtt(0x60000).mode).toBe('reserved');
    expect(decodeLvtt(DEADLINE, false).mode).toBe('one-shot');
  });
});

describe('one-shot', () => {
  const arm = T0 + 10_000n;
  const events = [...setup(ONE_SHOT), at(arm, { kind: 'tmict', value: 1_000_000 })];
  const end = arm + 10_000_000n;

  it('predicts one interrupt, no earlier than the arm stamp + count × divide', () => {
    const p = predictLapic(CLOCK, tl(events, end));
    expect(p.interrupts).toHaveLength(1);
    expect(p.interrupts[0]).toMatchObject({ vector: V, earliest: arm + 2_000_000n, expiryLatest: arm + W + 2_000_000n, count: 'once', eventIndex: 2, latest: null });
  });
  it('passes a correct log and flags early, lost and duplicated interrupts', () => {
    expect(judge(events, end, [irq(arm + 2_003_000n)])).toEqual([]);
    expect(rules(judge(events, end, [irq(arm + 1_999_000n)]))).toContain('never-early');
    expect(rules(judge(events, end, []))).toEqual(['exact-count']);
    expect(rules(judge(events, end, [irq(arm + 2_003_000n), irq(arm + 2_010_000n)]))).toEqual(['exact-count']);
  });
  it('bounds TMCCT by the elapsed TSC and the divide in force', () => {
    const ev = [...events, at(arm + 1_000_000n, { kind: 'readTmcct' })];
    const p = predictLapic(CLOCK, tl(ev, end));
    const r = p.reads[0]!;
    // 1e6 cycles elapsed of 2e6: 500 000 counts left, ± the stamp widths.
    expect(r.allowed).toHaveLength(1);
    expect(r.allowed[0]!.min).toBeGreaterThanOrEqual(499_800n);
    expect(r.allowed[0]!.max).toBeLessThanOrEqual(500_200n);
    expect(judge(ev, end, [irq(arm + 2_003_000n)], [{ eventIndex: 3, value: 500_000 }])).toEqual([]);
    expect(rules(judge(ev, end, [irq(arm + 2_003_000n)], [{ eventIndex: 3, value: 700_000 }]))).toEqual(['tmcct-range']);
  });
  it('reads 0 after the one-shot expired', () => {
    const ev = [...events, at(arm + 3_000_000n, { kind: 'readTmcct' })];
    expect(predictLapic(CLOCK, tl(ev, end)).reads[0]!.allowed).toEqual([{ min: 0n, max: 0n }]);
  });
  it('TMICT = 0 stops the timer: an interrupt afterwards is spurious', () => {
    const ev = [...events, at(arm + 500_000n, { kind: 'tmict', value: 0 })];
    const p = predictLapic(CLOCK, tl(ev, end));
    expect(p.interrupts).toEqual([]);
    expect(p.quiet.at(-1)).toMatchObject({ from: arm + 500_000n + W, to: null, eventIndex: 3 });
    expect(rules(judge(ev, end, [irq(arm + 2_003_000n)]))).toEqual(['spurious-after-disarm']);
    expect(judge(ev, end, [])).toEqual([]);
  });
  it('a TMICT write that races the expiry makes it at-most-once', () => {
    const ev = [...events, at(arm + 1_999_990n, { kind: 'tmict', value: 0 }, 200n)];
    const p = predictLapic(CLOCK, tl(ev, end));
    expect(p.interrupts.map((e) => e.count)).toEqual(['at-most-once']);
    expect(judge(ev, end, [])).toEqual([]);
    expect(judge(ev, end, [irq(arm + 2_000_100n)])).toEqual([]);
  });
});

describe('T3: a TDCR change mid-count', () => {
  // Divide 1, TMICT 1e6 (2e6 cycles). Half way (1e6 cycles left = 500 000 counts) TDCR → divide 2.
  const arm = T0 + 10_000n;
  const w = arm + 1_000_000n;
  const events = [...setup(ONE_SHOT, DIV1), at(arm, { kind: 'tmict', value: 1_000_000 }), at(w, { kind: 'tdcr', value: DIV2 })];
  const end = arm + 20_000_000n;

  it("'rescale' (KVM c301b909, bare metal): the remaining 500 000 counts run at the new slope", () => {
    const e = predictLapic(CLOCK, tl(events, end)).interrupts;
    expect(e).toHaveLength(1);
    // w + (2e6 - 1e6)·2 = arm + 3e6, within the stamp widths.
    expect(e[0]!.earliest).toBeGreaterThanOrEqual(arm + 2_999_000n);
    expect(e[0]!.earliest).toBeLessThanOrEqual(arm + 3_000_000n);
  });
  it("'next-reload' (KVM before c301b909): the count keeps the old divisor", () => {
    const e = predictLapic(CLOCK, tl(events, end), { ...KVM_LAPIC, tdcrMidCount: 'next-reload' }).interrupts;
    expect(e[0]!.earliest).toBe(arm + 2_000_000n);
  });
  it('a log that follows the old-divisor time is flagged under the default switches', () => {
    const buggy = [irq(arm + 2_002_000n)];
    const d = judge(events, end, buggy);
    expect(rules(d)).toContain('never-early');
    expect(judge(events, end, [irq(arm + 3_002_000n)])).toEqual([]);
    // ... and the same log passes the model of the old behaviour.
    expect(judge(events, end, buggy, [], { ...KVM_LAPIC, tdcrMidCount: 'next-reload' })).toEqual([]);
  });
  it('periodic: the current period is rescaled and later periods use the new divide', () => {
    const ev = [...setup(PERIODIC, DIV1), at(arm, { kind: 'tmict', value: 1_000_000 }), at(w, { kind: 'tdcr', value: DIV2 })];
    const e = predictLapic(CLOCK, tl(ev, arm + 9_500_000n)).interrupts.map((x) => x.earliest - arm);
    // arm + 3e6, then every 4e6 cycles.
    expect(e.map((x) => x / 10_000n)).toEqual([299n, 699n]);
  });
  it('TMCCT is continuous across the write and takes the new slope at once', () => {
    // A coarse TMICT stamp (±50 µs) leaves the plain ranges wide; the read before the write pins the count.
    const ev: LapicEvent[] = [
      ...setup(ONE_SHOT, DIV1),
      at(arm, { kind: 'tmict', value: 1_000_000 }, 200_000n),
      at(w - 100_000n, { kind: 'readTmcct' }),
      at(w, { kind: 'tdcr', value: DIV2 }),
      at(w + 100_000n, { kind: 'readTmcct' }),
    ];
    const p = predictLapic(CLOCK, tl(ev, end));
    const mid = arm + 100_000n; // when the TMICT write took effect in this synthetic run
    const expiry0 = mid + 2_000_000n;
    const v1 = (expiry0 - (w - 100_000n)) / 2n; // 600 000
    const v2 = (2n * (expiry0 - w) - 100_000n) / 4n; // 525 000: continuous at w, then slope 4
    const fired = [irq(w + 2n * (expiry0 - w) + 2_000n)];
    expect(p.reads[1]!.continuity?.rescales).toHaveLength(1);
    expect(judgeLapic(p, fired, [{ eventIndex: 3, value: v1 }, { eventIndex: 5, value: v2 }], { latenessTsc: L })).toEqual([]);
    // The rate unchanged until the next reload (the T3 bug): inside the plain range, but not continuous.
    const stale = (expiry0 - (w + 100_000n)) / 2n; // 500 000
    const d = judgeLapic(p, fired, [{ eventIndex: 3, value: v1 }, { eventIndex: 5, value: stale }], { latenessTsc: L });
    expect(rules(d)).toEqual(['tmcct-continuous-across-tdcr']);
    // A jump (recomputed from the load with the new divide, as QEMU's own APIC does) is outside even the plain range.
    const jump = 1_000_000n - (w + 100_000n - mid) / 4n; // 750 000
    expect(rules(judgeLapic(p, fired, [{ eventIndex: 3, value: v1 }, { eventIndex: 5, value: jump }], { latenessTsc: L }))).toEqual(['tmcct-range']);
  });
  it('a TDCR write after the one-shot expired arms nothing (KVM lapic.c appears to refire here: such a log is flagged)', () => {
    const ev = [...events.slice(0, 3), at(arm + 3_000_000n, { kind: 'tdcr', value: DIV2 })];
    const p = predictLapic(CLOCK, tl(ev, end));
    expect(p.interrupts).toHaveLength(1);
    const refire = [irq(arm + 2_003_000n), irq(arm + 3_000_500n)];
    expect(rules(judgeLapic(p, refire, [], { latenessTsc: L }))).toEqual(['exact-count']);
  });
});

describe('T1: switching into or out of TSC-deadline mode disarms', () => {
  const t = T0 + 10_000n;
  const D = t + 10_000_000n;
  const events: LapicEvent[] = [
    at(T0, { kind: 'lvtt', value: DEADLINE }),
    at(t, { kind: 'tscDeadline', value: D }),
    at(t + 1_000_000n, { kind: 'lvtt', value: PERIODIC }),
    at(t + 2_000_000n, { kind: 'readTscDeadline' }),
    at(t + 2_100_000n, { kind: 'readTmcct' }),
  ];
  const end = t + 30_000_000n;

  it('predicts no interrupt and opens a quiet interval at the switch', () => {
    const p = predictLapic(CLOCK, tl(events, end));
    expect(p.interrupts).toEqual([]);
    expect(p.quiet.at(-1)).toMatchObject({ from: t + 1_000_000n + W, to: null, eventIndex: 2 });
    expect(p.reads.map((r) => r.allowed)).toEqual([[{ min: 0n, max: 0n }], [{ min: 0n, max: 0n }]]);
  });
  it("flags the stale deadline's interrupt as spurious, and stale MSR/TMCCT values", () => {
    const d = judge(events, end, [irq(D + 2_000n)], [{ eventIndex: 3, value: D }, { eventIndex: 4, value: 0 }]);
    expect(rules(d).sort()).toEqual(['spurious-after-disarm', 'tsc-deadline-msr']);
    expect(judge(events, end, [], [{ eventIndex: 3, value: 0 }, { eventIndex: 4, value: 0 }])).toEqual([]);
  });
  it('TMICT written after the switch arms a periodic timer again', () => {
    const ev = [...events, at(t + 3_000_000n, { kind: 'tmict', value: 500_000 })];
    // TDCR is still the reset 0 (divide 2): 500 000 × 2 × 2 = 2e6 cycles a period.
    const p = predictLapic(CLOCK, tl(ev, t + 9_100_000n));
    expect(p.interrupts.map((e) => e.earliest - (t + 3_000_000n))).toEqual([2_000_000n, 4_000_000n, 6_000_000n]);
    expect(p.quiet.at(-1)).toMatchObject({ to: t + 3_000_000n });
  });
});

describe('T2: one-shot ↔ periodic', () => {
  const arm = T0 + 10_000n;
  const base = [...setup(ONE_SHOT), at(arm, { kind: 'tmict', value: 1_000_000 })];

  it('a switch to periodic mid-count keeps counting and then reloads', () => {
    const ev = [...base, at(arm + 500_000n, { kind: 'lvtt', value: PERIODIC })];
    const e = predictLapic(CLOCK, tl(ev, arm + 7_000_000n)).interrupts;
    expect(e.map((x) => (x.earliest - arm) / 1000n)).toEqual([2000n, 4000n, 6000n]);
    expect(e.every((x) => x.count === 'once')).toBe(true);
  });
  it("the old SDM text ('any' mode change disarms) predicts none", () => {
    const ev = [...base, at(arm + 500_000n, { kind: 'lvtt', value: PERIODIC })];
    const p = predictLapic(CLOCK, tl(ev, arm + 7_000_000n), { ...KVM_LAPIC, modeSwitchDisarms: 'any' });
    expect(p.interrupts).toEqual([]);
    // A KVM-correct log is then flagged: this is the switch that tells the two readings apart.
    expect(rules(judgeLapic(p, [irq(arm + 2_001_000n)], [], { latenessTsc: L }))).toEqual(['spurious-after-disarm']);
  });
  it('periodic → one-shot finishes the current period and stops', () => {
    const ev = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 1_000_000 }), at(arm + 2_500_000n, { kind: 'lvtt', value: ONE_SHOT })];
    const e = predictLapic(CLOCK, tl(ev, arm + 20_000_000n)).interrupts;
    expect(e.map((x) => (x.earliest - arm) / 1000n)).toEqual([2000n, 4000n]);
  });
  describe('an expired one-shot switched to periodic without a TMICT write', () => {
    const ev = [...base, at(arm + 3_000_000n, { kind: 'lvtt', value: PERIODIC }), at(arm + 3_500_000n, { kind: 'readTmcct' })];
    const end = arm + 9_000_000n;
    it("'stays-zero' (KVM): no interrupt, TMCCT stays 0", () => {
      const p = predictLapic(CLOCK, tl(ev, end));
      expect(p.interrupts).toHaveLength(1);
      expect(p.reads[0]!.allowed).toEqual([{ min: 0n, max: 0n }]);
      // QEMU's behaviour seen under the KVM profile: one interrupt too many.
      expect(rules(judgeLapic(p, [irq(arm + 2_001_000n), irq(arm + 4_001_000n)], [], { latenessTsc: L }))).toEqual(['exact-count']);
    });
    it("'rearms' (QEMU apic.c): periodic from the load time, next at arm + 4e6", () => {
      const p = predictLapic(CLOCK, tl(ev, end), { ...KVM_LAPIC, expiredOneShotToPeriodic: 'rearms' });
      expect(p.interrupts.map((x) => (x.earliest - arm) / 1000n)).toEqual([2000n, 4000n, 6000n, 8000n]);
      expect(p.reads[0]!.allowed[0]!.min).toBeGreaterThan(0n);
    });
  });
});

describe('T5: TSC-deadline never early, immediate when already past', () => {
  const t = T0 + 10_000n;
  const D = t + 5_000_000n;
  it('an interrupt before the deadline is early; at or after it passes', () => {
    const ev = [at(T0, { kind: 'lvtt', value: DEADLINE }), at(t, { kind: 'tscDeadline', value: D })];
    const end = t + 20_000_000n;
    const p = predictLapic(CLOCK, tl(ev, end));
    expect(p.interrupts[0]).toMatchObject({ earliest: D, expiryLatest: D, count: 'once' });
    expect(rules(judge(ev, end, [irq(D - 100n)]))).toContain('never-early');
    expect(judge(ev, end, [irq(D + 3_000n)])).toEqual([]);
  });
  it('a deadline already past must arrive by the stamp after the write', () => {
    const ev = [at(T0, { kind: 'lvtt', value: DEADLINE }), at(t, { kind: 'tscDeadline', value: t - 1_000n }, 2_000n)];
    const end = t + 1_000_000n;
    const p = predictLapic(CLOCK, tl(ev, end));
    expect(p.interrupts[0]).toMatchObject({ earliest: t, latest: t + 2_000n, count: 'once' });
    expect(judge(ev, end, [irq(t + 1_500n)])).toEqual([]);
    expect(rules(judge(ev, end, [irq(t + 40_000n)]))).toEqual(['immediate']);
    // Deadline 0 is no deadline: disarms.
    const zero = [at(T0, { kind: 'lvtt', value: DEADLINE }), at(t, { kind: 'tscDeadline', value: 0n })];
    expect(predictLapic(CLOCK, tl(zero, end)).interrupts).toEqual([]);
  });
  it('with interrupts disabled, "immediate" waits for the STI', () => {
    const ev = [
      at(T0, { kind: 'lvtt', value: DEADLINE }),
      at(t - 10_000n, { kind: 'cli' }),
      at(t, { kind: 'tscDeadline', value: t - 1_000n }),
      at(t + 100_000n, { kind: 'sti' }),
    ];
    const p = predictLapic(CLOCK, tl(ev, t + 1_000_000n));
    expect(p.interrupts[0]!.latest).toBe(t + 100_000n + W);
    expect(judgeLapic(p, [irq(t + 100_050n)], [], { latenessTsc: L })).toEqual([]);
  });
  it('the MSR reads the deadline until it fires, and 0 once the interrupt is in', () => {
    const ev = [
      at(T0, { kind: 'lvtt', value: DEADLINE }),
      at(t, { kind: 'tscDeadline', value: D }),
      at(t + 1_000_000n, { kind: 'readTscDeadline' }),
      at(D + 1_000_000n, { kind: 'readTscDeadline' }),
    ];
    const end = D + 2_000_000n;
    const ok = judge(ev, end, [irq(D + 3_000n)], [{ eventIndex: 2, value: D }, { eventIndex: 3, value: 0 }]);
    expect(ok).toEqual([]);
    const stale = judge(ev, end, [irq(D + 3_000n)], [{ eventIndex: 2, value: D }, { eventIndex: 3, value: D }]);
    expect(rules(stale)).toEqual(['tsc-deadline-msr']);
  });
});

describe('masked timers', () => {
  const t = T0 + 10_000n;
  const D = t + 1_000_000n;
  const ev: LapicEvent[] = [
    at(T0, { kind: 'lvtt', value: DEADLINE | MASKED }),
    at(t, { kind: 'tscDeadline', value: D }),
    at(D + 500_000n, { kind: 'readTscDeadline' }),
    at(D + 1_000_000n, { kind: 'lvtt', value: DEADLINE }),
  ];
  const end = D + 3_000_000n;
  it("'held' (KVM): the expiry waits, the MSR keeps the deadline, unmasking delivers at once", () => {
    const p = predictLapic(CLOCK, tl(ev, end));
    expect(p.reads[0]!.allowed).toEqual([{ min: D, max: D }]);
    expect(p.interrupts).toHaveLength(1);
    expect(p.interrupts[0]).toMatchObject({ earliest: D + 1_000_000n, latest: D + 1_000_000n + W, count: 'once', eventIndex: 3 });
    expect(judgeLapic(p, [irq(D + 1_000_050n)], [{ eventIndex: 2, value: D }], { latenessTsc: L })).toEqual([]);
    expect(rules(judgeLapic(p, [irq(D + 2_000n)], [], { latenessTsc: L }))).toContain('spurious-after-disarm');
  });
  it("'dropped' (SDM): nothing is latched, the MSR clears at expiry", () => {
    const p = predictLapic(CLOCK, tl(ev, end), SDM_LAPIC);
    expect(p.interrupts).toEqual([]);
    expect(p.reads[0]!.allowed).toEqual([{ min: 0n, max: 0n }]);
    expect(rules(judgeLapic(p, [irq(D + 1_000_050n)], [], { latenessTsc: L }))).toEqual(['exact-count']);
  });
});

describe('periodic counts', () => {
  const arm = T0 + 10_000n;
  it("KVM raises a period under min_timer_period_us to it ('kvm' clamp) and TMCCT counts the raised period", () => {
    const ev = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 1_000 }), at(arm + 100_000n, { kind: 'readTmcct' })];
    const p = predictLapic(CLOCK, tl(ev, arm + 1_300_000n));
    expect(p.interrupts.map((e) => e.earliest - arm)).toEqual([400_000n, 800_000n, 1_200_000n]);
    expect(p.reads[0]!.allowed[0]!.min).toBeGreaterThan(1_000n); // 150 000 counts left of a 200 000-count period
    const bare = predictLapic(CLOCK, tl(ev.slice(0, 3), arm + 10_000n), { ...KVM_LAPIC, periodicClamp: 'none' });
    expect(bare.interrupts.map((e) => e.earliest - arm)).toEqual([2_000n, 4_000n, 6_000n, 8_000n, 10_000n]);
  });
  const ev = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 500_000 })];
  const end = arm + 10_500_000n;
  const period = 1_000_000n;
  const good = Array.from({ length: 10 }, (_, k) => irq(arm + BigInt(k + 1) * period + 5_000n));
  it('passes one delivery per period and flags a lost or an extra one', () => {
    expect(judge(ev, end, good)).toEqual([]);
    expect(rules(judge(ev, end, good.filter((_, k) => k !== 4)))).toEqual(['exact-count']);
    // Four deliveries by 3.5e6 with three expiries: the fourth came before its expiry.
    expect(rules(judge(ev, end, [...good, irq(arm + 3_500_000n)]))).toEqual(['never-early']);
    // One more than all the expiries: a duplicate at the end.
    expect(rules(judge(ev, end, [...good, irq(end - 1_000n)]))).toEqual(['exact-count']);
  });
  it('ticks merge only while one is pending: interrupts disabled across three periods give one delivery after STI', () => {
    const blocked = [...ev, at(arm + 2_500_000n, { kind: 'cli' }), at(arm + 5_500_000n, { kind: 'sti' })];
    const log = [...good.slice(0, 2), irq(arm + 5_500_200n), ...good.slice(5)];
    expect(judge(blocked, end, log)).toEqual([]);
    // Without the CLI window the same log lost two ticks and delivered the third 0.5 ms late.
    expect(rules(judge(ev, end, log))).toEqual(['exact-count', 'exact-count', 'exact-count']);
  });
  it('a deferred EOI holds the next tick in the IRR until the EOI', () => {
    const deferred = [...ev, at(arm + 1_005_500n, { kind: 'mark' }), at(arm + 3_200_000n, { kind: 'eoi' })];
    const log = [good[0]!, irq(arm + 3_200_200n), ...good.slice(3)];
    expect(judge(deferred, end, log, [], KVM_LAPIC, { autoEoi: false })).toEqual([]);
  });
});

describe('all eight divide values, mid-count', () => {
  const arm = T0 + 10_000n;
  for (const tdcr of [0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xa]) {
    it(`divide 1 → ${divideOf(tdcr)} half way: the remaining half runs ${divideOf(tdcr)}× slower`, () => {
      const ev = [...setup(ONE_SHOT, DIV1), at(arm, { kind: 'tmict', value: 1_000_000 }), at(arm + 1_000_000n, { kind: 'tdcr', value: tdcr })];
      const e = predictLapic(CLOCK, tl(ev, arm + 400_000_000n)).interrupts;
      const want = arm + 1_000_000n + 1_000_000n * BigInt(divideOf(tdcr));
      expect(e).toHaveLength(1);
      expect(e[0]!.earliest).toBeLessThanOrEqual(want);
      expect(want - e[0]!.earliest).toBeLessThan(BigInt(divideOf(tdcr)) * 2n * W);
    });
  }
});

describe('faults and skew', () => {
  const arm = T0 + 10_000n;
  it('a faulted write changes nothing (an x2APIC TDCR write with reserved bits #GPs)', () => {
    const ev = [...setup(ONE_SHOT, DIV1), at(arm, { kind: 'tmict', value: 1_000_000 }), at(arm + 1_000n, { kind: 'tdcr', value: 0xc, faulted: true })];
    expect(predictLapic(CLOCK, tl(ev, arm + 10_000_000n)).interrupts[0]!.earliest).toBe(arm + 2_000_000n);
  });
  it('skewPpm widens device-clock durations (and never a TSC deadline)', () => {
    const ev = [...setup(ONE_SHOT, DIV1), at(arm, { kind: 'tmict', value: 1_000_000 })];
    const e = predictLapic({ ...CLOCK, skewPpm: 100 }, tl(ev, arm + 10_000_000n)).interrupts[0]!;
    expect(e.earliest).toBe(arm + 2_000_000n - 200n);
    expect(e.expiryLatest).toBe(arm + W + 2_000_000n + 200n);
    const dl = [at(T0, { kind: 'lvtt', value: DEADLINE }), at(arm, { kind: 'tscDeadline', value: arm + 5_000_000n })];
    expect(predictLapic({ ...CLOCK, skewPpm: 100 }, tl(dl, arm + 10_000_000n)).interrupts[0]!.earliest).toBe(arm + 5_000_000n);
  });
});


describe('a masked periodic timer', () => {
  const arm = T0 + 10_000n;
  const P = 1_000_000n;
  const ev = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 500_000 }), at(arm + 2_500_000n, { kind: 'lvtt', value: PERIODIC | MASKED }), at(arm + 5_500_000n, { kind: 'lvtt', value: PERIODIC })];
  const end = arm + 7_500_000n;
  it("'held' (KVM): the ticks while masked merge into one, delivered at the unmask; the phase is kept", () => {
    const e = predictLapic(CLOCK, tl(ev, end)).interrupts;
    expect(e.map((x) => [x.earliest - arm, x.latest === null ? null : x.latest - arm])).toEqual([
      [P, null],
      [2n * P, null],
      [5_500_000n, 5_500_000n + W],
      [6n * P, null],
      [7n * P, null],
    ]);
    const log = [P, 2n * P, 5_500_050n, 6n * P, 7n * P].map((t) => irq(arm + t + (t === 5_500_050n ? 0n : 3_000n)));
    expect(judge(ev, end, log)).toEqual([]);
  });
  it("'dropped' (SDM): the ticks while masked are gone; KVM's delivery at the unmask comes before any expiry was due", () => {
    const p = predictLapic(CLOCK, tl(ev, end), SDM_LAPIC);
    expect(p.interrupts.map((x) => (x.earliest - arm) / P)).toEqual([1n, 2n, 6n, 7n]);
    expect(rules(judgeLapic(p, [1n, 2n].map((k) => irq(arm + k * P + 3_000n)).concat([irq(arm + 5_500_050n)], [6n, 7n].map((k) => irq(arm + k * P + 3_000n))), [], { latenessTsc: L }))).toEqual(['never-early']);
  });
});

describe('a TDCR write whose stamps span several periods (the vCPU descheduled inside it)', () => {
  // Periodic 250 000 counts at ÷1 = 500 000 TSC per period (above the 200 µs floor); the write's
  // stamps are 2 500 000 TSC apart (5 periods) and it goes to ÷2: 1 000 000 TSC per period.
  const P = 500_000n;
  const arm = T0 + 10_000n;
  const w = arm + 700_000n;
  const WIDTH = 5n * P;
  const events = [...setup(PERIODIC, DIV1), at(arm, { kind: 'tmict', value: 250_000 }), at(w, { kind: 'tdcr', value: DIV2 }, WIDTH)];
  const end = w + WIDTH + 8n * P;
  const old = (k: bigint) => arm + P * k + 50n;
  const train = (first: bigint) => {
    const out: ObservedInterrupt[] = [];
    for (let t = first; t < end - 2n * P; t += 2n * P) out.push(irq(t + 50n));
    return out;
  };

  it('the write landed late: old-rate interrupts all through the window, then the new period', () => {
    const late = w + WIDTH; // it took effect at the window's end
    const inWindow = [1n, 2n, 3n, 4n, 5n, 6n].map(old).filter((t) => t < late);
    const next = late + (arm + P * BigInt(inWindow.length + 1) - late) * 2n;
    expect(judge(events, end, [...inWindow.map((t) => irq(t)), ...train(next)])).toEqual([]);
  });

  it('the write landed early: the new, slower period from the start of the window', () => {
    const next = w + (arm + 2n * P - w) * 2n; // remaining count of period 2 at half the rate
    expect(judge(events, end, [irq(old(1n)), ...train(next)])).toEqual([]);
  });

  it('still catches an interrupt before the first expiry', () => {
    expect(rules(judge(events, end, [irq(old(1n) - 100_000n)]))).toContain('never-early');
  });
});

describe('a TDCR write that races a periodic expiry (seed 701)', () => {
  // Periodic 10 000 counts at ÷64 = 1 280 000 TSC per period. Half way, ÷1: the remaining 5 000
  // counts take 10 000 TSC (the ÷1 period itself is raised to the 200 µs floor). Then ÷64 again,
  // with stamps 20 000 TSC wide around that expiry.
  const DIV64 = 0x9;
  const P = 1_280_000n;
  const arm = T0 + 10_000n;
  const t1 = arm + P / 2n;
  const t2 = t1 + 5_000n;
  const events = [...setup(PERIODIC, DIV64), at(arm, { kind: 'tmict', value: 10_000 }), at(t1, { kind: 'tdcr', value: DIV1 }), at(t2, { kind: 'tdcr', value: DIV64 }, 20_000n)];
  const end = t1 + 2_000_000n;

  it('the write came just before the expiry: it was rescaled, and the next follows a ÷64 period later', () => {
    const first = t2 + 4_000n + 64n * 1_000n; // written 1 000 TSC before the ÷1 expiry
    expect(judge(events, end, [irq(first + 50n), irq(first + P + 50n)])).toEqual([]);
  });

  it('the write came just after it: the expiry at ÷1, then nothing within the window', () => {
    expect(judge(events, end, [irq(t1 + 10_150n)])).toEqual([]);
  });

  it('a third interrupt is still one too many', () => {
    const first = t2 + 4_000n + 64n * 1_000n;
    expect(rules(judge(events, end, [irq(first + 50n), irq(first + P + 50n), irq(first + P + 60_000n)]))).toContain('exact-count');
  });
});

describe('a TDCR write whose stamps span a one-shot expiry (seed 507)', () => {
  // One-shot 1 000 000 counts at ÷1 (expiry at arm + 2 000 000); TDCR ÷8 with stamps from arm +
  // 1 500 000 to arm + 3 000 000. Written early, the rest (500 000 TSC) runs 8× slower: expiry at
  // arm + 5 500 000, so a read at arm + 3 100 000 sees 2 400 000 TSC / 16 = 150 000 counts.
  const arm = T0 + 10_000n;
  const events = [...setup(ONE_SHOT), at(arm, { kind: 'tmict', value: 1_000_000 }), at(arm + 1_500_000n, { kind: 'tdcr', value: 0x2 }, 1_500_000n), at(arm + 3_100_000n, { kind: 'readTmcct' })];
  const end = arm + 4_000_000n;
  it('a read after the window may see the count still running', () => {
    expect(judge(events, end, [], [{ eventIndex: 4, value: 150_000 }])).toEqual([]);
  });
  it('or 0, when the write came after the expiry', () => {
    expect(judge(events, end, [irq(arm + 2_000_100n)], [{ eventIndex: 4, value: 0 }])).toEqual([]);
  });
});

describe('an LVTT write to periodic, unmasked, whose stamps span several periods (seed 502)', () => {
  // Periodic 250 000 counts at ÷1 (500 000 TSC), switched to one-shot masked, then back to periodic
  // unmasked by a write whose stamps are 5 periods apart: it may have landed before the one-shot
  // expired (the count goes on reloading) or after (KVM leaves an expired one-shot at 0).
  const P = 500_000n;
  const arm = T0 + 10_000n;
  const masked = arm + 600_000n;
  const w = masked + 10_000n;
  const events = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 250_000 }), at(masked, { kind: 'lvtt', value: ONE_SHOT | MASKED }), at(w, { kind: 'lvtt', value: PERIODIC }, 5n * P)];
  const end = w + 5n * P + 4n * P;
  it('the write came early: interrupts every period inside the window and after it', () => {
    const seen: ObservedInterrupt[] = [];
    for (let t = arm + 2n * P + 100n; t < end - P; t += P) seen.push(irq(t));
    expect(judge(events, end, [irq(arm + P + 100n), ...seen])).toEqual([]);
  });
  it('the write came late: the one-shot expired masked, delivered at the unmask, then nothing', () => {
    expect(judge(events, end, [irq(arm + P + 100n), irq(w + 5n * P + 50n)])).toEqual([]);
  });
});

describe('periodicLateCallback: a periodic expiry handled after the next was due (seed 405)', () => {
  // Periodic 1 000 000 counts at ÷1: 2 000 000 TSC a period. The first interrupt comes 2.5 periods
  // late (the host did not run KVM's callback); KVM then moves its target to that moment, so a
  // TMCCT read half a period later reads 0 (target − now < 0), where the hrtimer's phase says half.
  const arm = T0 + 10_000n;
  const readAt = arm + 5_000_000n;
  const events = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 1_000_000 }), at(readAt, { kind: 'readTmcct' })];
  const end = arm + 20_000_000n;
  const seen = [irq(arm + 4_500_000n), irq(arm + 6_000_100n), irq(arm + 8_000_100n)];
  const reads = [{ eventIndex: 3, value: 0 }];
  const judgeWith = (sw: LapicSwitches) =>
    judgeLapic(predictLapic(CLOCK, tl(events, end), sw, { deliveries: seen.map((o) => o.tsc) }), seen, reads, { latenessTsc: 3_000_000n });

  it("'keeps-phase' (the SDM) judges the read against the hrtimer's phase", () => {
    expect(rules(judgeWith({ ...KVM_LAPIC, periodicLateCallback: 'keeps-phase' }))).toContain('tmcct-range');
  });
  it("KVM's 'target-to-now' allows it, and only after a delivery that late", () => {
    expect(KVM_LAPIC.periodicLateCallback).toBe('target-to-now');
    expect(judgeWith(KVM_LAPIC)).toEqual([]);
    const onTime = [irq(arm + 2_000_100n), irq(arm + 4_000_100n), irq(arm + 6_000_100n), irq(arm + 8_000_100n)];
    const p = predictLapic(CLOCK, tl(events, end), KVM_LAPIC, { deliveries: onTime.map((o) => o.tsc) });
    expect(rules(judgeLapic(p, onTime, reads, { latenessTsc: 3_000_000n }))).toContain('tmcct-range');
  });
});

describe('tdcrAfterOneShotExpiry (a root-cause variant, never a preset)', () => {
  const arm = T0 + 10_000n;
  const expiry = arm + 2_000_000n;
  const tdcrAt = expiry + 1_000_000n;
  const events = [...setup(ONE_SHOT), at(arm, { kind: 'tmict', value: 1_000_000 }), at(tdcrAt, { kind: 'tdcr', value: DIV2 })];
  const end = tdcrAt + 10_000_000n;
  const delivered = [irq(expiry + 1000n), irq(tdcrAt + 50n)];

  it('every preset says a divide change after the expiry fires nothing (SDM §10.5.4: stays at 0 until reprogrammed)', () => {
    for (const sw of [KVM_LAPIC, SDM_LAPIC]) expect(sw.tdcrAfterOneShotExpiry ?? 'nothing').toBe('nothing');
    expect(rules(judge(events, end, delivered))).toEqual(['exact-count']);
  });
  it("'refires' predicts the interrupt inside the TDCR write, and explains the observation", () => {
    const sw = { ...KVM_LAPIC, tdcrAfterOneShotExpiry: 'refires' as const };
    expect(predictLapic(CLOCK, tl(events, end), sw).interrupts.map((e) => e.earliest)).toEqual([arm + 2_000_000n, tdcrAt]);
    expect(judge(events, end, delivered, [], sw)).toEqual([]);
  });
  it("'refires' also explains a re-fire by a TDCR write that raced the expiry (seed 2 under load)", () => {
    // The TMICT write's stamps span 4 ms, so the model cannot tell whether the 2 000 000-TSC count
    // ended before the TDCR write; the guest saw it end, then the write fire it again.
    const ev = [...setup(ONE_SHOT), at(arm, { kind: 'tmict', value: 1_000_000 }, 4_000_000n), at(arm + 4_100_000n, { kind: 'tdcr', value: DIV2 }, 500_000n)];
    const seen = [irq(arm + 3_000_000n), irq(arm + 4_300_000n)];
    const sw = { ...KVM_LAPIC, tdcrAfterOneShotExpiry: 'refires' as const };
    expect(rules(judge(ev, arm + 20_000_000n, seen))).toEqual(['exact-count']);
    expect(judge(ev, arm + 20_000_000n, seen, [], sw)).toEqual([]);
    // The variant allows the re-fire, it does not demand it.
    expect(judge(ev, arm + 20_000_000n, seen.slice(0, 1), [], sw)).toEqual([]);
  });
  it("'refires' also explains a re-fire after a masked one-shot → periodic switch that raced the expiry (seed 703)", () => {
    // A masked one-shot of 2 000 000 TSC; LVTT to periodic, unmasked, with stamps 1 500 000 wide
    // around the expiry: the held expiry is delivered at the unmask, and KVM leaves the count at 0.
    // Then a TDCR write fires it again (before a count still running would have reached 0), and a
    // TMICT write re-arms.
    const ev = [...setup(MASKED | ONE_SHOT), at(arm, { kind: 'tmict', value: 1_000_000 }), at(arm + 1_500_000n, { kind: 'lvtt', value: PERIODIC }, 1_500_000n), at(arm + 3_200_000n, { kind: 'tdcr', value: DIV2 }, 100_000n), at(arm + 3_400_000n, { kind: 'tmict', value: 1_000_000 })];
    const seen = [irq(arm + 2_500_000n), irq(arm + 3_250_000n)];
    const sw = { ...KVM_LAPIC, tdcrAfterOneShotExpiry: 'refires' as const };
    expect(rules(judge(ev, arm + 7_000_000n, seen)).length).toBeGreaterThan(0); // a rule under every preset
    expect(judge(ev, arm + 7_000_000n, seen, [], sw)).toEqual([]);
    expect(judge(ev, arm + 7_000_000n, seen.slice(0, 1), [], sw)).toEqual([]);
  });
  it("'refires' also explains a re-fire after a periodic → one-shot switch that raced the expiry (seed 303)", () => {
    // Periodic 1 000 000 counts at ÷1 (2 000 000 TSC); LVTT to one-shot with its stamps around the
    // second expiry, so the count may have ended there; then a TDCR write, and an interrupt inside it.
    const lvttAt = arm + 4_000_000n - 300_000n;
    const ev = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 1_000_000 }), at(lvttAt, { kind: 'lvtt', value: ONE_SHOT }, 600_000n), at(lvttAt + 1_000_000n, { kind: 'tdcr', value: DIV2 }, 300_000n)];
    const seen = [irq(arm + 2_000_050n), irq(arm + 4_000_050n), irq(lvttAt + 1_000_100n)];
    const sw = { ...KVM_LAPIC, tdcrAfterOneShotExpiry: 'refires' as const };
    expect(rules(judge(ev, lvttAt + 20_000_000n, seen)).length).toBeGreaterThan(0); // a count rule under every preset
    expect(judge(ev, lvttAt + 20_000_000n, seen, [], sw)).toEqual([]);
  });
});

describe('tscDeadlineMode (a root-cause variant, never a preset)', () => {
  // The shrunk case of seed 1 under --kernel-irqchip off: a one-shot count, then LVTT → TSC-deadline
  // (which disarms it, SDM §10.5.4.1), and the count's interrupt comes anyway.
  const arm = T0 + 10_000n;
  const events = [...setup(ONE_SHOT), at(arm, { kind: 'tmict', value: 1_000_000 }), at(arm + 100_000n, { kind: 'lvtt', value: DEADLINE })];
  const end = arm + 10_000_000n;
  const delivered = [irq(arm + 2_000_000n + 1000n)];

  it('every preset disarms the count at the switch to TSC-deadline', () => {
    for (const sw of [KVM_LAPIC, SDM_LAPIC, QEMU_USERSPACE_LAPIC]) expect(sw.tscDeadlineMode ?? 'implemented').toBe('implemented');
    expect(rules(judge(events, end, delivered, [], QEMU_USERSPACE_LAPIC))).toEqual(['spurious-after-disarm']);
  });
  it("'ignored' (QEMU's hw/intc/apic.c reads only LVTT bit 17) keeps the one-shot counting, and explains the observation", () => {
    const sw = { ...QEMU_USERSPACE_LAPIC, tscDeadlineMode: 'ignored' as const };
    expect(predictLapic(CLOCK, tl(events, end), sw).interrupts.map((e) => e.earliest)).toEqual([arm + 2_000_000n]);
    expect(judge(events, end, delivered, [], sw)).toEqual([]);
  });
});

describe("tdcrMidCount 'from-load' (QEMU's own APIC; a root-cause variant, never a preset)", () => {
  const QEMU_FROM_LOAD: LapicSwitches = { ...QEMU_USERSPACE_LAPIC, tdcrMidCount: 'from-load' };
  const arm = T0 + 10_000n;
  // The shrunk case of seed 1 under --kernel-irqchip off: one-shot ÷1 2680 µs, at 1474 µs TDCR ÷2,
  // read TMCCT then and 1640 µs later. 2 cycles per ns here.
  const events = [
    ...setup(ONE_SHOT),
    at(arm, { kind: 'tmict', value: 2_680_000 }),
    at(arm + 2_948_000n, { kind: 'tdcr', value: DIV2 }),
    at(arm + 2_948_200n, { kind: 'readTmcct' }),
    at(arm + 6_228_000n, { kind: 'readTmcct' }),
  ];
  const end = arm + 6_300_000n;
  // QEMU: d = (now − load) >> 1: 1474 µs → 737 000, 3114 µs → 1 557 000; the armed timer fires at
  // load + 2 680 001 ns, as if the write had not come.
  const reads = [
    { eventIndex: 4, value: 2_680_000 - 737_050 },
    { eventIndex: 5, value: 2_680_000 - 1_557_000 },
  ];
  const delivered = [irq(arm + 5_360_002n + 3000n)];

  it('every preset rescales; the preset judges the jump and the interrupt at the old time', () => {
    for (const sw of [KVM_LAPIC, SDM_LAPIC, QEMU_USERSPACE_LAPIC]) expect(sw.tdcrMidCount).toBe('rescale');
    const r = rules(judge(events, end, delivered, reads, QEMU_USERSPACE_LAPIC));
    expect(r).toContain('tmcct-range');
    expect(r).toContain('exact-count');
  });
  it("'from-load' recounts TMCCT from the load at the new divide and keeps the armed expiry: no difference", () => {
    const p = predictLapic(CLOCK, tl(events, end), QEMU_FROM_LOAD);
    expect(p.interrupts.map((e) => e.earliest)).toEqual([arm + 5_360_002n]);
    expect(judge(events, end, delivered, reads, QEMU_FROM_LOAD)).toEqual([]);
    // A continuous count (what the SDM and KVM do) is a difference under it.
    expect(rules(judge(events, end, delivered, [{ eventIndex: 4, value: 603_000 }, reads[1]!], QEMU_FROM_LOAD))).toEqual(['tmcct-range']);
  });
  it("'from-load': apic_timer() re-arms a one-shot whose recount at the slower divide is short of IC", () => {
    const later = arm + 12_000_000n;
    const p = predictLapic(CLOCK, tl(events.slice(0, 4), later), QEMU_FROM_LOAD);
    // load + (IC+1) << 1 ns.
    expect(p.interrupts.map((e) => e.earliest)).toEqual([arm + 5_360_002n, arm + 10_720_004n]);
  });
  it("'from-load': a divide change after the one-shot expired makes TMCCT read non-zero again (the TCG counterexample)", () => {
    const ev = [...setup(ONE_SHOT), at(arm, { kind: 'tmict', value: 2_947_000 }), at(arm + 6_000_000n, { kind: 'tdcr', value: DIV2 }), at(arm + 6_000_200n, { kind: 'readTmcct' })];
    const seen = [irq(arm + 5_894_002n + 2000n)];
    const read = [{ eventIndex: 4, value: 2_947_000 - 1_500_025 }];
    expect(rules(judge(ev, arm + 6_100_000n, seen, read, QEMU_USERSPACE_LAPIC))).toEqual(['tmcct-range']);
    expect(judge(ev, arm + 6_100_000n, seen, read, QEMU_FROM_LOAD)).toEqual([]);
  });
  it("'from-load' periodic: the old expiry, then multiples of (IC+1) × the new divide since the load", () => {
    const ev = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 1_000_000 }), at(arm + 3_000_000n, { kind: 'tdcr', value: DIV2 })];
    const p = predictLapic(CLOCK, tl(ev, arm + 13_000_000n), QEMU_FROM_LOAD);
    expect(p.interrupts.map((e) => e.earliest)).toEqual([arm + 2_000_002n, arm + 4_000_004n, arm + 8_000_008n, arm + 12_000_012n]);
  });
});

describe("resetDivide 'one' (QEMU apic_init_reset(): count_shift 0 while TDCR reads 0; a root-cause variant)", () => {
  // TCG seed 2 (shrunk): vCPU 1 arms TMICT with no TDCR write since reset and reads TMCCT.
  const arm = T0 + 10_000n;
  const events = [at(T0, { kind: 'lvtt', value: ONE_SHOT }), at(arm, { kind: 'tmict', value: 336_000 }), at(arm + 200_000n, { kind: 'readTmcct' })];
  const end = arm + 800_000n;
  const seen = [irq(arm + 672_002n + 1000n)];
  const read = [{ eventIndex: 2, value: 336_000 - 100_000 }];
  it('the presets count ÷2 from reset (SDM: TDCR 0 is ÷2); QEMU counts ÷1', () => {
    for (const sw of [KVM_LAPIC, SDM_LAPIC, QEMU_USERSPACE_LAPIC]) expect(sw.resetDivide ?? 'tdcr').toBe('tdcr');
    expect(rules(judge(events, end, seen, read, QEMU_USERSPACE_LAPIC))).toContain('tmcct-range');
    expect(judge(events, end, seen, read, { ...QEMU_USERSPACE_LAPIC, resetDivide: 'one' })).toEqual([]);
  });
});

describe('an LVTT write that masks and switches periodic → one-shot, racing a period’s end (seed 748)', () => {
  // Periodic 1 000 000 counts at ÷1 (2 000 000 TSC a period); LVTT to masked one-shot with stamps
  // 600 000 TSC wide around the second expiry; a TMCCT read 500 000 TSC after it.
  const arm = T0 + 10_000n;
  const lvttAt = arm + 4_000_000n - 300_000n;
  const events = [...setup(PERIODIC), at(arm, { kind: 'tmict', value: 1_000_000 }), at(lvttAt, { kind: 'lvtt', value: MASKED | ONE_SHOT }, 600_000n), at(arm + 4_500_000n, { kind: 'readTmcct' })];
  const end = arm + 10_000_000n;
  const seen = [irq(arm + 2_000_050n)];

  it('the write came first: the count ended at that expiry, TMCCT 0', () => {
    expect(judge(events, end, seen, [{ eventIndex: 4, value: 0 }])).toEqual([]);
  });
  it('the expiry came first: the count reloaded, then runs on as a one-shot', () => {
    expect(judge(events, end, seen, [{ eventIndex: 4, value: 750_000 }])).toEqual([]);
  });
  it('a count the timer never held is still outside', () => {
    expect(rules(judge(events, end, seen, [{ eventIndex: 4, value: 1_000_001 }]))).toContain('tmcct-range');
  });
});
