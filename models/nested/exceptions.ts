/**
 * Reference model of exception and interrupt delivery through a 64-bit (IA-32e / long mode) IDT,
 * at one level: given an event and an abstract IDT, the handler entry the guest would log, or
 * shutdown, and the chain of rules that led there. svm.ts runs the same chain inside an SVM guest.
 *
 * Delivery checks, in the order of the SDM's INT n pseudocode for IA-32e mode (SDM Vol. 2A "INT n/
 * INTO/INT3/INT1", Vol. 3A §6.14; APM Vol. 2 §8.9 and Vol. 3 "INT"); the first that fails raises
 * its exception and the rest are not made:
 *  1. vector·16 + 15 beyond the IDT limit → #GP, error code vector·8 | IDT(2) | EXT;
 *  2. the descriptor is not a 64-bit interrupt or trap gate → #GP, vector·8 | 2 | EXT. An IDT entry
 *     the setup leaves out is an all-zero descriptor: type 0, so this check (not "present") fails;
 *  3. a software interrupt (INT n, INT3; INTO and BOUND are #UD in 64-bit mode) through a gate
 *     whose DPL < CPL → #GP, vector·8 | 2, EXT always 0. Never made for exceptions, NMIs or
 *     external interrupts;
 *  4. the gate not present → #NP, vector·8 | 2 | EXT;
 *  5. the gate's code segment: a null selector → #GP(EXT); not a code segment or DPL > CPL →
 *     #GP(selector | EXT); not present → #NP(selector | EXT);
 *  6. the new stack: its RSP0 / IST slot beyond the TSS limit → #TS(TSS selector | EXT); a
 *     non-canonical new RSP → #SS(EXT) (the null selector in long mode);
 *  7. a non-canonical handler RIP → #GP(EXT);
 *  8. pushing the frame faults → #PF with the push's error code, CR2 = the address.
 * A setup that breaks two of these on one gate is judged by this order; where the vendors' order
 * may differ (6 vs 7) the generators should not rely on it.
 *
 * EXT (error code bit 0, SDM §6.13, APM §8.4.1) is a switch, because the manuals disagree: see
 * ExceptionSwitches.ext. IDT (bit 1) is set when the selector index names an IDT gate.
 *
 * A delivery fault then meets the double-fault rule (classes.ts): handled serially (the second
 * exception is now the one being delivered, and the first is lost; the guest re-executes the
 * instruction or loses the interrupt), or #DF with error code 0, or, while delivering #DF,
 * shutdown. Each intermediate exception is itself delivered through the same IDT.
 *
 * Which instruction raises what is a separate table, FAULTING_INSTRUCTIONS, which the generators
 * and the guest share: the model only ever sees a RaisedEvent.
 *
 * Not modelled: task gates and 32-bit modes, #DB/#MC raised in the middle of a delivery, the
 * handler's first instruction fetch faulting (that #PF comes after delivery completed and is an
 * ordinary fault in the handler), SMAP/shadow-stack checks on the pushes, INT1 (ICEBP).
 */
import {
  AC,
  BP,
  DB,
  DE,
  DF,
  DOUBLE_FAULT_ERROR_CODE,
  GP,
  MF,
  NM,
  NMI,
  NP,
  OF,
  PF,
  SS,
  TS,
  UD,
  XM,
  classOfVector,
  combine,
  mnemonic,
  vectorInfo,
  type FaultClass,
  type VectorClassSwitches,
} from './classes.js';

// ---------------------------------------------------------------------------------------------
// Switches

export interface ExceptionSwitches extends VectorClassSwitches {
  /**
   * When a delivery fault's error code has EXT (bit 0) set.
   *  - 'sdm' (SDM §6.13: EXT "indicates that the exception occurred during delivery of an event
   *    external to the program, such as an interrupt or an earlier exception", and "is cleared if
   *    the exception occurred during delivery of a software interrupt (INT n, INT3, or INTO)"):
   *    set while delivering any exception (raised or injected), NMI or external interrupt;
   *  - 'apm' (APM §8.4.1: EXT set means "the exception source is external to the processor"; the
   *    KVM selftest nested_exceptions_test: "AMD's wording is ambiguous, but presumably the bit is
   *    set if the exception occurs while delivering an external event, e.g. NMI or INTR, but not
   *    for exceptions that occur when delivering other exceptions or software interrupts", and it
   *    expects 0x62, no EXT, for #SS → #GP on AMD): set only while delivering an NMI or an
   *    external interrupt.
   */
  readonly ext: 'sdm' | 'apm';
  /**
   * The class of a software interrupt (INT n) as the first event, when its vector is an
   * exception's (INT 13 faulting while delivered).
   *  - 'benign' (SDM Table 6-4: "All INT n" are benign; KVM tracks soft interrupts apart from
   *    exceptions, so kvm_multiple_exception() never combines with them). Every preset.
   *  - 'by-vector' (the vector's own class). Not a reading of either manual: for naming the root
   *    cause of a difference.
   */
  readonly softwareInterruptClass: 'benign' | 'by-vector';
  /**
   * An injected exception (not a software interrupt) with vector 3 or 4.
   *  - 'exception' (SDM Vol. 3C §26.5.1: a VMM injects #BP/#OF as "software exception" to get
   *    INT3/INTO behaviour; as a hardware exception it is delivered like any other: no DPL check,
   *    EXT per the ext switch);
   *  - 'int3-into' (APM Vol. 2 §15.20: an injected exception with vector 3 or 4 behaves like the
   *    trap INT3 or INTO raises: the gate DPL is checked against CPL and EXT is 0).
   */
  readonly injectedBreakpointOverflow: 'exception' | 'int3-into';
  /**
   * What a misaligned access at CPL 3 needs to raise #AC (FAULTING_INSTRUCTIONS only).
   *  - 'cr0-am-and-rflags-ac' (SDM Interrupt 17 and APM §8.2.17 agree: CR0.AM = 1, RFLAGS.AC = 1,
   *    CPL = 3). Every preset.
   *  - 'rflags-ac-only' (ignores CR0.AM). Not a reading of either manual: for naming the root
   *    cause of a difference.
   */
  readonly alignmentCheck?: 'cr0-am-and-rflags-ac' | 'rflags-ac-only';
  /**
   * Which address a frame push onto a not-present stack page reports in CR2 (a 'not-present'
   * StackSetup; the whole frame lies in that page). The manuals pin the alignment (SDM Vol. 3A
   * §6.14.2: "In IA-32e mode, the RSP is aligned to a 16-byte boundary before pushing the stack
   * frame"; the INT pseudocode: "RSP ← NewRSP AND FFFFFFFFFFFFFFF0H"; APM Vol. 2 §8.9.3 likewise)
   * and the order of the pushes in the pseudocode ("Push(far pointer to old stack); (* Old SS and
   * SP, each an 8-byte push *) Push(RFLAGS); ... Push(ErrorCode)"), but not that the processor
   * makes them as separate writes in that order, nor which write's #PF it reports first:
   *  - 'first-push' (default; the pseudocode read literally, and what QEMU's do_interrupt64 and
   *    KVM's emulator do: PUSHQ of SS first): CR2 = aligned RSP − 8;
   *  - 'frame-base' (the frame written as one access from its lowest byte): CR2 = aligned RSP − 40,
   *    or − 48 with an error code.
   */
  readonly stackPushFault?: 'first-push' | 'frame-base';
}

