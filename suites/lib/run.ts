/**
 * Run a program for a property. When the host or the guest fails to produce observations (KVM
 * stopped the VM, a vCPU never came back, the guest bailed out), that is itself the finding: it
 * comes back as a Failure naming the op that was executing, with QEMU's own evidence attached.
 */
import type { Op } from '../../ir/ops.js';
import type { Program } from '../../ir/program.js';
import { opIndexAtOffset } from '../../harness/bytecode.js';
import type { MachineConfig } from '../../harness/vm.js';
import { machineFacts, type MachineFacts } from '../../harness/facts.js';
import { mutantPrepare } from '../../bench/mutants.js';
import { describeOutcome, guestProblems, runWorkload, type WorkloadRun } from '../../harness/workload.js';
import { machineConfig } from './options.js';
import { fail, PASS, type Failure, type SuiteEnv, type Verdict } from './property.js';

/**
 * A run that produced no observations: `failure` says why; `verdict` is what a property returns
 * for it: the failure, or PASS when a known deviation covers exactly it (a QEMU that this host's
 * configuration is known to crash), so the property goes on with its next case.
 */
export type RunOutcome =
  | { readonly ok: true; readonly run: WorkloadRun }
  | { readonly ok: false; readonly failure: Failure; readonly verdict: Verdict };

function describeOp(o: Op | undefined): string {
  if (!o) return '(no op)';
  const args = Object.entries(o)
    .filter(([k]) => k !== 'op')
    .map(([k, v]) => `${k}=${typeof v === 'bigint' || (typeof v === 'number' && v > 9) ? `0x${v.toString(16)}` : String(v)}`);
  return `${o.op}(${args.join(', ')})`;
}

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n');
}

/** Where each thread stood when the VM stopped: the op it was executing. */
export function threadPositions(program: Program, run: WorkloadRun): { thread: number; state: number; op: number; what: string }[] {
  return program.threads.map((ops, i) => {
    const st = run.vm.threads[i]?.status;
    const pc = Number(st?.pc ?? 0n);
    const op = opIndexAtOffset(ops, pc);
    return { thread: i, state: Number(st?.state ?? 0n), op, what: describeOp(ops[op]) };
  });
}

export async function runProgram(
  env: SuiteEnv,
  program: Program,
  opts: { label: string; config?: Partial<MachineConfig> },
): Promise<RunOutcome> {
  const cfg = machineConfig(env.options, opts.config);
  const prepare = mutantPrepare(env.options.mutant, opts.label, cfg);
  const run = await runWorkload(cfg, program, {
    guestElf: env.guestElf,
    label: opts.label,
    timeoutMs: env.options.vmTimeoutMs,
    stallMs: env.options.stallMs,
    ...(prepare ? { prepare } : {}),
  });
  env.metrics.add('vms');
  const problems = guestProblems(run);
  if (problems.length === 0) return { ok: true, run };
  const o = run.vm.outcome;
  const where = threadPositions(program, run);
  const stuck = o.kind === 'hang' && o.thread >= 0 ? where[o.thread] : where.find((w) => w.state === 1) ?? where[0];
  const at = stuck && o.kind !== 'completed' ? ` while vCPU ${stuck.thread} executed op #${stuck.op} ${stuck.what}` : '';
  const summary = o.kind !== 'completed' ? `${describeOutcome(o)}${at}` : problems[0]!;
  const expected = 'the guest runs the workload to completion';
  const observed = problems.join('; ');
  const extras = {
    evidence: {
      outcome: o,
      threads: where,
      serialTail: tail(run.vm.serial, 20),
      stderrTail: tail(run.vm.stderr, 60),
      qemuArgs: run.vm.args,
    },
  };
  return { ok: false, failure: fail(summary, expected, observed, extras), verdict: env.mismatch(summary, expected, observed, extras) ?? PASS };
}

/** QEMU's own facts (device map, CPU model) for the machine the property runs on, mutant included. */
export function factsFor(env: SuiteEnv, config?: Partial<MachineConfig>): Promise<MachineFacts> {
  const cfg = machineConfig(env.options, config);
  const prepare = mutantPrepare(env.options.mutant, 'facts', cfg);
  return machineFacts(cfg, env.guestElf, { ...(prepare ? { prepare } : {}), ...(env.options.mutant ? { variant: env.options.mutant } : {}) });
}
