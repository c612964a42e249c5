/**
 * nested.single-level.delivery: the nested family's single-level part, on the host's own KVM. The
 * guest is the only level; each case is a few faulting instructions (generators/nested.ts), each
 * one exec op, at CPL 3 (under kvm_pvm: native user mode, each exception taken by the host and
 * re-injected) or CPL 0. The model (models/nested/exceptions.ts) says what each instruction
 * raises (raisedBy) and what delivering it through the guest's IDT does (deliver over goodIdt():
 * the guest's 256 present DPL-0 interrupt gates); the guest's catch records the vector, error
 * code, RIP and CR2 its handler saw, and how many exceptions its handlers took.
 *
 * The switches follow the host's vendor (APM on AMD, SDM otherwise). The delivery faults here are
 * INT n's gate-DPL #GP, whose EXT is 0 under both, and a step's not-present stack (its `stack`):
 * the frame push's #PF, which has no EXT bit, and the #DF (error code 0) that follows when that #PF
 * goes on the same stack; so they agree.
 */
import fc from 'fast-check';
import { encodeStep, singleLevelCaseArb, singleLevelOps, type ExceptionStep, type SingleLevelCase, type SingleLevelStack } from '../../generators/nested.js';
import { recordsOf, type RecordOf } from '../../ir/ops.js';
import { DEFAULT_CANARY } from '../../ir/program.js';
import { LAYOUT, THREAD_STATE } from '../../harness/guest/abi.js';
import { DF, GP, PF, UD, mnemonic } from '../../models/nested/classes.js';
import {
  APM_EXCEPTIONS,
  GOOD_GATE,
  OK_STACK,
  PF_U,
  SDM_EXCEPTIONS,
  deliver,
  describeErrorCode,
  goodIdt,
  hex,
  raisedBy,
  type DeliveryStep,
  type ExceptionSwitches,
  type HandlerEntry,
  type IdtSetup,
  type InstructionContext,
  type StackSetup,
} from '../../models/nested/exceptions.js';
import type { Check } from '../../ir/checks.js';
import { NO_FAULT } from '../../ir/ops.js';
import { defineProperty, difference, rule, type Difference, type Observation, type PropertyEnv, type ReproPlan } from '../lib/property.js';
import { observeProgram } from '../lib/run.js';

/**
 * A broken model (a mutant's modelVariant.nested), so that a correct host disagrees with it:
 *  - gpAsUd: an instruction that raises #GP (a non-canonical load, MOV from CR0 at CPL 3) is
 *    predicted to raise #UD instead: one vector routed wrongly;
 *  - pageFaultUserBit: false leaves the U/S bit (2) out of every #PF error code, as if CPL-3
 *    accesses were supervisor accesses.
 */
export interface NestedModelVariant {
  readonly gpAsUd?: boolean;
  readonly pageFaultUserBit?: boolean;
}

export interface SingleLevelFacts {
  readonly switches: ExceptionSwitches;
  readonly variant: NestedModelVariant;
}

/** What the model says one step does. */
export interface StepPrediction {
  /** The handler the exception enters, or null when the instruction raises nothing. */
  readonly entry: HandlerEntry | null;
  /** Where the handler's frame RIP points, as an offset into the exec op's 16 bytes. */
  readonly ripOffset: number | null;
  readonly chain: readonly DeliveryStep[];
}

const IST1 = { ...GOOD_GATE, ist: 1 };
/** The guest's IDT (main.c setup_idt): 256 present 64-bit interrupt gates, DPL 0; NMI, #DF and #MC on IST 1; every stack is good. */
const GUEST_IDT: IdtSetup = { ...goodIdt({ 2: IST1, 8: IST1, 18: IST1 }), istStacks: { 1: OK_STACK } };
const NOT_PRESENT: StackSetup = Object.freeze({ kind: 'not-present', rsp: BigInt(LAYOUT.notPresentStack) });

