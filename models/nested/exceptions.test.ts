import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VECTORS } from './classes.js';
import {
  APM_EXCEPTIONS,
  FAULTING_INSTRUCTIONS,
  GOOD_GATE,
  OK_STACK,
  PF_I,
  PF_P,
  PF_RSVD,
  PF_U,
  PF_W,
  SDM_EXCEPTIONS,
  deliver,
  deliverAll,
  goodIdt,
  raisedBy,
  stackPageFault,
  type DeliverySetup,
  type ExceptionSwitches,
  type GateSetup,
  type IdtSetup,
  type RaisedEvent,
  type StackSetup,
} from './exceptions.js';

const setup = (idt: IdtSetup, cpl: 0 | 1 | 2 | 3 = 0): DeliverySetup => ({ idt, cpl });
const gate = (g: Partial<GateSetup>): GateSetup => ({ ...GOOD_GATE, ...g });
const outcomes = (e: RaisedEvent, s: DeliverySetup, sw: ExceptionSwitches = SDM_EXCEPTIONS) => deliver(e, s, sw).outcomes;
const rules = (e: RaisedEvent, s: DeliverySetup, sw: ExceptionSwitches = SDM_EXCEPTIONS) => deliver(e, s, sw).chain.map((c) => c.rule);
const handler = (vector: number, errorCode: number | null, cr2?: bigint) => [{ kind: 'handler', vector, errorCode, ...(cr2 === undefined ? {} : { cr2 }) }];
const SHUTDOWN = [{ kind: 'shutdown' }];

const ud: RaisedEvent = { vector: 6, source: 'instruction' };
const de: RaisedEvent = { vector: 0, source: 'instruction' };
const gp0: RaisedEvent = { vector: 13, errorCode: 0, source: 'instruction' };
const pf = (errorCode: number, cr2: bigint): RaisedEvent => ({ vector: 14, errorCode, cr2, source: 'instruction' });
const intN = (vector: number): RaisedEvent => ({ vector, source: 'software-int' });
const int3: RaisedEvent = { vector: 3, source: 'software-int', via: 'int3' };
const nmi: RaisedEvent = { vector: 2, source: 'nmi' };
const intr = (vector: number): RaisedEvent => ({ vector, source: 'external' });
const injected = (vector: number, errorCode?: number): RaisedEvent => ({ vector, source: 'injected', ...(errorCode === undefined ? {} : { errorCode }) });

/** A good IDT whose `vector` gate uses IST 1, and IST 1 is `stack`. */
const istStack = (vectors: number[], stack: StackSetup): IdtSetup => ({
  ...goodIdt(Object.fromEntries(vectors.map((v) => [v, gate({ ist: 1 })]))),
  istStacks: { 1: stack },
});

describe('a good IDT: every event enters its own handler', () => {
  it('each exception vector, with its error code exactly when it pushes one', () => {
    const s = setup(goodIdt());
    for (const v of VECTORS) {
      const e: RaisedEvent = { vector: v.vector, source: 'instruction', ...(v.pushesErrorCode ? { errorCode: 0x10 } : {}) };
      expect(outcomes(e, s), v.mnemonic).toEqual(handler(v.vector, v.pushesErrorCode ? 0x10 : null));
    }
  });

  it('#PF carries CR2', () => {
    expect(outcomes(pf(PF_W, 0xdead_0000n), setup(goodIdt()))).toEqual(handler(14, PF_W, 0xdead_0000n));
  });

  it('INT n, INT3, NMI and INTR push no error code, whatever the vector', () => {
    const s = setup(goodIdt());
    expect(outcomes(intN(13), s)).toEqual(handler(13, null));
    expect(outcomes(int3, s)).toEqual(handler(3, null));
    expect(outcomes(nmi, s)).toEqual(handler(2, null));
    expect(outcomes(intr(0x30), s)).toEqual(handler(0x30, null));
  });

  it('an injected exception pushes the error code it was given', () => {
    expect(outcomes(injected(12, 0xdeadbeef), setup(goodIdt()))).toEqual(handler(12, 0xdeadbeef));
  });

  it('rejects events that cannot exist', () => {
    const s = setup(goodIdt());
    expect(() => deliver({ vector: 13, source: 'instruction' }, s)).toThrow(/needs error code/);
    expect(() => deliver({ vector: 6, errorCode: 0, source: 'instruction' }, s)).toThrow(/has no error code/);
    expect(() => deliver({ vector: 3, source: 'nmi' }, s)).toThrow();
    expect(() => deliver({ vector: 20, source: 'external' }, s)).toThrow();
  });
});

