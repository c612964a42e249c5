/**
 * Reference model of the MC146818 RTC periodic interrupt (IRQ8) under a schedule of register A
 * rate writes, register B PIE toggles and register C reads, and its judge.
 *
 * Datasheet rules (Motorola MC146818A; the register summary in kvm-rules-and-peers.md D.2):
 *  - Register A RS3..RS0 select a tap of the 32.768 kHz divider chain: RS = 0 off, RS 3..15 give
 *    32768 >> (RS−1) Hz, RS 1 and 2 alias RS 8 and 9 (256 and 128 Hz) with a 32.768 kHz time base.
 *    QEMU hw/rtc/mc146818rtc.h periodic_period_to_clock(): period = 1 << (RS−1) 32 kHz cycles,
 *    RS ≤ 2 → RS+7.
 *  - PF (register C bit 6) is set at each edge of the selected tap; with PIE (register B bit 6) the
 *    interrupt is raised (IRQF, bit 7). "Reading register C clears all flags" and lowers IRQ.
 *  - The phase of the first interrupt after a rate change is not specified (hardware follows the
 *    divider chain, which the datasheet does not tie to the write): a switch.
 *
 * QEMU rules (hw/rtc/mc146818rtc.c, the reference implementation; the RTC is always QEMU's, also
 * with the in-kernel irqchip):
 *  - the periodic timer is re-computed only when RS changes (cmos_ioport_write: `update_periodic_timer
 *    = (old ^ data) & 0x0f`) or PIE toggles: a write of the same rate keeps the phase;
 *  - a fresh start (PIE on, or RS from 0) arms the first tick one period after the write, on the 32 kHz
 *    grid (periodic_timer_update(): next = floor(now in 32 kHz cycles) + period);
 *  - the IRQ line stays raised until register C is read: a tick while it is raised (or, with KVM's
 *    in-kernel IOAPIC, while the previous RTC interrupt is not yet EOIed: rtc_irq_check_coalesced())
 *    delivers nothing. lost_tick_policy=discard (the default) loses it; lost_tick_policy=slew
 *    (`-rtc driftfix=slew`) counts it in irq_coalesced and re-injects it later (on the register C
 *    read, and from coalesced_timer at 2–8× the rate), rescaling the backlog to the new period on
 *    a rate change so that elapsed time is kept ("scale down the missing ... scale up").
 *
 * What is judged:
 *  - discard (the exact rule): each delivery needs a tick of its own that came after the previous
 *    delivery's acknowledgement (never-early, exact-count for one too many); the first tick after each
 *    acknowledgement must be delivered within the lateness bound (exact-count, lost); ticks during a
 *    raised line merge (they are the ticks that may be lost); none after PIE off or RS = 0
 *    (spurious-after-disarm); and per window between the guest's events, the count of deliveries is
 *    within the predicted tick count, widened by 1 at each window edge (a tick just before the window
 *    delivered inside it, one inside delivered after it) and by the ticks that fell while the line
 *    was raised (window-count). A fast clock (more deliveries than ticks) is caught by both.
 *  - slew, in time, as the guest's clock sees it: each delivery adds the period in force when it
 *    arrives. The guest's clock never runs ahead of elapsed PIE-on time by more than a period
 *    (slew-never-ahead), and once the backlog has had time to drain it is within a period behind
 *    (slew-converges; QEMU keeps "delivered + backlog + the time since the last tick = elapsed").
 *
 * Tolerance, stated: ±1 tick at each window edge; under 'first-within-new-period' each rate change
 * (and each fresh start) leaves the phase unknown within a period, so each segment's count is known
 * to ±1 (the predicted [min, max] widens by about one per change), and in the slew rules each
 * change adds one period of allowance. Under 'from-last-tick' (QEMU) the phase is carried over
 * and only the stamp widths remain. Arithmetic for a 1% fast clock over N ticks and C changes in a
 * window: it is flagged when 0.01·N > C + 2 under the default, when 0.01·N > 2 under QEMU's rule;
 * with 64↔1024 Hz flips (mean 544 Hz) that is segments longer than about 0.2 s under the default,
 * any flip rate and windows over ~0.4 s under QEMU's rule (rtc.test.ts works both cases).
 *
 * Not modelled: the update-ended and alarm interrupts (UIE/AIE; generators leave them off), the
 * divider bits of register A (taken as 010, normal operation), QMP rtc-reset-reinjection.
 */
