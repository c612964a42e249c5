import { describe, expect, it } from 'vitest';
import {
  calibrateTscHz,
  ceilDiv,
  disabledWindows,
  durHi,
  durLo,
  enabledAfter,
  floorDiv,
  immediateBound,
  judgeExpiries,
  ppbOf,
  tscRateFromCpuid,
  unblockedFrom,
  type ExpectedInterrupt,
} from './common.js';

describe('arithmetic', () => {
  it('floor and ceiling division round towards -∞ and +∞', () => {
    expect([floorDiv(7n, 2n), floorDiv(-7n, 2n), ceilDiv(7n, 2n), ceilDiv(-7n, 2n), floorDiv(6n, 3n)]).toEqual([3n, -4n, 4n, -3n, 2n]);
  });
  it('durations round outwards and widen by the skew', () => {
    const r = { num: 10n, den: 3n }; // 3.33 cycles per unit
    expect([durLo(3n, r, 0n), durHi(3n, r, 0n)]).toEqual([10n, 10n]);
    expect([durLo(1n, r, 0n), durHi(1n, r, 0n)]).toEqual([3n, 4n]);
    const ppb = ppbOf(100); // 100 ppm
    expect([durLo(1_000_000n, { num: 1n, den: 1n }, ppb), durHi(1_000_000n, { num: 1n, den: 1n }, ppb)]).toEqual([999_900n, 1_000_100n]);
  });
});

describe('clock rates the guest can see', () => {
  it('prefers 0x4000_0010 (kHz), then 15H with a crystal, then 15H/16H, else null', () => {
    expect(tscRateFromCpuid({ leaf40000010: { eax: 2_100_000, ebx: 1_000_000 }, leaf15: { eax: 2, ebx: 176, ecx: 24_000_000 } })).toMatchObject({ tscHz: 2_100_000_000n, apicBusHz: 1_000_000_000n });
    expect(tscRateFromCpuid({ leaf15: { eax: 2, ebx: 176, ecx: 24_000_000 } })).toMatchObject({ tscHz: 2_112_000_000n, apicBusHz: null });
    const nominal = tscRateFromCpuid({ leaf15: { eax: 2, ebx: 176, ecx: 0 }, leaf16: { eax: 2100 } });
    expect(nominal).toMatchObject({ tscHz: 2_100_000_000n });
    expect(nominal!.uncertaintyPpm).toBeGreaterThan(100);
    expect(tscRateFromCpuid({ leaf15: { eax: 2, ebx: 176, ecx: 0 } })).toBeNull();
    expect(tscRateFromCpuid({})).toBeNull();
  });
  it('calibrates against a second clock, with the stamp widths as the error', () => {
    const r = calibrateTscHz({ tscBefore: 1_000n, tscAfter: 1_200n, ns: 0n }, { tscBefore: 3_000_001_000n, tscAfter: 3_000_001_200n, ns: 1_000_000_000n });
    expect(r.tscHz).toBe(3_000_000_000n);
    expect(r.uncertaintyPpm).toBeCloseTo(0.1333, 3);
  });
});

describe('interrupt-enable windows', () => {
  const ev = [
    { kind: 'mark', tscBefore: 0n, tscAfter: 10n },
    { kind: 'cli', tscBefore: 100n, tscAfter: 110n },
    { kind: 'mark', tscBefore: 200n, tscAfter: 210n },
    { kind: 'sti', tscBefore: 300n, tscAfter: 310n },
    { kind: 'mark', tscBefore: 400n, tscAfter: 410n },
  ];
  it('CLI..STI are blocked; immediate waits for the STI', () => {
    expect(disabledWindows(ev, true, 1000n)).toEqual([{ lo: 100n, hi: 310n }]);
    const on = enabledAfter(ev, true);
    expect(on).toEqual([true, false, false, true, true]);
    expect(immediateBound(ev, on, 0, 'action-stamp')).toBe(10n);
    expect(immediateBound(ev, on, 2, 'action-stamp')).toBe(310n);
    expect(immediateBound(ev, on, 2, 'next-stamp')).toBe(410n);
    expect(unblockedFrom(disabledWindows(ev, true, 1000n))(150n)).toBe(310n);
    expect(unblockedFrom([{ lo: 0n, hi: 50n }, { lo: 40n, hi: 90n }])(10n)).toBe(90n);
  });
});

describe('judgeExpiries', () => {
  const e = (earliest: bigint, count: 'once' | 'at-most-once' = 'once', latest: bigint | null = null): ExpectedInterrupt => ({ vector: 0x30, earliest, expiryLatest: earliest + 10n, latest, count, eventIndex: 0, why: 'test' });
  const opts = { latenessTsc: 100n, endTsc: 10_000n, blocked: [], eois: null, delivery: 'merge-while-pending' as const, source: 'test' };
  const o = (tsc: bigint) => ({ tsc, vector: 0x30 });
  it('an at-most-once expiry may or may not come', () => {
    expect(judgeExpiries([e(1000n, 'at-most-once')], [], [], opts)).toEqual([]);
    expect(judgeExpiries([e(1000n, 'at-most-once')], [], [o(1050n)], opts)).toEqual([]);
  });
  it('every-expiry needs a delivery each; merge-while-pending lets a pending one absorb the next', () => {
    const two = [e(1000n), e(1050n)];
    expect(judgeExpiries(two, [], [o(1080n)], opts)).toEqual([]);
    expect(judgeExpiries(two, [], [o(1080n)], { ...opts, delivery: 'every-expiry' }).map((d) => d.rule)).toEqual(['exact-count']);
  });
  it('a deferred EOI extends the due time of the next', () => {
    const two = [e(1000n), e(2000n)];
    expect(judgeExpiries(two, [], [o(1010n), o(3000n)], { ...opts, eois: [2990n] })).toEqual([]);
    expect(judgeExpiries(two, [], [o(1010n), o(3000n)], opts).map((d) => d.rule)).toEqual(['exact-count']);
  });
});