describe('IDT checks', () => {
  it('the limit: vector·16+15 must be within it; beyond → #GP(vector·8 | IDT | EXT)', () => {
    // #XM (19, benign) at the limit's edge; #GP (13) itself is within the limit.
    const at = (limit: number) => setup({ ...goodIdt(), limit });
    const xm: RaisedEvent = { vector: 19, source: 'instruction' };
    expect(outcomes(xm, at(19 * 16 + 15))).toEqual(handler(19, null));
    expect(outcomes(xm, at(19 * 16 + 14))).toEqual(handler(13, (19 << 3) | 2 | 1));
    expect(outcomes(xm, at(19 * 16 + 14), APM_EXCEPTIONS)).toEqual(handler(13, (19 << 3) | 2));
    // #UD beyond the limit, and #GP and #DF too: #GP, #GP again (→ #DF), then a triple fault.
    expect(rules(ud, at(6 * 16 + 14))).toEqual(['raised', 'idt-limit', 'serial', 'idt-limit', 'double-fault', 'idt-limit', 'triple-fault']);
    expect(deliver(ud, at(6 * 16 + 14)).chain.map((c) => c.errorCode)).toEqual([null, 0x33, 0x33, 0x6b, 0, 0x43, 0x43]);
    // External interrupt 0x80 with the IDT cut at 0x7ff: #GP(0x402 | EXT) enters the #GP handler.
    expect(outcomes(intr(0x80), at(0x7ff))).toEqual(handler(13, 0x403));
    expect(outcomes(intr(0x80), at(0x80f))).toEqual(handler(0x80, null));
  });

  it('an empty IDT (limit 0): every delivery faults, #DF too → shutdown', () => {
    const empty = setup({ limit: 0, gates: {}, stack: OK_STACK });
    expect(outcomes(ud, empty)).toEqual(SHUTDOWN);
    expect(rules(ud, empty)).toEqual(['raised', 'idt-limit', 'serial', 'idt-limit', 'double-fault', 'idt-limit', 'triple-fault']);
  });

  it('a gate not present → #NP(vector·8 | IDT | EXT)', () => {
    const s = setup(goodIdt({ 6: gate({ present: false }) }));
    expect(outcomes(ud, s)).toEqual(handler(11, 0x33));
    expect(outcomes(ud, s, APM_EXCEPTIONS)).toEqual(handler(11, 0x32));
  });

  it('an invalid gate type → #GP(vector·8 | IDT | EXT), before the present check', () => {
    expect(outcomes(ud, setup(goodIdt({ 6: gate({ type: 'invalid' }) })))).toEqual(handler(13, 0x33));
    expect(outcomes(ud, setup(goodIdt({ 6: gate({ type: 'invalid', present: false }) })))).toEqual(handler(13, 0x33));
    // A gate the setup leaves out is an all-zero descriptor: #GP, not #NP.
    expect(outcomes(ud, setup(goodIdt({ 6: undefined })))).toEqual(handler(13, 0x33));
  });

  it('trap gates deliver like interrupt gates', () => {
    expect(outcomes(ud, setup(goodIdt({ 6: gate({ type: 'trap' }) })))).toEqual(handler(6, null));
  });

  describe('gate DPL: checked for software interrupts only', () => {
    const dpl0 = setup(goodIdt(), 3);
    const dpl3 = setup(goodIdt({}, gate({ dpl: 3 })), 3);
    it('INT n from CPL 3 through a DPL 0 gate → #GP(vector·8 | IDT), EXT 0 under both manuals', () => {
      expect(outcomes(intN(0x80), dpl0)).toEqual(handler(13, 0x402));
      expect(outcomes(intN(0x80), dpl0, APM_EXCEPTIONS)).toEqual(handler(13, 0x402));
      expect(outcomes(int3, dpl0)).toEqual(handler(13, 0x1a));
      expect(outcomes(intN(0x80), dpl3)).toEqual(handler(0x80, null));
      expect(outcomes(intN(0x80), setup(goodIdt({ 0x80: gate({ dpl: 3 }) }), 3))).toEqual(handler(0x80, null));
      expect(outcomes(intN(0x80), setup(goodIdt(), 0))).toEqual(handler(0x80, null));
    });
    it('exceptions, NMIs and external interrupts ignore the DPL', () => {
      for (const e of [ud, gp0, nmi, intr(0x40), pf(PF_U, 0x1000n)]) expect(outcomes(e, dpl0)[0]).toMatchObject({ kind: 'handler', vector: e.vector });
    });
    it('the DPL check comes before the present check', () => {
      expect(outcomes(intN(0x80), setup(goodIdt({ 0x80: gate({ present: false }) }), 3))).toEqual(handler(13, 0x402));
      expect(outcomes(intN(0x80), setup(goodIdt({ 0x80: gate({ present: false, dpl: 3 }) }, gate({ dpl: 3 })), 3))).toEqual(handler(11, 0x402));
    });
    it('an injected #BP: a hardware exception (SDM) or INT3-like (APM §15.20)', () => {
      expect(outcomes(injected(3), dpl0, SDM_EXCEPTIONS)).toEqual(handler(3, null));
      expect(outcomes(injected(3), dpl0, APM_EXCEPTIONS)).toEqual(handler(13, 0x1a));
      expect(outcomes(injected(4), dpl0, APM_EXCEPTIONS)).toEqual(handler(13, 0x22));
    });
  });

  it('the code segment and the handler address', () => {
    const withTarget = (target: GateSetup['target']) => setup(goodIdt({ 6: gate({ target, csSelector: 0x33 }) }));
    expect(outcomes(ud, withTarget('null-cs'))).toEqual(handler(13, 1));
    expect(outcomes(ud, withTarget('bad-cs'))).toEqual(handler(13, 0x31));
    expect(outcomes(ud, withTarget('cs-not-present'))).toEqual(handler(11, 0x31));
    expect(outcomes(ud, withTarget('non-canonical-rip'))).toEqual(handler(13, 1));
    expect(outcomes(ud, withTarget('non-canonical-rip'), APM_EXCEPTIONS)).toEqual(handler(13, 0));
  });
});

