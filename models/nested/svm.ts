/**
 * Reference model of exception delivery in an SVM guest (L2, run by L1 with VMRUN): which events
 * L2's own IDT handles and which become a #VMEXIT to L1, with the exit information L1 reads.
 *
 * Rules (AMD APM Vol. 2):
 *  - §15.12 exception intercepts: an exception in L2 whose bit is set in the VMCB's exception
 *    intercept vector causes #VMEXIT with EXITCODE 40h + vector instead of being delivered, so it
 *    never reaches L2's IDT. EXITINFO1 holds the error code of an exception that pushes one; for
 *    #PF, EXITINFO2 holds the faulting address (the model reports no CR2 for an intercepted #PF:
 *    L2 never reached its handler). #DF (bit 8) is interceptable like any other.
 *  - §15.20 event injection: EVENTINJ (vector 7:0, TYPE 10:8 = 0 INTR, 2 NMI, 3 exception, 4
 *    software interrupt, EV 11, V 31, ERRORCODE 63:32) is delivered through L2's IDT when VMRUN
 *    enters L2, and is not checked against the intercepts. An exception that the delivery raises
 *    is checked, like every exception raised during delivery.
 *  - §15.7.2: an intercept that happens while L2 is delivering an event through its IDT records
 *    that event in EXITINTINFO (same format as EVENTINJ); otherwise EXITINTINFO.V = 0. So the #GP
 *    of KVM's nested_exceptions_test carries the injected #SS in EXITINTINFO.
 *  - an exception that is not intercepted is delivered through L2's IDT (exceptions.ts); each
 *    exception that delivery raises is checked against the intercepts before the double-fault
 *    rule combines it (KVM's test: L1 "should intercept [#GP] before KVM morphs it to #DF"); a #DF
 *    the rule produces is checked against bit 8; a fault while delivering #DF is a triple fault.
 *  - a triple fault in L2 with the SHUTDOWN intercept set is #VMEXIT(SHUTDOWN), EXITCODE 7Fh.
 *    Without it, a switch (l2ShutdownWithoutIntercept).
 *  - NMI, INTR and INTn intercepts: #VMEXIT 61h, 60h, 75h before the event is delivered. INT3 is
 *    an exception for the intercepts: the #BP bit (vector 3) takes it.
 *
 * What is an "injected" event: L1's EVENTINJ, and equally an event L0 injects into L2
 * (KVM_SET_VCPU_EVENTS with injected = 1, which is how KVM's test injects its #SS); a pending one
 * (KVM_SET_VCPU_EVENTS pending = 1) is an exception raised in L2 (source 'instruction') and is
 * checked against L1's intercepts.
 *
 * Exit fields the model makes no claim about are null: EXITINFO1 of an exception without an error
 * code, EXITINFO1/2 of the INTR/NMI/INTn/SHUTDOWN exits, and EXITINTINFO of a SHUTDOWN exit.
 *
 * Not modelled: nested paging faults (#NPF) during delivery, V_INTR_MASKING and interrupt
 * windows, the IRET/NMI-blocking state, decode assists, VMRUN consistency checks on EVENTINJ.
 */
import { DF } from './classes.js';
import type { InterceptedEnd, L1Backend } from './l1.js';
import {
  APM_EXCEPTIONS,
  OK_STACK,
  describeEvent,
  followChain,
  handlerEntry,
  hex,
  vectoredOf,
  CITATIONS,
  type DeliverySetup,
  type DeliveryStep,
  type ExceptionSwitches,
  type RaisedEvent,
  type VectoredEvent,
} from './exceptions.js';

export const SVM_EXIT = Object.freeze({ EXCP_BASE: 0x40, INTR: 0x60, NMI: 0x61, SWINT: 0x75, SHUTDOWN: 0x7f });

export interface SvmIntercepts {
  /** The exception intercept vector: bit n intercepts vector n (0–31). */
  readonly exceptions: number;
  readonly shutdown: boolean;
  /** Physical INTR intercept. */
  readonly intr?: boolean;
  readonly nmi?: boolean;
  /** The INTn instruction intercept (INT imm8; INT3 goes through exception bit 3). */
  readonly intn?: boolean;
}

export const interceptBits = (...vectors: number[]): number => vectors.reduce((m, vec) => (m | (1 << vec)) >>> 0, 0);

