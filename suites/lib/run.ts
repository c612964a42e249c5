/**
 * Observe a guest program for a property: run it on the machine the options and the property ask
 * for (with the mutant of the run, if any, applied to the VM's role), count it, and hand back its
 * records. When the host or the guest fails to produce observations (KVM stopped the VM, a vCPU
 * never came back, the guest bailed out, QEMU died), that is itself the difference: it names the op
 * that was executing, with QEMU's own evidence attached.
 */
import type { Op } from '../../ir/ops.js';
import type { Program } from '../../ir/program.js';
import { opIndexAtOffset } from '../../harness/bytecode.js';
import type { MachineConfig } from '../../harness/vm.js';
import { machineFacts, type MachineFacts } from '../../harness/facts.js';
import { describeOutcome, guestProblems, interruptBound, runWorkload, type WorkloadRun } from '../../harness/workload.js';
import { machineConfig } from './options.js';
import { recordKvmStats } from './coverage.js';
import { difference, type Observation, type PropertyEnv } from './property.js';

/**
 * The VM roles of a case. `facts`: the VM host facts are read from; `calibration`: the one a
 * property measures the host with; `workload`: a case's VM; `a`/`b`: the two fresh VMs of a case
 * that compares VMs; `source`/`destination`: the two ends of a migration. Mutants say which roles they break.
 */
export type VmRole = 'facts' | 'calibration' | 'workload' | 'a' | 'b' | 'source' | 'destination';

/** The per-VM prepare hook of the run's mutant, for a VM of this role, or undefined. */
function mutantPrepare(env: PropertyEnv, role: VmRole, config: MachineConfig): ((dir: string) => Promise<readonly string[]>) | undefined {
  const m = env.mutant;
  if (!m?.qemuArgs || (m.roles !== 'all' && !m.roles.includes(role))) return undefined;
  const args = m.qemuArgs.bind(m);
  return (dir) => args({ role, dir, config });
}

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

/** The vectors vCPU `vcpu` took during the run, most taken first. */
export function vectorsTaken(run: WorkloadRun, vcpu: number): { vector: number; count: number }[] {
  const counts = run.vm.threads[vcpu]?.irqLog.counts ?? new Map<number, number>();
  return [...counts].map(([vector, count]) => ({ vector, count })).sort((a, b) => b.count - a.count || a.vector - b.vector);
}

export async function observeProgram(
  env: PropertyEnv,
  program: Program,
  opts: { role: VmRole; config?: Partial<MachineConfig> },
): Promise<Observation<WorkloadRun>> {
  const cfg = machineConfig(env.options, opts.config);
  const prepare = mutantPrepare(env, opts.role, cfg);
  const m = env.mutant;
  const during = m?.during && (m.roles === 'all' || m.roles.includes(opts.role)) ? m.during.bind(m) : undefined;
  const run = await runWorkload(cfg, program, {
    guestElf: env.guestElf,
    label: opts.role,
    timeoutMs: env.options.vmTimeoutMs,
    stallMs: env.options.stallMs,
    ...(prepare ? { prepare } : {}),
    ...(during ? { during } : {}),
  });
  env.metrics.add('vms');
  recordKvmStats(env.metrics, run.vm.kvmStats, { role: opts.role });
  const problems = guestProblems(run);
  if (problems.length === 0) return { ok: true, value: run };
  const o = run.vm.outcome;
  const where = threadPositions(program, run);
  const stuck = o.kind === 'hang' && o.thread >= 0 ? where[o.thread] : where.find((w) => w.state === 1) ?? where[0];
  const at = stuck && o.kind !== 'completed' ? ` while vCPU ${stuck.thread} executed op #${stuck.op} ${stuck.what}` : '';
  // An interrupt-bound vCPU: which vectors it took, most first, so the source of the storm is named.
  const storm = interruptBound(o) ? vectorsTaken(run, o.thread) : [];
  const stormWords = storm.length ? `; vectors taken in all: ${storm.slice(0, 3).map((v) => `${v.vector} ×${v.count}`).join(', ')}` : '';
  const summary = o.kind !== 'completed' ? `${describeOutcome(o)}${at}${stormWords}` : problems[0]!;
  return {
    ok: false,
    difference: difference(summary, 'the guest runs the workload to completion', problems.join('; '), {
      evidence: {
        outcome: o,
        threads: where,
        interrupts: run.vm.threads.map((t, vcpu) => ({ vcpu, total: Number(t.irqLog.total), byVector: vectorsTaken(run, vcpu), lastTscs: t.irqLog.entries.slice(-16).map((e) => `0x${e.tsc.toString(16)}:${e.vector}`) })),
        serialTail: tail(run.vm.serial, 20),
        stderrTail: tail(run.vm.stderr, 60),
        qemuArgs: run.vm.args,
      },
    }),
  };
}

/** QEMU's own facts (device map, CPU model) for the machine the property runs on, mutant included. */
export function factsFor(env: PropertyEnv, config?: Partial<MachineConfig>): Promise<MachineFacts> {
  const cfg = machineConfig(env.options, config);
  const prepare = mutantPrepare(env, 'facts', cfg);
  return machineFacts(cfg, env.guestElf, { ...(prepare ? { prepare } : {}), ...(env.options.mutant ? { variant: env.options.mutant } : {}) });
}
