/**
 * Time across a migration. Two claims, each about state that lives in guest RAM and so moves
 * with the guest:
 *  - a clock watch (ir/ops.ts clockWatch) never sees its clock go back: the destination's first
 *    reading is compared with the source's last one. TSC: KVM and QEMU carry the guest TSC over
 *    (SDM Vol. 3B §17.17: the TSC increases monotonically); kvmclock: the pvclock ABI promises a
 *    monotonic clock with PVCLOCK_TSC_STABLE_BIT (Linux Documentation/virt/kvm/x86/msr.rst), and
 *    QEMU's kvmclock device migrates its value for exactly this (hw/i386/kvm/clock.c); steal time:
 *    KVM only adds to `steal` (record_steal_time(): the vCPU task's run_delay since the last
 *    update), and QEMU migrates MSR_KVM_STEAL_TIME, whose write on the destination restarts the
 *    accounting from there, so the guest's own page carries the total over.
 *  - a TSC deadline armed before the switchover interrupts exactly once, not before the deadline
 *    (SDM Vol. 3A §10.5.4.1: one interrupt when the TSC reaches the deadline, then the MSR reads
 *    0 and the timer is disarmed), and not later than `graceTsc` after it while the guest runs.
 *    While the guest keeps interrupts off (RFLAGS.IF = 0), an expired deadline stays pending in
 *    the IRR (SDM Vol. 3A §10.8.4) and is delivered once after STI, perhaps across a switchover.
 *  - a device interrupt armed before the switchover (PIT channel 0 in mode 0: OUT rises once, at
 *    terminal count, Intel 8254 data sheet; IRQ0 edge-triggered through the IOAPIC, 82093AA data
 *    sheet) is delivered exactly once, not before its count ran out, not while interrupts are
 *    off, and not lost: wherever the switchover finds it (counting in the PIT, latched in the
 *    IOAPIC, pending in the LAPIC's IRR), the destination must carry it on.
 */
export interface WatchReading {
  readonly thread: number;
  readonly kind: 'tsc' | 'kvmclock' | 'steal';
  readonly last: bigint;
  readonly backwards: bigint;
  readonly worstBack: bigint;
  readonly samples: bigint;
}

export interface TimeDifference {
  readonly rule: 'clock-monotonic' | 'deadline-once' | 'deadline-not-early' | 'deadline-delivered' | 'device-once' | 'device-not-early' | 'device-delivered';
  readonly summary: string;
  readonly expected: unknown;
  readonly observed: unknown;
}

const WATCHED = { tsc: 'TSC', kvmclock: 'kvmclock', steal: 'steal time' } as const;

export function judgeWatches(readings: readonly WatchReading[]): TimeDifference[] {
  return readings
    .filter((r) => r.backwards !== 0n)
    .map((r) => ({
      rule: 'clock-monotonic' as const,
      summary: `vCPU ${r.thread}'s ${WATCHED[r.kind]} went back ${r.backwards} time(s) in ${r.samples} readings, at worst by ${r.worstBack} ${r.kind === 'tsc' ? 'cycles' : 'ns'}`,
      expected: { backwards: 0 },
      observed: { backwards: r.backwards.toString(), worstBack: r.worstBack.toString(), samples: r.samples.toString() },
    }));
}

export interface DeadlineObservation {
  /** The IA32_TSC_DEADLINE value written. */
  readonly deadline: bigint;
  /** The latest TSC vCPU 0 is known to have run at (its TSC watch's last reading). */
  readonly nowTsc: bigint;
  /** TSC at ISR entry of every interrupt with the deadline's vector. */
  readonly interrupts: readonly bigint[];
  /** How late an interrupt may come while the guest runs with interrupts on. */
  readonly graceTsc: bigint;
  /** When vCPU 0 turned interrupts on, if it kept them off after arming (TSC just before STI). */
  readonly unmaskedAt?: bigint;
}