/** The SDM's rules (an Intel processor). */
export const SDM_EXCEPTIONS: ExceptionSwitches = Object.freeze({
  ext: 'sdm',
  virtualizationExceptionClass: 'page-fault',
  controlProtectionClass: 'contributory',
  softwareInterruptClass: 'benign',
  injectedBreakpointOverflow: 'exception',
});

/** The APM's rules (an AMD processor, and KVM's nested SVM). */
export const APM_EXCEPTIONS: ExceptionSwitches = Object.freeze({
  ext: 'apm',
  virtualizationExceptionClass: 'benign',
  controlProtectionClass: 'contributory',
  softwareInterruptClass: 'benign',
  injectedBreakpointOverflow: 'int3-into',
});

// ---------------------------------------------------------------------------------------------
// The IDT and stacks, abstractly

export type GateType = 'interrupt' | 'trap' | 'invalid';

/**
 * Where a gate sends the processor.
 *  - 'ok': a present ring-0 64-bit code segment and a canonical RIP;
 *  - 'null-cs': the selector is null → #GP(EXT);
 *  - 'bad-cs': the selector is beyond the GDT limit, or names a non-code segment or one with
 *    DPL > CPL → #GP(selector | EXT);
 *  - 'cs-not-present': the code segment's P = 0 → #NP(selector | EXT);
 *  - 'non-canonical-rip': the gate's offset is not canonical → #GP(EXT).
 */
export type GateTarget = 'ok' | 'null-cs' | 'bad-cs' | 'cs-not-present' | 'non-canonical-rip';

export interface GateSetup {
  readonly present: boolean;
  readonly type: GateType;
  readonly dpl: 0 | 1 | 2 | 3;
  readonly target: GateTarget;
  /** The selector the gate names, for the error codes of 'bad-cs' and 'cs-not-present' (default 0x08). */
  readonly csSelector?: number;
  /** Interrupt stack table index, 0 (none) to 7. */
  readonly ist: number;
}

/**
 * The stack a delivery switches to (or stays on).
 *  - 'ok';
 *  - 'ts': the RSP0 or IST slot lies beyond the TSS limit → #TS(TSS selector | EXT);
 *  - 'ss': the new RSP is non-canonical → #SS(EXT) (SDM INT pseudocode: "IF NewRSP is
 *    non-canonical THEN #SS(EXT)");
 *  - 'pf': pushing the frame touches a page that faults → #PF with `errorCode` (stackPageFault:
 *    a supervisor write, P as the page has it), CR2 = `address`;
 *  - 'not-present': the new RSP is canonical and points into a not-present page, the whole frame
 *    below it in that page → #PF(P = 0, W = 1, U = 0), CR2 where ExceptionSwitches.stackPushFault
 *    says (stackPushFaultAddress). The pushes are supervisor writes whatever the old CPL: they are
 *    made after the switch to the handler's CPL 0 (SDM Vol. 3A §4.6: an access at CPL < 3 is a
 *    supervisor-mode access; §6.12.1: the processor switches to the handler's stack, then pushes).
 */
export type StackSetup =
  | { readonly kind: 'ok' }
  | { readonly kind: 'ts'; readonly tssSelector: number }
  | { readonly kind: 'ss' }
  | { readonly kind: 'pf'; readonly address: bigint; readonly errorCode: number }
  | { readonly kind: 'not-present'; readonly rsp: bigint };

export interface IdtSetup {
  /** IDTR.limit (bytes − 1). A full 64-bit IDT has 0xfff; KVM's nested_exceptions_test uses 0. */
  readonly limit: number;
  /** Gates by vector; a vector left out is an all-zero descriptor. */
  readonly gates: { readonly [vector: number]: GateSetup | undefined };
  /** The stack a gate with IST 0 uses (the current RSP at CPL 0, RSP0 from CPL 3). */
  readonly stack: StackSetup;
  /** The IST stacks by index 1–7; one left out is 'ok'. */
  readonly istStacks?: { readonly [ist: number]: StackSetup | undefined };
}

