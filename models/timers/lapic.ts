/**
 * Reference model of the local APIC timer (Intel SDM Vol. 3A §10.5.4 "APIC Timer", §11.5.4 in
 * newer editions; xAPIC and x2APIC alike: the access path differs, the timer does not): from one
 * vCPU's stamped timeline of timer register writes, reads, EOIs and interrupt-enable changes,
 * predict every timer interrupt (vector, earliest TSC, for "immediate" ones the latest TSC, whether
 * it must come or may have been cancelled by a racing action, and the event that armed it), what
 * each TMCCT and IA32_TSC_DEADLINE read may return, and the intervals in which no timer interrupt
 * may arrive. judgeLapic() compares a run's interrupt log and reads with that.
 *
 * Architectural rules (SDM Vol. 3A):
 *  - §10.5.4: "timer frequency = bus clock / divide configuration"; TDCR bits 3,1,0: 000→2, 001→4,
 *    010→8, 011→16, 100→32, 101→64, 110→128, 111→1 (Figure 10-10).
 *  - One-shot: "the initial count value is then copied into the current-count register and count-down
 *    begins. After the timer reaches zero, a timer interrupt is generated and the timer remains at
 *    its 0 value until reprogrammed."
 *  - Periodic: "the current-count register is automatically reloaded from the initial-count register
 *    when the count reaches 0 and a timer interrupt is generated, and the count-down is repeated."
 *  - "If during the count-down process the initial-count register is set, counting will restart,
 *    using the new initial-count value." "A write of 0 to the initial-count register effectively
 *    stops the local APIC timer, in both one-shot and periodic mode."
 *  - §10.5.4.1 TSC-deadline: "writes to the initial-count register are ignored; and current-count
 *    register always reads 0"; the timer fires "when the value of the time-stamp counter is greater
 *    than or equal to that of IA32_TSC_DEADLINE. It then disarms the timer and clears the
 *    IA32_TSC_DEADLINE MSR"; "writing 0 to the IA32_TSC_DEADLINE MSR disarms the local-APIC timer";
 *    "In other timer modes (LVT bit 18 = 0), the IA32_TSC_DEADLINE MSR reads zero and writes are
 *    ignored"; "Transitioning between TSC-deadline mode and other timer modes also disarms the timer."
 *  - §10.5.1 LVT mask: "0: Enables reception of the interrupt. 1: Inhibits reception of the interrupt."
 *  - §10.8.4: one pending interrupt per vector in the IRR (see common.ts).
 *
 * Where the SDM is silent or KVM chooses, the behaviour is a switch (LapicSwitches), each citing its
 * sources; KVM_LAPIC is the default, SDM_LAPIC the bare-metal reading, QEMU_USERSPACE_LAPIC what
 * `kernel-irqchip=off` runs (hw/intc/apic.c: no TSC-deadline, and its TDCR handling, which recomputes
 * TMCCT from the load time with the new divider, is not modelled: generate no mid-count TDCR writes
 * under that profile).
 *
 * Time bounds. An action happened somewhere in its [tscBefore, tscAfter]; a count of n at divide d
 * lasts n·d·tscHz/apicBusHz TSC cycles (widened by clock.skewPpm). An expiry whose interval
 * overlaps the window of an action that would cancel or change it (widened back by
 * options.raceTsc, the time KVM may hold an expired timer before injecting it: cancel_apic_timer()
 * clears lapic_timer.pending) is predicted 'at-most-once': either branch is right.
 *
 * Not modelled: SPIV software disable, APIC global disable, LVTT delivery mode bits, priority
 * blocking by other in-service vectors, KVM's periodic catch-up after a host stall
 * (advance_periodic_target_expiration() moves TMCCT's target to "now" while the hrtimer keeps the
 * phase: a TMCCT read after such a stall is judged against the phase).
 *
 * A prediction drawn from reading KVM's lapic.c, not yet seen on a host: a TDCR write that changes
 * the divisor after a one-shot expired makes update_target_expiration() set the target to "now"
 * (period is still non-zero), and start_sw_period() then fires the timer again. The model follows
 * the SDM (the timer "remains at its 0 value until reprogrammed"), so such an interrupt is judged
 * one too many (lapic.test.ts shows the case).
 */
import {
  deliveryOf,
  ceilDiv,
  durHi,
  durLo,
  enabledAfter,
  floorDiv,
  hex,
  immediateBound,
  judgeExpiries,
  maxB,
  minB,
  ppbOf,
  toBig,
  type ExpectedInterrupt,
  type GuestControlEvent,
  type ImmediateBy,
  type Interval,
  type ObservedInterrupt,
  type QuietInterval,
  type Ratio,
  type Stamp,
  type TimerDifference,
  type DeliveryPrediction,
} from './common.js';

// ---------------------------------------------------------------------------------------------
// Inputs

export interface LapicClock {
  /** Guest TSC rate, Hz (CPUID 0x15/0x16, leaf 0x4000_0010 EAX·1000, or calibrated: common.ts). */
  readonly tscHz: number | bigint;
  /**
   * The APIC timer's input clock, Hz. KVM: 1 GHz (APIC_BUS_CYCLE_NS 1, unless the VMM set
   * KVM_CAP_X86_APIC_BUS_CYCLES_NS; QEMU reports it in 0x4000_0010 EBX); QEMU's userspace APIC also
   * counts nanoseconds.
   */
  readonly apicBusHz: number | bigint;
  /** KVM's min_timer_period_us × 1000 (200 000 on the reference host); 0: no floor. */
  readonly minPeriodNs: number | bigint;
  /** Tolerance between the clock the timer counts in and the guest TSC, ppm (common.ts). Default 0. */
  readonly skewPpm?: number;
  /** CPUID.01H:ECX[24] TSC-deadline. Without it LVTT bit 18 is reserved (KVM: timer_mode_mask = 1 << 17). Default true. */
  readonly tscDeadline?: boolean;
}

/** A timer-register access of the guest, stamped. `faulted`: the access raised #GP and changed nothing. */
export type LapicEvent =
  | (Stamp & { readonly kind: 'lvtt'; readonly value: number; readonly faulted?: boolean })
  | (Stamp & { readonly kind: 'tdcr'; readonly value: number; readonly faulted?: boolean })
  | (Stamp & { readonly kind: 'tmict'; readonly value: number; readonly faulted?: boolean })
  | (Stamp & { readonly kind: 'tscDeadline'; readonly value: bigint; readonly faulted?: boolean })
  | (Stamp & { readonly kind: 'readTmcct' })
  | (Stamp & { readonly kind: 'readTscDeadline' })
  | GuestControlEvent;

export interface LapicTimeline {
  readonly events: readonly LapicEvent[];
  /** The last TSC this vCPU recorded: nothing is predicted beyond it. */
  readonly endTsc: bigint;
  /** RFLAGS.IF before the first event. Default true. */
  readonly interruptsEnabled?: boolean;
  /** The ISR EOIs the timer vector itself (default true); false: EOIs are the timeline's 'eoi' events. */
  readonly autoEoi?: boolean;
  /** Register values at the start (no count running). Default the reset state: LVTT 0x10000 (masked), TDCR 0. */
  readonly initial?: { readonly lvtt?: number; readonly tdcr?: number };
}

export interface LapicPredictOptions {
  /**
   * How long after expiring an interrupt may still be cancelled by a disarm or re-arm (KVM holds it
   * in lapic_timer.pending until the next VM entry, and cancel_apic_timer() clears that), TSC
   * cycles. Default 0: an expiry before an action's tscBefore is owed. The property layer passes its
   * calibrated injection latency.
   */
  readonly raceTsc?: bigint;
  /**
   * The TSCs at which the timer's interrupts were delivered (the observation), for
   * periodicLateCallback 'target-to-now' only: a delivery that came after the next period was
   * already due shows that KVM's timer callback may have run that late. Default none.
   */
  readonly deliveries?: readonly bigint[];
}

