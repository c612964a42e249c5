/**
 * nested.svm.delivery: exceptions in an SVM guest. The guest is L1, a minimal SVM hypervisor (the
 * svmRun op, harness/guest/src/svm.c); each case is a few L2 runs (generators/nestedSvm.ts), each
 * one VMRUN with its own intercepts, L2 IDT set-up and event: an instruction L2 executes or an
 * EVENTINJ. models/nested/svm.ts predicts, per run, the one place the event ends up: L2's handler
 * (vector, error code, RIP, CR2), or a #VMEXIT to L1 (EXITCODE, EXITINFO1/2, EXITINTINFO, the RIP
 * L2 stopped at), a shutdown exit included; a run with no event ends in L1's VMMCALL intercept.
 *
 * Where an L1 with SVM exists:
 *  - under `--accel tcg`, QEMU's SVM emulation on any host (then this checks QEMU's SVM, not KVM's);
 *  - under KVM, on a host whose KVM offers guests nested SVM (kvm_amd nested=1).
 * Elsewhere it skips with the reason; it never passes without running.
 *
 * The switches are the APM's (SVM is AMD's architecture): models/nested/svm.ts APM_SVM.
 */
import fc from 'fast-check';
import { FULL_IDT_LIMIT, KVM_NESTED_EXCEPTIONS_CASE, L2_TR_SELECTOR, firstVectorOf, svmCaseArb, svmRunOp, type L2TssSetup, type SvmCase, type SvmRun } from '../../generators/nestedSvm.js';
import { encodeStep } from '../../generators/nested.js';
import { recordsOf, NO_FAULT, type RecordOf } from '../../ir/ops.js';
import { DEFAULT_CANARY } from '../../ir/program.js';
import { LAYOUT, THREAD_STATE } from '../../harness/guest/abi.js';
import { mnemonic, vectorInfo } from '../../models/nested/classes.js';
import { GOOD_GATE, OK_STACK, describeErrorCode, hex, raisedBy, type DeliverySetup, type DeliveryStep, type GateSetup, type RaisedEvent, type StackSetup } from '../../models/nested/exceptions.js';
import { APM_SVM, SVM_EXIT, SVM_L1, decodeEventInj, deliverNested, type NestedOutcome, type SvmIntercepts, type SvmSwitches, type VmExit } from '../../models/nested/svm.js';
import type { L1Backend } from '../../models/nested/l1.js';
import type { Op } from '../../ir/ops.js';
import type { Check } from '../../ir/checks.js';
import { defineProperty, difference, rule, type Difference, type Observation, type PropertyEnv, type ReproPlan } from '../lib/property.js';
import { observeProgram } from '../lib/run.js';
import { describeStep, instructionContext } from './singleLevel.js';

/** The VMMCALL intercept: how L2 hands back after its handler ran or its code ended. */
export const SVM_EXIT_VMMCALL = 0x81;
/** EXITCODE of a VMRUN whose VMCB fails the consistency checks (−1; QEMU 7.2 TCG writes it as a u32, 0xffffffff). */
export const SVM_EXIT_INVALID = 0xffff_ffff_ffff_ffffn;
const SVM_EXIT_INVALID_U32 = 0xffff_ffffn;
/** Where L2's code ends and the VMMCALL that closes it begins: svmRun runs 16 bytes, then VMMCALL. */
const CODE_END = 16;

/**
 * A broken L1 (a mutant's modelVariant.nestedL1): the hypervisor under test leaves out one
 * exception intercept bit it claims to set, so the exception reaches L2's IDT instead of L1.
 */
export interface L1Variant {
  readonly dropInterceptVector?: number;
}

export interface SvmFacts {
  readonly switches: SvmSwitches;
  readonly l1: L1Variant;
}

export function svmSkipReason(env: Pick<PropertyEnv, 'host' | 'options'>): string | null {
  if (env.options.accel === 'tcg') return null;
  const kvm = env.host.kvm;
  if (kvm.nested === true) return null;
  const why = kvm.vendorModules.includes('kvm_pvm') ? 'kvm_pvm gives guests no VMX/SVM' : `kvm.nested = ${String(kvm.nested)}`;
  return `this host's KVM offers guests no nested SVM (${why}); run it under --accel tcg to check QEMU's SVM emulation with the same model`;
}

const bit = (mask: number, v: number) => v < 32 && ((mask >>> v) & 1) === 1;

/** svm.c's not-present stack pointer as the model sees it: the frame push faults. */
export const NOT_PRESENT_STACK: StackSetup = Object.freeze({ kind: 'not-present', rsp: BigInt(LAYOUT.notPresentStack) });