describe('stack faults while pushing the frame', () => {
  it('a non-canonical stack → #SS(EXT)', () => {
    expect(outcomes(ud, setup(istStack([6], { kind: 'ss' })))).toEqual(handler(12, 1));
  });
  it('a TSS slot beyond the TSS limit → #TS(TSS selector | EXT)', () => {
    expect(outcomes(ud, setup(istStack([6], { kind: 'ts', tssSelector: 0x28 })))).toEqual(handler(10, 0x29));
  });
  it('an unmapped stack page → #PF (supervisor write), CR2 = the address', () => {
    expect(outcomes(ud, setup(istStack([6], stackPageFault(0x7000n))))).toEqual(handler(14, PF_W, 0x7000n));
    expect(outcomes(ud, setup(istStack([6], stackPageFault(0x7000n, true))))).toEqual(handler(14, PF_W | PF_P, 0x7000n));
  });
  it('a bad stack for every gate: the fault recurs, #DF on a good IST stack', () => {
    const bad = (stack: StackSetup): IdtSetup => ({ ...goodIdt({ 8: gate({ ist: 1 }) }), stack, istStacks: { 1: OK_STACK } });
    expect(outcomes(ud, setup(bad({ kind: 'ss' })))).toEqual(handler(8, 0));
    expect(outcomes(ud, setup(bad(stackPageFault(0x7000n))))).toEqual(handler(8, 0));
    // Without the IST the #DF's own push faults: shutdown.
    expect(outcomes(ud, setup({ ...goodIdt(), stack: { kind: 'ss' } }))).toEqual(SHUTDOWN);
  });
});

