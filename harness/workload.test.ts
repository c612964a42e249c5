/**
 * guestProblems judges the guest's one verdict channel, the mailbox and the thread statuses: on
 * synthetic mailboxes (every state and reason, and values outside the closed sets), and on real KVM
 * with the TAP output thrown away, so the verdict cannot have come from it.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { OPS_HASH, type Op } from '../ir/ops.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { encodeOps, encodeProgram, type ProgramImage } from './bytecode.js';
import {
  BAD_OP_REASON,
  BAIL_REASON,
  GUEST_ABI_VERSION,
  MAILBOX_MAGIC,
  MAILBOX_STATE,
  PROGRAM_MAGIC,
  STRUCTS,
  THREAD_STATE,
  structBytes,
} from './guest/abi.js';
import { buildGuest } from './guest/build.js';
import { defaultMachineConfig, parseTap, runVm, type VmRunResult } from './vm.js';
import { describeOutcome, guestProblems, interruptBound, mailboxProblems, runWorkload, type WorkloadRun } from './workload.js';

type Fields = Record<string, bigint>;
const zeros = (name: keyof typeof STRUCTS): Fields => Object.fromEntries(STRUCTS[name].map(([f]) => [f, 0n]));

function mailbox(over: Fields = {}): Fields {
  return { ...zeros('mailbox'), magic: BigInt(MAILBOX_MAGIC), abi: BigInt(GUEST_ABI_VERSION), state: BigInt(MAILBOX_STATE.done), nthreads: 1n, cpus_online: 1n, ...over };
}
function thread(over: Fields = {}): Fields {
  return { ...zeros('thread_status'), state: BigInt(THREAD_STATE.done), ...over };
}
const done = { completed: true };

describe('mailboxProblems (synthetic)', () => {
  it('a finished guest whose threads are all done has no problems', () => {
    expect(mailbox()).toHaveProperty('bail_reason');
    expect(mailboxProblems(mailbox({ nthreads: 2n, cpus_online: 2n }), [thread(), thread()], done)).toEqual([]);
  });

  it('names the vCPU, the state and the fault of a thread that did not finish', () => {
    const faulted = thread({ state: 3n, fault_vector: 14n, fault_error: 6n, fault_rip: 0x101234n, fault_cr2: 0x10_0000_0000n, pc: 12n, ops_done: 2n, obs_used: 32n });
    expect(mailboxProblems(mailbox({ nthreads: 2n, cpus_online: 2n }), [thread(), faulted], done)).toEqual([
      'vCPU 1: unexpected exception, vector 14 (#PF) error 0x6 rip 0x101234 cr2 0x1000000000 at op offset 12 (2 ops done, 32 record bytes)',
    ]);
    expect(mailboxProblems(mailbox(), [thread({ state: 4n, pc: 3n, ops_done: 1n, obs_used: 64n })], done)).toEqual([
      'vCPU 0: observation region full at op offset 3 (1 ops done, 64 record bytes)',
    ]);
    expect(mailboxProblems(mailbox(), [thread({ state: 5n, bad_opcode: 0x10n, bad_reason: BigInt(BAD_OP_REASON.badOperand) })], done)).toEqual([
      'vCPU 0: bad op 0x10 (an operand the guest refuses) at op offset 0 (0 ops done, 0 record bytes)',
    ]);
    expect(mailboxProblems(mailbox(), [thread({ state: 5n, bad_opcode: 0xeen, bad_reason: 1n })], done)[0]).toContain('bad op 0xee (not an op of this guest)');
  });

  it('a finished guest with a thread still running or never started is a problem; a stopped one is the outcome\'s', () => {
    const running = thread({ state: BigInt(THREAD_STATE.running), pc: 9n });
    const idle = thread({ state: BigInt(THREAD_STATE.idle) });
    expect(mailboxProblems(mailbox({ nthreads: 2n, cpus_online: 2n }), [running, idle], done)).toEqual([
      'vCPU 0: still running at op offset 9 (0 ops done, 0 record bytes)',
      'vCPU 1: never started its thread',
    ]);
    expect(mailboxProblems(mailbox({ state: 1n, nthreads: 2n }), [running, idle], { completed: false })).toEqual([]);
    expect(mailboxProblems(mailbox({ state: 1n }), [running], done)).toEqual(['the guest ended while its threads were running (mailbox still running)']);
  });

  it('a guest that never started its threads', () => {
    expect(mailboxProblems(mailbox({ state: 0n, nthreads: 0n }), [thread({ state: 0n })], { completed: false })).toEqual([
      'the guest never started its threads (mailbox still booting)',
    ]);
    expect(mailboxProblems(zeros('mailbox'), [thread({ state: 0n })], { completed: false })).toEqual([
      'the guest never wrote its mailbox (it stopped before its first C code ran)',
    ]);
    expect(mailboxProblems(mailbox({ nthreads: 2n, cpus_online: 1n }), [thread(), thread()], done)).toEqual(["only 1 of the guest's 2 vCPUs came online"]);
    expect(mailboxProblems(mailbox({ nthreads: 1n }), [thread(), thread()], done)).toEqual(['the guest ran 1 threads; the program has 2']);
  });

  it('says why the guest gave up, with the reason\'s arguments', () => {
    const failed = (reason: keyof typeof BAIL_REASON, over: Fields = {}) =>
      mailboxProblems(mailbox({ state: BigInt(MAILBOX_STATE.failed), bail_reason: BigInt(BAIL_REASON[reason]), ...over }), [thread({ state: 0n })], done);
    expect(failed('opsHash', { bail_arg0: 0x1234n, bail_arg1: 0xabcdn })).toEqual(['guest bailed out: program encoded for op table 0x1234 but this guest was built for 0xabcd']);
    expect(failed('badProgram', { bail_arg0: 0n, bail_arg1: 7n })).toEqual([
      `guest bailed out: no kvmprop program at 0x800000 (magic 0x0, ABI 7; expected magic 0x${PROGRAM_MAGIC.toString(16)}, ABI ${GUEST_ABI_VERSION})`,
    ]);
    expect(failed('threadCount', { bail_arg0: 0n })).toEqual(['guest bailed out: bad thread count 0 (1..16)']);
    expect(failed('apStart', { bail_arg0: 1n, bail_arg1: 1n })).toEqual(['guest bailed out: vCPU 1 did not start (INIT-SIPI-SIPI to APIC ID 1)']);
    expect(failed('exception', { fatal_cpu: 2n, fatal_vector: 13n, fatal_error: 0x10n, fatal_rip: 0x100200n, fatal_cr2: 0n })).toEqual([
      'guest bailed out: vCPU 2 took an unexpected exception outside any workload op, vector 13 (#GP) error 0x10 rip 0x100200 cr2 0x0',
    ]);
    expect(failed('none')).toEqual(['the guest failed without saying why (mailbox failed, no bail-out reason)']);
    // Threads that reached a state of their own before the guest gave up still report it.
    const withFault = mailboxProblems(
      mailbox({ state: 3n, bail_reason: 5n, fatal_cpu: 1n, fatal_vector: 8n }),
      [thread({ state: 3n, fault_vector: 6n }), thread({ state: 1n })],
      done,
    );
    expect(withFault).toHaveLength(2);
    expect(withFault[1]).toMatch(/^vCPU 0: unexpected exception, vector 6 \(#UD\)/);
  });

  it('every value outside the ABI\'s closed sets is itself a problem', () => {
    expect(mailboxProblems(mailbox({ state: 9n }), [thread()], done)).toEqual(["the guest's mailbox is in an unknown state 9"]);
    expect(mailboxProblems(mailbox({ state: 3n, bail_reason: 77n }), [thread()], done)).toEqual(['the guest failed for an unknown reason 77']);
    expect(mailboxProblems(mailbox(), [thread({ state: 42n })], done)).toEqual(['vCPU 0: unknown thread state 42']);
    expect(mailboxProblems(mailbox(), [thread({ state: 5n, bad_reason: 99n })], done)[0]).toContain('(unknown reason 99)');
    expect(mailboxProblems(mailbox({ abi: 1n }), [thread()], done)).toEqual([
      `the guest speaks ABI version 1; this harness speaks version ${GUEST_ABI_VERSION} (a stale guest build)`,
    ]);
    expect(mailboxProblems(mailbox({ magic: 0x1234n }), [thread()], done)).toEqual(['the guest ended without writing its mailbox (magic 0x1234)']);
  });

  it('the mailbox still fits in front of the thread statuses', () => {
    expect(structBytes('mailbox')).toBeLessThanOrEqual(128);
  });
});

// --- real KVM -----------------------------------------------------------------------------------

let guestElf = '';
beforeAll(async () => {
  guestElf = (await buildGuest()).elf;
});

/** The run with its TAP output replaced by a passing one for another program: the verdict must not change. */
function withoutTap(run: WorkloadRun): WorkloadRun {
  const fake = 'TAP version 13\n1..1\nok 1 - vcpu 0: done\n';
  return { ...run, vm: { ...run.vm, serial: fake, tap: parseTap(fake) } };
}
function problemsFromMailboxAlone(run: WorkloadRun): string[] {
  const problems = guestProblems(run);
  expect(guestProblems(withoutTap(run))).toEqual(problems);
  return problems;
}
const asRun = (vm: VmRunResult, image: ProgramImage): WorkloadRun => ({ vm, image, records: [] });
function program(threads: readonly (readonly Op[])[], extra: Partial<Program> = {}): Program {
  return { threads, canary: DEFAULT_CANARY, ...extra };
}
/** The program image with one u32 of its header replaced. */
function patched(image: ProgramImage, offset: number, value: number): ProgramImage {
  const bytes = image.image.slice();
  new DataView(bytes.buffer).setUint32(offset, value, true);
  return { ...image, image: bytes };
}