/**
 * The guest's IDT for a step's stack (generators/nested.ts SingleLevelStack): the stack an IST-0
 * gate pushes onto (RSP0 from CPL 3, the current RSP at CPL 0) at LAYOUT.notPresentStack, and
 * for the '-pf-ist' set-ups the #PF gate on IST 1 (execStack bit 1).
 */
export function guestIdt(stack: SingleLevelStack | undefined): IdtSetup {
  if (stack === undefined) return GUEST_IDT;
  const pfIst = stack === 'rsp0-pf-ist' || stack === 'rsp-pf-ist';
  return { ...GUEST_IDT, gates: pfIst ? { ...GUEST_IDT.gates, 14: IST1 } : GUEST_IDT.gates, stack: NOT_PRESENT };
}

/** The guest state an instruction's exception depends on (main.c enable_sse, entry.S). */
export function instructionContext(s: ExceptionStep, cpl: 0 | 3, cr0: CaseCr0 = {}): InstructionContext {
  return {
    cpl,
    cr0: { am: cr0.alignmentCheck ?? false, ts: cr0.taskSwitched ?? false, mp: true, ne: true },
    cr4: { osxmmexcpt: true },
    // Only misaligned-load's own code sets RFLAGS.AC (the interpreter clears it after each op).
    rflags: { ac: s.instruction === 'misaligned-load', tf: s.instruction === 'single-step' },
    ...(s.address === undefined || s.instruction === 'stack-load-non-canonical' ? {} : { address: s.address }),
    ...(s.intVector === undefined ? {} : { intVector: s.intVector }),
  };
}

/** The CR0 bits a case sets (SingleLevelCase): AM, TS. */
export type CaseCr0 = Pick<SingleLevelCase, 'alignmentCheck' | 'taskSwitched'>;

export function predictStep(s: ExceptionStep, cpl: 0 | 3, f: SingleLevelFacts, cr0: CaseCr0 = {}): StepPrediction {
  let raised = raisedBy(s.instruction, instructionContext(s, cpl, cr0), f.switches);
  if (!raised) return { entry: null, ripOffset: null, chain: [] };
  if (f.variant.gpAsUd && raised.source === 'instruction' && raised.vector === GP) raised = { vector: UD, source: 'instruction' };
  if (f.variant.pageFaultUserBit === false && raised.vector === PF && raised.errorCode !== undefined) raised = { ...raised, errorCode: raised.errorCode & ~PF_U };
  const r = deliver(raised, { idt: guestIdt(s.stack), cpl }, f.switches);
  const out = r.outcomes[0];
  if (!out || out.kind !== 'handler') throw new Error(`predictStep: ${s.instruction} does not enter a handler with the guest's IDT`);
  const entry: HandlerEntry = out;
  const faulted = r.chain.some((c) => c.rule !== 'raised' && c.rule !== 'handler-entered');
  // A trap (INT n, INT3, the single-step #DB) reports the RIP after its instruction; a fault, and
  // a fault raised while vectoring, the RIP of the instruction (SDM §6.5; APM §8.2). The #DB trap
  // has completed its instruction either way, so a fault vectoring it reports the next one too.
  // #DF: no claim (SDM Interrupt 8, "Saved Instruction Pointer: The saved contents of CS and EIP
  // registers are undefined"; APM §8.2.9 likewise leaves the saved rIP undefined).
  const enc = encodeStep(s, cr0.taskSwitched);
  const trap = s.instruction === 'single-step' || (!faulted && raised.source === 'software-int');
  return { entry, ripOffset: entry.vector === DF ? null : trap ? enc.after : enc.at, chain: r.chain };
}

const STACK_TEXT: Readonly<Record<SingleLevelStack, string>> = Object.freeze({
  rsp0: 'RSP0 not present',
  'rsp0-pf-ist': 'RSP0 not present, #PF on IST 1',
  rsp: 'RSP not present',
  'rsp-pf-ist': 'RSP not present, #PF on IST 1',
});

export function describeStep(s: ExceptionStep): string {
  const stack = s.stack === undefined ? '' : ` (${STACK_TEXT[s.stack]})`;
  if (s.instruction === 'int-n') return `INT ${hex(s.intVector ?? 0)}${stack}`;
  if (s.address !== undefined) return `${s.instruction} ${hex(s.address)}${stack}`;
  return `${s.instruction}${stack}`;
}

