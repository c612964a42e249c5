/**
 * Which vCPU model (-cpu) a run uses, and why.
 *
 * The default is `host` under KVM (`max` under TCG). Some hosts cannot start it: on AMD EPYC hosts
 * with kvm_pvm, KVM advertises IA32_ARCH_CAPABILITIES (MSR 0x10a) in its feature MSRs, QEMU 7.2
 * writes the advertised value back at vCPU set-up, KVM refuses it and QEMU aborts
 * (`error: failed to set MSR 0x10a to 0x69`, then `kvm_buf_set_msrs: Assertion ... failed`); with
 * kernel-irqchip=off, KVM refuses MSR_KVM_ASYNC_PF_INT the same way on any host. That
 * is a finding about the host, reported once; the run then uses the nearest model that starts:
 * the default minus the feature QEMU's error names. A model the user gives with --cpu is used as
 * given, with no fallback.
 *
 * The choice is made once per run (the CLI, or the test runner's global set-up) and handed to
 * every worker through the environment, so a VM never has to fail first to learn it.
 */
import { DEFAULT_CANARY } from '../ir/program.js';
import { encodeProgram } from './bytecode.js';
import { MAILBOX_STATE } from './guest/abi.js';
import { runVm, VmSetupError, type MachineConfig } from './vm.js';
import type { VcpuModelChoice } from './vcpuChoice.js';

/** A configured machine that does not start at all: a host-level finding, reported once per run. */
export class MachineStartError extends Error {
  override name = 'MachineStartError';
  constructor(
    message: string,
    readonly qemuMessage: string,
    readonly commandLine: readonly string[],
    readonly stderr: string,
  ) {
    super(message);
  }
}

/**
 * MSRs QEMU writes at vCPU set-up because a CPU feature is on, and that feature's -cpu property:
 * dropping the feature stops QEMU writing the MSR. (QEMU 7.2 target/i386/kvm/kvm.c
 * kvm_put_msrs(): MSR_IA32_ARCH_CAPABILITIES when CPUID.7.0:EDX.ARCH_CAPABILITIES is set,
 * MSR_IA32_PERF_CAPABILITIES when CPUID.1:ECX.PDCM is set, the VMX capability MSRs when VMX is on.)
 */
export const MSR_FEATURES: Readonly<Record<number, { name: string; feature: string }>> = {
  0x10a: { name: 'IA32_ARCH_CAPABILITIES', feature: 'arch-capabilities' },
  0x345: { name: 'IA32_PERF_CAPABILITIES', feature: 'pdcm' },
  0x480: { name: 'IA32_VMX_BASIC', feature: 'vmx' },
  // kvm_put_msrs() writes it when CPUID 0x4000_0001 has KVM_FEATURE_ASYNC_PF_INT; KVM refuses it
  // without an in-kernel LAPIC (kernel-irqchip=off): kvm_pv_enable_async_pf_int().
  0x4b564d06: { name: 'MSR_KVM_ASYNC_PF_INT', feature: 'kvm-asyncpf-int' },
};

/** How many features kvmprop drops, one after another, before it gives up on a default model. */
const MAX_FALLBACK_STEPS = 3;

/** The -cpu feature QEMU's refusal points at, or null when its words name none kvmprop knows. */
export function featureToDrop(qemuStderr: string): { msr: number; name: string; feature: string } | null {
  const m = /failed to set MSR (0x[0-9a-f]+)/i.exec(qemuStderr);
  if (!m) return null;
  const msr = Number(m[1]);
  const f = MSR_FEATURES[msr];
  return f ? { msr, ...f } : null;
}

const BOOT_PROGRAM = encodeProgram({ threads: [[{ op: 'mark', value: 1n }]], canary: DEFAULT_CANARY });

/** Boot the configuration once with a one-op program; resolves when the guest completed. */
export async function bootCheck(cfg: MachineConfig, guestElf: string): Promise<void> {
  let run;
  try {
    run = await runVm(cfg, { guestElf, program: BOOT_PROGRAM, nthreads: 1, label: 'boot-check', timeoutMs: 60_000, stallMs: 10_000 });
  } catch (e) {
    if (e instanceof VmSetupError) throw new MachineStartError(e.message, e.qemuMessage, e.commandLine, e.stderr);
    throw e;
  }
  if (run.outcome.kind !== 'completed' || run.mailbox.state !== BigInt(MAILBOX_STATE.done)) {
    const why = run.outcome.kind === 'vmm-crash' ? run.outcome.message : `the guest did not complete (${run.outcome.kind})`;
    throw new MachineStartError(`the configured machine does not run a guest: ${why}`, why, [cfg.qemu, ...run.args], run.stderr);
  }
}

/**
 * Choose the vCPU model for `cfg` (whose cpuModel is what was requested). With `explicit`, the
 * model is only checked, never changed. Throws MachineStartError when no model starts.
 */
export async function chooseVcpuModel(cfg: MachineConfig, guestElf: string, opts: { explicit: boolean }): Promise<VcpuModelChoice> {
  const requested = cfg.cpuModel;
  let model = requested;
  let first: MachineStartError | null = null;
  const dropped: { msr: number; name: string; feature: string }[] = [];
  for (;;) {
    try {
      await bootCheck({ ...cfg, cpuModel: model, cpus: Math.max(cfg.cpus, 2) }, guestElf);
    } catch (e) {
      if (!(e instanceof MachineStartError)) throw e;
      first ??= e;
      const drop = opts.explicit || dropped.length >= MAX_FALLBACK_STEPS ? null : featureToDrop(e.stderr);
      if (!drop || dropped.some((d) => d.feature === drop.feature)) {
        if (first === e) throw e;
        throw new MachineStartError(`${first.message}; -cpu ${model} does not start either: ${e.qemuMessage}`, first.qemuMessage, first.commandLine, first.stderr);
      }
      dropped.push(drop);
      model = `${model},-${drop.feature}`;
      continue;
    }
    if (!first) return { qemu: cfg.qemu, accel: cfg.accel, requested, used: model };
    const msrs = dropped.map((d) => `MSR 0x${d.msr.toString(16)} (${d.name})`).join(' and ');
    return {
      qemu: cfg.qemu,
      accel: cfg.accel,
      requested,
      used: model,
      fallback: {
        reason: `-cpu ${requested} cannot start on this host: KVM advertises ${msrs} but refuses the value QEMU writes back; running -cpu ${model} instead`,
        qemuMessage: first.qemuMessage,
        commandLine: first.commandLine,
      },
    };
  }
}
