import fc from 'fast-check';
import { test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { DEFAULT_CANARY } from '../ir/program.js';
import { HOST_PATTERN, MIN_SIGHTING_BYTES, findHostPattern, valueBytes } from './hostPattern.js';

const N = HOST_PATTERN.length;
/** `len` pattern bytes starting at `phase`, wrapping around the 8-byte pattern. */
const run = (phase: number, len: number) => Array.from({ length: len }, (_, i) => HOST_PATTERN[(phase + i) % N]!);
const data = (...parts: number[][]) => Uint8Array.from(parts.flat());
const zeros = (n: number) => Array<number>(n).fill(0);

describe('findHostPattern', () => {
  it('finds a run of 4 or more pattern bytes at any phase', () => {
    for (let phase = 0; phase < N; phase++) {
      expect(findHostPattern(data(zeros(3), run(phase, 4), zeros(3))), `phase ${phase}`).toEqual([{ offset: 3, length: 4 }]);
    }
  });

  it('follows a run across the end of the pattern', () => {
    expect(findHostPattern(data(zeros(1), run(6, 5)))).toEqual([{ offset: 1, length: 5 }]);
  });

  it('reports one maximal run, however long', () => {
    expect(findHostPattern(data(zeros(2), run(3, 21), zeros(2)))).toEqual([{ offset: 2, length: 21 }]);
    expect(findHostPattern(data(run(0, 8 * 512)))).toEqual([{ offset: 0, length: 8 * 512 }]);
  });

  it('reports separate runs with their offsets', () => {
    expect(findHostPattern(data(run(0, 4), zeros(1), run(5, 6), run(0, 4)))).toEqual([
      { offset: 0, length: 4 },
      { offset: 5, length: 6 },
      { offset: 11, length: 4 },
    ]);
  });

  it('ignores runs of 3 bytes or fewer', () => {
    expect(MIN_SIGHTING_BYTES).toBe(4);
    expect(findHostPattern(data(run(0, 3), zeros(1), run(2, 3), zeros(1), run(7, 1)))).toEqual([]);
    expect(findHostPattern(data(run(1, 7)), 8)).toEqual([]);
    expect(findHostPattern(data(run(1, 8)), 8)).toEqual([{ offset: 0, length: 8 }]);
  });

  it('finds a run at the very end of the data, and nothing in empty data', () => {
    expect(findHostPattern(data(zeros(5), run(4, 4)))).toEqual([{ offset: 5, length: 4 }]);
    expect(findHostPattern(new Uint8Array(0))).toEqual([]);
  });

  it('never matches the default canary', () => {
    const canary = valueBytes(DEFAULT_CANARY, 8);
    const filled = new Uint8Array(4096);
    for (let i = 0; i < filled.length; i++) filled[i] = canary[i % 8]!;
    expect(findHostPattern(filled)).toEqual([]);
    // At any alignment, and next to a real sighting.
    expect(findHostPattern(filled.subarray(3))).toEqual([]);
    expect(findHostPattern(data(Array.from(filled.subarray(0, 7)), zeros(1), run(0, 4)))).toEqual([{ offset: 8, length: 4 }]);
  });

  const notPattern = fc.integer({ min: 0, max: 255 }).filter((b) => !HOST_PATTERN.includes(b));
  test.prop([
    fc.array(notPattern, { maxLength: 64 }),
    fc.array(notPattern, { maxLength: 64 }),
    fc.integer({ min: 0, max: N - 1 }),
    fc.integer({ min: MIN_SIGHTING_BYTES, max: 40 }),
  ])('finds exactly the run planted in data that has no pattern bytes', (before, after, phase, len) => {
    expect(findHostPattern(data(before, run(phase, len), after))).toEqual([{ offset: before.length, length: len }]);
  });
});

describe('valueBytes', () => {
  it('gives the low `width` bytes, little-endian', () => {
    expect(Array.from(valueBytes(0x1122334455667788n, 8))).toEqual([0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
    expect(Array.from(valueBytes(0x1122334455667788n, 2))).toEqual([0x88, 0x77]);
    expect(Array.from(valueBytes(0xabn, 4))).toEqual([0xab, 0, 0, 0]);
    expect(valueBytes(0x1234n, 0)).toHaveLength(0);
  });

  it('lets a register holding the pattern be found', () => {
    let v = 0n;
    for (let i = 7; i >= 0; i--) v = (v << 8n) | BigInt(HOST_PATTERN[i]!);
    expect(findHostPattern(valueBytes(v, 8))).toEqual([{ offset: 0, length: 8 }]);
    expect(findHostPattern(valueBytes(v, 4))).toEqual([{ offset: 0, length: 4 }]);
  });
});
