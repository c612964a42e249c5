/**
 * RTC periodic-interrupt properties: register A rate changes (rates 1–15, the 64 ↔ 1024 Hz flips
 * Windows makes, writes of the same rate), PIE on and off, register C read late or early, with and
 * without `-rtc driftfix=slew`. The RTC is always QEMU's (hw/rtc/mc146818rtc.c), with KVM's
 * in-kernel IOAPIC or QEMU's; the model is models/timers/rtc.ts with the datasheet's phase rule
 * (the first tick after a rate change comes within one new period: MC146818A leaves the phase to
 * the divider chain), not QEMU's own choice of phase.
 */
import { rtcCommands, RTC_VECTOR } from '../../generators/timers.js';
import { unblockedFrom } from '../../models/timers/common.js';
import type { ObservedInterrupt } from '../../models/timers/common.js';
import { DATASHEET_RTC, judgeRtc, predictRtc, rtcRateHz, type RtcEvent, type RtcPrediction, type RtcSwitches } from '../../models/timers/rtc.js';
import type { PropertyEnv } from '../lib/property.js';
import { nsToTsc, type TimerFacts } from './clock.js';
import { interruptsFor, type SourceTimeline, type ThreadView } from './observe.js';
import { latenessOf, stealExcuses, timerProperty, type Judgement } from './timerProperty.js';

function toRtcEvents(t: SourceTimeline): RtcEvent[] {
  return t.events.map((e): RtcEvent => {
    const stamp = { tscBefore: e.tscBefore, tscAfter: e.tscAfter };
    switch (e.kind) {
      case 'writeA':
      case 'writeB':
        return { ...stamp, kind: e.kind, value: Number(e.value) };
      case 'readC':
      case 'sti':
      case 'cli':
      case 'mark':
        return { ...stamp, kind: e.kind };
      default:
        throw new Error(`an RTC timeline has no event kind '${e.kind}'`);
    }
  });
}

/**
 * One `rtc.windowCount` sample per window of the prediction: the interrupts observed in it against
 * the model's [min, max], with the rate in force (hz), the window's length (ms), where it starts
 * (atMs, from the case's first event: a report plots the count against the model over time while
 * the rate changes), which case of the run it belongs to (case), and whether it lies between two
 * register events or marks (span 'between') or is the whole run from the first (span 'run').
 */
export function rtcWindowSamples(
  p: Pick<RtcPrediction, 'windows' | 'segments'>,
  observed: readonly Pick<ObservedInterrupt, 'tsc'>[],
  o: { readonly tscHz: number; readonly t0: bigint; readonly caseIndex: number; readonly labels: Readonly<Record<string, string | number>> },
): { series: 'rtc.windowCount'; value: number; labels: Record<string, string | number> }[] {
  const ms = (tsc: bigint) => Math.round((Number(tsc) / o.tscHz) * 1e4) / 10;
  return p.windows.map((w) => {
    const n = observed.filter((x) => x.tsc >= w.from && x.tsc < w.to).length;
    // In force at the window's start: the segment the event before it started (a segment ends and
    // the next starts at the same write, whose interval both carry; the window starts after it).
    const rs = p.segments.find((s) => s.start.hi <= w.from && (s.end === null || s.end.lo >= w.from))?.rs ?? 0;
    return {
      series: 'rtc.windowCount',
      value: n,
      labels: { ...o.labels, min: w.ticks.min, max: w.ticks.max, hz: rtcRateHz(rs), ms: ms(w.to - w.from), atMs: ms(w.from - o.t0), case: o.caseIndex, span: w.toEvent === null ? 'run' : 'between' },
    };
  });
}

function rtcJudge(base: RtcSwitches, slew: boolean) {
  return (t: SourceTimeline, view: ThreadView, f: TimerFacts, env: PropertyEnv): Judgement => {
    const variant = env.mutant?.modelVariant?.rtc as Partial<RtcSwitches> | undefined;
    const switches = variant ? { ...base, ...variant } : base;
    const events = toRtcEvents(t);
    const p = predictRtc({ tscHz: BigInt(Math.round(f.tscHz)) }, { events, endTsc: t.endTsc, vector: RTC_VECTOR, interruptsEnabled: false }, switches);
    const observed = interruptsFor(view, new Set([RTC_VECTOR]), t.endTsc);
    const differences = judgeRtc(p, observed, { latenessTsc: nsToTsc(f.lostAfterNs, f), windowLatenessTsc: nsToTsc(f.latenessBoundNs, f), isrTsc: nsToTsc(50_000, f) });
    const unblock = unblockedFrom(p.blocked);
    const late = latenessOf(
      p.ticks.map((k) => ({ earliest: k.lo, expiryLatest: k.hi, count: k.count, latest: null })),
      observed.map((o) => o.tsc),
      unblock,
      t.endTsc,
      f.tscHz,
      stealExcuses(view),
    );
    const labels = { timer: 'rtc', slew: slew ? 'slew' : 'discard', accel: env.options.accel, irqchip: env.options.kernelIrqchip ?? 'on' };
    // The case's index within the property's run (timerProperty counts a case once it is judged).
    const samples = rtcWindowSamples(p, observed, { tscHz: f.tscHz, t0: t.events[0]?.tscBefore ?? p.windows[0]?.from ?? 0n, caseIndex: env.metrics.counts.timerCases ?? 0, labels });
    return {
      differences,
      observed,
      lateness: late.map((l) => ({ us: l.us, labels: { ...labels, hz: rtcRateHz(p.segments[p.ticks[l.index]!.segment]?.rs ?? 0) } })),
      counts: { rtcInterrupts: observed.length, rtcTicksPredicted: p.ticks.length },
      samples,
    };
  };
}

const RTC_RULES = [
  ['never early', ['never-early']],
  ['exact count', ['exact-count']],
  ['none after disarm', ['spurious-after-disarm']],
  ['count per window', ['window-count']],
] as const;

export const rtcPeriodic = timerProperty({
  id: 'timers.rtc.periodic',
  statement:
    'The RTC periodic interrupt under generated register A rate changes (1–15, 64 ↔ 1024 Hz flips, same-rate writes), PIE toggles and early or late register C reads is never early, loses or adds no tick the model does not allow, and counts per window what the rates in force predict',
  source: 'rtc',
  threads: 1,
  maxCommands: 20,
  maxWaitUs: 40_000,
  commands: rtcCommands,
  judge: rtcJudge(DATASHEET_RTC, false),
  rules: RTC_RULES,
  latenessRule: true,
});

export const rtcSlew = timerProperty({
  id: 'timers.rtc.slew',
  statement:
    'With -rtc driftfix=slew (lost ticks re-injected), the guest clock counted in RTC periodic interrupts never runs ahead of elapsed time and catches up with it, under generated rate changes and late acknowledgements',
  source: 'rtc',
  threads: 1,
  maxCommands: 20,
  maxWaitUs: 40_000,
  familyArgs: ['-rtc', 'driftfix=slew'],
  commands: (lim) => rtcCommands(lim, true),
  judge: rtcJudge({ ...DATASHEET_RTC, lostTickPolicy: 'slew' }, true),
  rules: [
    ['never early', ['never-early']],
    ['never ahead', ['slew-never-ahead']],
    ['catches up', ['slew-converges']],
    ['none after disarm', ['spurious-after-disarm']],
  ],
  latenessRule: false,
});
