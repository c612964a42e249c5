/**
 * A program builder: stateful generators (generators/commands.ts) append ops to it command by
 * command, thread by thread, and get a Program (ir/program.ts) at the end.
 *
 * It is pure and checks as it goes, so a generator bug surfaces at the command that caused it, not
 * as a guest that hangs or refuses its program:
 *  - every operand is in range for its field type (the op table, ir/ops.ts, says which);
 *  - loops are balanced and nest at most `maxLoopDepth` deep (the guest interpreter holds 8);
 *  - a barrier spans every thread, is never inside a loop, and a thread created after a barrier
 *    starts with the barriers appended so far, so every thread passes the same barrier sequence
 *    (the guest's barrier waits for all threads of the program, harness/guest/src/interp.c);
 *  - at most `maxThreads` threads (pass LAYOUT.maxCpus from harness/guest/abi.ts, or the vCPU
 *    count of the VM: ir/ stays free of harness imports).
 * `loopBegin`, `loopEnd`, `barrier` and `end` cannot be appended as plain ops: `loop()` and
 * `barrier()` keep them balanced, and a thread ends where its code ends.
 *
 * Every op remembers where it came from: `origin[thread][opIndex]` is the label that was current
 * when it was appended (`withOrigin(label, fn, tag)`; buildFromCommands sets it to the command's
 * description, and `originTags[thread][opIndex]` to the command's position), and
 * `notes[thread][opIndex]` an optional note given with the op. A mismatch at
 * (thread, opIndex) can thus name the command that appended the op.
 */
import { FIELD_BYTES, OPS, type Op, type OpDef, type OpName } from './ops.js';
import { DEFAULT_CANARY, type Program } from './program.js';

/** Loop nesting depth the guest interpreter supports (struct loop loops[8]). */
export const MAX_LOOP_DEPTH = 8;

/** The origin of ops appended outside any withOrigin(). */
export const NO_ORIGIN = '(no command)';

export interface ProgramBuilderOptions {
  /** Most threads the program may have: LAYOUT.maxCpus, or the VM's vCPU count. */
  readonly maxThreads: number;
  /** Threads the program starts with (default 1); thread(i) adds more up to maxThreads. */
  readonly threads?: number;
  /** Default MAX_LOOP_DEPTH. */
  readonly maxLoopDepth?: number;
}

/** Everything of a Program but its threads, which the builder makes. */
export type BuildExtras = Partial<Omit<Program, 'threads'>>;

/** origin[thread][opIndex]: the label (command description) current when the op was appended. */
export type OriginTable = readonly (readonly string[])[];
/** tags[thread][opIndex]: the tag current when the op was appended (-1: none). */
export type TagTable = readonly (readonly number[])[];
/** notes[thread][opIndex]: the note given with the op, if any. */
export type NotesTable = readonly (readonly (string | undefined)[])[];

export class ProgramBuilderError extends Error {
  override readonly name = 'ProgramBuilderError';
}

/** Appends to one thread. Obtained from ProgramBuilder.thread(i). */
export interface ThreadAppender {
  readonly index: number;
  /** Ops in this thread so far. */
  readonly length: number;
  /** Current loop nesting depth of this thread (0 outside any loop). */
  readonly depth: number;
  /** Append one op (not loopBegin/loopEnd/barrier/end: use loop() and barrier()). */
  op(o: Op, note?: string): ThreadAppender;
  /** Append several ops with one note. */
  ops(os: Iterable<Op>, note?: string): ThreadAppender;
  /** loopBegin(count), whatever body appends to this thread, loopEnd. count 0 loops forever. */
  loop(count: number, body: (t: ThreadAppender) => void, note?: string): ThreadAppender;
  /** Publish a progress marker (the mark op). */
  mark(value: bigint | number, note?: string): ThreadAppender;
  /** A barrier across all threads: ProgramBuilder.barrier(id). */
  barrier(id?: number, note?: string): ThreadAppender;
}

const STRUCTURAL: ReadonlySet<OpName> = new Set<OpName>(['loopBegin', 'loopEnd', 'barrier', 'end']);

