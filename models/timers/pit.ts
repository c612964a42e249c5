/**
 * Reference model of 8254 PIT channel 0 (IRQ0) in modes 0, 2 and 3 (4 as a one-shot), and its judge.
 *
 * Datasheet rules (Intel 8254 Programmable Interval Timer; kvm-rules-and-peers.md D.3):
 *  - input clock 1.193182 MHz (14.31818 MHz / 12; KVM's KVM_PIT_FREQ is 1193181, QEMU's PIT_FREQ
 *    1193182: the model uses the faster, so its earliest times are the earlier); a count of 0 means
 *    65536 (binary);
 *  - mode 0, interrupt on terminal count: OUT goes high when the count reaches 0 (N clocks after the
 *    count is loaded; the datasheet says N+1 after the write, the model takes N, the earlier) and
 *    stays high; "if a new count is written to the Counter, it will be loaded on the next CLK pulse
 *    and counting will continue from the new count" (a reload restarts);
 *  - mode 2, rate generator: one pulse every N clocks; "If the Counter is reloaded between output
 *    pulses the present period will not be affected, but the subsequent period will reflect the new
 *    value";
 *  - mode 3, square wave: OUT high for ⌈N/2⌉ clocks and low for ⌊N/2⌋; IRQ0 is edge-triggered on the
 *    rising edge, once per period; a new count "will be loaded at the end of the current half-cycle";
 *  - mode codes 6 and 7 alias 2 and 3 (KVM pit_ioport_write(): `if (s->mode > 5) s->mode -= 4`);
 *  - a control word plus count (a 'program' event) always starts a fresh count.
 *
 * Switches (PitSwitches): the reload rule (KVM and QEMU restart the period at the reload, KVM's
 * create_pit_timer() says "TODO The new value only affected after the retriggered"); KVM's floor on
 * periodic periods; KVM's re-injection of missed ticks. DEFAULT_PIT takes the datasheet's counting
 * and KVM's delivery policy (QEMU's kvm-pit default lost_tick_policy=delay = re-inject); KVM_PIT is
 * KVM's counting too. Under DEFAULT_PIT a KVM host's mode 2/3 reloads are judged: that deviation is
 * KVM's own TODO, for the known-deviation list.
 *
 * Reading the counter (a counter-latch command, then LSB and MSB): the count at the latch is the
 * loaded count N less the CLK pulses since the load, d (datasheet: "the Counter is loaded on the
 * next CLK pulse" after the write, then decrements once per CLK; the model allows that one pulse
 * either way). Mode 0 keeps counting down past 0 (it wraps to FFFFh); mode 2 reads N … 1 and reloads
 * N; mode 3 with an even N counts down by two, N … 2, twice a period. The 16-bit value of 65536 is 0.
 * KVM's pit_get_count() and QEMU's i8254 pit_get_count() compute exactly these from the time since
 * the load (both note "XXX: may be incorrect for odd counts" in mode 3, where the datasheet loads
 * N−1 on alternate half-cycles): a mode-3 read with an odd N is not judged. Neither is a read after a
 * 'next-period' reload (the datasheet's, which the presets do not use). A latch is exact in time, so
 * a read tells the PIT's rate against the TSC within the latch's stamps, however late its
 * interrupts come: rule pit-count-read.
 *
 * Not modelled: modes 1 and 5 (need a gate edge; channel 0's gate is tied high), BCD counting,
 * read-back commands, channels 1 and 2, the HPET legacy replacement.
 */
import {
  deliveryOf,
  durHi,
  durLo,
  hex,
  judgeExpiries,
  maxB,
  minB,
  ppbOf,
  toBig,
  type ExpectedInterrupt,
  type GuestControlEvent,
  type Interval,
  type ObservedInterrupt,
  type QuietInterval,
  type Ratio,
  type Stamp,
  type TimerDifference,
  type DeliveryPrediction,
} from './common.js';

export interface PitClock {
  readonly tscHz: number | bigint;
  /** The PIT input clock, Hz. Default 1 193 182. */
  readonly pitHz?: number | bigint;
  /** KVM's min_timer_period_us × 1000 (0: none). */
  readonly minPeriodNs: number | bigint;
  readonly skewPpm?: number;
}