export type EventInjType = 'ext-intr' | 'nmi' | 'exception' | 'soft-int';

/** The VMCB's EVENTINJ field, decoded. */
export interface EventInj {
  readonly vector: number;
  readonly type: EventInjType;
  readonly errorCodeValid: boolean;
  readonly errorCode: number;
}

const TYPE_CODE: Readonly<Record<EventInjType, number>> = Object.freeze({ 'ext-intr': 0, nmi: 2, exception: 3, 'soft-int': 4 });
const VALID = 1n << 31n;
const EV = 1n << 11n;

/** EVENTINJ / EXITINTINFO bits (APM §15.20; EXITINTINFO has the same format, §15.7.2). */
export function encodeEventInj(e: EventInj): bigint {
  return BigInt(e.vector & 0xff) | (BigInt(TYPE_CODE[e.type]) << 8n) | (e.errorCodeValid ? EV : 0n) | VALID | (BigInt(e.errorCode >>> 0) << 32n);
}

/** The field decoded, or null when V = 0. */
export function decodeEventInj(bits: bigint): EventInj | null {
  if ((bits & VALID) === 0n) return null;
  const code = Number((bits >> 8n) & 7n);
  const type = (Object.keys(TYPE_CODE) as EventInjType[]).find((t) => TYPE_CODE[t] === code);
  if (type === undefined) throw new Error(`decodeEventInj: reserved TYPE ${code}`);
  return { vector: Number(bits & 0xffn), type, errorCodeValid: (bits & EV) !== 0n, errorCode: Number((bits >> 32n) & 0xffff_ffffn) };
}

/** What VMRUN delivers for an EVENTINJ. */
export function vectoredOfEventInj(e: EventInj): VectoredEvent {
  if (e.errorCodeValid && e.type !== 'exception') throw new Error('EventInj: the model predicts an error code only for TYPE 3 (exception)');
  const errorCode = e.errorCodeValid ? e.errorCode >>> 0 : null;
  switch (e.type) {
    case 'exception':
      if (e.vector > 31 || e.vector === 2) throw new Error(`EventInj: exception vector ${e.vector} is not one VMRUN accepts in the model`);
      return { vector: e.vector, errorCode, kind: 'exception', injected: true };
    case 'nmi':
      // The model delivers an injected NMI through vector 2 whatever the vector field holds.
      return { vector: 2, errorCode: null, kind: 'nmi', injected: true };
    case 'ext-intr':
      return { vector: e.vector, errorCode: null, kind: 'external-interrupt', injected: true };
    case 'soft-int':
      return { vector: e.vector, errorCode: null, kind: 'software-interrupt', injected: true, via: 'int-n' };
  }
}

/** EXITINTINFO for an intercept during delivery of `e` (APM §15.7.2). INT3 is TYPE 3, as the processor reports it. */
export function exitIntInfoOf(e: VectoredEvent): bigint {
  const type: EventInjType =
    e.kind === 'exception' ? 'exception' : e.kind === 'nmi' ? 'nmi' : e.kind === 'external-interrupt' ? 'ext-intr' : e.via === 'int3' ? 'exception' : 'soft-int';
  return encodeEventInj({ vector: e.vector, type, errorCodeValid: e.errorCode !== null, errorCode: e.errorCode ?? 0 });
}

/** Whether L1's intercepts take `e` before L2 vectors it. */
export function isIntercepted(e: VectoredEvent, i: SvmIntercepts): boolean {
  switch (e.kind) {
    case 'exception':
      return ((i.exceptions >>> e.vector) & 1) === 1;
    case 'software-interrupt':
      return e.via === 'int3' ? ((i.exceptions >>> 3) & 1) === 1 : !!i.intn;
    case 'nmi':
      return !!i.nmi;
    case 'external-interrupt':
      return !!i.intr;
  }
}

// ---------------------------------------------------------------------------------------------
// Switches

