/**
 * Nested SVM cases: a short sequence (1–4) of L2 runs, each one VMRUN of the guest's L1 (the
 * svmRun op, harness/guest/src/svm.c) with its own VMCB: L1's intercepts, L2's IDT set-up and one
 * event — an instruction in L2 from the single-level set (at CPL 0), or an EVENTINJ.
 *
 * L2's IDT is 256 good gates (DPL 0, IST 0) with an IDTR limit (full, empty as in KVM's
 * nested_exceptions_test, or cut below some vector) and some gates of vectors 0–31 not present,
 * so that delivery itself faults: #GP(vector·8 | 2 | EXT) beyond the limit, #NP(vector·8 | 2 | EXT)
 * for a not-present gate, and the #DF and triple fault that follow when those gates are missing too.
 * The vectors the set-ups and intercepts pick are drawn mostly from the ones that matter to the
 * event (its own vector, #DF, #NP, #GP, #SS, #PF), so the interesting combinations are common.
 *
 * L2 runs at CPL 0 or 3, with a TSS of its own whose RSP0 or IST1 may be non-canonical (#SS), lie
 * beyond TR.limit (#TS) or point at a canonical page that is not present (LAYOUT.notPresentStack:
 * the frame push raises #PF during delivery, then #DF when the #PF's own stack is that one, and a
 * shutdown when #DF's is), and some gates on IST 1. At CPL 0 L2's own RSP may point there too
 * (`rsp`), for events whose code does not use the stack before they are raised.
 *
 * SHUTDOWN is intercepted in most runs; a run without it runs in a VM of its own (suites/nested/svm.ts),
 * since its triple fault may shut that VM down (l2ShutdownWithoutIntercept).
 *
 * What L1 cannot do yet, so the generator leaves out: NMI and INTR intercepts with real interrupts (L2 runs
 * with IF = 0 and nothing interrupts it).
 */
import fc from 'fast-check';
import type { Op } from '../ir/ops.js';
import { vectorInfo } from '../models/nested/classes.js';
import { KVM_TEST_SS_EVENTINJ, encodeEventInj, interceptBits, type EventInj } from '../models/nested/svm.js';
import { SINGLE_LEVEL_INSTRUCTIONS, encodeStep, execOp, instructionArb, type ExceptionStep, type SingleLevelInstruction } from './nested.js';

/**
 * What L2 runs: the single-level instructions (at CPL 0 mov-from-cr raises nothing: a run with no
 * event), but for the two that depend on CR0.AM and CR0.TS, which L2 shares with L1 (clear: they
 * would raise nothing either, and the single-level property covers them).
 */
const L2_LEFT_OUT = ['misaligned-load', 'x87-with-ts'] as const;
export type L2Instruction = Exclude<SingleLevelInstruction, (typeof L2_LEFT_OUT)[number]>;
export const L2_INSTRUCTIONS: readonly L2Instruction[] = SINGLE_LEVEL_INSTRUCTIONS.filter((i): i is L2Instruction => !(L2_LEFT_OUT as readonly string[]).includes(i));

export interface L2IdtSetup {
  /** IDTR.limit. */
  readonly limit: number;
  /** Bit v (0–31): the gate of vector v has P = 0. */
  readonly notPresent: number;
  /** Bit v (0–31): the gate of vector v uses IST 1 (the others IST 0). */
  readonly ist: number;
}

/** L2's TSS: the stacks a delivery switches to (RSP0 from CPL 3, IST1 for IST gates). */
export type L2StackPointer = 'ok' | 'non-canonical' | 'not-present';

export interface L2TssSetup {
  readonly rsp0: L2StackPointer;
  readonly ist1: L2StackPointer;
  /** TR.limit 3: neither slot lies inside the TSS (#TS on every stack switch). */
  readonly limitCut: boolean;
}

/** The TR selector svm.c gives L2 (only its value matters: the #TS error code). */
export const L2_TR_SELECTOR = 0x40;