export type PitEvent =
  /** Control word for channel 0 (access LSB then MSB, binary) with `mode`, then the count's two bytes. */
  | (Stamp & { readonly kind: 'program'; readonly mode: number; readonly count: number })
  /** A new count (LSB, MSB) without a control word. */
  | (Stamp & { readonly kind: 'reload'; readonly count: number })
  /** A counter-latch command for channel 0 (stamped), then its LSB and MSB read: `read` is the value. */
  | (Stamp & { readonly kind: 'readCount'; readonly read?: number })
  | GuestControlEvent;

export interface PitTimeline {
  readonly events: readonly PitEvent[];
  readonly endTsc: bigint;
  /** The vector IRQ0 is routed to. */
  readonly vector: number;
  readonly interruptsEnabled?: boolean;
  readonly autoEoi?: boolean;
}

export interface PitSwitches {
  /**
   * A reload (count written without a control word) in modes 2 and 3.
   *  - 'next-period' (8254 datasheet: mode 2 "the present period will not be affected", mode 3 the
   *    new count is "loaded at the end of the current half-cycle");
   *  - 'restart' (KVM i8254.c pit_load_count() → create_pit_timer(): hrtimer restarted at now + the
   *    new interval, "TODO The new value only affected after the retriggered"; QEMU hw/timer/i8254.c
   *    pit_load_count() likewise resets count_load_time).
   */
  readonly periodicReload: 'next-period' | 'restart';
  /**
   * 'kvm': create_pit_timer() raises a periodic (mode 2/3) period under min_timer_period_us to it,
   * from the second period on (the first expiry is hrtimer_start(now + interval), unraised).
   * 'none': no floor.
   */
  readonly periodicClamp: 'kvm' | 'none';
  /**
   * true: KVM re-injects every missed tick, one per EOI (pit_timer_fn() counts `pending`,
   * kvm_pit_ack_irq() queues the next), so no tick is lost, only delayed; a (re)load drops the
   * backlog (kvm_pit_reset_reinject()). QEMU's kvm-pit lost_tick_policy=delay, the default.
   * false (lost_tick_policy=discard; a real 8254 behind an edge-triggered PIC): ticks merge while
   * one is pending.
   */
  readonly reinject: boolean;
  /**
   * What an edge-triggered interrupt input does with the PIT's OUT updates.
   *  - 'rising-edge' (8254 datasheet and 82093AA IOAPIC: one interrupt per low→high transition of
   *    OUT: mode 2 once per period, mode 3 once per period). Every preset.
   *  - 'every-update' (QEMU 7.2's own PIT and IOAPIC, kernel-irqchip=split or TCG, as observed: the
   *    userspace IOAPIC fires an edge-triggered pin on every qemu_set_irq(1), and i8254.c's timer can
   *    run just before a transition and re-assert the old level; so each period may also interrupt
   *    at its falling transition — mode 3 at the half period, mode 2 one clock before terminal
   *    count, before the period's rising edge); and a count written LSB then MSB also runs from the
   *    LSB write alone, interrupting inside the write). The property layer predicts with it only to name the root cause of a difference.
   */
  readonly edgeInput?: 'rising-edge' | 'every-update';
  /**
   * Where a latched count of a periodic (mode 2/3) channel 0 comes from.
   *  - 'load' (8254 datasheet: the count decrements once per CLK from the load, reloading N):
   *    N − (d mod N) with d the CLK pulses since the load;
   *  - 'kvm-hrtimer' (KVM i8254.c pit_get_count() → __kpit_elapsed(): "period − remaining" of
   *    channel 0's hrtimer, whose period periodicClamp may have raised): the same while the period
   *    is N's own; a raised one counts d from the start of the current raised period (the first
   *    began one raised period before the first, unraised, expiry). Not the datasheet: with the
   *    period raised, the count no longer says where the N-clock cycle is.
   */
  readonly countRead?: 'load' | 'kvm-hrtimer';
}

export const DEFAULT_PIT: PitSwitches = Object.freeze({ periodicReload: 'next-period', periodicClamp: 'kvm', reinject: true });
export const KVM_PIT: PitSwitches = Object.freeze({ periodicReload: 'restart', periodicClamp: 'kvm', reinject: true, countRead: 'kvm-hrtimer' });

export interface PitPredictOptions {
  /** How long after a tick KVM may still hold it undelivered, so that a (re)load drops it (TSC cycles; default 0). */
  readonly raceTsc?: bigint;
}

export interface PitWindow {
  readonly from: bigint;
  readonly to: bigint;
  readonly fromEvent: number;
  /** Expiries in [from, to): at least min certainly, at most max possibly. */
  readonly expiries: { readonly min: number; readonly max: number };
}

