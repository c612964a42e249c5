/**
 * The vector writers on real KVM, no migration: a guest with AVX state on (ir/program.ts avxState)
 * runs a migration workload whose regions use 'avx' (VMOVDQU ymm, 32 bytes read, +1 on the low
 * qword, stored back) at every placement, the in-page one at the last word of a page (its span runs
 * 24 bytes into the next page) and a plain MOV region laid right after it. Stopped, the arena reads
 * what the family's own judge (observe.ts judgeArena) says the model predicts, and XMM0-15 keep
 * fillXmm's pattern (now printed as the low half of YMMnn). 'avx512' runs only on a vCPU with AVX512F.
 *
 * Each runs on KVM where KVM gives the vCPU the feature, and under TCG with `-cpu max` (QEMU 7.2's
 * TCG has AVX, not AVX-512): kvm_pvm hosts give their vCPUs no XSAVE at all, and the guest's code,
 * the layout and the judge are then still run on a CPU that has it.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { layoutWorkload, LOOPING_MARK, migrationProgram, plainCase, xmmPattern, type MigrationCase, type RegionSpec } from '../../generators/migration.js';
import { machineFacts } from '../../harness/facts.js';
import { buildGuest } from '../../harness/guest/build.js';
import { withVms } from '../../harness/session.js';
import { useOwnRunRoot } from '../../harness/testing/runRoot.js';
import { defaultMachineConfig, type MachineConfig } from '../../harness/vm.js';
import { captureVmState } from '../../harness/vmState.js';
import { filteredBits } from '../../models/cpuid/features.js';
import type { WriterKind } from '../../models/migration/dirty.js';
import { judgeArena, xmmOf } from './observe.js';

useOwnRunRoot();
let guestElf = '';
const CONFIGS = { kvm: defaultMachineConfig({ cpus: 2, ramMiB: 64 }), tcg: defaultMachineConfig({ cpus: 2, ramMiB: 64, accel: 'tcg', cpuModel: 'max' }) };
const vcpu = { kvm: { avx: false, avx512: false }, tcg: { avx: false, avx512: false } };

beforeAll(async () => {
  guestElf = (await buildGuest()).elf;
  for (const accel of ['kvm', 'tcg'] as const) {
    const f = await machineFacts(CONFIGS[accel], guestElf);
    const has = (prop: string, leaf: number, reg: 'ebx' | 'ecx', bit: number) => f.cpu.props[prop] === true && ((filteredBits(f.filteredFeatures, leaf, 0, reg) >>> bit) & 1) === 0;
    const avx = has('xsave', 1, 'ecx', 26) && has('avx', 1, 'ecx', 28);
    vcpu[accel] = { avx, avx512: avx && has('avx512f', 7, 'ebx', 16) };
  }
}, 120_000);

function region(writer: WriterKind, placement: RegionSpec['placement'], offset = 0): RegionSpec {
  return { pages: 40, stridePages: 1, placement, offset, writer, passes: 1, gapPages: 0 };
}

function vectorCase(writer: WriterKind): MigrationCase {
  return plainCase({
    cpus: 2,
    sentinels: 2,
    // Thread 0: the vector writer at the last word of each page, then a MOV region right after its
    // last span; thread 1: the vector writer across page boundaries and at page starts, concurrently.
    threads: [
      { regions: [region(writer, 'in-page', 4088), region('mov', 'page-start'), region(writer, 'page-start')], delayUs: 0 },
      { regions: [region(writer, 'straddle'), region('mov', 'in-page', 8), { ...region(writer, 'page-start'), passes: 3 }], delayUs: 0 },
    ],
  });
}

async function runVectorWorkload(cfg: MachineConfig, writer: WriterKind): Promise<void> {
  const c = vectorCase(writer);
  const { workload, dropped } = layoutWorkload(c);
  expect(dropped).toBe(0);
  const program = migrationProgram(c, workload, 2e9);
  expect(program.avxState).toBe(true);
  await withVms(
    { g: { config: cfg, program } },
    async ({ g }) => {
      for (const t of [0, 1]) await g.untilMarker(t, LOOPING_MARK);
      // Many loops of every region (a loop is 3 or 5 passes and loopEnd).
      for (const t of [0, 1]) await g.untilThread(t, (s) => (s.ops_done ?? 0n) > 500n, { timeoutMs: 60_000 });
      await g.stop();
      const { threads } = await g.vm.readMailbox();
      expect(threads.slice(0, 2).map((t) => t.state)).toEqual([1n, 1n]); // still running: no #UD, no fault
      const ops = threads.slice(0, 2).map((t) => Number(t.ops_done ?? 0n));
      expect(await judgeArena(g, workload, ops)).toEqual([]);
      // Not trivially: each thread's first vector region was passed once per loop, over a hundred times.
      for (const t of [0, 1]) {
        const r = workload.regions[t === 0 ? 0 : 3]!;
        expect(r.writer).toBe(writer);
        expect(Buffer.from(await g.vm.readPhys(r.base, 8)).readBigUInt64LE(0)).toBeGreaterThan(100n);
      }
      const state = await captureVmState(g.vm.qmp, 2);
      for (const cpu of [0, 1]) {
        for (let i = 0; i < 16; i++) expect(xmmOf(state.items, cpu, i), `cpu ${cpu} XMM${i}`).toBe(xmmPattern(cpu, i));
        expect(state.items.some((it) => it.section === `cpu${cpu}.registers` && it.key === (writer === 'avx512' ? 'ZMM00' : 'YMM00'))).toBe(true);
      }
    },
    { guestElf },
  );
}

describe.each(['kvm', 'tcg'] as const)('vector writers on this host under %s (no migration)', (accel) => {
  it("'avx': every counter is what the model says, every other arena byte zero, XMM0-15 kept", async (ctx) => {
    if (!vcpu[accel].avx) ctx.skip(`the ${accel} vCPU's CPUID has no XSAVE or no AVX`);
    await runVectorWorkload(CONFIGS[accel], 'avx');
  }, 120_000);

  it("'avx512': the same with ZMM stores", async (ctx) => {
    if (!vcpu[accel].avx512) ctx.skip(`the ${accel} vCPU's CPUID has no AVX512F`);
    await runVectorWorkload(CONFIGS[accel], 'avx512');
  }, 120_000);
});
