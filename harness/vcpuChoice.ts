/**
 * The vCPU model a run chose (harness/vcpuModel.ts chooses it), as every process of the run reads
 * it: the CLI or the test runner's global set-up publishes it in the environment once, and
 * defaultMachineConfig() picks it up, so no VM has to fail first to learn it.
 */
export type Accel = 'kvm' | 'tcg';

export const VCPU_CHOICE_ENV = 'KVMPROP_VCPU_MODEL';

export interface VcpuModelChoice {
  readonly qemu: string;
  readonly accel: Accel;
  /** What was asked for ('host' / 'max' by default, or the user's --cpu). */
  readonly requested: string;
  /** What every VM of the run gets. */
  readonly used: string;
  /** Present when the requested model could not start and `used` is the nearest one that did. */
  readonly fallback?: VcpuFallback;
}

export interface VcpuFallback {
  /** One line: what the host refused, and what kvmprop did about it. */
  readonly reason: string;
  /** QEMU's own words for the failed start. */
  readonly qemuMessage: string;
  /** The exact command line that failed. */
  readonly commandLine: readonly string[];
}

export function defaultVcpuModel(accel: Accel): string {
  return accel === 'kvm' ? 'host' : 'max';
}

/** The choice the run made, if this process was handed one for this QEMU and accelerator. */
export function publishedChoice(qemu: string, accel: Accel, env: NodeJS.ProcessEnv = process.env): VcpuModelChoice | undefined {
  const raw = env[VCPU_CHOICE_ENV];
  if (!raw) return undefined;
  try {
    const c = JSON.parse(raw) as VcpuModelChoice;
    return c.qemu === qemu && c.accel === accel ? c : undefined;
  } catch {
    return undefined;
  }
}

export function publishChoice(c: VcpuModelChoice, env: NodeJS.ProcessEnv = process.env): void {
  env[VCPU_CHOICE_ENV] = JSON.stringify(c);
}