function checkOperands(o: Op): void {
  const def: OpDef | undefined = Object.hasOwn(OPS, o.op) ? OPS[o.op] : undefined;
  if (!def) throw new ProgramBuilderError(`unknown op '${String(o.op)}'`);
  const rec = o as unknown as Record<string, unknown>;
  for (const [name, type] of def.operands) {
    const v = rec[name];
    if (type === 'u64') {
      if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) throw new ProgramBuilderError(`${o.op}.${name}: expected a u64 bigint, got ${String(v)}`);
    } else {
      const max = 2 ** (8 * FIELD_BYTES[type]);
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= max) {
        throw new ProgramBuilderError(`${o.op}.${name}: expected a ${type}, got ${String(v)}`);
      }
    }
  }
  const known = new Set(['op', ...def.operands.map(([n]) => n)]);
  const extra = Object.keys(rec).filter((k) => !known.has(k));
  if (extra.length) throw new ProgramBuilderError(`${o.op}: unknown operand(s) ${extra.join(', ')}`);
}

const isU32 = (n: number) => Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff;

interface ThreadState {
  readonly ops: Op[];
  readonly origin: string[];
  readonly tags: number[];
  readonly notes: (string | undefined)[];
  depth: number;
}

export class ProgramBuilder {
  readonly maxThreads: number;
  readonly maxLoopDepth: number;
  readonly #threads: ThreadState[] = [];
  /** Barriers appended so far, in order: a thread created later starts with them. */
  readonly #barriers: { id: number; origin: string; tag: number; note: string | undefined }[] = [];
  #origin = NO_ORIGIN;
  #tag = -1;
  #nextBarrierId = 0;

  constructor(opts: ProgramBuilderOptions) {
    if (!Number.isInteger(opts.maxThreads) || opts.maxThreads < 1) throw new ProgramBuilderError(`maxThreads must be a positive integer, got ${opts.maxThreads}`);
    const depth = opts.maxLoopDepth ?? MAX_LOOP_DEPTH;
    if (!Number.isInteger(depth) || depth < 0 || depth > MAX_LOOP_DEPTH) {
      throw new ProgramBuilderError(`maxLoopDepth must be 0..${MAX_LOOP_DEPTH} (the guest nests loops at most ${MAX_LOOP_DEPTH} deep), got ${depth}`);
    }
    this.maxThreads = opts.maxThreads;
    this.maxLoopDepth = depth;
    const n = opts.threads ?? 1;
    if (!Number.isInteger(n) || n < 1 || n > this.maxThreads) throw new ProgramBuilderError(`threads must be 1..${this.maxThreads}, got ${n}`);
    this.#grow(n);
  }

  /** Threads the program has so far. */
  get threadCount(): number {
    return this.#threads.length;
  }

  /** The label ops are attributed to right now. */
  get currentOrigin(): string {
    return this.#origin;
  }