export interface L1Intercepts {
  /** Exception intercept vector (bit n: vector n). */
  readonly exceptions: number;
  readonly shutdown: boolean;
  readonly intn: boolean;
}

export type L2Event = { readonly kind: 'instruction'; readonly step: ExceptionStep } | { readonly kind: 'eventinj'; readonly eventInj: EventInj };

export interface SvmRun {
  readonly intercepts: L1Intercepts;
  /** L2's CPL when the event arrives. */
  readonly cpl: 0 | 3;
  readonly tss: L2TssSetup;
  readonly idt: L2IdtSetup;
  readonly npt: boolean;
  readonly event: L2Event;
  /** CPL 0 only: L2's RSP is LAYOUT.notPresentStack, so an IST-0 delivery's frame push faults. */
  readonly rsp?: 'not-present';
}

export interface SvmCase {
  readonly runs: readonly SvmRun[];
}

export const FULL_IDT_LIMIT = 0xfff;

const FLAG_SHUTDOWN = 1;
const FLAG_INTN = 2;
const FLAG_NPT = 4;

/** The NOP-only code of an EVENTINJ run: the event is delivered before L2's first instruction. */
const NOPS: readonly number[] = [];

export function svmRunOp(r: SvmRun): Op {
  const bytes = r.event.kind === 'instruction' ? encodeStep(r.event.step).bytes : NOPS;
  const exec = execOp(bytes) as Extract<Op, { op: 'exec' }>;
  return {
    op: 'svmRun',
    lo: exec.lo,
    hi: exec.hi,
    eventInj: r.event.kind === 'eventinj' ? encodeEventInj(r.event.eventInj) : 0n,
    exceptions: r.intercepts.exceptions >>> 0,
    idtNotPresent: r.idt.notPresent >>> 0,
    istVectors: r.idt.ist >>> 0,
    idtLimit: r.idt.limit,
    flags: (r.intercepts.shutdown ? FLAG_SHUTDOWN : 0) | (r.intercepts.intn ? FLAG_INTN : 0) | (r.npt ? FLAG_NPT : 0),
    l2Cpl: r.cpl,
    stack:
      (r.tss.rsp0 === 'non-canonical' ? 1 : 0) | (r.tss.ist1 === 'non-canonical' ? 2 : 0) | (r.tss.limitCut ? 4 : 0) |
      (r.tss.rsp0 === 'not-present' ? 8 : 0) | (r.tss.ist1 === 'not-present' ? 16 : 0) | (r.rsp === 'not-present' && r.cpl === 0 ? 32 : 0),
  };
}

export const svmCaseOps = (c: SvmCase): Op[] => c.runs.map(svmRunOp);

// ---------------------------------------------------------------------------------------------
// The arbitrary

// Every INT n vector, whatever L2's CPL: L2's handlers tell an error code by the frame's size, so
// (unlike the single-level guest's stubs) they take an INT n of a vector that has one.
const stepArb = (instruction: L2Instruction): fc.Arbitrary<ExceptionStep> => instructionArb(instruction, 3);

const EXCEPTION_VECTORS = Array.from({ length: 32 }, (_, v) => v).filter((v) => v !== 2 && vectorInfo(v).kind !== 'reserved');

/** EVENTINJ: an exception (EV where the vector pushes an error code), a software interrupt, an external interrupt or an NMI. */
export const eventInjArb: fc.Arbitrary<EventInj> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...EXCEPTION_VECTORS).chain((vector) =>
      (vectorInfo(vector).pushesErrorCode ? fc.oneof(fc.constant(0), fc.constant(0xdeadbeef), fc.nat()) : fc.constant(null)).map((code): EventInj => ({
        vector, type: 'exception', errorCodeValid: code !== null, errorCode: code ?? 0,
      })),
    ) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 255 }).map((vector): EventInj => ({ vector, type: 'soft-int', errorCodeValid: false, errorCode: 0 })) },
  { weight: 1, arbitrary: fc.integer({ min: 32, max: 255 }).map((vector): EventInj => ({ vector, type: 'ext-intr', errorCodeValid: false, errorCode: 0 })) },
  { weight: 1, arbitrary: fc.constant<EventInj>({ vector: 2, type: 'nmi', errorCodeValid: false, errorCode: 0 }) },
);

