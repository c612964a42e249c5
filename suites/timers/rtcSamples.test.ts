import { describe, expect, it } from 'vitest';
import { rtcWindowSamples } from './rtc.js';

// A pure unit: two windows of a made-up prediction at a 1 GHz TSC (1 tick = 1 ns).
const MS = 1_000_000n;
// A segment starts and ends at a register write: [tscBefore, tscAfter] = [at - 1 µs, at].
const write = (at: bigint) => ({ lo: at - 1000n, hi: at });
const seg = (at: bigint, end: bigint | null, rs: number) => ({ startEvent: 0, start: write(at), rs, period: { num: 1n, den: 1n }, first: write(at), end: end === null ? null : write(end), endEvent: null, phase: '' });

describe('rtc.windowCount samples', () => {
  it('give each window its count against the model, its rate, where it starts and its case', () => {
    const p = {
      windows: [
        { from: 10n * MS, to: 30n * MS, fromEvent: 0, toEvent: 1, ticks: { min: 1, max: 2 } },
        { from: 30n * MS, to: 80n * MS, fromEvent: 1, toEvent: 2, ticks: { min: 49, max: 51 } },
        { from: 10n * MS, to: 90n * MS, fromEvent: 0, toEvent: null, ticks: { min: 50, max: 53 } },
      ],
      // rs 15: 2 Hz; rs 6: 1024 Hz.
      segments: [seg(10n * MS, 30n * MS, 15), seg(30n * MS, null, 6)],
    } as never;
    const observed = [11n, 25n, 31n, 32n, 79n, 80n].map((ms) => ({ tsc: ms * MS }));
    const s = rtcWindowSamples(p, observed, { tscHz: 1e9, t0: 5n * MS, caseIndex: 3, labels: { timer: 'rtc' } });
    expect(s).toEqual([
      { series: 'rtc.windowCount', value: 2, labels: { timer: 'rtc', min: 1, max: 2, hz: 2, ms: 20, atMs: 5, case: 3, span: 'between' } },
      // The rate the write at 30 ms set, not the one it ended; 80 ms is the end of the window, not in it.
      { series: 'rtc.windowCount', value: 3, labels: { timer: 'rtc', min: 49, max: 51, hz: 1024, ms: 50, atMs: 25, case: 3, span: 'between' } },
      { series: 'rtc.windowCount', value: 6, labels: { timer: 'rtc', min: 50, max: 53, hz: 2, ms: 80, atMs: 5, case: 3, span: 'run' } },
    ]);
  });
});
