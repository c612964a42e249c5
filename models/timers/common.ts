/**
 * What the timer models share: time as guest TSC (bigint), stamped guest actions, exact rational
 * durations, the clock facts the guest can see, and the one judge of expiry-driven interrupts that
 * the LAPIC and PIT models use (the RTC has its own, because its IRQ line stays raised until
 * register C is read).
 *
 * Time. Every instant is a guest TSC value. The guest stamps each action with the TSC read just
 * before and just after it (LFENCE-serialised RDTSC), so an action happened somewhere in
 * [tscBefore, tscAfter]; the models carry that uncertainty as closed intervals and never assume
 * more. Durations are exact rationals (counts × TSC Hz / device Hz) rounded outwards: earliest
 * times down, latest times up. All vCPUs read one synchronised TSC (KVM keeps the guest TSC of the
 * vCPUs of a VM in sync; kvmprop's guest never writes IA32_TSC), so stamps from different vCPUs
 * compare directly.
 *
 * Skew. KVM and QEMU count LAPIC, PIT and RTC time in host nanoseconds (CLOCK_MONOTONIC, which NTP
 * may slew by up to 500 ppm), not in guest TSC cycles, and the TSC frequency the guest learns can
 * be rounded (CPUID 0x4000_0010 is in kHz). `skewPpm` widens every device-clock duration by that
 * many parts per million each way; 0 (the default) asserts the two clocks agree exactly. It never
 * applies to TSC-deadline mode, whose deadline is a TSC value (SDM §10.5.4.1).
 *
 * Interrupt accounting (SDM Vol. 3A §10.8.4, "Interrupt Acceptance for Fixed Interrupts"): the IRR
 * holds at most one pending interrupt per vector, and an interrupt whose vector is already in
 * service waits in the IRR until EOI. So expiries of one source can merge into one delivery only
 * while an earlier one is still pending and unserviced; every delivery needs an expiry of its own.
 */

export interface Stamp {
  /** Guest TSC read just before the action. */
  readonly tscBefore: bigint;
  /** Guest TSC read just after it. */
  readonly tscAfter: bigint;
}

/** A closed TSC interval [lo, hi]. */
export interface Interval {
  readonly lo: bigint;
  readonly hi: bigint;
}

/** An exact non-negative rational (TSC cycles per device period, ...). */
export interface Ratio {
  readonly num: bigint;
  readonly den: bigint;
}

/** One interrupt as the guest logged it: the TSC at ISR entry and the vector. */
export interface ObservedInterrupt {
  readonly tsc: bigint;
  readonly vector: number;
  /**
   * KVM steal time this vCPU accrued since its previous logged interrupt (or since steal time was
   * enabled, for the first), µs: how long the host kept it runnable but not running meanwhile.
   * Absent where the guest did not log steal time.
   */
  readonly stealGapUs?: number;
}

/** The rule a difference breaks. Each model's header says which rules it judges. */
export type TimerRule =
  | 'never-early'
  | 'exact-count'
  | 'immediate'
  | 'spurious-after-disarm'
  | 'tmcct-range'
  | 'tmcct-continuous-across-tdcr'
  | 'tsc-deadline-msr'
  | 'pit-count-read'
  | 'rtc-clock-advance'
  | 'rtc-clock-rate'
  | 'window-count'
  | 'slew-never-ahead'
  | 'slew-converges'
  | 'kvmclock-arithmetic'
  | 'kvmclock-version'
  | 'kvmclock-monotonic-vcpu'
  | 'kvmclock-monotonic-cross-vcpu'
  | 'kvmclock-vs-tsc'
  | 'kvmclock-rate';

/**
 * One way the observation differs from the model. The property layer turns it into its own
 * difference type; `eventIndex` is the timeline event the expectation came from (the arming write,
 * the read), or null for a rule over the whole log.
 */
export interface TimerDifference {
  readonly rule: TimerRule;
  readonly summary: string;
  readonly expected: unknown;
  readonly observed: unknown;
  readonly eventIndex: number | null;
}

// ---------------------------------------------------------------------------------------------
// Exact arithmetic

export function floorDiv(a: bigint, b: bigint): bigint {
  if (b <= 0n) throw new Error('floorDiv: divisor must be positive');
  const q = a / b;
  return a % b !== 0n && a < 0n ? q - 1n : q;
}