import {
  deliveryOf,
  ceilDiv,
  durHi,
  durLo,
  floorDiv,
  hex,
  inServiceWindows,
  maxB,
  minB,
  ppbOf,
  toBig,
  unblockedFrom,
  type GuestControlEvent,
  type Interval,
  type ObservedInterrupt,
  type QuietInterval,
  type Ratio,
  type Stamp,
  type TimerDifference,
  type DeliveryPrediction,
} from './common.js';

export interface RtcClock {
  readonly tscHz: number | bigint;
  /** Tolerance between QEMU's rtc_clock (host time) and the guest TSC, ppm (common.ts). Default 0. */
  readonly skewPpm?: number;
}

export type RtcEvent =
  | (Stamp & { readonly kind: 'writeA'; readonly value: number })
  | (Stamp & { readonly kind: 'writeB'; readonly value: number })
  /** A read of register C outside the ISR (the guest acknowledges late, or early). */
  | (Stamp & { readonly kind: 'readC' })
  | GuestControlEvent;

export interface RtcTimeline {
  readonly events: readonly RtcEvent[];
  readonly endTsc: bigint;
  /** The vector IRQ8 is routed to. */
  readonly vector: number;
  /** Register A and B before the first event. Default QEMU's reset values 0x26 (RS 6, 1024 Hz) and 0x02 (PIE off). */
  readonly regA?: number;
  readonly regB?: number;
  /** The ISR reads register C itself at entry (default true); false: the acknowledgements are the 'readC' events. */
  readonly ackInIsr?: boolean;
  readonly interruptsEnabled?: boolean;
  /** The ISR EOIs itself (default true). */
  readonly autoEoi?: boolean;
}

export type RtcPhaseRule = 'first-within-new-period' | 'from-last-tick' | 'restart-at-write';

export interface RtcSwitches {
  /**
   * When the first tick comes after a rate change (and after a fresh start: PIE on, RS from 0).
   *  - 'first-within-new-period' (the datasheet is silent: any time in (write, write + new period]);
   *  - 'from-last-tick' (QEMU since 2017, periodic_timer_update() with period_change: "we should
   *    count the clock since last interrupt": the first is one new period after the last tick, at
   *    once if that is past; a fresh start comes one period after the write);
   *  - 'restart-at-write' (QEMU before 2017: each rewrite restarts the period from the write; the
   *    R1 slow clock).
   */
  readonly phaseAfterChange: RtcPhaseRule;
  /** QEMU's lost_tick_policy: 'discard' (the default) or 'slew' (-rtc driftfix=slew). */
  readonly lostTickPolicy: 'discard' | 'slew';
}

export const DATASHEET_RTC: RtcSwitches = Object.freeze({ phaseAfterChange: 'first-within-new-period', lostTickPolicy: 'discard' });
export const QEMU_RTC: RtcSwitches = Object.freeze({ phaseAfterChange: 'from-last-tick', lostTickPolicy: 'discard' });
export const QEMU_RTC_SLEW: RtcSwitches = Object.freeze({ phaseAfterChange: 'from-last-tick', lostTickPolicy: 'slew' });

/** The periodic rate in 32.768 kHz cycles per interrupt for RS (0: off). */
export function rtcPeriodCycles(rs: number): number {
  const code = rs & 0xf;
  if (code === 0) return 0;
  return 1 << ((code <= 2 ? code + 7 : code) - 1);
}

/** Hz for RS: 32768 >> (RS−1), with RS 1,2 aliasing 8,9. */
export const rtcRateHz = (rs: number): number => (rs & 0xf ? 32768 / rtcPeriodCycles(rs) : 0);

const REG_B_PIE = 0x40;
const MAX_TICKS = 2_000_000;

export interface RtcSegment {
  /** The event that started it. */
  readonly startEvent: number;
  readonly start: Interval;
  readonly rs: number;
  /** TSC per tick. */
  readonly period: Ratio;
  /** When its first tick comes. */
  readonly first: Interval;
  /** The window of the event that ended it (null: runs to endTsc). */
  readonly end: Interval | null;
  readonly endEvent: number | null;
  readonly phase: string;
}