// ---------------------------------------------------------------------------------------------
// Switches

export interface LapicSwitches {
  /**
   * Which LVTT mode changes disarm a running timer.
   *  - 'tsc-deadline-only' (KVM apic_update_lvtt() since dedf9c5e2169; SDM from May 2019:
   *    "Transitioning between TSC-deadline mode and other timer modes also disarms the timer"; a
   *    one-shot↔periodic change keeps counting, as kvm-unit-tests test_apic_change_mode checks);
   *  - 'any' (SDM before May 2019, §10.5.4.1: "A write to the LVT Timer Register that changes the
   *    timer mode disarms the local APIC timer", which Sean Christopherson called a confirmed SDM bug).
   */
  readonly modeSwitchDisarms: 'tsc-deadline-only' | 'any';
  /**
   * A TDCR write that changes the divisor while a count runs (the SDM is silent).
   *  - 'rescale' (KVM c301b909e4b9 "Apply change to TDCR right away to the timer", from bare metal:
   *    "the TMCCT does not change or make a big jump in value, but the rate at which it count down
   *    change"; update_target_expiration() scales the remaining time by new/old);
   *  - 'next-reload' (KVM before c301b909: the running count keeps the old rate; the new divisor
   *    applies from the next reload).
   *  - 'from-load' (QEMU's own APIC, hw/intc/apic.c and apic_common.c of v7.2, kernel-irqchip=off
   *    and TCG): the write (apic_register_write 0x3e) only sets count_shift. TMCCT is recomputed
   *    from the initial-count load time at the new divide (apic_get_current_count(): d = (now −
   *    load) >> count_shift; one-shot IC − d or 0, periodic IC − d mod (IC+1)), so it jumps; the
   *    armed timer still fires at its old time, and only then apic_timer() → apic_next_timer()
   *    counts again from the load at the new divide: periodic expiries at the multiples of
   *    (IC+1) << count_shift since the load, and a one-shot whose recomputed count has not reached
   *    IC fires a second time at load + (IC+1) << count_shift. LVTT writes re-arm the same way
   *    (apic_timer_update() at the write's time). What the SDM says (Vol. 3A §10.5.4, the Divide
   *    Configuration Register): "The APIC timer frequency will be the processor's bus clock or core
   *    crystal clock frequency ... divided by the value specified in the divide configuration
   *    register"; the count is one down-counter ("the initial count value is then copied into the
   *    current-count register and count-down begins"), so a divide change changes only the rate.
   *    Not a reading of the manual: the property layer predicts with it only to name the root
   *    cause of a difference.
   */
  readonly tdcrMidCount: 'rescale' | 'next-reload' | 'from-load';
  /**
   * LVTT one-shot → periodic after the one-shot reached 0, with no TMICT write. The SDM does not say
   * ("the SDM doesn't clarify what constitutes reprogrammed", Sean Christopherson, kvm list 2019).
   *  - 'stays-zero' (KVM: nothing restarts the timer, TMCCT stays 0; kvm-unit-tests
   *    test_apic_change_mode: "TMCCT should stay at zero"; the Windows time-stop report of 2019);
   *  - 'rearms' (QEMU hw/intc/apic_common.c apic_next_timer(): periodic expiries are counted from the
   *    initial-count load time, so the next comes at the next multiple of the period since the load).
   */
  readonly expiredOneShotToPeriodic: 'stays-zero' | 'rearms';
  /**
   * An expiry while LVTT is masked.
   *  - 'held' (KVM without APICv: apic_has_pending_timer() ignores lapic_timer.pending while LVTT is
   *    masked, so the expiry stays pending and is injected as soon as LVTT is unmasked; a TMICT or
   *    deadline write (__start_apic_timer()) or a TSC-deadline mode switch (cancel_apic_timer())
   *    drops it; further expiries merge into it, apic_timer_expired() returns while one is pending);
   *  - 'dropped' (SDM §10.5.1 "Inhibits reception of the interrupt": nothing is latched; unmasking
   *    delivers nothing).
   */
  readonly maskedExpiry: 'held' | 'dropped';
  /**
   * Whether IA32_TSC_DEADLINE reads 0 after a masked deadline expired (before any delivery).
   * KVM: false (kvm_apic_inject_pending_timer_irqs() clears tscdeadline only when it injects; a held
   * expiry is injected at unmask, and the MSR clears then). SDM §10.5.4.1 "It then disarms the timer
   * and clears the IA32_TSC_DEADLINE MSR", with no exception for a masked LVT: true.
   */
  readonly maskedDeadlineClearsMsr: boolean;
  /**
   * The floor on periodic periods.
   *  - 'kvm' (limit_periodic_timer_frequency(): in periodic mode a period under min_timer_period_us
   *    is raised to it, from the first period on (set_target_expiration() starts with the raised
   *    period), and again on a TDCR change or a switch to periodic; TMCCT then counts the raised
   *    period down, apic_get_tmcct(), and can read above TMICT);
   *  - 'none' (SDM: no floor).
   */
  readonly periodicClamp: 'kvm' | 'none';
  /** Where an "immediate" interrupt must have arrived by (common.ts immediateBound()). */
  readonly immediateBy: ImmediateBy;
  /**
   * A TDCR write that changes the divisor after a one-shot count reached 0 (no TMICT write since;
   * LVTT may have been switched to periodic since, which KVM leaves at 0: expiredOneShotToPeriodic).
   *  - 'nothing' (SDM §10.5.4: "After the timer reaches zero, an timer interrupt is generated and
   *    the timer remains at its 0 value until reprogrammed"; a divide change does not reprogram the
   *    count, so nothing fires). Every preset.
   *  - 'refires' (KVM as observed on Linux 6.18 / kvm_pvm: lapic_timer.period stays set after a
   *    one-shot expires, so the APIC_TDCR handler's update_target_expiration() clamps the negative
   *    remaining time to 0 and restart_apic_timer() fires again at the write). Not a reading of the
   *    manual: the property layer predicts with it only to name the root cause of a difference.
   */
  readonly tdcrAfterOneShotExpiry?: 'nothing' | 'refires';
  /**
   * A periodic timer whose expiry was handled only after the next period was already due (the
   * host did not run the timer's callback in time).
   *  - 'keeps-phase' (SDM §10.5.4: the count reloads from the initial count at 0 and goes on; a
   *    real APIC is never late);
   *  - 'target-to-now' (KVM advance_periodic_target_expiration(): "If the new expiration is in the
   *    past ... force the expiration to "now" and don't try to play catch-up with the missed
   *    events"): the hrtimer keeps its phase, but the target that TMCCT reads and a later TDCR
   *    write rescales from moves to the callback's time, somewhere up to the late delivery. The
   *    model then knows the count's phase no better than "anywhere in the count" (uncertain) until
   *    the next TMICT write. Needs LapicPredictOptions.deliveries.
   */
  readonly periodicLateCallback?: 'keeps-phase' | 'target-to-now';
  /**
   * LVTT's TSC-deadline mode (bits 18:17 = 10) where CPUID.01H:ECX[24] advertises it.
   *  - 'implemented' (SDM §10.5.4.1; KVM's LAPIC). Every preset.
   *  - 'ignored' (QEMU's userspace APIC, hw/intc/apic.c, kernel-irqchip=off: apic_next_timer() and
   *    apic_get_current_count() read only APIC_LVT_TIMER_PERIODIC (bit 17), so bit 18 changes
   *    nothing and a running count goes on as one-shot; IA32_TSC_DEADLINE goes to KVM, which has
   *    no LAPIC to arm and reads 0). QEMU 7.2 nevertheless advertises TSC-deadline under KVM when
   *    KVM_GET_SUPPORTED_CPUID lists it. Not a reading of the manual: the property layer predicts
   *    with it only to name the root cause of a difference.
   */
  readonly tscDeadlineMode?: 'implemented' | 'ignored';
  /**
   * The divide in force before the first TDCR write.
   *  - 'tdcr' (SDM §10.4.7.1: the divide configuration register resets to 0, which Figure 10-10
   *    reads as ÷2). Every preset.
   *  - 'one' (QEMU's own APIC, apic_common.c apic_init_reset(): divide_conf = 0 but count_shift =
   *    0, so the timer counts at ÷1 until the guest writes TDCR). Not a reading of the manual: the
   *    property layer predicts with it only to name the root cause of a difference.
   */
  readonly resetDivide?: 'tdcr' | 'one';
}

