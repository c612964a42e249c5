/**
 * Regenerates harness/fixtures/kvm-stats-*.json: QEMU's own `query-stats-schemas` and `query-stats`
 * answers (provider kvm, targets vm and vcpu) for a 2-vCPU microvm whose guest makes a known number
 * of port and MMIO reads, read before the guest first runs (prelaunch) and once it has finished and
 * waits for the host (the exit handshake). The decoder's tests (harness/kvmStats.test.ts) read it.
 * Run after a QEMU or kernel upgrade, review the diff, commit.
 *
 *   node --import tsx scripts/capture-kvm-stats-fixture.ts [--accel kvm|tcg]
 */
import { writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { encodeProgram } from '../harness/bytecode.js';
import { MAILBOX_STATE } from '../harness/guest/abi.js';
import { buildGuest } from '../harness/guest/build.js';
import { queryKvmStats, type StatsSchema } from '../harness/kvmStats.js';
import { defaultMachineConfig, Vm } from '../harness/vm.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import type { Op } from '../ir/ops.js';

const accel = process.argv.includes('--accel') ? (process.argv[process.argv.indexOf('--accel') + 1] as 'kvm' | 'tcg') : 'kvm';
/** What thread 0 does: PIO_READS port reads no device claims, MMIO_READS reads of unclaimed space (both go to QEMU). */
export const PIO_READS = 100;
export const MMIO_READS = 50;
const ops: Op[] = [
  ...Array.from({ length: PIO_READS }, (): Op => ({ op: 'pioIn', port: 0x200, width: 1 })),
  ...Array.from({ length: MMIO_READS }, (): Op => ({ op: 'mmioRead', addr: 0xd000_0000n, width: 4 })),
];
const program: Program = { threads: [ops, []], canary: DEFAULT_CANARY };

const { elf } = await buildGuest();
const vm = await Vm.start(defaultMachineConfig({ accel, cpus: 2, ...(accel === 'kvm' ? { cpuModel: process.env.KVMPROP_CPU ?? 'host,-arch-capabilities' } : {}) }), { guestElf: elf, program: encodeProgram(program), label: 'stats-fixture', paused: true });
try {
  const qemu = vm.qmp.greeting.QMP.version.qemu;
  const schemas = await vm.qmp.execute<StatsSchema[]>('query-stats-schemas', { provider: 'kvm' });
  const before = await queryKvmStats(vm.qmp);
  await vm.qmp.execute('cont');
  for (let i = 0; i < 500; i++) {
    const { mailbox } = await vm.readMailbox();
    if (mailbox.state === BigInt(MAILBOX_STATE.done) || mailbox.state === BigInt(MAILBOX_STATE.failed)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const after = await queryKvmStats(vm.qmp);
  await vm.guestFinished();
  const fixture = {
    captured: {
      qemu: `${qemu.major}.${qemu.minor}.${qemu.micro}`,
      kernel: release(),
      accel,
      cpuModel: vm.config.cpuModel,
      guest: `2 vCPUs (microvm); thread 0: ${PIO_READS} inb from port 0x200, then ${MMIO_READS} 32-bit reads of 0xd0000000 (ring 3); thread 1: nothing`,
      before: 'prelaunch (-S), after the VM was created, before cont',
      after: 'the guest finished (mailbox done), waiting for exit_ack',
    },
    schemas,
    before,
    after,
  };
  const file = join(import.meta.dirname, '..', 'harness', 'fixtures', `kvm-stats-${accel}.json`);
  writeFileSync(file, JSON.stringify(fixture, null, 1) + '\n');
  console.log(`${file}: ${schemas.map((s) => `${s.target} ${s.stats.length}`).join(', ') || 'no KVM statistics'}`);
} finally {
  await vm.dispose();
}
