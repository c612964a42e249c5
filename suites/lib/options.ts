/**
 * Run options: what `kvmprop run` was asked for. The CLI passes them to the vitest workers through
 * the environment (one variable, JSON), so a property file sees exactly what the user typed.
 */
import { resolve } from 'node:path';
import { defaultMachineConfig, type Accel, type MachineConfig, type MachineType } from '../../harness/vm.js';
import { defaultVcpuModel, publishedChoice } from '../../harness/vcpuChoice.js';

export const OPTIONS_ENV = 'KVMPROP_OPTIONS';

export interface RunOptions {
  readonly suites: readonly string[];
  /** Only properties whose id equals one of these (empty: all). */
  readonly properties: readonly string[];
  readonly runs: number;
  readonly seed: number;
  /** fast-check replay path: with seed, re-runs exactly one recorded counterexample. */
  readonly path?: string;
  readonly machine: MachineType;
  readonly accel: Accel;
  /**
   * The -cpu model the user gave (used as given, never changed). Absent: the default, `host`
   * (`max` under TCG) or the nearest model that starts on this host (harness/vcpuModel.ts).
   */
  readonly cpu?: string;
  readonly kernelIrqchip?: 'on' | 'split';
  readonly qemu: string;
  readonly qemuArgs: readonly string[];
  /** Absolute output directory (results.json, properties/, counterexamples/). */
  readonly out: string;
  /** Known-deviations file. */
  readonly deviations: string;
  /** Run against a deliberately broken system (bench/mutants.ts). */
  readonly mutant?: string;
  /** Per-VM limits. */
  readonly vmTimeoutMs: number;
  readonly stallMs: number;
}

export { PROJECT_ROOT } from '../../harness/guest/build.js';
import { PROJECT_ROOT } from '../../harness/guest/build.js';
export const DEFAULT_DEVIATIONS = resolve(PROJECT_ROOT, 'reports', 'known-deviations.json');

export function defaultOptions(over: Partial<RunOptions> = {}): RunOptions {
  const accel = over.accel ?? 'kvm';
  return {
    suites: ['leaks'],
    properties: [],
    runs: 25,
    seed: Date.now() % 2 ** 31,
    machine: 'microvm',
    accel,
    qemu: process.env.KVMPROP_QEMU || 'qemu-system-x86_64',
    qemuArgs: [],
    out: resolve(PROJECT_ROOT, 'results'),
    deviations: DEFAULT_DEVIATIONS,
    vmTimeoutMs: 120_000,
    stallMs: 3000,
    ...over,
  };
}

export function optionsToEnv(o: RunOptions): Record<string, string> {
  return { [OPTIONS_ENV]: JSON.stringify(o) };
}

export function optionsFromEnv(env: NodeJS.ProcessEnv = process.env): RunOptions {
  const raw = env[OPTIONS_ENV];
  if (!raw) return defaultOptions();
  return defaultOptions(JSON.parse(raw) as Partial<RunOptions>);
}

/** The machine a property's VMs run on, from the options. */
export function machineConfig(o: RunOptions, over: Partial<MachineConfig> = {}): MachineConfig {
  return defaultMachineConfig({
    qemu: o.qemu,
    machine: o.machine,
    accel: o.accel,
    cpuModel: vcpuModel(o),
    extraArgs: o.qemuArgs,
    ...(o.kernelIrqchip ? { kernelIrqchip: o.kernelIrqchip } : {}),
    ...over,
  });
}

/** The -cpu model the run's VMs get: the user's, or the one the run chose for this host. */
export function vcpuModel(o: RunOptions): string {
  return o.cpu ?? publishedChoice(o.qemu, o.accel)?.used ?? defaultVcpuModel(o.accel);
}