export function judgeDeadline(o: DeadlineObservation): TimeDifference[] {
  const out: TimeDifference[] = [];
  const hex = (v: bigint) => `0x${v.toString(16)}`;
  if (o.interrupts.length > 1) {
    out.push({ rule: 'deadline-once', summary: `a TSC deadline of ${hex(o.deadline)} interrupted ${o.interrupts.length} times`, expected: 1, observed: o.interrupts.map(hex) });
  }
  const early = o.interrupts.filter((t) => t < o.deadline);
  if (early.length) {
    out.push({ rule: 'deadline-not-early', summary: `the timer interrupted at TSC ${hex(early[0]!)}, ${o.deadline - early[0]!} cycles before its deadline ${hex(o.deadline)}`, expected: `at or after ${hex(o.deadline)}`, observed: early.map(hex) });
  }
  // With interrupts off until unmaskedAt, an expired deadline waits in the IRR: not before STI.
  const masked = o.unmaskedAt === undefined ? [] : o.interrupts.filter((t) => t >= o.deadline && t < o.unmaskedAt!);
  if (masked.length) {
    out.push({ rule: 'deadline-not-early', summary: `the timer interrupted at TSC ${hex(masked[0]!)}, while interrupts were off (until ${hex(o.unmaskedAt!)})`, expected: `at or after ${hex(o.unmaskedAt!)}`, observed: masked.map(hex) });
  }
  const due = o.unmaskedAt !== undefined && o.unmaskedAt > o.deadline ? o.unmaskedAt : o.deadline;
  if (o.interrupts.length === 0 && o.nowTsc >= due + o.graceTsc) {
    out.push({
      rule: 'deadline-delivered',
      summary: `a TSC deadline of ${hex(o.deadline)} never interrupted, though vCPU 0 ran with interrupts on${due > o.deadline ? ` (from ${hex(due)})` : ''} until TSC ${hex(o.nowTsc)} (${o.nowTsc - due} cycles after it was due)`,
      expected: 1,
      observed: 0,
    });
  }
  return out;
}

export interface OneShotObservation {
  /** What armed it, in words. */
  readonly source: string;
  /** No delivery before this TSC. */
  readonly earliest: bigint;
  /** It has happened by this TSC; delivery is due within graceTsc after (or after unmaskedAt). */
  readonly expiryLatest: bigint;
  readonly nowTsc: bigint;
  /** TSC at ISR entry of every interrupt with its vector. */
  readonly interrupts: readonly bigint[];
  readonly graceTsc: bigint;
  readonly unmaskedAt?: bigint;
}

/** A one-shot device interrupt armed before the migration: once, not early, not while IF=0, not lost. */
export function judgeOneShot(o: OneShotObservation): TimeDifference[] {
  const out: TimeDifference[] = [];
  const hex = (v: bigint) => `0x${v.toString(16)}`;
  if (o.interrupts.length > 1) {
    out.push({ rule: 'device-once', summary: `${o.source} interrupted ${o.interrupts.length} times; it fires once`, expected: 1, observed: o.interrupts.map(hex) });
  }
  const early = o.interrupts.filter((t) => t < o.earliest);
  if (early.length) {
    out.push({ rule: 'device-not-early', summary: `${o.source} interrupted at TSC ${hex(early[0]!)}, ${o.earliest - early[0]!} cycles before its count could have run out (${hex(o.earliest)})`, expected: `at or after ${hex(o.earliest)}`, observed: early.map(hex) });
  }
  const masked = o.unmaskedAt === undefined ? [] : o.interrupts.filter((t) => t >= o.earliest && t < o.unmaskedAt!);
  if (masked.length) {
    out.push({ rule: 'device-not-early', summary: `${o.source} interrupted at TSC ${hex(masked[0]!)}, while interrupts were off (until ${hex(o.unmaskedAt!)})`, expected: `at or after ${hex(o.unmaskedAt!)}`, observed: masked.map(hex) });
  }
  const due = (o.unmaskedAt !== undefined && o.unmaskedAt > o.expiryLatest ? o.unmaskedAt : o.expiryLatest) + o.graceTsc;
  if (o.interrupts.length === 0 && o.nowTsc >= due) {
    out.push({ rule: 'device-delivered', summary: `${o.source} never interrupted, though it was due by TSC ${hex(due)} and vCPU 0 ran until ${hex(o.nowTsc)}`, expected: 1, observed: 0 });
  }
  return out;
}