export const KVM_LAPIC: LapicSwitches = Object.freeze({
  modeSwitchDisarms: 'tsc-deadline-only',
  tdcrMidCount: 'rescale',
  expiredOneShotToPeriodic: 'stays-zero',
  maskedExpiry: 'held',
  maskedDeadlineClearsMsr: false,
  periodicClamp: 'kvm',
  immediateBy: 'action-stamp',
  periodicLateCallback: 'target-to-now',
});

/** The bare-metal reading of the SDM (the expired one-shot → periodic case is unknown there; KVM's choice stands). */
export const SDM_LAPIC: LapicSwitches = Object.freeze({
  modeSwitchDisarms: 'tsc-deadline-only',
  tdcrMidCount: 'rescale',
  expiredOneShotToPeriodic: 'stays-zero',
  maskedExpiry: 'dropped',
  maskedDeadlineClearsMsr: true,
  periodicClamp: 'none',
  immediateBy: 'action-stamp',
});

/** QEMU's own APIC (kernel-irqchip=off, hw/intc/apic.c): masked timers do not fire, no floor, expired one-shot → periodic re-arms. */
export const QEMU_USERSPACE_LAPIC: LapicSwitches = Object.freeze({
  modeSwitchDisarms: 'tsc-deadline-only',
  tdcrMidCount: 'rescale',
  expiredOneShotToPeriodic: 'rearms',
  maskedExpiry: 'dropped',
  maskedDeadlineClearsMsr: true,
  periodicClamp: 'none',
  immediateBy: 'action-stamp',
});

// ---------------------------------------------------------------------------------------------
// Register decoding

export type LvttMode = 'one-shot' | 'periodic' | 'tsc-deadline' | 'reserved';

/** LVTT (SDM Figure 10-8): vector 7:0, mask 16, timer mode 18:17 (00 one-shot, 01 periodic, 10 TSC-deadline, 11 reserved). */
export function decodeLvtt(value: number, tscDeadline = true): { vector: number; masked: boolean; mode: LvttMode } {
  const modeBits = tscDeadline ? (value >>> 17) & 3 : (value >>> 17) & 1;
  const mode: LvttMode = modeBits === 0 ? 'one-shot' : modeBits === 1 ? 'periodic' : modeBits === 2 ? 'tsc-deadline' : 'reserved';
  return { vector: value & 0xff, masked: ((value >>> 16) & 1) === 1, mode };
}

/** The divide value TDCR selects (SDM Figure 10-10; KVM update_divide_count(): 1 << (((tdcr&3)|((tdcr&8)>>1))+1 & 7)). */
export function divideOf(tdcr: number): number {
  const v = ((tdcr & 3) | ((tdcr & 8) >> 1)) + 1;
  return 1 << (v & 7);
}

// ---------------------------------------------------------------------------------------------
// Outputs

export interface ReadRange {
  readonly min: bigint;
  readonly max: bigint;
}

/** How a TMCCT read relates to an earlier one of the same count (checked against the observed earlier value). */
export interface TmcctContinuity {
  /** The earlier TMCCT read of the same count period. */
  readonly fromRead: number;
  readonly fromWindow: Interval;
  /** TSC cycles per count at the earlier read, and now. */
  readonly fromTpc: Ratio;
  readonly toTpc: Ratio;
  /** TDCR rescales between the two reads: each scaled the remaining time by num/den at a time in [lo, hi]. */
  readonly rescales: readonly (Interval & Ratio)[];
  readonly ppb: bigint;
}

export interface LapicReadExpectation {
  readonly eventIndex: number;
  readonly register: 'tmcct' | 'tsc-deadline';
  readonly window: Interval;
  /** The value is in one of these (inclusive). */
  readonly allowed: readonly ReadRange[];
  readonly rule: string;
  /** IA32_TSC_DEADLINE: a timer interrupt delivered at or after this TSC and before the read clears the MSR, so it reads 0. */
  readonly clearsAfter?: bigint;
  readonly continuity?: TmcctContinuity;
}

/** `quiet`: no timer interrupt (any timer vector) in these intervals. */
export interface LapicPrediction extends DeliveryPrediction {
  readonly interrupts: readonly ExpectedInterrupt[];
  readonly reads: readonly LapicReadExpectation[];
  /** Every vector LVTT held: the interrupts judgeLapic() considers the timer's. */
  readonly vectors: readonly number[];
  readonly switches: LapicSwitches;
}

// ---------------------------------------------------------------------------------------------
// The model

const U32_MAX = 0xffff_ffffn;
const MAX_EXPIRIES = 2_000_000;

interface Count {
  readonly kind: 'count';
  armedBy: number;
  tmict: bigint;
  /** Divide the running period counts at. */
  divide: bigint;
  /** 'next-reload': the divide that takes over at the next reload. */
  pendingDivide: bigint | null;
  /** Expiry 0 of the current segment; expiry k = anchor + k·period. */
  anchor: Interval;
  k: bigint;
  period: Ratio;
  periodCounts: bigint;
  expired: boolean;
  uncertain: boolean;
  /** periodicLateCallback: how far KVM's target may have moved past the hrtimer's phase (0: not at all). */
  targetLag: bigint;
  /** The TMICT write: the phase origin for 'rearms'. */
  load: Interval;
  emitted: number;
  /** 'from-load': the armed QEMU timer's expiry, in bus ticks after the load (apic_next_timer()'s next_time − load). */
  q: bigint | null;
  lastRead: { eventIndex: number; window: Interval; tpc: Ratio; rescales: (Interval & Ratio)[]; emitted: number } | null;
}

interface Deadline {
  readonly kind: 'deadline';
  armedBy: number;
  value: bigint;
  next: Interval;
  fired: boolean;
  /** What the MSR reads after firing: the value until delivered (delivered from `after`), or 0 from the expiry. */
  msr: { kind: 'until-delivery'; after: bigint } | { kind: 'until-expiry'; at: Interval } | { kind: 'held' } | null;
}

interface Held {
  iv: Interval;
  definite: boolean;
  armedBy: number;
}

