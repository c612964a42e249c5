/**
 * Guest RAM backends on real KVM (MachineConfig.ramBackend): each the host can run boots, shows
 * its program image and a page the guest wrote through readPhys (QEMU's RAM block, found in its
 * smaps, for all but 'file'), keeps its results once QEMU has exited, and migrates to a
 * destination of the same backend with RAM identical on both sides. 'hugetlbfs' runs only where
 * the host has enough free 2 MiB pages.
 */
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { encodeProgram } from './bytecode.js';
import { LAYOUT, THREAD_STATE } from './guest/abi.js';
import { buildGuest } from './guest/build.js';
import { freeHugePages2M, type RamBackend } from './ramMap.js';
import { compareRam, withVms } from './session.js';
import { useOwnRunRoot } from './testing/runRoot.js';
import { defaultMachineConfig, Vm } from './vm.js';
import { runWorkload } from './workload.js';

const DIRTY_BASE = 0x0200_0000n;
const DIRTY_LOOP: Program = {
  threads: [[{ op: 'loopBegin', count: 0 }, { op: 'mark', value: 7n }, { op: 'dirtyPages', base: DIRTY_BASE, pages: 256, stride: 4096 }, { op: 'loopEnd' }]],
  canary: DEFAULT_CANARY,
};
const RAM_MIB = 64;
const hugePagesFree = freeHugePages2M(readFileSync('/proc/meminfo', 'utf8'));
const BACKENDS: RamBackend[] = ['file', 'anonymous', 'memfd', ...(hugePagesFree * 2 >= RAM_MIB * 2 ? (['hugetlbfs'] as const) : [])];

let guestElf: string;
useOwnRunRoot();
beforeAll(async () => {
  guestElf = (await buildGuest()).elf;
});

describe.each(BACKENDS)('guest RAM backed by %s', (ramBackend) => {
  const cfg = defaultMachineConfig({ ramBackend, ramMiB: RAM_MIB });

  it('reads the program image and a page the guest dirtied through readPhys', async () => {
    const image = encodeProgram(DIRTY_LOOP);
    const vm = await Vm.start(cfg, { guestElf, program: image, label: `ram-${ramBackend}` });
    try {
      const argv = readFileSync(`/proc/${vm.pid}/cmdline`, 'latin1').split('\0');
      // setpriv execs QEMU: the pid we hold is QEMU's, whose mappings we read.
      expect(argv[0]).toContain('qemu');
      expect(argv.join(' ')).toContain(ramBackend === 'file' ? 'memory-backend-file' : ramBackend === 'anonymous' ? 'memory-backend-ram' : 'memory-backend-memfd');
      expect(Buffer.from(await vm.readPhys(LAYOUT.program, image.image.length)).equals(Buffer.from(image.image))).toBe(true);
      for (let i = 0; i < 500; i++) {
        if ((await vm.readMailbox()).threads[0]!.ops_done! > 100n) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      const page = await vm.readPhys(Number(DIRTY_BASE), 4096);
      expect(page[0]).toBeGreaterThan(0);
      const src = await vm.ramSource();
      if (ramBackend === 'file') expect(src).toMatchObject({ path: vm.ramPath, base: 0 });
      else {
        const m = (await vm.ramMappingNow())!;
        expect(m.end - m.start).toBe(RAM_MIB << 20);
        expect(src).toMatchObject(ramBackend === 'anonymous' ? { path: `/proc/${vm.pid}/mem`, base: m.start } : { path: `/proc/${vm.pid}/map_files/${m.start.toString(16)}-${m.end.toString(16)}`, base: 0 });
      }
    } finally {
      await vm.dispose();
    }
  });

  it("keeps a finished guest's records after QEMU exits", async () => {
    const run = await runWorkload(cfg, { threads: [[{ op: 'mark', value: 0xa1n }, { op: 'rdtsc' }]], canary: DEFAULT_CANARY }, { guestElf, label: `ram-done-${ramBackend}` });
    expect(run.vm.outcome).toEqual({ kind: 'completed', exitCode: 33 });
    expect(run.vm.mailbox.exit_ack).toBe(1n);
    expect(run.vm.threads[0]!.status.state).toBe(BigInt(THREAD_STATE.done));
    expect(run.vm.threads[0]!.status.marker).toBe(0xa1n);
    expect(run.records[0]!).toHaveLength(1); // the rdtsc's record, read back from RAM
  });

  it('migrates to a destination of the same backend: identical RAM, validated on the destination', async () => {
    await withVms({ src: { config: cfg, program: DIRTY_LOOP }, dst: { config: cfg, incoming: 'defer' } }, async ({ src, dst }) => {
      await src.untilMarker(0, 7n);
      await src.untilThread(0, (t) => t.ops_done! > 100n);
      const info = await src.migrateTo(dst, { resume: false, parameters: { 'downtime-limit': 300 } });
      expect(info.status).toBe('completed');
      // The destination's first read after the stream checks its RAM block against the program image.
      expect(Buffer.from(await dst.vm.readPhys(LAYOUT.program, 64)).equals(Buffer.from(src.program!.image.subarray(0, 64)))).toBe(true);
      expect(await compareRam(src, dst)).toMatchObject({ identical: true, differingPages: 0 });
      expect(await dst.ramDigest()).toBe(await src.ramDigest());
    }, { guestElf });
  });
});