/** A TSS stack slot as the model sees it: beyond TR.limit (#TS), non-canonical (#SS), not present (#PF), or good. */
function slot(tss: L2TssSetup, which: 'rsp0' | 'ist1'): StackSetup {
  if (tss.limitCut) return { kind: 'ts', tssSelector: L2_TR_SELECTOR };
  return tss[which] === 'non-canonical' ? { kind: 'ss' } : tss[which] === 'not-present' ? NOT_PRESENT_STACK : OK_STACK;
}

/**
 * L2's IDT, stacks and CPL as the model sees them (svm.c): 256 gates, DPL 0, P and IST as the set-up
 * says; an IST-0 gate uses the current stack at CPL 0 (no TSS read) and RSP0 from CPL 3.
 */
export function l2SetupOf(r: Pick<SvmRun, 'idt' | 'tss' | 'cpl' | 'rsp'>): DeliverySetup {
  const gates: Record<number, GateSetup> = {};
  for (let v = 0; v < 256; v++) gates[v] = { ...GOOD_GATE, present: !bit(r.idt.notPresent, v), ist: bit(r.idt.ist, v) ? 1 : 0 };
  const current = r.rsp === 'not-present' ? NOT_PRESENT_STACK : OK_STACK;
  return { idt: { limit: r.idt.limit, gates, stack: r.cpl === 3 ? slot(r.tss, 'rsp0') : current, istStacks: { 1: slot(r.tss, 'ist1') } }, cpl: r.cpl };
}

export interface RunPrediction {
  /** null: nothing happens; L2 runs to its VMMCALL. */
  readonly outcome: NestedOutcome | null;
  /**
   * The RIP the event reports, as an offset into L2's code, where the model claims one: what L2's
   * handler finds in its frame and, for an exit, the RIP the VMCB saves (SDM §6.5, APM §8.2: a
   * fault reports its instruction, a trap the next; a fault while vectoring, the RIP the first
   * event would have pushed; an EVENTINJ, the VMCB's RIP (and NextRIP, which svm.c sets to it)).
   */
  readonly ripOffset: number | null;
  readonly chain: readonly DeliveryStep[];
}

/** Chain steps that end a delivery rather than fault it: entered, intercepted, shut down. */
const DELIVERY_ENDS: ReadonlySet<string> = new Set(['raised', 'handler-entered', 'intercepted', 'shutdown-intercepted', 'shutdown-not-intercepted']);
const endsInShutdown = (o: NestedOutcome) => o.kind === 'shutdown' || (o.kind === 'vmexit' && o.exitCode === SVM_EXIT.SHUTDOWN);

export function predictRun(r: SvmRun, f: SvmFacts): RunPrediction {
  const l2 = l2SetupOf(r);
  const intercepts = r.intercepts;
  if (r.event.kind === 'eventinj') {
    const res = deliverNested({ l2, intercepts, event: { kind: 'eventinj', eventInj: r.event.eventInj } }, f.switches);
    const out = res.outcomes[0]!;
    return { outcome: out, ripOffset: endsInShutdown(out) ? null : 0, chain: res.chain };
  }
  const step = r.event.step;
  const raised: RaisedEvent | null = raisedBy(step.instruction, instructionContext(step, r.cpl), f.switches.exceptions); // L2 has L1's CR0/CR4: AM, TS clear
  if (!raised) return { outcome: null, ripOffset: CODE_END, chain: [] };
  const res = deliverNested({ l2, intercepts, event: { kind: 'raised', raised } }, f.switches);
  const out = res.outcomes[0]!;
  const enc = encodeStep(step);
  const vectoringFaulted = res.chain.some((c) => !DELIVERY_ENDS.has(c.rule));
  const softwareInt = raised.source === 'software-int';
  let ripOffset: number | null;
  if (endsInShutdown(out)) ripOffset = null;
  else if (step.instruction === 'single-step') ripOffset = enc.after; // the #DB trap: the NOP has completed
  // An intercepted INT n or INT3: the manuals do not say which RIP the VMCB saves (KVM's
  // bp_interception reads save.rip as the INT3's own address, where a pushed frame has the next).
  else if (softwareInt && out.kind === 'vmexit' && !vectoringFaulted) ripOffset = null;
  else if (softwareInt && !vectoringFaulted) ripOffset = enc.after; // delivered: INT n and INT3 are traps
  else ripOffset = enc.at;
  return { outcome: out, ripOffset, chain: res.chain };
}

