import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VECTORS } from './classes.js';
import { GOOD_GATE, OK_STACK, PF_U, PF_W, goodIdt, stackPageFault, type DeliverySetup, type GateSetup, type IdtSetup, type RaisedEvent } from './exceptions.js';
import {
  APM_SVM,
  KVM_NESTED_EXCEPTIONS_SEQUENCE,
  KVM_SVM_UNCONDITIONAL_SHUTDOWN_EXIT,
  KVM_TEST_L2,
  KVM_TEST_SS_EVENTINJ,
  SVM_EXIT,
  SVM_L1,
  decodeEventInj,
  deliverNested,
  encodeEventInj,
  interceptBits,
  type EventInj,
  type NestedCase,
  type SvmIntercepts,
  type SvmSwitches,
} from './svm.js';

const gate = (g: Partial<GateSetup>): GateSetup => ({ ...GOOD_GATE, ...g });
const l2 = (idt: IdtSetup, cpl: 0 | 3 = 0): DeliverySetup => ({ idt, cpl });
const none: SvmIntercepts = { exceptions: 0, shutdown: true };
const raisedIn = (setup: DeliverySetup, intercepts: SvmIntercepts, raised: RaisedEvent): NestedCase => ({ l2: setup, intercepts, event: { kind: 'raised', raised } });
const injectedIn = (setup: DeliverySetup, intercepts: SvmIntercepts, eventInj: EventInj): NestedCase => ({ l2: setup, intercepts, event: { kind: 'eventinj', eventInj } });
const out = (c: NestedCase, sw: SvmSwitches = APM_SVM) => deliverNested(c, sw).outcomes;
const vmexit = (exitCode: number, exitInfo1: bigint | null, exitIntInfo: bigint | null, exitInfo2: bigint | null = null) => [{ level: 'L1', kind: 'vmexit', exitCode, exitInfo1, exitInfo2, exitIntInfo }];
const l2Handler = (vector: number, errorCode: number | null, cr2?: bigint) => [{ level: 'L2', kind: 'handler', vector, errorCode, ...(cr2 === undefined ? {} : { cr2 }) }];

const ud: RaisedEvent = { vector: 6, source: 'instruction' };
const UD_INFO = 0x8000_0306n; // V | TYPE 3 | vector 6
const DF_INFO = 0x8000_0b08n; // V | EV | TYPE 3 | vector 8, error code 0