describe('EXT (error code bit 0)', () => {
  // The event at vector 0x40 (or 6 for exceptions) meets a not-present gate; EXT of the #NP.
  const cases: [string, RaisedEvent, number, number][] = [
    // name, event, EXT under SDM, EXT under APM
    ['a raised exception', { vector: 0x06, source: 'instruction' }, 1, 0],
    ['an injected exception', injected(6), 1, 0],
    ['an NMI', { vector: 2, source: 'nmi' }, 1, 1],
    ['an external interrupt', intr(0x40), 1, 1],
    ['INT n', intN(0x40), 0, 0],
    ['INT3', int3, 0, 0],
  ];
  it.each(cases)('while delivering %s: SDM %i, APM %i', (_, e, sdm, apm) => {
    const s = setup(goodIdt({ [e.vector]: gate({ present: false }) }));
    const code = (e.vector << 3) | 2;
    expect(outcomes(e, s, SDM_EXCEPTIONS)).toEqual(handler(11, code | sdm));
    expect(outcomes(e, s, APM_EXCEPTIONS)).toEqual(handler(11, code | apm));
  });
  it('follows the event being delivered at each step', () => {
    // INTR 0x40 → #NP(EXT=1) → #NP's gate invalid → #GP while delivering #NP: SDM EXT 1, APM EXT 0; then #DF.
    const s = setup(goodIdt({ 0x40: gate({ present: false }), 11: gate({ type: 'invalid' }), 13: gate({ present: false }) }));
    const r = deliver(intr(0x40), s, APM_EXCEPTIONS).chain.map((c) => [c.rule, c.errorCode]);
    expect(r).toEqual([['raised', null], ['gate-not-present', 0x203], ['serial', 0x203], ['gate-type', 0x5a], ['double-fault', 0], ['handler-entered', 0]]);
  });
});

describe('the double-fault rule through real deliveries (Table 6-5)', () => {
  it('benign then contributory: serial', () => {
    expect(outcomes(ud, setup(goodIdt({ 6: gate({ present: false }) })))).toEqual(handler(11, 0x33));
  });
  it('benign then page fault: serial', () => {
    expect(outcomes(ud, setup(istStack([6], stackPageFault(0x9000n))))).toEqual(handler(14, PF_W, 0x9000n));
  });
  it('contributory then contributory: #DF', () => {
    expect(outcomes(de, setup(goodIdt({ 0: gate({ present: false }) })))).toEqual(handler(8, 0));
    expect(rules(de, setup(goodIdt({ 0: gate({ present: false }) })))).toEqual(['raised', 'gate-not-present', 'double-fault', 'handler-entered']);
  });
  it('contributory then page fault: serial', () => {
    expect(outcomes(gp0, setup(istStack([13], stackPageFault(0x9000n))))).toEqual(handler(14, PF_W, 0x9000n));
  });
  it('page fault then contributory: #DF', () => {
    expect(outcomes(pf(0, 0x1234n), setup(goodIdt({ 14: gate({ present: false }) })))).toEqual(handler(8, 0));
  });
  it('page fault then page fault: #DF', () => {
    expect(outcomes(pf(0, 0x1234n), setup(istStack([14], stackPageFault(0x9000n))))).toEqual(handler(8, 0));
  });
  it('contributory then #PF serially, whose delivery fault is then #DF', () => {
    // #GP's IST stack faults → #PF (serial); #PF's gate not present → #NP: page fault × contributory → #DF.
    expect(outcomes(gp0, setup({ ...istStack([13], stackPageFault(0x9000n)), gates: { ...goodIdt().gates, 13: gate({ ist: 1 }), 14: gate({ present: false }) } }))).toEqual(handler(8, 0));
  });
  it('a fault while delivering #DF: shutdown (triple fault)', () => {
    const s = setup(goodIdt({ 0: gate({ present: false }), 8: gate({ present: false }) }));
    expect(outcomes(de, s)).toEqual(SHUTDOWN);
    expect(rules(de, s)).toEqual(['raised', 'gate-not-present', 'double-fault', 'gate-not-present', 'triple-fault']);
  });
  it('INT n is benign whatever its vector (softwareInterruptClass)', () => {
    const s = setup(goodIdt({ 13: gate({ present: false }) }));
    expect(outcomes(intN(13), s)).toEqual(handler(11, 0x6a));
    expect(outcomes(intN(13), s, { ...SDM_EXCEPTIONS, softwareInterruptClass: 'by-vector' })).toEqual(handler(8, 0));
  });
  it('#VE is a page fault on Intel, benign on AMD', () => {
    const ve: RaisedEvent = { vector: 20, source: 'instruction' };
    const s = setup(goodIdt({ 20: gate({ present: false }) }));
    expect(outcomes(ve, s, SDM_EXCEPTIONS)).toEqual(handler(8, 0));
    expect(outcomes(ve, s, APM_EXCEPTIONS)).toEqual(handler(11, 0xa2));
  });
  it('every step cites its rule', () => {
    const chain = deliver(de, setup(goodIdt({ 0: gate({ present: false }), 8: gate({ present: false }) }))).chain;
    expect(chain.every((c) => c.citation.length > 10 && c.summary.length > 0)).toBe(true);
    expect(chain.find((c) => c.rule === 'double-fault')?.citation).toMatch(/Table 6-5/);
  });
});