function describeEvent(r: SvmRun): string {
  if (r.event.kind === 'eventinj') {
    const e = r.event.eventInj;
    return `EVENTINJ ${e.type} ${hex(e.vector)}${e.errorCodeValid ? `(${hex(e.errorCode)})` : ''}`;
  }
  return describeStep(r.event.step);
}

function describeSetup(r: SvmRun): string {
  const vecs = (mask: number) => Array.from({ length: 32 }, (_, v) => v).filter((v) => bit(mask, v)).map((v) => mnemonic(v)).join(',') || 'none';
  const tss = [r.tss.rsp0 !== 'ok' ? `RSP0 ${r.tss.rsp0}` : '', r.tss.ist1 !== 'ok' ? `IST1 ${r.tss.ist1}` : '', r.tss.limitCut ? 'TR.limit 3' : ''].filter(Boolean).join(', ');
  return `intercepts ${vecs(r.intercepts.exceptions)}${r.intercepts.intn ? '+INTn' : ''}${r.intercepts.shutdown ? '+SHUTDOWN' : ''}; L2 at CPL ${r.cpl}${r.rsp && r.cpl === 0 ? ` on RSP ${r.rsp}` : ''}, IDT limit ${hex(r.idt.limit)}${r.idt.notPresent ? ` not-present ${vecs(r.idt.notPresent)}` : ''}${r.idt.ist ? ` IST1 ${vecs(r.idt.ist)}` : ''}${tss ? `; TSS ${tss}` : ''}${r.npt ? '; NPT' : ''}`;
}

export function describeOutcome(o: NestedOutcome | null): string {
  if (o === null) return 'no event (L2 reaches its VMMCALL)';
  switch (o.kind) {
    case 'handler':
      return `L2's ${mnemonic(o.vector)} handler${o.errorCode === null ? '' : ` with error code ${hex(o.errorCode)}`}`;
    case 'vmexit':
      return `#VMEXIT(${hex(o.exitCode)})${o.exitInfo1 === null ? '' : ` EXITINFO1 ${hex(o.exitInfo1)}`}${o.exitIntInfo === null ? '' : ` EXITINTINFO ${hex(o.exitIntInfo)}`}`;
    case 'shutdown':
      return 'a shutdown of L1';
  }
}

/** What one run did, read from its record. */
export type ObservedOutcome =
  | { readonly kind: 'l1-fault'; readonly vector: number; readonly errorCode: number }
  | { readonly kind: 'invalid' }
  | { readonly kind: 'none'; readonly exitRip: bigint }
  | { readonly kind: 'handler'; readonly vector: number; readonly errorCode: number | null; readonly rip: bigint; readonly cr2: bigint; readonly entries: number }
  | { readonly kind: 'vmexit'; readonly exitCode: number; readonly exitInfo1: bigint; readonly exitInfo2: bigint; readonly exitIntInfo: bigint; readonly exitRip: bigint }
  /** The VM itself shut down during the run (QEMU: guest-reset): a triple fault reached L1. */
  | { readonly kind: 'l1-shutdown' };

export function observedOf(rec: RecordOf<'svmRun'>): ObservedOutcome {
  const f = rec.fields;
  if (rec.faultVector !== null && rec.faultVector !== NO_FAULT) return { kind: 'l1-fault', vector: rec.faultVector, errorCode: rec.errorCode };
  if (f.exitCode === SVM_EXIT_INVALID || f.exitCode === SVM_EXIT_INVALID_U32) return { kind: 'invalid' };
  if (f.exitCode === BigInt(SVM_EXIT_VMMCALL)) {
    if (f.entries === 0n) return { kind: 'none', exitRip: f.exitRip };
    return { kind: 'handler', vector: Number(f.vector), errorCode: f.hasErrorCode ? Number(f.errorCode) : null, rip: f.handlerRip, cr2: f.handlerCr2, entries: Number(f.entries) };
  }
  return { kind: 'vmexit', exitCode: Number(f.exitCode), exitInfo1: f.exitInfo1, exitInfo2: f.exitInfo2, exitIntInfo: f.exitIntInfo, exitRip: f.exitRip };
}

