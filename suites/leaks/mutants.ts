/**
 * The leak family's mutants: deliberately broken systems each leak property must fail on, with a
 * shrunk counterexample (the proof that its oracle can fail). suites/leaks/sensitivity.test.ts
 * runs them; `kvmprop run --mutant NAME` runs any property against one by hand. Each names the VM
 * roles it changes (suites/lib/run.ts VmRole): changing the workload VMs but not the one facts are
 * read from makes the model and the system disagree.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HOST_PATTERN } from '../../models/hostPattern.js';
import type { MachineConfig } from '../../harness/vm.js';
import type { Mutant } from '../lib/family.js';

/**
 * A CPU feature every x86-64 host and both TCG test models (Skylake-Client-v3, EPYC-v3) have, that
 * TCG emulates (so it is not filtered there) and the guest does not depend on: CMPXCHG16B.
 */
const DROPPED_FEATURE = 'cx16';

const cpuWithout = (cfg: MachineConfig) => ['-cpu', `${cfg.cpuModel},-${DROPPED_FEATURE}`];

export const LEAK_MUTANTS: readonly Mutant[] = [
  {
    name: 'leaky-dimm',
    description:
      'A 2 MiB host file full of the leak pattern, mapped into the guest as a pc-dimm at 4 GiB: host data outside guest RAM that device reads can see.',
    breaks: ['leaks.device.no-host-pattern'],
    roles: 'all',
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
  {
    name: 'cpuid-drop-feature',
    description: `Workload VMs run -cpu <model>,-${DROPPED_FEATURE}; the VM QEMU's CPU model is read from does not, so CPUID disagrees with query-cpu-model-expansion (which honours -cpu properties).`,
    breaks: ['leaks.cpuid.rules'],
    roles: ['calibration', 'workload', 'a', 'b'],
    sensitivity: { accel: 'tcg', cpu: 'Skylake-Client-v3' },
    async qemuArgs({ config }) {
      return cpuWithout(config);
    },
  },
  {
    name: 'cpuid-vary-between-vms',
    description: `The second fresh VM of a determinism case runs -cpu <model>,-${DROPPED_FEATURE}: the same (leaf, subleaf) answers differently in two VMs.`,
    breaks: ['leaks.cpuid.deterministic'],
    roles: ['b'],
    sensitivity: { accel: 'tcg', cpu: 'Skylake-Client-v3' },
    async qemuArgs({ config }) {
      return cpuWithout(config);
    },
  },
  {
    name: 'phantom-port',
    description:
      'Workload VMs (not the one the device map is read from) get a second isa-debug-exit claiming ports 0x200-0x27f, which read as 0: ports the model believes unclaimed (all-ones) answer something else.',
    breaks: ['leaks.device.unclaimed'],
    roles: ['calibration', 'workload', 'a', 'b'],
    async qemuArgs() {
      return ['-device', 'isa-debug-exit,iobase=0x200,iosize=0x80'];
    },
  },
];
