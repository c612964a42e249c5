/**
 * A CPUID case, a device-read case and a timer schedule, each side by side with a raw QEMU
 * boot-to-exit of the same guest binary running the same program on the same machine: how much the
 * harness (QMP, watching, collecting, decoding, the model's comparison) adds to the VM itself, and
 * the end-to-end rates. The timer goal is a ratio of at most 1.3.
 *
 * Rounds alternate harness and raw runs on the same machine in one process; medians are reported
 * (this host is shared and noisy: only ratios measured together mean anything).
 *
 *   npm run bench            (or: node --import tsx bench/leakCase.bench.ts [--rounds N] [--out FILE])
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuidOps, queryCount, type CpuidWorkload } from '../generators/cpuid.js';
import { deviceReadOps, mmioLimit, type DeviceReadWorkload } from '../generators/deviceReads.js';
import { DEFAULT_CANARY } from '../ir/program.js';
import fc from 'fast-check';
import { buildFromCommands, savedCase } from '../generators/commands.js';
import { emptySchedule, type TimerSchedule } from '../generators/timers.js';
import { lapicSchedule } from '../suites/timers/lapic.js';
import type { TimerFacts } from '../suites/timers/clock.js';
import { cpuidRules } from '../suites/leaks/cpuid.js';
import { accessCount, deviceReadsDefinedBytes } from '../suites/leaks/deviceReads.js';
import { PROJECT_ROOT } from '../suites/lib/options.js';
import { benchCases, benchEnv, type BenchCase } from './env.js';

const { values } = parseArgs({ options: { rounds: { type: 'string' }, out: { type: 'string' } } });
const ROUNDS = Number(values.rounds ?? 7);
const OUT = values.out ?? join(PROJECT_ROOT, 'bench', 'results', 'bench.json');

/** A CPUID case across every range: 6,656 queries on each of 2 vCPUs, at CPL 0 as leaks.cpuid.rules asks them. */
const CPUID_CASE: CpuidWorkload = {
  sweeps: [
    { leaf: 0, leafCount: 40, subleaf: 0, subleafCount: 64, cpl: 0 },
    { leaf: 0x4000_0000, leafCount: 16, subleaf: 0, subleafCount: 8, cpl: 0 },
    { leaf: 0x8000_0000, leafCount: 16, subleaf: 0, subleafCount: 32, cpl: 0 },
    { leaf: 0x1234_5678, leafCount: 8, subleaf: 0xffff_ff00, subleafCount: 16, cpl: 0 },
    { leaf: 0xc000_0000, leafCount: 8, subleaf: 0, subleafCount: 16, cpl: 0 },
  ],
  repeat: 2,
};

/**
 * A device-read case over claimed and unclaimed ports and MMIO, every width and form: 12,352
 * accesses, the size of an average generated case (the suite's 50-run acceptance run averaged
 * ~14,000 per VM).
 */
const DEVICE_CASE: DeviceReadWorkload = {
  sweeps: [
    { space: 'pio', form: 'reg', windowStart: 0x3f8n, windowSize: 8, offset: 0, width: 1, count: 1024, stride: 1, repCount: 1 },
    { space: 'pio', form: 'reg', windowStart: 0x20n, windowSize: 2, offset: 0, width: 1, count: 512, stride: 1, repCount: 1 },
    { space: 'pio', form: 'reg', windowStart: 0x100n, windowSize: 0x200, offset: 0, width: 2, count: 1024, stride: 3, repCount: 1 },
    { space: 'pio', form: 'string', windowStart: 0x500n, windowSize: 0x10, offset: 0, width: 4, count: 256, stride: 4, repCount: 8 },
    { space: 'pio', form: 'reg', windowStart: 0x40n, windowSize: 4, offset: 0, width: 1, count: 512, stride: 1, repCount: 1 },
    { space: 'mmio', form: 'reg', windowStart: 0xfee00000n, windowSize: 0x400, offset: 0, width: 4, count: 1024, stride: 16, repCount: 1 },
    { space: 'mmio', form: 'reg', windowStart: 0xfec00000n, windowSize: 0x20, offset: 0, width: 4, count: 1024, stride: 4, repCount: 1 },
    { space: 'mmio', form: 'reg', windowStart: 0xd000_0000n, windowSize: 4096, offset: 0, width: 8, count: 1024, stride: 8, repCount: 1 },
    { space: 'mmio', form: 'string', windowStart: 0xfeb00000n, windowSize: 0x200, offset: 0, width: 4, count: 256, stride: 32, repCount: 8 },
    { space: 'mmio', form: 'reg', windowStart: 0xffff0000n, windowSize: 4096, offset: 0, width: 8, count: 1024, stride: 8, repCount: 1 },
    { space: 'mmio', form: 'reg', windowStart: 0x1_0000_0000n, windowSize: 4096, offset: 0, width: 4, count: 1024, stride: 4, repCount: 1 },
  ],
};

async function main(): Promise<void> {
  const { base, env } = await benchEnv(OUT);
  const cpuidFacts = await cpuidRules.facts(env);
  const deviceFacts = await deviceReadsDefinedBytes.facts(env);
  const cpuidOpsList = cpuidOps({ ...CPUID_CASE });
  const deviceOps = deviceReadOps(DEVICE_CASE);
  const cases: BenchCase[] = [
    {
      facts: cpuidFacts,
      c: {
        name: 'cpuid (leaks.cpuid.rules, 2 vCPUs)',
        property: cpuidRules,
        workload: CPUID_CASE,
        program: { threads: [cpuidOpsList, cpuidOpsList], canary: DEFAULT_CANARY },
        unit: 'CPUID queries',
        units: 2 * queryCount(CPUID_CASE),
        cpus: 2,
      },
    },
    {
      facts: deviceFacts,
      c: {
        name: 'device reads (leaks.device.defined-bytes, 1 vCPU)',
        property: deviceReadsDefinedBytes,
        workload: DEVICE_CASE,
        program: { threads: [deviceOps], canary: DEFAULT_CANARY, mapLimit: mmioLimit((deviceFacts as { deviceMap: Parameters<typeof mmioLimit>[0] }).deviceMap) },
        unit: 'device reads',
        units: deviceOps.reduce((n, o) => n + accessCount(o as Parameters<typeof accessCount>[0]), 0),
        cpus: 1,
      },
    },
  ];
  // A LAPIC schedule as timers.lapic.schedule generates them (seed 5, the first with a wait on
  // both vCPUs), run as its saved program: the harness side judges it with the model.
  const timerFacts = (await lapicSchedule.facts(env)) as TimerFacts;
  const [commands] = fc.sample(lapicSchedule.arbitrary(timerFacts, env) as fc.Arbitrary<Iterable<fc.Command<TimerSchedule, never>>>, { seed: 5, numRuns: 1 });
  const built = buildFromCommands<TimerSchedule>(commands as never, () => emptySchedule(2), { maxThreads: 2, threads: 2 });
  cases.push({
    facts: timerFacts,
    c: {
      name: `timer schedule (timers.lapic.schedule, 2 vCPUs, ${built.ran.length} commands)`,
      property: lapicSchedule,
      workload: savedCase(built),
      program: built.program,
      unit: 'timer events',
      units: built.model.events.length,
      cpus: 2,
      config: timerFacts.machine,
    },
  });
  const report = await benchCases(cases, env, ROUNDS);
  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(OUT, JSON.stringify({ host: base.host.kernel.release, qemu: base.host.qemu.version, measuredAt: new Date().toISOString(), cases: report }, null, 2) + '\n');
  process.stdout.write(`written: ${OUT}\n`);
}

await main();