function describeObserved(o: ObservedOutcome): string {
  switch (o.kind) {
    case 'l1-fault':
      return `L1 took ${mnemonic(o.vector)}(${hex(o.errorCode)}) running VMRUN`;
    case 'invalid':
      return '#VMEXIT(INVALID): the VMCB failed VMRUN\'s checks';
    case 'none':
      return 'no event (L2 reached its VMMCALL)';
    case 'handler':
      return `L2's ${o.vector < 32 ? mnemonic(o.vector) : `vector ${hex(o.vector)}`} handler${o.errorCode === null ? '' : ` with error code ${hex(o.errorCode)}`}`;
    case 'vmexit':
      return `#VMEXIT(${hex(o.exitCode)}) EXITINFO1 ${hex(o.exitInfo1)} EXITINTINFO ${hex(o.exitIntInfo)}`;
    case 'l1-shutdown':
      return 'the VM (L1) shut down';
  }
}

export interface JudgedRun {
  readonly index: number;
  readonly run: SvmRun;
  readonly predicted: RunPrediction;
  readonly record?: RecordOf<'svmRun'>;
  /** The VM this run had to itself shut down (a run without the SHUTDOWN intercept runs alone). */
  readonly shutDown?: true;
}

export interface SvmObservation {
  readonly c: SvmCase;
  readonly runs: readonly JudgedRun[];
  /** The VM of the runs with SHUTDOWN intercepted: its thread's final state and record count. */
  readonly threadState: number;
  readonly recordCount: number;
  readonly sharedRuns: number;
}

/**
 * The suite's side of an L1 backend (models/nested/l1.ts): the model's backend, the guest op that
 * runs one L2 event under it, the decoder of that op's record, and why a host cannot run it. SVM's
 * is the only one; a VMX runtime would bring a vmxRun op (a VMCS, VMLAUNCH) and its decoder (exit
 * reason, qualification, interruption and IDT-vectoring information) with the same shape, and
 * only once it has run on a VMX host.
 */
export interface L1Runtime<Controls, Exit, Switches, Run, Rec, Observed> {
  readonly backend: L1Backend<Controls, Exit, Switches>;
  op(run: Run): Op;
  observed(rec: Rec): Observed;
  skipReason(env: Pick<PropertyEnv, 'host' | 'options'>): string | null;
}

export const SVM_RUNTIME: L1Runtime<SvmIntercepts, VmExit, SvmSwitches, SvmRun, RecordOf<'svmRun'>, ObservedOutcome> = Object.freeze({
  backend: SVM_L1,
  op: svmRunOp,
  observed: observedOf,
  skipReason: svmSkipReason,
});

type Recorded = JudgedRun & { readonly record: RecordOf<'svmRun'>; readonly seen: ObservedOutcome };

function* recorded(o: SvmObservation): Iterable<Recorded> {
  for (const j of o.runs) if (j.record) yield { ...j, record: j.record, seen: SVM_RUNTIME.observed(j.record) } as Recorded;
}

type Seen = JudgedRun & { readonly seen: ObservedOutcome };

/** Every run with what it did: its record's outcome, or the VM's shutdown. */
function* judged(o: SvmObservation): Iterable<Seen> {
  for (const j of o.runs) {
    if (j.record) yield { ...j, seen: SVM_RUNTIME.observed(j.record) };
    else if (j.shutDown) yield { ...j, seen: { kind: 'l1-shutdown' } };
  }
}

const where = (j: JudgedRun) => `run ${j.index} ${describeEvent(j.run)} (${describeSetup(j.run)})`;
const extras = (j: JudgedRun) => ({
  witness: { runs: [j.run] } satisfies SvmCase,
  evidence: {
    chain: j.predicted.chain.map((c) => `${c.rule}: ${c.summary}`),
    op: Object.fromEntries(Object.entries(svmRunOp(j.run)).map(([k, v]) => [k, typeof v === 'bigint' ? hex(v) : v])),
    ...(j.shutDown ? { vm: 'shut down (QEMU: guest-reset)' } : {}),
    ...(!j.record ? {} : { record: { faultVector: j.record.faultVector, errorCode: hex(j.record.errorCode), ...Object.fromEntries(Object.entries(j.record.fields).map(([k, v]) => [k, hex(v as bigint | number)])) } }),
    ...(j.record?.fields.exitIntInfo ? { exitIntInfoDecoded: safeDecode(j.record.fields.exitIntInfo) } : {}),
  },
});

function safeDecode(bits: bigint): unknown {
  try {
    return decodeEventInj(bits);
  } catch (e) {
    return String(e);
  }
}