function describeEntry(e: HandlerEntry | null): string {
  if (!e) return 'no exception';
  return `${mnemonic(e.vector)}${e.errorCode === null ? '' : `(${hex(e.errorCode)})`}${e.cr2 === undefined ? '' : ` CR2 ${hex(e.cr2)}`}`;
}

export interface JudgedStep {
  readonly index: number;
  readonly step: ExceptionStep;
  readonly predicted: StepPrediction;
  /** Its exec record; undefined when the thread never got to it. */
  readonly record?: RecordOf<'exec'>;
}

export interface SingleLevelObservation {
  readonly c: SingleLevelCase;
  readonly steps: readonly JudgedStep[];
  /** The thread's final state (abi.ts THREAD_STATE). */
  readonly threadState: number;
  readonly recordCount: number;
}

const cplText = (c: SingleLevelCase) => {
  const cr0 = [c.alignmentCheck ? 'CR0.AM' : '', c.taskSwitched ? 'CR0.TS' : ''].filter(Boolean);
  return `CPL ${c.cpl}${cr0.length ? ` with ${cr0.join(', ')}` : ''}`;
};
const where = (o: SingleLevelObservation, j: JudgedStep) => `step ${j.index} ${describeStep(j.step)} at ${cplText(o.c)}`;
/** The case of this one step: what a difference offers for shrinking. */
const single = (o: SingleLevelObservation, j: JudgedStep) => ({ witness: { cpl: o.c.cpl, ...(o.c.alignmentCheck ? { alignmentCheck: true } : {}), ...(o.c.taskSwitched ? { taskSwitched: true } : {}), steps: [j.step] } satisfies SingleLevelCase });
const evidence = (o: SingleLevelObservation, j: JudgedStep) => ({
  evidence: {
    bytes: encodeStep(j.step, o.c.taskSwitched).bytes.map((b) => b.toString(16).padStart(2, '0')).join(' '),
    chain: j.predicted.chain.map((c) => `${c.rule}: ${c.summary}`),
    ...(j.record ? { record: { faultVector: j.record.faultVector, errorCode: hex(j.record.errorCode), faultRip: hex(j.record.fields.faultRip), codeBase: hex(j.record.fields.codeBase), cr2: hex(j.record.fields.cr2) } } : {}),
  },
});
const extras = (o: SingleLevelObservation, j: JudgedStep) => ({ ...single(o, j), ...evidence(o, j) });

function* recorded(o: SingleLevelObservation): Iterable<JudgedStep & { readonly record: RecordOf<'exec'> }> {
  for (const j of o.steps) if (j.record) yield j as JudgedStep & { readonly record: RecordOf<'exec'> };
}

function* vectorRule(o: SingleLevelObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const want = j.predicted.entry?.vector ?? null;
    const got = j.record.faultVector;
    if (want === got) continue;
    yield difference(
      `${where(o, j)}: the handler of ${got === null ? 'no exception' : mnemonic(got)} ran, the model predicts ${describeEntry(j.predicted.entry)}`,
      { vector: want },
      { vector: got, errorCode: hex(j.record.errorCode) },
      extras(o, j),
    );
  }
}

/** The guest's stub pushes 0 for a vector without an error code, so "none" reads as 0. */
function* errorCodeRule(o: SingleLevelObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const e = j.predicted.entry;
    if (!e || j.record.faultVector !== e.vector) continue;
    const want = e.errorCode ?? 0;
    if (j.record.errorCode === want) continue;
    yield difference(`${where(o, j)}: ${mnemonic(e.vector)} error code ${describeErrorCode(e.vector, j.record.errorCode)}, the model predicts ${describeErrorCode(e.vector, want)}`, { errorCode: hex(want) }, { errorCode: hex(j.record.errorCode) }, extras(o, j));
  }
}

