/**
 * Stateful workloads as fast-check commands: a family (timers, migration, ...) describes what a
 * guest can do as commands over a reference model; fast-check generates command sequences and
 * shrinks them to the commands that ran, and each command appends its ops to a ProgramBuilder
 * (ir/builder.ts) while stepping the model. The stepped model is the prediction; the program is
 * what the guest runs.
 *
 * ## A command is a synchronous fc.Command<M, ProgramBuilder>
 *
 * The "real system" a command runs against is the program builder, not the VM: `run` only appends
 * ops and steps a pure model, and nothing executes until the whole program is built and run in one
 * VM (one boot per case, not one per command). Nothing in check() or run() awaits, so a sync
 * Command with fc.modelRun fits: fast-check marks a command as run (`hasRan`, what shrinking and
 * replayPath are made of) exactly as with fc.asyncModelRun, building stays synchronous (usable from
 * fc.sample, tests and replays), and no command can observe the VM half-way. The asynchronous part,
 * the VM, comes once per case, inside checkCommands' judge.
 *
 * ## Blame: why building and marking are two steps
 *
 * fast-check shrinks a commands value over the commands that ran and never drops the last of them
 * (in its model, that is the one whose postcondition threw). Here every command runs before the
 * program does, so the commands after the failing one would stay in every counterexample. So
 * buildFromCommands builds on a copy of fast-check's value and marks nothing; once the program has
 * run, `settle(blame)` marks as run the commands up to the one that appended the op whose
 * observation differs (`commandAt[thread][opIndex]`), all of them without a blame. checkCommands
 * does build, judge and settle in one.
 *
 * ## How a stateful property uses it
 *
 * ```ts
 * arbitrary: (facts, env) => commandsArb(timerCommands(facts), { maxCommands: 40, replayPath: env.options.replayPath }),
 * check: (w, facts, env) => checkCommands(w, () => timerModel(facts), { maxThreads: facts.cpus }, async (built) => {
 *   const obs = await runProgram(env, built.program);                    // one VM
 *   const d = firstDifference(built.model.expected, obs);                // prediction vs guest: { thread, opIndex, ... }
 *   const f = d && env.mismatch(`${d.what} (from ${built.origin[d.thread]![d.opIndex]})`, d.expected, d.observed,
 *     { evidence: { commands: built.ran }, witness: savedCase(built) });
 *   return f ? { verdict: f, blame: d } : { verdict: PASS };
 * }),
 * ```
 *  - The property's arbitrary is the commands arbitrary; make a fresh one per fc.check (it holds the
 *    replay state of that run: runProperty calls def.arbitrary once per check already).
 *  - check() builds, runs the program in a VM, compares the observations with the model's
 *    prediction; `origin` names the command behind the op that differs, and the blame lets
 *    fast-check drop everything after it.
 *  - The failure reports `ran` (the commands whose precondition held, in order); after shrinking
 *    that is the counterexample, and fast-check prints the same list: String(commands) shows only
 *    the commands that ran, then the replayPath.
 *  - `witness: savedCase(built)` makes the runner save the built program, the prediction and `ran`
 *    as plain data (JSON through reports/counterexample.ts when the model is plain data), and
 *    checkCommands takes such a saved case as its workload: `kvmprop replay FILE` (check() on the
 *    saved workload) re-runs exactly that program against that prediction.
 *  - Re-running the fast-check case (`--seed S --path P`) needs the replayPath too: fast-check
 *    replays a path by shrinking without executing the intermediate cases, and the shrinker keeps
 *    only the commands that ran, which it cannot know without executing them ("Unable to replay,
 *    got wrong path"). The replayPath records, for every shrink step of the original run, which
 *    commands had run. When fc.check fails, take it with `replayPathOf(details.counterexample[0])`
 *    (fast-check appends it to the value's String(): `inc,read /*replayPath="..."*\/`) and save it
 *    next to seed and path (counterexample file, results, the rerun line); on rerun pass it to
 *    commandsArb({ replayPath }) along with fc.check's { seed, path }. The case at the path is then
 *    the shrunk one: the same commands run, in the same order.
 */
