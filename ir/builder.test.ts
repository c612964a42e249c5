import { describe, expect, it } from 'vitest';
import { encodeProgram } from '../harness/bytecode.js';
import { LAYOUT } from '../harness/guest/abi.js';
import { MAX_LOOP_DEPTH, NO_ORIGIN, ProgramBuilder, ProgramBuilderError } from './builder.js';
import type { Op } from './ops.js';
import { DEFAULT_CANARY } from './program.js';

const rdtsc: Op = { op: 'rdtsc' };
const out = (value: number): Op => ({ op: 'pioOut', port: 0x80, width: 1, value });

describe('ProgramBuilder', () => {
  it('builds threads op by op, with the default canary and the extras given', () => {
    const b = new ProgramBuilder({ maxThreads: 2 });
    b.thread(0).op(rdtsc).mark(7).mark(1n << 63n);
    expect(b.build()).toEqual({ canary: DEFAULT_CANARY, threads: [[rdtsc, { op: 'mark', value: 7n }, { op: 'mark', value: 1n << 63n }]] });
    expect(b.build({ ring0: true, canary: 5n })).toEqual({ canary: 5n, ring0: true, threads: b.build().threads });
    expect(() => b.build({ threads: [] } as never)).toThrow(ProgramBuilderError);
  });

  it('hands out copies: a built program does not change as the builder goes on', () => {
    const b = new ProgramBuilder({ maxThreads: 1 });
    const o = out(1);
    b.thread(0).op(o);
    const first = b.build();
    (o as { value: number }).value = 9;
    b.thread(0).op(rdtsc);
    expect(first.threads).toEqual([[out(1)]]);
    expect(b.build().threads[0]).toHaveLength(2);
  });

  it('creates threads up to the one asked for, and refuses more than maxThreads', () => {
    const b = new ProgramBuilder({ maxThreads: LAYOUT.maxCpus });
    expect(b.threadCount).toBe(1);
    b.thread(3).op(rdtsc);
    expect(b.build().threads).toEqual([[], [], [], [rdtsc]]);
    b.thread(LAYOUT.maxCpus - 1);
    expect(() => b.thread(LAYOUT.maxCpus)).toThrow(/at most 16 threads/);
    expect(() => b.thread(-1)).toThrow(ProgramBuilderError);
    expect(() => new ProgramBuilder({ maxThreads: 2, threads: 3 })).toThrow(/threads must be 1\.\.2/);
    expect(new ProgramBuilder({ maxThreads: 4, threads: 3 }).threadCount).toBe(3);
    expect(() => new ProgramBuilder({ maxThreads: 0 })).toThrow(ProgramBuilderError);
  });

  it('nests loops up to the guest depth and no deeper', () => {
    const b = new ProgramBuilder({ maxThreads: 1 });
    const nest = (n: number) => (t: ReturnType<ProgramBuilder['thread']>) => {
      if (n === 0) t.op(rdtsc);
      else t.loop(2, nest(n - 1));
    };
    nest(MAX_LOOP_DEPTH)(b.thread(0));
    const ops = b.build().threads[0]!;
    expect(ops.filter((o) => o.op === 'loopBegin')).toHaveLength(8);
    expect(ops.filter((o) => o.op === 'loopEnd')).toHaveLength(8);
    expect(ops[MAX_LOOP_DEPTH]).toEqual(rdtsc);
    expect(() => encodeProgram(b.build())).not.toThrow();
    const deeper = new ProgramBuilder({ maxThreads: 1 });
    expect(() => nest(MAX_LOOP_DEPTH + 1)(deeper.thread(0))).toThrow(/nest at most 8 deep/);
    // The half-built loop stays open, so the program cannot be built by mistake.
    expect(() => deeper.build()).toThrow(/open loop/);
    expect(() => new ProgramBuilder({ maxThreads: 1, maxLoopDepth: 9 })).toThrow(ProgramBuilderError);
  });

  it('puts a barrier in every thread, those created later included, and never inside a loop', () => {
    const b = new ProgramBuilder({ maxThreads: 4, threads: 2 });
    b.withOrigin('one', () => b.thread(0).op(rdtsc));
    b.withOrigin('sync', () => b.barrier());
    b.withOrigin('two', () => b.thread(2).op(out(2)).barrier(10));
    b.thread(1).barrier();
    const p = b.build();
    const bar = (id: number): Op => ({ op: 'barrier', id });
    expect(p.threads).toEqual([
      [rdtsc, bar(0), bar(10), bar(11)],
      [bar(0), bar(10), bar(11)],
      [bar(0), out(2), bar(10), bar(11)],
    ]);
    expect(b.origin).toEqual([
      ['one', 'sync', 'two', NO_ORIGIN],
      ['sync', 'two', NO_ORIGIN],
      ['sync', 'two', 'two', NO_ORIGIN],
    ]);
    // Every thread passes the same barrier sequence.
    const seq = p.threads.map((t) => t.filter((o) => o.op === 'barrier'));
    for (const s of seq) expect(s).toEqual(seq[0]);
    expect(() => b.thread(0).loop(3, () => b.barrier())).toThrow(/inside a loop/);
    expect(() => b.barrier(-1)).toThrow(ProgramBuilderError);
  });

  it('records the origin and note of every op, loops included', () => {
    const b = new ProgramBuilder({ maxThreads: 2 });
    b.thread(0).op(rdtsc);
    b.withOrigin('spin(3)', () => {
      b.thread(1).loop(3, (t) => t.op(out(1), 'the body'), 'the loop');
      b.withOrigin('inner', () => b.thread(0).mark(1));
      b.thread(0).ops([rdtsc, rdtsc]);
    });
    expect(b.currentOrigin).toBe(NO_ORIGIN);
    expect(b.origin).toEqual([
      [NO_ORIGIN, 'inner', 'spin(3)', 'spin(3)'],
      ['spin(3)', 'spin(3)', 'spin(3)'],
    ]);
    expect(b.notes).toEqual([
      [undefined, undefined, undefined, undefined],
      ['the loop', 'the body', 'the loop'],
    ]);
    const p = b.build();
    p.threads.forEach((t, i) => expect(b.origin[i]).toHaveLength(t.length));
  });

  it('refuses ops the guest would refuse, naming the thread, op and origin', () => {
    const b = new ProgramBuilder({ maxThreads: 1 });
    const t = b.thread(0);
    b.withOrigin('bad', () => {
      expect(() => t.op({ op: 'pioOut', port: 0x10000, width: 1, value: 0 })).toThrow(/thread 0, op 0 \(pioOut, from bad\): pioOut.port: expected a u16/);
      expect(() => t.op({ op: 'mmioRead', addr: 1 as unknown as bigint, width: 1 })).toThrow(/expected a u64 bigint/);
      expect(() => t.op({ op: 'cpuid', leaf: 1.5, subleaf: 0, cpl: 0 })).toThrow(/expected a u32/);
      expect(() => t.op({ op: 'rdtsc', extra: 1 } as unknown as Op)).toThrow(/unknown operand/);
      expect(() => t.op({ op: 'nope' } as unknown as Op)).toThrow(/unknown op/);
      for (const o of [{ op: 'loopBegin', count: 1 }, { op: 'loopEnd' }, { op: 'barrier', id: 0 }, { op: 'end' }] as Op[]) {
        expect(() => t.op(o)).toThrow(/through loop\(\)\/barrier\(\)/);
      }
      expect(() => t.loop(-1, () => {})).toThrow(/u32/);
      expect(() => t.mark(1.5)).toThrow(/integer/);
      expect(() => t.mark(-1n)).toThrow(/u64/);
    });
    expect(b.build().threads).toEqual([[]]);
  });
});