describe("KVM's nested_exceptions_test (SVM)", () => {
  it.each(KVM_NESTED_EXCEPTIONS_SEQUENCE.map((x) => [x.name, x] as const))('%s', (_, x) => {
    const o = out(x.case);
    expect(o).toEqual(x.expected);
    expect(o[0]).toMatchObject({ kind: 'vmexit', exitCode: x.kvmAsserts.exitCode, ...(x.kvmAsserts.exitInfo1 === undefined ? {} : { exitInfo1: x.kvmAsserts.exitInfo1 }) });
  });

  it('the exits KVM asserts: #SS 0xdeadbeef, #GP 0x62, #DF 0, SHUTDOWN', () => {
    expect(KVM_NESTED_EXCEPTIONS_SEQUENCE.map((x) => x.kvmAsserts)).toEqual([
      { exitCode: 0x4c, exitInfo1: 0xdeadbeefn },
      { exitCode: 0x4d, exitInfo1: 0x62n },
      { exitCode: 0x48, exitInfo1: 0n },
      { exitCode: 0x7f },
    ]);
  });

  it('a #SS injected by L0 (KVM_SET_VCPU_EVENTS injected) is the same as EVENTINJ', () => {
    for (const x of KVM_NESTED_EXCEPTIONS_SEQUENCE.slice(1)) {
      expect(out(raisedIn(x.case.l2, x.case.intercepts, { vector: 12, errorCode: 0xdeadbeef, source: 'injected' }))).toEqual(x.expected);
    }
  });

  it('on Intel rules the #GP would carry EXT (0x63)', () => {
    const intel: SvmSwitches = { ...APM_SVM, exceptions: { ...APM_SVM.exceptions, ext: 'sdm' } };
    expect(out(KVM_NESTED_EXCEPTIONS_SEQUENCE[1]!.case, intel)[0]).toMatchObject({ exitInfo1: 0x63n });
  });

  it('the chain explains the #DF run', () => {
    const chain = deliverNested(KVM_NESTED_EXCEPTIONS_SEQUENCE[2]!.case).chain;
    expect(chain.map((c) => c.rule)).toEqual(['raised', 'idt-limit', 'double-fault', 'intercepted']);
    expect(chain.at(-1)!.summary).toMatch(/#VMEXIT\(0x48\)/);
  });
});

describe('EVENTINJ / EXITINTINFO encoding', () => {
  it('vector 7:0, TYPE 10:8, EV 11, V 31, error code 63:32', () => {
    expect(encodeEventInj(KVM_TEST_SS_EVENTINJ)).toBe(0xdeadbeef_8000_0b0cn);
    expect(encodeEventInj({ vector: 0x30, type: 'ext-intr', errorCodeValid: false, errorCode: 0 })).toBe(0x8000_0030n);
    expect(encodeEventInj({ vector: 2, type: 'nmi', errorCodeValid: false, errorCode: 0 })).toBe(0x8000_0202n);
    expect(encodeEventInj({ vector: 0x80, type: 'soft-int', errorCodeValid: false, errorCode: 0 })).toBe(0x8000_0480n);
    expect(decodeEventInj(0n)).toBeNull();
  });
  it('decodes what it encodes', () => {
    const inj = fc.record({
      vector: fc.integer({ min: 0, max: 255 }),
      type: fc.constantFrom('ext-intr', 'nmi', 'exception', 'soft-int'),
      errorCodeValid: fc.boolean(),
      errorCode: fc.integer({ min: 0, max: 0xffff_ffff }),
    }) as fc.Arbitrary<EventInj>;
    fc.assert(
      fc.property(inj, (e) => {
        expect(decodeEventInj(encodeEventInj(e))).toEqual(e);
      }),
      { numRuns: 200 },
    );
  });
});

describe('exception intercepts', () => {
  it('an intercepted exception exits with 40h + vector and the error code, and skips L2’s IDT', () => {
    const s = l2(goodIdt());
    expect(out(raisedIn(s, { exceptions: interceptBits(13), shutdown: true }, { vector: 13, errorCode: 0x18, source: 'instruction' }))).toEqual(vmexit(0x4d, 0x18n, 0n));
    expect(out(raisedIn(s, { exceptions: interceptBits(6), shutdown: true }, ud))).toEqual(vmexit(0x46, null, 0n));
    // Even with L2's #UD gate broken, nothing of L2's IDT is consulted.
    expect(out(raisedIn(l2({ limit: 0, gates: {}, stack: OK_STACK }), { exceptions: interceptBits(6), shutdown: true }, ud))).toEqual(vmexit(0x46, null, 0n));
  });

  it('#PF: EXITINFO1 = error code, EXITINFO2 = the fault address', () => {
    const pf: RaisedEvent = { vector: 14, errorCode: PF_W | PF_U, cr2: 0x7fff_0000n, source: 'instruction' };
    expect(out(raisedIn(l2(goodIdt()), { exceptions: interceptBits(14), shutdown: true }, pf))).toEqual(vmexit(0x4e, BigInt(PF_W | PF_U), 0n, 0x7fff_0000n));
    expect(out(raisedIn(l2(goodIdt()), none, pf))).toEqual(l2Handler(14, PF_W | PF_U, 0x7fff_0000n));
  });

  it('EXITINTINFO holds the event being delivered, and only then', () => {
    const npFor6 = l2(goodIdt({ 6: gate({ present: false }) }));
    // #UD's delivery raises #NP, which L1 intercepts: EXITINTINFO = #UD.
    expect(out(raisedIn(npFor6, { exceptions: interceptBits(11), shutdown: true }, ud))).toEqual(vmexit(0x4b, 0x32n, UD_INFO));
    // A #PF while pushing #UD's frame: EXITINFO2 the stack address, EXITINTINFO = #UD.
    const pfStack = l2({ ...goodIdt({ 6: gate({ ist: 1 }) }), istStacks: { 1: stackPageFault(0x5000n) } });
    expect(out(raisedIn(pfStack, { exceptions: interceptBits(14), shutdown: true }, ud))).toEqual(vmexit(0x4e, BigInt(PF_W), UD_INFO, 0x5000n));
    // Delivering an NMI or INTR: EXITINTINFO TYPE 2 or 0, and the #NP's EXT is set.
    const npFor40 = l2(goodIdt({ 2: gate({ present: false }), 0x40: gate({ present: false }) }));
    expect(out(raisedIn(npFor40, { exceptions: interceptBits(11), shutdown: true }, { vector: 2, source: 'nmi' }))).toEqual(vmexit(0x4b, 0x13n, 0x8000_0202n));
    expect(out(raisedIn(npFor40, { exceptions: interceptBits(11), shutdown: true }, { vector: 0x40, source: 'external' }))).toEqual(vmexit(0x4b, 0x203n, 0x8000_0040n));
  });

  it('#DF made by the rule: EXITINFO1 0; EXITINTINFO per doubleFaultExitIntInfo', () => {
    const c = raisedIn(l2(goodIdt({ 0: gate({ present: false }) })), { exceptions: interceptBits(8), shutdown: true }, { vector: 0, source: 'instruction' });
    expect(out(c)).toEqual(vmexit(0x48, 0n, 0n));
    expect(out(c, { ...APM_SVM, doubleFaultExitIntInfo: 'replaced-event' })).toEqual(vmexit(0x48, 0n, 0x8000_0300n));
  });

  it('a fault while delivering #DF that L1 intercepts: intercept first, or shutdown first', () => {
    const c = raisedIn(l2(goodIdt({ 0: gate({ present: false }), 8: gate({ present: false }) })), { exceptions: interceptBits(11), shutdown: true }, { vector: 0, source: 'instruction' });
    // #DE's #NP is intercepted first of all; take a #DE whose delivery raises #GP instead.
    const c2 = raisedIn(l2(goodIdt({ 0: gate({ type: 'invalid' }), 8: gate({ present: false }) })), { exceptions: interceptBits(11), shutdown: true }, { vector: 0, source: 'instruction' });
    expect(out(c)).toEqual(vmexit(0x4b, 0x2n, 0x8000_0300n));
    expect(out(c2)).toEqual(vmexit(0x4b, 0x42n, DF_INFO));
    expect(out(c2, { ...APM_SVM, faultDuringDoubleFault: 'shutdown-first' })).toEqual(vmexit(0x7f, null, null));
  });
});

describe('triple fault in L2', () => {
  const empty = l2({ limit: 0, gates: {}, stack: OK_STACK });
  it('SHUTDOWN intercepted: #VMEXIT(7Fh)', () => {
    expect(out(raisedIn(empty, { exceptions: 0, shutdown: true }, ud))).toEqual(vmexit(SVM_EXIT.SHUTDOWN, null, null));
  });
  it('not intercepted: L1 shuts down (APM, KVM now), or a #VMEXIT anyway (KVM before the fix)', () => {
    const c = raisedIn(empty, { exceptions: 0, shutdown: false }, ud);
    expect(out(c)).toEqual([{ level: 'L1', kind: 'shutdown' }]);
    expect(deliverNested(c).chain.at(-1)!.rule).toBe('shutdown-not-intercepted');
    expect(out(c, KVM_SVM_UNCONDITIONAL_SHUTDOWN_EXIT)).toEqual(vmexit(0x7f, null, null));
  });
});

describe('interrupt intercepts and injected events', () => {
  const s = l2(goodIdt({}, gate({ dpl: 3 })), 3);
  it('NMI, INTR, INT n and INT3 exits', () => {
    expect(out(raisedIn(s, { ...none, nmi: true }, { vector: 2, source: 'nmi' }))).toEqual(vmexit(0x61, null, 0n));
    expect(out(raisedIn(s, { ...none, intr: true }, { vector: 0x30, source: 'external' }))).toEqual(vmexit(0x60, null, 0n));
    expect(out(raisedIn(s, { ...none, intn: true }, { vector: 0x80, source: 'software-int' }))).toEqual(vmexit(0x75, null, 0n));
    expect(out(raisedIn(s, { ...none, intn: true }, { vector: 3, source: 'software-int', via: 'int3' }))).toEqual(l2Handler(3, null));
    expect(out(raisedIn(s, { ...none, exceptions: interceptBits(3) }, { vector: 3, source: 'software-int', via: 'int3' }))).toEqual(vmexit(0x43, null, 0n));
    expect(out(raisedIn(s, { ...none, exceptions: interceptBits(0x80 & 31) }, { vector: 0x80, source: 'software-int' }))).toEqual(l2Handler(0x80, null));
  });
  it('injected events skip the intercepts for themselves', () => {
    const all: SvmIntercepts = { exceptions: 0xffff_ffff, shutdown: true, nmi: true, intr: true, intn: true };
    expect(out(injectedIn(s, all, { vector: 0x30, type: 'ext-intr', errorCodeValid: false, errorCode: 0 }))).toEqual(l2Handler(0x30, null));
    expect(out(injectedIn(s, all, { vector: 2, type: 'nmi', errorCodeValid: false, errorCode: 0 }))).toEqual(l2Handler(2, null));
    expect(out(injectedIn(s, all, { vector: 0x80, type: 'soft-int', errorCodeValid: false, errorCode: 0 }))).toEqual(l2Handler(0x80, null));
    expect(out(injectedIn(s, all, { vector: 13, type: 'exception', errorCodeValid: true, errorCode: 0x10 }))).toEqual(l2Handler(13, 0x10));
  });
  it('an injected soft interrupt is DPL-checked; its #GP is intercepted with EXITINTINFO TYPE 4', () => {
    const dpl0 = l2(goodIdt(), 3);
    const inj: EventInj = { vector: 0x80, type: 'soft-int', errorCodeValid: false, errorCode: 0 };
    expect(out(injectedIn(dpl0, { ...none, exceptions: interceptBits(13) }, inj))).toEqual(vmexit(0x4d, 0x402n, 0x8000_0480n));
    expect(out(injectedIn(dpl0, none, inj))).toEqual(l2Handler(13, 0x402));
  });
  it('an injected soft interrupt is benign: a contributory fault delivering it is handled serially, not #DF', () => {
    const np13 = l2(goodIdt({ 13: gate({ present: false }) }));
    expect(out(injectedIn(np13, none, { vector: 13, type: 'soft-int', errorCodeValid: false, errorCode: 0 }))).toEqual(l2Handler(11, 0x6a));
    expect(out(injectedIn(np13, none, { vector: 13, type: 'exception', errorCodeValid: true, errorCode: 0 }))).toEqual(l2Handler(8, 0));
  });
});

describe('intercept routing, every vector', () => {
  const exceptionArb = fc.constantFrom(...VECTORS.filter((v) => v.vector !== 2)).map(
    (v): RaisedEvent => ({ vector: v.vector, source: 'instruction', ...(v.pushesErrorCode ? { errorCode: 0x20 } : {}), ...(v.vector === 14 ? { cr2: 0x1000n } : {}) }),
  );
  const maskArb = fc.integer({ min: 0, max: 0xffff_ffff });

  it('each vector: bit set → #VMEXIT(40h + vector), bit clear with a good IDT → L2 handler', () => {
    for (const v of VECTORS.filter((x) => x.vector !== 2)) {
      const e: RaisedEvent = { vector: v.vector, source: 'instruction', ...(v.pushesErrorCode ? { errorCode: 0x20 } : {}) };
      expect(out(raisedIn(l2(goodIdt()), { exceptions: interceptBits(v.vector), shutdown: true }, e))[0], v.mnemonic).toMatchObject({ kind: 'vmexit', exitCode: 0x40 + v.vector });
      expect(out(raisedIn(l2(goodIdt()), { exceptions: ~interceptBits(v.vector) >>> 0, shutdown: true }, e)), v.mnemonic).toEqual(l2Handler(v.vector, v.pushesErrorCode ? 0x20 : null));
    }
  });

  it('property: an intercepted vector never enters an L2 handler; a non-intercepted one with a good IDT always does', () => {
    fc.assert(
      fc.property(exceptionArb, maskArb, (e, mask) => {
        const [o] = out(raisedIn(l2(goodIdt()), { exceptions: mask, shutdown: true }, e));
        if ((mask >>> e.vector) & 1) expect(o).toMatchObject({ level: 'L1', kind: 'vmexit', exitCode: 0x40 + e.vector, exitIntInfo: 0n });
        else expect(o).toEqual(l2Handler(e.vector, e.errorCode ?? null, e.cr2)[0]);
      }),
      { numRuns: 300 },
    );
  });

  it('property: through any IDT, no L2 handler entry is for an intercepted exception vector, and EXITINTINFO is valid only after a delivery fault', () => {
    const gateArb = fc.record({ present: fc.boolean(), type: fc.constantFrom('interrupt', 'invalid'), dpl: fc.constant(0), target: fc.constantFrom('ok', 'ok', 'cs-not-present'), ist: fc.constant(0) }) as fc.Arbitrary<GateSetup>;
    const idtArb = fc.record({
      limit: fc.oneof(fc.constant(0xfff), fc.integer({ min: 0, max: 0x1ff })),
      gates: fc.dictionary(fc.integer({ min: 0, max: 31 }).map(String), gateArb, { maxKeys: 10 }).map((d) => ({ ...goodIdt().gates, ...d })),
      stack: fc.constantFrom(OK_STACK, OK_STACK, { kind: 'ss' } as const),
    }) as fc.Arbitrary<IdtSetup>;
    fc.assert(
      fc.property(exceptionArb, maskArb, idtArb, (e, mask, idt) => {
        const r = deliverNested(raisedIn(l2(idt), { exceptions: mask, shutdown: true }, e));
        const [o] = r.outcomes;
        if (o!.kind === 'handler') expect((mask >>> o!.vector) & 1).toBe(0);
        if (o!.kind === 'vmexit' && o!.exitCode < 0x60) {
          const faultedFirst = r.chain.length > 2 && r.chain[r.chain.length - 2]!.rule !== 'double-fault';
          expect(o!.exitIntInfo !== 0n).toBe(faultedFirst);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('the KVM test L2', () => {
  it('is an empty IDT at CPL 0', () => {
    expect(KVM_TEST_L2).toEqual({ idt: { limit: 0, gates: {}, stack: OK_STACK }, cpl: 0 });
  });
});

describe('SVM as the L1 backend (l1.ts)', () => {
  it('names itself, takes what the intercept bits say, and exits on a triple fault only with SHUTDOWN', () => {
    expect(SVM_L1.name).toBe('svm');
    const ud = { vector: 6, errorCode: null, kind: 'exception', injected: false } as const;
    expect(SVM_L1.intercepted(ud, { exceptions: interceptBits(6), shutdown: false })).toBe(true);
    expect(SVM_L1.intercepted(ud, { exceptions: interceptBits(13), shutdown: false })).toBe(false);
    expect([SVM_L1.tripleFault({ exceptions: 0, shutdown: true })]).toEqual(vmexit(0x7f, null, null));
    expect(SVM_L1.tripleFault({ exceptions: 0, shutdown: false })).toBeNull();
    expect([SVM_L1.exitFor({ kind: 'intercepted', event: ud, delivering: null }, APM_SVM)]).toEqual(vmexit(0x46, null, 0n));
  });
});