export function predictLapic(clock: LapicClock, timeline: LapicTimeline, switches: LapicSwitches = KVM_LAPIC, options: LapicPredictOptions = {}): LapicPrediction {
  const tscHz = toBig(clock.tscHz, 'tscHz');
  const busHz = toBig(clock.apicBusHz, 'apicBusHz');
  const minPeriodNs = toBig(clock.minPeriodNs, 'minPeriodNs');
  const ppb = ppbOf(clock.skewPpm);
  const deadlineSupported = (clock.tscDeadline ?? true) && switches.tscDeadlineMode !== 'ignored';
  const race = options.raceTsc ?? 0n;
  const events = timeline.events;
  const enabled = enabledAfter(events, timeline.interruptsEnabled ?? true);

  const interrupts: ExpectedInterrupt[] = [];
  const reads: LapicReadExpectation[] = [];
  const quiet: QuietInterval[] = [];
  const vectors = new Set<number>();

  const lv0 = decodeLvtt(timeline.initial?.lvtt ?? 0x10000, deadlineSupported);
  let mode = lv0.mode;
  let masked = lv0.masked;
  let vector = lv0.vector;
  if (timeline.initial?.lvtt !== undefined) vectors.add(vector);
  let divide = timeline.initial?.tdcr === undefined && switches.resetDivide === 'one' ? 1n : BigInt(divideOf(timeline.initial?.tdcr ?? 0));
  let tmict = 0n;
  let armed: Count | Deadline | null = null;
  let held: Held | null = null;
  let disarmed = true;
  let quietOpen: { from: bigint; eventIndex: number; why: string } | null = null;

  const tpcOf = (d: bigint): Ratio => ({ num: d * tscHz, den: busHz });

  /** Period of a count (TSC, and in counts for TMCCT's modulus), raised to the floor in periodic mode under 'kvm'. */
  const periodOf = (count: bigint, d: bigint, periodicMode: boolean): { period: Ratio; counts: bigint; clamped: boolean } => {
    const natural = { period: { num: count * d * tscHz, den: busHz }, counts: count, clamped: false };
    if (!periodicMode || switches.periodicClamp !== 'kvm' || minPeriodNs === 0n) return natural;
    // period_ns = count·d·1e9/busHz < minPeriodNs ?
    if (count * d * 1_000_000_000n >= minPeriodNs * busHz) return natural;
    return { period: { num: minPeriodNs * tscHz, den: 1_000_000_000n }, counts: ceilDiv(minPeriodNs * busHz, 1_000_000_000n * d), clamped: true };
  };

  const fromLoad = switches.tdcrMidCount === 'from-load';
  const tick: Ratio = { num: tscHz, den: busHz };
  const nextOf = (a: Count | Deadline): Interval =>
    a.kind === 'deadline'
      ? a.next
      : a.q !== null
        ? { lo: a.load.lo + durLo(a.q, tick, ppb), hi: a.load.hi + durHi(a.q, tick, ppb) }
        : { lo: a.anchor.lo + durLo(a.k, a.period, ppb), hi: a.anchor.hi + durHi(a.k, a.period, ppb) };
  /** QEMU apic_next_timer() at `ticks` after the load: the next expiry's ticks after the load, or null (none armed). */
  const qemuNext = (c: Count, ticks: bigint, asMode: LvttMode): bigint | null => {
    const d = ticks / c.divide;
    const n = c.tmict + 1n;
    if (asMode === 'periodic') return (d / n + 1n) * n * c.divide;
    return d >= c.tmict ? null : n * c.divide;
  };
  /** Bus ticks from the load to a time in w: [least, most]. */
  const ticksSinceLoad = (c: Count, w: Interval): { lo: bigint; hi: bigint } => ({
    lo: maxB(0n, floorDiv(maxB(0n, w.lo - c.load.hi) * busHz * (1_000_000_000n - ppb), tscHz * 1_000_000_000n)),
    hi: ceilDiv(maxB(0n, w.hi - c.load.lo) * busHz * (1_000_000_000n + ppb), tscHz * 1_000_000_000n),
  });
  /** QEMU apic_timer_update() at an LVTT write in w: re-arm from the load; unknown if w straddles a change. */
  const qemuRearm = (c: Count, w: Interval, asMode: LvttMode) => {
    const t = ticksSinceLoad(c, w);
    const a = qemuNext(c, t.lo, asMode);
    const b = qemuNext(c, t.hi, asMode);
    if (a !== b) c.uncertain = true;
    c.q = b ?? a;
    c.expired = c.q === null;
    if (c.q === null) c.q = (c.tmict + 1n) * c.divide; // expired: reads still recount from the load
  };

  const hasPending = (a: Count | Deadline | null): a is Count | Deadline => {
    if (!a) return false;
    if (a.kind === 'deadline') return !a.fired;
    return !a.expired && a.tmict > 0n && (mode === 'one-shot' || mode === 'periodic' || mode === 'reserved');
  };

  const whyOf = (a: Count | Deadline): string =>
    a.kind === 'deadline'
      ? `TSC-deadline ${hex(a.value)} written by event ${a.armedBy}: fires when TSC ≥ the deadline (SDM §10.5.4.1)`
      : mode === 'periodic'
        ? `periodic count of ${a.tmict} at divide ${a.divide} armed by event ${a.armedBy}: reloads at 0 and interrupts each period (SDM §10.5.4)`
        : `one-shot count of ${a.tmict} at divide ${a.divide} armed by event ${a.armedBy}: interrupts once at 0 (SDM §10.5.4)`;

  const push = (e: Omit<ExpectedInterrupt, 'vector'> & { vector?: number }) => {
    if (interrupts.length >= MAX_EXPIRIES) throw new Error(`LAPIC model: more than ${MAX_EXPIRIES} predicted interrupts (period too short for the timeline)`);
    interrupts.push({ vector: e.vector ?? vector, earliest: e.earliest, expiryLatest: e.expiryLatest, latest: e.latest, count: e.count, eventIndex: e.eventIndex, why: e.why });
  };

  /** What an expiry at iv yields, given the mask (or as if unmasked), without moving the timer. */
  const deliver = (a: Count | Deadline, iv: Interval, certain: boolean, asUnmasked = false, vec?: number) => {
    const sure = certain && !(a.kind === 'count' && a.uncertain);
    if (!masked || asUnmasked) {
      push({ vector: vec ?? vector, earliest: iv.lo, expiryLatest: iv.hi, latest: null, count: sure ? 'once' : 'at-most-once', eventIndex: a.armedBy, why: whyOf(a) });
      if (a.kind === 'deadline') a.msr = { kind: 'until-delivery', after: iv.lo };
      return;
    }
    if (switches.maskedExpiry === 'held') {
      if (!held) held = { iv, definite: sure, armedBy: a.armedBy };
      else if (sure) held.definite = true;
      if (a.kind === 'deadline') a.msr = switches.maskedDeadlineClearsMsr ? { kind: 'until-expiry', at: iv } : { kind: 'held' };
    } else if (a.kind === 'deadline') {
      a.msr = switches.maskedDeadlineClearsMsr ? { kind: 'until-expiry', at: iv } : { kind: 'held' };
    }
  };

  const deliveries = [...(options.deliveries ?? [])].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
  /**
   * When the delivery covering an expiry at iv came only after the following one was due
   * (periodicLateCallback): how far past that following expiry the target may have moved; else null.
   */
  const lateCallback = (a: Count, iv: Interval): bigint | null => {
    if (switches.periodicLateCallback !== 'target-to-now') return null;
    const o = deliveries.find((d) => d >= iv.lo);
    const next = iv.lo + durLo(1n, a.period, ppb);
    return o !== undefined && o > iv.hi + durHi(1n, a.period, ppb) ? o - next : null;
  };

  /** Move the timer past its next expiry (reload, stop, or fire the deadline). */
  const step = (a: Count | Deadline, iv: Interval, asMode: LvttMode = mode) => {
    if (a.kind === 'deadline') {
      a.fired = true;
      return;
    }
    a.emitted++;
    const lag = asMode === 'periodic' ? lateCallback(a, iv) : null;
    if (lag !== null) {
      a.uncertain = true;
      a.targetLag = maxB(a.targetLag, lag);
    }
    if (a.q !== null) {
      // QEMU apic_timer(): re-arm from the load at the divide in force now.
      const n = qemuNext(a, a.q, asMode === 'periodic' ? 'periodic' : 'one-shot');
      if (n === null) a.expired = true;
      else a.q = n;
      return;
    }
    if (asMode === 'periodic') {
      if (a.pendingDivide !== null) {
        // 'next-reload': the new divisor takes over at this reload.
        a.divide = a.pendingDivide;
        a.pendingDivide = null;
        const p = periodOf(a.tmict, a.divide, true);
        a.period = p.period;
        a.periodCounts = p.counts;
        a.anchor = { lo: iv.lo + durLo(1n, a.period, ppb), hi: iv.hi + durHi(1n, a.period, ppb) };
        a.k = 0n;
      } else a.k++;
    } else a.expired = true;
  };

  const emitNext = (certain: boolean) => {
    const a = armed!;
    const iv = nextOf(a);
    deliver(a, iv, certain);
    step(a, iv);
  };

  /** Emit every expiry certainly before `limit`. */
  const advance = (limit: bigint) => {
    while (hasPending(armed) && nextOf(armed).hi < limit) emitNext(true);
  };

  /** Expiries racing an action that cancels them: at most once each. */
  const cancelRacing = (w: Interval) => {
    advance(w.lo - race);
    while (hasPending(armed) && nextOf(armed).lo <= w.hi) emitNext(false);
  };

  const quietNow = () => masked || disarmed || mode === 'reserved';
  const updateQuiet = (i: number, wasQuiet: boolean, why: string) => {
    const now = quietNow();
    const ev = events[i]!;
    if (!wasQuiet && now) {
      const from = enabled[i] ? ev.tscAfter : (immediateBound(events, enabled, i, 'action-stamp') ?? ev.tscAfter);
      quietOpen = { from, eventIndex: i, why };
    } else if (wasQuiet && !now && quietOpen) {
      quiet.push({ ...quietOpen, to: ev.tscBefore });
      quietOpen = null;
    }
  };
  // The reset state is masked and disarmed.
  if (quietNow()) quietOpen = { from: 0n, eventIndex: -1, why: 'reset state: LVTT masked, TMICT 0 (SDM §10.4.7.1 / §10.5.4)' };

  for (let i = 0; i < events.length; i++) {
    const ev = events[i]!;
    const w: Interval = { lo: ev.tscBefore, hi: ev.tscAfter };
    if ('faulted' in ev && ev.faulted) continue;
    const wasQuiet = quietNow();
    switch (ev.kind) {
      case 'lvtt': {
        const nv = decodeLvtt(ev.value, deadlineSupported);
        vectors.add(nv.vector);
        const modeChanged = nv.mode !== mode;
        const involvesDeadline = modeChanged && (mode === 'tsc-deadline') !== (nv.mode === 'tsc-deadline');
        const disarms = modeChanged && (involvesDeadline || switches.modeSwitchDisarms === 'any');
        const maskOn = !masked && nv.masked;
        const maskOff = masked && !nv.masked;
        const vectorChanged = nv.vector !== vector;
        if (!modeChanged && !maskOn && !maskOff && !vectorChanged) break;

        // Expiries racing the write.
        if (disarms) cancelRacing(w);
        else if (maskOn) {
          advance(w.lo - race);
          while (hasPending(armed) && nextOf(armed).lo <= w.hi) {
            const a = armed;
            const iv = nextOf(a);
            deliver(a, iv, false, true);
            if (switches.maskedExpiry === 'held' && !held) held = { iv, definite: false, armedBy: a.armedBy };
            if (modeChanged) {
              // Masked and one-shot ↔ periodic in one write (seed 748: periodic → masked one-shot,
              // the write racing a period's end): the expiry before the write reloads, one after it
              // may end the count. Either branch, as for an unmasked mode switch below.
              step(a, iv, 'periodic');
              if (a.kind === 'count') a.uncertain = nv.mode === 'one-shot' || switches.expiredOneShotToPeriodic === 'stays-zero' || nv.mode === 'reserved';
            } else step(a, iv);
          }
        } else {
          advance(w.lo);
          let racing = 0;
          while (hasPending(armed) && nextOf(armed).lo <= w.hi) {
            const a = armed;
            const iv = nextOf(a);
            if (maskOff) {
              // Before the unmask: held (and delivered at it) or dropped; after it: delivered.
              const owed = racing === 0 && switches.maskedExpiry === 'held' && !(held && held.definite);
              // Held, it comes at its expiry or at the unmask, whichever is later: by the window's end.
              deliver(a, owed ? { lo: iv.lo, hi: maxB(iv.hi, w.hi) } : iv, owed, true, nv.vector);
              // A write to periodic may have come before this expiry, so the count may go on
              // reloading inside a window that spans periods (an interrupt storm or a descheduled
              // vCPU stretched it: seed 502, 87 ms); each later one at most once, and the count's
              // state after the window unknown.
              const toPeriodic = modeChanged && nv.mode === 'periodic';
              step(a, iv, toPeriodic ? 'periodic' : mode);
              if (toPeriodic && a.kind === 'count') a.uncertain = true;
              racing++;
            } else if (modeChanged) {
              // one-shot ↔ periodic, still counting: the expiry fires in either branch.
              deliver(a, iv, true, false);
              step(a, iv, 'periodic');
              if (a.kind === 'count') a.uncertain = nv.mode === 'one-shot' || switches.expiredOneShotToPeriodic === 'stays-zero' || nv.mode === 'reserved';
            } else {
              // A vector change racing the expiry: either vector, at most once.
              deliver(a, iv, false, false, vector);
              deliver(a, iv, false, false, nv.vector);
              step(a, iv);
            }
          }
        }

        // Apply.
        if (disarms) {
          armed = null;
          held = null;
          disarmed = true;
          if (involvesDeadline) tmict = 0n;
        }
        const oldMode = mode;
        mode = nv.mode;
        masked = nv.masked;
        vector = nv.vector;
        if (fromLoad && !disarms && (modeChanged || maskOff) && armed && armed.kind === 'count' && armed.q !== null && (nv.mode === 'one-shot' || nv.mode === 'periodic')) {
          // QEMU apic_register_write() LVTT: apic_timer_update() at the write's time.
          const c = armed;
          qemuRearm(c, w, nv.mode);
          c.lastRead = null;
          while (hasPending(armed) && nextOf(armed).lo <= w.hi) emitNext(false);
        } else if (!disarms && modeChanged && armed && armed.kind === 'count') {
          const c = armed;
          if (nv.mode === 'periodic' && oldMode === 'one-shot') {
            if (c.expired) {
              if (switches.expiredOneShotToPeriodic === 'rearms') {
                // QEMU apic_next_timer(): the next multiple of the period since the load.
                const p = periodOf(c.tmict, c.divide, true);
                c.period = p.period;
                c.periodCounts = p.counts;
                c.anchor = { lo: c.load.lo + durLo(1n, c.period, ppb), hi: c.load.hi + durHi(1n, c.period, ppb) };
                c.k = 0n;
                c.expired = false;
                c.uncertain = false;
                c.lastRead = null;
                while (nextOf(c).hi < w.lo) c.k++;
                while (hasPending(armed) && nextOf(armed).lo <= w.hi) emitNext(false);
              }
            } else {
              // Keeps counting (KVM limit_periodic_timer_frequency() in apic_update_lvtt() may raise the period).
              c.anchor = nextOf(c);
              c.k = 0n;
              const p = periodOf(c.tmict, c.divide, true);
              c.period = p.period;
              c.periodCounts = p.counts;
            }
          } else if (nv.mode === 'reserved') c.uncertain = true;
        }
        if (maskOff && held) {
          const h = held;
          push({
            earliest: maxB(h.iv.lo, w.lo),
            expiryLatest: maxB(h.iv.hi, w.hi),
            latest: immediateBound(events, enabled, i, switches.immediateBy),
            count: h.definite ? 'once' : 'at-most-once',
            eventIndex: i,
            why: `LVTT unmasked by event ${i} with the expiry of event ${h.armedBy} pending: KVM injects it at once (apic_has_pending_timer(); the interrupt is pending and now unmasked)`,
          });
          if (armed && armed.kind === 'deadline' && armed.msr?.kind === 'held') armed.msr = { kind: 'until-delivery', after: w.lo };
          held = null;
        }
        if (maskOn && switches.maskedExpiry === 'dropped') held = null;
        updateQuiet(i, wasQuiet, disarms ? `LVTT mode ${oldMode} → ${nv.mode} disarms the timer (${involvesDeadline ? 'SDM §10.5.4.1: "Transitioning between TSC-deadline mode and other timer modes also disarms the timer"' : 'old SDM text: "changes the timer mode disarms"'})` : 'LVTT masked (SDM §10.5.1: "Inhibits reception of the interrupt")');
        break;
      }
      case 'tdcr': {
        const nd = BigInt(divideOf(ev.value));
        if (nd === divide) break; // KVM: nothing happens unless the divisor changes
        /** Under 'refires', a write that may have restarted a periodic timer that a racing switch left at 0. */
        let refiredFrom: Interval | null = null;
        divide = nd;
        const c = armed && armed.kind === 'count' ? armed : null;
        if (c && c.q !== null) {
          // QEMU: only count_shift changes; the armed timer fires at its time, and re-arms from the
          // load at the new divide then. An expiry racing the write re-arms at either divide.
          advance(w.lo);
          const od = c.divide;
          const asMode = mode === 'periodic' ? 'periodic' : 'one-shot';
          while (hasPending(armed) && armed === c && nextOf(c).lo <= w.hi) {
            deliver(c, nextOf(c), true);
            c.emitted++;
            c.divide = od;
            const oldNext = qemuNext(c, c.q, asMode);
            c.divide = nd;
            const newNext = qemuNext(c, c.q, asMode);
            if (oldNext !== newNext) c.uncertain = true;
            const n = newNext ?? oldNext;
            if (n === null) c.expired = true;
            else c.q = n;
          }
          c.divide = nd;
          c.lastRead = null;
          break;
        }
        if (c && (mode === 'one-shot' || mode === 'periodic') && c.tmict !== 0n && switches.tdcrAfterOneShotExpiry === 'refires') {
          advance(w.lo);
          if (c.expired) {
            deliver(c, { lo: w.lo, hi: w.hi }, true);
            c.divide = nd;
            if (mode === 'periodic') {
              // restart_apic_timer() in periodic mode keeps going from the write, one (raised) period at a time.
              const p = periodOf(c.tmict, nd, true);
              c.period = p.period;
              c.periodCounts = p.counts;
              c.anchor = { lo: w.lo + durLo(1n, p.period, ppb), hi: w.hi + durHi(1n, p.period, ppb) };
              c.k = 0n;
              c.expired = false;
            }
            break;
          }
          // A one-shot that a racing mode switch may have ended (lvtt: 'uncertain'): if it did, the
          // write re-fires it (in periodic mode, after a one-shot → periodic switch that KVM leaves
          // at 0, restart_apic_timer() then goes on one period at a time from the write: seed 703,
          // the switch's stamps spanned 12.9 ms and the expiry); if not, it counts on, rescaled below.
          if (c.uncertain) {
            deliver(c, { lo: w.lo, hi: w.hi }, false);
            if (mode === 'periodic') refiredFrom = w;
          }
        }
        if (!c || c.expired || c.tmict === 0n || (mode !== 'one-shot' && mode !== 'periodic')) break;
        if (switches.tdcrMidCount === 'next-reload') {
          if (mode === 'periodic') c.pendingDivide = nd;
          else c.pendingDivide = null;
          break;
        }
        const r: Ratio = { num: nd, den: c.divide };
        advance(w.lo);
        if (!hasPending(armed) || armed !== c) break;
        let iv = nextOf(c);
        let spans = false;
        /** The racing expiry (fired at its own time or rescaled), when one raced the write. */
        let raced: Interval | null = null;
        if (iv.lo <= w.hi) {
          // The expiry races the write: it fires in either branch, at its own time or rescaled.
          const rescaledHi = w.hi + durHi(maxB(iv.hi - w.lo, 0n), r, ppb);
          raced = { lo: minB(iv.lo, w.lo), hi: maxB(iv.hi, rescaledHi) };
          deliver(c, raced, true);
          c.emitted++;
          if (mode === 'one-shot') {
            // Under 'refires', an expiry that may have come before the write (its window opens
            // before the write's ends) may be fired again by it (seed 2 under load: TMICT's stamps
            // spanned 3.7 ms, the expiry was delivered, then the TDCR write re-fired it).
            if (switches.tdcrAfterOneShotExpiry === 'refires' && iv.lo < w.hi) deliver(c, { lo: maxB(iv.lo, w.lo), hi: w.hi }, false);
            c.expired = true;
            c.divide = nd;
            // A write that came before the expiry pushed it to rescaledHi: past the window (its
            // stamps span the expiry: seed 507, 4.9 ms), a read may still see the count running.
            if (rescaledHi > w.hi) c.uncertain = true;
            break;
          }
          iv = { lo: iv.lo + durLo(1n, c.period, ppb), hi: iv.hi + durHi(1n, c.period, ppb) };
          // A write whose stamps span more old-rate expiries (the host kept the vCPU from running
          // inside it): each of them fires only if the write came after it, and where in the window
          // the slope changed is unknown.
          while (iv.lo <= w.hi) {
            spans = true;
            deliver(c, iv, false);
            c.emitted++;
            iv = { lo: iv.lo + durLo(1n, c.period, ppb), hi: iv.hi + durHi(1n, c.period, ppb) };
          }
        }
        // KVM update_target_expiration(): remaining × new/old from the write; period recomputed (and raised) at the new divide.
        // Spanning: the first expiry after a write at t in the window is t + (next old expiry − t) × new/old, which is
        // no earlier than the window's start and no later than its end plus one old period × new/old.
        const base = spans ? { lo: w.lo, hi: w.hi + durHi(1n, { num: c.period.num * r.num, den: c.period.den * r.den }, ppb) } : rescaleInterval(iv, w, r, ppb);
        // KVM rescales from its target, which a late callback moved up to targetLag past the phase.
        const rescaled = c.targetLag > 0n ? { lo: base.lo, hi: base.hi + durHi(1n, { num: c.targetLag * r.num, den: r.den }, ppb) } : base;
        const p = periodOf(c.tmict, nd, mode === 'periodic');
        // A periodic expiry that raced the write and came after it was itself rescaled, and the
        // next one follows it by a period at the new divide; one that came before the write left
        // the next old-rate expiry to be rescaled (base). Either may be the case (seed 701: ÷1 →
        // ÷64 1.8 µs before the expiry; the next came one ÷64 period after the rescaled one,
        // where the other branch put it 12 ms out).
        const restart = raced && !spans && mode === 'periodic' ? raced : refiredFrom;
        c.anchor = restart
          ? { lo: minB(rescaled.lo, restart.lo + durLo(1n, p.period, ppb)), hi: maxB(rescaled.hi, restart.hi + durHi(1n, p.period, ppb)) }
          : rescaled;
        c.k = 0n;
        c.divide = nd;
        c.pendingDivide = null;
        c.period = mode === 'periodic' ? p.period : { num: c.tmict * nd * tscHz, den: busHz };
        c.periodCounts = mode === 'periodic' ? p.counts : c.tmict;
        c.lastRead?.rescales.push({ lo: w.lo, hi: w.hi, num: r.num, den: r.den });
        break;
      }
      case 'tmict': {
        if (mode === 'tsc-deadline') break; // SDM §10.5.4.1: "writes to the initial-count register are ignored"
        cancelRacing(w);
        held = null; // KVM __start_apic_timer() clears lapic_timer.pending
        tmict = BigInt(ev.value >>> 0);
        if (tmict === 0n) {
          armed = null;
          disarmed = true;
        } else {
          const p = periodOf(tmict, divide, mode === 'periodic');
          armed = {
            kind: 'count',
            armedBy: i,
            tmict,
            divide,
            pendingDivide: null,
            anchor: { lo: w.lo + durLo(1n, p.period, ppb), hi: w.hi + durHi(1n, p.period, ppb) },
            k: 0n,
            period: p.period,
            periodCounts: p.counts,
            expired: false,
            uncertain: mode === 'reserved',
            targetLag: 0n,
            load: w,
            emitted: 0,
            q: fromLoad ? (tmict + 1n) * divide : null,
            lastRead: null,
          };
          disarmed = false;
        }
        updateQuiet(i, wasQuiet, 'TMICT = 0 stops the timer (SDM §10.5.4: "A write of 0 to the initial-count register effectively stops the local APIC timer")');
        break;
      }
      case 'tscDeadline': {
        if (mode !== 'tsc-deadline') break; // SDM §10.5.4.1: "writes are ignored" in other modes
        cancelRacing(w);
        held = null;
        const D = ev.value;
        if (D === 0n) {
          armed = null;
          disarmed = true;
        } else {
          disarmed = false;
          if (D <= w.lo) {
            const a: Deadline = { kind: 'deadline', armedBy: i, value: D, next: w, fired: true, msr: null };
            armed = a;
            if (!masked) {
              push({
                earliest: w.lo,
                expiryLatest: w.hi,
                latest: immediateBound(events, enabled, i, switches.immediateBy),
                count: 'once',
                eventIndex: i,
                why: `TSC-deadline ${hex(D)} written by event ${i} is already past: it fires at once (SDM §10.5.4.1: fires when TSC ≥ deadline)`,
              });
              a.msr = { kind: 'until-delivery', after: w.lo };
            } else deliver(a, w, true);
          } else {
            armed = { kind: 'deadline', armedBy: i, value: D, next: { lo: D, hi: D <= w.hi ? w.hi : D }, fired: false, msr: null };
          }
        }
        updateQuiet(i, wasQuiet, 'IA32_TSC_DEADLINE = 0 disarms the timer (SDM §10.5.4.1)');
        break;
      }
      case 'readTmcct': {
        advance(w.lo);
        reads.push(tmcctRead(i, w));
        break;
      }
      case 'readTscDeadline': {
        advance(w.lo);
        reads.push(deadlineRead(i, w));
        break;
      }
      default:
        break;
    }
  }
  while (hasPending(armed) && nextOf(armed).lo <= timeline.endTsc) emitNext(true);
  if (quietOpen) quiet.push({ ...(quietOpen as { from: bigint; eventIndex: number; why: string }), to: null });

  function tmcctRead(i: number, w: Interval): LapicReadExpectation {
    const base = { eventIndex: i, register: 'tmcct' as const, window: w };
    const only = (v: bigint, rule: string): LapicReadExpectation => ({ ...base, allowed: [{ min: v, max: v }], rule });
    if (mode === 'tsc-deadline') return only(0n, 'TSC-deadline mode: "current-count register always reads 0" (SDM §10.5.4.1)');
    if (mode === 'reserved') return { ...base, allowed: [{ min: 0n, max: U32_MAX }], rule: 'reserved LVTT timer mode: no prediction' };
    const c = armed && armed.kind === 'count' ? armed : null;
    if (!c || tmict === 0n) return only(0n, 'TMICT is 0: the timer is stopped and TMCCT reads 0 (SDM §10.5.4)');
    if (c.uncertain) return { ...base, allowed: [{ min: 0n, max: maxB(c.periodCounts, c.tmict) }], rule: 'a mode change raced an expiry: TMCCT anywhere in the count' };
    if (c.q !== null) {
      // QEMU apic_get_current_count(): d = (now − load) >> count_shift, at the divide in force now.
      const t = ticksSinceLoad(c, w);
      const dLo = t.lo / c.divide;
      const dHi = t.hi / c.divide;
      const n = c.tmict + 1n;
      const rule = `QEMU apic_get_current_count(): d = (now − load) / ${c.divide}, d ∈ [${dLo}, ${dHi}] since the TMICT write of event ${c.armedBy}; ${mode === 'periodic' ? 'IC − d mod (IC+1)' : 'IC − d, 0 once d ≥ IC'}`;
      let allowed: ReadRange[];
      if (mode === 'one-shot') allowed = [{ min: dHi >= c.tmict ? 0n : c.tmict - dHi, max: dLo >= c.tmict ? 0n : c.tmict - dLo }];
      else if (dHi - dLo >= n) allowed = [{ min: 0n, max: c.tmict }];
      else if (dLo / n === dHi / n) allowed = [{ min: c.tmict - (dHi % n), max: c.tmict - (dLo % n) }];
      else allowed = [{ min: 0n, max: c.tmict - (dLo % n) }, { min: c.tmict - (dHi % n), max: c.tmict }];
      return { ...base, allowed, rule };
    }
    if (c.expired) return only(0n, 'the one-shot reached 0: "the timer remains at its 0 value until reprogrammed" (SDM §10.5.4)');
    const iv = nextOf(c);
    const tpc = tpcOf(c.divide);
    const slack = (x: bigint) => (ppb === 0n ? 0n : ceilDiv((x < 0n ? -x : x) * ppb, 1_000_000_000n));
    let xLo = iv.lo - w.hi;
    let xHi = iv.hi - w.lo;
    xLo -= slack(xLo);
    xHi += slack(xHi);
    const cnt = (x: bigint, up: boolean) => (up ? ceilDiv(x * tpc.den, tpc.num) : floorDiv(x * tpc.den, tpc.num));
    const rule = `TMCCT = time to the next expiry (${hex(iv.lo)}..${hex(iv.hi)}) / (${c.divide} × tscHz/apicBusHz) (SDM §10.5.4: counts down at bus clock / divide)`;
    let allowed: ReadRange[];
    let single = false;
    if (mode === 'one-shot') {
      allowed = [{ min: xLo <= 0n ? 0n : cnt(xLo, false), max: minB(xHi <= 0n ? 0n : cnt(xHi, true), c.periodCounts) }];
      single = xLo > 0n;
    } else {
      const P = c.period;
      const Pc = c.pendingDivide === null ? c.periodCounts : maxB(c.periodCounts, periodOf(c.tmict, c.pendingDivide, true).counts);
      const bucket = (x: bigint) => floorDiv(x * P.den, P.num);
      const modTsc = (x: bigint) => x - ceilDiv(bucket(x) * P.num, P.den); // x mod P, rounded to whole TSC cycles
      if ((xHi - xLo) * P.den >= P.num) allowed = [{ min: 0n, max: Pc }];
      else if (bucket(xLo) === bucket(xHi)) {
        allowed = [{ min: maxB(0n, cnt(modTsc(xLo) - 1n, false)), max: minB(Pc, cnt(modTsc(xHi) + 1n, true)) }];
        single = xLo > 0n;
      } else allowed = [
        { min: 0n, max: minB(Pc, cnt(modTsc(xHi) + 1n, true)) },
        { min: maxB(0n, cnt(modTsc(xLo) - 1n, false)), max: Pc },
      ];
    }
    let continuity: TmcctContinuity | undefined;
    if (single && c.lastRead && c.lastRead.emitted === c.emitted) {
      continuity = { fromRead: c.lastRead.eventIndex, fromWindow: c.lastRead.window, fromTpc: c.lastRead.tpc, toTpc: tpc, rescales: [...c.lastRead.rescales], ppb };
    }
    c.lastRead = single ? { eventIndex: i, window: w, tpc, rescales: [], emitted: c.emitted } : null;
    return { ...base, allowed, rule, ...(continuity ? { continuity } : {}) };
  }

  function deadlineRead(i: number, w: Interval): LapicReadExpectation {
    const base = { eventIndex: i, register: 'tsc-deadline' as const, window: w };
    const zero = [{ min: 0n, max: 0n }];
    if (mode !== 'tsc-deadline') return { ...base, allowed: zero, rule: 'not in TSC-deadline mode: "the IA32_TSC_DEADLINE MSR reads zero" (SDM §10.5.4.1)' };
    const d = armed && armed.kind === 'deadline' ? armed : null;
    if (!d) return { ...base, allowed: zero, rule: 'the deadline timer is disarmed: the MSR reads 0 (SDM §10.5.4.1)' };
    const D = [{ min: d.value, max: d.value }];
    const either = [...D, ...zero];
    if (!d.fired) {
      if (w.hi < d.next.lo) return { ...base, allowed: D, rule: `armed with ${hex(d.value)}, not yet reached: the MSR reads the deadline` };
      if (masked) return { ...base, allowed: switches.maskedDeadlineClearsMsr ? either : D, rule: 'the deadline may be expiring while LVTT is masked' };
      return { ...base, allowed: either, rule: 'the deadline may be expiring: the MSR clears when the timer fires (SDM §10.5.4.1)', clearsAfter: d.next.lo };
    }
    const m = d.msr;
    if (m?.kind === 'held') return { ...base, allowed: D, rule: 'the masked expiry is held: KVM clears the MSR only when it injects (kvm_apic_inject_pending_timer_irqs())' };
    if (m?.kind === 'until-expiry') return { ...base, allowed: m.at.hi < w.lo ? zero : either, rule: 'the deadline expired: "It then disarms the timer and clears the IA32_TSC_DEADLINE MSR" (SDM §10.5.4.1)' };
    if (m?.kind === 'until-delivery') return { ...base, allowed: either, rule: 'the deadline fired: the MSR reads 0 once the interrupt has been delivered (SDM §10.5.4.1; KVM clears it at injection)', clearsAfter: m.after };
    return { ...base, allowed: either, rule: 'the deadline fired' };
  }

  return {
    ...deliveryOf(events, timeline, quiet),
    interrupts,
    reads,
    vectors: [...vectors].sort((a, b) => a - b),
    switches,
  };
}