/** Which place the event ended up in: "none", "L2 handler N", "exit 0xNN", "L1 shutdown". */
function placeOf(o: NestedOutcome | null): string {
  if (o === null) return 'none';
  if (o.kind === 'handler') return `handler ${o.vector}`;
  if (o.kind === 'vmexit') return `exit ${hex(o.exitCode)}`;
  return 'L1 shutdown';
}
function placeSeen(o: ObservedOutcome): string {
  switch (o.kind) {
    case 'none': return 'none';
    case 'handler': return `handler ${o.vector}`;
    case 'vmexit': return `exit ${hex(o.exitCode)}`;
    case 'l1-shutdown': return 'L1 shutdown';
    default: return o.kind;
  }
}

function* vmrunRule(o: SvmObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    if (j.seen.kind !== 'l1-fault' && j.seen.kind !== 'invalid') continue;
    yield difference(`${where(j)}: ${describeObserved(j.seen)}`, 'VMRUN enters L2', describeObserved(j.seen), extras(j));
  }
}

function* placeRule(o: SvmObservation): Iterable<Difference> {
  for (const j of judged(o)) {
    if (j.seen.kind === 'l1-fault' || j.seen.kind === 'invalid') continue;
    const want = placeOf(j.predicted.outcome);
    const got = placeSeen(j.seen);
    if (want === got) continue;
    yield difference(`${where(j)}: ${describeObserved(j.seen)}, the model predicts ${describeOutcome(j.predicted.outcome)}`, { outcome: want }, { outcome: got }, extras(j));
  }
}

/** Error code of an L2 handler entry, EXITINFO1/EXITINFO2 of an exit, where the model claims them. */
function* errorCodeRule(o: SvmObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const p = j.predicted.outcome;
    const s = j.seen;
    if (p?.kind === 'handler' && s.kind === 'handler' && s.vector === p.vector && s.errorCode !== p.errorCode) {
      yield difference(`${where(j)}: L2's ${mnemonic(p.vector)} handler found error code ${describeErrorCode(p.vector, s.errorCode)}, the model predicts ${describeErrorCode(p.vector, p.errorCode)}`, { errorCode: p.errorCode }, { errorCode: s.errorCode }, extras(j));
    }
    if (p?.kind === 'vmexit' && s.kind === 'vmexit' && s.exitCode === p.exitCode) {
      if (p.exitInfo1 !== null && s.exitInfo1 !== p.exitInfo1) {
        const vec = p.exitCode - SVM_EXIT.EXCP_BASE;
        const code = (v: bigint) => (v <= 0xffff_ffffn ? describeErrorCode(vec, Number(v)) : hex(v));
        yield difference(`${where(j)}: #VMEXIT(${hex(p.exitCode)}) EXITINFO1 ${code(s.exitInfo1)}, the model predicts ${code(p.exitInfo1)}`, { exitInfo1: hex(p.exitInfo1) }, { exitInfo1: hex(s.exitInfo1) }, extras(j));
      }
      if (p.exitInfo2 !== null && s.exitInfo2 !== p.exitInfo2) {
        yield difference(`${where(j)}: #VMEXIT(${hex(p.exitCode)}) EXITINFO2 ${hex(s.exitInfo2)}, the model predicts ${hex(p.exitInfo2)}`, { exitInfo2: hex(p.exitInfo2) }, { exitInfo2: hex(s.exitInfo2) }, extras(j));
      }
    }
  }
}

const EXITINTINFO_V = 1n << 31n;

/**
 * EXITINTINFO in full when the model predicts an event (V = 1); when it predicts none, only V = 0:
 * the APM defines the other bits only for a valid entry (§15.7.2: "V—Valid. Set to 1 if an event
 * was being delivered"; the rest describe that event).
 */
function* exitIntInfoRule(o: SvmObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const p = j.predicted.outcome;
    const s = j.seen;
    if (p?.kind !== 'vmexit' || s.kind !== 'vmexit' || s.exitCode !== p.exitCode || p.exitIntInfo === null) continue;
    if ((p.exitIntInfo & EXITINTINFO_V) === 0n ? (s.exitIntInfo & EXITINTINFO_V) === 0n : s.exitIntInfo === p.exitIntInfo) continue;
    yield difference(`${where(j)}: #VMEXIT(${hex(p.exitCode)}) EXITINTINFO ${hex(s.exitIntInfo)}, the model predicts ${hex(p.exitIntInfo)}`, { exitIntInfo: hex(p.exitIntInfo) }, { exitIntInfo: hex(s.exitIntInfo) }, extras(j));
  }
}

