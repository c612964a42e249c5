/** What every bench starts from: the run's environment, and a harness-vs-raw-QEMU timing of one case. */
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { encodeProgram } from '../harness/bytecode.js';
import { createPrivateDir, removePrivateDir } from '../harness/runtime.js';
import { qemuArgs, rawQemuArgs, type MachineConfig } from '../harness/vm.js';
import type { Program } from '../ir/program.js';
import { loadDeviations } from '../reports/deviations.js';
import { defaultOptions, machineConfig, type RunOptions } from '../suites/lib/options.js';
import { Metrics, type AnyProperty, type PropertyEnv } from '../suites/lib/property.js';
import { checkCase, propertyEnv, type BaseEnv } from '../suites/lib/runner.js';
import { Waiver } from '../suites/lib/waive.js';

/** The run's environment with default options (and `over`), writing next to `outFile`. */
export async function benchEnv(outFile: string, over: Partial<RunOptions> = {}): Promise<{ base: BaseEnv; env: PropertyEnv }> {
  const base = await propertyEnv(defaultOptions({ out: dirname(outFile), ...over }));
  return { base, env: { ...base, metrics: new Metrics() } };
}

// Moved to the harness (kvmprop repro writes raw command lines too); benches keep importing it here.
export { rawQemuArgs } from '../harness/vm.js';

export interface Case {
  readonly name: string;
  readonly property: AnyProperty;
  readonly workload: unknown;
  readonly program: Program;
  /** What the rate counts: CPUID queries or device accesses. */
  readonly unit: string;
  readonly units: number;
  readonly cpus: number;
  /** The machine the property's VMs run (timers: KVM's irqchip, microvm's RTC and PIT, the TSC rate). */
  readonly config?: Partial<MachineConfig>;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function timeHarness(c: Case, facts: unknown, env: PropertyEnv): Promise<number> {
  // The host's known deviations are waived, as in a run.
  const waiver = new Waiver(loadDeviations(env.options.deviations), c.property.id, env.host, { accel: env.options.accel, machine: env.options.machine });
  const t = performance.now();
  const f = await checkCase(c.property, c.workload, facts, env, waiver);
  const ms = performance.now() - t;
  if (f) throw new Error(`${c.name}: the case failed (${f.rule}): ${f.difference.summary}`);
  return ms;
}

/** The same VM without the harness: same binary, same program, same RAM file, no QMP, no -S. */
async function timeRaw(c: Case, env: PropertyEnv): Promise<number> {
  // No exit handshake: nothing reads the host's counters before QEMU exits.
  const image = encodeProgram({ ...c.program, holdExit: false });
  const cfg = machineConfig(env.options, { ...c.config, cpus: c.cpus, ramMiB: Math.max(64, image.minRamMiB) });
  const dir = await createPrivateDir('bench-raw');
  try {
    const program = join(dir, 'program.bin');
    writeFileSync(program, image.image);
    const all = qemuArgs(cfg, { kernel: env.guestElf, ram: join(dir, 'ram'), qmpSocket: join(dir, 'unused.sock'), program });
    const args = rawQemuArgs(all);
    const t = performance.now();
    const r = await execa(cfg.qemu, args, { reject: false, stdin: 'ignore' });
    const ms = performance.now() - t;
    if (r.exitCode !== 33) throw new Error(`${c.name}: raw QEMU exited ${r.exitCode}: ${r.stderr.slice(0, 300)}`);
    return ms;
  } finally {
    await removePrivateDir(dir);
  }
}

export interface BenchCase {
  readonly c: Case;
  readonly facts: unknown;
  /** The environment it runs in (default: the one benchCases is given). */
  readonly env?: PropertyEnv;
}

/** Each case: a warm-up, then `rounds` alternating harness and raw runs; medians and their ratio, printed and returned. */
export async function benchCases(cases: readonly BenchCase[], env: PropertyEnv, rounds: number): Promise<Record<string, unknown>[]> {
  const report: Record<string, unknown>[] = [];
  for (const { c, facts, env: own } of cases) {
    const e = own ?? env;
    const harness: number[] = [];
    const raw: number[] = [];
    await timeHarness(c, facts, e); // warm caches (page cache, tsx, JIT)
    await timeRaw(c, e);
    for (let r = 0; r < rounds; r++) {
      harness.push(await timeHarness(c, facts, e));
      raw.push(await timeRaw(c, e));
    }
    const h = median(harness);
    const w = median(raw);
    const row = {
      case: c.name,
      accel: e.options.accel,
      rounds,
      units: c.units,
      unit: c.unit,
      harnessMsMedian: Math.round(h),
      rawMsMedian: Math.round(w),
      ratio: Number((h / w).toFixed(3)),
      endToEndPerSecond: Math.round((c.units / h) * 1000),
      rawPerSecond: Math.round((c.units / w) * 1000),
      harnessMs: harness.map(Math.round),
      rawMs: raw.map(Math.round),
    };
    report.push(row);
    process.stdout.write(
      `${c.name}: ${c.units} ${c.unit}; harness ${row.harnessMsMedian} ms vs raw boot-to-exit ${row.rawMsMedian} ms (median of ${rounds}) → ratio ${row.ratio}; end to end ${row.endToEndPerSecond} ${c.unit}/s (raw ${row.rawPerSecond}/s)\n`,
    );
  }
  return report;
}