export const l2EventArb: fc.Arbitrary<L2Event> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...L2_INSTRUCTIONS).chain(stepArb).map((step): L2Event => ({ kind: 'instruction', step })) },
  { weight: 2, arbitrary: eventInjArb.map((eventInj): L2Event => ({ kind: 'eventinj', eventInj })) },
);

/** The vectors that matter to delivery faults: the ones nested faults land on. */
const FAULT_VECTORS = [8, 10, 11, 12, 13, 14] as const;


/** The vector an event would be delivered through first (for biasing set-ups and intercepts towards it). */
export function firstVectorOf(e: L2Event): number | null {
  if (e.kind === 'eventinj') return e.eventInj.vector;
  switch (e.step.instruction) {
    case 'div-by-zero': return 0;
    case 'single-step': return 1;
    case 'int3': return 3;
    case 'int-n': return e.step.intVector ?? null;
    case 'ud2': case 'into-64': return 6;
    case 'stack-load-non-canonical': return 12;
    case 'load-non-canonical': return 13;
    case 'load-unmapped': case 'store-unmapped': return 14;
    case 'sse-unmasked': return 19;
    case 'misaligned-load': return 17;
    case 'x87-with-ts': return 7;
    case 'fwait-unmasked-x87': return 16;
    case 'mov-from-cr-unprivileged': return null;
  }
}

function vectorSetArb(own: number | null): fc.Arbitrary<number> {
  const pool = [...new Set([...(own !== null && own < 32 ? [own] : []), ...FAULT_VECTORS])];
  return fc.oneof(
    { weight: 2, arbitrary: fc.constant(0) },
    { weight: 5, arbitrary: fc.subarray(pool, { minLength: 1 }).map((vectors) => interceptBits(...vectors)) },
    { weight: 1, arbitrary: fc.nat({ max: 0xffff_ffff }) },
  );
}

function idtArb(own: number | null): fc.Arbitrary<L2IdtSetup> {
  const limit = fc.oneof(
    { weight: 5, arbitrary: fc.constant(FULL_IDT_LIMIT) },
    { weight: 2, arbitrary: fc.constant(0) },
    // Cut so that the gate of vector v is the first one beyond the limit (or partly beyond it).
    { weight: 2, arbitrary: fc.tuple(fc.integer({ min: 1, max: 32 }), fc.integer({ min: 1, max: 16 })).map(([v, k]) => 16 * v - k) },
  );
  return fc.record({ limit, notPresent: vectorSetArb(own), ist: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: vectorSetArb(own) }) });
}

export const GOOD_TSS: L2TssSetup = Object.freeze({ rsp0: 'ok', ist1: 'ok', limitCut: false });

const tssArb: fc.Arbitrary<L2TssSetup> = fc.oneof(
  { weight: 4, arbitrary: fc.constant(GOOD_TSS) },
  { weight: 1, arbitrary: fc.constant<L2TssSetup>({ rsp0: 'non-canonical', ist1: 'ok', limitCut: false }) },
  { weight: 1, arbitrary: fc.constant<L2TssSetup>({ rsp0: 'ok', ist1: 'non-canonical', limitCut: false }) },
  { weight: 1, arbitrary: fc.constant<L2TssSetup>({ rsp0: 'ok', ist1: 'ok', limitCut: true }) },
  { weight: 1, arbitrary: fc.constant<L2TssSetup>({ rsp0: 'not-present', ist1: 'ok', limitCut: false }) },
  { weight: 1, arbitrary: fc.constant<L2TssSetup>({ rsp0: 'ok', ist1: 'not-present', limitCut: false }) },
  { weight: 1, arbitrary: fc.constant<L2TssSetup>({ rsp0: 'not-present', ist1: 'not-present', limitCut: false }) },
);

