/**
 * The machine a run's VMs get, settled once per run before any property starts: the vCPU model
 * (the user's, or the default minus what this host refuses) and whether the configured machine
 * boots at all. A machine that cannot start is one host-level finding, not one failure per property.
 */
import { defaultVcpuModel, publishChoice, publishedChoice, type VcpuModelChoice } from '../../harness/vcpuChoice.js';
import { chooseVcpuModel, MachineStartError } from '../../harness/vcpuModel.js';
import type { HostFingerprint } from '../../harness/fingerprint.js';
import type { DeviationsFile, RunConfigMatch } from '../../reports/deviations.js';
import { matchDeviation } from '../../reports/deviations.js';
import type { HostFinding } from '../../reports/schema.js';
import { machineConfig, type RunOptions } from './options.js';

export { MachineStartError };

/** Host checks that are not properties of a family, as the known-deviations file names them. */
export const HOST_CHECKS = {
  vcpuModel: 'host.vcpu-model-starts',
  machine: 'host.machine-starts',
} as const;

/**
 * Settle the vCPU model for these options and publish it for every VM (and worker) of the run.
 * Throws MachineStartError when the configured machine does not start with any model.
 */
export async function settleVcpuModel(o: RunOptions, guestElf: string, opts: { fresh?: boolean } = {}): Promise<VcpuModelChoice> {
  const published = o.cpu === undefined && !opts.fresh ? publishedChoice(o.qemu, o.accel) : undefined;
  if (published) return published;
  const cfg = machineConfig({ ...o, cpu: o.cpu ?? defaultVcpuModel(o.accel) });
  const choice = await chooseVcpuModel(cfg, guestElf, { explicit: o.cpu !== undefined });
  if (o.cpu === undefined) publishChoice(choice);
  return choice;
}

/** The run's host-level findings, each classified against the known deviations. */
export function hostFindings(
  r: { choice?: VcpuModelChoice; startError?: MachineStartError },
  known: DeviationsFile,
  host: HostFingerprint,
  config?: RunConfigMatch,
): HostFinding[] {
  const out: HostFinding[] = [];
  const classify = (check: string, summary: string) => {
    const d = matchDeviation(known, check, summary, host, config);
    return d ? { status: 'known-deviation' as const, deviation: { id: d.id, citation: d.citation } } : { status: 'fail' as const };
  };
  if (r.choice?.fallback) {
    const f = r.choice.fallback;
    out.push({ check: HOST_CHECKS.vcpuModel, summary: f.reason, qemuMessage: f.qemuMessage, commandLine: f.commandLine, ...classify(HOST_CHECKS.vcpuModel, f.reason) });
  }
  if (r.startError) {
    const e = r.startError;
    out.push({ check: HOST_CHECKS.machine, summary: e.message, qemuMessage: e.qemuMessage, commandLine: e.commandLine, ...classify(HOST_CHECKS.machine, e.message) });
  }
  return out;
}
