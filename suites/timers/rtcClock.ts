/**
 * The RTC's time of day against TSC time: the guest waits for the seconds register to change, again
 * and again (rtcSecondsEdge brackets each change with TSC stamps), with register B's data mode and
 * register A's rate changed in between. The model is models/timers/rtcClock.ts. The guest reads a
 * counter here, not an interrupt, so no delivery delay can make a correct RTC look slow: this is
 * the rule that tells an RTC 1% slow from a correct one (the periodic-interrupt rules tell one 1%
 * fast).
 */
import { rtcClockCommands } from '../../generators/timers.js';
import { judgeRtcClock, rtcSecondErrorPpm, RTC_CLOCK_TOLERANCE_PPM, type RtcSecondsEdge } from '../../models/timers/rtcClock.js';
import type { PropertyEnv } from '../lib/property.js';
import type { TimerFacts } from './clock.js';
import type { SourceTimeline, ThreadView } from './observe.js';
import { timerProperty, type Judgement } from './timerProperty.js';

/** The change each rtcSecondsEdge saw, from its record. */
export function secondsEdges(t: SourceTimeline, view: ThreadView): RtcSecondsEdge[] {
  return t.events.flatMap((e, eventIndex): RtcSecondsEdge[] => {
    if (e.kind !== 'secondsEdge') return [];
    const f = view.records.get(e.opIndex)?.fields as Record<string, bigint> | undefined;
    if (!f) return [];
    return [{ tscBefore: f.tscBefore!, tscAfter: f.tscAfter!, seconds: Number(f.seconds), minutes: Number(f.minutes), hours: Number(f.hours), regB: Number(f.regB), timedOut: f.timedOut !== 0n, eventIndex }];
  });
}

function judgeClock(t: SourceTimeline, view: ThreadView, f: TimerFacts, env: PropertyEnv): Judgement {
  const edges = secondsEdges(t, view);
  const variant = env.mutant?.modelVariant?.rtcClock as { dataModeChange?: 'no-prediction' | 'reencodes' } | undefined;
  const differences = judgeRtcClock(edges, { tscHz: f.tscHz, tolerancePpm: RTC_CLOCK_TOLERANCE_PPM, ...(variant ?? {}) });
  const labels = { timer: 'rtc-clock', accel: env.options.accel, irqchip: env.options.kernelIrqchip ?? 'on' };
  return {
    differences,
    observed: [],
    lateness: [],
    counts: { rtcSecondChanges: edges.length },
    samples: rtcSecondErrorPpm(edges, f.tscHz).map((x) => ({ series: 'rtc.secondErrorPpm', value: Math.round(x.ppm * 10) / 10, labels: { ...labels, stampUs: Math.round(x.widthUs) } })),
  };
}

export const rtcClock = timerProperty({
  id: 'timers.rtc.clock',
  statement:
    "The RTC's time of day advances one second per second of TSC time (within 1000 ppm), in BCD and binary, 12- and 24-hour modes, whatever register A's rate",
  source: 'rtc',
  subject: 'RTC time of day',
  threads: 1,
  maxCommands: 6,
  // Three waits for a change: up to three seconds a case.
  maxWaitUs: 3_000_000,
  commands: rtcClockCommands,
  judge: judgeClock,
  // Under TCG the facts calibrate the guest's TSC rate against these very seconds (clock.ts).
  skip: (env) => (env.options.accel === 'tcg' ? "under TCG the guest's TSC rate is calibrated against the RTC's seconds, so the RTC cannot be judged against it" : null),
  rules: [
    ['time of day advances', ['rtc-clock-advance']],
    ['one second per second', ['rtc-clock-rate']],
  ],
  latenessRule: false,
});