import fc from 'fast-check';
import { ProgramBuilder, type BuildExtras, type NotesTable, type OriginTable, type TagTable } from '../ir/builder.js';
import type { Program } from '../ir/program.js';

/** One command of a stateful family: check() is the precondition on the model, run() appends ops and steps the model, toString() describes it. */
export type ProgramCommand<M extends object> = fc.Command<M, ProgramBuilder>;

/** A command from its description, its effect and (optionally) its precondition. */
export function programCommand<M extends object>(
  description: string,
  run: (model: M, builder: ProgramBuilder) => void,
  check: (model: Readonly<M>) => boolean = () => true,
): ProgramCommand<M> {
  return { check, run, toString: () => description };
}

export interface CommandsArbOptions {
  /** Most commands in one case (one program). */
  readonly maxCommands: number;
  /** fc.commands' size; default fast-check's. */
  readonly size?: fc.SizeForArbitrary;
  /** The replayPath of a saved counterexample, to re-run it with fc.check({ seed, path }). */
  readonly replayPath?: string;
}

/**
 * fc.commands over the family's command arbitraries. The arbitrary holds the replay state of the
 * fc.check that uses it: make one per fc.check.
 */
export function commandsArb<M extends object>(arbs: readonly fc.Arbitrary<ProgramCommand<M>>[], opts: CommandsArbOptions): fc.Arbitrary<Iterable<ProgramCommand<M>>> {
  if (arbs.length === 0) throw new RangeError('commandsArb needs at least one command arbitrary');
  return fc.commands([...arbs], {
    maxCommands: opts.maxCommands,
    ...(opts.size === undefined ? {} : { size: opts.size }),
    ...(opts.replayPath === undefined ? {} : { replayPath: opts.replayPath }),
  });
}

export interface BuildFromCommandsOptions {
  /** Most threads the program may have: LAYOUT.maxCpus (harness/guest/abi.ts) or the VM's vCPU count. */
  readonly maxThreads: number;
  /** Threads the program starts with (default 1). */
  readonly threads?: number;
  /** Everything of the Program but its threads (canary, ring0, x2apic, ...). */
  readonly program?: BuildExtras;
}

/** An op of the built program: where a difference was seen. */
export interface OpRef {
  readonly thread: number;
  readonly opIndex: number;
}

/**
 * What the property blames a failure on: an op (its command and those before it are kept), or a
 * position in `ran`. The op's own command is right when nothing appended later can run before it
 * (one thread, or threads ordered by barriers); otherwise blame the position of the last command
 * whose ops may have run first, or give no blame (all kept).
 */
export type Blame = OpRef | number;

export interface BuiltFromCommands<M> {
  readonly program: Program;
  /** The model after every command that ran: the prediction. */
  readonly model: M;
  /** Descriptions of the commands whose precondition held (and so appended ops), in order. */
  readonly ran: readonly string[];
  /** origin[thread][opIndex]: the description of the command that appended the op. */
  readonly origin: OriginTable;
  /** commandAt[thread][opIndex]: the position in `ran` of that command (-1: none). */
  readonly commandAt: TagTable;
  readonly notes: NotesTable;
  /**
   * Tell fast-check which commands ran, once the case is judged: those up to the blamed one (the
   * command that appended the op whose observation differs), or all of them without a blame.
   * Returns their descriptions. checkCommands() calls it for you.
   *
   * Why: fast-check keeps, when shrinking, only the commands that ran, and never drops the last of
   * them: in its model, the last command that ran is the one whose postcondition threw. Here every
   * command runs before the program does, so without a blame the commands after the failing one
   * could never be shrunk away. buildFromCommands therefore builds on a copy of fast-check's value
   * and marks nothing; settle() runs the commands again, on the value itself, up to the blamed one.
   */
  settle(blame?: Blame): readonly string[];
}

/** The initial model, or a function making it; a plain-data model is copied (structuredClone), never stepped in place. */
export type InitialModel<M> = M | (() => M);

function freshModel<M extends object>(initial: InitialModel<M>): M {
  return typeof initial === 'function' ? (initial as () => M)() : structuredClone(initial);
}

