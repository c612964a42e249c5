/**
 * Regenerates harness/fixtures/migration-stream-{source,destination}.bin.gz, real QEMU migration
 * streams of our guest for the stream reader's tests (harness/migrationStream.test.ts): a 2-vCPU
 * microvm (64 MiB, kvmclock on in vCPU 0) whose thread 0 dirties 16 pages in a loop is saved
 * live into a file (VmHandle.migrateViaFile: the source's stream, exactly as sent) and restored
 * into a destination, which is then saved again before it resumes (VmHandle.saveState). It also
 * prints what the run shows of kvmclock (qemu-kvmclock-save-before-resume in
 * reports/known-deviations.json): the clock the source sent, the one the destination saved, and
 * where the guest's clock stands after the destination resumed for 200 ms, with and without
 * that save. Run after a QEMU upgrade, review, commit.
 *
 *   node --import tsx scripts/capture-migration-stream-fixture.ts [--cpu MODEL]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { buildGuest } from '../harness/guest/build.js';
import { parseMigrationStream, sectionBytes } from '../harness/migrationStream.js';
import { withVms } from '../harness/session.js';
import { defaultMachineConfig } from '../harness/vm.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { MSR_KVM_SYSTEM_TIME_NEW } from '../generators/timers.js';
import { LAYOUT } from '../harness/guest/abi.js';

const cpuAt = process.argv.indexOf('--cpu');
const cfg = defaultMachineConfig({ cpus: 2, ...(cpuAt > 0 ? { cpuModel: process.argv[cpuAt + 1]! } : {}) });
const program: Program = {
  threads: [
    [
      { op: 'wrmsr', msr: MSR_KVM_SYSTEM_TIME_NEW, value: BigInt(LAYOUT.pvclock) | 1n },
      { op: 'loopBegin', count: 0 },
      { op: 'mark', value: 7n },
      { op: 'dirtyPages', base: 0x0200_0000n, pages: 16, stride: 4096 },
      { op: 'loopEnd' },
    ],
  ],
  canary: DEFAULT_CANARY,
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const clockOf = (b: Buffer) => Number(sectionBytes(b, parseMigrationStream(b).devices.find((d) => d.section.idstr === 'kvmclock')!).readBigUInt64BE(0)) / 1e9;
const guestElf = (await buildGuest()).elf;
const out = join(import.meta.dirname, '..', 'harness', 'fixtures');

for (const saveFirst of [true, false]) {
  await withVms(
    { src: { config: cfg, program }, dst: { config: cfg, incoming: 'defer', restoreFile: true } },
    async ({ src, dst }) => {
      await src.untilMarker(0, 7n);
      await sleep(500);
      await src.migrateViaFile(dst, { resume: false, live: true });
      const sent = readFileSync(dst.vm.restorePath!);
      await sleep(1000); // the destination waits, loaded, before it resumes
      let saved: Buffer | null = null;
      if (saveFirst) {
        const f = join(dst.vm.dir, 'saved.bin');
        await dst.saveState(f, join(dst.vm.dir, 'saved.sock'));
        saved = readFileSync(f);
        writeFileSync(join(out, 'migration-stream-source.bin.gz'), gzipSync(sent, { level: 9 }));
        writeFileSync(join(out, 'migration-stream-destination.bin.gz'), gzipSync(saved, { level: 9 }));
      }
      await dst.cont();
      await sleep(200);
      await dst.stop();
      const f = join(dst.vm.dir, 'after.bin');
      await dst.saveState(f, join(dst.vm.dir, 'after.sock'));
      console.log(
        `${saveFirst ? 'saved before it resumed' : 'not saved before it resumed'}: kvmclock sent by the source ${clockOf(sent).toFixed(3)} s` +
          `${saved ? `, saved by the destination 1 s later ${clockOf(saved).toFixed(3)} s` : ''}, after 200 ms of running ${clockOf(readFileSync(f)).toFixed(3)} s`,
      );
    },
    { guestElf },
  );
}