export function ceilDiv(a: bigint, b: bigint): bigint {
  return -floorDiv(-a, b);
}

export const minB = (a: bigint, b: bigint): bigint => (a < b ? a : b);
export const maxB = (a: bigint, b: bigint): bigint => (a > b ? a : b);

export function toBig(v: number | bigint, what: string): bigint {
  if (typeof v === 'bigint') return v;
  if (!Number.isInteger(v)) throw new Error(`${what} must be an integer (got ${v})`);
  return BigInt(v);
}

/** Parts per billion from ppm (0 for undefined). */
export function ppbOf(skewPpm: number | undefined): bigint {
  if (skewPpm === undefined || skewPpm === 0) return 0n;
  if (!(skewPpm >= 0) || skewPpm > 1e6) throw new Error(`skewPpm must be in [0, 1e6] (got ${skewPpm})`);
  return BigInt(Math.round(skewPpm * 1000));
}

const BILLION = 1_000_000_000n;

/** k × ratio, rounded down, shortened by the skew: the least a device duration can last in TSC. */
export function durLo(k: bigint, r: Ratio, ppb: bigint): bigint {
  return floorDiv(k * r.num * (BILLION - ppb), r.den * BILLION);
}

/** k × ratio, rounded up, lengthened by the skew: the most a device duration can last in TSC. */
export function durHi(k: bigint, r: Ratio, ppb: bigint): bigint {
  return ceilDiv(k * r.num * (BILLION + ppb), r.den * BILLION);
}


// ---------------------------------------------------------------------------------------------
// Clock facts the guest can see

export interface CpuidClockLeaves {
  /** CPUID.15H: EAX denominator, EBX numerator of the TSC/crystal ratio, ECX crystal Hz (0: not enumerated). */
  readonly leaf15?: { readonly eax: number; readonly ebx: number; readonly ecx: number };
  /** CPUID.16H: EAX processor base frequency in MHz. */
  readonly leaf16?: { readonly eax: number };
  /** The hypervisor timing leaf 0x4000_0010 (QEMU with vmware-cpuid-freq): EAX TSC kHz, EBX APIC bus kHz. */
  readonly leaf40000010?: { readonly eax: number; readonly ebx: number };
}

export interface GuestClockRates {
  readonly tscHz: bigint;
  /** The APIC timer's input clock, when the guest can see it (0x4000_0010 EBX); else null (KVM's default is 1 GHz). */
  readonly apicBusHz: bigint | null;
  /** How far the true rate may be from tscHz, in ppm (the rounding of the source). */
  readonly uncertaintyPpm: number;
  readonly source: string;
}

/**
 * The TSC rate from what CPUID shows the guest, best source first, or null: then calibrate it
 * against a second clock (calibrateTscHz).
 *  - 0x4000_0010 EAX (kHz): exact to ±500 Hz.
 *  - CPUID.15H with ECX ≠ 0: TSC = ECX × EBX / EAX exactly (SDM Vol. 2A CPUID leaf 15H: "TSC frequency
 *    = core crystal clock frequency * EBX/EAX").
 *  - CPUID.15H with ECX = 0 and CPUID.16H: the SDM says the crystal "is not enumerated"; 16H's base MHz
 *    (rounded to 1 MHz, and only nominal) stands in, with a 1 MHz uncertainty.
 */
export function tscRateFromCpuid(c: CpuidClockLeaves): GuestClockRates | null {
  const kvm = c.leaf40000010;
  if (kvm && kvm.eax > 0) {
    const tscHz = BigInt(kvm.eax >>> 0) * 1000n;
    return {
      tscHz,
      apicBusHz: kvm.ebx > 0 ? BigInt(kvm.ebx >>> 0) * 1000n : null,
      uncertaintyPpm: 500 / (Number(tscHz) / 1e6),
      source: 'CPUID 0x40000010 EAX (TSC kHz)',
    };
  }
  const l15 = c.leaf15;
  if (l15 && l15.eax > 0 && l15.ebx > 0) {
    if (l15.ecx > 0) {
      const num = BigInt(l15.ecx >>> 0) * BigInt(l15.ebx >>> 0);
      const den = BigInt(l15.eax >>> 0);
      return { tscHz: num / den, apicBusHz: null, uncertaintyPpm: 1e6 / Number(num / den), source: 'CPUID 15H: ECX × EBX / EAX' };
    }
    if (c.leaf16 && c.leaf16.eax > 0) {
      const mhz = c.leaf16.eax >>> 0;
      return { tscHz: BigInt(mhz) * 1_000_000n, apicBusHz: null, uncertaintyPpm: 1e6 / mhz, source: 'CPUID 16H base MHz (15H ECX = 0: crystal not enumerated)' };
    }
  }
  return null;
}