interface Pass<M> {
  readonly builder: ProgramBuilder;
  readonly model: M;
  readonly ran: string[];
}

/** One fc.modelRun over the commands, against a fresh builder and model, stopping after `limit` commands ran. */
function pass<M extends object>(commands: Iterable<ProgramCommand<M>>, initialModel: InitialModel<M>, opts: BuildFromCommandsOptions, limit = Infinity): Pass<M> {
  const builder = new ProgramBuilder({ maxThreads: opts.maxThreads, ...(opts.threads === undefined ? {} : { threads: opts.threads }) });
  const model = freshModel(initialModel);
  const ran: string[] = [];
  // fast-check's own wrappers mark a command as run in their run() (hasRan: what the shrinker
  // keeps and replayPath records); ours labels its ops and lists it.
  function* labelled(): Generator<ProgramCommand<M>> {
    for (const c of commands) {
      if (ran.length >= limit) return;
      yield {
        check: (m) => c.check(m),
        run: (m, b) => {
          const description = c.toString();
          const position = ran.push(description) - 1;
          try {
            b.withOrigin(description, () => c.run(m, b), position);
          } catch (e) {
            throw new Error(`command ${position + 1} (${description}): ${e instanceof Error ? e.message : String(e)}`, { cause: e });
          }
        },
        toString: () => c.toString(),
      };
    }
  }
  fc.modelRun(() => ({ model, real: builder }), labelled());
  return { builder, model, ran };
}

/**
 * Run commands (fc.modelRun) against a fresh ProgramBuilder and a fresh copy of the model: each
 * command whose check() holds runs, with the ops it appends attributed to its description. A
 * fast-check commands value is built on a copy, so nothing is marked as run until settle().
 */
export function buildFromCommands<M extends object>(
  commands: Iterable<ProgramCommand<M>>,
  initialModel: InitialModel<M>,
  opts: BuildFromCommandsOptions,
): BuiltFromCommands<M> {
  const fromFastCheck = fc.hasCloneMethod(commands);
  const copy = fromFastCheck ? (commands[fc.cloneMethod]() as Iterable<ProgramCommand<M>>) : commands;
  const { builder, model, ran } = pass(copy, initialModel, opts);
  let settled: readonly string[] | undefined;
  return {
    program: builder.build(opts.program),
    model,
    ran,
    origin: builder.origin,
    commandAt: builder.originTags,
    notes: builder.notes,
    settle(blame) {
      if (settled) throw new Error('settle() was called already: fast-check has been told which commands ran');
      const upTo = blameToPosition(blame, builder.originTags, ran.length);
      if (!fromFastCheck) return (settled = ran.slice(0, upTo + 1));
      const again = pass(commands, initialModel, opts, upTo + 1).ran;
      if (again.join('\u0000') !== ran.slice(0, upTo + 1).join('\u0000')) {
        throw new Error(`commands are not deterministic: built [${ran.join(', ')}], then ran [${again.join(', ')}]`);
      }
      return (settled = again);
    },
  };
}

function blameToPosition(blame: Blame | undefined, tags: TagTable, count: number): number {
  if (blame === undefined) return count - 1;
  if (typeof blame === 'number') {
    if (!Number.isInteger(blame) || blame < 0 || blame >= count) throw new RangeError(`blame: no command ${blame} of ${count}`);
    return blame;
  }
  const tag = tags[blame.thread]?.[blame.opIndex];
  if (tag === undefined) throw new RangeError(`blame: no op ${blame.opIndex} in thread ${blame.thread}`);
  // An op no command appended cannot say which commands matter: keep them all.
  return tag < 0 ? count - 1 : tag;
}

/** What a judge returns: the property's verdict, and what to blame a failure on. */
export interface Judged<V> {
  readonly verdict: V;
  /** The op whose observation differs (or a position in `ran`); omitted: every command is kept. */
  readonly blame?: Blame | null;
}

/** A property's workload: commands from fast-check, or a saved case being replayed. */
export type CommandsWorkload<M extends object> = Iterable<ProgramCommand<M>> | SavedCommandsCase<M>;

/**
 * Build, judge (run the program, compare with the model), and settle in one: the shape of a
 * stateful property's check(). The commands are settled even when judge throws (all kept).
 */