function* cr2Rule(o: SvmObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const p = j.predicted.outcome;
    const s = j.seen;
    if (p?.kind !== 'handler' || s.kind !== 'handler' || s.vector !== p.vector || p.cr2 === undefined || s.cr2 === p.cr2) continue;
    yield difference(`${where(j)}: L2's #PF handler read CR2 ${hex(s.cr2)}, the model predicts ${hex(p.cr2)}`, { cr2: hex(p.cr2) }, { cr2: hex(s.cr2) }, extras(j));
  }
}

function* ripRule(o: SvmObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    const want = j.predicted.ripOffset;
    if (want === null || placeOf(j.predicted.outcome) !== placeSeen(j.seen)) continue;
    const s = j.seen;
    const rip = s.kind === 'handler' ? s.rip : s.kind === 'vmexit' || s.kind === 'none' ? s.exitRip : null;
    if (rip === null) continue;
    const offset = rip - j.record.fields.codeBase;
    if (offset === BigInt(want)) continue;
    const what = s.kind === 'handler' ? "the RIP in L2's frame" : "L2's RIP in the VMCB";
    yield difference(`${where(j)}: ${what} is code + ${offset}, the model predicts code + ${want}`, { ripOffset: want }, { rip: hex(rip), codeBase: hex(j.record.fields.codeBase) }, extras(j));
  }
}

function* oneEntryRule(o: SvmObservation): Iterable<Difference> {
  for (const j of recorded(o)) {
    if (j.seen.kind !== 'handler' || j.seen.entries === 1) continue;
    yield difference(`${where(j)}: L2's handlers were entered ${j.seen.entries} times`, { entries: 1 }, { entries: j.seen.entries }, extras(j));
  }
}

function* continuesRule(o: SvmObservation): Iterable<Difference> {
  const missing = o.runs.find((j) => !j.record && !j.shutDown);
  if (missing) {
    yield difference(`${where(missing)}: no record (L1 did not go on after run ${missing.index - 1})`, { records: o.sharedRuns }, { records: o.recordCount });
  } else if (o.recordCount !== o.sharedRuns) {
    yield difference(`${o.recordCount} records for ${o.sharedRuns} L2 runs`, { records: o.sharedRuns }, { records: o.recordCount });
  } else if (o.threadState !== THREAD_STATE.done) {
    yield difference(`L1's thread ended in state ${o.threadState} after its last L2 run`, { state: THREAD_STATE.done }, { state: o.threadState });
  }
}

export function l1VariantOf(env: PropertyEnv): L1Variant {
  return (env.mutant?.modelVariant?.nestedL1 ?? {}) as L1Variant;
}

/** The op L1 really runs: the case's, unless the mutant's L1 drops an intercept bit. */
function opsFor(c: SvmCase, l1: L1Variant) {
  const ops = c.runs.map((r) => SVM_RUNTIME.op(r));
  const v = l1.dropInterceptVector;
  if (v === undefined) return ops;
  return ops.map((op) => (op.op === 'svmRun' ? { ...op, exceptions: (op.exceptions & ~(1 << v)) >>> 0 } : op));
}

function countMetrics(env: PropertyEnv, j: JudgedRun): void {
  env.metrics.add('l2Runs');
  const p = j.predicted.outcome;
  if (j.run.event.kind === 'eventinj') env.metrics.add('eventInjections');
  if (p?.kind === 'vmexit') env.metrics.add(p.exitCode === SVM_EXIT.SHUTDOWN ? 'shutdownExits' : 'vmexits');
  if (p?.kind === 'handler') env.metrics.add('l2HandlerEntries');
  for (const step of j.predicted.chain) {
    if (step.rule === 'triple-fault') env.metrics.add('tripleFaults');
    if (step.rule === 'stack-push-fault') env.metrics.add('stackPushFaults');
    if (step.rule !== 'double-fault') continue;
    env.metrics.add('doubleFaults');
    // "contributory #SS(..) then contributory #GP(..): #DF" → df.contributory+contributory
    const m = /^(\S+) .* then (\S+) /.exec(step.summary);
    if (m) env.metrics.add(`df.${m[1]}+${m[2]}`);
  }
  const v = firstVectorOf(j.run.event);
  if (v !== null && v < 32) {
    env.metrics.add(`class.${vectorInfo(v).defaultClass}`);
    env.metrics.add(`event.${mnemonic(v).replace('#', '')}`);
    env.metrics.add(bit(j.run.intercepts.exceptions, v) ? 'intercept.own-vector' : 'intercept.not-own-vector');
  }
  if (j.run.idt.limit !== FULL_IDT_LIMIT) env.metrics.add(j.run.idt.limit === 0 ? 'idt.empty' : 'idt.cut');
  if (j.run.idt.notPresent !== 0) env.metrics.add('idt.not-present-gates');
  if (j.run.npt) env.metrics.add('npt');
  if (j.run.cpl === 3) env.metrics.add('l2.cpl3');
  if (!j.run.intercepts.shutdown) env.metrics.add('shutdown.not-intercepted');
  if (j.run.idt.ist !== 0) env.metrics.add('idt.ist-gates');
  if (j.run.tss.limitCut) env.metrics.add('tss.limit-cut');
  else {
    if (j.run.tss.rsp0 === 'non-canonical' || j.run.tss.ist1 === 'non-canonical') env.metrics.add('tss.non-canonical-stack');
    if (j.run.tss.rsp0 === 'not-present' || j.run.tss.ist1 === 'not-present') env.metrics.add('tss.not-present-stack');
  }
  if (j.run.rsp === 'not-present' && j.run.cpl === 0) env.metrics.add('l2.rsp-not-present');
}

