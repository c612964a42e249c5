import { describe, expect, it } from 'vitest';
import { defaultOptions } from '../lib/options.js';
import type { PropertyEnv } from '../lib/property.js';
import { INTERRUPT_COST_FACTOR, INTERRUPT_COST_SAMPLES, interruptCostFrom, latenessBoundNs, minPeriodicNsFor, pitImplOf, quantile, vcpuLimitOf } from './clock.js';
import { attributeRootCauses, caseKinds, latenessOf, noisyHostOf, type TimerCaseResult } from './timerProperty.js';
import type { TimerDifference } from '../../models/timers/common.js';

const env = (o: Parameters<typeof defaultOptions>[0]) => ({ options: defaultOptions(o) }) as unknown as PropertyEnv;

describe('timer facts', () => {
  it('the lateness bound grows with the host noise (a quiet host is held tighter)', () => {
    const quiet = latenessBoundNs({ samples: 2000, sleepNs: 200_000, p50: 60_000, p90: 70_000, p99: 80_000, max: 200_000 });
    const noisy = latenessBoundNs({ samples: 2000, sleepNs: 200_000, p50: 60_000, p90: 200_000, p99: 2_000_000, max: 9_000_000 });
    expect(quiet).toBe(8 * 80_000 + 500_000);
    expect(noisy).toBeGreaterThan(quiet);
  });
  it('nearest-rank quantiles', () => {
    expect(quantile([], 0.9)).toBeNull();
    expect(quantile([5, 1, 4, 2, 3], 0.9)).toBe(5);
    expect(quantile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9)).toBe(9);
  });
  it('one vCPU only where QEMU 7.2.22 runs its own APIC under KVM', () => {
    expect(vcpuLimitOf({ accel: 'kvm', kernelIrqchip: 'off' }, '7.2.22')?.max).toBe(1);
    expect(vcpuLimitOf({ accel: 'kvm', kernelIrqchip: 'off' }, '7.2.21')).toBeUndefined();
    expect(vcpuLimitOf({ accel: 'kvm', kernelIrqchip: 'split' }, '7.2.22')).toBeUndefined();
    expect(vcpuLimitOf({ accel: 'kvm' }, '7.2.22')).toBeUndefined();
    expect(vcpuLimitOf({ accel: 'tcg' }, '7.2.22')).toBeUndefined();
  });
  it("whose PIT: KVM's only with the whole irqchip in the kernel", () => {
    expect(pitImplOf(env({ accel: 'kvm' }))).toBe('kvm');
    expect(pitImplOf(env({ accel: 'kvm', kernelIrqchip: 'split' }))).toBe('qemu');
    expect(pitImplOf(env({ accel: 'tcg' }))).toBe('qemu');
  });
});

describe('interrupt cost and the shortest periodic period', () => {
  // Pairs of (start, end) TSCs: with a one-shot inside the wait, then without, INTERRUPT_COST_SAMPLES times.
  const samples = (withCycles: (i: number) => number, withoutCycles: number) =>
    Array.from({ length: INTERRUPT_COST_SAMPLES }, (_, i) => [0n, BigInt(withCycles(i)), 0n, BigInt(withoutCycles)]).flat();
  it('is the median extra time a wait with an interrupt inside took, ns; an outlier does not move it', () => {
    // 1 GHz TSC: cycles are ns. 15 samples 30 µs over the 200 µs wait, one 5 ms (the host took the CPU).
    expect(interruptCostFrom(samples((i) => (i === 3 ? 5_200_000 : 230_000), 200_000), 1e9)).toBe(30_000);
    expect(interruptCostFrom(samples(() => 190_000, 200_000), 1e9)).toBe(0);
    expect(interruptCostFrom([1n, 2n], 1e9)).toBeUndefined();
  });
  it(`limits periodic timers to ${INTERRUPT_COST_FACTOR} interrupt costs only where that is longer than KVM's floor`, () => {
    expect(minPeriodicNsFor(30_000, 200_000)).toBe(0);
    expect(minPeriodicNsFor(210_000, 200_000)).toBe(840_000);
    expect(minPeriodicNsFor(undefined, 200_000)).toBe(0);
    expect(minPeriodicNsFor(10_000, 0)).toBe(40_000);
  });
});