export interface DeliverySetup {
  readonly idt: IdtSetup;
  /** CPL when the event arrives (delivery that faults leaves CPL unchanged). */
  readonly cpl: 0 | 1 | 2 | 3;
}

export const OK_STACK: StackSetup = Object.freeze({ kind: 'ok' });
export const GOOD_GATE: GateSetup = Object.freeze({ present: true, type: 'interrupt', dpl: 0, target: 'ok', ist: 0 });
/** What an IDT entry the setup leaves out reads as. */
export const ZERO_GATE: GateSetup = Object.freeze({ present: false, type: 'invalid', dpl: 0, target: 'null-cs', ist: 0 });

/** A full IDT (limit 0xfff) with a good gate at every vector; `overrides` replace single gates. */
export function goodIdt(overrides: { readonly [vector: number]: GateSetup | undefined } = {}, gate: GateSetup = GOOD_GATE): IdtSetup {
  const gates: Record<number, GateSetup | undefined> = {};
  for (let vec = 0; vec < 256; vec++) gates[vec] = gate;
  return { limit: 0xfff, gates: { ...gates, ...overrides }, stack: OK_STACK };
}

/** Page-fault error code bits (SDM Vol. 3A §4.7 Figure 4-12; APM §8.4.2). */
export const PF_P = 1 << 0;
export const PF_W = 1 << 1;
export const PF_U = 1 << 2;
export const PF_RSVD = 1 << 3;
export const PF_I = 1 << 4;
export const PF_PK = 1 << 5;

export interface PageFaultAccess {
  /** The fault is a protection violation on a present page (P = 1), not a missing translation. */
  readonly present: boolean;
  readonly write: boolean;
  readonly user: boolean;
  readonly reservedBit?: boolean;
  readonly fetch?: boolean;
  readonly protectionKey?: boolean;
}

export function pageFaultErrorCode(a: PageFaultAccess): number {
  return (a.present ? PF_P : 0) | (a.write ? PF_W : 0) | (a.user ? PF_U : 0) | (a.reservedBit ? PF_RSVD : 0) | (a.fetch ? PF_I : 0) | (a.protectionKey ? PF_PK : 0);
}

/** A stack whose frame pushes fault: delivery writes it as a supervisor (the handler runs at CPL 0). */
export function stackPageFault(address: bigint, present = false): StackSetup {
  return { kind: 'pf', address, errorCode: pageFaultErrorCode({ present, write: true, user: false }) };
}

/**
 * CR2 of the #PF a frame push raises on a 'not-present' stack, for an event whose frame has an
 * error code or not (ExceptionSwitches.stackPushFault).
 */
export function stackPushFaultAddress(rsp: bigint, hasErrorCode: boolean, sw: Pick<ExceptionSwitches, 'stackPushFault'>): bigint {
  const aligned = rsp & ~0xfn;
  return (sw.stackPushFault ?? 'first-push') === 'first-push' ? aligned - 8n : aligned - (hasErrorCode ? 48n : 40n);
}

/** The #PF a frame push onto `stack` raises (for a 'pf' or 'not-present' stack), or null. */
function stackPush(stack: StackSetup, e: VectoredEvent, sw: ExceptionSwitches): { readonly errorCode: number; readonly address: bigint } | null {
  if (stack.kind === 'pf') return stack;
  if (stack.kind !== 'not-present') return null;
  return { errorCode: pageFaultErrorCode({ present: false, write: true, user: false }), address: stackPushFaultAddress(stack.rsp, e.errorCode !== null, sw) };
}

// ---------------------------------------------------------------------------------------------
// Events

/**
 * Where an event came from.
 *  - 'instruction': an exception an instruction raised (FAULTING_INSTRUCTIONS), or one the
 *    hypervisor queued as pending (KVM_SET_VCPU_EVENTS pending = 1): a hardware exception;
 *  - 'software-int': INT n (or INT3, `via: 'int3'`), DPL-checked, EXT 0;
 *  - 'injected': an exception a hypervisor injects (SVM EVENTINJ type 3, KVM_SET_VCPU_EVENTS
 *    injected = 1): already being delivered, so in SVM not checked against the intercepts;
 *  - 'nmi': an NMI (vector 2);
 *  - 'external': an external interrupt (vector 32–255).
 */
export type EventSource = 'instruction' | 'software-int' | 'injected' | 'nmi' | 'external';

export interface RaisedEvent {
  readonly vector: number;
  /** Required for an 'instruction' exception whose vector pushes one; for 'injected', pushed if given. */
  readonly errorCode?: number;
  /** #PF: the faulting address (CR2 at the handler). For an injected #PF, what the injector put in CR2. */
  readonly cr2?: bigint;
  readonly source: EventSource;
  /** 'software-int' only: INT n (CD ib, default) or INT3 (CC, vector 3). SVM intercepts them differently. */
  readonly via?: 'int-n' | 'int3';
}

/** An event on its way through the IDT, as the processor tracks it. */
export interface VectoredEvent {
  readonly vector: number;
  readonly errorCode: number | null;
  readonly cr2?: bigint;
  readonly kind: 'exception' | 'software-interrupt' | 'nmi' | 'external-interrupt';
  /** Injected by a hypervisor (EVENTINJ), not raised in this guest. */
  readonly injected: boolean;
  /** 'software-interrupt' only. */
  readonly via?: 'int-n' | 'int3';
}