describe('deliverAll', () => {
  it('one outcome per event, nothing after a shutdown', () => {
    const s = setup(goodIdt({ 0: gate({ present: false }), 8: gate({ present: false }) }));
    expect(deliverAll([ud, int3, de, ud], s).outcomes).toEqual([...handler(6, null), ...handler(3, null), ...SHUTDOWN]);
  });
});

describe('FAULTING_INSTRUCTIONS', () => {
  const cpl0 = { cpl: 0 } as const;
  it('#DE, #UD; BOUND and INTO are #UD in 64-bit mode', () => {
    expect(raisedBy('div-by-zero', cpl0)).toEqual({ vector: 0, source: 'instruction' });
    expect(['ud2', 'bound-64', 'into-64'].map((n) => raisedBy(n as 'ud2', cpl0)?.vector)).toEqual([6, 6, 6]);
  });
  it('INT3 and INT n are software interrupts', () => {
    expect(raisedBy('int3', cpl0)).toEqual(int3);
    expect(raisedBy('int-n', { cpl: 3, intVector: 0x80 })).toEqual({ vector: 0x80, source: 'software-int', via: 'int-n' });
    expect(() => raisedBy('int-n', cpl0)).toThrow();
  });
  it('#AC needs CR0.AM, RFLAGS.AC and CPL 3', () => {
    const ac = (cpl: 0 | 3, am: boolean, acFlag: boolean, sw?: ExceptionSwitches) => raisedBy('misaligned-load', { cpl, cr0: { am }, rflags: { ac: acFlag } }, sw);
    expect(ac(3, true, true)).toEqual({ vector: 17, errorCode: 0, source: 'instruction' });
    expect([ac(3, false, true), ac(3, true, false), ac(0, true, true)]).toEqual([null, null, null]);
    expect(ac(3, false, true, { ...SDM_EXCEPTIONS, alignmentCheck: 'rflags-ac-only' })?.vector).toBe(17);
  });
  it('#NM with CR0.TS; #MF with CR0.NE; #XM with CR4.OSXMMEXCPT, else #UD', () => {
    expect(raisedBy('x87-with-ts', { cpl: 0, cr0: { ts: true } })?.vector).toBe(7);
    expect(raisedBy('x87-with-ts', cpl0)).toBeNull();
    expect(raisedBy('fwait-unmasked-x87', { cpl: 0, cr0: { ne: true } })?.vector).toBe(16);
    expect(raisedBy('fwait-unmasked-x87', { cpl: 0, cr0: { ne: true, mp: true, ts: true } })?.vector).toBe(7);
    // Its first instruction is FNINIT, an x87 instruction: #NM with CR0.TS whatever CR0.MP.
    expect(raisedBy('fwait-unmasked-x87', { cpl: 3, cr0: { ne: true, ts: true } })?.vector).toBe(7);
    expect(raisedBy('fwait-unmasked-x87', { cpl: 3, cr0: { ne: true } })).toEqual({ vector: 16, source: 'instruction' });
    expect(() => raisedBy('fwait-unmasked-x87', cpl0)).toThrow(/FERR/);
    expect(raisedBy('sse-unmasked', { cpl: 0, cr4: { osxmmexcpt: true } })?.vector).toBe(19);
    expect(raisedBy('sse-unmasked', cpl0)?.vector).toBe(6);
  });
  it('#GP(0) and #SS(0) from non-canonical accesses, #GP(0) from HLT at CPL 3, #DB on single-step', () => {
    expect(raisedBy('load-non-canonical', cpl0)).toEqual(gp0);
    expect(raisedBy('stack-load-non-canonical', cpl0)).toEqual({ vector: 12, errorCode: 0, source: 'instruction' });
    expect(raisedBy('hlt-unprivileged', { cpl: 3 })).toEqual(gp0);
    expect(raisedBy('hlt-unprivileged', cpl0)).toBeNull();
    expect(raisedBy('single-step', { cpl: 0, rflags: { tf: true } })?.vector).toBe(1);
  });
  it('#PF error codes (P/W/U/RSVD/I) and CR2', () => {
    const a = 0x4000_1000n;
    const code = (name: keyof typeof FAULTING_INSTRUCTIONS, cpl: 0 | 3) => raisedBy(name, { cpl, address: a });
    expect(code('load-unmapped', 0)).toEqual(pf(0, a));
    expect(code('load-unmapped', 3)).toEqual(pf(PF_U, a));
    expect(code('store-unmapped', 0)).toEqual(pf(PF_W, a));
    expect(code('store-read-only', 3)).toEqual(pf(PF_P | PF_W | PF_U, a));
    expect(code('fetch-no-execute', 0)).toEqual(pf(PF_P | PF_I, a));
    expect(code('load-reserved-bit', 0)).toEqual(pf(PF_P | PF_RSVD, a));
    expect(code('user-load-supervisor-page', 3)).toEqual(pf(PF_P | PF_U, a));
    expect(code('user-load-supervisor-page', 0)).toBeNull();
    expect(() => raisedBy('load-unmapped', cpl0)).toThrow(/address/);
    // ... and the handler sees them.
    expect(outcomes(code('store-read-only', 3)!, setup(goodIdt(), 3))).toEqual(handler(14, PF_P | PF_W | PF_U, a));
  });
  it('every entry raises a deliverable event', () => {
    const ctx = { cpl: 3, address: 0x1000n, intVector: 0x80, cr0: { am: true, ts: true, ne: true }, rflags: { ac: true, tf: true } } as const;
    for (const name of Object.keys(FAULTING_INSTRUCTIONS) as (keyof typeof FAULTING_INSTRUCTIONS)[]) {
      const e = raisedBy(name, ctx);
      if (e) expect(deliver(e, setup(goodIdt({}, gate({ dpl: 3 })), 3)).outcomes[0], name).toMatchObject({ kind: 'handler', vector: e.vector });
    }
  });
});

