/**
 * Reference model of the MC146818 RTC's time of day against TSC time, and its judge.
 *
 * The guest waits for the seconds register to change (rtcSecondsEdge): each change is bracketed by
 * two TSC stamps, so it happened in [tscBefore, tscAfter], and the op reads the minutes, hours and
 * register B just after it.
 *
 * Rules (kvm-rules-and-peers.md D.2; MC146818A datasheet):
 *  - rtc-clock-advance: the time registers hold valid values in the data mode register B selects
 *    (DM 0x04: binary, else BCD; 24H 0x02, else 12-hour with bit 7 of the hours byte for PM), and
 *    from one change to the next the time of day moves forward by a whole number of seconds (the
 *    update cycle runs once a second and advances the time by one second).
 *  - rtc-clock-rate: the TSC time between two changes is that many seconds, within `tolerancePpm`.
 *    The RTC is counted from the host's clock (QEMU `-rtc clock=host` by default: CLOCK_REALTIME,
 *    which NTP may slew by up to 500 ppm) and the TSC at the rate CPUID 0x4000_0010 gives; 1000 ppm
 *    allows both and still tells a clock 1% off, ten times over. A wait that saw no change within
 *    1.2 s breaks it too. A host whose wall clock is stepped during a case would break it: the
 *    rule cannot tell that from an RTC that jumped.
 *
 * A change of data mode (register B DM or 24H) between two changes: the datasheet has the time
 * registers hold whatever was written in the old mode until the time is set again, so the pair is
 * not compared (switch dataModeChange: 'no-prediction'). QEMU re-encodes the time in the new mode at
 * once (mc146818rtc.c rtc_set_cmos() reads REG_B at every update), which 'reencodes' would compare.
 */
import { hex, type Stamp, type TimerDifference } from './common.js';

export interface RtcSecondsEdge extends Stamp {
  readonly seconds: number;
  readonly minutes: number;
  readonly hours: number;
  readonly regB: number;
  readonly timedOut: boolean;
  /** The timeline event it came from. */
  readonly eventIndex: number;
}

export interface RtcClockOptions {
  readonly tscHz: number | bigint;
  readonly tolerancePpm: number;
  readonly dataModeChange?: 'no-prediction' | 'reencodes';
}

export const RTC_CLOCK_TOLERANCE_PPM = 1000;

const DAY = 86_400;

function fromBcd(v: number): number | null {
  const hi = v >> 4;
  const lo = v & 0xf;
  return hi > 9 || lo > 9 ? null : hi * 10 + lo;
}

/** Seconds since midnight of an edge's time registers in its own data mode, or why they are invalid. */
export function timeOfDay(e: Pick<RtcSecondsEdge, 'seconds' | 'minutes' | 'hours' | 'regB'>): { s: number } | { invalid: string } {
  const binary = (e.regB & 0x04) !== 0;
  const h24 = (e.regB & 0x02) !== 0;
  const dec = (v: number) => (binary ? v : fromBcd(v));
  const sec = dec(e.seconds & 0xff);
  const min = dec(e.minutes & 0xff);
  const pm = !h24 && (e.hours & 0x80) !== 0;
  const hr = dec(h24 ? e.hours & 0xff : e.hours & 0x7f);
  const mode = `${binary ? 'binary' : 'BCD'}, ${h24 ? '24' : '12'}-hour`;
  if (sec === null || sec > 59) return { invalid: `seconds 0x${e.seconds.toString(16)} is not a valid ${mode} value` };
  if (min === null || min > 59) return { invalid: `minutes 0x${e.minutes.toString(16)} is not a valid ${mode} value` };
  if (hr === null || (h24 ? hr > 23 : hr < 1 || hr > 12)) return { invalid: `hours 0x${e.hours.toString(16)} is not a valid ${mode} value` };
  const h = h24 ? hr : (hr % 12) + (pm ? 12 : 0);
  return { s: h * 3600 + min * 60 + sec };
}

const modeOf = (regB: number) => regB & 0x06;

