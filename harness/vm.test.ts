/**
 * The harness against real QEMU/KVM: every way a VM can end (completes, KVM internal error, hang,
 * guest reset, QEMU refusing to start, a guest refusing its program), and that nothing a test
 * started (QEMU processes, VM directories, tracked pids) outlives it.
 *
 * The failure modes are provoked with the `exec` op in ring 0, measured on a kvm_pvm host:
 *   int3   → KVM stops the VM with an emulation failure (QEMU stays up, status 'internal-error');
 *   vmcall → never returns (the heartbeat stall detector reports a hang);
 *   lidt of a zero-limit IDT, then ud2 → triple fault → QEMU (-no-reboot) shuts down: 'guest-reset'.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OPS_HASH, recordsOf, type Op } from '../ir/ops.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { encodeProgram, type ProgramImage } from './bytecode.js';
import { LAYOUT, MAILBOX_STATE, THREAD_STATE } from './guest/abi.js';
import { buildGuest } from './guest/build.js';
import { useOwnRunRoot } from './testing/runRoot.js';
import { liveResources, processesMatching } from './runtime.js';
import { MACHINE_TYPES, Vm, VmSetupError, defaultMachineConfig, parseTap, runVm, type MachineConfig } from './vm.js';
import { describeOutcome, guestProblems, runWorkload } from './workload.js';
import { cumulativeCounters } from './kvmStats.js';

/** An exec op running `bytes` (at most 16), padded with NOPs. */
function execOp(bytes: readonly number[]): Op {
  if (bytes.length > 16) throw new RangeError(`exec takes at most 16 bytes, got ${bytes.length}`);
  const padded = [...bytes, ...new Array<number>(16 - bytes.length).fill(0x90)];
  const le = (b: readonly number[]) => b.reduce((acc, v, i) => acc | (BigInt(v) << BigInt(8 * i)), 0n);
  return { op: 'exec', lo: le(padded.slice(0, 8)), hi: le(padded.slice(8, 16)) };
}

const INT3 = [0xcc];
const UD2 = [0x0f, 0x0b];
const VMCALL = [0x0f, 0x01, 0xc1];
/** Unused tail of the mailbox page: the guest never writes there, so it reads as zeroes. */
const ZERO_AREA = LAYOUT.mailbox + 0xf00;
/** mov eax, ZERO_AREA; lidt [rax] (limit 0, base 0); ud2: #UD → #GP → #DF → triple fault. */
const TRIPLE_FAULT = [
  0xb8, ...[0, 8, 16, 24].map((s) => (ZERO_AREA >> s) & 0xff),
  0x0f, 0x01, 0x18,
  ...UD2,
];

function program(threads: readonly (readonly Op[])[], extra: Partial<Program> = {}): Program {
  return { threads, canary: DEFAULT_CANARY, ...extra };
}

// --- leak checks -------------------------------------------------------------------------------

let guestElf: string;
/** This file's own run root: every VM directory a test creates lands here. */
let root: string;
/** VMs a test started itself (not through runVm/runWorkload, which clean up on their own). */
const started: Vm[] = [];
let before: { qemu: Set<number>; tracked: Set<number>; dirs: Set<string>; entries: Set<string> };

const ownRoot = useOwnRunRoot();
beforeAll(async () => {
  guestElf = (await buildGuest()).elf;
  root = ownRoot.path();
});