export function vectoredOf(e: RaisedEvent): VectoredEvent {
  const { vector, source } = e;
  if (!Number.isInteger(vector) || vector < 0 || vector > 255) throw new Error(`RaisedEvent: vector ${vector} is not 0–255`);
  const cr2 = e.cr2 === undefined ? {} : { cr2: e.cr2 };
  switch (source) {
    case 'instruction': {
      const info = vectorInfo(vector);
      if (info.pushesErrorCode !== (e.errorCode !== undefined)) {
        throw new Error(`RaisedEvent: ${info.mnemonic} ${info.pushesErrorCode ? 'needs' : 'has no'} error code`);
      }
      return { vector, errorCode: e.errorCode ?? null, ...cr2, kind: 'exception', injected: false };
    }
    case 'injected':
      vectorInfo(vector);
      return { vector, errorCode: e.errorCode ?? null, ...cr2, kind: 'exception', injected: true };
    case 'software-int':
      if (e.errorCode !== undefined) throw new Error('RaisedEvent: a software interrupt pushes no error code');
      if (e.via === 'int3' && vector !== BP) throw new Error('RaisedEvent: INT3 is vector 3');
      return { vector, errorCode: null, kind: 'software-interrupt', injected: false, via: e.via ?? 'int-n' };
    case 'nmi':
      if (vector !== NMI) throw new Error('RaisedEvent: an NMI is vector 2');
      return { vector, errorCode: null, kind: 'nmi', injected: false };
    case 'external':
      if (vector < 32) throw new Error(`RaisedEvent: external interrupt vector ${vector} is below 32`);
      return { vector, errorCode: null, kind: 'external-interrupt', injected: false };
  }
}

/** Delivered like a software interrupt: the gate DPL is checked and EXT is 0. */
function softwareLike(e: VectoredEvent, sw: ExceptionSwitches): boolean {
  if (e.kind === 'software-interrupt') return true;
  return e.kind === 'exception' && e.injected && (e.vector === BP || e.vector === OF) && sw.injectedBreakpointOverflow === 'int3-into';
}

/** The EXT bit of a fault raised while delivering `e`. */
export function extBit(e: VectoredEvent, sw: ExceptionSwitches): 0 | 1 {
  if (sw.ext === 'apm') return e.kind === 'nmi' || e.kind === 'external-interrupt' ? 1 : 0;
  return softwareLike(e, sw) ? 0 : 1;
}

/** The class `e` has as the first event of the double-fault rule. */
export function classOfEvent(e: VectoredEvent, sw: ExceptionSwitches): FaultClass {
  if (e.kind === 'nmi' || e.kind === 'external-interrupt') return 'benign';
  if (e.kind === 'software-interrupt') return sw.softwareInterruptClass === 'by-vector' && e.vector < 32 ? classOfVector(e.vector, sw) : 'benign';
  return classOfVector(e.vector, sw);
}

export function describeEvent(e: VectoredEvent): string {
  const name = e.kind === 'software-interrupt' ? (e.via === 'int3' ? 'INT3' : `INT ${hex(e.vector)}`) : e.kind === 'external-interrupt' ? `INTR ${hex(e.vector)}` : mnemonic(e.vector);
  const code = e.errorCode === null ? '' : `(${hex(e.errorCode)})`;
  return `${e.injected ? 'injected ' : ''}${name}${code}`;
}

export const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

/** Selector-format error codes (#TS, #NP, #SS, #GP): EXT bit 0, IDT bit 1, TI bit 2, index 15:3 (SDM §6.13, APM §8.4.1). */
const SELECTOR_ERROR_VECTORS = new Set([10, 11, 12, 13]);

/**
 * An error code as a reader wants it: hex, and for a selector-format code with IDT set, the IDT
 * vector it names — `0x62 (IDT vector 0xc)`, `0x13 (IDT vector 0x2, EXT)`.
 */
export function describeErrorCode(vector: number, code: number | null): string {
  if (code === null) return 'none';
  if (!SELECTOR_ERROR_VECTORS.has(vector) || (code & 2) === 0) return hex(code);
  return `${hex(code)} (IDT vector ${hex((code & 0xffff) >>> 3)}${code & 1 ? ', EXT' : ''})`;
}

// ---------------------------------------------------------------------------------------------
// Outcomes and the chain

/** The handler entry the guest logs: the vector, the error code on the stack (null: none), CR2 for #PF. */
export interface HandlerEntry {
  readonly kind: 'handler';
  readonly vector: number;
  readonly errorCode: number | null;
  readonly cr2?: bigint;
}

export type Outcome = HandlerEntry | { readonly kind: 'shutdown' };

export type DeliveryRule =
  | 'raised'
  | 'idt-limit'
  | 'gate-type'
  | 'gate-dpl'
  | 'gate-not-present'
  | 'cs-null'
  | 'cs-invalid'
  | 'cs-not-present'
  | 'stack-tss'
  | 'stack-non-canonical'
  | 'rip-non-canonical'
  | 'stack-push-fault'
  | 'handler-entered'
  | 'serial'
  | 'double-fault'
  | 'triple-fault'
  // svm.ts
  | 'intercepted'
  | 'shutdown-intercepted'
  | 'shutdown-not-intercepted';

/** One step of the explanation: the rule, the event it produced or acted on, and where the manuals say so. */
export interface DeliveryStep {
  readonly rule: DeliveryRule;
  readonly vector: number;
  readonly errorCode: number | null;
  readonly cr2?: bigint;
  readonly summary: string;
  readonly citation: string;
}

const INT_PSEUDOCODE = 'SDM Vol. 2A INT n/INTO/INT3 pseudocode, IA-32e mode; APM Vol. 2 §8.9, Vol. 3 INT';

