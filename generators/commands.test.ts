/**
 * The command glue on a toy family, no VM: a counter with inc, reset, dec (precondition: the count
 * is not 0), read and add(n) (a loop of incs). Its "system" is a tiny evaluator of the ops these
 * commands append, with an optional planted bug: a dec from 2 drops the counter to 0.
 */
import fc from 'fast-check';
import { test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { encodeProgram } from '../harness/bytecode.js';
import { LAYOUT } from '../harness/guest/abi.js';
import { fromJsonValue, toJsonValue } from '../reports/counterexample.js';
import type { ProgramBuilder } from '../ir/builder.js';
import type { Op } from '../ir/ops.js';
import type { Program } from '../ir/program.js';
import {
  asBuilt,
  buildFromCommands,
  commandsArb,
  programCommand,
  checkCommands,
  describeCommands,
  ranCommands,
  replayPathOf,
  savedCase,
  type BuiltFromCommands,
  type OpRef,
  type ProgramCommand,
  type SavedCommandsCase,
} from './commands.js';

// ---- the toy family -------------------------------------------------------------------------

interface Counter {
  count: number;
  /** The prediction: what each read returns, in order. */
  reads: number[];
}
const initial = (): Counter => ({ count: 0, reads: [] });

const INC = 0x80;
const RESET = 0x81;
const DEC = 0x82;
const outOp = (port: number): Op => ({ op: 'pioOut', port, width: 1, value: 0 });
const t0 = (b: ProgramBuilder) => b.thread(0);

const inc = programCommand<Counter>('inc', (m, b) => {
  t0(b).op(outOp(INC));
  m.count++;
});
const reset = programCommand<Counter>('reset', (m, b) => {
  t0(b).op(outOp(RESET));
  m.count = 0;
});
const dec = programCommand<Counter>(
  'dec',
  (m, b) => {
    t0(b).op(outOp(DEC));
    m.count--;
  },
  (m) => m.count > 0,
);
const read = programCommand<Counter>('read', (m, b) => {
  t0(b).op({ op: 'pioIn', port: INC, width: 1 });
  m.reads.push(m.count);
});
const add = (n: number) =>
  programCommand<Counter>(`add(${n})`, (m, b) => {
    t0(b).loop(n, (t) => t.op(outOp(INC)));
    m.count += n;
  });

const BASIC = [inc, reset, dec, read];
const basicArbs = () => BASIC.map((c) => fc.constant(c));
/** Ops each command appends (add(n): loopBegin, the inc, loopEnd). */
const opsOf = (description: string) => (description.startsWith('add(') ? 3 : 1);

// ---- the toy "system": an evaluator of the ops above ----------------------------------------

interface Observed {
  readonly opIndex: number;
  readonly value: number;
}

function evaluate(p: Program, opts: { bug: boolean }): Observed[] {
  const ops = p.threads[0] ?? [];
  const out: Observed[] = [];
  const loops: { start: number; remaining: number }[] = [];
  let c = 0;
  let pc = 0;
  while (pc < ops.length) {
    const o = ops[pc++]!;
    switch (o.op) {
      case 'loopBegin':
        if (o.count === 0) throw new Error('the toy never loops forever');
        loops.push({ start: pc, remaining: o.count - 1 });
        break;
      case 'loopEnd': {
        const l = loops.at(-1)!;
        if (l.remaining > 0) {
          l.remaining--;
          pc = l.start;
        } else loops.pop();
        break;
      }
      case 'pioOut':
        if (o.port === INC) c++;
        else if (o.port === RESET) c = 0;
        else if (o.port === DEC) c = opts.bug && c === 2 ? 0 : Math.max(0, c - 1);
        break;
      case 'pioIn':
        out.push({ opIndex: pc - 1, value: c });
        break;
      case 'barrier':
      case 'mark':
        break;
      default:
        throw new Error(`the toy does not run ${o.op}`);
    }
  }
  return out;
}

interface Difference extends OpRef {
  readonly summary: string;
}

/** The first read where system and prediction differ, named by the command that appended it. */
function firstDifference(built: Pick<BuiltFromCommands<Counter>, 'program' | 'model' | 'origin'>, bug: boolean): Difference | null {
  const observed = evaluate(built.program, { bug });
  const i = observed.findIndex((o, k) => o.value !== built.model.reads[k]);
  if (i < 0) {
    if (observed.length === built.model.reads.length) return null;
    throw new Error('read count differs');
  }
  const o = observed[i]!;
  const summary = `read ${i} (op ${o.opIndex}, from ${built.origin[0]![o.opIndex]}): expected ${built.model.reads[i]}, observed ${o.value}`;
  return { thread: 0, opIndex: o.opIndex, summary };
}

const build = (cmds: Iterable<ProgramCommand<Counter>>) => buildFromCommands(cmds, initial, { maxThreads: 1 });

interface Execution {
  readonly generated: number;
  readonly built: BuiltFromCommands<Counter>;
  readonly failed: string | null;
  /** What settle() kept: the counterexample fast-check shrinks on. */
  readonly kept: readonly string[];
}

/**
 * The property a family would write, over the toy: the arbitrary is the commands arbitrary; check
 * builds, "runs" the program, compares with the prediction, and blames the op that differs.
 * Records every execution.
 */
function toyProperty(arb: fc.Arbitrary<Iterable<ProgramCommand<Counter>>>, runs: Execution[]) {
  return fc.asyncProperty(arb, async (cmds) => {
    let seen: { built: BuiltFromCommands<Counter>; d: Difference | null } | undefined;
    const verdict = await checkCommands(cmds, initial, { maxThreads: 1 }, async (built) => {
      const d = firstDifference(built, true);
      seen = { built, d };
      return d ? { verdict: `${d.summary}; commands: ${built.ran.slice(0, built.commandAt[0]![d.opIndex]! + 1).join(', ')}`, blame: d } : { verdict: null };
    });
    runs.push({ generated: [...cmds].length, built: seen!.built, failed: verdict, kept: ranCommands(cmds) });
    if (verdict) throw new Error(verdict);
  });
}

const MINIMAL = ['inc', 'inc', 'dec', 'read'];

// ---- tests ----------------------------------------------------------------------------------

describe('buildFromCommands', () => {
  it('runs the commands whose precondition holds, attributes their ops, and steps a fresh model', () => {
    const start: Counter = { count: 0, reads: [] };
    const built = buildFromCommands([dec, inc, add(3), read, dec, reset, dec, read], start, { maxThreads: 1, program: { ring0: true } });
    expect(built.ran).toEqual(['inc', 'add(3)', 'read', 'dec', 'reset', 'read']);
    expect(built.model).toEqual({ count: 0, reads: [4, 0] });
    expect(start).toEqual({ count: 0, reads: [] }); // copied, not stepped in place
    expect(built.program.ring0).toBe(true);
    expect(built.program.threads[0]).toEqual([
      outOp(INC),
      { op: 'loopBegin', count: 3 },
      outOp(INC),
      { op: 'loopEnd' },
      { op: 'pioIn', port: INC, width: 1 },
      outOp(DEC),
      outOp(RESET),
      { op: 'pioIn', port: INC, width: 1 },
    ]);
    // (c) origins map every op back to the command that appended it.
    expect(built.origin).toEqual([['inc', 'add(3)', 'add(3)', 'add(3)', 'read', 'dec', 'reset', 'read']]);
    expect(evaluate(built.program, { bug: false }).map((o) => o.value)).toEqual(built.model.reads);
  });

  it('names the command whose ops the builder refused', () => {
    const bad = programCommand<Counter>('too-deep', (_m, b) => {
      const nest = (n: number) => (n === 0 ? undefined : t0(b).loop(1, () => nest(n - 1)));
      nest(9);
    });
    expect(() => build([inc, bad])).toThrow(/command 2 \(too-deep\): thread 0, op 9 \(loopBegin, from too-deep\): loops nest at most 8 deep/);
    expect(() => buildFromCommands([programCommand<Counter>('wide', (_m, b) => void b.thread(LAYOUT.maxCpus))], initial, { maxThreads: LAYOUT.maxCpus })).toThrow(
      /command 1 \(wide\).*at most 16 threads/,
    );
  });

  test.prop([commandsArb([...basicArbs(), fc.integer({ min: 1, max: 5 }).map(add)], { maxCommands: 40 })], { numRuns: 200 })(
    'builds programs that encode, one origin per op in command order, predicting the correct system',
    (cmds) => {
      const built = build(cmds);
      expect(() => encodeProgram(built.program)).not.toThrow();
      expect(built.origin).toEqual([built.ran.flatMap((d) => Array<string>(opsOf(d)).fill(d))]);
      expect(built.commandAt).toEqual([built.ran.flatMap((d, k) => Array<number>(opsOf(d)).fill(k))]);
      expect(firstDifference(built, false)).toBeNull();
      // Built on a copy: fast-check learns which commands ran only from settle().
      expect(ranCommands(cmds)).toEqual([]);
      expect(built.settle()).toEqual(built.ran);
      expect(ranCommands(cmds)).toEqual(built.ran);
    },
  );
});

describe('settle', () => {
  it('marks the commands up to the blamed one as run, on the fast-check value itself', () => {
    // A value of fc.commands where some command's precondition fails (building marks nothing).
    const value = fc
      .sample(commandsArb(basicArbs(), { maxCommands: 12, size: 'max' }), { numRuns: 50, seed: 3 })
      .find((v) => build(v).ran.length >= 4 && build(v).ran.length < [...v].length)!;
    expect(value).toBeDefined();
    const built = build(value);
    expect(ranCommands(value)).toEqual([]);
    // Blame the op of the third command that ran.
    const third = built.commandAt[0]!.indexOf(2);
    expect(built.settle({ thread: 0, opIndex: third })).toEqual(built.ran.slice(0, 3));
    expect(ranCommands(value)).toEqual(built.ran.slice(0, 3));
    expect(String(value)).toBe(`${built.ran.slice(0, 3).join(',')} /*replayPath=":"*/`);
    expect(() => built.settle()).toThrow(/already/);
  });

  it('keeps every command without a blame, or for an op no command appended, and takes a position too', () => {
    expect(build([inc, dec, read]).settle()).toEqual(['inc', 'dec', 'read']);
    expect(build([inc, dec, read]).settle(1)).toEqual(['inc', 'dec']);
    expect(() => build([inc]).settle(1)).toThrow(RangeError);
    expect(() => build([inc]).settle({ thread: 0, opIndex: 5 })).toThrow(RangeError);
    expect(build([]).settle()).toEqual([]);
  });

  it('refuses commands that do not build the same twice', () => {
    let n = 0;
    const flaky = programCommand<Counter>('flaky', (_m, b) => void t0(b).op(outOp(INC)), () => n++ % 2 === 0);
    const value = fc.sample(commandsArb([fc.constant(flaky)], { maxCommands: 3, size: 'max' }), { numRuns: 20, seed: 1 }).find((v) => [...v].length === 3)!;
    const built = build(value);
    expect(() => built.settle()).toThrow(/not deterministic/);
  });

  it('checkCommands settles even when the judge throws', async () => {
    const value = fc.sample(commandsArb([fc.constant(inc)], { maxCommands: 3, size: 'max' }), { numRuns: 20, seed: 1 }).find((v) => [...v].length === 3)!;
    await expect(checkCommands(value, initial, { maxThreads: 1 }, () => Promise.reject(new Error('VM died')))).rejects.toThrow('VM died');
    expect(ranCommands(value)).toEqual(['inc', 'inc', 'inc']);
  });
});

describe('stateful properties shrink on their commands', () => {
  it('no sequence shorter than inc, inc, dec, read shows the planted bug, and that one does', () => {
    // Brute force over every sequence of up to 4 basic commands: the counterexample below is minimal.
    const failing: string[][] = [];
    const all = (n: number): ProgramCommand<Counter>[][] => (n === 0 ? [[]] : all(n - 1).flatMap((s) => BASIC.map((c) => [...s, c])));
    for (let n = 0; n <= 4; n++) {
      for (const s of all(n)) {
        const built = build(s);
        if (firstDifference(built, true)) failing.push(built.ran.slice());
      }
    }
    expect(failing).toEqual([MINIMAL]);
  });

  it('(a) shrinks to exactly the commands that ran, and to the minimal sequence', async () => {
    let skippedSome = false;
    let trailingSome = false;
    for (let seed = 1; seed <= 12; seed++) {
      const runs: Execution[] = [];
      const details = await fc.check(toyProperty(commandsArb(basicArbs(), { maxCommands: 30, size: 'max' }), runs), { seed, numRuns: 500 });
      expect(details.failed, `seed ${seed}`).toBe(true);
      const cx = details.counterexample![0];
      // What fast-check reports is what ran, in order. The value may still hold a command whose
      // precondition failed (fast-check shows and shrinks only those that ran): it appends nothing.
      expect(ranCommands(cx), `seed ${seed}`).toEqual(MINIMAL);
      expect([...cx].filter((c) => !(c as { hasRan?: boolean }).hasRan).map(String).filter((d) => d !== 'dec')).toEqual([]);
      expect(String(cx)).toMatch(/^inc,inc,dec,read \/\*replayPath="[^"]*"\*\/$/);
      const last = runs.filter((r) => r.failed).at(-1)!;
      expect(last.built.ran).toEqual(MINIMAL);
      expect((details.errorInstance as Error).message).toBe('read 0 (op 3, from read): expected 1, observed 0; commands: inc, inc, dec, read');
      // The first failing case had commands whose precondition did not hold, and commands after
      // the one that failed (which only the blame lets fast-check drop), for some seeds at least.
      const first = runs.find((r) => r.failed)!;
      if (first.generated > first.built.ran.length) skippedSome = true;
      if (first.kept.length < first.built.ran.length) trailingSome = true;
    }
    expect(skippedSome).toBe(true);
    expect(trailingSome).toBe(true);
  });

  it('(b) re-running the reported seed and path with the replayPath re-runs exactly those commands', async () => {
    const runs: Execution[] = [];
    const details = await fc.check(toyProperty(commandsArb(basicArbs(), { maxCommands: 30, size: 'max' }), runs), { seed: 42, numRuns: 500 });
    expect(details.failed).toBe(true);
    const cx = details.counterexample![0];
    const path = details.counterexamplePath!;
    expect(path.split(':').length).toBeGreaterThan(2); // it did shrink
    const replayPath = replayPathOf(cx);
    expect(replayPath).toMatch(/^[A-Za-z0-9+/]+:[A-Za-z0-9+/]*$/);
    expect(describeCommands(cx)).toEqual({ commands: MINIMAL, replayPath });
    expect(describeCommands(savedCase(build(cx)))).toBeUndefined();
    expect(describeCommands([inc, read])).toBeUndefined();

    // What is saved: seed, path, replayPath (JSON round trip, as a counterexample file holds them).
    const saved = JSON.parse(JSON.stringify({ seed: details.seed, path, replayPath })) as { seed: number; path: string; replayPath: string };
    const again: Execution[] = [];
    const replay = await fc.check(toyProperty(commandsArb(basicArbs(), { maxCommands: 30, size: 'max', replayPath: saved.replayPath }), again), {
      seed: saved.seed,
      path: saved.path,
    });
    expect(replay.failed).toBe(true);
    // The first case executed is the shrunk one: the same commands, nothing generated or shrunk before it.
    expect(again[0]!.built.ran).toEqual(MINIMAL);
    expect(again[0]!.built.program).toEqual(runs.filter((r) => r.failed).at(-1)!.built.program);
    expect(ranCommands(replay.counterexample![0])).toEqual(MINIMAL);
    expect((replay.errorInstance as Error).message).toBe((details.errorInstance as Error).message);

    // Without it, fast-check cannot walk the shrink path: it never ran the intermediate cases, so it
    // does not know which of their commands ran.
    await expect((async () => fc.check(toyProperty(commandsArb(basicArbs(), { maxCommands: 30, size: 'max' }), []), { seed: saved.seed, path: saved.path }))()).rejects.toThrow(
      /Unable to replay/,
    );
  });

  it('(a) why the blame: settling every command leaves the commands after the failing one in place', async () => {
    // fast-check never drops the last command that ran (its model: that is the one that failed).
    const lengths: number[] = [];
    for (let seed = 1; seed <= 6; seed++) {
      const details = await fc.check(
        fc.asyncProperty(commandsArb(basicArbs(), { maxCommands: 30, size: 'max' }), async (cmds) => {
          const d = await checkCommands(cmds, initial, { maxThreads: 1 }, (built) => ({ verdict: firstDifference(built, true) })); // no blame
          if (d) throw new Error(d.summary);
        }),
        { seed, numRuns: 500 },
      );
      expect(ranCommands(details.counterexample![0]).slice(0, 4)).toEqual(MINIMAL);
      lengths.push(ranCommands(details.counterexample![0]).length);
    }
    expect(Math.max(...lengths)).toBeGreaterThan(MINIMAL.length);
  });

  it('(b) a saved case replays as plain data: the same program against the same prediction', async () => {
    const built = build([dec, inc, reset, inc, inc, dec, read, inc]);
    expect(built.ran).toEqual(['inc', 'reset', ...MINIMAL, 'inc']);
    const file = JSON.parse(JSON.stringify(toJsonValue(savedCase(built)))) as unknown;
    const back = fromJsonValue(file) as SavedCommandsCase<Counter>;
    const replayed = asBuilt(back, initial, { maxThreads: 1 });
    expect(replayed.program).toEqual(built.program);
    expect(replayed.ran).toEqual(built.ran);
    expect(firstDifference(replayed, true)).toEqual(firstDifference(built, true));
    expect(firstDifference(replayed, true)?.summary).toBe('read 0 (op 5, from read): expected 1, observed 0');
    // checkCommands takes the saved case as it takes commands.
    const kept = await checkCommands(back, initial, { maxThreads: 1 }, (b) => {
      const d = firstDifference(b, true)!;
      return { verdict: b.settle(d), blame: null };
    }).catch((e: Error) => e.message);
    expect(kept).toMatch(/already/); // settle is once only, and checkCommands does it itself
    expect(asBuilt(back, initial, { maxThreads: 1 }).settle({ thread: 0, opIndex: 5 })).toEqual(['inc', 'reset', ...MINIMAL]);
  });

  it('(c) origins name the command behind each op of the shrunk case', async () => {
    const runs: Execution[] = [];
    const details = await fc.check(
      toyProperty(commandsArb([...basicArbs(), fc.integer({ min: 1, max: 3 }).map(add)], { maxCommands: 30, size: 'max' }), runs),
      { seed: 7, numRuns: 500 },
    );
    expect(details.failed).toBe(true);
    const last = runs.filter((r) => r.failed).at(-1)!.built;
    expect(last.origin).toEqual([last.ran.flatMap((d) => Array<string>(opsOf(d)).fill(d))]);
    // The op that differs is the last command's, a read; what fast-check shows is what ran.
    expect(last.ran.at(-1)).toBe('read');
    expect(ranCommands(details.counterexample![0])).toEqual(last.ran);
    expect((details.errorInstance as Error).message).toMatch(/^read 0 \(op \d+, from read\): expected 1, observed 0; commands: /);
  });
});

describe('replayPathOf', () => {
  it('reads the replayPath fast-check appends, and nothing else', () => {
    expect(replayPathOf('inc,read /*replayPath="AB:cD"*/')).toBe('AB:cD');
    expect(replayPathOf('inc,read')).toBeUndefined();
    expect(replayPathOf('x /*replayPath="A"*/ y')).toBeUndefined();
  });
});