export interface RtcTick {
  readonly lo: bigint;
  readonly hi: bigint;
  readonly segment: number;
  /** 'once': certainly happens; 'at-most-once': may have been cut by the event that ended its segment, or a PF left set. */
  readonly count: 'once' | 'at-most-once';
}

export interface RtcWindow {
  readonly from: bigint;
  readonly to: bigint;
  readonly fromEvent: number | null;
  readonly toEvent: number | null;
  /** Ticks in [from, to): at least min certainly, at most max possibly. */
  readonly ticks: { readonly min: number; readonly max: number };
}

export interface RtcPrediction extends DeliveryPrediction {
  readonly segments: readonly RtcSegment[];
  readonly ticks: readonly RtcTick[];
  readonly windows: readonly RtcWindow[];
  /** Register C reads outside the ISR. */
  readonly acks: readonly Interval[];
  readonly ackInIsr: boolean;
  readonly vector: number;
  readonly switches: RtcSwitches;
}

export function predictRtc(clock: RtcClock, timeline: RtcTimeline, switches: RtcSwitches = DATASHEET_RTC): RtcPrediction {
  const tscHz = toBig(clock.tscHz, 'tscHz');
  const ppb = ppbOf(clock.skewPpm);
  const events = timeline.events;
  const endTsc = timeline.endTsc;
  const tick32 = ceilDiv(tscHz, 32768n); // one 32 kHz cycle in TSC
  const periodOf = (rs: number): Ratio => ({ num: BigInt(rtcPeriodCycles(rs)) * tscHz, den: 32768n });

  let regA = timeline.regA ?? 0x26;
  let regB = timeline.regB ?? 0x02;
  const periodNow = () => ((regB & REG_B_PIE) !== 0 ? rtcPeriodCycles(regA) : 0);

  const segments: RtcSegment[] = [];
  const ticks: RtcTick[] = [];
  const quiet: QuietInterval[] = [];
  let cur: { startEvent: number; start: Interval; rs: number; period: Ratio; first: Interval; phase: string } | null = null;
  let quietFrom: { from: bigint; eventIndex: number } | null = { from: 0n, eventIndex: -1 };
  let everTicked = false;

  const tickAt = (s: { first: Interval; period: Ratio }, k: bigint): Interval => ({ lo: s.first.lo + durLo(k, s.period, ppb), hi: s.first.hi + durHi(k, s.period, ppb) });

  /** Close the running segment at w (null: at the end) and emit its ticks. */
  const close = (w: Interval | null, endEvent: number | null) => {
    if (!cur) return;
    const seg: RtcSegment = { ...cur, end: w, endEvent };
    const index = segments.length;
    segments.push(seg);
    const limit = w ? minB(w.hi, endTsc) : endTsc;
    for (let k = 0n; ; k++) {
      const t = tickAt(seg, k);
      if (t.lo > limit || (w && t.lo >= w.hi)) break;
      if (ticks.length >= MAX_TICKS) throw new Error(`RTC model: more than ${MAX_TICKS} ticks`);
      ticks.push({ lo: t.lo, hi: t.hi, segment: index, count: !w || t.hi < w.lo ? 'once' : 'at-most-once' });
      everTicked = true;
    }
    cur = null;
  };

  /** The last tick of the running segment at a write in w: its interval, or the virtual tick one period before the first. */
  const lastTickBefore = (w: Interval): Interval => {
    const s = cur!;
    let jmin = -1n;
    let jmax = -1n;
    for (let k = 0n; ; k++) {
      const t = tickAt(s, k);
      if (t.lo > w.hi) break;
      jmax = k;
      if (t.hi < w.lo) jmin = k;
    }
    const at = (k: bigint) => (k < 0n ? { lo: s.first.lo - durHi(1n, s.period, ppb), hi: s.first.hi - durLo(1n, s.period, ppb) } : tickAt(s, k));
    return { lo: at(jmin).lo, hi: at(jmax).hi };
  };

  for (let i = 0; i < events.length; i++) {
    const ev = events[i]!;
    if (ev.kind !== 'writeA' && ev.kind !== 'writeB') continue;
    const w: Interval = { lo: ev.tscBefore, hi: ev.tscAfter };
    const oldPeriod = periodNow();
    const changed = ev.kind === 'writeA' ? ((regA ^ ev.value) & 0x0f) !== 0 : ((regB ^ ev.value) & REG_B_PIE) !== 0;
    const pieOn = ev.kind === 'writeB' && (regB & REG_B_PIE) === 0 && (ev.value & REG_B_PIE) !== 0;
    if (ev.kind === 'writeA') regA = ev.value & 0x7f;
    else regB = ev.value;
    if (!changed) continue; // same rate (or PIE unchanged): the phase is kept
    const newPeriod = periodNow();
    const P = periodOf(regA);
    let first: Interval | null = null;
    let phase = '';
    if (newPeriod !== 0) {
      const pLo = durLo(1n, P, ppb);
      const pHi = durHi(1n, P, ppb);
      const fresh = oldPeriod === 0 || !cur;
      if (switches.phaseAfterChange === 'first-within-new-period') {
        first = { lo: w.lo, hi: w.hi + pHi };
        phase = `${fresh ? 'start' : 'rate change'}: the datasheet does not fix the phase; the first tick comes within one period (${rtcRateHz(regA)} Hz) of the write`;
      } else if (fresh || switches.phaseAfterChange === 'restart-at-write') {
        first = { lo: w.lo + pLo - tick32, hi: w.hi + pHi };
        phase = fresh
          ? 'start: one period after the write on the 32 kHz grid (QEMU periodic_timer_update(): next = cur_clock + period)'
          : 'rate change restarts the period at the write (QEMU before 2017)';
      } else {
        const last = lastTickBefore(w);
        if (switches.lostTickPolicy === 'slew') {
          const grid = (l: bigint, t: bigint) => {
            const m = maxB(1n, floorDiv((t - l) * P.den, P.num) + 1n);
            return l + durLo(m, P, ppb);
          };
          const a = grid(last.lo, w.lo);
          const b = grid(last.hi, w.hi) + (durHi(1n, P, ppb) - durLo(1n, P, ppb));
          first = { lo: minB(a, b), hi: maxB(a, b) };
        } else {
          // Overdue: QEMU sets next_irq_clock = cur_clock (the write time rounded down to the 32 kHz grid)
          // and fires at once; later ticks follow from that grid point.
          first = { lo: maxB(last.lo + pLo, w.lo - tick32), hi: maxB(last.hi + pHi, w.hi) };
        }
        phase = 'rate change: one new period after the last tick, at once if that is past (QEMU periodic_timer_update(), "count the clock since last interrupt")';
      }
    }
    close(w, i);
    if (first) {
      cur = { startEvent: i, start: w, rs: regA & 0xf, period: P, first, phase };
      if (quietFrom) {
        quiet.push({ from: quietFrom.from, to: w.lo, eventIndex: quietFrom.eventIndex, why: 'PIE off or RS = 0: no periodic interrupt' });
        quietFrom = null;
      }
      if (pieOn && everTicked) {
        // A PF left set (not yet read) raises IRQ at once when PIE is enabled (QEMU cmos_ioport_write, register B).
        ticks.push({ lo: w.lo, hi: w.hi, segment: segments.length, count: 'at-most-once' });
      }
    } else if (!quietFrom) quietFrom = { from: w.hi, eventIndex: i };
  }
  close(null, null);
  if (quietFrom) quiet.push({ from: quietFrom.from, to: null, eventIndex: quietFrom.eventIndex, why: 'PIE off or RS = 0: no periodic interrupt' });
  ticks.sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));

  // Windows: between consecutive register events and marks, and the whole run.
  const edges = events.map((e, i) => ({ e, i })).filter(({ e }) => e.kind === 'writeA' || e.kind === 'writeB' || e.kind === 'mark');
  const windows: RtcWindow[] = [];
  const count = (from: bigint, to: bigint) => ({
    min: ticks.filter((t) => t.count === 'once' && t.lo >= from && t.hi < to).length,
    max: ticks.filter((t) => t.hi >= from && t.lo < to).length,
  });
  for (let k = 0; k + 1 < edges.length; k++) {
    const a = edges[k]!;
    const b = edges[k + 1]!;
    windows.push({ from: a.e.tscAfter, to: b.e.tscBefore, fromEvent: a.i, toEvent: b.i, ticks: count(a.e.tscAfter, b.e.tscBefore) });
  }
  if (edges.length > 0) {
    const a = edges[0]!;
    windows.push({ from: a.e.tscAfter, to: endTsc, fromEvent: a.i, toEvent: null, ticks: count(a.e.tscAfter, endTsc) });
  }

  return {
    segments,
    ticks,
    windows,
    ...deliveryOf(events, timeline, quiet),
    acks: events.filter((e) => e.kind === 'readC').map((e) => ({ lo: e.tscBefore, hi: e.tscAfter })),
    ackInIsr: timeline.ackInIsr ?? true,
    vector: timeline.vector,
    switches,
  };
}

