/**
 * The timer family's mutants: a disturbed system each timer property must fail on, or a model
 * with one rule flipped, which a correct host must then disagree with. suites/timers/
 * sensitivity.test.ts runs them; `kvmprop run --family timers --mutant NAME` runs any by hand.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Vm } from '../../harness/vm.js';
import type { Mutant } from '../lib/family.js';

/** Pause every workload VM through QMP for STOP_MS out of every STOP_MS + RUN_MS: an injected delay. */
const STOP_MS = 20;
const RUN_MS = 1;

async function stopAndGo(vm: Vm, done: AbortSignal): Promise<void> {
  while (!done.aborted && !vm.hasExited) {
    await sleep(RUN_MS, undefined, { signal: done }).catch(() => undefined);
    if (done.aborted || vm.hasExited) return;
    await vm.qmp.execute('stop');
    await sleep(STOP_MS);
    await vm.qmp.execute('cont');
  }
}

export const TIMER_MUTANTS: readonly Mutant[] = [
  {
    name: 'vcpu-stop-cont',
    description: `QMP stop for ${STOP_MS} ms after every ${RUN_MS} ms of a workload VM: the guest's TSC runs on, timers expire while it cannot take interrupts, and every interrupt due in a pause comes up to ${STOP_MS} ms late.`,
    breaks: ['timers.lapic.schedule', 'timers.rtc.periodic'],
    roles: ['workload'],
    async qemuArgs() {
      return [];
    },
    during: stopAndGo,
  },
  {
    name: 'lapic-model-tdcr-next-reload',
    description:
      "The LAPIC model with one rule flipped: a TDCR write mid-count applies only at the next reload (KVM before c301b909e4b9), not at once. KVM applies it at once, so interrupt times and TMCCT reads after a TDCR change disagree with this model.",
    breaks: ['timers.lapic.schedule'],
    roles: [],
    modelVariant: { lapic: { tdcrMidCount: 'next-reload' } },
    async qemuArgs() {
      return [];
    },
  },
];