/**
 * An expiry E ∈ iv rescaled by a TDCR write at w ∈ window: E' = w + (E − w)·r (KVM
 * update_target_expiration(); the remaining time is scaled by new/old). E' is increasing in E and,
 * as ∂E'/∂w = 1 − r, in w when r < 1; the bounds are the corners. Requires iv.lo ≥ window.hi.
 */
export function rescaleInterval(iv: Interval, window: Interval, r: Ratio, ppb: bigint): Interval {
  const slower = r.num > r.den; // r > 1
  const wLo = slower ? window.hi : window.lo;
  const wHi = slower ? window.lo : window.hi;
  return { lo: wLo + durLo(maxB(iv.lo - wLo, 0n), r, ppb), hi: wHi + durHi(maxB(iv.hi - wHi, 0n), r, ppb) };
}

// ---------------------------------------------------------------------------------------------
// The judge

export interface ObservedRead {
  readonly eventIndex: number;
  readonly value: bigint | number;
}

export interface LapicJudgeOptions {
  /** The calibrated bound on delivery lateness after an expiry, TSC cycles (common.ts ExpiryJudgeOptions). */
  readonly latenessTsc: bigint;
  /** How long before its logged TSC the ISR may have accepted the interrupt (common.ts). Default 0. */
  readonly isrEntryTsc?: bigint;
}