describe('properties over random IDTs', () => {
  const gateArb: fc.Arbitrary<GateSetup> = fc.record({
    present: fc.boolean(),
    type: fc.constantFrom('interrupt', 'trap', 'invalid'),
    dpl: fc.constantFrom(0, 3),
    target: fc.constantFrom('ok', 'ok', 'ok', 'null-cs', 'bad-cs', 'cs-not-present', 'non-canonical-rip'),
    ist: fc.constantFrom(0, 0, 1),
  }) as fc.Arbitrary<GateSetup>;
  const stackArb: fc.Arbitrary<StackSetup> = fc.oneof(fc.constant(OK_STACK), fc.constant(OK_STACK), fc.constant({ kind: 'ss' } as const), fc.constant(stackPageFault(0x8000n)));
  const idtArb: fc.Arbitrary<IdtSetup> = fc.record({
    limit: fc.oneof(fc.constant(0xfff), fc.integer({ min: 0, max: 0xfff })),
    gates: fc.dictionary(fc.integer({ min: 0, max: 40 }).map(String), gateArb, { maxKeys: 12 }).map((d) => ({ ...goodIdt().gates, ...d })),
    stack: stackArb,
    istStacks: fc.record({ 1: stackArb }),
  });
  const eventArb: fc.Arbitrary<RaisedEvent> = fc.oneof(
    fc.constantFrom(...VECTORS.filter((v) => v.vector !== 2)).map((v): RaisedEvent => ({ vector: v.vector, source: 'instruction', ...(v.pushesErrorCode ? { errorCode: 0 } : {}) })),
    fc.integer({ min: 0, max: 40 }).map(intN),
    fc.constant(nmi),
    fc.integer({ min: 32, max: 40 }).map(intr),
  );
  const goodFor = (idt: IdtSetup, vector: number) => {
    const g = idt.gates[vector];
    const stack = g && g.ist ? (idt.istStacks?.[g.ist] ?? OK_STACK) : idt.stack;
    return vector * 16 + 15 <= idt.limit && !!g && g.present && g.type !== 'invalid' && g.target === 'ok' && stack.kind === 'ok';
  };

  it('a handler is entered only through a usable gate; #DF always pushes 0; the chain ends', () => {
    fc.assert(
      fc.property(eventArb, idtArb, fc.constantFrom(0, 3) as fc.Arbitrary<0 | 3>, fc.constantFrom(SDM_EXCEPTIONS, APM_EXCEPTIONS), (e, idt, cpl, sw) => {
        const r = deliver(e, setup(idt, cpl), sw);
        expect(r.outcomes).toHaveLength(1);
        const o = r.outcomes[0]!;
        if (o.kind === 'handler') {
          expect(goodFor(idt, o.vector)).toBe(true);
          if (o.vector === 8 && e.vector !== 8) expect(o.errorCode).toBe(0);
        }
        expect(r.chain.length).toBeLessThan(16);
      }),
      { numRuns: 300 },
    );
  });

  it('with every gate usable (DPL 3), the event enters its own handler', () => {
    fc.assert(
      fc.property(eventArb, fc.constantFrom(0, 3) as fc.Arbitrary<0 | 3>, (e, cpl) => {
        const o = deliver(e, setup(goodIdt({}, gate({ dpl: 3 })), cpl)).outcomes;
        expect(o).toEqual(handler(e.vector, e.errorCode ?? null));
      }),
      { numRuns: 200 },
    );
  });
});