export interface RtcJudgeOptions {
  /** Calibrated delivery lateness bound after a tick, TSC cycles. */
  readonly latenessTsc: bigint;
  /**
   * window-count: a tick is owed inside its window only when it was due this long before the
   * window's end (the calibrated lateness bound); default latenessTsc.
   */
  readonly windowLatenessTsc?: bigint;
  /** With ackInIsr: the longest the ISR takes from entry to reading register C and EOI, TSC cycles (default 0). */
  readonly isrTsc?: bigint;
  /** Windows to judge instead of the prediction's (each [from, to)). */
  readonly windows?: readonly { readonly from: bigint; readonly to: bigint }[];
}

export function judgeRtc(p: RtcPrediction, observedInterrupts: readonly ObservedInterrupt[], options: RtcJudgeOptions): TimerDifference[] {
  const diffs: TimerDifference[] = [];
  const L = options.latenessTsc;
  const obs = observedInterrupts.filter((o) => o.vector === p.vector).map((o) => o.tsc).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const unblock = unblockedFrom([...p.blocked, ...(p.autoEoi ? [] : inServiceWindows(obs, p.eois, p.endTsc))]);

  // The acknowledgement (register C read, and EOI) that lowers the line after each delivery.
  const ackAfter = (o: bigint): Interval => {
    const eoi = p.autoEoi ? o : (p.eois.find((e) => e > o) ?? p.endTsc);
    if (p.ackInIsr) {
      const end = o + (options.isrTsc ?? 0n);
      return { lo: o, hi: maxB(end, eoi) };
    }
    const a = p.acks.find((x) => x.lo >= o);
    return a ? { lo: a.lo, hi: maxB(a.hi, eoi) } : { lo: p.endTsc, hi: p.endTsc };
  };

  // Quiet intervals.
  const spurious = new Set<bigint>();
  for (const q of p.quiet) {
    const from = unblock(q.from);
    for (const o of obs) {
      if (o > from && (q.to === null || o < q.to) && !spurious.has(o)) {
        spurious.add(o);
        diffs.push({ rule: 'spurious-after-disarm', summary: `RTC: interrupt at TSC ${hex(o)} with the periodic interrupt off (${q.why}, from ${hex(from)})`, expected: { noInterruptFrom: from, to: q.to }, observed: { tsc: o, vector: p.vector }, eventIndex: q.eventIndex });
      }
    }
  }
  const live = obs.filter((o) => !spurious.has(o));
  const acks = live.map(ackAfter);

  if (p.switches.lostTickPolicy === 'discard') {
    // Each delivery: a tick of its own, after the previous acknowledgement, not after the delivery.
    let j = 0;
    for (let i = 0; i < live.length; i++) {
      const o = live[i]!;
      const prevAck = i > 0 ? acks[i - 1]!.lo : -1n;
      while (j < p.ticks.length && p.ticks[j]!.hi <= prevAck) j++; // ticks while the line was raised: merged
      const t = p.ticks[j];
      if (t && t.lo <= o) {
        j++;
        continue;
      }
      diffs.push(
        t
          ? { rule: 'never-early', summary: `RTC: interrupt at TSC ${hex(o)} before the next periodic tick (no earlier than ${hex(t.lo)}, ${p.segments[t.segment]?.phase ?? 'PF left set'})`, expected: { earliest: t.lo }, observed: { tsc: o }, eventIndex: p.segments[t.segment]?.startEvent ?? null }
          : { rule: 'exact-count', summary: `RTC: interrupt at TSC ${hex(o)} is one more than the ${p.ticks.length} ticks the schedule gives`, expected: { ticks: p.ticks.length }, observed: { tsc: o }, eventIndex: null },
      );
    }
    // The first certain tick after each acknowledgement must be delivered within the bound.
    let f = 0;
    for (let i = 0; i <= live.length; i++) {
      const after = i > 0 ? acks[i - 1]!.hi : -1n;
      while (f < p.ticks.length && (p.ticks[f]!.lo <= after || p.ticks[f]!.count !== 'once')) f++;
      const t = p.ticks[f];
      if (!t) break;
      const due = unblock(t.hi) + L;
      if (due > p.endTsc) continue;
      const o = live[i];
      if (o === undefined || o > due) {
        const seg = p.segments[t.segment]!;
        diffs.push({
          rule: 'exact-count',
          summary: `RTC: the tick due by TSC ${hex(t.hi)} (${rtcRateHz(seg.rs)} Hz, segment from event ${seg.startEvent}) came after the line was acknowledged and was not delivered by ${hex(due)}${o === undefined ? '' : ` (next delivery ${hex(o)})`}`,
          expected: { tick: t, dueBy: due },
          observed: { nextDelivery: o ?? null },
          eventIndex: seg.startEvent,
        });
        break; // one lost tick shifts every later pairing: report the first
      }
    }
    const maxWidth = p.ticks.reduce((m, t) => maxB(m, t.hi - t.lo), 0n);
    // The ticks between two acknowledgements: one of them raised the line, the others fell while it
    // was raised and merged. (Per delivery: ticks possibly after the previous acknowledgement and
    // possibly before this one's.)
    const busy: number[][] = live.map((_, i) => {
      const prev = i > 0 ? acks[i - 1]!.lo : -1n;
      const out: number[] = [];
      for (let k = lowerBound(p.ticks, acks[i]!.hi) - 1; k >= 0 && p.ticks[k]!.lo >= prev - maxWidth; k--) if (p.ticks[k]!.hi > prev) out.push(k);
      return out;
    });
    // Windows.
    const windows = options.windows ?? p.windows;
    for (const w of windows) {
      const exp = 'ticks' in w ? (w as RtcWindow).ticks : { min: p.ticks.filter((t) => t.count === 'once' && t.lo >= w.from && t.hi < w.to).length, max: p.ticks.filter((t) => t.hi >= w.from && t.lo < w.to).length };
      const n = live.filter((o) => o >= w.from && o < w.to).length;
      let mergeable = 0;
      for (const b of busy) {
        const inside = b.filter((k) => p.ticks[k]!.lo < w.to && p.ticks[k]!.hi >= w.from).length;
        mergeable += Math.max(0, inside - 1);
      }
      // Ticks while interrupts were disabled raise the line once and wait: they merge into (at most)
      // one delivery, which may come after the window.
      const blockedTicks = p.ticks.filter((t) => t.lo < w.to && t.hi >= w.from && p.blocked.some((b) => t.hi >= b.lo && t.lo <= b.hi)).length;
      // A tick due less than the lateness bound before the window ends may be delivered after it.
      const Lw = options.windowLatenessTsc ?? L;
      const unsettled = p.ticks.filter((t) => t.count === 'once' && t.lo >= w.from && t.hi < w.to && t.hi + Lw >= w.to).length;
      const min = exp.min - 1 - mergeable - blockedTicks - unsettled;
      const max = exp.max + 1;
      if (n < min || n > max) {
        diffs.push({
          rule: 'window-count',
          summary: `RTC: ${n} interrupts in [${hex(w.from)}, ${hex(w.to)}), the schedule gives ${exp.min}..${exp.max} ticks (allowed ${min}..${max}: ±1 at each window edge${mergeable ? `, ${mergeable} that may merge while the line was raised` : ''})`,
          expected: { ticks: exp, allowed: { min, max } },
          observed: n,
          eventIndex: 'fromEvent' in w ? ((w as RtcWindow).fromEvent ?? null) : null,
        });
      }
    }
    return diffs;
  }

  // slew: the guest clock in time.
  diffs.push(...judgeSlew(p, live, L));
  return diffs;
}