const inRanges = (v: bigint, rs: readonly ReadRange[]) => rs.some((r) => v >= r.min && v <= r.max);

/**
 * Differences between a run and the prediction: rules never-early, exact-count, immediate,
 * spurious-after-disarm (interrupts of the timer's vectors, common.ts judgeExpiries()), tmcct-range,
 * tmcct-continuous-across-tdcr (a TMCCT read checked against the observed value of the read before
 * it in the same count: continuous across TDCR writes, with the new slope at once) and
 * tsc-deadline-msr.
 */
export function judgeLapic(prediction: LapicPrediction, observedInterrupts: readonly ObservedInterrupt[], observedReads: readonly ObservedRead[], options: LapicJudgeOptions): TimerDifference[] {
  const vs = new Set(prediction.vectors);
  const mine = observedInterrupts.filter((o) => vs.has(o.vector));
  const diffs = judgeExpiries(prediction.interrupts, prediction.quiet, mine, {
    latenessTsc: options.latenessTsc,
    endTsc: prediction.endTsc,
    blocked: prediction.blocked,
    eois: prediction.autoEoi ? null : prediction.eois,
    delivery: 'merge-while-pending',
    source: 'LAPIC timer',
    ...(options.isrEntryTsc === undefined ? {} : { isrEntryTsc: options.isrEntryTsc }),
  });
  const value = new Map<number, bigint>();
  for (const r of observedReads) value.set(r.eventIndex, BigInt(r.value));
  const okRead = new Set<number>();
  for (const exp of prediction.reads) {
    const v = value.get(exp.eventIndex);
    if (v === undefined) continue;
    let allowed = exp.allowed;
    let rule = exp.rule;
    if (exp.clearsAfter !== undefined && mine.some((o) => o.tsc >= exp.clearsAfter! && o.tsc < exp.window.lo)) {
      allowed = [{ min: 0n, max: 0n }];
      rule = `the timer interrupt was delivered before the read: the MSR is cleared (SDM §10.5.4.1)`;
    }
    const name = exp.register === 'tmcct' ? 'TMCCT' : 'IA32_TSC_DEADLINE';
    if (!inRanges(v, allowed)) {
      diffs.push({
        rule: exp.register === 'tmcct' ? 'tmcct-range' : 'tsc-deadline-msr',
        summary: `${name} read by event ${exp.eventIndex} returned ${v}, outside ${allowed.map((r) => `[${r.min}, ${r.max}]`).join(' ∪ ')} (${rule})`,
        expected: { allowed, rule },
        observed: v,
        eventIndex: exp.eventIndex,
      });
      continue;
    }
    okRead.add(exp.eventIndex);
    const c = exp.continuity;
    if (!c || !okRead.has(c.fromRead)) continue;
    const v1 = value.get(c.fromRead)!;
    if (v1 === 0n) continue;
    const range = continuityRange(c, v1, exp.window);
    if (range && (v < range.min || v > range.max)) {
      const across = c.rescales.length > 0;
      diffs.push({
        rule: across ? 'tmcct-continuous-across-tdcr' : 'tmcct-range',
        summary: across
          ? `TMCCT read by event ${exp.eventIndex} returned ${v}; from ${v1} at event ${c.fromRead} and the TDCR write between, a continuous count at the new slope reads [${range.min}, ${range.max}] (KVM c301b909, bare metal: "the TMCCT does not change or make a big jump in value, but the rate at which it count down change")`
          : `TMCCT read by event ${exp.eventIndex} returned ${v}; from ${v1} at event ${c.fromRead} the elapsed TSC allows [${range.min}, ${range.max}] (SDM §10.5.4: counts down at bus clock / divide)`,
        expected: { ...range, fromRead: c.fromRead, fromValue: v1, rescales: c.rescales },
        observed: v,
        eventIndex: exp.eventIndex,
      });
    }
  }
  return diffs;
}

/** The TMCCT a read may return given the value v1 an earlier read of the same count returned. */
export function continuityRange(c: TmcctContinuity, v1: bigint, window: Interval): ReadRange | null {
  // TMCCT = floor(remaining / tpc): remaining ∈ [v1·tpc, (v1+1)·tpc] at the earlier read.
  let e: Interval = { lo: c.fromWindow.lo + durLo(v1, c.fromTpc, c.ppb), hi: c.fromWindow.hi + durHi(v1 + 1n, c.fromTpc, c.ppb) };
  for (const r of c.rescales) {
    if (e.lo < r.hi) return null;
    e = rescaleInterval(e, r, r, c.ppb);
  }
  const remLo = e.lo - window.hi;
  const remHi = e.hi - window.lo;
  if (remLo <= 0n) return null;
  const slack = (x: bigint) => (c.ppb === 0n ? 0n : ceilDiv(x * c.ppb, 1_000_000_000n));
  return { min: maxB(0n, floorDiv((remLo - slack(remLo)) * c.toTpc.den, c.toTpc.num) - 1n), max: ceilDiv((remHi + slack(remHi)) * c.toTpc.den, c.toTpc.num) };
}
