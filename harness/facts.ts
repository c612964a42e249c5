/**
 * Host facts the models need, taken from QEMU itself for the exact machine configuration under
 * test: the device map (`info mtree -f`, after the firmware has set the machine up) and QEMU's
 * expansion of the CPU model (`query-cpu-model-expansion`).
 */
import { DEFAULT_CANARY } from '../ir/program.js';
import type { DeviceMap } from '../ir/deviceMap.js';
import { encodeProgram } from './bytecode.js';
import { MAILBOX_STATE } from './guest/abi.js';
import { deviceMapFromMtree } from './mtree.js';
import { Vm, VmSetupError, type MachineConfig } from './vm.js';

export interface CpuModelExpansion {
  readonly name: string;
  /** Every property QEMU reports: feature flags (booleans) and values (level, vendor, model-id, ...). */
  readonly props: Readonly<Record<string, unknown>>;
}

/** One word of the vCPU's `filtered-features` (QEMU X86CPUFeatureWordInfo). */
export interface FilteredFeatureWord {
  readonly 'cpuid-input-eax': number;
  readonly 'cpuid-input-ecx'?: number;
  readonly 'cpuid-register': 'EAX' | 'EBX' | 'ECX' | 'EDX';
  readonly features: number;
}

export interface MachineFacts {
  readonly deviceMap: DeviceMap;
  readonly mtreeText: string;
  /** QEMU's expansion of the configured CPU model: the model, before the accelerator had its say. */
  readonly cpu: CpuModelExpansion;
  /**
   * Features the model asks for that the accelerator could not give the running vCPU (its
   * `filtered-features` property; TCG drops pcid, x2apic, rdseed, xsavec, ... of Skylake-Client):
   * the guest reads them as 0 although the expansion says they are on. Only non-empty words.
   */
  readonly filteredFeatures: readonly FilteredFeatureWord[];
  readonly qemuVersion: string;
}

/** Properties QEMU takes as strings even when they look like numbers. */
const STRING_PROPS = new Set(['model-id', 'vendor']);

/** 'host,-sse4.2,+x2apic,level=13' → { name: 'host', props: { 'sse4.2': false, x2apic: true, level: 13 } } */
export function parseCpuModel(spec: string): { name: string; props: Record<string, unknown> } {
  const [name, ...rest] = spec.split(',');
  const props: Record<string, unknown> = {};
  for (const p of rest) {
    if (p.startsWith('+')) props[p.slice(1)] = true;
    else if (p.startsWith('-')) props[p.slice(1)] = false;
    else if (p.includes('=')) {
      const at = p.indexOf('=');
      const k = p.slice(0, at);
      const v = p.slice(at + 1);
      if (STRING_PROPS.has(k)) props[k] = v;
      else props[k] = v === 'on' ? true : v === 'off' ? false : /^(\d+|0x[0-9a-f]+)$/i.test(v) ? Number(v) : v;
    } else if (p) props[p] = true;
  }
  return { name: name ?? 'host', props };
}

const cache = new Map<string, Promise<MachineFacts>>();

/**
 * Facts for a configuration, gathered once per process. `prepare` adds per-VM arguments (a mutant);
 * `variant` names it for the cache.
 */
export function machineFacts(
  cfg: MachineConfig,
  guestElf: string,
  extra: { prepare?: (dir: string) => Promise<readonly string[]>; variant?: string } = {},
): Promise<MachineFacts> {
  const key = JSON.stringify([cfg, extra.variant ?? '']);
  let p = cache.get(key);
  if (!p) {
    p = probeMachineFacts(cfg, guestElf, extra.prepare);
    p.catch(() => cache.delete(key));
    cache.set(key, p);
  }
  return p;
}

export async function probeMachineFacts(
  cfg: MachineConfig,
  guestElf: string,
  prepare?: (dir: string) => Promise<readonly string[]>,
): Promise<MachineFacts> {
  // A guest that spins forever: the map is read once it runs, i.e. after firmware set up the machine.
  const program = encodeProgram({ threads: [[{ op: 'loopBegin', count: 0 }, { op: 'mark', value: 1n }, { op: 'loopEnd' }]], canary: DEFAULT_CANARY });
  const vm = await Vm.start(cfg, { guestElf, program, label: 'facts', ...(prepare ? { prepare } : {}) });
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const { mailbox } = await vm.readMailbox();
      if (mailbox.state === BigInt(MAILBOX_STATE.running)) break;
      if (vm.hasExited || Date.now() > deadline) {
        throw new VmSetupError(`the facts VM did not start its guest: ${vm.stderr.trim().split('\n')[0] ?? 'no output'}`, vm.stderr);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    const mtreeText = await vm.qmp.hmp('info mtree -f');
    const model = parseCpuModel(cfg.cpuModel);
    const expansion = await vm.qmp.execute<{ model: { name: string; props?: Record<string, unknown> } }>('query-cpu-model-expansion', {
      type: 'full',
      model: { name: model.name, ...(Object.keys(model.props).length ? { props: model.props } : {}) },
    });
    const cpus = await vm.qmp.execute<{ 'qom-path': string }[]>('query-cpus-fast');
    const filtered = cpus[0]
      ? await vm.qmp.execute<FilteredFeatureWord[]>('qom-get', { path: cpus[0]['qom-path'], property: 'filtered-features' })
      : [];
    const version = await vm.qmp.execute<{ qemu: { major: number; minor: number; micro: number }; package: string }>('query-version');
    return {
      deviceMap: deviceMapFromMtree(mtreeText),
      mtreeText,
      cpu: { name: expansion.model.name, props: expansion.model.props ?? {} },
      filteredFeatures: filtered.filter((w) => w.features !== 0),
      qemuVersion: `${version.qemu.major}.${version.qemu.minor}.${version.qemu.micro}${version.package ? ` (${version.package.trim()})` : ''}`,
    };
  } finally {
    await vm.dispose();
  }
}