  /**
   * Attribute every op appended while fn runs to `label`, and to `tag` (a number of the caller's:
   * buildFromCommands passes the command's position). Nested calls restore the outer ones.
   */
  withOrigin<T>(label: string, fn: () => T, tag = -1): T {
    const outer = [this.#origin, this.#tag] as const;
    this.#origin = label;
    this.#tag = tag;
    try {
      return fn();
    } finally {
      [this.#origin, this.#tag] = outer;
    }
  }

  /** The appender of thread i, creating threads up to i (each new one starts with the barriers so far). */
  thread(i: number): ThreadAppender {
    if (!Number.isInteger(i) || i < 0) throw new ProgramBuilderError(`thread index must be a non-negative integer, got ${i}`);
    if (i >= this.maxThreads) throw new ProgramBuilderError(`thread ${i}: a program has at most ${this.maxThreads} threads`);
    this.#grow(i + 1);
    return this.#appender(i);
  }

  /**
   * A barrier in every thread (the ones created later included). Refused while any thread is inside
   * a loop: its barrier would run once per iteration and the others' only once.
   */
  barrier(id?: number, note?: string): this {
    const bid = id ?? this.#nextBarrierId;
    if (!isU32(bid)) throw new ProgramBuilderError(`barrier id must be a u32, got ${bid}`);
    const inLoop = this.#threads.findIndex((t) => t.depth > 0);
    if (inLoop >= 0) throw new ProgramBuilderError(`barrier ${bid}: thread ${inLoop} is inside a loop; a barrier spans all threads and runs once`);
    this.#nextBarrierId = Math.max(this.#nextBarrierId, bid + 1) >>> 0;
    const b = { id: bid, origin: this.#origin, tag: this.#tag, note };
    this.#barriers.push(b);
    for (const t of this.#threads) this.#pushBarrier(t, b);
    return this;
  }

  /** The program so far. Every loop must be closed. The builder can go on afterwards. */
  build(extra: BuildExtras = {}): Program {
    if ('threads' in extra) throw new ProgramBuilderError('build(extra): the threads are the builder’s');
    const open = this.#threads.findIndex((t) => t.depth > 0);
    if (open >= 0) throw new ProgramBuilderError(`thread ${open} has an open loop`);
    return { canary: DEFAULT_CANARY, ...extra, threads: this.#threads.map((t) => [...t.ops]) };
  }

  /** origin[thread][opIndex] (a copy). */
  get origin(): OriginTable {
    return this.#threads.map((t) => [...t.origin]);
  }

  /** tags[thread][opIndex]: the tag given to withOrigin (-1: none) (a copy). */
  get originTags(): TagTable {
    return this.#threads.map((t) => [...t.tags]);
  }

  /** notes[thread][opIndex] (a copy). */
  get notes(): NotesTable {
    return this.#threads.map((t) => [...t.notes]);
  }

  #grow(n: number): void {
    while (this.#threads.length < n) {
      const t: ThreadState = { ops: [], origin: [], tags: [], notes: [], depth: 0 };
      for (const b of this.#barriers) this.#pushBarrier(t, b);
      this.#threads.push(t);
    }
  }

  #push(t: ThreadState, o: Op, note: string | undefined): void {
    t.ops.push(o);
    t.origin.push(this.#origin);
    t.tags.push(this.#tag);
    t.notes.push(note);
  }

  #pushBarrier(t: ThreadState, b: { id: number; origin: string; tag: number; note: string | undefined }): void {
    t.ops.push({ op: 'barrier', id: b.id });
    t.origin.push(b.origin);
    t.tags.push(b.tag);
    t.notes.push(b.note);
  }

  #appender(index: number): ThreadAppender {
    const t = this.#threads[index]!;
    const builder = this;
    const where = (o: { op: string }) => `thread ${index}, op ${t.ops.length} (${o.op}, from ${builder.#origin})`;
    const a: ThreadAppender = {
      index,
      get length() {
        return t.ops.length;
      },
      get depth() {
        return t.depth;
      },
      op(o, note) {
        if (STRUCTURAL.has(o.op)) {
          throw new ProgramBuilderError(`${where(o)}: append ${o.op} through loop()/barrier(); a thread ends where its code ends`);
        }
        try {
          checkOperands(o);
        } catch (e) {
          if (e instanceof ProgramBuilderError) throw new ProgramBuilderError(`${where(o)}: ${e.message}`);
          throw e;
        }
        builder.#push(t, { ...o }, note);
        return a;
      },
      ops(os, note) {
        for (const o of os) a.op(o, note);
        return a;
      },
      loop(count, body, note) {
        if (!isU32(count)) throw new ProgramBuilderError(`${where({ op: 'loopBegin' })}: loop count must be a u32, got ${count}`);
        if (t.depth >= builder.maxLoopDepth) {
          throw new ProgramBuilderError(`${where({ op: 'loopBegin' })}: loops nest at most ${builder.maxLoopDepth} deep`);
        }
        builder.#push(t, { op: 'loopBegin', count }, note);
        t.depth++;
        // A body that throws leaves the loop open, so build() refuses the half-built program.
        body(a);
        t.depth--;
        builder.#push(t, { op: 'loopEnd' }, note);
        return a;
      },
      mark(value, note) {
        if (typeof value === 'number' && !Number.isSafeInteger(value)) throw new ProgramBuilderError(`${where({ op: 'mark' })}: mark value must be an integer, got ${value}`);
        return a.op({ op: 'mark', value: BigInt(value) }, note);
      },
      barrier(id, note) {
        builder.barrier(id, note);
        return a;
      },
    };
    return a;
  }
}
