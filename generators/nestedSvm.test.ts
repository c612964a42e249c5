/** The nested SVM generator and its predictions: op encoding, the IDT set-ups, and KVM's nested_exceptions_test under the model. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeOps } from '../harness/bytecode.js';
import { APM_SVM, SVM_EXIT, encodeEventInj } from '../models/nested/svm.js';
import { l2SetupOf, predictRun, observedOf } from '../suites/nested/svm.js';
import { FULL_IDT_LIMIT, GOOD_TSS, KVM_NESTED_EXCEPTIONS_CASE, L2_TR_SELECTOR, svmCaseArb, svmCaseOps, svmRunOp, type SvmRun } from './nestedSvm.js';

const facts = { switches: APM_SVM, l1: {} };

const run = (over: Partial<SvmRun>): SvmRun => ({
  intercepts: { exceptions: 0, shutdown: true, intn: false },
  cpl: 0,
  tss: GOOD_TSS,
  idt: { limit: FULL_IDT_LIMIT, notPresent: 0, ist: 0 },
  npt: false,
  event: { kind: 'instruction', step: { instruction: 'ud2' } },
  ...over,
});

describe('svmRunOp', () => {
  it('puts the intercepts, the IDT set-up, NPT and EVENTINJ in the op', () => {
    const eventInj = { vector: 12, type: 'exception', errorCodeValid: true, errorCode: 0xdeadbeef } as const;
    const op = svmRunOp(run({ intercepts: { exceptions: 0x3100, shutdown: true, intn: true }, idt: { limit: 0, notPresent: 1 << 13, ist: 1 << 8 }, cpl: 3, tss: { rsp0: 'non-canonical', ist1: 'ok', limitCut: true }, npt: true, event: { kind: 'eventinj', eventInj } }));
    expect(op).toMatchObject({ op: 'svmRun', exceptions: 0x3100, idtNotPresent: 1 << 13, istVectors: 1 << 8, idtLimit: 0, flags: 7, l2Cpl: 3, stack: 5, eventInj: encodeEventInj(eventInj) });
    expect(encodeEventInj(eventInj)).toBe(0xdeadbeef_80000b0cn);
    // An EVENTINJ run's code is NOPs: the event comes before L2's first instruction.
    expect((op as { lo: bigint }).lo).toBe(0x9090909090909090n);
  });

  it('encodes every generated case, with EVENTINJ only on EVENTINJ runs', () => {
    fc.assert(
      fc.property(svmCaseArb(), (c) => {
        const ops = svmCaseOps(c);
        expect(encodeOps(ops).length).toBeGreaterThan(0);
        c.runs.forEach((r, i) => expect((ops[i] as { eventInj: bigint }).eventInj !== 0n).toBe(r.event.kind === 'eventinj'));
      }),
      { numRuns: 300 },
    );
  });

  it('has a prediction for every generated run', () => {
    fc.assert(
      fc.property(svmCaseArb(), (c) => {
        for (const r of c.runs) {
          const p = predictRun(r, facts);
          if (p.outcome?.kind === 'vmexit' && p.outcome.exitCode !== SVM_EXIT.SHUTDOWN) expect(p.outcome.exitCode).toBeGreaterThanOrEqual(SVM_EXIT.EXCP_BASE);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe("L2's IDT under the model", () => {
  it('marks the not-present gates of vectors 0-31 and keeps the rest good', () => {
    const s = l2SetupOf({ cpl: 0, tss: GOOD_TSS, idt: { limit: 0x7f, notPresent: (1 << 13) | (1 << 8), ist: 0 } });
    expect(s.idt.limit).toBe(0x7f);
    expect(s.idt.gates[13]!.present).toBe(false);
    expect(s.idt.gates[8]!.present).toBe(false);
    expect(s.idt.gates[14]!.present).toBe(true);
    expect(s.idt.gates[200]!.present).toBe(true);
  });

  it('a not-present #UD gate turns ud2 into #NP(0x32), then #DF when #NP is missing too', () => {
    expect(predictRun(run({ idt: { limit: FULL_IDT_LIMIT, notPresent: 1 << 6, ist: 0 } }), facts).outcome).toEqual({ level: 'L2', kind: 'handler', vector: 11, errorCode: 0x32 });
    expect(predictRun(run({ idt: { limit: FULL_IDT_LIMIT, notPresent: (1 << 6) | (1 << 11), ist: 0 } }), facts).outcome).toMatchObject({ kind: 'handler', vector: 8, errorCode: 0 });
  });

  it('an intercepted exception exits with RIP at the faulting instruction; a delivered INT n reports the next one', () => {
    const ud = predictRun(run({ intercepts: { exceptions: 1 << 6, shutdown: true, intn: false } }), facts);
    expect(ud.outcome).toMatchObject({ kind: 'vmexit', exitCode: 0x46 });
    expect(ud.ripOffset).toBe(0);
    const intn = predictRun(run({ event: { kind: 'instruction', step: { instruction: 'int-n', intVector: 0x40 } } }), facts);
    expect(intn.outcome).toEqual({ level: 'L2', kind: 'handler', vector: 0x40, errorCode: null });
    expect(intn.ripOffset).toBe(2);
    // INTn intercepted: #VMEXIT(0x75), and no claim on the RIP.
    const intercepted = predictRun(run({ intercepts: { exceptions: 0, shutdown: true, intn: true }, event: { kind: 'instruction', step: { instruction: 'int-n', intVector: 0x40 } } }), facts);
    expect(intercepted.outcome).toMatchObject({ kind: 'vmexit', exitCode: 0x75 });
    expect(intercepted.ripOffset).toBeNull();
  });

  it("L2's TSS: from CPL 3 a bad RSP0 gives #SS, a cut TR.limit #TS(selector); at CPL 0 an IST-0 gate reads neither", () => {
    const cpl3 = (tss: typeof GOOD_TSS, ist = 0) => predictRun(run({ cpl: 3, tss, idt: { limit: FULL_IDT_LIMIT, notPresent: 0, ist } }), facts).outcome;
    // Every delivery from CPL 3 needs RSP0: #UD → #SS → #DF → triple fault, SHUTDOWN intercepted.
    expect(cpl3({ rsp0: 'non-canonical', ist1: 'ok', limitCut: false })).toMatchObject({ kind: 'vmexit', exitCode: 0x7f });
    // With #SS on IST 1 its handler runs (EXT = 0 for an exception under the APM switches).
    expect(cpl3({ rsp0: 'non-canonical', ist1: 'ok', limitCut: false }, 1 << 12)).toEqual({ level: 'L2', kind: 'handler', vector: 12, errorCode: 0 });
    // A cut TR.limit: #TS(0x40); on IST 1 the slot is beyond the limit too, so #TS again: #DF, then shutdown.
    expect(cpl3({ rsp0: 'ok', ist1: 'ok', limitCut: true }, 1 << 10)).toMatchObject({ kind: 'vmexit', exitCode: 0x7f });
    expect(predictRun(run({ cpl: 0, tss: { rsp0: 'non-canonical', ist1: 'ok', limitCut: true } }), facts).outcome).toEqual({ level: 'L2', kind: 'handler', vector: 6, errorCode: null });
    // An IST-1 gate with a cut TSS: #TS(0x40) from CPL 0, its gate on IST 0 delivers it.
    expect(predictRun(run({ cpl: 0, tss: { rsp0: 'ok', ist1: 'ok', limitCut: true }, idt: { limit: FULL_IDT_LIMIT, notPresent: 0, ist: 1 << 6 } }), facts).outcome).toEqual({ level: 'L2', kind: 'handler', vector: 10, errorCode: L2_TR_SELECTOR });
    // At CPL 3 the DPL-0 gates refuse INT n: #GP(vector·8 | 2).
    expect(predictRun(run({ cpl: 3, event: { kind: 'instruction', step: { instruction: 'int-n', intVector: 0x80 } } }), facts).outcome).toEqual({ level: 'L2', kind: 'handler', vector: 13, errorCode: 0x402 });
  });

  it('a not-present stack page: the frame push raises #PF (W, CR2 = the aligned RSP − 8), #DF when the #PF uses that stack, shutdown when #DF does', () => {
    const pfAt = 0x10_0000_0ff8n; // LAYOUT.notPresentStack (64 GiB + 4 KiB + 8) aligned to 16, minus the SS push
    const rsp0 = { rsp0: 'not-present', ist1: 'ok', limitCut: false } as const;
    const ist1 = { rsp0: 'ok', ist1: 'not-present', limitCut: false } as const;
    const idt = (ist: number) => ({ limit: FULL_IDT_LIMIT, notPresent: 0, ist });
    // From CPL 3: #UD → #PF on RSP0 (serial) → the #PF's push faults too → #DF; on IST 1 (good) its handler runs.
    expect(predictRun(run({ cpl: 3, tss: rsp0, idt: idt(1 << 8) }), facts).outcome).toEqual({ level: 'L2', kind: 'handler', vector: 8, errorCode: 0 });
    expect(predictRun(run({ cpl: 3, tss: rsp0, idt: idt(1 << 14) }), facts).outcome).toEqual({ level: 'L2', kind: 'handler', vector: 14, errorCode: 2, cr2: pfAt });
    // Intercepting #PF: EXITINFO1 = 2, EXITINFO2 = the push address, EXITINTINFO = the #UD being delivered.
    expect(predictRun(run({ cpl: 3, tss: rsp0, intercepts: { exceptions: 1 << 14, shutdown: true, intn: false } }), facts).outcome).toEqual({ level: 'L1', kind: 'vmexit', exitCode: 0x4e, exitInfo1: 2n, exitInfo2: pfAt, exitIntInfo: 0x8000_0306n });
    // #DF on the not-present IST 1: triple fault, the SHUTDOWN exit.
    expect(predictRun(run({ cpl: 3, tss: { ...rsp0, ist1: 'not-present' }, idt: idt(1 << 8) }), facts).outcome).toMatchObject({ kind: 'vmexit', exitCode: 0x7f });
    // At CPL 0 an IST-1 gate takes IST 1; L2's own RSP not present faults an IST-0 gate.
    expect(predictRun(run({ tss: ist1, idt: idt(1 << 6) }), facts).outcome).toEqual({ level: 'L2', kind: 'handler', vector: 14, errorCode: 2, cr2: pfAt });
    expect(predictRun(run({ rsp: 'not-present', idt: idt(1 << 14) }), facts).outcome).toEqual({ level: 'L2', kind: 'handler', vector: 14, errorCode: 2, cr2: pfAt });
    expect(svmRunOp(run({ rsp: 'not-present', tss: { rsp0: 'not-present', ist1: 'not-present', limitCut: false } }))).toMatchObject({ stack: 8 | 16 | 32 });
    // L2 at CPL 3 has its own stack: `rsp` applies at CPL 0 only.
    expect(svmRunOp(run({ cpl: 3, rsp: 'not-present' }))).toMatchObject({ stack: 0 });
  });

  it('never puts code that pushes before it raises on a not-present RSP', () => {
    fc.assert(fc.property(svmCaseArb(), (c) => c.runs.every((r) => r.rsp === undefined || (r.cpl === 0 && !(r.event.kind === 'instruction' && ['single-step', 'sse-unmasked', 'fwait-unmasked-x87'].includes(r.event.step.instruction))))), { numRuns: 300 });
  });

  it('a run with no event ends at the VMMCALL after the 16 bytes', () => {
    expect(predictRun(run({ event: { kind: 'instruction', step: { instruction: 'mov-from-cr-unprivileged' } } }), facts)).toMatchObject({ outcome: null, ripOffset: 16 });
  });
});

describe("KVM's nested_exceptions_test as L2 runs", () => {
  it('predicts what KVM asserts: #SS exit, #GP(0x62) with the #SS in EXITINTINFO, #DF(0), SHUTDOWN', () => {
    const outs = KVM_NESTED_EXCEPTIONS_CASE.runs.map((r) => predictRun(r, facts).outcome);
    expect(outs).toEqual([
      { level: 'L1', kind: 'vmexit', exitCode: 0x4c, exitInfo1: 0n, exitInfo2: null, exitIntInfo: 0n },
      { level: 'L1', kind: 'vmexit', exitCode: 0x4d, exitInfo1: 0x62n, exitInfo2: null, exitIntInfo: 0xdeadbeef_80000b0cn },
      { level: 'L1', kind: 'vmexit', exitCode: 0x48, exitInfo1: 0n, exitInfo2: null, exitIntInfo: 0n },
      { level: 'L1', kind: 'vmexit', exitCode: 0x7f, exitInfo1: null, exitInfo2: null, exitIntInfo: null },
    ]);
  });
});

describe('observedOf', () => {
  const rec = (fields: Partial<Record<string, bigint>>, faultVector: number | null = null) =>
    ({
      opcode: 0x50, opIndex: 0, faultVector, flags: 0, errorCode: 0,
      fields: { exitCode: 0n, exitInfo1: 0n, exitInfo2: 0n, exitIntInfo: 0n, exitRip: 0n, codeBase: 0x1000n, entries: 0n, vector: 0n, errorCode: 0n, hasErrorCode: 0n, handlerRip: 0n, handlerCr2: 0n, ...fields },
    }) as unknown as Parameters<typeof observedOf>[0];
  it('reads a VMMCALL exit with an entry as a handler, without as no event, an L1 fault and both INVALID encodings as such', () => {
    expect(observedOf(rec({ exitCode: 0x81n, entries: 1n, vector: 13n, errorCode: 0x62n, hasErrorCode: 1n }))).toMatchObject({ kind: 'handler', vector: 13, errorCode: 0x62 });
    expect(observedOf(rec({ exitCode: 0x81n, entries: 1n, vector: 6n }))).toMatchObject({ kind: 'handler', vector: 6, errorCode: null });
    expect(observedOf(rec({ exitCode: 0x81n, exitRip: 0x1010n }))).toEqual({ kind: 'none', exitRip: 0x1010n });
    expect(observedOf(rec({}, 13))).toMatchObject({ kind: 'l1-fault', vector: 13 });
    expect(observedOf(rec({ exitCode: 0xffff_ffffn }))).toEqual({ kind: 'invalid' });
    expect(observedOf(rec({ exitCode: 0xffff_ffff_ffff_ffffn }))).toEqual({ kind: 'invalid' });
    expect(observedOf(rec({ exitCode: 0x4dn, exitInfo1: 0x62n }))).toMatchObject({ kind: 'vmexit', exitCode: 0x4d, exitInfo1: 0x62n });
  });
});