/** Index of the first tick with lo > t. */
function lowerBound(ticks: readonly RtcTick[], t: bigint): number {
  let lo = 0;
  let hi = ticks.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ticks[mid]!.lo <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** PIE-on stretches: maximal runs of segments with no gap. */
function stretchesOf(segs: readonly RtcSegment[]): { from: Interval; to: Interval | null; segments: RtcSegment[] }[] {
  const out: { from: Interval; to: Interval | null; segments: RtcSegment[] }[] = [];
  for (const s of segs) {
    const last = out[out.length - 1];
    if (last && last.to && last.segments[last.segments.length - 1]!.endEvent === s.startEvent) {
      last.segments.push(s);
      last.to = s.end;
    } else out.push({ from: s.start, to: s.end, segments: [s] });
  }
  return out;
}

function judgeSlew(p: RtcPrediction, live: readonly bigint[], L: bigint): TimerDifference[] {
  const diffs: TimerDifference[] = [];
  const perTsc = (r: Ratio) => ceilDiv(r.num, r.den);
  const defaultPhase = p.switches.phaseAfterChange !== 'from-last-tick';
  for (const st of stretchesOf(p.segments)) {
    const end = st.to ? st.to.hi : p.endTsc;
    const mine = live.filter((o) => o >= st.from.lo && o <= end + L);
    const segAt = (t: bigint) => st.segments.filter((s) => s.start.lo <= t && (s.end === null || t <= s.end.hi));
    let gMin = 0n;
    let gMax = 0n;
    let peak = { deficit: 0n, at: st.from.lo };
    for (const o of mine) {
      // The period the guest counts for this delivery: any in force between its tick and its arrival.
      const ps = st.segments.filter((s) => s.start.lo <= o && (s.end === null || o - L <= s.end.hi)).map((s) => perTsc(s.period));
      if (ps.length === 0) continue;
      gMin += ps.reduce((a, b) => minB(a, b));
      gMax += ps.reduce((a, b) => maxB(a, b));
      const elapsedMax = minB(o, end) - st.from.lo;
      const started = st.segments.filter((s) => s.start.lo <= o);
      const cur = perTsc(segAt(o)[0]?.period ?? started[started.length - 1]!.period);
      const allowance = cur + (defaultPhase ? started.reduce((a, s) => a + perTsc(s.period), 0n) : 0n);
      if (gMin > elapsedMax + allowance) {
        diffs.push({
          rule: 'slew-never-ahead',
          summary: `RTC (slew): by TSC ${hex(o)} the guest counted ${gMin} TSC of ticks, ahead of the ${elapsedMax} elapsed with the periodic interrupt on by more than ${allowance}`,
          expected: { atMost: elapsedMax + allowance },
          observed: { guestTime: gMin, at: o },
          eventIndex: started[started.length - 1]!.startEvent,
        });
        break;
      }
      const elapsedMin = maxB(0n, minB(o, st.to ? st.to.lo : p.endTsc) - st.from.hi);
      if (elapsedMin - gMax > peak.deficit) peak = { deficit: elapsedMin - gMax, at: o };
    }
    if (st.to !== null) continue; // PIE off or RS = 0 drops the backlog (irq_coalesced = 0)
    const last = st.segments[st.segments.length - 1]!;
    const P = perTsc(last.period);
    const check = p.endTsc - L - P;
    if (check - peak.at < peak.deficit + L) continue; // the backlog had no time to drain
    const elapsedMin = maxB(0n, check - st.from.hi);
    const g = gMax;
    const tol = P + (defaultPhase ? st.segments.reduce((a, s) => a + perTsc(s.period), 0n) : 0n);
    if (elapsedMin - g > tol) {
      diffs.push({
        rule: 'slew-converges',
        summary: `RTC (slew): at the end the guest clock is ${elapsedMin - g} TSC behind the elapsed time (allowed ${tol}); re-injected ticks should have caught up (peak backlog ${peak.deficit} at ${hex(peak.at)})`,
        expected: { behindAtMost: tol },
        observed: { behind: elapsedMin - g },
        eventIndex: st.segments[0]!.startEvent,
      });
    }
  }
  return diffs;
}