/**
 * The runs with SHUTDOWN intercepted share one VM, in order. A run without it gets a VM of its own:
 * its triple fault may shut the whole VM down (the APM's rule, and KVM's since it honours the
 * missing intercept), which is then its outcome, and the other runs still report.
 */
export async function observeSvm(c: SvmCase, f: SvmFacts, env: PropertyEnv): Promise<Observation<SvmObservation>> {
  const ops = opsFor(c, f.l1);
  const program = (threadOps: typeof ops) => ({ threads: [threadOps], canary: DEFAULT_CANARY, ring0: true });
  const shared = c.runs.map((r, i) => ({ r, i })).filter(({ r }) => r.intercepts.shutdown);
  const runs: JudgedRun[] = c.runs.map((r, index) => ({ index, run: r, predicted: predictRun(r, f) }));
  let threadState: number = THREAD_STATE.done;
  let recordCount = 0;
  if (shared.length) {
    const run = await observeProgram(env, program(shared.map(({ i }) => ops[i]!)), { role: 'workload' });
    if (!run.ok) return run;
    const records = recordsOf(run.value.records[0] ?? [], 'svmRun');
    shared.forEach(({ i }, k) => {
      const record = records.find((x) => x.opIndex === k);
      if (record) runs[i] = { ...runs[i]!, record };
    });
    threadState = Number(run.value.vm.threads[0]?.status.state ?? -1n);
    recordCount = (run.value.records[0] ?? []).length;
  }
  for (const [i, r] of c.runs.entries()) {
    if (r.intercepts.shutdown) continue;
    const run = await observeProgram(env, program([ops[i]!]), { role: 'workload' });
    if (run.ok) {
      const record = recordsOf(run.value.records[0] ?? [], 'svmRun')[0];
      if (record) runs[i] = { ...runs[i]!, record };
      else return { ok: false, difference: difference(`${where(runs[i]!)}: no record, and the VM did not shut down`, 'a record or a shutdown', 'neither') };
    } else if ((run.difference.evidence as { outcome?: { kind?: string } } | undefined)?.outcome?.kind === 'guest-reset') {
      runs[i] = { ...runs[i]!, shutDown: true };
    } else return run;
  }
  env.metrics.add('svmCases');
  for (const j of runs) countMetrics(env, j);
  return { ok: true, value: { c, runs, threadState, recordCount, sharedRuns: shared.length } };
}

/**
 * The case as one ring-0 program (L1 as the case's ops run it, the mutant's L1 included) that
 * checks itself: per run, that VMRUN entered L2 and what each rule compares where the model
 * predicts it (the place: EXITCODE, with VMMCALL and the handler entries telling an L2 handler or
 * nothing from an exit; L2's vector, error code, CR2; EXITINFO1/2, EXITINTINFO; the RIP as an
 * offset into L2's code); then that L1's thread ended done. A run the model ends in a shutdown of
 * L1 leaves no record to check (the VM resets): such a case gets no repro.
 */
