import { describe, expect, it } from 'vitest';
import { judgeOneShot } from './time.js';

// A PIT one-shot armed before a migration: due in [1000, 1100], 50 cycles of grace.
const base = { source: 'PIT channel 0', earliest: 1000n, expiryLatest: 1100n, graceTsc: 50n };

describe('judgeOneShot', () => {
  it('holds for one interrupt in its window', () => {
    expect(judgeOneShot({ ...base, nowTsc: 5000n, interrupts: [1050n] })).toEqual([]);
  });
  it('fails an interrupt before the count could have run out', () => {
    expect(judgeOneShot({ ...base, nowTsc: 5000n, interrupts: [900n] }).map((d) => d.rule)).toEqual(['device-not-early']);
  });
  it('fails a second interrupt of a one-shot', () => {
    expect(judgeOneShot({ ...base, nowTsc: 5000n, interrupts: [1050n, 3000n] }).map((d) => d.rule)).toEqual(['device-once']);
  });
  it('fails a delivery while interrupts were off', () => {
    expect(judgeOneShot({ ...base, nowTsc: 5000n, interrupts: [1500n], unmaskedAt: 2000n }).map((d) => d.rule)).toEqual(['device-not-early']);
  });
  it('fails a lost interrupt once it is due (after STI), and says nothing before', () => {
    expect(judgeOneShot({ ...base, nowTsc: 2049n, interrupts: [], unmaskedAt: 2000n })).toEqual([]);
    expect(judgeOneShot({ ...base, nowTsc: 2050n, interrupts: [], unmaskedAt: 2000n }).map((d) => d.rule)).toEqual(['device-delivered']);
    expect(judgeOneShot({ ...base, nowTsc: 1149n, interrupts: [] })).toEqual([]);
  });
});