/**
 * The TSC rate against a second clock: two samples, each a stamped read of the other clock in ns.
 * The stamp widths bound the error: the rate is Δtsc·1e9/Δns, known to ±(widths)/Δtsc.
 */
export function calibrateTscHz(a: Stamp & { readonly ns: bigint }, b: Stamp & { readonly ns: bigint }): GuestClockRates {
  const dns = b.ns - a.ns;
  if (dns <= 0n) throw new Error('calibrateTscHz: the second sample must be later');
  const mid = (s: Stamp) => (s.tscBefore + s.tscAfter) / 2n;
  const dtsc = mid(b) - mid(a);
  const width = b.tscAfter - b.tscBefore + (a.tscAfter - a.tscBefore);
  return {
    tscHz: (dtsc * BILLION) / dns,
    apicBusHz: null,
    uncertaintyPpm: (Number(width) / Number(dtsc)) * 1e6,
    source: 'calibrated against a second clock',
  };
}

// ---------------------------------------------------------------------------------------------
// Interrupt-enable state, shared by every timeline

/** Timeline events every model understands: they change no timer. */
export type GuestControlEvent = Stamp &
  (
    | { readonly kind: 'sti' } // interrupts enabled (after STI's one-instruction shadow)
    | { readonly kind: 'cli' }
    | { readonly kind: 'eoi' } // an EOI the guest wrote outside its ISR
    | { readonly kind: 'mark' } // a stamp with no side effect (a wait's end, a window edge)
  );

/**
 * Intervals in which interrupts were disabled: from a CLI's tscBefore to the next STI's tscAfter
 * (or +∞, as endTsc, when none follows).
 */
export function disabledWindows(events: readonly (Stamp & { readonly kind: string })[], enabledAtStart: boolean, endTsc: bigint): Interval[] {
  const out: Interval[] = [];
  let from: bigint | null = enabledAtStart ? null : (events[0]?.tscBefore ?? endTsc);
  for (const e of events) {
    if (e.kind === 'cli' && from === null) from = e.tscBefore;
    else if (e.kind === 'sti' && from !== null) {
      out.push({ lo: from, hi: e.tscAfter });
      from = null;
    }
  }
  if (from !== null) out.push({ lo: from, hi: maxB(endTsc, from) });
  return out;
}

/** Whether interrupts are enabled right after each event. */
export function enabledAfter(events: readonly { readonly kind: string }[], enabledAtStart: boolean): boolean[] {
  let on = enabledAtStart;
  return events.map((e) => {
    if (e.kind === 'sti') on = true;
    else if (e.kind === 'cli') on = false;
    return on;
  });
}

export type ImmediateBy = 'action-stamp' | 'next-stamp';

/**
 * The TSC by which an interrupt made deliverable by event i ("immediate": a TSC deadline already
 * passed, an unmask with an expiry pending) must have arrived. SDM §10.5.4.1 and §10.8.4: once
 * deliverable and not blocked, the interrupt is taken at the next instruction boundary; the guest's
 * stamp after the action is an LFENCE-serialised RDTSC that follows the (serializing) WRMSR or the
 * trapped APIC write, so:
 *  - 'action-stamp': the action's own tscAfter, when interrupts are enabled after it; else the
 *    tscAfter of the STI that enables them (taken after STI's shadow).
 *  - 'next-stamp': one stamp later (the next event's tscAfter), for a guest whose stamp may run
 *    before the return to the interrupted context.
 * null when interrupts are never enabled again in the timeline.
 */
export function immediateBound(events: readonly (Stamp & { readonly kind: string })[], enabled: readonly boolean[], i: number, by: ImmediateBy): bigint | null {
  let j = i;
  if (!enabled[i]) {
    j = events.findIndex((e, k) => k > i && e.kind === 'sti');
    if (j < 0) return null;
  }
  if (by === 'action-stamp') return events[j]!.tscAfter;
  return events[j + 1]?.tscAfter ?? null;
}

