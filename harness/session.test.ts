/**
 * Sessions of several VMs (harness/session.ts) and the watchdog's run states (harness/watchdog.ts).
 *
 * The watchdog's judgement of each run state is checked first on a stand-in VM (no QEMU: the run
 * state, events and mailbox are set by the test), so that each rule is seen to cut both ways (the
 * same bound that leaves a waiting destination alone reports a booting guest that runs). Then on
 * real KVM: two VMs at once, a live migration of a guest that dirties memory in a loop that never
 * ends, a destination left waiting, failures, and that nothing a session started survives it.
 */
import { readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Op } from '../ir/ops.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { MAILBOX_STATE, THREAD_STATE } from './guest/abi.js';
import { buildGuest } from './guest/build.js';
import { useOwnRunRoot } from './testing/runRoot.js';
import type { QmpEvent } from './qmp.js';
import { liveResources, processesMatching } from './runtime.js';
import { parseMigrationStream } from './migrationStream.js';
import { MigrationError, compareRam, withVms } from './session.js';
import { VmSetupError, defaultMachineConfig } from './vm.js';
import { classifyRunState, watchVm, type WatchTarget } from './watchdog.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// --- the watchdog on a stand-in VM ------------------------------------------------------------

/** A VM as the watchdog sees it, every part of it set by the test. */
function standIn(status: string, mailboxState: number, threadState: number = THREAD_STATE.idle) {
  const listeners = new Set<(e: QmpEvent) => void>();
  const vm = {
    status,
    mailbox: { state: BigInt(mailboxState) } as Record<string, bigint>,
    threads: [{ state: BigInt(threadState), ops_done: 0n, heartbeat: 0n }] as Record<string, bigint>[],
    emit(event: string, data?: Record<string, unknown>) {
      for (const l of listeners) l({ event, ...(data ? { data } : {}) });
    },
    set(next: string, event: 'STOP' | 'RESUME' | 'MIGRATION' | null) {
      vm.status = next;
      if (event) vm.emit(event);
    },
  };
  const target: WatchTarget = {
    qmp: {
      execute: (async (command: string) => {
        if (command !== 'query-status') throw new Error(`unexpected ${command}`);
        return { status: vm.status, running: vm.status === 'running' };
      }) as WatchTarget['qmp']['execute'],
      onEvent: (l) => {
        listeners.add(l);
        return () => void listeners.delete(l);
      },
      onClose: () => () => undefined,
      closed: false,
    },
    hasExited: false,
    whenExited: new Promise<void>(() => {}),
    exitStatus: { exitCode: null, signal: null },
    stderr: '',
    readMailbox: async () => ({ mailbox: { ...vm.mailbox }, threads: vm.threads.map((t) => ({ ...t })) }),
    registers: async () => 'RIP=0000000000000000',
    kill: async () => undefined,
  };
  return { vm, target };
}