async function qemuPids(): Promise<number[]> {
  return processesMatching('qemu-system');
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

beforeEach(async () => {
  const live = liveResources();
  before = {
    qemu: new Set(await qemuPids()),
    tracked: new Set(live.pids),
    dirs: new Set(live.dirs),
    entries: new Set(readdirSync(root)),
  };
});

afterEach(async () => {
  for (const vm of started.splice(0)) await vm.dispose();
  const live = liveResources();
  const leaks: string[] = [];
  for (const p of live.pids.filter((p) => !before.tracked.has(p))) {
    leaks.push(`pid ${p} still tracked by the runtime (${cmdline(p) ? 'alive' : 'no such process'})`);
  }
  for (const d of live.dirs.filter((d) => !before.dirs.has(d))) leaks.push(`dir ${d} still tracked by the runtime`);
  for (const e of readdirSync(root).filter((e) => !before.entries.has(e))) leaks.push(`dir ${e} left in the run root`);
  // Other QEMUs may run on this machine; ours are the new ones whose command line names our root.
  for (const p of await qemuPids()) {
    if (!before.qemu.has(p) && cmdline(p).includes(root)) leaks.push(`QEMU ${p} still running: ${cmdline(p)}`);
  }
  expect(leaks, 'left behind by the test').toEqual([]);
});

// --- outcomes ----------------------------------------------------------------------------------

describe('a VM that runs its program to the end', () => {
  it.each(MACHINE_TYPES)('completes a 2-vCPU program on %s, with TAP, records and mailbox', async (machine) => {
    const prog = program([
      [{ op: 'cpuid', leaf: 0, subleaf: 0, cpl: 3 }, { op: 'mark', value: 7n }],
      [{ op: 'rdtsc' }, execOp(UD2)],
    ]);
    const run = await runWorkload(defaultMachineConfig({ machine }), prog, { guestElf, label: `complete-${machine}` });

    expect(run.vm.outcome).toEqual({ kind: 'completed', exitCode: 33 });
    expect(guestProblems(run)).toEqual([]);
    expect(run.vm.tap).toMatchObject({ ok: true, bailout: null, plan: 2 });
    expect(run.vm.tap.results.map((r) => [r.id, r.ok])).toEqual([[1, true], [2, true]]);
    expect(run.vm.mailbox.state).toBe(BigInt(MAILBOX_STATE.done));
    expect(run.vm.threads.map((t) => t.status.state)).toEqual([BigInt(THREAD_STATE.done), BigInt(THREAD_STATE.done)]);
    expect(run.vm.threads[0]!.status.marker).toBe(7n);

    expect(run.decodeError).toBeUndefined();
    const [t0, t1] = run.records;
    expect(t0!.map((r) => [r.op.op, r.faultVector])).toEqual([['cpuid', null]]);
    expect(recordsOf(t0!, 'cpuid')[0]!.fields.rax).toBeGreaterThan(0n); // highest basic leaf
    expect(t1!.map((r) => [r.op.op, r.faultVector])).toEqual([['rdtsc', null], ['exec', 6]]); // ud2 in ring 3: #UD
    expect(recordsOf(t1!, 'rdtsc')[0]!.fields.tsc).toBeGreaterThan(0n);
    // The exit handshake let the host read QEMU's threads' scheduler accounting before it exited.
    expect(run.vm.hostWait).not.toBeNull();
    expect(run.vm.hostWait!.vcpusNs).toHaveLength(2);
  });

  it('a guest holds its exit until the host has read QEMU; a program without holdExit leaves on its own', async () => {
    const prog = program([[{ op: 'delayTsc', cycles: 100_000_000n }]]);
    const held = await runWorkload(defaultMachineConfig(), prog, { guestElf, label: 'hold' });
    expect(held.vm.outcome).toEqual({ kind: 'completed', exitCode: 33 });
    // QEMU was still there after the last op: its threads' schedstat could be read, and the answer given.
    expect(held.vm.hostWait).not.toBeNull();
    expect(held.vm.mailbox.exit_ack).toBe(1n);
    const free = await runWorkload(defaultMachineConfig(), { ...prog, holdExit: false }, { guestElf, label: 'nohold' });
    expect(free.vm.outcome).toEqual({ kind: 'completed', exitCode: 33 });
  });

  it("records what KVM counted from before cont to the guest's finish; under TCG there is nothing to count", async () => {
    // 20 reads of space no device claims: each goes to QEMU as an MMIO exit (harness/kvmStats.ts).
    const reads = Array.from({ length: 20 }, (): Op => ({ op: 'mmioRead', addr: 0xd000_0000n, width: 4 }));
    const run = await runWorkload(defaultMachineConfig(), program([reads]), { guestElf, label: 'kvm-stats' });
    expect(run.vm.outcome).toEqual({ kind: 'completed', exitCode: 33 });
    expect(run.vm.kvmStats?.at).toBe('finished');
    const counters = cumulativeCounters(run.vm.kvmStats!.delta);
    expect(counters['vcpu.mmio_exits']).toBeGreaterThanOrEqual(20);
    expect(counters['vcpu.exits']).toBeGreaterThanOrEqual(counters['vcpu.mmio_exits']!);
    const tcg = await runWorkload(defaultMachineConfig({ accel: 'tcg' }), program([reads.slice(0, 2)]), { guestElf, label: 'tcg-stats' });
    expect(tcg.vm.outcome).toEqual({ kind: 'completed', exitCode: 33 });
    expect(tcg.vm.kvmStats).toBeNull();
  });
});

describe('a VM that goes wrong', () => {
  it('reports a KVM internal error (ring-0 int3) from the STOP event, with the dump', async () => {
    const image = encodeProgram(program([[execOp(INT3)]], { ring0: true }));
    const vm = await Vm.start(defaultMachineConfig(), { guestElf, program: image, label: 'int3' });
    started.push(vm);
    // A stall window far longer than the detection needs: 'internal-error' (not 'hang') proves the
    // STOP event was noticed, without measuring time.
    const outcome = await vm.waitForOutcome({ nthreads: 1, timeoutMs: 60_000, stallMs: 20_000 });

    expect(outcome.kind).toBe('internal-error');
    if (outcome.kind !== 'internal-error') return;
    expect(outcome.status).toBe('internal-error');
    expect(outcome.dump).toMatch(/^KVM internal error/);
    expect(outcome.dump).toContain('emulation failure');
    expect(outcome.dump).toMatch(/^Code=.*<cc>/m);
    expect(outcome.dump).toMatch(/^RIP=[0-9a-f]{16} /m);
    expect(outcome.registers).toMatch(/RIP=[0-9a-f]{16}/);
    expect(vm.hasExited).toBe(false); // QEMU stays up, the VM is stopped
    expect(describeOutcome(outcome)).toMatch(/KVM stopped the VM \(QEMU status 'internal-error'\)/);
    const run = await vm.collect(outcome, image, 1);
    expect(run.tap.plan).toBe(1);
    expect(run.tap.results).toEqual([]);
  });

  it('reports a hang naming the stuck vCPU (ring-0 vmcall on vCPU 1), with its registers', async () => {
    const image = encodeProgram(program([[{ op: 'mark', value: 1n }], [execOp(VMCALL)]], { ring0: true }));
    const run = await runVm(defaultMachineConfig({ cpus: 2 }), { guestElf, program: image, nthreads: 2, label: 'vmcall', stallMs: 1000, timeoutMs: 60_000 });

    expect(run.outcome.kind).toBe('hang');
    if (run.outcome.kind !== 'hang') return;
    expect(run.outcome.thread).toBe(1);
    expect(run.outcome.stalledMs).toBeGreaterThanOrEqual(1000);
    expect(run.outcome.registers).toContain('CPU#1');
    expect(run.outcome.registers).toMatch(/RIP=[0-9a-f]{16}/);
    expect(describeOutcome(run.outcome)).toMatch(/^vCPU 1 made no progress/);
    expect(run.threads.map((t) => t.status.state)).toEqual([BigInt(THREAD_STATE.done), BigInt(THREAD_STATE.running)]);
    // It never finished, but QEMU still answered at the outcome: KVM's counters up to then.
    expect(run.kvmStats?.at).toBe('outcome');
  });

  it('reports a guest reset (ring-0 triple fault through a zero-limit IDT)', async () => {
    const image = encodeProgram(program([[execOp(TRIPLE_FAULT)]], { ring0: true }));
    const run = await runVm(defaultMachineConfig(), { guestElf, program: image, nthreads: 1, label: 'reset', stallMs: 20_000, timeoutMs: 60_000 });

    expect(run.outcome).toEqual({ kind: 'guest-reset', reason: 'guest-reset' });
    expect(describeOutcome(run.outcome)).toContain('triple fault');
    expect(run.tap.plan).toBe(1);
    expect(run.mailbox.state).toBe(BigInt(MAILBOX_STATE.running));
  });
});

describe('a VM that cannot start', () => {
  const image = () => encodeProgram(program([[{ op: 'mark', value: 1n }]]));

  it.each<[string, Partial<MachineConfig>, RegExp]>([
    ['an unknown machine type', { machine: 'no-such-machine' as never }, /unsupported machine type/],
    ['an unknown option', { extraArgs: ['-bogus'] }, /-bogus: invalid option/],
  ])('rejects with QEMU’s own words for %s, leaving nothing behind', async (_what, over, words) => {
    const err = await Vm.start(defaultMachineConfig(over), { guestElf, program: image(), label: 'refused' }).catch((e: unknown) => e);

    expect(err).toBeInstanceOf(VmSetupError);
    const e = err as VmSetupError;
    expect(e.stderr).toMatch(words);
    expect(e.qemuMessage).toMatch(words);
    expect(e.message).toContain(e.qemuMessage);
    expect(e.commandLine[0]).toBe('qemu-system-x86_64');
  });

  it('rejects clearly when the QEMU binary does not exist', async () => {
    const err = await Vm.start(defaultMachineConfig({ qemu: '/nonexistent/qemu' }), { guestElf, program: image(), label: 'noqemu' }).catch((e: unknown) => e);

    expect(err).toBeInstanceOf(VmSetupError);
    expect((err as Error).message).toContain('/nonexistent/qemu');
    expect((err as Error).message).toMatch(/No such file or directory/);
  });
});

describe('a guest that refuses its program', () => {
  it('bails out in TAP when the program was encoded for another op table', async () => {
    const good = encodeProgram(program([[{ op: 'mark', value: 1n }]]));
    const otherHash = (OPS_HASH ^ 0x5a5a_5a5a) >>> 0;
    const bytes = good.image.slice();
    new DataView(bytes.buffer).setUint32(8, otherHash, true);
    const patched: ProgramImage = { ...good, image: bytes };

    const run = await runVm(defaultMachineConfig(), { guestElf, program: patched, nthreads: 1, label: 'ops-hash' });

    expect(run.outcome).toEqual({ kind: 'completed', exitCode: 35 });
    expect(run.mailbox.state).toBe(BigInt(MAILBOX_STATE.failed));
    expect(run.tap.ok).toBe(false);
    expect(run.tap.bailout).toBe(`program encoded for op table 0x${otherHash.toString(16)} but this guest was built for 0x${OPS_HASH.toString(16)}`);
  });
});

describe('parseTap', () => {
  it('reads a passing run (CRLF from the serial port)', () => {
    expect(parseTap('TAP version 13\r\n1..2\r\nok 1 - vcpu 0: done\r\nok 2 - vcpu 1: done\r\n')).toEqual({
      ok: true,
      bailout: null,
      plan: 2,
      results: [
        { id: 1, ok: true, name: 'vcpu 0: done' },
        { id: 2, ok: true, name: 'vcpu 1: done' },
      ],
    });
  });

  it('reads a failing thread', () => {
    const v = parseTap('TAP version 13\n1..2\nok 1 - a\nnot ok 2 - vcpu 1: unexpected exception, vector 13\n');
    expect(v.ok).toBe(false);
    expect(v.plan).toBe(2);
    expect(v.results[1]).toEqual({ id: 2, ok: false, name: 'vcpu 1: unexpected exception, vector 13' });
  });

  it('reads a bail-out', () => {
    const v = parseTap('TAP version 13\nBail out! program encoded for op table 0x1 but this guest was built for 0x2\n');
    expect(v).toMatchObject({ ok: false, bailout: 'program encoded for op table 0x1 but this guest was built for 0x2', results: [] });
  });

  it('fails output cut short of its plan, and output without a plan', () => {
    expect(parseTap('TAP version 13\n1..3\nok 1 - a\nok 2 - b\n')).toMatchObject({ ok: false, plan: 3 });
    expect(parseTap('TAP version 13\n1..1\n')).toMatchObject({ ok: false, plan: 1, results: [] });
    expect(parseTap('TAP version 13\nok 1 - a\n')).toMatchObject({ ok: false, plan: null });
  });
});