export const CITATIONS: Readonly<Record<DeliveryRule, string>> = Object.freeze({
  raised: 'the event as raised (FAULTING_INSTRUCTIONS) or injected',
  'idt-limit': `${INT_PSEUDOCODE}: ((vector << 4) + 15) beyond the IDT limit → #GP(error_code(vector,1,EXT)); SDM §6.13, APM §8.4.1 (IDT bit)`,
  'gate-type': `${INT_PSEUDOCODE}: descriptor not a 64-bit interrupt or trap gate → #GP(error_code(vector,1,EXT))`,
  'gate-dpl': `${INT_PSEUDOCODE}: software interrupt and gate DPL < CPL → #GP(error_code(vector,1,0)); not checked for exceptions or external events`,
  'gate-not-present': `${INT_PSEUDOCODE}: gate not present → #NP(error_code(vector,1,EXT))`,
  'cs-null': `${INT_PSEUDOCODE} TRAP-OR-INTERRUPT-GATE: new code-segment selector is NULL → #GP(EXT)`,
  'cs-invalid': `${INT_PSEUDOCODE} TRAP-OR-INTERRUPT-GATE: selector beyond the table limit, not a code segment, or DPL > CPL → #GP(error_code(selector,0,EXT))`,
  'cs-not-present': `${INT_PSEUDOCODE} TRAP-OR-INTERRUPT-GATE: code segment not present → #NP(error_code(selector,0,EXT))`,
  'stack-tss': `${INT_PSEUDOCODE}: (TSSstackAddress + 7) > TSS limit → #TS(error_code(TSS selector,0,EXT))`,
  'stack-non-canonical': `${INT_PSEUDOCODE}: NewRSP non-canonical → #SS(EXT)`,
  'rip-non-canonical': `${INT_PSEUDOCODE}: instruction pointer from the IDT gate not canonical → #GP(EXT)`,
  'stack-push-fault': `${INT_PSEUDOCODE}: pushing the interrupt frame (RSP first aligned to 16, SDM Vol. 3A §6.14.2) faults; SDM §4.7 / APM §8.4.2 page-fault error code (a supervisor write), CR2 = the address (ExceptionSwitches.stackPushFault)`,
  'handler-entered': 'delivery complete: the handler runs with the frame (and error code) pushed (SDM §6.12.1; APM §8.9.3)',
  serial: 'SDM Vol. 3A §6.15 Interrupt 8, Table 6-5 / APM Vol. 2 §8.2.9: handle exceptions serially',
  'double-fault': 'SDM Vol. 3A §6.15 Interrupt 8, Table 6-5 / APM Vol. 2 §8.2.9: generate #DF, error code 0',
  'triple-fault': 'SDM Vol. 3A §6.15 Interrupt 8: a fault while calling the #DF handler → shutdown; APM Vol. 2 §8.2.9',
  intercepted: 'APM Vol. 2 §15.12 exception intercepts (EXITCODE 40h + vector, EXITINFO1 error code, EXITINFO2 #PF address), §15.7.2 EXITINTINFO, §15.20 EVENTINJ',
  'shutdown-intercepted': 'APM Vol. 2 ch. 15 SHUTDOWN intercept: #VMEXIT(SHUTDOWN), EXITCODE 7Fh',
  'shutdown-not-intercepted': 'SvmSwitches.l2ShutdownWithoutIntercept',
});

const step = (rule: DeliveryRule, e: VectoredEvent, summary: string): DeliveryStep => ({
  rule,
  vector: e.vector,
  errorCode: e.errorCode,
  ...(e.cr2 === undefined ? {} : { cr2: e.cr2 }),
  summary,
  citation: CITATIONS[rule],
});

// ---------------------------------------------------------------------------------------------
// One try at vectoring an event

type VectorTry = { readonly entered: true } | { readonly entered: false; readonly fault: VectoredEvent; readonly rule: DeliveryRule; readonly why: string };

const exception = (vector: number, errorCode: number | null, cr2?: bigint): VectoredEvent => ({
  vector,
  errorCode,
  ...(cr2 === undefined ? {} : { cr2 }),
  kind: 'exception',
  injected: false,
});

/** Vector `e` through the IDT once: it enters its handler, or the first failing check raises a fault. */
export function vectorThroughIdt(e: VectoredEvent, setup: DeliverySetup, sw: ExceptionSwitches): VectorTry {
  const { idt, cpl } = setup;
  const ext = extBit(e, sw);
  const idtCode = (e.vector << 3) | 2 | ext;
  const fail = (rule: DeliveryRule, fault: VectoredEvent, why: string): VectorTry => ({ entered: false, fault, rule, why });
  if (e.vector * 16 + 15 > idt.limit) return fail('idt-limit', exception(GP, idtCode), `vector ${e.vector}'s gate ends at ${hex(e.vector * 16 + 15)}, beyond the IDT limit ${hex(idt.limit)}`);
  const gate = idt.gates[e.vector] ?? ZERO_GATE;
  if (gate.type === 'invalid') return fail('gate-type', exception(GP, idtCode), `vector ${e.vector}'s descriptor is not an interrupt or trap gate`);
  if (softwareLike(e, sw) && gate.dpl < cpl) return fail('gate-dpl', exception(GP, (e.vector << 3) | 2), `gate DPL ${gate.dpl} < CPL ${cpl} for a software interrupt`);
  if (!gate.present) return fail('gate-not-present', exception(NP, idtCode), `vector ${e.vector}'s gate is not present`);
  const selectorCode = ((gate.csSelector ?? 0x08) & 0xfffc) | ext;
  if (gate.target === 'null-cs') return fail('cs-null', exception(GP, ext), 'the gate names the null selector');
  if (gate.target === 'bad-cs') return fail('cs-invalid', exception(GP, selectorCode), 'the gate names an unusable code segment');
  if (gate.target === 'cs-not-present') return fail('cs-not-present', exception(NP, selectorCode), "the gate's code segment is not present");
  const stack = gate.ist === 0 ? idt.stack : (idt.istStacks?.[gate.ist] ?? OK_STACK);
  const onStack = gate.ist === 0 ? 'the stack' : `IST ${gate.ist}`;
  if (stack.kind === 'ts') return fail('stack-tss', exception(TS, (stack.tssSelector & 0xfffc) | ext), `${onStack}'s TSS slot is beyond the TSS limit`);
  if (stack.kind === 'ss') return fail('stack-non-canonical', exception(SS, ext), `${onStack} pointer is non-canonical`);
  if (gate.target === 'non-canonical-rip') return fail('rip-non-canonical', exception(GP, ext), "the gate's handler address is non-canonical");
  const push = stackPush(stack, e, sw);
  if (push) return fail('stack-push-fault', exception(PF, push.errorCode, push.address), `pushing the frame on ${onStack} faults at ${hex(push.address)}`);
  return { entered: true };
}