describe('the watchdog knows the run states', () => {
  it('classifies each state QEMU 7.2 reports', () => {
    expect(['running'].map(classifyRunState)).toEqual(['runs']);
    expect(['paused', 'prelaunch', 'inmigrate', 'finish-migrate'].map(classifyRunState)).toEqual(['waits', 'waits', 'waits', 'waits']);
    expect(classifyRunState('postmigrate')).toBe('migrated');
    expect(classifyRunState('shutdown')).toBe('ending');
    expect(['internal-error', 'guest-panicked', 'io-error'].map(classifyRunState)).toEqual(['error', 'error', 'error']);
  });

  it('a waiting destination is not a boot hang; a running guest stuck booting is, with the same bound', async () => {
    const bounds = { nthreads: 1, stallMs: 50, bootHangMs: 100, timeoutMs: 800 };
    const waiting = standIn('inmigrate', MAILBOX_STATE.booting);
    expect((await watchVm(waiting.target, bounds)).kind).toBe('timeout');
    const booting = standIn('running', MAILBOX_STATE.booting);
    expect(await watchVm(booting.target, bounds)).toMatchObject({ kind: 'hang', thread: -1 });
  });

  it("a source stopped for its switchover is not an error, and ends as 'migrated'", async () => {
    const { vm, target } = standIn('running', MAILBOX_STATE.running, THREAD_STATE.running);
    const watch = watchVm(target, { nthreads: 1, stallMs: 10_000, timeoutMs: 20_000 });
    await sleep(60);
    vm.set('finish-migrate', 'STOP');
    await sleep(300); // several polls and re-queries in 'finish-migrate'
    vm.set('postmigrate', 'MIGRATION');
    expect(await watch).toEqual({ kind: 'migrated', status: 'postmigrate' });
  });

  it('a paused thread is not stalled; the same thread standing still while it runs is', async () => {
    const { vm, target } = standIn('running', MAILBOX_STATE.running, THREAD_STATE.running);
    const watch = watchVm(target, { nthreads: 1, stallMs: 100, timeoutMs: 20_000 });
    const ticking = setInterval(() => vm.threads[0]!.ops_done!++, 5);
    await sleep(50);
    vm.set('paused', 'STOP');
    clearInterval(ticking);
    let settled = false;
    void watch.then(() => (settled = true));
    await sleep(1000); // ten stall windows, two graces: all while paused
    expect(settled).toBe(false);
    vm.set('running', 'RESUME');
    expect(await watch).toMatchObject({ kind: 'hang', thread: 0 });
  });

  it('a guest-panicked or internal-error stop is still an internal error', async () => {
    for (const status of ['internal-error', 'guest-panicked']) {
      const { vm, target } = standIn('running', MAILBOX_STATE.running, THREAD_STATE.running);
      const watch = watchVm(target, { nthreads: 1, stallMs: 10_000, timeoutMs: 20_000 });
      await sleep(30);
      vm.set(status, 'STOP');
      expect(await watch).toMatchObject({ kind: 'internal-error', status });
    }
  });
});

// --- sessions on real KVM ---------------------------------------------------------------------

let guestElf: string;
/** This file's own run root: every VM directory lands here, and every QEMU names it. */
let root: string;
let before: { tracked: Set<number>; dirs: Set<string> };

const ownRoot = useOwnRunRoot();
beforeAll(async () => {
  guestElf = (await buildGuest()).elf;
  root = ownRoot.path();
});

beforeEach(() => {
  const live = liveResources();
  before = { tracked: new Set(live.pids), dirs: new Set(live.dirs) };
});

/** Live (not zombie) processes whose command line names our run root: our QEMUs. */
function ourQemus(): number[] {
  return processesMatching(root).filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
      return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
    } catch {
      return false;
    }
  });
}

/** (d) Nothing a session started survives it: no QEMU, no VM directory or socket, no tracked pid. */
function leftBehind(): string[] {
  const live = liveResources();
  return [
    ...ourQemus().map((p) => `QEMU ${p} still running`),
    ...readdirSync(root).map((e) => `${e} left in the run root`),
    ...live.pids.filter((p) => !before.tracked.has(p)).map((p) => `pid ${p} still tracked`),
    ...live.dirs.filter((d) => !before.dirs.has(d)).map((d) => `dir ${d} still tracked`),
  ];
}

afterEach(() => {
  expect(leftBehind(), 'left behind by the session').toEqual([]);
});

function program(threads: readonly (readonly Op[])[]): Program {
  return { threads, canary: DEFAULT_CANARY };
}

const DIRTY_BASE = 0x0200_0000n;
/** A thread that never ends: publish marker 7, dirty 256 pages (1 MiB), again and again. */
const DIRTY_LOOP = program([
  [{ op: 'loopBegin', count: 0 }, { op: 'mark', value: 7n }, { op: 'dirtyPages', base: DIRTY_BASE, pages: 256, stride: 4096 }, { op: 'loopEnd' }],
]);

