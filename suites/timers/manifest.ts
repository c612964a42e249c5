/**
 * Family: timer accuracy — LAPIC (one-shot, periodic, TSC-deadline; xAPIC and x2APIC), RTC, PIT
 * and kvmclock under generated schedules, judged by models/timers/. The properties are in
 * lapic.ts, rtc.ts, pit.ts and kvmclock.ts; the mutants in mutants.ts.
 */
import { defineFamily } from '../lib/family.js';
import { kvmclockReads } from './kvmclock.js';
import { lapicSchedule } from './lapic.js';
import { pitChannel0 } from './pit.js';
import { rtcPeriodic, rtcSlew } from './rtc.js';
import { rtcClock } from './rtcClock.js';
import { TIMER_MUTANTS } from './mutants.js';

export const timers = defineFamily({
  name: 'timers',
  title: 'Timer accuracy: LAPIC, TSC-deadline, RTC, PIT and kvmclock under generated schedules',
  properties: [lapicSchedule, rtcPeriodic, rtcSlew, rtcClock, pitChannel0, kvmclockReads],
  roles: {
    facts: 'the VM the guest-visible clock rates (CPUID 0x1, 0x4000_0000-0x4000_0010, 0x15, 0x16) are read in',
    workload: "a case's VM: one schedule on one or two vCPUs",
  },
  requires: [{ name: 'kvm', why: 'the timers under test are KVM’s (or QEMU’s under --accel tcg)' }],
  metrics: [
    { key: 'timerCases', label: 'timer cases' },
    { key: 'lapicInterrupts', label: 'LAPIC timer interrupts' },
    { key: 'rtcInterrupts', label: 'RTC interrupts' },
    { key: 'pitInterrupts', label: 'PIT interrupts' },
    { key: 'pitCountReads', label: 'PIT count reads' },
    { key: 'rtcSecondChanges', label: 'RTC second changes' },
    { key: 'kvmclockReads', label: 'kvmclock reads' },
    { key: 'vms', label: 'VMs' },
  ],
  mutants: TIMER_MUTANTS,
  coverage: [
    {
      // Measured here (kvm_pvm, kernel-irqchip on): 5 LAPIC, 99 RTC and 18 slewed RTC interrupts
      // logged by the guest over 3 cases each; irq_injections 5, 100 and 19. A property whose cases
      // took no interrupt at all (3 PIT cases can) tested none of its delivery rules: flagged.
      properties: [lapicSchedule, rtcPeriodic, rtcSlew, pitChannel0].map((p) => p.id),
      anyOf: ['vcpu.irq_injections'],
      atLeast: ['lapicInterrupts', 'rtcInterrupts', 'pitInterrupts'],
      why: 'every timer interrupt the guest logged was injected into its vCPU by KVM, whichever irqchip raised it',
    },
    // timers.rtc.clock claims nothing: it reads CMOS registers and takes no interrupt.
    // timers.kvmclock.reads claims nothing: kvmclock is read from guest memory, and the MSR writes that
    // enable it are exits every guest makes while it boots.
  ],
});