/** Consecutive changes whose times of day compare: both valid, in one data mode (or 'reencodes'); with the seconds between them. */
function comparablePairs(edges: readonly RtcSecondsEdge[], dataModeChange: RtcClockOptions['dataModeChange'] = 'no-prediction') {
  const tod = edges.map((e) => (e.timedOut ? null : timeOfDay(e)));
  const pairs: { a: RtcSecondsEdge; b: RtcSecondsEdge; from: number; to: number; steps: number }[] = [];
  for (let k = 0; k + 1 < edges.length; k++) {
    const a = edges[k]!;
    const b = edges[k + 1]!;
    const ta = tod[k];
    const tb = tod[k + 1];
    if (!ta || !tb || 'invalid' in ta || 'invalid' in tb) continue;
    if (modeOf(a.regB) !== modeOf(b.regB) && dataModeChange === 'no-prediction') continue;
    pairs.push({ a, b, from: ta.s, to: tb.s, steps: (((tb.s - ta.s) % DAY) + DAY) % DAY });
  }
  return { tod, pairs };
}

export function judgeRtcClock(edges: readonly RtcSecondsEdge[], opts: RtcClockOptions): TimerDifference[] {
  const diffs: TimerDifference[] = [];
  const tscHz = Number(opts.tscHz);
  const tol = opts.tolerancePpm / 1e6;
  const { tod, pairs } = comparablePairs(edges, opts.dataModeChange);
  edges.forEach((e, k) => {
    if (e.timedOut) {
      // The op gives up after 1.2 s unchanged (from its first read); a shorter span breaks nothing.
      if (Number(e.tscAfter - e.tscBefore) <= tscHz * (1 + tol)) return;
      diffs.push({
        rule: 'rtc-clock-rate',
        summary: `RTC: the seconds register read the same from TSC ${hex(e.tscBefore)} to ${hex(e.tscAfter)} (at least ${(Number(e.tscAfter - e.tscBefore) / tscHz).toFixed(3)} s; it changes once a second)`,
        expected: { changeWithinS: 1 },
        observed: { seconds: e.seconds, waitedS: Number(e.tscAfter - e.tscBefore) / tscHz },
        eventIndex: e.eventIndex,
      });
      return;
    }
    const t = tod[k]!;
    if ('invalid' in t) diffs.push({ rule: 'rtc-clock-advance', summary: `RTC: after the change at TSC [${hex(e.tscBefore)}, ${hex(e.tscAfter)}], ${t.invalid} (register B 0x${e.regB.toString(16)})`, expected: 'valid time registers', observed: { seconds: e.seconds, minutes: e.minutes, hours: e.hours, regB: e.regB }, eventIndex: e.eventIndex });
  });
  for (const { a, b, from, to, steps } of pairs) {
    if (steps === 0) {
      diffs.push({ rule: 'rtc-clock-advance', summary: `RTC: the time of day read ${from} s after midnight at both changes (TSC ${hex(a.tscAfter)} and ${hex(b.tscAfter)}): it did not advance`, expected: 'a later time of day', observed: { from, to }, eventIndex: b.eventIndex });
      continue;
    }
    const lo = Number(b.tscBefore - a.tscAfter) / tscHz;
    const hi = Number(b.tscAfter - a.tscBefore) / tscHz;
    const want = { lo: steps * (1 - tol), hi: steps * (1 + tol) };
    if (hi < want.lo || lo > want.hi) {
      const mid = (lo + hi) / 2;
      diffs.push({
        rule: 'rtc-clock-rate',
        summary: `RTC: ${steps} s of time of day (${from} → ${to} s after midnight) took ${lo.toFixed(6)}..${hi.toFixed(6)} s of TSC time (the RTC runs ${(Math.abs(steps / mid - 1) * 100).toFixed(2)}% ${steps / mid > 1 ? 'fast' : 'slow'}; allowed ±${opts.tolerancePpm} ppm)`,
        expected: { seconds: steps, tolerancePpm: opts.tolerancePpm },
        observed: { tscSeconds: { lo, hi } },
        eventIndex: b.eventIndex,
      });
    }
  }
  return diffs;
}

/** Per pair in one data mode: how far the RTC's second is from the TSC's, ppm, from the interval's midpoint. */
export function rtcSecondErrorPpm(edges: readonly RtcSecondsEdge[], tscHz: number): { ppm: number; widthUs: number }[] {
  return comparablePairs(edges)
    .pairs.filter((p) => p.steps !== 0)
    .map(({ a, b, steps }) => {
      const mid = (Number(b.tscBefore - a.tscAfter) + Number(b.tscAfter - a.tscBefore)) / 2 / tscHz;
      return { ppm: (mid / steps - 1) * 1e6, widthUs: ((Number(b.tscAfter - b.tscBefore) + Number(a.tscAfter - a.tscBefore)) / tscHz) * 1e6 };
    });
}