export async function checkCommands<M extends object, V>(
  workload: CommandsWorkload<M>,
  initialModel: InitialModel<M>,
  opts: BuildFromCommandsOptions,
  judge: (built: BuiltFromCommands<M>) => Judged<V> | Promise<Judged<V>>,
): Promise<V> {
  const built = asBuilt(workload, initialModel, opts);
  let judged: Judged<V> | undefined;
  try {
    judged = await judge(built);
  } finally {
    built.settle(judged?.blame ?? undefined);
  }
  return judged.verdict;
}

/** A built case as plain data (JSON-able through reports/counterexample.ts when the model is plain data). */
export interface SavedCommandsCase<M> {
  readonly kind: 'kvmprop-commands-case';
  readonly program: Program;
  readonly model: M;
  readonly ran: readonly string[];
  readonly origin: OriginTable;
  readonly commandAt: TagTable;
}

export function savedCase<M>(built: BuiltFromCommands<M>): SavedCommandsCase<M> {
  const { program, model, ran, origin, commandAt } = built;
  return { kind: 'kvmprop-commands-case', program, model, ran, origin, commandAt };
}

export function isSavedCase(w: unknown): w is SavedCommandsCase<unknown> {
  return typeof w === 'object' && w !== null && (w as { kind?: unknown }).kind === 'kvmprop-commands-case';
}

/** A property's workload either way: commands from fast-check (built now), or a saved case (replay). */
export function asBuilt<M extends object>(
  workload: CommandsWorkload<M>,
  initialModel: InitialModel<M>,
  opts: BuildFromCommandsOptions,
): BuiltFromCommands<M> {
  if (isSavedCase(workload)) {
    const w = workload as SavedCommandsCase<M>;
    let settled = false;
    return {
      program: w.program,
      model: w.model,
      ran: w.ran,
      origin: w.origin,
      commandAt: w.commandAt,
      notes: w.origin.map((t) => t.map(() => undefined)),
      settle(blame) {
        if (settled) throw new Error('settle() was called already');
        settled = true;
        return w.ran.slice(0, blameToPosition(blame, w.commandAt, w.ran.length) + 1);
      },
    };
  }
  return buildFromCommands(workload as Iterable<ProgramCommand<M>>, initialModel, opts);
}

/**
 * The replayPath fast-check attached to a commands value (its String() ends with
 * `/*replayPath="..."*\/`; ":" before any shrinking), or undefined (replay log disabled).
 */
export function replayPathOf(commands: unknown): string | undefined {
  const m = /\/\*replayPath=("(?:[^"\\]|\\.)*")\*\/\s*$/.exec(String(commands));
  return m ? (JSON.parse(m[1]!) as string) : undefined;
}

/** The descriptions of the commands of a fast-check commands value that ran in its last execution. */
export function ranCommands(commands: Iterable<{ toString(): string }>): string[] {
  const out: string[] = [];
  // fc.commands yields its CommandWrappers; hasRan is set by their run().
  for (const c of commands) if ((c as { hasRan?: unknown }).hasRan === true) out.push(c.toString());
  return out;
}

/** A fast-check commands value as data: the commands that ran, and the replayPath to save with seed and path. */
export interface CommandsCounterexample {
  readonly commands: readonly string[];
  readonly replayPath?: string;
}

/**
 * fast-check's counterexample (`details.counterexample[0]`) as data, or undefined when the value
 * is not a commands value. JSON cannot hold the command objects themselves; this is what to save.
 */
export function describeCommands(value: unknown): CommandsCounterexample | undefined {
  if (typeof value !== 'object' || value === null || !fc.hasCloneMethod(value) || !(Symbol.iterator in value)) return undefined;
  const items = [...(value as Iterable<unknown>)];
  if (!items.every((c) => typeof c === 'object' && c !== null && typeof (c as { hasRan?: unknown }).hasRan === 'boolean')) return undefined;
  const replayPath = replayPathOf(value);
  return { commands: ranCommands(items as { toString(): string }[]), ...(replayPath === undefined ? {} : { replayPath }) };
}