export interface SvmSwitches {
  readonly exceptions: ExceptionSwitches;
  /**
   * A triple fault in L2 when L1 did not set the SHUTDOWN intercept.
   *  - 'l1-shutdown' (APM Vol. 2 ch. 15: only an intercepted SHUTDOWN becomes a #VMEXIT, so the
   *    processor running L1 and L2 shuts down; KVM since "KVM: x86: allow L1 to not intercept
   *    triple fault" (Maxim Levitsky, posted 2022-11-03): nested_svm_triple_fault() returns
   *    without an exit when !vmcb12_is_intercept(INTERCEPT_SHUTDOWN), leaving
   *    KVM_REQ_TRIPLE_FAULT to end the whole VM with KVM_EXIT_SHUTDOWN, "although a sane L1 would
   *    intercept SHUTDOWN event, it doesn't have to, so we have to honour this");
   *  - 'vmexit' (KVM before that patch: nested_svm_triple_fault() synthesised
   *    #VMEXIT(SHUTDOWN) to L1 unconditionally).
   */
  readonly l2ShutdownWithoutIntercept: 'l1-shutdown' | 'vmexit';
  /**
   * EXITINTINFO of an intercepted #DF that the double-fault rule produced (the APM does not say
   * whether the event whose delivery failed is still "being delivered").
   *  - 'none' (V = 0: the #DF replaced that event; KVM's kvm_multiple_exception() drops the first
   *    exception and queues #DF as a new pending one, so a synthesised #DF exit reports nothing;
   *    the SDM says the same for VMX, Vol. 3C "Information for VM Exits During Event Delivery"
   *    (§27.2.3 in the 2016 edition): an exit is not during event delivery when "The original
   *    event results in a double-fault exception that causes the VM exit directly");
   *  - 'replaced-event' (EXITINTINFO holds the event whose delivery failed).
   */
  readonly doubleFaultExitIntInfo: 'none' | 'replaced-event';
  /**
   * A fault while delivering #DF in L2 whose vector L1 intercepts.
   *  - 'intercept-first' (APM §15.20: exceptions raised during delivery "are subject to exception
   *    intercepts"; the intercept check comes before the combining rule, here as elsewhere): a
   *    #VMEXIT for that fault, EXITINTINFO = the #DF;
   *  - 'shutdown-first' (the triple fault takes precedence, as KVM's kvm_multiple_exception()
   *    does when it queues the fault itself: a #DF being delivered → KVM_REQ_TRIPLE_FAULT).
   */
  readonly faultDuringDoubleFault: 'intercept-first' | 'shutdown-first';
}

export const APM_SVM: SvmSwitches = Object.freeze({
  exceptions: APM_EXCEPTIONS,
  l2ShutdownWithoutIntercept: 'l1-shutdown',
  doubleFaultExitIntInfo: 'none',
  faultDuringDoubleFault: 'intercept-first',
});

/** KVM before "KVM: x86: allow L1 to not intercept triple fault": every L2 triple fault exits to L1. */
export const KVM_SVM_UNCONDITIONAL_SHUTDOWN_EXIT: SvmSwitches = Object.freeze({ ...APM_SVM, l2ShutdownWithoutIntercept: 'vmexit' });

// ---------------------------------------------------------------------------------------------
// Nested delivery

export interface NestedCase {
  /** L2's IDT and CPL. */
  readonly l2: DeliverySetup;
  /** L1's intercepts in the VMCB it runs L2 with. */
  readonly intercepts: SvmIntercepts;
  /** An event raised while L2 runs, or the EVENTINJ that VMRUN delivers. */
  readonly event: { readonly kind: 'raised'; readonly raised: RaisedEvent } | { readonly kind: 'eventinj'; readonly eventInj: EventInj };
}

export interface VmExit {
  readonly level: 'L1';
  readonly kind: 'vmexit';
  readonly exitCode: number;
  /** null: the model makes no claim. */
  readonly exitInfo1: bigint | null;
  readonly exitInfo2: bigint | null;
  /** 0n: V = 0 (no event was being delivered); null: no claim. */
  readonly exitIntInfo: bigint | null;
}

export type NestedOutcome =
  | { readonly level: 'L2'; readonly kind: 'handler'; readonly vector: number; readonly errorCode: number | null; readonly cr2?: bigint }
  | VmExit
  | { readonly level: 'L1'; readonly kind: 'shutdown' };

export interface NestedResult {
  readonly outcomes: readonly NestedOutcome[];
  readonly chain: readonly DeliveryStep[];
}

