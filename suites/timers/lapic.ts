/**
 * LAPIC timer properties: one-shot, periodic and TSC-deadline schedules with mode switches on a
 * running timer, TDCR changes mid-count, stops, masks, deadlines in the past / now / 0, and the
 * xAPIC → x2APIC switch, on two vCPUs at once. The model is models/timers/lapic.ts with the switch
 * set of the LAPIC in use: KVM's (KVM_LAPIC) or QEMU's own under TCG (QEMU_USERSPACE_LAPIC); a
 * model-variant mutant flips one switch.
 */
import { lapicCommands, LAPIC_VECTOR } from '../../generators/timers.js';
import { unblockedFrom } from '../../models/timers/common.js';
import { decodeLvtt, divideOf, judgeLapic, KVM_LAPIC, predictLapic, QEMU_USERSPACE_LAPIC, type LapicEvent, type LapicSwitches } from '../../models/timers/lapic.js';
import type { PropertyEnv } from '../lib/property.js';
import { isrEntryTsc, nsToTsc, type TimerFacts } from './clock.js';
import { interruptsFor, type SourceTimeline, type ThreadView } from './observe.js';
import { attributeRootCauses, latenessOf, stealExcuses, timerProperty, type Judgement } from './timerProperty.js';

export function lapicSwitches(f: TimerFacts, env: PropertyEnv): LapicSwitches {
  const base = f.lapicImpl === 'kvm' ? KVM_LAPIC : QEMU_USERSPACE_LAPIC;
  const variant = env.mutant?.modelVariant?.lapic as Partial<LapicSwitches> | undefined;
  return variant ? { ...base, ...variant } : base;
}

function toLapicEvents(t: SourceTimeline): LapicEvent[] {
  return t.events.map((e): LapicEvent => {
    const stamp = { tscBefore: e.tscBefore, tscAfter: e.tscAfter };
    const faulted = e.faulted ? { faulted: true } : {};
    switch (e.kind) {
      case 'lvtt':
      case 'tdcr':
      case 'tmict':
        return { ...stamp, kind: e.kind, value: Number(e.value), ...faulted };
      case 'tscDeadline':
        return { ...stamp, kind: 'tscDeadline', value: BigInt(e.value ?? 0), ...faulted };
      case 'readTmcct':
      case 'readTscDeadline':
        return { ...stamp, kind: e.kind };
      case 'sti':
      case 'cli':
      case 'mark':
        return { ...stamp, kind: e.kind };
      default:
        throw new Error(`a LAPIC timeline has no event kind '${e.kind}'`);
    }
  });
}

export function judgeLapicTimeline(t: SourceTimeline, view: ThreadView, f: TimerFacts, env: PropertyEnv): Judgement {
  const events = toLapicEvents(t);
  const lostAfter = nsToTsc(f.lostAfterNs, f);
  // A model-variant mutant may mis-scale the timer's input clock (mutants.ts lapic-model-slow-bus).
  const busScale = Number((env.mutant?.modelVariant?.lapicClock as { apicBusScale?: number } | undefined)?.apicBusScale ?? 1);
  const busHz = BigInt(Math.round(f.apicBusHz * busScale));
  const clock = { tscHz: BigInt(Math.round(f.tscHz)), apicBusHz: busHz, minPeriodNs: f.minPeriodNs, tscDeadline: f.tscDeadline };
  const timeline = { events, endTsc: t.endTsc, interruptsEnabled: false };
  // The vectors first (a prediction that needs no observation), then the deliveries of those
  // vectors, which KVM's late-callback rule (periodicLateCallback) reads.
  const vectors = predictLapic(clock, timeline, { ...lapicSwitches(f, env), periodicLateCallback: 'keeps-phase' }).vectors;
  const observed = interruptsFor(view, new Set(vectors.length ? vectors : [LAPIC_VECTOR]), t.endTsc);
  const predict = (variant: Partial<LapicSwitches>) =>
    predictLapic(clock, timeline, { ...lapicSwitches(f, env), ...variant }, { raceTsc: nsToTsc(f.latenessBoundNs, f), deliveries: observed.map((o) => o.tsc) });
  const prediction = predict({});
  const reads = t.events.flatMap((e, eventIndex) => (e.read === undefined || e.faulted ? [] : [{ eventIndex, value: e.read }]));
  const judgeOpts = { latenessTsc: lostAfter, isrEntryTsc: isrEntryTsc(f) };
  const differences = attributeRootCauses(judgeLapic(prediction, observed, reads, judgeOpts), f.lapicImpl === 'qemu' ? QEMU_LAPIC_ROOT_CAUSES : LAPIC_ROOT_CAUSES, (v) => judgeLapic(predict(v), observed, reads, judgeOpts));
  // Lateness labels: the mode and divide in force when the interrupt was armed.
  let lvtt = 0x10000;
  let tdcr = 0;
  const armedWith = t.events.map((e) => {
    if (e.kind === 'lvtt' && !e.faulted) lvtt = Number(e.value);
    if (e.kind === 'tdcr' && !e.faulted) tdcr = Number(e.value);
    return { mode: decodeLvtt(lvtt, f.tscDeadline).mode, divide: divideOf(tdcr) };
  });
  const unblock = unblockedFrom(prediction.blocked);
  const late = latenessOf(prediction.interrupts, observed.map((o) => o.tsc), unblock, t.endTsc, f.tscHz, stealExcuses(view));
  const switched = [...view.records.values()].some((r) => r.op.op === 'wrmsr' && r.op.msr === 0x1b && r.faultVector === null);
  const apic = switched ? 'xapic→x2apic' : 'xapic';
  const lateness = late.map((l) => {
    const e = prediction.interrupts[l.index]!;
    return { us: l.us, labels: { timer: 'lapic', ...armedWith[e.eventIndex]!, apic, accel: env.options.accel, irqchip: env.options.kernelIrqchip ?? 'on' } };
  });
  return {
    differences,
    observed,
    lateness,
    counts: { lapicInterrupts: observed.length, lapicReads: reads.length, lapicEvents: events.length },
  };
}