// ---------------------------------------------------------------------------------------------
// The chain

/** How a chain ends: a handler entered, shutdown, or (svm.ts) an event an intercept took. */
export type ChainEnd =
  | { readonly kind: 'handler'; readonly event: VectoredEvent }
  | { readonly kind: 'shutdown'; readonly doubleFault: VectoredEvent }
  | {
      readonly kind: 'intercepted';
      readonly event: VectoredEvent;
      /** The event whose delivery raised it; null for the original event and for a #DF the rule produced. */
      readonly delivering: VectoredEvent | null;
      /** For a #DF the rule produced: the event whose delivery failed (it is no longer being delivered). */
      readonly replaced?: VectoredEvent;
    };

export interface ChainOptions {
  /** svm.ts: whether an intercept takes this event before the processor vectors it. */
  readonly intercepted?: (e: VectoredEvent) => boolean;
  /** svm.ts: whether the intercept check of a fault during #DF delivery comes before the triple fault. */
  readonly interceptFaultDuringDoubleFault?: boolean;
}

const MAX_STEPS = 16;

/**
 * Follow `start` through the IDT until a handler is entered, the processor shuts down, or an
 * intercept takes an event. An injected event is not checked against the intercepts (APM §15.20);
 * every exception raised on the way is, before the double-fault rule combines it (that is what
 * lets L1 see the #GP of KVM's nested_exceptions_test before it becomes #DF).
 */
export function followChain(start: VectoredEvent, setup: DeliverySetup, sw: ExceptionSwitches, opts: ChainOptions = {}): { readonly steps: readonly DeliveryStep[]; readonly end: ChainEnd } {
  const steps: DeliveryStep[] = [step('raised', start, `${describeEvent(start)} raised`)];
  const taken = (e: VectoredEvent) => opts.intercepted !== undefined && opts.intercepted(e);
  const intercept = (event: VectoredEvent, delivering: VectoredEvent | null, replaced?: VectoredEvent) => {
    steps.push(step('intercepted', event, `${describeEvent(event)} is intercepted: #VMEXIT to L1`));
    return { steps, end: { kind: 'intercepted', event, delivering, ...(replaced ? { replaced } : {}) } as const };
  };
  if (!start.injected && taken(start)) return intercept(start, null);
  let current = start;
  for (let n = 0; n < MAX_STEPS; n++) {
    const t = vectorThroughIdt(current, setup, sw);
    if (t.entered) {
      steps.push(step('handler-entered', current, `${describeEvent(current)} enters its handler`));
      return { steps, end: { kind: 'handler', event: current } };
    }
    const { fault: raised } = t;
    steps.push(step(t.rule, raised, `delivering ${describeEvent(current)}: ${t.why} → ${describeEvent(raised)}`));
    const first = classOfEvent(current, sw);
    if (first === 'double-fault') {
      if (opts.interceptFaultDuringDoubleFault && taken(raised)) return intercept(raised, current);
      steps.push(step('triple-fault', raised, `${describeEvent(raised)} while delivering #DF: shutdown`));
      return { steps, end: { kind: 'shutdown', doubleFault: current } };
    }
    if (taken(raised)) return intercept(raised, current);
    const second = classOfEvent(raised, sw);
    if (second === 'double-fault') throw new Error('followChain: a delivery raised #DF directly');
    if (combine(first, second) === 'serial') {
      steps.push(step('serial', raised, `${first} ${describeEvent(current)} then ${second} ${describeEvent(raised)}: handled serially`));
      current = raised;
      continue;
    }
    const df = exception(DF, DOUBLE_FAULT_ERROR_CODE);
    steps.push(step('double-fault', df, `${first} ${describeEvent(current)} then ${second} ${describeEvent(raised)}: #DF`));
    if (taken(df)) return intercept(df, null, current);
    current = df;
  }
  throw new Error(`followChain: no end after ${MAX_STEPS} steps`);
}

export function handlerEntry(e: VectoredEvent): HandlerEntry {
  return { kind: 'handler', vector: e.vector, errorCode: e.errorCode, ...(e.vector === PF && e.kind === 'exception' && e.cr2 !== undefined ? { cr2: e.cr2 } : {}) };
}

export interface DeliveryResult {
  /** What the guest observes, in order: handler entries, and shutdown last if it comes. */
  readonly outcomes: readonly Outcome[];
  /** Why, step by step. */
  readonly chain: readonly DeliveryStep[];
}