/** L2 code that pushes before it raises (PUSHFQ, PUSH imm): with a not-present RSP it would fault there instead. */
const USES_STACK: readonly string[] = ['single-step', 'sse-unmasked', 'fwait-unmasked-x87'];
export const touchesStack = (e: L2Event): boolean => e.kind === 'instruction' && USES_STACK.includes(e.step.instruction);

function interceptsArb(own: number | null): fc.Arbitrary<L1Intercepts> {
  return fc.record({ exceptions: vectorSetArb(own), shutdown: fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }), intn: fc.boolean() });
}

export const svmRunArb: fc.Arbitrary<SvmRun> = l2EventArb.chain((event) => {
  const own = firstVectorOf(event);
  const rsp = touchesStack(event) ? fc.constant(undefined) : fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constant('not-present' as const) });
  return fc
    .record({ intercepts: interceptsArb(own), cpl: fc.constantFrom<0 | 3>(0, 3), tss: tssArb, idt: idtArb(own), npt: fc.boolean(), event: fc.constant(event), rsp })
    .map(({ rsp: r, ...run }): SvmRun => (r && run.cpl === 0 ? { ...run, rsp: r } : run));
});

export function svmCaseArb(opts: { readonly maxRuns?: number } = {}): fc.Arbitrary<SvmCase> {
  return fc.record({ runs: fc.array(svmRunArb, { minLength: 1, maxLength: opts.maxRuns ?? 4 }) });
}

// ---------------------------------------------------------------------------------------------
// KVM's nested_exceptions_test, as L2 runs

const EMPTY_IDT: L2IdtSetup = { limit: 0, notPresent: 0, ist: 0 };

/**
 * tools/testing/selftests/kvm/x86/nested_exceptions_test.c (l1_svm_code), as our L1 can run it:
 * L2 with an empty IDT, SHUTDOWN intercepted. KVM queues its first #SS as *pending* (0xdeadbeef
 * via KVM_SET_VCPU_EVENTS), which an L1 cannot do; here an instruction raises that #SS (error
 * code 0). The other three inject #SS(0xdeadbeef) with EVENTINJ: intercepting #GP gives #GP(0x62)
 * (vector·8 | IDT); without #GP, #DF(0); without #DF, the triple fault's SHUTDOWN exit.
 */
const KVM_RUNS: readonly SvmRun[] = [
    { intercepts: { exceptions: interceptBits(12, 13, 8), shutdown: true, intn: false }, cpl: 0, tss: GOOD_TSS, idt: EMPTY_IDT, npt: false, event: { kind: 'instruction', step: { instruction: 'stack-load-non-canonical', address: 1n << 63n } } },
    { intercepts: { exceptions: interceptBits(12, 13, 8), shutdown: true, intn: false }, cpl: 0, tss: GOOD_TSS, idt: EMPTY_IDT, npt: false, event: { kind: 'eventinj', eventInj: KVM_TEST_SS_EVENTINJ } },
    { intercepts: { exceptions: interceptBits(12, 8), shutdown: true, intn: false }, cpl: 0, tss: GOOD_TSS, idt: EMPTY_IDT, npt: false, event: { kind: 'eventinj', eventInj: KVM_TEST_SS_EVENTINJ } },
    { intercepts: { exceptions: interceptBits(12), shutdown: true, intn: false }, cpl: 0, tss: GOOD_TSS, idt: EMPTY_IDT, npt: false, event: { kind: 'eventinj', eventInj: KVM_TEST_SS_EVENTINJ } },
];
export const KVM_NESTED_EXCEPTIONS_CASE: SvmCase = Object.freeze({ runs: KVM_RUNS });
