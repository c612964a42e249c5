/**
 * The watchdog: watches one running QEMU and says how its guest ended, without waiting for a
 * timeout when it can tell sooner. Vm.waitForOutcome is a thin user of it; sessions of several VMs
 * (harness/session.ts) use it directly, because there a VM can be migrated in or out.
 *
 * It is its own piece because what "stuck" means depends on QEMU's run state, and with migration a
 * VM passes through states a single run never sees. The run state comes from QMP `query-status`,
 * asked once at the start and again after every STOP, RESUME or MIGRATION event (and every
 * STATE_REQUERY_MS while the VM is not running, since some transitions emit no event):
 *
 *  - 'running': the guest runs; the boot-hang bound counts (time spent running while the mailbox
 *    still says booting) and so does the per-thread heartbeat stall detector.
 *  - 'paused' (a `stop` we asked for), 'prelaunch' (-S, never started), 'inmigrate' (a waiting
 *    -incoming destination), 'finish-migrate' (a source stopped for its switchover), 'save-vm',
 *    'restore-vm', 'debug': the guest is not running on purpose. Not a hang, not booting, not an
 *    error; both clocks stand still and restart from zero when it runs again. The overall timeout
 *    still applies, so a VM nobody resumes ends as 'timeout'.
 *  - 'postmigrate': a source after a completed migration. Its guest now lives elsewhere: finished,
 *    not an error ({ kind: 'migrated' }).
 *  - 'internal-error' (KVM stopped the VM, with QEMU's register/code dump), 'guest-panicked',
 *    'io-error', 'watchdog', 'suspended', ...: the guest or KVM stopped it ({ kind: 'internal-error' }).
 *  - 'shutdown': QEMU is ending; its SHUTDOWN event and exit status say how.
 * Besides the run state: the mailbox saying done/failed (the guest finished), QEMU's exit status, and
 * the overall timeout, exactly as for a single VM.
 */
import type { QmpClient, QmpEvent } from './qmp.js';
import { EXIT_VALUE, MAILBOX_STATE, THREAD_STATE, qemuExitStatus } from './guest/abi.js';

export type VmOutcome =
  | { kind: 'completed'; exitCode: number | null }
  | { kind: 'internal-error'; status: string; dump: string; registers: string | null }
  /**
   * `interrupts`: how many interrupts the stalled vCPU took while its thread made no progress (its
   * status's irq_total moved by that much): a vCPU that took many was running, in its interrupt
   * handler, and the thread starved; one that took none was stuck in an instruction or halted.
   */
  | { kind: 'hang'; thread: number; stalledMs: number; registers: string | null; interrupts?: number }
  /**
   * Every vCPU thread finished its ops, but the guest never got to say so (the BSP's last steps,
   * its serial lines and the mailbox, did not come): QEMU stopped running the guest. `qmpAnswered`:
   * whether QEMU's monitor still answered query-status then (not when its main loop is stuck).
   */
  | { kind: 'vmm-hang'; stalledMs: number; qmpAnswered: boolean; registers: string | null }
  | { kind: 'guest-reset'; reason: string }
  /** QEMU itself ended while the guest ran: an abort, a crash, an exit; `message` is QEMU's own words. */
  | { kind: 'vmm-crash'; exitCode: number | null; signal: string | null; message: string }
  | { kind: 'timeout'; afterMs: number; registers: string | null };

/**
 * What the watchdog can say beyond a single VM's outcomes: the VM was migrated away (its source
 * side is finished), or whoever watched stopped watching (`signal` aborted, e.g. a session ending).
 */
export type WatchOutcome = VmOutcome | { kind: 'migrated'; status: 'postmigrate' } | { kind: 'aborted'; afterMs: number };

