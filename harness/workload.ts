/**
 * Run one IR program in a fresh VM and hand back its records, decoded against the same op table
 * the guest ran. This is the harness's whole contract with suites: Program in, observations out.
 */
import type { OpRecord } from '../ir/ops.js';
import type { Program } from '../ir/program.js';
import { decodeRecords, encodeProgram, type ProgramImage } from './bytecode.js';
import { runVm, type MachineConfig, type VmOutcome, type VmRunResult } from './vm.js';

export interface WorkloadRun {
  readonly vm: VmRunResult;
  readonly image: ProgramImage;
  /** records[i]: thread i's decoded records; empty when the VM did not complete. */
  readonly records: readonly (readonly OpRecord[])[];
  /** Set when the observation bytes could not be decoded (a guest/encoder mismatch or corruption). */
  readonly decodeError?: string;
}

export interface WorkloadOptions {
  readonly guestElf: string;
  readonly label?: string;
  readonly timeoutMs?: number;
  readonly stallMs?: number;
  readonly prepare?: (dir: string) => Promise<readonly string[]>;
}

export async function runWorkload(cfg: MachineConfig, program: Program, opts: WorkloadOptions): Promise<WorkloadRun> {
  const image = encodeProgram(program);
  const vmCfg: MachineConfig = {
    ...cfg,
    cpus: Math.max(cfg.cpus, program.threads.length),
    ramMiB: Math.max(cfg.ramMiB, image.minRamMiB),
  };
  const vm = await runVm(vmCfg, {
    guestElf: opts.guestElf,
    program: image,
    nthreads: program.threads.length,
    ...(opts.label ? { label: opts.label } : {}),
    ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
    ...(opts.stallMs ? { stallMs: opts.stallMs } : {}),
    ...(opts.prepare ? { prepare: opts.prepare } : {}),
  });
  const records: OpRecord[][] = [];
  let decodeError: string | undefined;
  try {
    program.threads.forEach((ops, i) => {
      const t = vm.threads[i];
      records.push(t ? decodeRecords(ops, t.records, t.records.length) : []);
    });
  } catch (e) {
    decodeError = e instanceof Error ? e.message : String(e);
  }
  return { vm, image, records, ...(decodeError ? { decodeError } : {}) };
}

/** One line saying how a VM ended, for failure messages. */
export function describeOutcome(o: VmOutcome): string {
  switch (o.kind) {
    case 'completed':
      return 'the guest completed';
    case 'internal-error':
      return `KVM stopped the VM (QEMU status '${o.status}'): ${firstLines(o.dump, 2)}`;
    case 'hang':
      return o.thread < 0
        ? `the guest hung while booting (no progress for ${o.stalledMs} ms)`
        : `vCPU ${o.thread} made no progress for ${o.stalledMs} ms (an instruction that never returns, or a halted vCPU)`;
    case 'guest-reset':
      return `the guest reset (${o.reason}; a triple fault ends this way)`;
    case 'vmm-crash':
      return `QEMU itself died while the guest ran (${o.signal ? `signal ${o.signal}` : `exit status ${o.exitCode ?? '-'}`}): ${o.message || 'it printed nothing'}`;
    case 'timeout':
      return `the VM did not finish within ${o.afterMs} ms`;
  }
}

function firstLines(text: string, n: number): string {
  return text.split('\n').filter((l) => l.trim()).slice(0, n).join(' / ');
}

/** The guest's own verdict: which threads failed and why, from its TAP lines and mailbox. */
export function guestProblems(run: WorkloadRun): string[] {
  const out: string[] = [];
  if (run.vm.outcome.kind !== 'completed') out.push(describeOutcome(run.vm.outcome));
  if (run.vm.tap.bailout) out.push(`guest bailed out: ${run.vm.tap.bailout}`);
  for (const r of run.vm.tap.results) if (!r.ok) out.push(`guest: not ok ${r.id} - ${r.name}`);
  const { plan, results } = run.vm.tap;
  if (run.vm.outcome.kind === 'completed' && !run.vm.tap.bailout && (plan === null || results.length !== plan)) {
    out.push(`the guest's TAP output is incomplete (plan ${plan ?? 'missing'}, ${results.length} results)`);
  }
  if (run.decodeError) out.push(`observations could not be decoded: ${run.decodeError}`);
  return out;
}
