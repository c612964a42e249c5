/**
 * kvmclock (pvclock) arithmetic and the rules its reads must satisfy.
 *
 * ABI (Linux Documentation/virt/kvm/x86/msr.rst, MSR_KVM_SYSTEM_TIME_NEW; struct
 * pvclock_vcpu_time_info, arch/x86/include/asm/pvclock-abi.h):
 *   u32 version; u32 pad0; u64 tsc_timestamp; u64 system_time; u32 tsc_to_system_mul;
 *   s8 tsc_shift; u8 flags; u8 pad[2];
 * "time = (current_tsc - tsc_timestamp)
 *  if (tsc_shift >= 0) time <<= tsc_shift; else time >>= -tsc_shift;
 *  time = (time * tsc_to_system_mul) >> 32
 *  time = time + system_time"
 * with u64 arithmetic and a 96-bit product (Linux pvclock_scale_delta() / mul_u64_u32_shr()).
 * version: the guest checks it before and after reading and retries unless both are equal and even
 * (an odd version marks an update in progress). flags bit 0 PVCLOCK_TSC_STABLE_BIT: "time measures
 * taken across multiple cpus are guaranteed to be monotonic" (without it the guest must order them
 * itself, as Linux's pvclock_clocksource_read() does); bit 1 PVCLOCK_GUEST_STOPPED.
 *
 * Rules (judgeKvmclock):
 *  - kvmclock-version: a sample computed from an odd version, or one that changed during the read;
 *  - kvmclock-arithmetic: the value is the ABI's formula over the struct and TSC the guest used;
 *  - kvmclock-monotonic-vcpu: on one vCPU, in program order, the clock never goes back;
 *  - kvmclock-monotonic-cross-vcpu: a read that certainly followed another (its tscBefore is after the
 *    other's tscAfter; the vCPUs share one synchronised TSC) is not smaller, when both structs carry
 *    PVCLOCK_TSC_STABLE_BIT (without it the ABI leaves cross-vCPU order to the guest);
 *  - kvmclock-vs-tsc: the clock moves with TSC-derived time, |Δns − Δtsc·1e9/tscHz| within
 *    boundNs + boundPpm·Δ, from the first sample;
 *  - kvmclock-rate: the struct's own rate (2^32·1e9 / (mul·2^shift) Hz) is the TSC rate within ratePpm.
 */
import { hex, maxB, toBig, type Stamp, type TimerDifference } from './common.js';

export interface PvclockTimeInfo {
  readonly version: number;
  readonly tscTimestamp: bigint;
  readonly systemTime: bigint;
  readonly tscToSystemMul: number;
  /** Signed (s8). */
  readonly tscShift: number;
  readonly flags: number;
}

export const PVCLOCK_TSC_STABLE_BIT = 1 << 0;
export const PVCLOCK_GUEST_STOPPED = 1 << 1;

const MASK64 = (1n << 64n) - 1n;

/** The ABI's time at `tsc`, in ns, with its u64 wrap-around. */
export function pvclockNs(info: PvclockTimeInfo, tsc: bigint): bigint {
  let delta = (tsc - info.tscTimestamp) & MASK64;
  const shift = ((info.tscShift << 24) >> 24) | 0; // s8
  if (shift < 0) delta >>= BigInt(-shift);
  else delta = (delta << BigInt(shift)) & MASK64;
  const scaled = (delta * BigInt(info.tscToSystemMul >>> 0)) >> 32n;
  return (info.systemTime + scaled) & MASK64;
}

/** The TSC rate a pvclock struct implies: 2^32·1e9 / (mul·2^shift) Hz. */
export function pvclockTscHz(info: PvclockTimeInfo): number {
  const shift = ((info.tscShift << 24) >> 24) | 0;
  return (2 ** 32 * 1e9) / ((info.tscToSystemMul >>> 0) * 2 ** shift);
}

