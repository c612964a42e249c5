/**
 * kvmclock properties: reads on every vCPU, interleaved with busy waits. The judge is
 * models/timers/kvmclock.ts (the pvclock ABI of Linux Documentation/virt/kvm/x86/msr.rst).
 */
import { kvmclockCommands } from '../../generators/timers.js';
import { judgeKvmclock, type KvmclockSample } from '../../models/timers/kvmclock.js';
import type { PropertyEnv } from '../lib/property.js';
import { PVCLOCK, type TimerFacts } from './clock.js';
import type { SourceTimeline, ThreadView } from './observe.js';
import { timerProperty, type Judgement } from './timerProperty.js';

/** kvmclock-vs-tsc: at most 50 µs plus 200 ppm of the elapsed time apart (the CPUID TSC rate is exact to 0.2 ppm here). */
export const KVMCLOCK_BOUND = { boundNs: 50_000n, boundPpm: 200, ratePpm: 500 } as const;

function samplesOf(ts: readonly SourceTimeline[], views: readonly ThreadView[]): KvmclockSample[] {
  return ts.flatMap((t) =>
    t.events
      .filter((e) => e.kind === 'kvmclock')
      .map((e): KvmclockSample => {
        const r = views[t.thread]!.records.get(e.opIndex)!;
        const fl = r.fields as Record<string, bigint>;
        const sf = Number(fl.shiftFlags);
        return {
          vcpu: t.thread,
          tscBefore: fl.tsc!,
          tscAfter: fl.tsc!,
          ns: fl.ns!,
          tsc: fl.tsc!,
          info: { version: Number(fl.version), tscTimestamp: fl.tscTimestamp!, systemTime: fl.systemTime!, tscToSystemMul: Number(fl.mul), tscShift: (sf << 24) >> 24, flags: (sf >> 8) & 0xff },
          versionAfter: Number(fl.versionAfter),
        };
      }),
  );
}

function judgeKvmclockCase(ts: readonly SourceTimeline[], views: readonly ThreadView[], f: TimerFacts, env: PropertyEnv): Judgement {
  const samples = samplesOf(ts, views);
  const differences = judgeKvmclock(samples, { tscHz: Math.round(f.tscHz), ...KVMCLOCK_BOUND });
  // How far kvmclock is from TSC-derived time, per sample, from the first (ns): the report's drift plot.
  const first = samples.reduce<KvmclockSample | null>((a, s) => (a === null || s.tsc! < a.tsc! ? s : a), null);
  const drift = first
    ? samples.map((s) => ({ series: 'kvmclock.driftNs', value: Number(s.ns - first.ns) - (Number(s.tsc! - first.tsc!) * 1e9) / f.tscHz, labels: { vcpu: s.vcpu, accel: env.options.accel } }))
    : [];
  return { differences, observed: [], lateness: [], counts: { kvmclockReads: samples.length }, samples: drift };
}

export const kvmclockReads = timerProperty({
  id: 'timers.kvmclock.reads',
  statement:
    'kvmclock read on every vCPU follows the pvclock ABI (even, unchanged version; the formula over its fields), never goes back on a vCPU nor across vCPUs (TSC-stable), and moves with TSC-derived time within 50 µs + 200 ppm',
  source: 'kvmclock',
  threads: 2,
  maxCommands: 24,
  maxWaitUs: 30_000,
  skip: (env) => (env.options.accel === 'kvm' ? null : 'kvmclock is KVM’s paravirtual clock: there is none under TCG'),
  commands: (lim) => kvmclockCommands(lim, PVCLOCK.base, PVCLOCK.stride),
  judgeCase: judgeKvmclockCase,
  rules: [
    ['pvclock ABI', ['kvmclock-version', 'kvmclock-arithmetic']],
    ['monotonic on a vCPU', ['kvmclock-monotonic-vcpu']],
    ['monotonic across vCPUs', ['kvmclock-monotonic-cross-vcpu']],
    ['moves with TSC time', ['kvmclock-vs-tsc', 'kvmclock-rate']],
  ],
  latenessRule: false,
});