describe('the kinds of a case', () => {
  it('names each LAPIC mode, TDCR write, stop, mask, deadline, RTC rate and PIT mode once', () => {
    expect(
      caseKinds([
        'cpu0 arm periodic ÷4 900us',
        'cpu1 arm periodic ÷2 300us',
        'cpu1 LVTT tsc-deadline masked',
        'cpu0 one-shot ÷8 2000us, at 700us TDCR ÷2, read TMCCT then and 500us later',
        'cpu0 TDCR ÷16',
        'cpu0 TMICT 0 (stop)',
        'cpu1 TSC deadline now-4096',
        'cpu1 TSC deadline now',
        'cpu0 TSC deadline now+300us',
        'cpu0 TSC deadline zero',
        'cpu1 switch to x2APIC',
        'RTC rate RS=6 (1024 Hz)',
        'RTC steady RS=5 (2048 Hz) for 17671us',
        'PIT steady mode 2, 800us for 20000us',
        'PIT mode 0, 300us',
        'PIT reload 500us',
        'cpu0 read kvmclock ×8',
        'cpu0 wait 300us',
      ]),
    ).toEqual([
      'kvmclock.reads',
      'lapic.deadline-ahead',
      'lapic.deadline-now',
      'lapic.deadline-past',
      'lapic.deadline-zero',
      'lapic.masked',
      'lapic.one-shot',
      'lapic.periodic',
      'lapic.stop',
      'lapic.tdcr',
      'lapic.tdcr-mid-count',
      'lapic.tsc-deadline',
      'lapic.x2apic',
      'pit.mode0',
      'pit.mode2',
      'pit.reload',
      'rtc.1024Hz',
      'rtc.2048Hz',
    ]);
  });
});

describe('a noisy host', () => {
  const result = (thread: number, hostWaitUs: number) => ({ thread, hostWaitUs }) as unknown as TimerCaseResult;
  it('is one that stalled the case longer than the lateness bound at once, named by the vCPU', () => {
    expect(noisyHostOf({ latenessBoundUs: 1821, results: [result(0, 300), result(1, 900)] })).toBeUndefined();
    expect(noisyHostOf({ latenessBoundUs: 1821, results: [result(0, 300), result(1, 6552)] })).toBe(
      'the host kept vCPU 1 (or a thread the timer needs, or its own CPUs) from running for 6552 µs at once during the case, over the 1821 µs bound',
    );
    expect(noisyHostOf({ latenessBoundUs: 1821, results: [] })).toBeUndefined();
  });
});

describe('judging helpers', () => {
  const d = (rule: TimerDifference['rule']): TimerDifference => ({ rule, summary: 'x', expected: 0, observed: 1, eventIndex: 0 });
  it('labels count differences with the first root cause whose variant explains them all', () => {
    const out = attributeRootCauses([d('exact-count'), d('tmcct-range')], [{ label: 'no', variant: 1 }, { label: 'cause', variant: 2 }], (v) => (v === 2 ? [d('tmcct-range')] : [d('exact-count')]));
    expect(out.map((x) => x.summary)).toEqual(['cause: x', 'x']);
  });
  it('also labels the other rules a cause leaves clean, never those it does not', () => {
    const out = attributeRootCauses([d('exact-count'), d('tmcct-range'), d('tsc-deadline-msr')], [{ label: 'cause', variant: 0 }], () => [d('tsc-deadline-msr')]);
    expect(out.map((x) => `${x.rule} ${x.summary}`)).toEqual(['exact-count cause: x', 'tmcct-range cause: x', 'tsc-deadline-msr x']);
  });
  it('tries a cause with its own rules on differences of those rules alone (a TMCCT-only recount)', () => {
    const tm = new Set(['tmcct-range']);
    expect(attributeRootCauses([d('tmcct-range')], [{ label: 'count-only', variant: 0 }], () => [])[0]!.summary).toBe('x');
    expect(attributeRootCauses([d('tmcct-range')], [{ label: 'recount', variant: 0, rules: tm }], () => [])[0]!.summary).toBe('recount: x');
    expect(attributeRootCauses([d('tmcct-range')], [{ label: 'recount', variant: 0, rules: tm }], () => [d('exact-count')])[0]!.summary).toBe('x');
  });
  it('prefers a later cause that explains every rule to an earlier one that explains the count alone', () => {
    const out = attributeRootCauses([d('exact-count'), d('tmcct-range')], [{ label: 'count', variant: 1 }, { label: 'all', variant: 2, rules: new Set(['tmcct-range']) }], (v) => (v === 2 ? [] : [d('tmcct-range')]));
    expect(out.map((x) => x.summary)).toEqual(['all: x', 'all: x']);
  });
  it('leaves differences no variant explains as they are', () => {
    expect(attributeRootCauses([d('never-early')], [{ label: 'c', variant: 0 }], () => [d('never-early')])[0]!.summary).toBe('x');
  });
  it('lateness: each owed interrupt against the first delivery at or after its earliest time', () => {
    const exp = [
      { earliest: 100n, expiryLatest: 110n, count: 'once', latest: null },
      { earliest: 200n, expiryLatest: 210n, count: 'at-most-once', latest: null },
    ];
    expect(latenessOf(exp, [1110n], (t) => t, 5000n, 1e6)).toEqual([{ index: 0, us: 1000, excusedUs: 0 }]);
    // A delivery whose vCPU waited 400 µs to run owes that much of its lateness to the host.
    expect(latenessOf(exp, [1110n], (t) => t, 5000n, 1e6, new Map([[1110n, 400]]))).toEqual([{ index: 0, us: 600, excusedUs: 400 }]);
  });
});