function exitFor(event: VectoredEvent, exitIntInfo: bigint): VmExit {
  const base = { level: 'L1', kind: 'vmexit', exitIntInfo } as const;
  switch (event.kind) {
    case 'nmi':
      return { ...base, exitCode: SVM_EXIT.NMI, exitInfo1: null, exitInfo2: null };
    case 'external-interrupt':
      return { ...base, exitCode: SVM_EXIT.INTR, exitInfo1: null, exitInfo2: null };
    case 'software-interrupt':
      if (event.via !== 'int3') return { ...base, exitCode: SVM_EXIT.SWINT, exitInfo1: null, exitInfo2: null };
      return { ...base, exitCode: SVM_EXIT.EXCP_BASE + event.vector, exitInfo1: null, exitInfo2: null };
    case 'exception':
      return {
        ...base,
        exitCode: SVM_EXIT.EXCP_BASE + event.vector,
        exitInfo1: event.errorCode === null ? null : BigInt(event.errorCode >>> 0),
        exitInfo2: event.vector === 14 && event.cr2 !== undefined ? event.cr2 : null,
      };
  }
}

const shutdownExit: VmExit = Object.freeze({ level: 'L1', kind: 'vmexit', exitCode: SVM_EXIT.SHUTDOWN, exitInfo1: null, exitInfo2: null, exitIntInfo: null });

/** SVM as an L1 backend (l1.ts): the intercept vector and bits, EXITCODE/EXITINFO1/2/EXITINTINFO, the SHUTDOWN intercept. */
export const SVM_L1: L1Backend<SvmIntercepts, VmExit, SvmSwitches> = Object.freeze({
  name: 'svm',
  manual: 'AMD APM Vol. 2 ch. 15 (§15.7.2 EXITINTINFO, §15.12 exception intercepts, §15.20 EVENTINJ, Appendix C exit codes)',
  intercepted: isIntercepted,
  exitFor(end: InterceptedEnd, sw: SvmSwitches): VmExit {
    const e = end.event;
    let info = end.delivering ? exitIntInfoOf(end.delivering) : 0n;
    if (e.kind === 'exception' && e.vector === DF && end.replaced && sw.doubleFaultExitIntInfo === 'replaced-event') info = exitIntInfoOf(end.replaced);
    return exitFor(e, info);
  },
  tripleFault: (i: SvmIntercepts) => (i.shutdown ? shutdownExit : null),
});