export function svmRepro(c: SvmCase, f: SvmFacts): ReproPlan | null {
  const checks: Check[] = [];
  for (const [record, r] of c.runs.entries()) {
    const p = predictRun(r, f);
    const out = p.outcome;
    if (out?.kind === 'shutdown') return null;
    const at = (field: string) => ({ thread: 0, record, field });
    const name = `run ${record} ${describeEvent(r)}:`;
    const u32 = 0xffff_ffffn;
    checks.push({ kind: 'value', name: `${name} L1 runs VMRUN (no L1 fault)`, at: at('faultVector'), expected: BigInt(NO_FAULT), mask: 0xffn });
    if (out === null || out.kind === 'handler') {
      checks.push({ kind: 'value', name: `${name} ${out ? `L2's ${mnemonic(out.vector)} handler` : 'no event'}: #VMEXIT(VMMCALL)`, at: at('exitCode'), expected: BigInt(SVM_EXIT_VMMCALL) });
      checks.push({ kind: 'value', name: `${name} L2 handler entries`, at: at('entries'), expected: out ? 1n : 0n, mask: u32 });
    }
    if (out?.kind === 'handler') {
      checks.push({ kind: 'value', name: `${name} L2 handler vector ${mnemonic(out.vector)}`, at: at('vector'), expected: BigInt(out.vector), mask: u32 });
      checks.push({ kind: 'value', name: `${name} L2 handler has an error code`, at: at('hasErrorCode'), expected: out.errorCode === null ? 0n : 1n, mask: u32 });
      if (out.errorCode !== null) checks.push({ kind: 'value', name: `${name} L2 handler error code`, at: at('errorCode'), expected: BigInt(out.errorCode), mask: u32 });
      if (out.cr2 !== undefined) checks.push({ kind: 'value', name: `${name} L2 handler CR2`, at: at('handlerCr2'), expected: out.cr2 });
    }
    if (out?.kind === 'vmexit') {
      checks.push({ kind: 'value', name: `${name} #VMEXIT(${hex(out.exitCode)})`, at: at('exitCode'), expected: BigInt(out.exitCode) });
      if (out.exitInfo1 !== null) checks.push({ kind: 'value', name: `${name} EXITINFO1`, at: at('exitInfo1'), expected: out.exitInfo1 });
      if (out.exitInfo2 !== null) checks.push({ kind: 'value', name: `${name} EXITINFO2`, at: at('exitInfo2'), expected: out.exitInfo2 });
      if (out.exitIntInfo !== null) {
        const valid = (out.exitIntInfo & EXITINTINFO_V) !== 0n;
        checks.push({ kind: 'value', name: `${name} EXITINTINFO${valid ? '' : '.V'}`, at: at('exitIntInfo'), expected: out.exitIntInfo, ...(valid ? {} : { mask: EXITINTINFO_V }) });
      }
    }
    if (p.ripOffset !== null) {
      const rip = out?.kind === 'handler' ? 'handlerRip' : 'exitRip';
      checks.push({ kind: 'diff', name: `${name} ${out?.kind === 'handler' ? "RIP in L2's frame" : "L2's RIP in the VMCB"} - code base`, at: at(rip), minus: at('codeBase'), expected: BigInt(p.ripOffset) });
    }
  }
  checks.push({ kind: 'status', name: "L1 goes on after each L2 run (its thread's state done)", thread: 0, field: 'state', expected: BigInt(THREAD_STATE.done) });
  return { vms: [{ role: 'workload', program: { threads: [opsFor(c, f.l1)], canary: DEFAULT_CANARY, ring0: true, checks } }] };
}

export const svmDelivery = defineProperty({
  id: 'nested.svm.delivery',
  family: 'nested',
  statement:
    "An event in an SVM guest (L2) — an exception an instruction raises or an EVENTINJ — ends in exactly the place models/nested/svm.ts predicts: L2's own handler (vector, error code, RIP, CR2) or one #VMEXIT to L1 (EXITCODE, EXITINFO1/2, EXITINTINFO, RIP), #DF and SHUTDOWN included; L1 goes on after each",
  skip: (env) => SVM_RUNTIME.skipReason(env),
  facts: async (env: PropertyEnv): Promise<SvmFacts> => ({ switches: APM_SVM, l1: l1VariantOf(env) }),
  arbitrary: (): fc.Arbitrary<SvmCase> => svmCaseArb(),
  examples: () => [KVM_NESTED_EXCEPTIONS_CASE],
  observe: observeSvm,
  rules: [
    rule('L1 runs VMRUN', vmrunRule),
    rule('the event ends where the model predicts (L2 handler, #VMEXIT code, none)', placeRule),
    rule('error code / EXITINFO1 / EXITINFO2 as the model predicts', errorCodeRule),
    rule('EXITINTINFO as the model predicts', exitIntInfoRule),
    rule('CR2 as the model predicts (L2 #PF handler)', cr2Rule),
    rule('RIP as the model predicts', ripRule),
    rule('exactly one L2 handler entry', oneEntryRule),
    rule('L1 goes on after each L2 run', continuesRule),
  ],
  repro: (c: SvmCase, f: SvmFacts) => svmRepro(c, f),
});