describe('a session of several VMs', () => {
  it('(a) runs two VMs at once, each its own program to completion', async () => {
    const cfg = defaultMachineConfig();
    const result = await withVms(
      {
        a: { config: cfg, program: program([[{ op: 'mark', value: 0xa1n }, { op: 'rdtsc' }]]), paused: true },
        b: { config: cfg, program: program([[{ op: 'mark', value: 0xb2n }, { op: 'cpuid', leaf: 0, subleaf: 0, cpl: 3 }]]), paused: true },
      },
      async ({ a, b }) => {
        // Both QEMUs are alive at the same time, each in its own directory.
        expect(ourQemus().sort()).toEqual([a.vm.pid, b.vm.pid].sort());
        expect(a.vm.dir).not.toBe(b.vm.dir);
        expect([await a.status(), await b.status()]).toEqual(['prelaunch', 'prelaunch']);
        await Promise.all([a.cont(), b.cont()]);
        const outcomes = await Promise.all([a.waitForOutcome(), b.waitForOutcome()]);
        expect(outcomes).toEqual([
          { kind: 'completed', exitCode: 33 },
          { kind: 'completed', exitCode: 33 },
        ]);
        const [sa, sb] = [(await a.vm.readMailbox()).threads[0]!, (await b.vm.readMailbox()).threads[0]!];
        expect([sa.marker, sb.marker]).toEqual([0xa1n, 0xb2n]);
        expect([sa.state, sb.state]).toEqual([BigInt(THREAD_STATE.done), BigInt(THREAD_STATE.done)]);
        return 'both done';
      },
      { guestElf },
    );
    expect(result).toBe('both done');
  });

  it('(b) migrates a guest that dirties memory forever: the source is finished, the destination runs on', async () => {
    const cfg = defaultMachineConfig({ extraArgs: ['-name', 'kvmprop-session-test'] });
    await withVms(
      { src: { config: cfg, program: DIRTY_LOOP }, dst: { config: cfg, incoming: 'defer' } },
      async ({ src, dst }) => {
        // Both sides run the config's QEMU with its extra arguments.
        for (const side of [src, dst]) {
          const argv = readFileSync(`/proc/${side.vm.pid}/cmdline`, 'latin1').split('\0');
          expect(argv[0]).toContain(cfg.qemu);
          expect(argv.join(' ')).toContain('-name kvmprop-session-test');
        }
        await src.untilMarker(0, 7n);
        const running = await src.untilThread(0, (t) => t.ops_done! > 1000n);
        expect(await dst.status()).toBe('inmigrate');
        // Watch both across the migration: the source's switchover STOP must not read as an error,
        // and the destination (a bound far below the migration's duration) is never a hang.
        const srcWatch = src.waitForOutcome();
        const dstWatch = dst.waitForOutcome({ nthreads: 1, bootHangMs: 100 });

        // resume: false leaves the destination paused exactly where the source stopped.
        const info = await src.migrateTo(dst, { resume: false, parameters: { 'downtime-limit': 300 } });

        expect(info.status).toBe('completed');
        for (const field of ['total-time', 'downtime', 'setup-time'] as const) expect(typeof info[field], field).toBe('number');
        expect(info.ram!.transferred).toBeGreaterThan(0);
        expect(await src.status()).toBe('postmigrate');
        expect(await srcWatch).toEqual({ kind: 'migrated', status: 'postmigrate' });

        // Both stopped at the switchover: guest RAM is byte-identical, and not trivially so.
        expect(await dst.status()).toBe('paused');
        const [s, d] = [await src.snapshot(), await dst.snapshot()];
        expect(d.threads).toEqual(s.threads);
        expect(s.threads[0]!.ops_done).toBeGreaterThan(running.ops_done!); // it ran (and dirtied) during the migration
        expect((await src.vm.readPhys(Number(DIRTY_BASE), 1))[0]).toBeGreaterThan(0);
        const [srcRam, dstRam] = [await src.ramDigest(), await dst.ramDigest()];
        if (srcRam !== dstRam) expect(await compareRam(src, dst), 'RAM differs').toMatchObject({ identical: true });
        expect(dstRam).toBe(srcRam);

        // The destination really runs the guest on: its thread moves past where the source stopped.
        await dst.cont();
        const moved = await dst.untilThread(0, (t) => t.ops_done! > s.threads[0]!.ops_done! + 1000n);
        expect(moved.marker).toBe(7n);
        expect(moved.state).toBe(BigInt(THREAD_STATE.running));
        expect((await src.snapshot()).threads).toEqual(s.threads); // the source stays where it stopped

        // stop() really stops it.
        await dst.stop();
        expect(await dst.status()).toBe('paused');
        const frozen = (await dst.snapshot()).threads[0]!;
        for (let i = 0; i < 5; i++) {
          await sleep(40);
          expect((await dst.snapshot()).threads[0]).toEqual(frozen);
        }
        // Through inmigrate → paused → running → paused, the destination's watch found nothing wrong;
        // it ends only because the session does.
        let dstSettled = false;
        void dstWatch.then(() => (dstSettled = true));
        await sleep(0);
        expect(dstSettled).toBe(false);
        return { dstWatch }; // (not the promise itself: the body would wait for it)
      },
      { guestElf },
    ).then(async ({ dstWatch }) => expect(await dstWatch).toMatchObject({ kind: 'aborted' }));
  });

  it('(c) a destination left waiting longer than the boot-hang bound is not a hang', async () => {
    await withVms(
      { dst: { config: defaultMachineConfig(), incoming: 'defer' } },
      async ({ dst }) => {
        // Five boot-hang bounds and many stall windows pass while it waits.
        const outcome = await dst.waitForOutcome({ nthreads: 1, bootHangMs: 200, stallMs: 100, timeoutMs: 1000 });
        expect(outcome.kind).toBe('timeout');
        expect(await dst.status()).toBe('inmigrate');
        expect(dst.vm.hasExited).toBe(false);
      },
      { guestElf },
    );
  });

  it('with pause-before-switchover, the hook runs while the source is stopped, then the migration completes', async () => {
    const cfg = defaultMachineConfig();
    await withVms(
      { src: { config: cfg, program: DIRTY_LOOP }, dst: { config: cfg, incoming: 'defer' } },
      async ({ src, dst }) => {
        await src.untilMarker(0, 7n);
        const srcWatch = src.waitForOutcome();
        let atSwitchover: { status: string; ops: bigint } | null = null;
        const info = await src.migrateTo(dst, {
          capabilities: { 'pause-before-switchover': true },
          beforeSwitchover: async () => {
            const t = await src.snapshot();
            atSwitchover = { status: t.status, ops: t.threads[0]!.ops_done! };
            // Hold the source in 'finish-migrate' for many of the watchdog's polls and re-queries:
            // a STOP during migration is expected, not an error.
            await sleep(400);
          },
        });
        expect(info.status).toBe('completed');
        expect(await srcWatch).toEqual({ kind: 'migrated', status: 'postmigrate' });
        expect(atSwitchover).not.toBeNull();
        expect(atSwitchover!.status).toBe('finish-migrate');
        // The source did not run after the hook looked: the destination starts from that point.
        expect((await src.snapshot()).threads[0]!.ops_done).toBe(atSwitchover!.ops);
        await dst.untilThread(0, (t) => t.ops_done! > atSwitchover!.ops);
      },
      { guestElf },
    );
  });
});