// ---------------------------------------------------------------------------------------------
// Expected interrupts and their judge (LAPIC, PIT)

/** One interrupt a model predicts for an expiry. */
export interface ExpectedInterrupt {
  readonly vector: number;
  /** No delivery of it before this TSC (never early). */
  readonly earliest: bigint;
  /** The expiry happens no later than this TSC; delivery is due within the lateness bound after it. */
  readonly expiryLatest: bigint;
  /** For "immediate" deliveries: it must have arrived by this TSC (when not blocked); else null. */
  readonly latest: bigint | null;
  /**
   * 'once': the expiry certainly happens and must be delivered (merging with a neighbour while one
   * is pending, where the source merges). 'at-most-once': an expiry that a racing action (a disarm,
   * a re-arm, a mask whose stamp window overlaps the expiry) may have cancelled; never required.
   */
  readonly count: 'once' | 'at-most-once';
  /** The timeline event that armed it. */
  readonly eventIndex: number;
  /** The rule that predicts it, with its source. */
  readonly why: string;
}

/** An interval in which no interrupt of the source may arrive (after a disarm, while masked). */
/** What every timer's prediction says about delivery, whatever the source. */
export interface DeliveryPrediction {
  /** No interrupt of the source in these intervals. */
  readonly quiet: readonly QuietInterval[];
  /** Interrupts disabled (CLI..STI). */
  readonly blocked: readonly Interval[];
  /** tscAfter of each 'eoi' event. */
  readonly eois: readonly bigint[];
  readonly autoEoi: boolean;
  readonly endTsc: bigint;
}

/** The delivery facts of a timeline: when interrupts were disabled, the EOIs, and how it ends. */
export function deliveryOf(
  events: readonly (Stamp & { readonly kind: string })[],
  timeline: { readonly interruptsEnabled?: boolean; readonly autoEoi?: boolean; readonly endTsc: bigint },
  quiet: readonly QuietInterval[],
): DeliveryPrediction {
  return {
    quiet,
    blocked: disabledWindows(events, timeline.interruptsEnabled ?? true, timeline.endTsc),
    eois: events.filter((e) => e.kind === 'eoi').map((e) => e.tscAfter),
    autoEoi: timeline.autoEoi ?? true,
    endTsc: timeline.endTsc,
  };
}

export interface QuietInterval {
  readonly from: bigint;
  /** Exclusive end (the tscBefore of the action that re-arms), or null: to the end of the log. */
  readonly to: bigint | null;
  readonly eventIndex: number;
  readonly why: string;
}

export interface ExpiryJudgeOptions {
  /**
   * The calibrated bound on how late a deliverable interrupt may arrive after its expiry, in TSC
   * cycles (the property layer's measured quantile). Expiries whose due time is past endTsc are
   * not judged for loss.
   */
  readonly latenessTsc: bigint;
  readonly endTsc: bigint;
  /** Intervals with interrupts disabled (disabledWindows()). */
  readonly blocked: readonly Interval[];
  /**
   * EOI stamps (tscAfter) when the guest's ISR does not EOI itself; a vector in service blocks its
   * next delivery until the EOI (SDM §10.8.4). null: the ISR EOIs at once.
   */
  readonly eois: readonly bigint[] | null;
  /**
   * 'merge-while-pending': expiries may merge into one delivery while one is pending (the LAPIC
   * timer, SDM §10.8.4; KVM's lapic_timer.pending; a PIT without re-injection).
   * 'every-expiry': each expiry is delivered on its own, later if need be (KVM's PIT with
   * re-injection: pit_timer_fn counts `pending`, kvm_pit_ack_irq re-injects one per EOI).
   */
  readonly delivery: 'merge-while-pending' | 'every-expiry';
  /** Name of the source in summaries ('LAPIC timer', 'PIT channel 0'). */
  readonly source: string;
  /**
   * Under 'merge-while-pending': how long before its logged TSC an ISR may have accepted the
   * interrupt (the ISR's RDTSC follows the acceptance by its entry code), TSC cycles. Default 0.
   */
  readonly isrEntryTsc?: bigint;
}