function* cr2Rule(o: SingleLevelObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const e = j.predicted.entry;
    if (!e || e.cr2 === undefined || j.record.faultVector !== e.vector) continue;
    if (j.record.fields.cr2 === e.cr2) continue;
    yield difference(`${where(o, j)}: #PF with CR2 ${hex(j.record.fields.cr2)}, the model predicts ${hex(e.cr2)}`, { cr2: hex(e.cr2) }, { cr2: hex(j.record.fields.cr2) }, extras(o, j));
  }
}

function* ripRule(o: SingleLevelObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const e = j.predicted.entry;
    if (!e || j.predicted.ripOffset === null || j.record.faultVector !== e.vector) continue;
    const offset = j.record.fields.faultRip - j.record.fields.codeBase;
    if (offset === BigInt(j.predicted.ripOffset)) continue;
    yield difference(
      `${where(o, j)}: ${mnemonic(e.vector)} reported RIP ${hex(j.record.fields.faultRip)} (code + ${offset}), the model predicts code + ${j.predicted.ripOffset}`,
      { ripOffset: j.predicted.ripOffset },
      { faultRip: hex(j.record.fields.faultRip), codeBase: hex(j.record.fields.codeBase) },
      extras(o, j),
    );
  }
}

function* oneEntryRule(o: SingleLevelObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const want = j.predicted.entry ? 1n : 0n;
    const got = j.record.fields.exceptionsAfter - j.record.fields.exceptionsBefore;
    if (got === want) continue;
    yield difference(`${where(o, j)}: the guest's handlers took ${got} exceptions, the model predicts ${want}`, { handlerEntries: Number(want) }, { handlerEntries: Number(got) }, extras(o, j));
  }
}

function* continuesRule(o: SingleLevelObservation): Iterable<Difference> {
  const missing = o.steps.find((j) => !j.record);
  if (missing) {
    yield difference(`${where(o, missing)}: no record (the thread did not go on after step ${missing.index - 1})`, { records: o.steps.length }, { records: o.recordCount }, extras(o, missing));
  } else if (o.recordCount !== o.steps.length) {
    yield difference(`${o.recordCount} records for ${o.steps.length} steps at ${cplText(o.c)}`, { records: o.steps.length }, { records: o.recordCount });
  } else if (o.threadState !== THREAD_STATE.done) {
    yield difference(`the thread ended in state ${o.threadState} after its last step at ${cplText(o.c)}`, { state: THREAD_STATE.done }, { state: o.threadState });
  }
}

function switchesFor(env: PropertyEnv): ExceptionSwitches {
  return env.host.cpu.vendor === 'AuthenticAMD' ? APM_EXCEPTIONS : SDM_EXCEPTIONS;
}

export function variantOf(env: PropertyEnv): NestedModelVariant {
  return (env.mutant?.modelVariant?.nested ?? {}) as NestedModelVariant;
}

export async function observeSingleLevel(c: SingleLevelCase, f: SingleLevelFacts, env: PropertyEnv): Promise<Observation<SingleLevelObservation>> {
  const run = await observeProgram(
    env,
    { threads: [singleLevelOps(c)], canary: DEFAULT_CANARY, ...(c.cpl === 0 ? { ring0: true } : {}), ...(c.alignmentCheck ? { alignmentCheck: true } : {}), ...(c.taskSwitched ? { taskSwitched: true } : {}) },
    { role: 'workload' },
  );
  if (!run.ok) return run;
  const all = run.value.records[0] ?? [];
  const records = [...recordsOf(all, 'exec'), ...(recordsOf(all, 'execStack') as unknown as RecordOf<'exec'>[])];
  const steps = c.steps.map((step, index) => {
    const record = records.find((r) => r.opIndex === index);
    return { index, step, predicted: predictStep(step, c.cpl, f, c), ...(record ? { record } : {}) };
  });
  env.metrics.add('exceptionCases');
  env.metrics.add('faultingInstructions', c.steps.length);
  env.metrics.add('handlerEntries', records.reduce((n, r) => n + Number(r.fields.exceptionsAfter - r.fields.exceptionsBefore), 0));
  for (const j of steps) {
    if (j.step.stack !== undefined) env.metrics.add('notPresentStackSteps');
    if (j.predicted.entry) env.metrics.add(`vector.${mnemonic(j.predicted.entry.vector).replace('#', '')}`);
    for (const c of j.predicted.chain) {
      if (c.rule === 'stack-push-fault') env.metrics.add('stackPushFaults');
      if (c.rule === 'double-fault') env.metrics.add('doubleFaults');
    }
  }
  return { ok: true, value: { c, steps, threadState: Number(run.value.vm.threads[0]?.status.state ?? -1n), recordCount: (run.value.records[0] ?? []).length } };
}