/** Single-level delivery of one event. */
export function deliver(raised: RaisedEvent, setup: DeliverySetup, sw: ExceptionSwitches = SDM_EXCEPTIONS): DeliveryResult {
  const { steps, end } = followChain(vectoredOf(raised), setup, sw);
  if (end.kind === 'intercepted') throw new Error('deliver: no intercepts at one level');
  return { outcomes: [end.kind === 'handler' ? handlerEntry(end.event) : { kind: 'shutdown' }], chain: steps };
}

/** Events one after another (each handler returns before the next event); nothing follows a shutdown. */
export function deliverAll(events: readonly RaisedEvent[], setup: DeliverySetup, sw: ExceptionSwitches = SDM_EXCEPTIONS): DeliveryResult {
  const outcomes: Outcome[] = [];
  const chain: DeliveryStep[] = [];
  for (const e of events) {
    const r = deliver(e, setup, sw);
    outcomes.push(...r.outcomes);
    chain.push(...r.chain);
    if (r.outcomes.some((o) => o.kind === 'shutdown')) break;
  }
  return { outcomes, chain };
}

// ---------------------------------------------------------------------------------------------
// What instructions raise

/** The state an instruction's exception depends on. Flags left out are 0. */
export interface InstructionContext {
  readonly cpl: 0 | 1 | 2 | 3;
  readonly cr0?: { readonly am?: boolean; readonly ts?: boolean; readonly mp?: boolean; readonly ne?: boolean };
  readonly cr4?: { readonly osxmmexcpt?: boolean };
  readonly rflags?: { readonly ac?: boolean; readonly tf?: boolean };
  /** The address a memory-access entry touches (CR2 of its #PF). */
  readonly address?: bigint;
  /** INT n's immediate. */
  readonly intVector?: number;
}

export interface FaultingInstruction {
  readonly description: string;
  readonly citation: string;
  /** What executing it raises, or null when it completes without an exception. */
  raises(ctx: InstructionContext, sw?: ExceptionSwitches): RaisedEvent | null;
}

const fault = (vector: number, errorCode?: number, cr2?: bigint): RaisedEvent => ({
  vector,
  source: 'instruction',
  ...(errorCode === undefined ? {} : { errorCode }),
  ...(cr2 === undefined ? {} : { cr2 }),
});

function addressOf(ctx: InstructionContext, what: string): bigint {
  if (ctx.address === undefined) throw new Error(`${what}: needs ctx.address`);
  return ctx.address;
}

function pageFault(what: string, ctx: InstructionContext, a: Omit<PageFaultAccess, 'user'>): RaisedEvent {
  return fault(PF, pageFaultErrorCode({ ...a, user: ctx.cpl === 3 }), addressOf(ctx, what));
}

/**
 * Instructions the guest executes to raise exceptions, by name. The generators pick a name and a
 * context; the guest runs the instruction; the model is fed `raises(ctx)`.
 */
