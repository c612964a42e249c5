import { describe, expect, it } from 'vitest';
import { execution, layoutOps, LayoutError, MAX_LOOP_DEPTH, opIndexAt, placeOps, totalOver } from './layout.js';
import type { Op } from './ops.js';

const mark = (value: bigint): Op => ({ op: 'mark', value });
const loop = (count: number, ...body: Op[]): Op[] => [{ op: 'loopBegin', count }, ...body, { op: 'loopEnd' }];
const names = (ops: Iterable<{ op: Op }>, n = 100) => {
  const out: string[] = [];
  for (const p of ops) {
    if (out.length === n) break;
    out.push(p.op.op === 'mark' ? `m${p.op.value}` : p.op.op);
  }
  return out;
};

describe('layoutOps', () => {
  it('places each op at its byte offset', () => {
    const { placed, codeBytes } = placeOps([mark(1n), { op: 'sti' }, { op: 'rdtsc' }]);
    expect(placed.map((p) => p.offset)).toEqual([0, 9, 10]);
    expect(codeBytes).toBe(11);
  });

  it('nests loops and unrolls them in execution order', () => {
    const l = layoutOps([mark(1n), ...loop(2, mark(2n), ...loop(3, mark(3n))), mark(4n)]);
    expect(names(execution(l))).toEqual(['m1', 'm2', 'm3', 'm3', 'm3', 'm2', 'm3', 'm3', 'm3', 'm4']);
  });

  it('runs a forever loop forever, and stops at end', () => {
    expect(names(execution(layoutOps(loop(0, mark(1n)))), 5)).toEqual(['m1', 'm1', 'm1', 'm1', 'm1']);
    expect(names(execution(layoutOps([mark(1n), { op: 'end' }, mark(2n)])))).toEqual(['m1']);
    expect(names(execution(layoutOps([...loop(0), mark(2n)])))).toEqual([]);
  });

  it('refuses unbalanced and too deep loops', () => {
    expect(() => layoutOps([{ op: 'loopEnd' }])).toThrow(LayoutError);
    expect(() => layoutOps([{ op: 'loopBegin', count: 1 }])).toThrow(/without loopEnd/);
    const deep = Array.from({ length: MAX_LOOP_DEPTH + 1 }, () => ({ op: 'loopBegin', count: 1 }) as Op);
    expect(() => layoutOps([...deep, ...deep.map(() => ({ op: 'loopEnd' }) as Op)])).toThrow(/more than 8 deep/);
  });

  it('sums a size over the executed ops, loops multiplied, forever loops by their budget', () => {
    const l = layoutOps([mark(1n), ...loop(3, mark(2n), mark(3n)), ...loop(0, mark(4n))]);
    expect(totalOver(l, () => 1, (body) => body * 100)).toBe(1 + 6 + 100);
  });

  it('maps a pc inside an op back to it', () => {
    const l = placeOps([mark(1n), { op: 'sti' }, { op: 'rdtsc' }]);
    expect([0, 8, 9, 10, 11].map((pc) => opIndexAt(l, pc))).toEqual([0, 0, 1, 2, -1]);
  });
});
