import { describe, expect, it } from 'vitest';
import { PVCLOCK_TSC_STABLE_BIT, judgeKvmclock, pvclockNs, pvclockScale, pvclockTscHz, type KvmclockSample, type PvclockTimeInfo } from './kvmclock.js';

const TSC_HZ = 2_500_000_000n;
const scale = pvclockScale(TSC_HZ);
const INFO: PvclockTimeInfo = { version: 4, tscTimestamp: 1_000_000n, systemTime: 50_000_000n, tscToSystemMul: scale.mul, tscShift: scale.shift, flags: PVCLOCK_TSC_STABLE_BIT };
const OPTS = { tscHz: TSC_HZ, boundNs: 1_000n, boundPpm: 10 };
const W = 200n;

/** A correct read at TSC t on a vCPU. */
const read = (vcpu: number, t: bigint, info: PvclockTimeInfo = INFO): KvmclockSample => ({ vcpu, tscBefore: t - W / 2n, tscAfter: t + W / 2n, tsc: t, info, ns: pvclockNs(info, t), versionAfter: info.version });
const rules = (d: { rule: string }[]) => [...new Set(d.map((x) => x.rule))];

describe('pvclock arithmetic (msr.rst)', () => {
  it('scales the TSC delta by mul·2^shift / 2^32 and adds system_time', () => {
    const twoGhz: PvclockTimeInfo = { ...INFO, systemTime: 0n, tscTimestamp: 0n, tscToSystemMul: 2 ** 31, tscShift: 0 };
    expect(pvclockNs(twoGhz, 2_000_000_000n)).toBe(1_000_000_000n);
    // A negative shift halves the delta first: 0.25 ns per cycle.
    expect(pvclockNs({ ...twoGhz, tscShift: -1 }, 4_000_000_000n)).toBe(1_000_000_000n);
    // tsc_shift is an s8: 0xff is -1.
    expect(pvclockNs({ ...twoGhz, tscShift: 0xff }, 4_000_000_000n)).toBe(1_000_000_000n);
    expect(pvclockNs({ ...twoGhz, tscShift: 1 }, 1_000_000_000n)).toBe(1_000_000_000n);
    // The product is 96 bits wide (no u64 overflow) for a delta of 2^40 cycles.
    expect(pvclockNs({ ...twoGhz }, 1n << 40n)).toBe(1n << 39n);
  });
  it("a struct's implied rate, and a scale for 2.5 GHz", () => {
    expect(scale.shift).toBe(-1);
    expect(Math.abs(pvclockTscHz(INFO) - 2.5e9)).toBeLessThan(2);
    expect(pvclockNs(INFO, 1_000_000n + 2_500_000_000n) - INFO.systemTime).toBeGreaterThanOrEqual(999_999_999n);
  });
});

describe('rules', () => {
  const good = [read(0, 2_000_000n), read(1, 3_000_000n), read(0, 4_000_000n), read(1, 5_000_000n)];
  it('passes correct reads', () => {
    expect(judgeKvmclock(good, { ...OPTS, ratePpm: 1 })).toEqual([]);
  });
  it('flags a torn read and wrong arithmetic', () => {
    const torn = { ...read(0, 6_000_000n), versionAfter: 6 };
    const odd = read(0, 7_000_000n, { ...INFO, version: 5 });
    const wrong = { ...read(1, 8_000_000n), ns: read(1, 8_000_000n).ns + 1n };
    expect(rules(judgeKvmclock([...good, torn, odd, wrong], OPTS)).sort()).toEqual(['kvmclock-arithmetic', 'kvmclock-version']);
  });
  it('flags a clock that goes back on one vCPU', () => {
    const back = { ...read(0, 6_000_000n), ns: good[2]!.ns - 10n, tsc: undefined };
    expect(rules(judgeKvmclock([...good, back], OPTS))).toContain('kvmclock-monotonic-vcpu');
  });
  it('across vCPUs: only reads the stamps order, and only with the stable bit', () => {
    // vCPU 1 reads after vCPU 0's read ended but returns less: a backwards step.
    const a = read(0, 10_000_000n);
    const b = { ...read(1, 10_001_000n), ns: a.ns - 100n, tsc: undefined };
    expect(rules(judgeKvmclock([a, b], OPTS))).toEqual(['kvmclock-monotonic-cross-vcpu']);
    // Overlapping stamps prove no order.
    const c = { ...read(1, 10_000_050n), ns: a.ns - 100n, tsc: undefined };
    expect(judgeKvmclock([a, c], OPTS)).toEqual([]);
    // Without PVCLOCK_TSC_STABLE_BIT the ABI leaves the order to the guest.
    const unstable = { ...INFO, flags: 0 };
    const a2 = read(0, 10_000_000n, unstable);
    const b2 = { ...read(1, 10_001_000n, unstable), ns: a2.ns - 100n, tsc: undefined };
    expect(judgeKvmclock([a2, b2], OPTS)).toEqual([]);
    expect(rules(judgeKvmclock([a2, b2], { ...OPTS, crossVcpuWithoutStableBit: true }))).toEqual(['kvmclock-monotonic-cross-vcpu']);
  });
  it('flags a clock that drifts from TSC-derived time beyond the bound', () => {
    // 1 s later by the TSC, the clock says 1 s + 100 µs: 100 ppm, bound 10 ppm + 1 µs.
    const later = { ...read(0, 2_000_000n + 2_500_000_000n), tsc: undefined };
    const drifted = { ...later, ns: later.ns + 100_000n };
    expect(judgeKvmclock([good[0]!, later], OPTS)).toEqual([]);
    expect(rules(judgeKvmclock([good[0]!, drifted], OPTS))).toEqual(['kvmclock-vs-tsc']);
  });
  it("flags a struct whose rate is not the TSC's", () => {
    const off = read(0, 2_000_000n, { ...INFO, tscToSystemMul: Math.round(INFO.tscToSystemMul * 1.001) });
    expect(rules(judgeKvmclock([off], { ...OPTS, ratePpm: 100 }))).toEqual(['kvmclock-rate']);
  });
});
