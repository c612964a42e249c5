/**
 * PIT channel 0 properties: modes 0, 2 and 3 with reloads, in KVM's in-kernel PIT (re-injecting
 * missed ticks) and QEMU's own (kernel-irqchip=split, and TCG). The model is models/timers/pit.ts.
 */
import { pitCommands, PIT_VECTOR } from '../../generators/timers.js';
import { unblockedFrom } from '../../models/timers/common.js';
import { judgePit, KVM_PIT, predictPit, type PitEvent, type PitSwitches } from '../../models/timers/pit.js';
import type { PropertyEnv } from '../lib/property.js';
import { isrEntryTsc, nsToTsc, type TimerFacts } from './clock.js';
import { interruptsFor, type SourceTimeline, type ThreadView } from './observe.js';
import { attributeRootCauses, latenessOf, stealExcuses, timerProperty, type Judgement } from './timerProperty.js';

/**
 * QEMU's own 8254 (hw/timer/i8254.c): a reload restarts the count at once (pit_load_count resets
 * count_load_time), no period floor, and a tick while the previous is pending is lost (an edge on
 * the IOAPIC pin; no re-injection).
 */
export const QEMU_PIT: PitSwitches = Object.freeze({ periodicReload: 'restart', periodicClamp: 'none', reinject: false });

/**
 * Root causes a PIT count difference can be attributed to (timerProperty.ts attributeRootCauses),
 * each for the PIT whose behaviour it describes: 'every-update' is QEMU's own 8254 and IOAPIC, so
 * it names nothing about KVM's in-kernel PIT (a model 1% off in rate was once "explained" by it
 * there, and waived).
 */
const PIT_ROOT_CAUSES: readonly { readonly label: string; readonly variant: Partial<PitSwitches>; readonly impl: TimerFacts['pitImpl'] }[] = [
  { label: 'the PIT interrupted at an OUT update the 8254 makes no edge for', variant: { edgeInput: 'every-update' }, impl: 'qemu' },
];

function toPitEvents(t: SourceTimeline): PitEvent[] {
  return t.events.map((e): PitEvent => {
    const stamp = { tscBefore: e.tscBefore, tscAfter: e.tscAfter };
    switch (e.kind) {
      case 'program':
        return { ...stamp, kind: 'program', mode: e.mode ?? 2, count: Number(e.value) };
      case 'reload':
        return { ...stamp, kind: 'reload', count: Number(e.value) };
      case 'readCount':
        return { ...stamp, kind: 'readCount', ...(e.read === undefined || e.faulted ? {} : { read: Number(e.read) }) };
      case 'sti':
      case 'cli':
      case 'mark':
        return { ...stamp, kind: e.kind };
      default:
        throw new Error(`a PIT timeline has no event kind '${e.kind}'`);
    }
  });
}

export function pitSwitches(f: TimerFacts, env: PropertyEnv): PitSwitches {
  const base = f.pitImpl === 'kvm' ? KVM_PIT : QEMU_PIT;
  const variant = env.mutant?.modelVariant?.pit as Partial<PitSwitches> | undefined;
  return variant ? { ...base, ...variant } : base;
}

function judgePitTimeline(t: SourceTimeline, view: ThreadView, f: TimerFacts, env: PropertyEnv): Judgement {
  const events = toPitEvents(t);
  const predict = (variant: Partial<PitSwitches>) =>
    predictPit(
      { tscHz: BigInt(Math.round(f.tscHz)), minPeriodNs: f.pitImpl === 'kvm' ? f.minPeriodNs : 0 },
      { events, endTsc: t.endTsc, vector: PIT_VECTOR, interruptsEnabled: false },
      { ...pitSwitches(f, env), ...variant },
      { raceTsc: nsToTsc(f.latenessBoundNs, f) },
    );
  const p = predict({});
  const observed = interruptsFor(view, new Set([PIT_VECTOR]), t.endTsc);
  const reads = events.flatMap((e, eventIndex) => (e.kind === 'readCount' && e.read !== undefined ? [{ eventIndex, value: e.read }] : []));
  const judgeOpts = { latenessTsc: nsToTsc(f.lostAfterNs, f), isrEntryTsc: isrEntryTsc(f), reads };
  const differences = attributeRootCauses(judgePit(p, observed, judgeOpts), PIT_ROOT_CAUSES.filter((c) => c.impl === f.pitImpl), (v) => judgePit(predict(v), observed, judgeOpts));
  const late = latenessOf(p.interrupts, observed.map((o) => o.tsc), unblockedFrom(p.blocked), t.endTsc, f.tscHz, stealExcuses(view));
  const modeOf = (i: number) => events.slice(0, i + 1).reverse().find((e) => e.kind === 'program') as { mode: number } | undefined;
  const labels = { timer: 'pit', impl: f.pitImpl, accel: env.options.accel, irqchip: env.options.kernelIrqchip ?? 'on' };
  return {
    differences,
    observed,
    lateness: late.map((l) => ({ us: l.us, labels: { ...labels, mode: modeOf(p.interrupts[l.index]!.eventIndex)?.mode ?? -1 } })),
    counts: { pitInterrupts: observed.length, pitCountReads: reads.length },
    samples: p.windows.map((w) => ({ series: 'pit.windowCount', value: observed.filter((o) => o.tsc >= w.from && o.tsc < w.to).length, labels: { ...labels, min: w.expiries.min, max: w.expiries.max } })),
  };
}

export const pitChannel0 = timerProperty({
  id: 'timers.pit.channel0',
  statement:
    'PIT channel 0 in modes 0, 2 and 3 with generated reloads is never early, delivers exactly the ticks the model predicts (each missed tick re-injected by KVM’s in-kernel PIT; merged while pending in QEMU’s), counts per window what the counts in force predict, and a latched count reads where the time since the load puts it',
  source: 'pit',
  threads: 1,
  maxCommands: 16,
  maxWaitUs: 40_000,
  commands: pitCommands,
  judge: judgePitTimeline,
  rules: [
    ['never early', ['never-early']],
    ['exact count', ['exact-count']],
    ['none after disarm', ['spurious-after-disarm']],
    ['count per window', ['window-count']],
    ['count reads', ['pit-count-read']],
  ],
  latenessRule: true,
});
