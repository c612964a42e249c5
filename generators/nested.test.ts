/** The single-level exception generator: encodings, operands the guest can take, and the examples the model predicts. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { APM_EXCEPTIONS, SDM_EXCEPTIONS } from '../models/nested/exceptions.js';
import { predictStep } from '../suites/nested/singleLevel.js';
import {
  CPL0_INT_VECTORS,
  GUEST_MAP_LIMIT,
  SINGLE_LEVEL_EXAMPLES,
  SINGLE_LEVEL_INSTRUCTIONS,
  encodeStep,
  isCanonical,
  singleLevelCaseArb,
  singleLevelOps,
} from './nested.js';

const facts = { switches: APM_EXCEPTIONS, variant: {} };

describe('encodeStep', () => {
  it('fits every step in one exec op, with the raising instruction inside it', () => {
    fc.assert(
      fc.property(singleLevelCaseArb(), (c) => {
        for (const s of c.steps) {
          const e = encodeStep(s);
          expect(e.bytes.length).toBeLessThanOrEqual(16);
          expect(e.at).toBeLessThan(e.after);
          expect(e.after).toBeLessThanOrEqual(e.bytes.length);
        }
        expect(singleLevelOps(c)).toHaveLength(c.steps.length);
      }),
    );
  });
  it('writes the address little-endian after MOVABS', () => {
    expect(encodeStep({ instruction: 'load-unmapped', address: 0x1122_3344_5566_7788n }).bytes).toEqual([0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x48, 0x8b, 0x00]);
  });
});

describe('singleLevelCaseArb', () => {
  it('draws operands the guest can take: CPL-0 INT n only below 32 without an error code or NMI; addresses of the right kind', () => {
    expect(CPL0_INT_VECTORS).not.toContain(2);
    expect(CPL0_INT_VECTORS).not.toContain(13);
    fc.assert(
      fc.property(singleLevelCaseArb(), (c) => {
        expect(c.steps.length).toBeGreaterThanOrEqual(1);
        expect(c.steps.length).toBeLessThanOrEqual(6);
        for (const s of c.steps) {
          if (s.instruction === 'int-n' && c.cpl === 0) expect(CPL0_INT_VECTORS).toContain(s.intVector);
          if (s.instruction === 'load-unmapped' || s.instruction === 'store-unmapped') {
            expect(isCanonical(s.address!)).toBe(true);
            expect(s.address! >= GUEST_MAP_LIMIT).toBe(true);
          }
          if (s.instruction === 'load-non-canonical') expect(isCanonical(s.address!)).toBe(false);
        }
      }),
    );
  });
  it('draws only the instructions it is given', () => {
    fc.assert(fc.property(singleLevelCaseArb({ instructions: ['ud2'], cpls: [0] }), (c) => c.cpl === 0 && c.steps.every((s) => s.instruction === 'ud2')));
  });
  it('covers every instruction it lists', () => {
    const seen = new Set(fc.sample(singleLevelCaseArb(), { numRuns: 300, seed: 1 }).flatMap((c) => c.steps.map((s) => s.instruction)));
    expect([...seen].sort()).toEqual([...SINGLE_LEVEL_INSTRUCTIONS].sort());
  });
});

describe('SINGLE_LEVEL_EXAMPLES under the model', () => {
  const vectors = (name: string) => {
    const c = SINGLE_LEVEL_EXAMPLES[name]!;
    return c.steps.map((s) => predictStep(s, c.cpl, facts, c).entry?.vector ?? null);
  };
  it('one fixed case per vector', () => {
    expect(vectors('#DE')).toEqual([0]);
    expect(vectors('#DB')).toEqual([1]);
    expect(vectors('#BP')).toEqual([3]);
    expect(vectors('#UD')).toEqual([6, 6]);
    expect(vectors('#SS')).toEqual([12]);
    expect(vectors('#GP')).toEqual([13, 13, 13, 13]);
    expect(vectors('#PF')).toEqual([14, 14, 14]);
    expect(vectors('#XM')).toEqual([19]);
    // #MF at the FWAIT; the catch's FNINIT leaves nothing pending for the next x87 step.
    expect(vectors('#MF')).toEqual([16, null, 16]);
    expect(vectors('#AC')).toEqual([17]);
    expect(vectors('no #AC without CR0.AM')).toEqual([null]);
    expect(vectors('#NM')).toEqual([7, 7]);
    expect(vectors('INT n at CPL 0')).toEqual([0, 31, null]);
    expect(vectors('#PF at CPL 0')).toEqual([14, 14]);
  });
  it('error codes, CR2 and RIP: #GP(vector·8 | IDT) for INT n at CPL 3, #PF with U at CPL 3, traps after the instruction', () => {
    const gp = SINGLE_LEVEL_EXAMPLES['#GP']!;
    expect(gp.steps.map((s) => predictStep(s, 3, facts).entry?.errorCode)).toEqual([0x1a, 0x402, 0, 0]);
    expect(gp.steps.map((s) => predictStep(s, 3, facts).ripOffset)).toEqual([0, 0, 10, 0]);
    const pf = SINGLE_LEVEL_EXAMPLES['#PF']!.steps.map((s) => predictStep(s, 3, facts).entry);
    expect(pf.map((e) => [e?.errorCode, e?.cr2])).toEqual([[4, 0x10_0000_0000n], [6, 0x7fff_ffff_f000n], [4, 0xffff_8000_0000_0000n]]);
    expect(predictStep({ instruction: 'store-unmapped', address: 0x10_0000_0000n }, 0, facts).entry?.errorCode).toBe(2);
    expect(predictStep({ instruction: 'int3' }, 0, facts).ripOffset).toBe(1);
    expect(predictStep({ instruction: 'single-step' }, 3, facts).ripOffset).toBe(11);
    expect(predictStep({ instruction: 'div-by-zero' }, 3, facts).ripOffset).toBe(2);
    // #MF is a fault at the waiting instruction (the FWAIT, byte 15); with CR0.TS the FNINIT at 0 raises #NM.
    expect(predictStep({ instruction: 'fwait-unmasked-x87' }, 3, facts)).toMatchObject({ entry: { vector: 16, errorCode: null }, ripOffset: 15 });
    expect(predictStep({ instruction: 'fwait-unmasked-x87' }, 0, facts, { taskSwitched: true })).toMatchObject({ entry: { vector: 7 }, ripOffset: 0 });
  });
  it('a not-present stack: the push #PF (P = 0, W = 1, U = 0, CR2 = the 16-aligned RSP − 8) on IST 1, else #DF(0) with no RIP claim', () => {
    const push = 0x10_0000_0ff8n; // LAYOUT.notPresentStack = 64 GiB + 4 KiB + 8
    const at = (name: string) => SINGLE_LEVEL_EXAMPLES[name]!;
    const p3 = at('#PF pushing the frame on RSP0, then #DF').steps.map((s) => predictStep(s, 3, facts));
    expect(p3.map((p) => p.entry)).toEqual([{ kind: 'handler', vector: 14, errorCode: 2, cr2: push }, { kind: 'handler', vector: 8, errorCode: 0 }, { kind: 'handler', vector: 8, errorCode: 0 }]);
    expect(p3.map((p) => p.ripOffset)).toEqual([0, null, null]);
    expect(p3[1]!.chain.map((c) => c.rule)).toEqual(['raised', 'stack-push-fault', 'serial', 'stack-push-fault', 'double-fault', 'handler-entered']);
    const p0 = at('#PF pushing the frame on the CPL-0 stack, then #DF').steps.map((s) => predictStep(s, 0, facts));
    expect(p0.map((p) => [p.entry?.vector, p.entry?.cr2, p.ripOffset])).toEqual([[14, push, 10], [8, undefined, null]]);
    // The single-step #DB is a trap: a fault vectoring it reports the RIP after the NOP.
    expect(predictStep({ instruction: 'single-step', stack: 'rsp0-pf-ist' }, 3, facts)).toMatchObject({ entry: { vector: 14, cr2: push }, ripOffset: 11 });
    // A step that raises nothing never pushes a frame.
    expect(predictStep({ instruction: 'misaligned-load', stack: 'rsp0' }, 3, facts).entry).toBeNull();
    // The ops: execStack with RSP0 (bit 0) and the #PF gate on IST 1 (bit 1); at CPL 0 the code moves RSP itself.
    expect(singleLevelOps(at('#PF pushing the frame on RSP0, then #DF')).map((o) => (o.op === 'execStack' ? o.stack : null))).toEqual([3, 1, 1]);
    const ops0 = singleLevelOps(at('#PF pushing the frame on the CPL-0 stack, then #DF'));
    expect(ops0.map((o) => (o.op === 'execStack' ? o.stack : null))).toEqual([2, 0]);
    expect(encodeStep({ instruction: 'ud2', stack: 'rsp' }).bytes.slice(0, 10)).toEqual([0x48, 0xbc, 0x08, 0x10, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00]);
  });
  it('takes a stack only where the guest can: CPL 3 RSP0 set-ups, CPL 0 RSP set-ups for ud2, into-64, div-by-zero', () => {
    const cases = fc.sample(singleLevelCaseArb(), { numRuns: 400, seed: 2 });
    const steps = cases.flatMap((c) => c.steps.map((s) => ({ cpl: c.cpl, s })));
    expect(steps.filter(({ s }) => s.stack !== undefined).length).toBeGreaterThan(20);
    for (const { cpl, s } of steps) {
      if (s.stack === undefined) continue;
      if (cpl === 3) expect(['rsp0', 'rsp0-pf-ist']).toContain(s.stack);
      else {
        expect(['rsp', 'rsp-pf-ist']).toContain(s.stack);
        expect(['ud2', 'into-64', 'div-by-zero']).toContain(s.instruction);
      }
      expect(encodeStep(s).bytes.length).toBeLessThanOrEqual(16);
    }
  });
  it('the SDM and APM presets agree on every generated case (no delivery fault but the EXT-free gate-DPL #GP)', () => {
    fc.assert(
      fc.property(singleLevelCaseArb(), (c) => {
        for (const s of c.steps) expect(predictStep(s, c.cpl, { switches: SDM_EXCEPTIONS, variant: {} }).entry).toEqual(predictStep(s, c.cpl, facts).entry);
      }),
    );
  });
  it('the mutants change what the model predicts', () => {
    expect(predictStep({ instruction: 'mov-from-cr-unprivileged' }, 3, { ...facts, variant: { gpAsUd: true } }).entry?.vector).toBe(6);
    expect(predictStep({ instruction: 'load-unmapped', address: 0x10_0000_0000n }, 3, { ...facts, variant: { pageFaultUserBit: false } }).entry?.errorCode).toBe(0);
  });
});
