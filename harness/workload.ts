/**
 * Run one IR program in a fresh VM and hand back its records, decoded against the same op table
 * the guest ran. This is the harness's whole contract with suites: Program in, observations out.
 */
import type { OpRecord } from '../ir/ops.js';
import type { Program } from '../ir/program.js';
import { decodeRecords, encodeProgram, type ProgramImage } from './bytecode.js';
import {
  BAD_OP_REASON,
  BAIL_REASON,
  GUEST_ABI_VERSION,
  LAYOUT,
  MAILBOX_MAGIC,
  MAILBOX_STATE,
  PROGRAM_MAGIC,
  THREAD_STATE,
} from './guest/abi.js';
import { runVm, type MachineConfig, type Vm, type VmOutcome, type VmRunResult } from './vm.js';

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
  readonly during?: (vm: Vm, done: AbortSignal) => Promise<void>;
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
    ...(opts.during ? { during: opts.during } : {}),
    // The programs that log steal time are those whose judges allow the host's waits.
    ...(program.stealTime ? { sampleHostWaits: true } : {}),
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

/**
 * A hang in which the vCPU kept taking interrupts, one a millisecond or more often: it was running
 * its interrupt handler, not stuck (watchdog.ts counts them from the thread's irq_total).
 */
export function interruptBound(o: VmOutcome): o is Extract<VmOutcome, { kind: 'hang' }> & { interrupts: number } {
  return o.kind === 'hang' && o.thread >= 0 && (o.interrupts ?? 0) > 0 && (o.stalledMs * 1000) / o.interrupts! <= 1000;
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
        : interruptBound(o)
          ? `vCPU ${o.thread} made no progress for ${o.stalledMs} ms while it took ${o.interrupts} interrupts (one every ${Math.round((o.stalledMs * 1000) / o.interrupts)} µs): interrupt-bound, its handler left the thread no time to run`
          : `vCPU ${o.thread} made no progress for ${o.stalledMs} ms (an instruction that never returns, or a halted vCPU${o.interrupts ? `; it took ${o.interrupts} interrupts meanwhile` : ''})`;
    case 'vmm-hang':
      return `QEMU stopped running the guest: every vCPU thread finished its ops, but the guest did not complete within ${o.stalledMs} ms after (QMP query-status ${o.qmpAnswered ? 'still answered' : 'unanswered'})`;
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

/**
 * The guest's own verdict: what went wrong, one line per problem; empty when the run is good.
 *
 * It is judged from the mailbox and the thread statuses alone (the guest's one verdict channel,
 * harness/guest/abi.ts); the TAP lines on COM1 say the same for people and are not read here. A VM
 * that did not complete says so first (describeOutcome), then whatever the mailbox adds.
 */
export function guestProblems(run: WorkloadRun): string[] {
  const completed = run.vm.outcome.kind === 'completed';
  const out: string[] = [];
  if (!completed) out.push(describeOutcome(run.vm.outcome));
  out.push(...mailboxProblems(run.vm.mailbox, run.vm.threads.map((t) => t.status), { completed }));
  if (run.decodeError) out.push(`observations could not be decoded: ${run.decodeError}`);
  return out;
}

type Closed<T extends Record<string, number>> = keyof T & string;

/** The name of a value in one of the ABI's closed sets, or null when it is none of them. */
function nameIn<T extends Record<string, number>>(set: T, value: bigint | undefined): Closed<T> | null {
  for (const [k, v] of Object.entries(set)) if (BigInt(v) === value) return k as Closed<T>;
  return null;
}

/** Compile-time proof that a switch over a closed set handled every member. */
function unreachable(x: never): never {
  throw new Error(`unhandled ABI value ${String(x)}`);
}

const hex = (v: bigint | undefined) => `0x${(v ?? 0n).toString(16)}`;
const num = (v: bigint | undefined) => (v ?? 0n).toString();

const EXCEPTION_NAMES: Record<number, string> = {
  0: '#DE', 1: '#DB', 2: 'NMI', 3: '#BP', 4: '#OF', 5: '#BR', 6: '#UD', 7: '#NM', 8: '#DF', 10: '#TS', 11: '#NP',
  12: '#SS', 13: '#GP', 14: '#PF', 16: '#MF', 17: '#AC', 18: '#MC', 19: '#XM', 20: '#VE', 21: '#CP',
};

function exception(vector: bigint | undefined, error: bigint | undefined, rip: bigint | undefined, cr2: bigint | undefined): string {
  const v = Number(vector ?? 0n);
  const name = EXCEPTION_NAMES[v];
  return `vector ${v}${name ? ` (${name})` : ''} error ${hex(error)} rip ${hex(rip)} cr2 ${hex(cr2)}`;
}

/**
 * The problems a mailbox and its threads' statuses report. `completed`: the VM ran to its end (the
 * guest left through its exit), so a thread still running or never started is a problem; otherwise
 * the outcome already says why the guest stopped, and only what the threads reached counts.
 * Every state, reason and version is judged by one exhaustive switch; an unknown value is itself a
 * problem.
 */
export function mailboxProblems(
  mailbox: Readonly<Record<string, bigint>>,
  threads: readonly Readonly<Record<string, bigint>>[],
  opts: { completed: boolean },
): string[] {
  if (mailbox.magic !== BigInt(MAILBOX_MAGIC)) {
    return [
      opts.completed
        ? `the guest ended without writing its mailbox (magic ${hex(mailbox.magic)})`
        : 'the guest never wrote its mailbox (it stopped before its first C code ran)',
    ];
  }
  if (mailbox.abi !== BigInt(GUEST_ABI_VERSION)) {
    return [`the guest speaks ABI version ${num(mailbox.abi)}; this harness speaks version ${GUEST_ABI_VERSION} (a stale guest build)`];
  }
  const out: string[] = [];
  const state = nameIn(MAILBOX_STATE, mailbox.state);
  switch (state) {
    case 'booting':
      out.push('the guest never started its threads (mailbox still booting)');
      break;
    case 'running':
      if (opts.completed) out.push('the guest ended while its threads were running (mailbox still running)');
      out.push(...threadProblems(threads, false));
      break;
    case 'done': {
      const n = Number(mailbox.nthreads ?? 0n);
      if (n !== threads.length) out.push(`the guest ran ${n} threads; the program has ${threads.length}`);
      const online = Number(mailbox.cpus_online ?? 0n);
      if (online < n) out.push(`only ${online} of the guest's ${n} vCPUs came online`);
      out.push(...threadProblems(threads, true));
      break;
    }
    case 'failed':
      out.push(bailProblem(mailbox));
      out.push(...threadProblems(threads, false));
      break;
    case null:
      out.push(`the guest's mailbox is in an unknown state ${num(mailbox.state)}`);
      break;
    default:
      unreachable(state);
  }
  return out;
}

function bailProblem(m: Readonly<Record<string, bigint>>): string {
  const reason = nameIn(BAIL_REASON, m.bail_reason);
  switch (reason) {
    case 'none':
      return 'the guest failed without saying why (mailbox failed, no bail-out reason)';
    case 'badProgram':
      return `guest bailed out: no kvmprop program at ${hex(BigInt(LAYOUT.program))} (magic ${hex(m.bail_arg0)}, ABI ${num(m.bail_arg1)}; expected magic ${hex(BigInt(PROGRAM_MAGIC))}, ABI ${GUEST_ABI_VERSION})`;
    case 'opsHash':
      return `guest bailed out: program encoded for op table ${hex(m.bail_arg0)} but this guest was built for ${hex(m.bail_arg1)}`;
    case 'threadCount':
      return `guest bailed out: bad thread count ${num(m.bail_arg0)} (1..${LAYOUT.maxCpus})`;
    case 'apStart':
      return `guest bailed out: vCPU ${num(m.bail_arg0)} did not start (INIT-SIPI-SIPI to APIC ID ${num(m.bail_arg1)})`;
    case 'exception':
      return `guest bailed out: vCPU ${num(m.fatal_cpu)} took an unexpected exception outside any workload op, ${exception(m.fatal_vector, m.fatal_error, m.fatal_rip, m.fatal_cr2)}`;
    case null:
      return `the guest failed for an unknown reason ${num(m.bail_reason)}`;
    default:
      return unreachable(reason);
  }
}

function badOpReason(v: bigint | undefined): string {
  const reason = nameIn(BAD_OP_REASON, v);
  switch (reason) {
    case 'none':
      return 'no reason given';
    case 'unknownOp':
      return 'not an op of this guest';
    case 'badOperand':
      return 'an operand the guest refuses';
    case 'truncated':
      return 'its operands run past the end of the code';
    case 'loopTooDeep':
      return 'loops nested deeper than 8';
    case 'loopUnmatched':
      return 'loopEnd without loopBegin';
    case null:
      return `unknown reason ${num(v)}`;
    default:
      return unreachable(reason);
  }
}

/** `finished`: the guest says every thread ended, so one that did not is a problem too. */
function threadProblems(threads: readonly Readonly<Record<string, bigint>>[], finished: boolean): string[] {
  const out: string[] = [];
  threads.forEach((t, i) => {
    const at = `at op offset ${num(t.pc)} (${num(t.ops_done)} ops done, ${num(t.obs_used)} record bytes)`;
    const state = nameIn(THREAD_STATE, t.state);
    switch (state) {
      case 'idle':
        if (finished) out.push(`vCPU ${i}: never started its thread`);
        break;
      case 'running':
        if (finished) out.push(`vCPU ${i}: still running ${at}`);
        break;
      case 'done':
        break;
      case 'faulted':
        out.push(`vCPU ${i}: unexpected exception, ${exception(t.fault_vector, t.fault_error, t.fault_rip, t.fault_cr2)} ${at}`);
        break;
      case 'overflow':
        out.push(`vCPU ${i}: observation region full ${at}`);
        break;
      case 'badOp':
        out.push(`vCPU ${i}: bad op ${hex(t.bad_opcode)} (${badOpReason(t.bad_reason)}) ${at}`);
        break;
      case null:
        out.push(`vCPU ${i}: unknown thread state ${num(t.state)}`);
        break;
      default:
        unreachable(state);
    }
  });
  return out;
}