describe('(e) save into a file and restore from it, without a shell', () => {
  it('the source stops and saves into the restore file, the destination loads it through fd 3, both stopped hold the same RAM; saved again before it resumes, it still runs on', async () => {
    const cfg = defaultMachineConfig();
    await withVms(
      { src: { config: cfg, program: DIRTY_LOOP }, dst: { config: cfg, incoming: 'defer', restoreFile: true } },
      async ({ src, dst }) => {
        // QEMU holds the restore file as its fd 3, read-only; nothing of it is on its command line.
        const fd3 = readlinkSync(`/proc/${dst.vm.pid}/fd/3`);
        expect(fd3).toBe(dst.vm.restorePath);
        expect(statSync(dst.vm.restorePath!).mode & 0o777).toBe(0o600);
        const flags = parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/${dst.vm.pid}/fdinfo/3`, 'latin1'))![1]!, 8);
        expect(flags & 0o3, 'O_ACCMODE').toBe(0); // O_RDONLY
        await src.untilMarker(0, 7n);
        await src.untilThread(0, (t) => t.ops_done! > 1000n);
        const info = await src.migrateViaFile(dst, { resume: false, parameters: { 'downtime-limit': 300 } });
        expect(info.status).toBe('completed');
        // Stopped first: every page goes once (1 MiB dirtied, the rest zero records), never the RAM again and again.
        expect(info.savedBytes).toBeLessThan(4 << 20);
        expect(info.savedBytes).toBe(statSync(dst.vm.restorePath!).size);
        expect(info.restoreMs).toBeGreaterThan(0);
        expect([await src.status(), await dst.status()]).toEqual(['postmigrate', 'paused']);
        expect(await compareRam(src, dst)).toMatchObject({ identical: true });
        const at = (await dst.snapshot()).threads[0]!.ops_done!;
        // The save's socket is gone once it is done; only the file stays, in the private directory.
        expect(readdirSync(dst.vm.dir).filter((f) => f.endsWith('.sock'))).toEqual([]);
        // Saved again before it resumes: the stream parses; a migrated-away source refuses (QEMU 7.2).
        const saved = join(dst.vm.dir, 'again.bin');
        const again = await dst.saveState(saved, join(dst.vm.dir, 'again.sock'));
        expect(again.savedBytes).toBe(statSync(saved).size);
        expect(parseMigrationStream(readFileSync(saved)).devices.map((d) => d.section.idstr)).toContain('cpu');
        await expect(src.saveState(join(src.vm.dir, 'x.bin'), join(src.vm.dir, 'x.sock'))).rejects.toThrow(/paused due to previous migration/);
        await dst.cont();
        await dst.untilThread(0, (t) => t.ops_done! > at + 1000n);
      },
      { guestElf },
    );
  });
});

describe('(d) nothing survives a session', () => {
  it('when the body throws: the error comes through, every VM is gone', async () => {
    const cfg = defaultMachineConfig();
    const err = await withVms(
      { src: { config: cfg, program: DIRTY_LOOP }, dst: { config: cfg, incoming: 'defer' } },
      async ({ src }) => {
        await src.untilMarker(0, 7n);
        expect(ourQemus()).toHaveLength(2);
        throw new Error('the body gives up');
      },
      { guestElf },
    ).catch((e: unknown) => e);
    expect((err as Error).message).toBe('the body gives up');
  });

  it('when one VM cannot start: the others are disposed of, the error names it in QEMU’s words', async () => {
    const cfg = defaultMachineConfig();
    let ran = false;
    const err = await withVms(
      { src: { config: cfg, program: DIRTY_LOOP }, dst: { config: defaultMachineConfig({ extraArgs: ['-bogus'] }), incoming: 'defer' } },
      () => void (ran = true),
      { guestElf },
    ).catch((e: unknown) => e);
    expect(ran).toBe(false);
    expect(err).toBeInstanceOf(VmSetupError);
    expect((err as VmSetupError).message).toMatch(/^dst: .*-bogus: invalid option/);
  });

  it('when a migration fails: it rejects with QEMU’s error-desc and the destination’s words', async () => {
    const cfg = defaultMachineConfig();
    await withVms(
      // The destination has half the RAM: it refuses the stream, the source sees a broken pipe.
      { src: { config: cfg, program: DIRTY_LOOP }, dst: { config: defaultMachineConfig({ ramMiB: cfg.ramMiB / 2 }), incoming: 'defer' } },
      async ({ src, dst }) => {
        await src.untilMarker(0, 7n);
        const err = await src.migrateTo(dst).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(MigrationError);
        const e = err as MigrationError;
        expect(e.info?.status).toBe('failed');
        expect(e.message).toContain(e.info!['error-desc']!);
        expect(e.message).toMatch(/dst: .*mismatch: ram0/i);
        // The source carries on running its guest.
        const t = (await src.snapshot()).threads[0]!;
        await src.untilThread(0, (u) => u.ops_done! > t.ops_done!);
        expect(await src.status()).toBe('running');
      },
      { guestElf },
    );
  });
});