describe('a not-present stack page: the frame push raises #PF during delivery', () => {
  // The frame lies below RSP & ~0xf in one not-present page (SDM Vol. 3A §6.14.2: RSP aligned to 16).
  const NP = 0x10_0000_1008n;
  const npStack: StackSetup = { kind: 'not-present', rsp: NP };
  const onDfIst = (stack: StackSetup, extra: Record<number, GateSetup> = {}): IdtSetup => ({ ...goodIdt({ 8: gate({ ist: 1 }), ...extra }), stack, istStacks: { 1: OK_STACK } });
  it('CR2 is the first push (SS, at the aligned RSP − 8) by default; P = 0, W = 1, U = 0', () => {
    // #UD's own stack faults; #PF's gate is on a good IST: serial (benign then page fault).
    const s = setup({ ...onDfIst(npStack, { 14: gate({ ist: 2 }) }), istStacks: { 1: OK_STACK, 2: OK_STACK } }, 3);
    expect(outcomes(ud, s)).toEqual(handler(14, PF_W, 0x10_0000_0ff8n));
    expect(outcomes(gp0, s)).toEqual(handler(14, PF_W, 0x10_0000_0ff8n));
  });
  it("the 'frame-base' switch reports the frame's lowest address (40 bytes, 48 with an error code)", () => {
    const sw: ExceptionSwitches = { ...SDM_EXCEPTIONS, stackPushFault: 'frame-base' };
    const s = setup({ ...onDfIst(npStack, { 14: gate({ ist: 2 }) }), istStacks: { 1: OK_STACK, 2: OK_STACK } }, 3);
    expect(outcomes(ud, s, sw)).toEqual(handler(14, PF_W, 0x10_0000_1000n - 40n));
    expect(outcomes(gp0, s, sw)).toEqual(handler(14, PF_W, 0x10_0000_1000n - 48n));
  });
  it('the #PF on the same stack faults again: page fault then page fault → #DF (on its good IST)', () => {
    expect(outcomes(ud, setup(onDfIst(npStack), 3))).toEqual(handler(8, 0));
    expect(rules(ud, setup(onDfIst(npStack), 0))).toEqual(['raised', 'stack-push-fault', 'serial', 'stack-push-fault', 'double-fault', 'handler-entered']);
    // Contributory then page fault is serial too, so #GP ends the same way.
    expect(outcomes(gp0, setup(onDfIst(npStack), 3))).toEqual(handler(8, 0));
  });
  it("#DF's own stack not present: a fault while delivering #DF → shutdown", () => {
    expect(outcomes(ud, setup({ ...onDfIst(npStack), istStacks: { 1: npStack } }))).toEqual(SHUTDOWN);
  });
  it('an IST gate whose IST stack is not present, the others good: #PF serially, then the #PF enters on the good stack', () => {
    expect(outcomes(ud, setup(istStack([6], npStack)))).toEqual(handler(14, PF_W, 0x10_0000_0ff8n));
  });
});