/** What the watchdog needs of a VM (harness/vm.ts Vm has all of it). */
export interface WatchTarget {
  readonly qmp: Pick<QmpClient, 'execute' | 'onEvent' | 'onClose' | 'closed'>;
  readonly hasExited: boolean;
  /** Settles when QEMU has exited. */
  readonly whenExited: Promise<void>;
  readonly exitStatus: { readonly exitCode: number | null; readonly signal: string | null };
  readonly stderr: string;
  readMailbox(): Promise<{ mailbox: Record<string, bigint>; threads: Record<string, bigint>[] }>;
  /** HMP `info registers -a`, bounded in time; null when it cannot be had. */
  registers(): Promise<string | null>;
  kill(): Promise<void>;
  /**
   * The guest has finished and waits for the host's answer before it exits (abi.ts
   * PROGRAM_FLAGS.holdExit): read what needs a live QEMU, then let it go.
   */
  guestFinished?(): Promise<void>;
}

export interface WatchOptions {
  /** How many threads the program runs (for stall detection). */
  readonly nthreads: number;
  readonly timeoutMs: number;
  /** A running thread whose progress stands still this long is a hang (after a grace period). */
  readonly stallMs: number;
  readonly pollMs?: number;
  /** How long the guest may run with its mailbox still 'booting' (default max(2 * stallMs, 5000)). */
  readonly bootHangMs?: number;
  /** Stop watching: the watch ends with { kind: 'aborted' } at its next poll. */
  readonly signal?: AbortSignal;
}

/** isa-debug-exit turns the guest's byte v into exit status (v << 1) | 1. */
export const EXIT_DONE = qemuExitStatus(EXIT_VALUE.done);
export const EXIT_DONE_FAILED = qemuExitStatus(EXIT_VALUE.failed);
/** A program with self-checks (ir/checks.ts) whose threads finished but a check failed. */
export const EXIT_CHECKS_FAILED = qemuExitStatus(EXIT_VALUE.checksFailed);
/** After a stall, how long a kicked vCPU gets to show it was only descheduled. */
export const STALL_GRACE_MS = 500;
/** While the VM is not running, how often the run state is asked again. */
export const STATE_REQUERY_MS = 200;

/** How the watchdog treats a QEMU run state (see the top of this file). */
export type RunStateClass = 'runs' | 'waits' | 'migrated' | 'ending' | 'error';

const WAITING_STATES = new Set(['paused', 'prelaunch', 'inmigrate', 'finish-migrate', 'save-vm', 'restore-vm', 'debug']);
/** States in which this VM's RAM is not (or no longer) the guest's own: its mailbox says nothing. */
const MIGRATING_STATES = new Set(['inmigrate', 'finish-migrate', 'postmigrate']);
const STATE_EVENTS = new Set(['STOP', 'RESUME', 'MIGRATION']);

export function classifyRunState(status: string): RunStateClass {
  if (status === 'running') return 'runs';
  if (status === 'postmigrate') return 'migrated';
  if (status === 'shutdown') return 'ending';
  if (WAITING_STATES.has(status)) return 'waits';
  return 'error';
}

/**
 * The lines of QEMU's stderr that say what went wrong (its `error:` lines, failed assertions,
 * "unable to ..."), without the program-name prefix, at most `max` of them joined by " / ".
 * Falls back to the first non-empty lines when none of them looks like an error.
 */