/**
 * A mul/shift for a TSC rate in the manner of arch/x86/kvm/x86.c kvm_get_time_scale(NSEC_PER_SEC,
 * tscHz): halve or double the rate until it lies in (1e9, 2e9], then mul = (1e9 << 32) / rate.
 * For building test structs; the judge never assumes how the host chose them.
 */
export function pvclockScale(tscHz: bigint): { mul: number; shift: number } {
  let shift = 0;
  let base = tscHz;
  const scaled = 1_000_000_000n;
  while (base > scaled * 2n) {
    base >>= 1n;
    shift--;
  }
  while (base <= scaled && base < 1n << 31n) {
    base <<= 1n;
    shift++;
  }
  const mul = (scaled << 32n) / base;
  if (mul > 0xffff_ffffn) throw new Error('pvclockScale: rate out of range');
  return { mul: Number(mul), shift };
}

export interface KvmclockSample extends Stamp {
  readonly vcpu: number;
  /** The clock value the guest read, ns. */
  readonly ns: bigint;
  /** The struct the guest computed it from, and the TSC it used (for the arithmetic and version rules). */
  readonly info?: PvclockTimeInfo;
  readonly tsc?: bigint;
  /** The version re-read after the data (the ABI's retry check). */
  readonly versionAfter?: number;
}

export interface KvmclockJudgeOptions {
  /** Guest TSC rate (CPUID or calibrated, common.ts). */
  readonly tscHz: number | bigint;
  /** Absolute bound for kvmclock-vs-tsc, ns. */
  readonly boundNs: bigint;
  /** Relative bound for kvmclock-vs-tsc, ppm of the elapsed time. */
  readonly boundPpm: number;
  /** kvmclock-rate tolerance, ppm; the rule is skipped when absent. */
  readonly ratePpm?: number;
  /** Judge cross-vCPU order even without PVCLOCK_TSC_STABLE_BIT (default false). */
  readonly crossVcpuWithoutStableBit?: boolean;
}