/** Root causes a LAPIC count difference can be attributed to (timerProperty.ts attributeRootCauses). */
const LAPIC_ROOT_CAUSES: readonly { readonly label: string; readonly variant: Partial<LapicSwitches> }[] = [
  { label: 'a TDCR write re-fired an expired one-shot timer', variant: { tdcrAfterOneShotExpiry: 'refires' } },
];

/** Root causes of QEMU's own APIC (kernel-irqchip=off, TCG), tried only where it counts the timer. */
const QEMU_LAPIC_ROOT_CAUSES: readonly { readonly label: string; readonly variant: Partial<LapicSwitches>; readonly rules?: ReadonlySet<string> }[] = [
  // Tried on a missed immediate deadline too (seed 2: a deadline already past never fires there).
  {
    label: "QEMU's APIC ignored the TSC-deadline mode CPUID advertises (LVTT bit 18)",
    variant: { tscDeadlineMode: 'ignored' },
    rules: new Set(['exact-count', 'spurious-after-disarm', 'never-early', 'immediate', 'tsc-deadline-msr']),
  },
  // Tried on TMCCT differences too: a recount shows in reads before (or without) any interrupt.
  {
    label: "QEMU's APIC recounted the timer from the TMICT load at the new divide after a TDCR write",
    variant: { tdcrMidCount: 'from-load' },
    rules: new Set(['exact-count', 'spurious-after-disarm', 'never-early', 'tmcct-range', 'tmcct-continuous-across-tdcr']),
  },
  {
    label: "QEMU's APIC counted at ÷1 before the first TDCR write (apic_init_reset() count_shift 0; TDCR 0 is ÷2)",
    variant: { resetDivide: 'one' },
    rules: new Set(['exact-count', 'spurious-after-disarm', 'never-early', 'tmcct-range', 'tmcct-continuous-across-tdcr']),
  },
  // Both at once, where neither alone explains a case (seed 3: a recounted one-shot, then LVTT →
  // TSC-deadline, and TMCCT still reads the recount).
  {
    label: "QEMU's APIC recounted the timer from the TMICT load at the new divide after a TDCR write, and ignored the TSC-deadline mode CPUID advertises (LVTT bit 18)",
    variant: { tdcrMidCount: 'from-load', tscDeadlineMode: 'ignored' },
    rules: new Set(['exact-count', 'spurious-after-disarm', 'never-early', 'immediate', 'tsc-deadline-msr', 'tmcct-range', 'tmcct-continuous-across-tdcr']),
  },
];

export const lapicSchedule = timerProperty({
  id: 'timers.lapic.schedule',
  statement:
    'The LAPIC timer (one-shot, periodic, TSC-deadline; xAPIC and x2APIC) under generated schedules is never early, delivers exactly the interrupts the model predicts (none after a stop, a disarming mode change, a deadline of 0 or while masked), delivers immediate ones at once, and its TMCCT and IA32_TSC_DEADLINE read what the model allows',
  source: 'lapic',
  threads: 2,
  maxCommands: 24,
  maxWaitUs: 30_000,
  commands: lapicCommands,
  judge: judgeLapicTimeline,
  rules: [
    ['never early', ['never-early']],
    ['exact count', ['exact-count']],
    ['none after disarm', ['spurious-after-disarm']],
    ['immediate means immediate', ['immediate']],
    ['TMCCT in range and continuous', ['tmcct-range', 'tmcct-continuous-across-tdcr']],
    ['IA32_TSC_DEADLINE reads', ['tsc-deadline-msr']],
  ],
  latenessRule: true,
});
