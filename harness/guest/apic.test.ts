/**
 * The guest's APIC layer on real KVM: apicRead/apicWrite reach the local APIC in xAPIC mode (MMIO)
 * and in x2APIC mode (MSRs, trapped to ring 0 from ring 3), whether the program asks for x2APIC
 * (Program.x2apic) or a thread switches itself (wrmsr 0x1b); the guest's own EOIs follow the mode.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Op, OpRecord } from '../../ir/ops.js';
import { DEFAULT_CANARY, type Program } from '../../ir/program.js';
import { defaultMachineConfig } from '../vm.js';
import { guestProblems, runWorkload, type WorkloadRun } from '../workload.js';
import { APIC_MMIO_BASE, APIC_REGS, X2APIC_MSR_BASE } from './abi.js';
import { buildGuest } from './build.js';

let guestElf = '';
beforeAll(async () => {
  guestElf = (await buildGuest()).elf;
});

const field = (r: OpRecord | undefined, name: string): bigint => {
  const v = (r?.fields as Record<string, bigint> | undefined)?.[name];
  if (v === undefined) throw new Error(`record has no field ${name}`);
  return v;
};

async function run(program: Omit<Program, 'canary'>, label: string): Promise<WorkloadRun> {
  const cpus = program.threads.length;
  const r = await runWorkload(defaultMachineConfig({ cpus }), { canary: DEFAULT_CANARY, ...program }, { guestElf, label });
  expect(guestProblems(r)).toEqual([]);
  return r;
}

const MSR_APIC_BASE = 0x1b;
const msrOf = (reg: number) => X2APIC_MSR_BASE + (reg >> 4);
const TIMER_VECTOR = 0x41;

describe('apicRead and apicWrite', () => {
  for (const x2apic of [false, true]) {
    for (const ring0 of [false, true]) {
      const mode = x2apic ? 'x2APIC' : 'xAPIC';
      it(`read the version and ID and round-trip TDCR in ${mode} mode, from ring ${ring0 ? 0 : 3}`, async () => {
        // The same register read raw: MMIO in xAPIC mode, its MSR in x2APIC mode.
        const raw: Op = x2apic
          ? { op: 'rdmsr', msr: msrOf(APIC_REGS.version) }
          : { op: 'mmioRead', addr: BigInt(APIC_MMIO_BASE + APIC_REGS.version), width: 4 };
        const ops: Op[] = [
          { op: 'apicRead', reg: APIC_REGS.version },
          raw,
          { op: 'apicWrite', reg: APIC_REGS.timerDivide, value: 0xbn },
          { op: 'apicRead', reg: APIC_REGS.timerDivide },
          { op: 'apicWrite', reg: APIC_REGS.timerDivide, value: 0x1n },
          { op: 'apicRead', reg: APIC_REGS.timerDivide },
          { op: 'apicRead', reg: APIC_REGS.id },
        ];
        const r = await run({ threads: [ops, [{ op: 'apicRead', reg: APIC_REGS.id }]], x2apic, ring0 }, `apic-${mode}-${ring0 ? 0 : 3}`);
        const [version, rawVersion, write1, tdcr1, , tdcr2, id0] = r.records[0]!;
        expect(r.records[0]!.map((x) => x.faultVector)).toEqual([null, null, null, null, null, null, null]);

        const v = field(version, 'value');
        expect(v & 0xf0n).toBe(0x10n); // an integrated APIC: version 0x1X (SDM Vol. 3A 11.4.8)
        expect((v >> 16n) & 0xffn).toBeGreaterThanOrEqual(3n); // max LVT entry
        expect(v).toBe(field(rawVersion, x2apic ? 'value' : 'rax') & 0xffff_ffffn);

        expect(field(tdcr1, 'value')).toBe(0xbn);
        expect(field(tdcr2, 'value')).toBe(0x1n);
        const before = field(write1, 'tscBefore');
        expect(before).toBeGreaterThan(0n);
        expect(field(write1, 'tscAfter')).toBeGreaterThanOrEqual(before);

        // APIC IDs 0 and 1: bits 31:24 in xAPIC mode, the whole register in x2APIC mode.
        expect(field(id0, 'value')).toBe(0n);
        expect(field(r.records[1]![0], 'value')).toBe(x2apic ? 1n : 1n << 24n);
      });
    }
  }

  it('x2APIC mode: a register x2APIC lacks (ICR2) and a value above 32 bits raise #GP, recorded; the thread goes on', async () => {
    const ops: Op[] = [
      { op: 'apicRead', reg: APIC_REGS.icr2 },
      { op: 'apicWrite', reg: APIC_REGS.timerDivide, value: 0x1_0000_0008n },
      { op: 'apicRead', reg: APIC_REGS.timerDivide },
    ];
    const x2 = await run({ threads: [ops], x2apic: true }, 'apic-x2-gp');
    expect(x2.records[0]!.map((x) => x.faultVector)).toEqual([13, 13, null]);
    expect(field(x2.records[0]![0], 'value')).toBe(0n);
    expect(field(x2.records[0]![1], 'tscAfter')).toBe(0n); // the write never completed
    // xAPIC mode: 0x310 is ICR2; the write keeps its low 32 bits.
    const x1 = await run({ threads: [ops] }, 'apic-x1-wide');
    expect(x1.records[0]!.map((x) => x.faultVector)).toEqual([null, null, null]);
    expect(field(x1.records[0]![2], 'value')).toBe(0x8n);
  });

  const timerTwice: Op[] = [
    { op: 'apicWrite', reg: APIC_REGS.timerDivide, value: 0xbn }, // divide by 1
    { op: 'apicWrite', reg: APIC_REGS.lvtTimer, value: BigInt(TIMER_VECTOR) }, // one-shot
    { op: 'apicWrite', reg: APIC_REGS.timerInitialCount, value: 100_000n },
    { op: 'waitIrq', vector: TIMER_VECTOR, count: 1, timeoutCycles: 20_000_000_000n },
    // The guest's EOI ran in ring 0 in between, through apic_write: an EOI in the wrong mode's way
    // faults there (an x2APIC MSR in xAPIC mode) and ends the thread. (The reverse, an MMIO EOI in
    // x2APIC mode, is dropped without a trace; and on kvm_pvm hosts the in-service bit never shows,
    // so a same-vector interrupt arrives even without an EOI: the second wait cannot tell.)
    { op: 'apicWrite', reg: APIC_REGS.timerInitialCount, value: 100_000n },
    { op: 'waitIrq', vector: TIMER_VECTOR, count: 1, timeoutCycles: 20_000_000_000n },
    { op: 'irqCounts' },
  ];
  const seen = (r: WorkloadRun) => r.records[0]!.filter((x) => 'seen' in x.fields).map((x) => field(x, 'seen'));

  for (const [how, program] of [
    ['xAPIC', { threads: [timerTwice] }],
    ['x2APIC (Program.x2apic)', { threads: [timerTwice], x2apic: true }],
  ] as const) {
    it(`the LAPIC timer fires twice in ${how} mode from ring 3, the guest's EOI in between`, async () => {
      const r = await run(program, `apic-timer-${how.slice(0, 6)}`);
      expect(seen(r)).toEqual([1n, 1n]);
      expect(field(r.records[0]!.at(-1), 'total')).toBe(2n);
    });
  }

  it('a ring-3 thread that switches to x2APIC with wrmsr 0x1b: apicRead/apicWrite and the EOIs follow it', async () => {
    const ops: Op[] = [
      { op: 'apicRead', reg: APIC_REGS.version },
      { op: 'rdmsr', msr: MSR_APIC_BASE },
      // Base 0xfee00000, BSP (bit 8, vCPU 0), enabled (bit 11), x2APIC (bit 10).
      { op: 'wrmsr', msr: MSR_APIC_BASE, value: 0xfee0_0d00n },
      { op: 'rdmsr', msr: MSR_APIC_BASE },
      { op: 'apicRead', reg: APIC_REGS.version },
      { op: 'rdmsr', msr: msrOf(APIC_REGS.version) },
      ...timerTwice,
    ];
    const r = await run({ threads: [ops] }, 'apic-switch');
    const [v1, base1, wr, base2, v2, rawV2] = r.records[0]!;
    expect(field(base1, 'value') & 0xc00n).toBe(0x800n); // xAPIC at first
    expect(wr!.faultVector).toBeNull();
    expect(field(base2, 'value') & 0xc00n).toBe(0xc00n);
    expect(field(v2, 'value')).toBe(field(v1, 'value')); // MMIO would read all-ones in x2APIC mode
    expect(field(rawV2, 'value')).toBe(field(v2, 'value')); // through the MSR now
    expect(seen(r)).toEqual([1n, 1n]);
  });

  it('refuses a register offset that is not 16-byte aligned as a bad op', async () => {
    const r = await runWorkload(defaultMachineConfig(), { threads: [[{ op: 'apicRead', reg: APIC_REGS.version + 4 }]], canary: DEFAULT_CANARY }, { guestElf, label: 'apic-bad' });
    expect(guestProblems(r)).toEqual(['vCPU 0: bad op 0x30 (an operand the guest refuses) at op offset 0 (0 ops done, 0 record bytes)']);
  });
});
