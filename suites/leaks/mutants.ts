/**
 * The mutant catalog: deliberately broken systems under test. Each one is a QEMU configuration a
 * property must fail on, with a shrunk counterexample — the proof that its oracle can fail. The
 * sensitivity tests (suites/<family>/sensitivity.test.ts) run them; `kvmprop run --mutant NAME`
 * runs any property against one by hand.
 *
 * A mutant adds QEMU arguments per VM; `label` says which VM of a case it is ('facts' for the VM
 * the device map and CPU model are read from, 'cpuid-calibration', 'det-a'/'det-b', 'stable-a'/'stable-b', ...).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HOST_PATTERN } from '../models/hostPattern.js';
import type { MachineConfig, MachineType } from '../harness/vm.js';

export interface MutantVm {
  readonly label: string;
  /** The VM's private directory, for files the mutant needs. */
  readonly dir: string;
  readonly config: MachineConfig;
}

export interface Mutant {
  readonly name: string;
  readonly description: string;
  /** Properties this mutant must make fail. */
  readonly breaks: readonly string[];
  /** A machine type the mutant needs. */
  readonly machine?: MachineType;
  /**
   * The configuration its sensitivity test runs in, chosen so that no deviation of the host under
   * test can mask the mutant: CPUID mutants run under TCG with a fixed CPU model, where QEMU's own
   * CPUID is the reference on any host, whatever its vendor or its KVM.
   */
  readonly sensitivity?: { readonly accel: 'kvm' | 'tcg'; readonly cpu?: string };
  qemuArgs(vm: MutantVm): Promise<readonly string[]>;
}

/**
 * A CPU feature every x86-64 host and both TCG test models (Skylake-Client-v3, EPYC-v3) have, that
 * TCG emulates (so it is not filtered there) and the guest does not depend on: CMPXCHG16B.
 */
const DROPPED_FEATURE = 'cx16';

const cpuWithout = (cfg: MachineConfig) => ['-cpu', `${cfg.cpuModel},-${DROPPED_FEATURE}`];

export const MUTANTS: Readonly<Record<string, Mutant>> = {
  'leaky-dimm': {
    name: 'leaky-dimm',
    description:
      'A 2 MiB host file full of the leak pattern, mapped into the guest as a pc-dimm at 4 GiB: host data outside guest RAM that device reads can see.',
    breaks: ['leaks.device.no-host-pattern'],
    machine: 'pc',
    async qemuArgs({ dir, config }) {
      const file = join(dir, 'leak.bin');
      await writeFile(file, Buffer.alloc(2 << 20, Buffer.from(HOST_PATTERN)), { mode: 0o600 });
      return [
        '-m', `${config.ramMiB}M,slots=1,maxmem=${config.ramMiB + 1024}M`,
        '-object', `memory-backend-file,id=leak,size=2M,mem-path=${file},share=on`,
        '-device', 'pc-dimm,memdev=leak',
      ];
    },
  },
  'cpuid-drop-feature': {
    name: 'cpuid-drop-feature',
    description: `Workload VMs run -cpu <model>,-${DROPPED_FEATURE}; the VM QEMU's CPU model is read from does not, so CPUID disagrees with query-cpu-model-expansion (which honours -cpu properties).`,
    breaks: ['leaks.cpuid.rules'],
    sensitivity: { accel: 'tcg', cpu: 'Skylake-Client-v3' },
    async qemuArgs({ label, config }) {
      return label === 'facts' ? [] : cpuWithout(config);
    },
  },
  'cpuid-vary-between-vms': {
    name: 'cpuid-vary-between-vms',
    description: `The second fresh VM of a determinism case runs -cpu <model>,-${DROPPED_FEATURE}: the same (leaf, subleaf) answers differently in two VMs.`,
    breaks: ['leaks.cpuid.deterministic'],
    sensitivity: { accel: 'tcg', cpu: 'Skylake-Client-v3' },
    async qemuArgs({ label, config }) {
      return label === 'det-b' ? cpuWithout(config) : [];
    },
  },
  'phantom-port': {
    name: 'phantom-port',
    description:
      'Workload VMs (not the one the device map is read from) get a second isa-debug-exit claiming ports 0x200-0x27f, which read as 0: ports the model believes unclaimed (all-ones) answer something else.',
    breaks: ['leaks.device.unclaimed'],
    async qemuArgs({ label }) {
      return label === 'facts' ? [] : ['-device', 'isa-debug-exit,iobase=0x200,iosize=0x80'];
    },
  },
};

export class UnknownMutantError extends Error {
  override name = 'UnknownMutantError';
}

export function mutantNamed(name: string): Mutant {
  const m = MUTANTS[name];
  if (!m) throw new UnknownMutantError(`unknown mutant '${name}' (known: ${Object.keys(MUTANTS).join(', ')})`);
  return m;
}

/** The per-VM prepare hook for a mutant, or undefined. */
export function mutantPrepare(name: string | undefined, label: string, config: MachineConfig): ((dir: string) => Promise<readonly string[]>) | undefined {
  if (!name) return undefined;
  const m = mutantNamed(name);
  return (dir) => m.qemuArgs({ label, dir, config });
}
