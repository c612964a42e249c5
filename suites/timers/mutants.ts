/**
 * The timer family's mutants: a disturbed system each timer property must fail on, or a model
 * with one rule flipped, which a correct host must then disagree with. suites/timers/
 * sensitivity.test.ts runs them; `kvmprop run --family timers --mutant NAME` runs any by hand.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Vm } from '../../harness/vm.js';
import type { Mutant } from '../lib/family.js';

/**
 * Pause a workload VM through QMP for STOP_MS, let it run for RUN_MS, and again, for as long as it
 * runs: an injected delay. Where a stop lands in the guest's program is up to the host's timing, so
 * a very short case is not hit every time.
 *
 * 50 ms, not the 20 it was: the case's bounds now allow the host's measured waits (a host CPU's
 * longest steal, in 10 ms steps; the main loop's longest wait), which on a loaded host reached
 * 20 ms. And the VM runs 20 ms between pauses, not only for a QMP round trip: with 50 ms pauses
 * and no run between them a case took seconds, and the sensitivity test four minutes.
 */
const STOP_MS = 50;
const RUN_MS = 20;

async function stopAndGo(vm: Vm, done: AbortSignal): Promise<void> {
  while (!done.aborted && !vm.hasExited) {
    await vm.qmp.execute('stop');
    await sleep(STOP_MS);
    await vm.qmp.execute('cont');
    await sleep(RUN_MS);
  }
}

export const TIMER_MUTANTS: readonly Mutant[] = [
  {
    name: 'vcpu-stop-cont',
    description: `QMP stop for ${STOP_MS} ms, cont for ${RUN_MS} ms, and again, for as long as a workload VM runs: the guest's TSC runs on, timers expire while it cannot take interrupts, and every interrupt due in a pause comes up to ${STOP_MS} ms late.`,
    breaks: ['timers.lapic.schedule', 'timers.rtc.periodic'],
    roles: ['workload'],
    during: stopAndGo,
  },
  {
    name: 'lapic-model-slow-bus',
    description:
      'The LAPIC model with its clock wrong: it takes the APIC timer input as half the 1 GHz the guest is told (CPUID 0x4000_0010 EBX), so it predicts every count to take twice as long as it does; a correct host then delivers one-shot and periodic interrupts a whole count before the model allows. (A 10% error was tried first: its margin, 5-300 µs, is inside the host lateness noise, so a shrunk case failed again on only some replays.)',
    breaks: ['timers.lapic.schedule'],
    roles: [],
    modelVariant: { lapicClock: { apicBusScale: 0.5 } },
  },
  {
    name: 'lapic-model-tdcr-next-reload',
    description:
      "The LAPIC model with one rule flipped: a TDCR write mid-count applies only at the next reload (KVM before c301b909e4b9), not at once. KVM applies it at once, so interrupt times and TMCCT reads after a TDCR change disagree with this model.",
    breaks: ['timers.lapic.schedule'],
    roles: [],
    modelVariant: { lapic: { tdcrMidCount: 'next-reload' } },
  },
  // A clock 1% off, told both ways by a counter the guest reads, which no delivery delay moves:
  // LAPIC (TMCCT reads), PIT (latched count reads), RTC (the seconds register against TSC time,
  // timers.rtc.clock). The RTC's periodic interrupts tell only the model-slow way (a host whose RTC
  // runs 1% fast: an interrupt before its tick, never-early): a host that gets busier through a
  // stretch delays interrupts the way a slow clock would (a drift rule on delivery delays saw 1.05%
  // and 1.53% on a correct host under load).
  ...([
    ['lapic', 'fast'],
    ['lapic', 'slow'],
    ['rtc', 'fast'],
    ['rtc', 'slow'],
    ['pit', 'fast'],
    ['pit', 'slow'],
  ] as const).map(([source, dir]): Mutant => ({
    name: `${source}-model-rate-${dir}`,
    description: `The ${source.toUpperCase()} model with the source's clock 1% ${dir === 'fast' ? 'faster' : 'slower'} than it is: it predicts every ${source} duration 1% too ${dir === 'fast' ? 'short' : 'long'}, as a correct model would judge a host whose ${source} runs 1% ${dir === 'fast' ? 'slow' : 'fast'}.`,
    breaks: source === 'rtc' ? (dir === 'fast' ? ['timers.rtc.clock'] : ['timers.rtc.periodic', 'timers.rtc.clock']) : [{ lapic: 'timers.lapic.schedule', pit: 'timers.pit.channel0' }[source]],
    roles: [],
    modelVariant: { sourceRate: { rate: dir === 'fast' ? 1.01 : 0.99, sources: [source] } },
  })),
];