describe('describeOutcome of a hang (synthetic)', () => {
  const hang = (interrupts?: number) => ({ kind: 'hang' as const, thread: 1, stalledMs: 3000, registers: null, ...(interrupts === undefined ? {} : { interrupts }) });
  it('a vCPU that took no interrupts is stuck in an instruction or halted', () => {
    expect(interruptBound(hang(0))).toBe(false);
    expect(describeOutcome(hang())).toBe('vCPU 1 made no progress for 3000 ms (an instruction that never returns, or a halted vCPU)');
  });
  it('one that took an interrupt a millisecond or more often was running its handler: interrupt-bound, with the rate', () => {
    expect(interruptBound(hang(15_000))).toBe(true);
    expect(describeOutcome(hang(15_000))).toBe('vCPU 1 made no progress for 3000 ms while it took 15000 interrupts (one every 200 µs): interrupt-bound, its handler left the thread no time to run');
  });
  it('a few interrupts during a stall are named, not blamed', () => {
    expect(interruptBound(hang(2))).toBe(false);
    expect(describeOutcome(hang(2))).toMatch(/or a halted vCPU; it took 2 interrupts meanwhile\)$/);
  });
});

describe('guestProblems on real KVM, from the mailbox alone', () => {
  it('reports a thread that faulted, naming its vCPU, vector, error and cr2', async () => {
    const unmapped = 0x10_0000_0000n; // 64 GiB: above the 4 GiB the guest maps by default
    const r = await runWorkload(defaultMachineConfig({ cpus: 2 }), program([[{ op: 'rdtsc' }], [{ op: 'mark', value: 1n }, { op: 'mmioWrite', addr: unmapped, width: 4, value: 1n }]]), {
      guestElf,
      label: 'verdict-fault',
    });
    expect(r.vm.outcome.kind).toBe('completed');
    const problems = problemsFromMailboxAlone(r);
    expect(problems).toHaveLength(1);
    // A user-mode write to a page that is not present: #PF, error code U|W (SDM Vol. 3A 4.7).
    expect(problems[0]).toMatch(/^vCPU 1: unexpected exception, vector 14 \(#PF\) error 0x6 rip 0x[0-9a-f]+ cr2 0x1000000000 at op offset 9 \(1 ops done, 0 record bytes\)$/);
  });

  it('reports a bad op with its opcode and why', async () => {
    const r = await runWorkload(defaultMachineConfig(), program([[{ op: 'rdtsc' }, { op: 'pioIn', port: 0x80, width: 3 }]]), { guestElf, label: 'verdict-badop' });
    expect(problemsFromMailboxAlone(r)).toEqual(['vCPU 0: bad op 0x10 (an operand the guest refuses) at op offset 1 (1 ops done, 16 record bytes)']);
  });

  it('reports an op the guest does not know, and operands cut short', async () => {
    const good = encodeProgram(program([[{ op: 'mark', value: 1n }]]));
    // The thread's code is one mark op (9 bytes); make its first byte an unknown opcode.
    const codeOff = new DataView(good.image.buffer).getUint32(structBytes('prog_header'), true);
    const unknown = good.image.slice();
    unknown[codeOff] = 0xee;
    const vm = await runVm(defaultMachineConfig(), { guestElf, program: { ...good, image: unknown }, nthreads: 1, label: 'verdict-unknown' });
    expect(problemsFromMailboxAlone(asRun(vm, good))).toEqual(['vCPU 0: bad op 0xee (not an op of this guest) at op offset 0 (0 ops done, 0 record bytes)']);
    // Code length 5: the mark's operands run past the end.
    const short = patched(good, structBytes('prog_header') + 4, 5);
    const vm2 = await runVm(defaultMachineConfig(), { guestElf, program: short, nthreads: 1, label: 'verdict-short' });
    expect(problemsFromMailboxAlone(asRun(vm2, short))).toEqual(['vCPU 0: bad op 0x43 (its operands run past the end of the code) at op offset 0 (0 ops done, 0 record bytes)']);
    expect(encodeOps([{ op: 'mark', value: 1n }])[0]).toBe(0x43);
  });

  it('reports a program encoded for another op table, with both hashes', async () => {
    const good = encodeProgram(program([[{ op: 'mark', value: 1n }]]));
    const otherHash = (OPS_HASH ^ 0x5a5a_5a5a) >>> 0;
    const image = patched(good, 8, otherHash);
    const vm = await runVm(defaultMachineConfig(), { guestElf, program: image, nthreads: 1, label: 'verdict-ops-hash' });
    expect(vm.outcome).toEqual({ kind: 'completed', exitCode: 35 });
    expect(vm.mailbox.bail_reason).toBe(BigInt(BAIL_REASON.opsHash));
    expect(problemsFromMailboxAlone(asRun(vm, image))).toEqual([
      `guest bailed out: program encoded for op table 0x${otherHash.toString(16)} but this guest was built for 0x${OPS_HASH.toString(16)}`,
    ]);
  });

  it('reports a program that is not one, and a bad thread count', async () => {
    const good = encodeProgram(program([[{ op: 'mark', value: 1n }]]));
    const noMagic = patched(good, 0, 0x1234_5678);
    const vm = await runVm(defaultMachineConfig(), { guestElf, program: noMagic, nthreads: 1, label: 'verdict-magic' });
    expect(problemsFromMailboxAlone(asRun(vm, noMagic))).toEqual([
      `guest bailed out: no kvmprop program at 0x800000 (magic 0x12345678, ABI ${GUEST_ABI_VERSION}; expected magic 0x${PROGRAM_MAGIC.toString(16)}, ABI ${GUEST_ABI_VERSION})`,
    ]);
    const zero = patched(good, 12, 0);
    const vm2 = await runVm(defaultMachineConfig(), { guestElf, program: zero, nthreads: 1, label: 'verdict-nthreads' });
    expect(problemsFromMailboxAlone(asRun(vm2, zero))).toEqual(['guest bailed out: bad thread count 0 (1..16)']);
  });

  it('reports a vCPU that never started (a 2-thread program on a 1-vCPU machine)', async () => {
    const image = encodeProgram(program([[{ op: 'mark', value: 1n }], [{ op: 'mark', value: 2n }]]));
    const vm = await runVm(defaultMachineConfig({ cpus: 1 }), { guestElf, program: image, nthreads: 2, label: 'verdict-ap' });
    expect(problemsFromMailboxAlone(asRun(vm, image))).toEqual(['guest bailed out: vCPU 1 did not start (INIT-SIPI-SIPI to APIC ID 1)']);
  });

  it('a good run has no problems, whatever its serial port said', async () => {
    const r = await runWorkload(defaultMachineConfig(), program([[{ op: 'rdtsc' }]]), { guestElf, label: 'verdict-good' });
    expect(problemsFromMailboxAlone(r)).toEqual([]);
    const garbage = { ...r, vm: { ...r.vm, serial: 'Bail out! nonsense\n', tap: parseTap('Bail out! nonsense\n') } };
    expect(guestProblems(garbage)).toEqual([]);
  });
});