export function qemuWords(stderr: string, max = 3): string {
  const lines = stderr
    .replace(/\r/g, '')
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const strip = (l: string) => l.replace(/^[^\s:]*qemu-system-[\w-]+:\s*/, '');
  const meaningful = lines.filter((l) => /\berror\b|assert|failed|unable|invalid|not found|cannot|can't|unsupported|terminating|abort/i.test(l));
  const chosen = (meaningful.length ? meaningful : lines).map(strip);
  return [...new Set(chosen)].slice(0, max).join(' / ');
}

/** The part of QEMU's stderr that describes a KVM internal error (registers, code bytes). */
export function internalErrorDump(stderr: string): string {
  const at = stderr.indexOf('KVM internal error');
  return (at >= 0 ? stderr.slice(at) : stderr).slice(0, 8000);
}

/** A thread's progress: ops completed, and the heartbeat long ops bump. */
export function progressOf(t: Record<string, bigint>): bigint {
  return (t.ops_done ?? 0n) + (t.heartbeat ?? 0n) * 0x1_0000_0000n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function queryStatus(t: WatchTarget): Promise<string | null> {
  const s = await t.qmp.execute<{ status: string }>('query-status', {}, { timeoutMs: 2000 }).catch(() => null);
  return s && typeof s.status === 'string' ? s.status : null;
}

/**
 * Wait until the guest finishes or something goes wrong, and say which. The VM is left as it is
 * (the caller disposes of it).
 */
export async function watchVm(t: WatchTarget, opts: WatchOptions): Promise<WatchOutcome> {
  const pollMs = opts.pollMs ?? 20;
  const bootHangMs = opts.bootHangMs ?? Math.max(2 * opts.stallMs, 5000);
  const started = Date.now();
  let shutdownEvent: QmpEvent | null = null;
  let stateEvent = false;
  const unsubscribe = t.qmp.onEvent((e) => {
    if (STATE_EVENTS.has(e.event)) stateEvent = true;
    if (e.event === 'SHUTDOWN') shutdownEvent = e;
  });
  const aborted = new Promise<void>((resolve) => {
    if (opts.signal?.aborted) resolve();
    opts.signal?.addEventListener('abort', () => resolve(), { once: true });
  });
  /** Resolves after `ms`, or sooner when QEMU exits or the watch is aborted. */
  const pause = (ms: number) => Promise.race([t.whenExited, aborted, sleep(ms)]);
  const lastProgress: { value: bigint; at: number; irqs: bigint }[] = Array.from({ length: opts.nthreads }, () => ({ value: -1n, at: started, irqs: 0n }));
  try {
    // The state at the start (the VM may have stopped before anyone watched); without an answer
    // (QEMU on its way out), assume it runs and let its exit speak.
    let state = (await queryStatus(t)) ?? 'running';
    let stateAt = Date.now();
    let needQuery = false;
    /** Time spent running while the mailbox said 'booting'. */
    let bootRunMs = 0;
    let lastTick = Date.now();
    /** Since when every thread has been finished with the mailbox still 'running'. */
    let finishedSince: number | null = null;
    for (;;) {
      if (opts.signal?.aborted) return { kind: 'aborted', afterMs: Date.now() - started };
      if (t.hasExited) break;
      if (shutdownEvent) break;
      if (stateEvent || needQuery || (state !== 'running' && Date.now() - stateAt >= STATE_REQUERY_MS)) {
        stateEvent = false;
        needQuery = false;
        state = (await queryStatus(t)) ?? state;
        stateAt = Date.now();
        const cls = classifyRunState(state);
        if (state === 'internal-error') {
          await sleep(30); // let QEMU's stderr dump reach us
          return { kind: 'internal-error', status: state, dump: internalErrorDump(t.stderr), registers: await t.registers() };
        }
        if (cls === 'error') {
          // Stopped by the guest or the host for another reason (guest-panicked, io-error, ...).
          return { kind: 'internal-error', status: state, dump: t.stderr.slice(-4000), registers: await t.registers() };
        }
        if (cls === 'migrated') return { kind: 'migrated', status: 'postmigrate' };
      }
      const runs = state === 'running';
      const now = Date.now();
      const { mailbox, threads } = await t.readMailbox();
      if (runs && mailbox.state === BigInt(MAILBOX_STATE.booting)) bootRunMs += now - lastTick;
      lastTick = now;
      // Boot takes ~100 ms; a guest that runs and never reaches 'running' is stuck before any thread.
      if (runs && mailbox.state === BigInt(MAILBOX_STATE.booting) && bootRunMs >= bootHangMs) {
        return { kind: 'hang', thread: -1, stalledMs: bootRunMs, registers: await t.registers() };
      }
      if (!MIGRATING_STATES.has(state) && (mailbox.state === BigInt(MAILBOX_STATE.done) || mailbox.state === BigInt(MAILBOX_STATE.failed))) {
        // The guest is finished; it leaves through isa-debug-exit once answered, or we end it.
        if (t.guestFinished && !t.hasExited) await t.guestFinished().catch(() => undefined);
        await Promise.race([t.whenExited, sleep(200)]);
        if (!t.hasExited) await t.kill();
        break;
      }
      // Every thread finished (none idle or running) while the mailbox still says 'running': the
      // BSP's remaining steps take microseconds, so a stall of stallMs is QEMU's, not the guest's.
      const finished = runs && mailbox.state === BigInt(MAILBOX_STATE.running) && opts.nthreads > 0 && threads.slice(0, opts.nthreads).every((th) => th !== undefined && th.state !== BigInt(THREAD_STATE.running) && th.state !== BigInt(THREAD_STATE.idle));
      if (!finished) finishedSince = null;
      else if (finishedSince === null) finishedSince = now;
      else if (now - finishedSince >= opts.stallMs) {
        const qmpAnswered = (await queryStatus(t)) !== null;
        const again = await t.readMailbox();
        if (!t.hasExited && again.mailbox.state === BigInt(MAILBOX_STATE.running)) {
          return { kind: 'vmm-hang', stalledMs: Date.now() - finishedSince, qmpAnswered, registers: qmpAnswered ? await t.registers() : null };
        }
        finishedSince = null;
      }
      for (let i = 0; i < opts.nthreads; i++) {
        const th = threads[i]!;
        if (!runs || th.state !== BigInt(THREAD_STATE.running)) {
          lastProgress[i] = { value: -1n, at: now, irqs: th.irq_total ?? 0n };
          continue;
        }
        const value = progressOf(th);
        if (value !== lastProgress[i]!.value) lastProgress[i] = { value, at: now, irqs: th.irq_total ?? 0n };
        else if (now - lastProgress[i]!.at >= opts.stallMs) {
          // Confirm before calling it a hang: `info registers` kicks every vCPU out of KVM_RUN, and
          // a vCPU that was only descheduled on a busy host moves again within the grace period.
          const registers = await t.registers();
          await Promise.race([t.whenExited, sleep(STALL_GRACE_MS)]);
          const again = (await t.readMailbox()).threads[i]!;
          // Someone may have stopped the VM meanwhile: a paused guest makes no progress by design.
          if (stateEvent) {
            needQuery = true;
            break;
          }
          if (!t.hasExited && again.state === th.state && progressOf(again) === value) {
            const interrupts = Number((again.irq_total ?? 0n) - lastProgress[i]!.irqs);
            return { kind: 'hang', thread: i, stalledMs: Date.now() - lastProgress[i]!.at, registers, interrupts };
          }
          lastProgress[i] = { value: progressOf(again), at: Date.now(), irqs: again.irq_total ?? 0n };
        }
      }
      if (needQuery) continue;
      if (now - started >= opts.timeoutMs) return { kind: 'timeout', afterMs: now - started, registers: await t.registers() };
      await pause(pollMs);
    }
    await t.whenExited;
    // QEMU writes SHUTDOWN to the QMP socket before it exits, but the exit can be seen before the
    // socket's last data is read (a triple fault once read as a crash with exit code 0 under load):
    // wait for the connection's end, briefly, before deciding there was none.
    if (!shutdownEvent && !t.qmp.closed) {
      await new Promise<void>((resolve) => {
        const off = t.qmp.onClose(() => resolve());
        void sleep(1000).then(() => {
          off();
          resolve();
        });
      });
    }
    const se = shutdownEvent as QmpEvent | null;
    if (se && (se.data?.reason === 'guest-reset' || se.data?.reason === 'guest-shutdown')) {
      return { kind: 'guest-reset', reason: String(se.data?.reason) };
    }
    const { exitCode, signal } = t.exitStatus;
    if (exitCode === EXIT_DONE || exitCode === EXIT_DONE_FAILED || exitCode === EXIT_CHECKS_FAILED || signal === 'SIGKILL') {
      // The RAM file may be gone already when someone else disposed of the VM meanwhile.
      const mailbox = await t.readMailbox().then((m) => m.mailbox, () => null);
      if (mailbox && (mailbox.state === BigInt(MAILBOX_STATE.done) || mailbox.state === BigInt(MAILBOX_STATE.failed))) {
        return { kind: 'completed', exitCode };
      }
    }
    return { kind: 'vmm-crash', exitCode, signal, message: qemuWords(t.stderr) };
  } finally {
    unsubscribe();
  }
}