/** Blocked intervals (IF=0, vector in service until EOI) as a function: the first TSC ≥ t not blocked. */
export function unblockedFrom(intervals: readonly Interval[]): (t: bigint) => bigint {
  const sorted = [...intervals].sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));
  const merged: { lo: bigint; hi: bigint }[] = [];
  for (const iv of sorted) {
    const last = merged[merged.length - 1];
    if (last && iv.lo <= last.hi) last.hi = maxB(last.hi, iv.hi);
    else merged.push({ lo: iv.lo, hi: iv.hi });
  }
  return (t) => {
    for (const iv of merged) {
      if (iv.lo > t) break;
      if (t <= iv.hi) return iv.hi;
    }
    return t;
  };
}

/** Intervals in which each delivery's vector stays in service: ISR entry to the next EOI's stamp. */
export function inServiceWindows(deliveries: readonly bigint[], eois: readonly bigint[] | null, endTsc: bigint): Interval[] {
  if (eois === null) return [];
  const sortedEoi = [...eois].sort((a, b) => (a < b ? -1 : 1));
  return deliveries.map((o) => ({ lo: o, hi: sortedEoi.find((e) => e > o) ?? endTsc }));
}

const byTsc = (a: ObservedInterrupt, b: ObservedInterrupt) => (a.tsc < b.tsc ? -1 : a.tsc > b.tsc ? 1 : 0);
const byEarliest = (a: { e: ExpectedInterrupt }, b: { e: ExpectedInterrupt }) => (a.e.earliest < b.e.earliest ? -1 : a.e.earliest > b.e.earliest ? 1 : 0);

export const hex = (v: bigint) => `0x${v.toString(16)}`;

/**
 * Judge observed deliveries of one source against the expected ones.
 *  1. spurious-after-disarm: a delivery inside a quiet interval (moved past the in-service time of a
 *     delivery before it, which cannot be prevented).
 *  2. never-early / exact-count (extra): deliveries of a vector, in order, matched first-in-first-out
 *     to expected interrupts whose earliest time has passed; each needs one of its own (a delivery
 *     cannot come from an expiry that has not happened, nor two from one). Under
 *     'merge-while-pending' the expiry must also be one that may have come after the previous
 *     delivery was accepted (acceptance empties the IRR; expiries before it merged into it). An
 *     unmatched delivery with an expected interrupt still to come is early; with none left, it is
 *     one too many.
 *  3. exact-count (lost) / immediate: every 'once' interrupt whose due time (its `latest`, or its
 *     expiry plus the lateness bound, moved past blocked intervals) is before endTsc must be covered
 *     by a delivery in [earliest, due]; under 'merge-while-pending' one delivery may cover several
 *     (they merged while pending), under 'every-expiry' each needs its own.
 */
