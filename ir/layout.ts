/**
 * The one walker over a thread's ops: where each op sits in the encoded code, how loops nest, and
 * the order the guest executes them in. Encoding, record sizing, decoding and mapping the guest's
 * reported pc back to an op all read this, so loop semantics exist once on the host (and once in
 * the guest's interpreter, harness/guest/src/interp.c, which this mirrors):
 *   loopBegin(count) … loopEnd runs its body `count` times; count 0 runs it forever; loops nest up
 *   to MAX_LOOP_DEPTH deep; an `end` op stops the thread.
 */
import { FIELD_BYTES, OPS, type Op, type OpDef } from './ops.js';

/** How deep loops may nest (the guest keeps a fixed stack of this many). */
export const MAX_LOOP_DEPTH = 8;

/** One op of the thread, where it is. */
export interface Placed {
  readonly op: Op;
  /** Position in the thread's op list. */
  readonly opIndex: number;
  /** Byte offset of its opcode in the encoded code. */
  readonly offset: number;
}

/** A thread's ops as a tree: straight ops and loops with their bodies. */
export type Node = { readonly kind: 'op'; readonly at: Placed } | { readonly kind: 'loop'; readonly at: Placed; readonly count: number; readonly body: readonly Node[] };

export interface Layout {
  readonly ops: readonly Op[];
  /** Every op in list order, with its offset. */
  readonly placed: readonly Placed[];
  readonly tree: readonly Node[];
  /** Encoded size of the thread's code. */
  readonly codeBytes: number;
}

export function opBytes(o: Op): number {
  const def: OpDef = OPS[o.op];
  return 1 + def.operands.reduce((n, [, t]) => n + FIELD_BYTES[t], 0);
}

export class LayoutError extends Error {
  override name = 'LayoutError';
}

/** Where each op's bytes start, in list order, and the code's size (any op sequence, loops unchecked). */
export function placeOps(ops: readonly Op[]): { placed: Placed[]; codeBytes: number } {
  const placed: Placed[] = [];
  let offset = 0;
  for (const [opIndex, op] of ops.entries()) {
    placed.push({ op, opIndex, offset });
    offset += opBytes(op);
  }
  return { placed, codeBytes: offset };
}

/** Lay a thread out; throws LayoutError for unbalanced or too deeply nested loops. */
export function layoutOps(ops: readonly Op[]): Layout {
  const { placed, codeBytes: offset } = placeOps(ops);
  const root: Node[] = [];
  const stack: { at: Placed; count: number; body: Node[] }[] = [];
  for (const at of placed) {
    const body = stack.length ? stack[stack.length - 1]!.body : root;
    if (at.op.op === 'loopBegin') {
      if (stack.length === MAX_LOOP_DEPTH) throw new LayoutError(`op ${at.opIndex}: loops nest more than ${MAX_LOOP_DEPTH} deep`);
      stack.push({ at, count: at.op.count, body: [] });
    } else if (at.op.op === 'loopEnd') {
      const loop = stack.pop();
      if (!loop) throw new LayoutError(`op ${at.opIndex}: loopEnd without loopBegin`);
      (stack.length ? stack[stack.length - 1]!.body : root).push({ kind: 'loop', at: loop.at, count: loop.count, body: loop.body });
    } else body.push({ kind: 'op', at });
  }
  if (stack.length) throw new LayoutError(`op ${stack[stack.length - 1]!.at.opIndex}: loopBegin without loopEnd`);
  return { ops, placed, tree: root, codeBytes: offset };
}

/** Index of the op whose bytes contain `pc` (the guest reports the pc of the op it was in), or -1. */
export function opIndexAt(layout: Pick<Layout, 'placed'>, pc: number): number {
  let lo = 0;
  let hi = layout.placed.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const p = layout.placed[mid]!;
    if (pc < p.offset) hi = mid - 1;
    else if (pc >= p.offset + opBytes(p.op)) lo = mid + 1;
    else return p.opIndex;
  }
  return -1;
}

/**
 * The sum over the ops the thread executes of `size(op)`, loops multiplied out; a loop that runs
 * forever counts `forever(bodySize)` (the program's budget for open loops).
 */
export function totalOver(layout: Layout, size: (op: Op) => number, forever: (bodySize: number) => number): number {
  const sum = (nodes: readonly Node[]): number =>
    nodes.reduce((n, x) => {
      if (x.kind === 'op') return n + size(x.at.op);
      const body = sum(x.body);
      return n + (x.count === 0 ? forever(body) : body * x.count);
    }, 0);
  return sum(layout.tree);
}

/** The ops in the order the guest executes them (loops unrolled; endless for a forever loop). */
export function* execution(layout: Layout): Generator<Placed> {
  function* run(nodes: readonly Node[]): Generator<Placed, boolean> {
    for (const x of nodes) {
      if (x.kind === 'op') {
        if (x.at.op.op === 'end') return false;
        yield x.at;
        continue;
      }
      // An empty body does nothing however often it runs; an empty forever loop never ends.
      if (x.body.length === 0) {
        if (x.count === 0) return false;
        continue;
      }
      for (let i = 0; x.count === 0 || i < x.count; i++) {
        if (!(yield* run(x.body))) return false;
      }
    }
    return true;
  }
  yield* run(layout.tree);
}