export function judgeKvmclock(samples: readonly KvmclockSample[], options: KvmclockJudgeOptions): TimerDifference[] {
  const diffs: TimerDifference[] = [];
  const tscHz = toBig(options.tscHz, 'tscHz');

  samples.forEach((s, i) => {
    if (!s.info) return;
    if ((s.info.version & 1) !== 0 || (s.versionAfter !== undefined && s.versionAfter !== s.info.version)) {
      diffs.push({
        rule: 'kvmclock-version',
        summary: `kvmclock sample ${i} (vCPU ${s.vcpu}) used version ${s.info.version}${s.versionAfter === undefined ? '' : `, ${s.versionAfter} after`}: an update was in progress (msr.rst: retry while odd or changed)`,
        expected: { version: 'even and unchanged' },
        observed: { version: s.info.version, versionAfter: s.versionAfter ?? null },
        eventIndex: i,
      });
    }
    if (s.tsc !== undefined) {
      const want = pvclockNs(s.info, s.tsc);
      if (want !== s.ns) {
        diffs.push({
          rule: 'kvmclock-arithmetic',
          summary: `kvmclock sample ${i} (vCPU ${s.vcpu}) reads ${s.ns} ns; the ABI's formula over its struct and TSC ${hex(s.tsc)} gives ${want}`,
          expected: want,
          observed: s.ns,
          eventIndex: i,
        });
      }
    }
    if (options.ratePpm !== undefined) {
      const hz = pvclockTscHz(s.info);
      const ppm = (Math.abs(hz - Number(tscHz)) / Number(tscHz)) * 1e6;
      if (ppm > options.ratePpm) {
        diffs.push({
          rule: 'kvmclock-rate',
          summary: `kvmclock sample ${i}: the struct's rate ${hz.toFixed(0)} Hz is ${ppm.toFixed(1)} ppm from the TSC's ${tscHz} Hz (allowed ${options.ratePpm})`,
          expected: { tscHz, ppm: options.ratePpm },
          observed: { hz, ppm },
          eventIndex: i,
        });
      }
    }
  });

  // Per vCPU, in program order.
  const last = new Map<number, { ns: bigint; i: number }>();
  samples.forEach((s, i) => {
    const prev = last.get(s.vcpu);
    if (prev && s.ns < prev.ns) {
      diffs.push({
        rule: 'kvmclock-monotonic-vcpu',
        summary: `kvmclock on vCPU ${s.vcpu} went back ${prev.ns - s.ns} ns: sample ${i} reads ${s.ns}, after ${prev.ns} at sample ${prev.i}`,
        expected: { atLeast: prev.ns, after: prev.i },
        observed: s.ns,
        eventIndex: i,
      });
    }
    if (!prev || s.ns > prev.ns) last.set(s.vcpu, { ns: s.ns, i });
  });

  // Across vCPUs, in the order the stamps prove.
  const stable = (s: KvmclockSample) => options.crossVcpuWithoutStableBit === true || (s.info !== undefined && (s.info.flags & PVCLOCK_TSC_STABLE_BIT) !== 0);
  const order = samples.map((s, i) => ({ s, i })).filter((x) => stable(x.s));
  const byAfter = [...order].sort((a, b) => (a.s.tscAfter < b.s.tscAfter ? -1 : a.s.tscAfter > b.s.tscAfter ? 1 : 0));
  const byBefore = [...order].sort((a, b) => (a.s.tscBefore < b.s.tscBefore ? -1 : a.s.tscBefore > b.s.tscBefore ? 1 : 0));
  const maxPerVcpu = new Map<number, { ns: bigint; i: number }>();
  let k = 0;
  for (const b of byBefore) {
    while (k < byAfter.length && byAfter[k]!.s.tscAfter < b.s.tscBefore) {
      const a = byAfter[k++]!;
      const m = maxPerVcpu.get(a.s.vcpu);
      if (!m || a.s.ns > m.ns) maxPerVcpu.set(a.s.vcpu, { ns: a.s.ns, i: a.i });
    }
    for (const [vcpu, m] of maxPerVcpu) {
      if (vcpu === b.s.vcpu || b.s.ns >= m.ns) continue;
      diffs.push({
        rule: 'kvmclock-monotonic-cross-vcpu',
        summary: `kvmclock went back ${m.ns - b.s.ns} ns across vCPUs: sample ${b.i} (vCPU ${b.s.vcpu}) reads ${b.s.ns} although sample ${m.i} (vCPU ${vcpu}) read ${m.ns} before it began (TSC ${hex(b.s.tscBefore)}), both with PVCLOCK_TSC_STABLE_BIT`,
        expected: { atLeast: m.ns, from: m.i },
        observed: b.s.ns,
        eventIndex: b.i,
      });
      break;
    }
  }

  // Against TSC-derived time, from the first sample.
  const r = samples[0];
  if (r) {
    samples.forEach((s, i) => {
      if (i === 0) return;
      const dLo = s.tscBefore - r.tscAfter;
      const dHi = s.tscAfter - r.tscBefore;
      const nsLo = (dLo * 1_000_000_000n) / tscHz;
      const nsHi = (dHi * 1_000_000_000n + tscHz - 1n) / tscHz;
      const slack = options.boundNs + BigInt(Math.ceil((Number(maxB(nsHi, 0n)) * options.boundPpm) / 1e6));
      const d = s.ns - r.ns;
      if (d < nsLo - slack || d > nsHi + slack) {
        diffs.push({
          rule: 'kvmclock-vs-tsc',
          summary: `kvmclock sample ${i} (vCPU ${s.vcpu}) is ${d} ns after sample 0; the TSC says ${nsLo}..${nsHi} ns (± ${slack})`,
          expected: { min: nsLo - slack, max: nsHi + slack },
          observed: d,
          eventIndex: i,
        });
      }
    });
  }
  return diffs;
}