export function judgeExpiries(
  expected: readonly ExpectedInterrupt[],
  quiet: readonly QuietInterval[],
  observed: readonly ObservedInterrupt[],
  opts: ExpiryJudgeOptions,
): TimerDifference[] {
  const diffs: TimerDifference[] = [];
  const all = [...observed].sort(byTsc);
  const service = inServiceWindows(
    all.map((o) => o.tsc),
    opts.eois,
    opts.endTsc,
  );
  const unblock = unblockedFrom([...opts.blocked, ...service]);
  const serviceEnd = (t: bigint): bigint => {
    // The end of an in-service window of an earlier delivery that contains t (a pending one may follow).
    let end = t;
    for (const s of service) if (s.lo < end && end <= s.hi) end = s.hi;
    return end;
  };

  // 1. Quiet intervals.
  const spurious = new Set<ObservedInterrupt>();
  for (const q of quiet) {
    const from = serviceEnd(q.from);
    for (const o of all) {
      if (o.tsc > from && (q.to === null || o.tsc < q.to) && !spurious.has(o)) {
        spurious.add(o);
        diffs.push({
          rule: 'spurious-after-disarm',
          summary: `${opts.source}: interrupt (vector ${o.vector}) at TSC ${hex(o.tsc)} while the timer was disarmed or masked (from ${hex(from)}${q.to === null ? '' : ` to ${hex(q.to)}`}: ${q.why})`,
          expected: { noInterruptFrom: from, to: q.to, why: q.why },
          observed: o,
          eventIndex: q.eventIndex,
        });
      }
    }
  }
  const live = all.filter((o) => !spurious.has(o));

  const vectors = new Set<number>([...expected.map((e) => e.vector), ...live.map((o) => o.vector)]);
  for (const vector of [...vectors].sort((a, b) => a - b)) {
    const exp = expected
      .map((e, index) => ({ e, index }))
      .filter((x) => x.e.vector === vector)
      .sort(byEarliest);
    const obs = live.filter((o) => o.vector === vector);

    // 2. FIFO matching. Merging: acceptance empties the IRR, so each delivery needs an expiry that
    // may have come after the previous acceptance; those certainly before it merged into it.
    let j = 0;
    let prev: bigint | null = null;
    const earlyFor = new Set<number>();
    for (const o of obs) {
      if (opts.delivery === 'merge-while-pending' && prev !== null) {
        const accepted = prev - (opts.isrEntryTsc ?? 0n);
        while (j < exp.length && exp[j]!.e.expiryLatest < accepted) j++;
      }
      prev = o.tsc;
      if (j < exp.length && exp[j]!.e.earliest <= o.tsc) {
        j++;
        continue;
      }
      const next = exp[j];
      if (next) {
        earlyFor.add(next.index);
        diffs.push({
          rule: 'never-early',
          summary: `${opts.source}: interrupt (vector ${vector}) at TSC ${hex(o.tsc)} before any expiry was due: the next may come no earlier than ${hex(next.e.earliest)} (${next.e.why})`,
          expected: { earliest: next.e.earliest, why: next.e.why },
          observed: o,
          eventIndex: next.e.eventIndex,
        });
      } else {
        diffs.push({
          rule: 'exact-count',
          summary: `${opts.source}: interrupt (vector ${vector}) at TSC ${hex(o.tsc)} is one more than the ${exp.length} expiries the schedule allows (duplicated or spurious)`,
          expected: { expiries: exp.length },
          observed: o,
          eventIndex: exp[exp.length - 1]?.e.eventIndex ?? null,
        });
      }
    }

    // 3. Coverage.
    const due = (e: ExpectedInterrupt): bigint => (e.latest !== null ? unblock(e.latest) : unblock(e.expiryLatest) + opts.latenessTsc);
    const lost = (x: { e: ExpectedInterrupt; index: number }, why: string) => {
      const d = due(x.e);
      const immediate = x.e.latest !== null;
      diffs.push({
        rule: immediate ? 'immediate' : 'exact-count',
        summary: immediate
          ? `${opts.source}: the interrupt (vector ${vector}) made deliverable by event ${x.e.eventIndex} did not arrive by TSC ${hex(d)} (${x.e.why}); ${why}`
          : `${opts.source}: expiry due by TSC ${hex(x.e.expiryLatest)} (${x.e.why}) was never delivered within the lateness bound (by ${hex(d)}); ${why}`,
        expected: { vector, earliest: x.e.earliest, dueBy: d, why: x.e.why },
        observed: { deliveriesInWindow: 0 },
        eventIndex: x.e.eventIndex,
      });
    };
    if (opts.delivery === 'merge-while-pending') {
      for (const x of exp) {
        if (x.e.count !== 'once' || earlyFor.has(x.index)) continue;
        const d = due(x.e);
        if (d > opts.endTsc) continue;
        if (!obs.some((o) => o.tsc >= x.e.earliest && o.tsc <= d)) lost(x, 'no delivery of the vector in its window');
      }
    } else {
      // Each 'once' expiry needs a delivery of its own; lateness only bounds the first of a backlog.
      const onces = exp.filter((x) => x.e.count === 'once' && !earlyFor.has(x.index));
      let k = 0;
      let matched = 0;
      for (const o of obs) {
        if (k < onces.length && onces[k]!.e.earliest <= o.tsc) {
          k++;
          matched++;
        }
      }
      const settled = onces.filter((x) => due(x.e) <= opts.endTsc);
      if (matched < settled.length) {
        const first = settled[matched]!;
        lost(first, `${settled.length - matched} of ${settled.length} settled expiries have no delivery of their own (each is re-injected, none may be dropped)`);
      }
    }
  }
  return diffs;
}

/** Deliveries of a vector set within [from, to). */
export function countIn(observed: readonly ObservedInterrupt[], vectors: ReadonlySet<number>, from: bigint, to: bigint): number {
  return observed.filter((o) => vectors.has(o.vector) && o.tsc >= from && o.tsc < to).length;
}
