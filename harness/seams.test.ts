/**
 * The seams the next families build on, on real KVM: interrupts reach ring-3 threads and are
 * counted and timestamped; a VM can start paused and its RAM and state be read at a chosen moment;
 * an open-ended loop reports progress without stopping.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { recordsOf, type Op } from '../ir/ops.js';
import { DEFAULT_CANARY } from '../ir/program.js';
import { encodeProgram } from './bytecode.js';
import { IRQ_LOG_COUNTS_BYTES, LAYOUT, MAILBOX_STATE, readStruct } from './guest/abi.js';
import { buildGuest } from './guest/build.js';
import { defaultMachineConfig, Vm } from './vm.js';
import { runWorkload } from './workload.js';

let elf = '';
beforeAll(async () => {
  elf = (await buildGuest()).elf;
});

const APIC = 0xfee00000n;
const TIMER_VECTOR = 0x40;

describe('interrupt seam', () => {
  for (const ring0 of [false, true]) {
    it(`a LAPIC timer interrupt reaches a ${ring0 ? 'ring-0' : 'ring-3'} thread, counted and timestamped`, async () => {
      const ops: Op[] = [
        { op: 'mmioWrite', addr: APIC + 0x3e0n, width: 4, value: 0xbn }, // TDCR: divide by 1
        { op: 'mmioWrite', addr: APIC + 0x320n, width: 4, value: BigInt(TIMER_VECTOR) }, // LVTT: one-shot
        { op: 'mmioWrite', addr: APIC + 0x380n, width: 4, value: 1_000_000n }, // TMICT
        { op: 'waitIrq', vector: TIMER_VECTOR, count: 1, timeoutCycles: 20_000_000_000n },
        { op: 'irqCounts' },
      ];
      const run = await runWorkload(defaultMachineConfig(), { threads: [ops], canary: DEFAULT_CANARY, ring0 }, { guestElf: elf });
      expect(run.vm.outcome.kind).toBe('completed');
      expect(recordsOf(run.records[0]!, 'waitIrq')[0]!.fields.seen).toBe(1n);
      expect(recordsOf(run.records[0]!, 'irqCounts')[0]!.fields.total).toBe(1n);
      // collect() hands back the interrupt log: the one timer interrupt, timestamped inside the wait.
      const wait = recordsOf(run.records[0]!, 'waitIrq')[0]!;
      const log = run.vm.threads[0]!.irqLog;
      expect(log.counts.get(TIMER_VECTOR)).toBe(1);
      expect(log.entries.map((e) => e.vector)).toEqual([TIMER_VECTOR]);
      expect(log.entries[0]!.tsc).toBeGreaterThanOrEqual(wait.fields.tscStart);
      expect(log.entries[0]!.tsc).toBeLessThanOrEqual(wait.fields.tscEnd);
    });
  }
});

describe('migration seams', () => {
  it('a VM starts paused, its RAM is readable at a chosen moment, and an open loop reports progress', async () => {
    const loop: Op[] = [{ op: 'loopBegin', count: 0 }, { op: 'mark', value: 7n }, { op: 'dirtyPages', base: 0x0200_0000n, pages: 64, stride: 4096 }, { op: 'loopEnd' }];
    const program = encodeProgram({ threads: [loop], canary: DEFAULT_CANARY });
    const vm = await Vm.start(defaultMachineConfig(), { guestElf: elf, program, paused: true });
    try {
      expect((await vm.qmp.execute<{ status: string }>('query-status')).status).toBe('prelaunch');
      await vm.qmp.execute('cont');
      let before = 0n;
      for (let i = 0; i < 200; i++) {
        const { mailbox, threads } = await vm.readMailbox();
        const done = threads[0]!.ops_done ?? 0n;
        if (mailbox.state === BigInt(MAILBOX_STATE.running) && done > 1000n) {
          before = done;
          expect(threads[0]!.marker).toBe(7n);
          break;
        }
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(before).toBeGreaterThan(0n);
      await vm.qmp.execute('stop');
      const frozen = (await vm.readMailbox()).threads[0]!.ops_done;
      await new Promise((r) => setTimeout(r, 100));
      expect((await vm.readMailbox()).threads[0]!.ops_done).toBe(frozen);
      // The dirtied pages hold the loop's count in their first byte; the irq log is readable too.
      const page = await vm.readPhys(0x0200_0000, 4096);
      expect(page[0]).toBeGreaterThan(0);
      const log = await vm.readPhys(LAYOUT.irqLog, IRQ_LOG_COUNTS_BYTES + 16);
      expect(readStruct('irq_log_head', log, IRQ_LOG_COUNTS_BYTES).total).toBe(0n);
      const regs = await vm.registers();
      expect(regs).toMatch(/RIP=/);
    } finally {
      await vm.dispose();
    }
  });

  it('a VM can wait as an -incoming destination', async () => {
    const vm = await Vm.start(defaultMachineConfig(), { guestElf: elf, incoming: 'defer' });
    try {
      expect((await vm.qmp.execute<{ status: string }>('query-status')).status).toBe('inmigrate');
    } finally {
      await vm.dispose();
    }
  });
});
