import { describe, expect, it } from 'vitest';
import { judgeRtcClock, RTC_CLOCK_TOLERANCE_PPM, timeOfDay, type RtcSecondsEdge } from './rtcClock.js';

const HZ = 2_000_000_000;
const S = BigInt(HZ);
const BCD24 = 0x02;
const BIN24 = 0x06;
const bcd = (v: number) => ((v / 10) << 4) | v % 10;
const edge = (t: bigint, sec: number, over: Partial<RtcSecondsEdge> = {}, k = 0): RtcSecondsEdge => ({
  tscBefore: t - 20_000n,
  tscAfter: t + 20_000n,
  seconds: bcd(sec),
  minutes: bcd(30),
  hours: bcd(13),
  regB: BCD24,
  timedOut: false,
  eventIndex: k,
  ...over,
});
const judge = (e: RtcSecondsEdge[]) => judgeRtcClock(e, { tscHz: HZ, tolerancePpm: RTC_CLOCK_TOLERANCE_PPM }).map((d) => d.rule);

describe('timeOfDay: the data modes of register B', () => {
  it('BCD and binary, 24 and 12 hours (bit 7 of the hours: PM)', () => {
    expect(timeOfDay({ seconds: 0x59, minutes: 0x30, hours: 0x13, regB: BCD24 })).toEqual({ s: 13 * 3600 + 30 * 60 + 59 });
    expect(timeOfDay({ seconds: 59, minutes: 30, hours: 13, regB: BIN24 })).toEqual({ s: 13 * 3600 + 30 * 60 + 59 });
    expect(timeOfDay({ seconds: 0x59, minutes: 0x30, hours: 0x81, regB: 0 })).toEqual({ s: 13 * 3600 + 30 * 60 + 59 });
    expect(timeOfDay({ seconds: 0, minutes: 0, hours: 0x12, regB: 0 })).toEqual({ s: 0 }); // 12 AM is midnight
    expect(timeOfDay({ seconds: 0x5a, minutes: 0, hours: 0, regB: BCD24 })).toHaveProperty('invalid');
    expect(timeOfDay({ seconds: 60, minutes: 0, hours: 0, regB: BIN24 })).toHaveProperty('invalid');
  });
});

describe('judgeRtcClock', () => {
  const t0 = 1_000_000_000_000n;
  it('one second of time of day per second of TSC passes; across the minute too', () => {
    expect(judge([edge(t0, 58), edge(t0 + S, 59), edge(t0 + 2n * S, 0, { minutes: bcd(31) })])).toEqual([]);
  });
  it('an RTC 1% slow or fast fails the rate rule; 0.05% (NTP slew) passes', () => {
    expect(judge([edge(t0, 10), edge(t0 + (S * 101n) / 100n, 11)])).toEqual(['rtc-clock-rate']);
    expect(judge([edge(t0, 10), edge(t0 + (S * 99n) / 100n, 11)])).toEqual(['rtc-clock-rate']);
    expect(judge([edge(t0, 10), edge(t0 + (S * 10005n) / 10000n, 11)])).toEqual([]);
  });
  it('two seconds in one second of TSC (a skipped second) fails; two in two passes', () => {
    expect(judge([edge(t0, 10), edge(t0 + S, 12)])).toEqual(['rtc-clock-rate']);
    expect(judge([edge(t0, 10), edge(t0 + 2n * S, 12)])).toEqual([]);
  });
  it('a time that does not advance, invalid registers and a wait with no change fail', () => {
    expect(judge([edge(t0, 10), edge(t0 + S, 10)])).toEqual(['rtc-clock-advance']);
    expect(judge([edge(t0, 10), edge(t0 + S, 11, { hours: 0x2a })])).toEqual(['rtc-clock-advance']);
    expect(judge([edge(t0, 10, { timedOut: true, tscBefore: t0, tscAfter: t0 + (S * 12n) / 10n })])).toEqual(['rtc-clock-rate']);
    expect(judge([edge(t0, 10, { timedOut: true, tscBefore: t0, tscAfter: t0 + (S * 9n) / 10n })])).toEqual([]);
  });
  it('a data-mode change between two changes leaves that pair uncompared (datasheet); reencodes compares it', () => {
    const e = [edge(t0, 10), edge(t0 + S, 11, { seconds: 11, minutes: 30, hours: 13, regB: BIN24 })];
    expect(judge(e)).toEqual([]);
    expect(judgeRtcClock([e[0]!, { ...e[1]!, tscBefore: t0 + 2n * S, tscAfter: t0 + 2n * S + 1n }], { tscHz: HZ, tolerancePpm: 1000, dataModeChange: 'reencodes' }).map((d) => d.rule)).toEqual(['rtc-clock-rate']);
  });
  it('a stamp wide enough to hold the right second passes (the intervals meet)', () => {
    expect(judge([edge(t0, 10), { ...edge(t0 + (S * 101n) / 100n, 11), tscBefore: t0 + S - 1_000_000n }])).toEqual([]);
  });
});