/**
 * The case as one program that checks itself: per step, what each rule compares (the vector, the
 * error code, CR2 for a #PF, the RIP as an offset into the step's code, the handler entries), with
 * the model's values; then that the thread ended done. Each check stands alone, so a wrong vector
 * may fail more than one (the rules skip the later comparisons; the first not-ok line is the one).
 */
export function singleLevelRepro(c: SingleLevelCase, f: SingleLevelFacts): ReproPlan {
  const checks: Check[] = [];
  c.steps.forEach((step, record) => {
    const p = predictStep(step, c.cpl, f);
    const e = p.entry;
    const at = (field: string) => ({ thread: 0, record, field });
    const name = `step ${record} ${describeStep(step)} at CPL ${c.cpl}:`;
    checks.push({ kind: 'value', name: `${name} vector ${e ? mnemonic(e.vector) : 'none (0xff)'}`, at: at('faultVector'), expected: BigInt(e?.vector ?? NO_FAULT), mask: 0xffn });
    if (e) {
      checks.push({ kind: 'value', name: `${name} ${mnemonic(e.vector)} error code`, at: at('errorCode'), expected: BigInt(e.errorCode ?? 0), mask: 0xffff_ffffn });
      if (e.cr2 !== undefined) checks.push({ kind: 'value', name: `${name} CR2`, at: at('cr2'), expected: e.cr2 });
      if (p.ripOffset !== null) checks.push({ kind: 'diff', name: `${name} RIP - code base`, at: at('faultRip'), minus: at('codeBase'), expected: BigInt(p.ripOffset) });
    }
    checks.push({ kind: 'diff', name: `${name} handler entries`, at: at('exceptionsAfter'), minus: at('exceptionsBefore'), expected: e ? 1n : 0n });
  });
  checks.push({ kind: 'status', name: `the thread ran every step at CPL ${c.cpl} (state done)`, thread: 0, field: 'state', expected: BigInt(THREAD_STATE.done) });
  return { vms: [{ role: 'workload', program: { threads: [singleLevelOps(c)], canary: DEFAULT_CANARY, ...(c.cpl === 0 ? { ring0: true } : {}), checks } }] };
}

export const singleLevelDelivery = defineProperty({
  id: 'nested.single-level.delivery',
  family: 'nested',
  statement:
    'Every faulting instruction, at CPL 3 and CPL 0, enters exactly one handler of the guest, with the vector, error code, RIP and (for #PF) CR2 the exception model predicts for the guest\'s IDT; the thread goes on after each',
  facts: async (env: PropertyEnv): Promise<SingleLevelFacts> => ({ switches: switchesFor(env), variant: variantOf(env) }),
  arbitrary: (): fc.Arbitrary<SingleLevelCase> => singleLevelCaseArb(),
  observe: observeSingleLevel,
  rules: [
    rule('vector as the model predicts', vectorRule),
    rule('error code as the model predicts', errorCodeRule),
    rule('CR2 as the model predicts (for #PF)', cr2Rule),
    rule('RIP as the model predicts (the instruction for a fault, after it for a trap)', ripRule),
    rule('exactly one handler entry per faulting instruction', oneEntryRule),
    rule('the thread continues after each', continuesRule),
  ],
  repro: (c: SingleLevelCase, f: SingleLevelFacts) => singleLevelRepro(c, f),
});