/** One event in L2: the L2 handler entry, the #VMEXIT L1 sees, or L1's shutdown. */
export function deliverNested(c: NestedCase, sw: SvmSwitches = APM_SVM): NestedResult {
  const l1 = SVM_L1;
  const start = c.event.kind === 'raised' ? vectoredOf(c.event.raised) : vectoredOfEventInj(c.event.eventInj);
  const { steps, end } = followChain(start, c.l2, sw.exceptions, {
    intercepted: (e) => l1.intercepted(e, c.intercepts),
    interceptFaultDuringDoubleFault: sw.faultDuringDoubleFault === 'intercept-first',
  });
  const chain = [...steps];
  const note = (rule: 'shutdown-intercepted' | 'shutdown-not-intercepted', summary: string, e: VectoredEvent) =>
    chain.push({ rule, vector: e.vector, errorCode: e.errorCode, summary, citation: CITATIONS[rule] });
  switch (end.kind) {
    case 'handler':
      return { outcomes: [{ level: 'L2', ...handlerEntry(end.event) }], chain };
    case 'intercepted': {
      const exit = l1.exitFor(end, sw);
      chain[chain.length - 1] = { ...chain[chain.length - 1]!, summary: `${describeEvent(end.event)} is intercepted: #VMEXIT(${hex(exit.exitCode)})` };
      return { outcomes: [exit], chain };
    }
    case 'shutdown': {
      const asked = l1.tripleFault(c.intercepts);
      if (asked) {
        note('shutdown-intercepted', 'L2 shuts down and L1 intercepts SHUTDOWN: #VMEXIT(0x7f)', end.doubleFault);
        return { outcomes: [asked], chain };
      }
      if (sw.l2ShutdownWithoutIntercept === 'vmexit') {
        note('shutdown-not-intercepted', 'L2 shuts down; L1 does not intercept SHUTDOWN, but the host exits to L1 anyway: #VMEXIT(0x7f)', end.doubleFault);
        return { outcomes: [shutdownExit], chain };
      }
      note('shutdown-not-intercepted', 'L2 shuts down and L1 does not intercept SHUTDOWN: the machine (L1) shuts down', end.doubleFault);
      return { outcomes: [{ level: 'L1', kind: 'shutdown' }], chain };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// KVM's nested_exceptions_test, SVM side

/** L2 as KVM's test sets it up: an empty IDT (vmcb->save.idtr.limit = 0), CPL 0. */
export const KVM_TEST_L2: DeliverySetup = Object.freeze({ idt: Object.freeze({ limit: 0, gates: Object.freeze({}), stack: OK_STACK }), cpl: 0 });

/** The test's #SS: vector 12 with the 32-bit error code 0xdeadbeef (SS_ERROR_CODE). */
export const KVM_TEST_SS_EVENTINJ: EventInj = Object.freeze({ vector: 12, type: 'exception', errorCodeValid: true, errorCode: 0xdeadbeef });

export interface NestedExample {
  readonly name: string;
  readonly case: NestedCase;
  /** What the model predicts under APM_SVM. */
  readonly expected: readonly NestedOutcome[];
  /** The exit fields KVM's test itself asserts (exit_code, exit_info_1). */
  readonly kvmAsserts: { readonly exitCode: number; readonly exitInfo1?: bigint };
}

const exit = (exitCode: number, exitInfo1: bigint | null, exitIntInfo: bigint | null): VmExit => ({ level: 'L1', kind: 'vmexit', exitCode, exitInfo1, exitInfo2: null, exitIntInfo });
const SS_GP_DF = interceptBits(12, 13, 8);
const SS_DF = interceptBits(12, 8);
const SS_ONLY = interceptBits(12);
const injectedSs = { kind: 'eventinj', eventInj: KVM_TEST_SS_EVENTINJ } as const;

/**
 * The four L2 runs of tools/testing/selftests/kvm/x86/nested_exceptions_test.c (l1_svm_code), in
 * order, for fast-check `examples`. Every run has INTERCEPT_SHUTDOWN set. KVM injects the #SS
 * through KVM_SET_VCPU_EVENTS, which the model treats as EVENTINJ (both skip L1's intercepts).
 */
export const KVM_NESTED_EXCEPTIONS_SEQUENCE: readonly NestedExample[] = Object.freeze([
  {
    name: 'pending #SS, intercepted by L1 (l2_ss_pending_test)',
    case: { l2: KVM_TEST_L2, intercepts: { exceptions: SS_GP_DF, shutdown: true }, event: { kind: 'raised', raised: { vector: 12, errorCode: 0xdeadbeef, source: 'instruction' } } },
    expected: [exit(0x4c, 0xdeadbeefn, 0n)],
    kvmAsserts: { exitCode: 0x4c, exitInfo1: 0xdeadbeefn },
  },
  {
    name: 'injected #SS skips the #SS intercept; the empty IDT raises #GP(0x62), intercepted (l2_ss_injected_gp_test)',
    case: { l2: KVM_TEST_L2, intercepts: { exceptions: SS_GP_DF, shutdown: true }, event: injectedSs },
    expected: [exit(0x4d, 0x62n, 0xdeadbeef_80000b0cn)],
    kvmAsserts: { exitCode: 0x4d, exitInfo1: 0x62n },
  },
  {
    name: '#GP not intercepted: #SS then #GP make #DF(0), intercepted (l2_ss_injected_df_test)',
    case: { l2: KVM_TEST_L2, intercepts: { exceptions: SS_DF, shutdown: true }, event: injectedSs },
    expected: [exit(0x48, 0n, 0n)],
    kvmAsserts: { exitCode: 0x48, exitInfo1: 0n },
  },
  {
    name: '#DF not intercepted: delivering #DF faults, triple fault, #VMEXIT(SHUTDOWN) (l2_ss_injected_tf_test)',
    case: { l2: KVM_TEST_L2, intercepts: { exceptions: SS_ONLY, shutdown: true }, event: injectedSs },
    expected: [exit(0x7f, null, null)],
    kvmAsserts: { exitCode: 0x7f },
  },
]);
