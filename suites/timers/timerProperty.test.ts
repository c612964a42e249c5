/** Which timer differences a bound measured again after the case may decide (timerProperty.ts decidedByBound). */
import { describe, expect, it } from 'vitest';
import type { TimerDifference } from '../../models/timers/common.js';
import { decidedByBound } from './timerProperty.js';

const d = (rule: TimerDifference['rule'], expected: unknown): TimerDifference => ({ rule, summary: rule, expected, observed: null, eventIndex: null });

describe('the differences a recalibrated lateness bound decides', () => {
  it('a lost interrupt, a window short of ticks, a slew that has not caught up', () => {
    expect(decidedByBound(d('exact-count', { vector: 64, earliest: 1n, dueBy: 2n, why: 'one-shot' }))).toBe(true);
    expect(decidedByBound(d('exact-count', { tick: {}, dueBy: 2n }))).toBe(true);
    expect(decidedByBound(d('window-count', { ticks: { min: 29, max: 31 } }))).toBe(true);
    expect(decidedByBound(d('slew-converges', {}))).toBe(true);
  });

  it('never an extra interrupt, an early one, a spurious one or a read', () => {
    expect(decidedByBound(d('exact-count', { expiries: 1 }))).toBe(false);
    expect(decidedByBound(d('exact-count', { ticks: 3 }))).toBe(false);
    for (const rule of ['never-early', 'spurious-after-disarm', 'immediate', 'tmcct-range', 'tmcct-continuous-across-tdcr', 'pit-count-read', 'kvmclock-monotonic-vcpu'] as const) {
      expect(decidedByBound(d(rule, { dueBy: 1n }))).toBe(false);
    }
  });
});