/** What a latched count read may return: a value in one of `allowed` (each inclusive, in 1..65536; 65536 reads as 0). */
export interface PitReadExpectation {
  readonly eventIndex: number;
  readonly window: Interval;
  /** null: no prediction (why says so). */
  readonly allowed: readonly { readonly min: number; readonly max: number }[] | null;
  readonly why: string;
}

export interface PitPrediction extends DeliveryPrediction {
  readonly interrupts: readonly ExpectedInterrupt[];
  readonly reads: readonly PitReadExpectation[];
  readonly windows: readonly PitWindow[];
  readonly vector: number;
  readonly switches: PitSwitches;
}

const MAX_EXPIRIES = 2_000_000;

/** The effective mode: 6, 7 alias 2, 3. */
export const pitMode = (mode: number): number => ((mode & 7) > 5 ? (mode & 7) - 4 : mode & 7);
/** A count as loaded: 0 means 65536. */
export const pitCount = (count: number): bigint => BigInt((count & 0xffff) === 0 ? 0x10000 : count & 0xffff);

interface Armed {
  mode: number;
  armedBy: number;
  count: bigint;
  /** Expiry k of the segment: anchor + k·period. */
  anchor: Interval;
  k: bigint;
  period: Ratio;
  expired: boolean;
}

export function predictPit(clock: PitClock, timeline: PitTimeline, switches: PitSwitches = DEFAULT_PIT, options: PitPredictOptions = {}): PitPrediction {
  const tscHz = toBig(clock.tscHz, 'tscHz');
  const pitHz = toBig(clock.pitHz ?? 1_193_182, 'pitHz');
  const minNs = toBig(clock.minPeriodNs, 'minPeriodNs');
  const ppb = ppbOf(clock.skewPpm);
  const race = options.raceTsc ?? 0n;
  const events = timeline.events;
  const interrupts: ExpectedInterrupt[] = [];
  const quiet: QuietInterval[] = [];
  const clocks = (n: bigint): Ratio => ({ num: n * tscHz, den: pitHz });
  /** The period of a periodic count, raised to KVM's floor. */
  const periodOf = (n: bigint): Ratio => {
    if (switches.periodicClamp !== 'kvm' || minNs === 0n) return clocks(n);
    // n/pitHz s < minNs ns ?
    if (n * 1_000_000_000n >= minNs * pitHz) return clocks(n);
    return { num: minNs * tscHz, den: 1_000_000_000n };
  };
  const after = (iv: Interval, r: Ratio): Interval => ({ lo: iv.lo + durLo(1n, r, ppb), hi: iv.hi + durHi(1n, r, ppb) });

  let armed: Armed | null = null;
  let quietFrom: { from: bigint; eventIndex: number } | null = { from: 0n, eventIndex: -1 };
  const nextOf = (a: Armed): Interval => ({ lo: a.anchor.lo + durLo(a.k, a.period, ppb), hi: a.anchor.hi + durHi(a.k, a.period, ppb) });
  const why = (a: Armed) => `PIT mode ${a.mode} count ${a.count} loaded by event ${a.armedBy}: ${a.mode === 0 || a.mode === 4 ? 'one interrupt at terminal count' : a.mode === 2 ? 'one interrupt per period (rate generator)' : 'one rising edge per period (square wave)'}`;
  const emit = (certain: boolean) => {
    const a = armed!;
    const iv = nextOf(a);
    if (interrupts.length >= MAX_EXPIRIES) throw new Error(`PIT model: more than ${MAX_EXPIRIES} predicted interrupts`);
    interrupts.push({ vector: timeline.vector, earliest: iv.lo, expiryLatest: iv.hi, latest: null, count: certain ? 'once' : 'at-most-once', eventIndex: a.armedBy, why: why(a) });
    if (switches.edgeInput === 'every-update' && (a.mode === 2 || a.mode === 3)) {
      // The falling transition of the same period, before its rising edge: ⌊n/2⌋ clocks before it in mode 3, 1 in mode 2.
      const back = a.mode === 3 ? a.count / 2n : 1n;
      interrupts.push({ vector: timeline.vector, earliest: iv.lo - durHi(back, clocks(1n), ppb), expiryLatest: iv.hi - durLo(back, clocks(1n), ppb), latest: null, count: 'at-most-once', eventIndex: a.armedBy, why: `${why(a)}; re-asserted at the falling transition (every-update)` });
    }
    if (a.mode === 2 || a.mode === 3) a.k++;
    else a.expired = true;
  };
  const pending = (a: Armed | null): a is Armed => a !== null && !a.expired;
  const advance = (limit: bigint) => {
    while (pending(armed) && nextOf(armed).hi < limit) emit(true);
  };

  /** The count in force for reads: loaded (its write's stamps), N and mode; null: unknown. */
  let load: { w: Interval; n: bigint; mode: number; by: number } | null = null;
  const reads: PitReadExpectation[] = [];
  const readAt = (i: number, w: Interval): PitReadExpectation => {
    if (!load) return { eventIndex: i, window: w, allowed: null, why: 'no count loaded by a program or restart the model follows' };
    const { n, mode } = load;
    if (mode === 3 && n % 2n === 1n) return { eventIndex: i, window: w, allowed: null, why: `mode 3 with an odd count (${n}): the datasheet's sequence differs from KVM's and QEMU's formula` };
    // TSC since the load.
    let spanLo = maxB(w.lo - load.w.hi, 0n);
    let spanHi = w.hi - load.w.lo;
    let base = 'since the load';
    const raisedPeriod = (mode === 2 || mode === 3) && switches.countRead === 'kvm-hrtimer' ? periodOf(n) : null;
    const interval = clocks(n);
    if (raisedPeriod && raisedPeriod.num * interval.den > interval.num * raisedPeriod.den) {
      // KVM __kpit_elapsed(): channel 0's count comes from its hrtimer, elapsed = period − remaining,
      // where the period is the raised one and the first expiry came one unraised interval after the load.
      const iLo = durLo(1n, interval, ppb);
      const iHi = durHi(1n, interval, ppb);
      const pLo = durLo(1n, raisedPeriod, ppb);
      const pHi = durHi(1n, raisedPeriod, ppb);
      base = `into KVM's hrtimer period, raised to ${pLo} TSC (min_timer_period_us)`;
      if (spanHi < iLo) {
        spanLo += pLo - iHi;
        spanHi += pHi - iLo;
      } else if (spanLo > iHi && pHi - pLo < 4096n) {
        // A whole number of raised periods after the first expiry: the phase within the current one.
        const from = spanLo - iHi;
        const to = spanHi - iLo;
        const k = from / pHi;
        if (to - k * pLo >= pLo) return { eventIndex: i, window: w, allowed: null, why: `a read across an expiry of KVM's raised hrtimer period (${base})` };
        spanLo = maxB(from - k * pHi, 0n);
        spanHi = to - k * pLo;
      } else return { eventIndex: i, window: w, allowed: null, why: `a read around the first expiry of KVM's raised hrtimer period (${base})` };
    }
    // CLK pulses: d = ⌊elapsed × pitHz / tscHz⌋, one pulse of slack each way for the load on the next CLK.
    const dLo = maxB(durLo(spanLo, { num: pitHz, den: tscHz }, ppb) - 1n, 0n);
    const dHi = durHi(spanHi, { num: pitHz, den: tscHz }, ppb) + 1n;
    // v = top − step·r with r = (d + shift) mod P.
    const [top, step, P, shift] = mode === 2 ? [n, 1n, n, 0n] : mode === 3 ? [n, 2n, n / 2n, 0n] : [0x10000n, 1n, 0x10000n, (0x10000n - (n % 0x10000n)) % 0x10000n];
    const why = `mode ${mode} count ${n} loaded by event ${load.by}: ${dLo}..${dHi} CLK pulses ${base} (${mode === 0 || mode === 4 ? 'N − d, wrapping past 0' : mode === 2 ? 'N − (d mod N)' : 'N − (2d mod N)'}; 8254 datasheet)`;
    if (dHi - dLo + 1n >= P) return { eventIndex: i, window: w, allowed: [{ min: Number(top - step * (P - 1n)), max: Number(top) }], why };
    const rLo = (dLo + shift) % P;
    const rHi = (dHi + shift) % P;
    const v = (r: bigint) => Number(top - step * r);
    const allowed = rLo <= rHi ? [{ min: v(rHi), max: v(rLo) }] : [{ min: v(P - 1n), max: v(rLo) }, { min: v(rHi), max: v(0n) }];
    return { eventIndex: i, window: w, allowed, why };
  };

  for (let i = 0; i < events.length; i++) {
    const ev = events[i]!;
    if (ev.kind === 'readCount') {
      reads.push(readAt(i, { lo: ev.tscBefore, hi: ev.tscAfter }));
      continue;
    }
    if (ev.kind !== 'program' && ev.kind !== 'reload') continue;
    const w: Interval = { lo: ev.tscBefore, hi: ev.tscAfter };
    const n = pitCount(ev.count);
    const prevMode: number | null = (armed as Armed | null)?.mode ?? null;
    const mode: number | null = ev.kind === 'program' ? pitMode(ev.mode) : prevMode;
    if (mode === null) continue; // a count with no mode programmed: nothing runs
    if (mode === 1 || mode === 5) throw new Error(`PIT model: mode ${mode} needs a gate edge and is not modelled`);
    const periodic: boolean = mode === 2 || mode === 3;
    const nextPeriod = ev.kind === 'reload' && periodic && switches.periodicReload === 'next-period' && pending(armed);
    if (nextPeriod) {
      const a = armed!;
      advance(w.lo);
      const M = periodOf(n);
      let iv = nextOf(a);
      let racing = false;
      while (iv.lo <= w.hi) {
        // The pulse races the reload: it comes in either branch; the following period is N or M.
        emit(true);
        racing = true;
        iv = nextOf(a);
      }
      if (a.mode === 3 && !racing) {
        // Square wave: the new count loads at the end of the current half-cycle.
        const N = a.count;
        const start = { lo: iv.lo - durHi(1n, a.period, ppb), hi: iv.hi - durLo(1n, a.period, ppb) };
        const fall = { lo: start.lo + durLo((N + 1n) / 2n, clocks(1n), ppb), hi: start.hi + durHi((N + 1n) / 2n, clocks(1n), ppb) };
        const viaFall = { lo: fall.lo + durLo(n / 2n, clocks(1n), ppb), hi: fall.hi + durHi(n / 2n, clocks(1n), ppb) };
        if (w.hi < fall.lo) iv = viaFall; // in the high half: loads at the falling edge, then a low half of ⌊M/2⌋
        else if (w.lo <= fall.hi) iv = { lo: minB(viaFall.lo, iv.lo), hi: maxB(viaFall.hi, iv.hi) };
      } else if (racing) {
        const prev = { lo: iv.lo - durHi(1n, a.period, ppb), hi: iv.hi - durLo(1n, a.period, ppb) };
        const viaM = after(prev, M);
        iv = { lo: minB(iv.lo, viaM.lo), hi: maxB(iv.hi, viaM.hi) };
      }
      a.anchor = iv;
      a.k = 0n;
      a.period = M;
      a.count = n;
      a.armedBy = i;
      load = null;
      continue;
    }
    // A fresh count: program, a mode 0/4 reload, or a periodic reload under 'restart'.
    advance(w.lo - race);
    while (pending(armed) && nextOf(armed).lo <= w.hi) emit(false);
    if (switches.edgeInput === 'every-update' && (mode === 2 || mode === 3)) {
      // QEMU's i8254 also loads the LSB alone as a count (pit_ioport_write, RW_STATE_WORD0), so a
      // short transient count runs inside the write: it may interrupt anywhere in it.
      interrupts.push({ vector: timeline.vector, earliest: w.lo, expiryLatest: w.hi, latest: null, count: 'at-most-once', eventIndex: i, why: `PIT transient count while event ${i} writes the LSB then the MSB (every-update)` });
    }
    const first = clocks(n); // KVM: the first interval is never raised
    // Expiry 0 one count after the load, then every (raised) period.
    armed = { mode, armedBy: i, count: n, anchor: after(w, first), k: 0n, period: periodic ? periodOf(n) : first, expired: false };
    load = { w, n, mode, by: i };
    if (quietFrom) {
      quiet.push({ from: quietFrom.from, to: w.lo, eventIndex: quietFrom.eventIndex, why: 'channel 0 not yet counting' });
      quietFrom = null;
    }
  }
  while (pending(armed) && nextOf(armed).lo <= timeline.endTsc) emit(true);
  if (quietFrom) quiet.push({ from: quietFrom.from, to: null, eventIndex: quietFrom.eventIndex, why: 'channel 0 never programmed' });

  // Windows between consecutive PIT events and marks, and the whole run.
  const edges = events.map((e, i) => ({ e, i })).filter(({ e }) => e.kind === 'program' || e.kind === 'reload' || e.kind === 'mark');
  const count = (from: bigint, to: bigint) => ({
    min: interrupts.filter((x) => x.count === 'once' && x.earliest >= from && x.expiryLatest < to).length,
    max: interrupts.filter((x) => x.expiryLatest >= from && x.earliest < to).length,
  });
  const windows: PitWindow[] = [];
  for (let k = 0; k + 1 < edges.length; k++) windows.push({ from: edges[k]!.e.tscAfter, to: edges[k + 1]!.e.tscBefore, fromEvent: edges[k]!.i, expiries: count(edges[k]!.e.tscAfter, edges[k + 1]!.e.tscBefore) });
  if (edges.length) windows.push({ from: edges[0]!.e.tscAfter, to: timeline.endTsc, fromEvent: edges[0]!.i, expiries: count(edges[0]!.e.tscAfter, timeline.endTsc) });

  return {
    ...deliveryOf(events, timeline, quiet),
    interrupts,
    reads,
    windows,
    vector: timeline.vector,
    switches,
  };
}