export const FAULTING_INSTRUCTIONS = Object.freeze({
  'div-by-zero': {
    description: 'DIV r/m64 with a zero divisor',
    citation: 'SDM Vol. 2A DIV: #DE if the source operand (divisor) is 0; APM §8.2.1',
    raises: () => fault(DE),
  },
  ud2: {
    description: 'UD2 (0F 0B)',
    citation: 'SDM Vol. 2B UD: "Raises an invalid opcode exception in all operating modes"; APM §8.2.7',
    raises: () => fault(UD),
  },
  'bound-64': {
    description: 'opcode 62h in 64-bit mode (BOUND is invalid there; with AVX-512 62h starts EVEX, so the guest must use a form EVEX rejects)',
    citation: 'SDM Vol. 2A BOUND: 64-bit mode "#UD If in 64-bit mode"; so #BR never arises in 64-bit mode',
    raises: () => fault(UD),
  },
  'into-64': {
    description: 'INTO (CEh) in 64-bit mode',
    citation: 'SDM Vol. 2A INT n/INTO/INT3: INTO "Invalid" in 64-bit mode, #UD; APM Vol. 3 INTO',
    raises: () => fault(UD),
  },
  int3: {
    description: 'INT3 (CCh)',
    citation: 'SDM Vol. 2A INT3: a software interrupt to vector 3 (a trap: RIP after the instruction), DPL-checked',
    raises: () => ({ vector: BP, source: 'software-int', via: 'int3' }),
  },
  'int-n': {
    description: 'INT imm8 (CD ib), vector ctx.intVector',
    citation: 'SDM Vol. 2A INT n: software interrupt, DPL-checked, no error code pushed',
    raises: (ctx: InstructionContext) => {
      if (ctx.intVector === undefined) throw new Error('int-n: needs ctx.intVector');
      return { vector: ctx.intVector, source: 'software-int', via: 'int-n' };
    },
  },
  'single-step': {
    description: 'any instruction with RFLAGS.TF = 1',
    citation: 'SDM Vol. 3A §17.3.1.4: single-step trap, #DB after the instruction; APM §8.2.2',
    raises: (ctx: InstructionContext) => (ctx.rflags?.tf ? fault(DB) : null),
  },
  'misaligned-load': {
    description: 'MOV r64, [misaligned address]',
    citation: 'SDM Interrupt 17 (#AC): CR0.AM = 1, RFLAGS.AC = 1, CPL = 3 and an unaligned reference; error code 0; APM §8.2.17',
    raises: (ctx: InstructionContext, sw?: ExceptionSwitches) => {
      const enabled = sw?.alignmentCheck === 'rflags-ac-only' ? !!ctx.rflags?.ac : !!ctx.cr0?.am && !!ctx.rflags?.ac;
      return ctx.cpl === 3 && enabled ? fault(AC, 0) : null;
    },
  },
  'x87-with-ts': {
    description: 'an x87 instruction (FLD1) with CR0.TS = 1',
    citation: 'SDM Interrupt 7 (#NM): an x87 instruction with CR0.TS = 1; APM §8.2.8',
    raises: (ctx: InstructionContext) => (ctx.cr0?.ts ? fault(NM) : null),
  },
  'fwait-unmasked-x87': {
    description: 'FNINIT; FLDCW with IM and ZM unmasked; FLDZ; FDIV ST(0), ST(0) (0/0: invalid operation, now pending); FWAIT',
    citation:
      'SDM Vol. 3A §6.15 Interrupt 16 (#MF): with CR0.NE = 1 an unmasked x87 exception is reported at the next waiting x87 instruction or WAIT/FWAIT, no error code, "The saved contents of CS and EIP registers point to the floating-point or WAIT/FWAIT instruction that was about to be executed"; SDM Vol. 1 §8.7; APM Vol. 2 §8.2.16. With CR0.TS = 1 the first x87 instruction (FNINIT) raises #NM instead (SDM Interrupt 7)',
    raises: (ctx: InstructionContext) => {
      if (ctx.cr0?.ts) return fault(NM);
      if (!ctx.cr0?.ne) throw new Error('fwait-unmasked-x87: CR0.NE = 0 (external FERR#) is not modelled');
      return fault(MF);
    },
  },
  'sse-unmasked': {
    description: 'DIVPS by zero with MXCSR.ZM = 0',
    citation: 'SDM Interrupt 19 (#XM): with CR4.OSXMMEXCPT = 1, else #UD; CR0.TS = 1 is #NM first; APM §8.2.19',
    raises: (ctx: InstructionContext) => (ctx.cr0?.ts ? fault(NM) : ctx.cr4?.osxmmexcpt ? fault(XM) : fault(UD)),
  },
  'load-non-canonical': {
    description: 'MOV r64, [non-canonical address] (not through RSP/RBP)',
    citation: 'SDM Vol. 3A §3.3.7.1 / Interrupt 13: a non-canonical memory reference → #GP(0); APM §8.2.14',
    raises: () => fault(GP, 0),
  },
  'stack-load-non-canonical': {
    description: 'MOV r64, [RSP + offset] reaching a non-canonical address',
    citation: 'SDM Interrupt 12: a non-canonical reference through SS → #SS(0); APM §8.2.13',
    raises: () => fault(SS, 0),
  },
  'hlt-unprivileged': {
    description: 'HLT at CPL > 0',
    citation: 'SDM Vol. 2A HLT: #GP(0) if CPL ≠ 0',
    raises: (ctx: InstructionContext) => (ctx.cpl === 0 ? null : fault(GP, 0)),
  },
  'mov-from-cr-unprivileged': {
    description: 'MOV r64, CR0 (0F 20 /r) at CPL > 0',
    citation: 'SDM Vol. 2B MOV—Move to/from Control Registers: #GP(0) "If the current privilege level is not 0"; APM Vol. 3 MOV CRn',
    raises: (ctx: InstructionContext) => (ctx.cpl === 0 ? null : fault(GP, 0)),
  },
  'load-unmapped': {
    description: 'MOV r64, [address] with no translation',
    citation: 'SDM Vol. 3A §4.7: P = 0, W = 0, U = (CPL = 3); CR2 = the address; APM §8.4.2',
    raises: (ctx: InstructionContext) => pageFault('load-unmapped', ctx, { present: false, write: false }),
  },
  'store-unmapped': {
    description: 'MOV [address], r64 with no translation',
    citation: 'SDM Vol. 3A §4.7: P = 0, W = 1',
    raises: (ctx: InstructionContext) => pageFault('store-unmapped', ctx, { present: false, write: true }),
  },
  'store-read-only': {
    description: 'MOV [address], r64 to a read-only page (CR0.WP = 1 at CPL 0)',
    citation: 'SDM Vol. 3A §4.7: P = 1, W = 1',
    raises: (ctx: InstructionContext) => pageFault('store-read-only', ctx, { present: true, write: true }),
  },
  'fetch-no-execute': {
    description: 'a jump to a page with XD/NX set (EFER.NXE = 1)',
    citation: 'SDM Vol. 3A §4.7: P = 1, I/D = 1',
    raises: (ctx: InstructionContext) => pageFault('fetch-no-execute', ctx, { present: true, write: false, fetch: true }),
  },
  'load-reserved-bit': {
    description: 'MOV r64, [address] whose paging entry has a reserved bit set',
    citation: 'SDM Vol. 3A §4.7: P = 1, RSVD = 1',
    raises: (ctx: InstructionContext) => pageFault('load-reserved-bit', ctx, { present: true, write: false, reservedBit: true }),
  },
  'user-load-supervisor-page': {
    description: 'MOV r64, [address] at CPL 3 to a supervisor page',
    citation: 'SDM Vol. 3A §4.6, §4.7: P = 1, U = 1; no fault at CPL 0 (without SMAP, the page being supervisor)',
    raises: (ctx: InstructionContext) => (ctx.cpl === 3 ? pageFault('user-load-supervisor-page', ctx, { present: true, write: false }) : null),
  },
} satisfies Record<string, FaultingInstruction>);

export type FaultingInstructionName = keyof typeof FAULTING_INSTRUCTIONS;

export function raisedBy(name: FaultingInstructionName, ctx: InstructionContext, sw: ExceptionSwitches = SDM_EXCEPTIONS): RaisedEvent | null {
  const entry: FaultingInstruction = FAULTING_INSTRUCTIONS[name];
  return entry.raises(ctx, sw);
}