export interface PitJudgeOptions {
  readonly latenessTsc: bigint;
  /** The values the latched count reads returned, by event index (rule pit-count-read). */
  readonly reads?: readonly { readonly eventIndex: number; readonly value: number }[];
  /** How long before its logged TSC the ISR may have accepted the interrupt (common.ts). Default 0. */
  readonly isrEntryTsc?: bigint;
}

/**
 * Rules never-early, exact-count, spurious-after-disarm (common.ts judgeExpiries(): each tick
 * delivered on its own under re-injection, merging while pending without it) and window-count: per
 * window, deliveries ≤ the possible expiries + 1 (the start edge) + the backlog carried in from
 * before it (re-injection delivers late ticks, never extra ones); with re-injection also ≥ the
 * settled expiries (expiry + lateness before the window's end) − 1.
 */
export function judgePit(p: PitPrediction, observedInterrupts: readonly ObservedInterrupt[], options: PitJudgeOptions): TimerDifference[] {
  const mine = observedInterrupts.filter((o) => o.vector === p.vector);
  const diffs = judgeExpiries(p.interrupts, p.quiet, mine, {
    latenessTsc: options.latenessTsc,
    endTsc: p.endTsc,
    blocked: p.blocked,
    eois: p.autoEoi ? null : p.eois,
    delivery: p.switches.reinject ? 'every-expiry' : 'merge-while-pending',
    source: 'PIT channel 0',
    ...(options.isrEntryTsc === undefined ? {} : { isrEntryTsc: options.isrEntryTsc }),
  });
  for (const r of options.reads ?? []) {
    const x = p.reads.find((e) => e.eventIndex === r.eventIndex);
    if (!x || x.allowed === null) continue;
    const v = r.value === 0 ? 0x10000 : r.value;
    if (x.allowed.some((a) => v >= a.min && v <= a.max)) continue;
    diffs.push({
      rule: 'pit-count-read',
      summary: `PIT channel 0: the count latched in [${hex(x.window.lo)}, ${hex(x.window.hi)}] read ${r.value}, the model allows ${x.allowed.map((a) => (a.min === a.max ? `${a.min}` : `${a.min}..${a.max}`)).join(' or ')} (${x.why})`,
      expected: { allowed: x.allowed, why: x.why },
      observed: r.value,
      eventIndex: x.eventIndex,
    });
  }
  for (const w of p.windows) {
    const n = mine.filter((o) => o.tsc >= w.from && o.tsc < w.to).length;
    const deliveredBefore = mine.filter((o) => o.tsc < w.from).length;
    const possibleBefore = p.interrupts.filter((x) => x.earliest < w.from).length;
    const carried = p.switches.reinject ? Math.max(0, possibleBefore - deliveredBefore) : 0;
    const max = w.expiries.max + 1 + carried;
    const settled = p.interrupts.filter((x) => x.count === 'once' && x.earliest >= w.from && x.expiryLatest + options.latenessTsc < w.to).length;
    const min = p.switches.reinject ? settled - 1 : -Infinity;
    if (n > max || n < min) {
      diffs.push({
        rule: 'window-count',
        summary: `PIT channel 0: ${n} interrupts in [${hex(w.from)}, ${hex(w.to)}), the schedule gives ${w.expiries.min}..${w.expiries.max} expiries (allowed ${Number.isFinite(min) ? min : '-'}..${max}: ±1 at the window edges${carried ? `, ${carried} carried in` : ''})`,
        expected: { expiries: w.expiries, allowed: { min: Number.isFinite(min) ? min : null, max } },
        observed: n,
        eventIndex: w.fromEvent,
      });
    }
  }
  return diffs;
}
