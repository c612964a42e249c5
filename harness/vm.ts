/**
 * One QEMU VM running our guest: launch (argument arrays only), QMP, watch, collect, clean up.
 *
 * What the harness watches, and how it tells the outcomes apart without waiting for a timeout:
 *  - the guest finishes: it writes MAILBOX_DONE and leaves through isa-debug-exit (exit 33/35);
 *  - KVM stops the VM with an internal error (emulation failure): QEMU keeps running but emits a
 *    STOP event and reports status 'internal-error'; we keep the register and code dump it printed;
 *  - an instruction never returns or a vCPU halts for good: its heartbeat in the mailbox stops
 *    moving for `stallMs` while its thread is running; we take `info registers` and the serial tail;
 *  - the guest resets (triple fault): with -no-reboot QEMU shuts down with reason 'guest-reset';
 *  - QEMU itself exits or crashes: its exit status and stderr;
 *  - and, last, the overall timeout.
 * Guest RAM is a shared file in the VM's private directory, read directly by the host; or, with
 * another MachineConfig.ramBackend, QEMU's own RAM block, read through /proc/<pid>/mem (copied into
 * that file when the guest finishes, so a VM's results outlive QEMU either way).
 * Under KVM, KVM's own statistics (harness/kvmStats.ts) are read once the VM is created, before
 * `cont`, and again when the guest has finished and waits for the host (guestFinished, before the
 * exit handshake's ack); the run result carries the difference (VmRunResult.kvmStats).
 * The watching itself lives in harness/watchdog.ts (it also knows the run states of migration);
 * waitForOutcome here is a thin user of it.
 */
import { open, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { Parser } from 'tap-parser';
import { QmpClient, QmpClosedError, listenQmp } from './qmp.js';
import { createPrivateDir, removePrivateDir, trackPid, untrackPid } from './runtime.js';
import { fieldOffset, LAYOUT, MAILBOX_MAGIC, MAILBOX_THREADS_OFFSET, readStruct, structBytes } from './guest/abi.js';
import type { ProgramImage } from './bytecode.js';
import { decodeIrqLog, IRQ_LOG_BYTES_PER_VCPU, type IrqLog } from './irqLog.js';
import { qemuWords, watchVm, type VmOutcome, type WatchOptions, type WatchTarget } from './watchdog.js';
import { readKvmStats, statsDelta, type KvmStatsReading } from './kvmStats.js';
import { checkKnownBytes, locateRam, parseSmaps, RamLocateError, ramReadPath, type Mapping, type RamBackend } from './ramMap.js';
export type { RamBackend } from './ramMap.js';

// These moved to the watchdog; importers keep finding them here.
export { internalErrorDump, qemuWords } from './watchdog.js';
export type { VmOutcome } from './watchdog.js';

export type MachineType = 'microvm' | 'pc' | 'q35';
export type { Accel } from './vcpuChoice.js';
import { defaultVcpuModel, publishedChoice, type Accel } from './vcpuChoice.js';

export interface MachineConfig {
  /** QEMU binary (path or name on PATH). */
  readonly qemu: string;
  readonly machine: MachineType;
  readonly accel: Accel;
  readonly kernelIrqchip?: 'on' | 'split' | 'off';
  /** Accelerator properties a case needs (KVM's dirty-ring-size=N), appended to -accel. */
  readonly accelProps?: readonly string[];
  readonly cpus: number;
  readonly ramMiB: number;
  /** -cpu argument, e.g. 'host' (KVM) or 'max' (TCG), with optional ,+feat/-feat props. */
  readonly cpuModel: string;
  /** Appended verbatim after our arguments (--qemu-arg): patched builds, extra devices, mutations. */
  readonly extraArgs: readonly string[];
  /** Machine properties a family needs, appended to -M (microvm's rtc=on, pit=on). */
  readonly machineProps?: readonly string[];
  /** Arguments a family needs (-rtc driftfix=slew), placed before extraArgs so the user's still win. */
  readonly familyArgs?: readonly string[];
  /**
   * What backs guest RAM (default 'file': a shared file in the VM's private directory, read as a
   * file). 'anonymous': memory-backend-ram (QEMU madvises MADV_HUGEPAGE, so under THP `madvise`
   * this is the transparent-huge-page case); 'memfd': memory-backend-memfd, share=on;
   * 'hugetlbfs': memfd with hugetlb=on (2 MiB pages; only where the host has them free). The
   * harness reads the last three through /proc/<QEMU pid>/mem (harness/ramMap.ts), and only while
   * QEMU lives.
   */
  readonly ramBackend?: RamBackend;
}

/** Where a VM's guest-physical memory can be pread: `path` from offset `base`, `len` bytes of it (Vm.ramSource). */
export interface RamSource {
  readonly path: string;
  readonly base: number;
  readonly len: number;
}

export const MACHINE_TYPES: readonly MachineType[] = ['microvm', 'pc', 'q35'];

/**
 * The default machine. Its vCPU model is the one the run chose for this QEMU and accelerator
 * (harness/vcpuModel.ts: `host` minus what the host refuses), else plain `host` (`max` under TCG).
 */
export function defaultMachineConfig(over: Partial<MachineConfig> = {}): MachineConfig {
  const accel = over.accel ?? 'kvm';
  const qemu = over.qemu ?? (process.env.KVMPROP_QEMU || 'qemu-system-x86_64');
  return {
    qemu,
    machine: 'microvm',
    accel,
    cpus: 1,
    ramMiB: 64,
    cpuModel: publishedChoice(qemu, accel)?.used ?? defaultVcpuModel(accel),
    extraArgs: [],
    ...over,
  };
}

const DEBUG_EXIT_PORT = 0xf4;

export function qemuArgs(
  cfg: MachineConfig,
  files: { kernel: string; ram: string; qmpSocket: string; program?: string },
  opts: { incoming?: string } = {},
): string[] {
  const accel = [cfg.accel, ...(cfg.accel === 'kvm' && cfg.kernelIrqchip ? [`kernel-irqchip=${cfg.kernelIrqchip}`] : []), ...(cfg.accelProps ?? [])].join(',');
  const args = [
    '-M', [cfg.machine, 'memory-backend=ram0', ...(cfg.machineProps ?? [])].join(','),
    '-accel', accel,
    '-cpu', cfg.cpuModel,
    '-smp', String(cfg.cpus),
    '-m', `${cfg.ramMiB}M`,
    '-object', ramObject(cfg, files.ram),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-S',
    '-chardev', `socket,id=qmp,path=${files.qmpSocket}`,
    '-mon', 'chardev=qmp,mode=control',
    '-chardev', 'stdio,id=com1,signal=off',
    '-serial', 'chardev:com1',
    '-device', `isa-debug-exit,iobase=0x${DEBUG_EXIT_PORT.toString(16)},iosize=4`,
    '-kernel', files.kernel,
  ];
  if (cfg.machine !== 'microvm') args.push('-bios', 'qboot.rom');
  if (files.program) args.push('-device', `loader,file=${files.program},addr=0x${LAYOUT.program.toString(16)},force-raw=on`);
  if (opts.incoming) args.push('-incoming', opts.incoming);
  args.push(...(cfg.familyArgs ?? []), ...cfg.extraArgs);
  return args;
}

/** The -object that backs guest RAM (MachineConfig.ramBackend). */
export function ramObject(cfg: Pick<MachineConfig, 'ramMiB' | 'ramBackend'>, ramPath: string): string {
  const size = `id=ram0,size=${cfg.ramMiB}M`;
  switch (cfg.ramBackend ?? 'file') {
    case 'file':
      return `memory-backend-file,${size},mem-path=${ramPath},share=on`;
    case 'anonymous':
      return `memory-backend-ram,${size}`;
    case 'memfd':
      return `memory-backend-memfd,${size},share=on`;
    case 'hugetlbfs':
      return `memory-backend-memfd,${size},share=on,hugetlb=on,hugetlbsize=2M`;
  }
}

/**
 * Our QEMU arguments without the harness: no QMP chardev and monitor, and no -S unless `keepS`
 * (a raw migration destination waits for its stream either way).
 */
export function rawQemuArgs(all: readonly string[], opts: { keepS?: boolean } = {}): string[] {
  const out: string[] = [];
  for (let i = 0; i < all.length; i++) {
    if (all[i] === '-S' && !opts.keepS) continue;
    if ((all[i] === '-chardev' && all[i + 1]!.startsWith('socket,id=qmp')) || all[i] === '-mon') {
      i++;
      continue;
    }
    out.push(all[i]!);
  }
  return out;
}

export interface TapVerdict {
  readonly ok: boolean;
  readonly bailout: string | null;
  readonly plan: number | null;
  readonly results: readonly { id: number; ok: boolean; name: string }[];
}

export interface ThreadResult {
  readonly status: Record<string, bigint>;
  /** The thread's observation bytes, [0, obs_used). */
  readonly records: Uint8Array;
  /** The interrupts its vCPU took: counts per vector and the (TSC, vector) ring. */
  readonly irqLog: IrqLog;
}

export interface VmRunResult {
  readonly outcome: VmOutcome;
  readonly tap: TapVerdict;
  readonly serial: string;
  readonly stderr: string;
  readonly mailbox: Record<string, bigint>;
  readonly threads: readonly ThreadResult[];
  readonly durationMs: number;
  readonly args: readonly string[];
  /** How long the host kept QEMU's threads waiting to run while the guest ran (hostWait()), or null where /proc does not say. */
  readonly hostWait: HostWait | null;
  /** What KVM counted while the guest ran; null when not measured (TCG, a QEMU without query-stats, QEMU gone before the last reading). */
  readonly kvmStats: KvmStatsRun | null;
}

/** KVM's statistics over one run of the guest. */
export interface KvmStatsRun {
  /** From before `cont` to the last reading (harness/kvmStats.ts statsDelta). */
  readonly delta: KvmStatsReading;
  /**
   * When the last reading was taken: 'finished', the guest had finished and waited for the host
   * (everything it did is in); 'outcome', it never finished (a hang, an internal error, a timeout)
   * and QEMU still answered once the outcome was known.
   */
  readonly at: 'finished' | 'outcome';
}

/**
 * Time the host scheduler kept QEMU's threads runnable but not running: `run_delay`, the second
 * field of /proc/PID/task/TID/schedstat (ns, the kernel's sched_info; what a guest sees as steal
 * time). A vCPU thread that waits to run delays every interrupt due meanwhile; no hypervisor bug
 * shows up here, since KVM delaying an injection leaves the thread running or idle, not waiting.
 */
export interface HostWait {
  /** Per vCPU (cpu-index order), ns. */
  readonly vcpusNs: readonly number[];
  /** QEMU's main loop thread (its device timers: RTC, user-space PIT), ns. */
  readonly mainNs: number;
  /** KVM's in-kernel PIT worker thread (`kvm-pit/PID`, which injects its ticks), ns; absent without one. */
  readonly pitNs?: number;
  /**
   * The longest single wait of QEMU's main loop thread while the guest ran, ns (runVm samples its
   * run_delay every few ms: the kernel adds a wait to run_delay when the thread gets the CPU back,
   * so one wait shows as one step). The main loop runs the timers QEMU emulates (the RTC, a
   * user-space PIT): a step of 14 ms is 14 ms in which none of them fired. Many short waits (a
   * busy QMP conversation) make no long step. Absent where it was not sampled.
   */
  readonly mainLongestWaitNs?: number;
  /**
   * The largest single step of any host CPU's steal while the guest ran (sampled with
   * mainLongestWaitNs), ns: one stall of the host by its own hypervisor, to within the 10 ms of
   * /proc/stat, which counts in USER_HZ (a step may also be small steals adding up to the next
   * 10 ms). Where the host is itself a VM, its hypervisor takes the CPU from every thread on it at
   * once, KVM's timers and QEMU's included, and no run_delay shows it. Not the case's total steal:
   * a case of a second on this host accrues 40-120 ms of it in small pieces.
   */
  readonly cpuLongestStealNs?: number;
}

/** How often runVm samples the main loop's run_delay and the host's steal (mainLongestWaitNs, cpuLongestStealNs). */
const MAIN_WAIT_SAMPLE_MS = 2;

/**
 * Read each counter (a list of cumulative ns values) every MAIN_WAIT_SAMPLE_MS until `done`; per
 * counter, the largest step of any of its values between two readings, ns, or null once it could
 * not be read.
 */
async function largestSteps(counters: readonly (() => Promise<readonly number[] | null>)[], done: AbortSignal): Promise<(number | null)[]> {
  const prev = await Promise.all(counters.map((read) => read()));
  const largest: (number | null)[] = prev.map((p) => (p === null ? null : 0));
  while (!done.aborted && largest.some((l) => l !== null)) {
    await sleep(MAIN_WAIT_SAMPLE_MS);
    for (let k = 0; k < counters.length; k++) {
      if (largest[k] === null) continue;
      const now = await counters[k]!();
      const before = prev[k]!;
      if (now === null || now.length !== before.length) {
        largest[k] = null;
        continue;
      }
      largest[k] = Math.max(largest[k]!, ...now.map((v, i) => v - before[i]!));
      prev[k] = now;
    }
  }
  return largest;
}

/** USER_HZ: the unit of /proc/stat (fixed at 100 on x86 Linux, whatever the kernel's HZ). */
const USER_HZ = 100;

/** Per-CPU steal time so far (/proc/stat `cpuN` lines, 8th value), ns; null where it cannot be read. */
async function cpuStealNs(): Promise<number[] | null> {
  try {
    const lines = (await readFile('/proc/stat', 'utf8')).split('\n').filter((l) => /^cpu\d+ /.test(l));
    const steal = lines.map((l) => Number(l.trim().split(/\s+/)[8]) * (1e9 / USER_HZ));
    return steal.length && steal.every(Number.isFinite) ? steal : null;
  } catch {
    return null;
  }
}

/** The run_delay of one host thread, ns, or null when its schedstat cannot be read. */
async function runDelayNs(pid: number, tid: number): Promise<number | null> {
  try {
    const f = (await readFile(`/proc/${pid}/task/${tid}/schedstat`, 'utf8')).trim().split(/\s+/);
    const v = Number(f[1]);
    return Number.isFinite(v) ? v : null;
  } catch {
    return null;
  }
}

/** after − before, per thread; null when either is unknown. */
export function hostWaitBetween(before: HostWait | null, after: HostWait | null): HostWait | null {
  if (!before || !after || before.vcpusNs.length !== after.vcpusNs.length) return null;
  const pit = before.pitNs !== undefined && after.pitNs !== undefined ? { pitNs: Math.max(0, after.pitNs - before.pitNs) } : {};
  return { vcpusNs: after.vcpusNs.map((v, i) => Math.max(0, v - before.vcpusNs[i]!)), mainNs: Math.max(0, after.mainNs - before.mainNs), ...pit };
}

/** The pid of KVM's PIT worker kthread for the VM of QEMU `pid` (comm `kvm-pit/PID`), or null. */
async function kvmPitThread(pid: number): Promise<number | null> {
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const comm = await readFile(`/proc/${name}/comm`, 'utf8').catch(() => '');
    if (comm.trim() === `kvm-pit/${pid}`) return Number(name);
  }
  return null;
}

/** Raised when a VM cannot be started: QEMU refused its arguments, aborted, or never connected. */
export class VmSetupError extends Error {
  override name = 'VmSetupError';
  constructor(
    message: string,
    readonly stderr = '',
    /** The command line that was run (QEMU and its arguments), when it got that far. */
    readonly commandLine: readonly string[] = [],
  ) {
    super(message);
  }
  /** QEMU's own words: the meaningful lines of what it printed. */
  get qemuMessage(): string {
    return qemuWords(this.stderr);
  }
}

const MAX_CAPTURE = 1 << 20;
const THREAD_STATUS_BYTES = structBytes('thread_status');

export interface StartOptions {
  readonly guestElf: string;
  readonly program?: ProgramImage;
  readonly label?: string;
  /** Start as an -incoming destination (e.g. 'defer' or 'unix:PATH'); the guest does not run until migration ends. */
  readonly incoming?: string;
  /** Leave the VM paused after start (default: run). */
  readonly paused?: boolean;
  /** Last-moment extra QEMU arguments, made inside the VM's private directory (mutants use it). */
  readonly prepare?: (dir: string) => Promise<readonly string[]>;
  /** Read KVM's statistics once the VM is created (Vm.kvmStatsAtStart); default: under KVM. */
  readonly kvmStats?: boolean;
  /**
   * Hand QEMU, as its fd 3, a read-only descriptor of `restore.bin` in the VM's private directory
   * (created empty, 0600): whatever is saved there later restores with `migrate-incoming fd:3`.
   * QEMU 7.2's incoming `fd:` takes a number (migration/fd.c: strtol); its outgoing `fd:` takes only
   * a name registered with `getfd`, which needs SCM_RIGHTS over the monitor (measured: `migrate
   * fd:3` answers "File descriptor named '3' has not been found"), so saves go through a socket.
   */
  readonly restoreFile?: boolean;
}

/** The fd number a VM started with `restoreFile` reads its restore file on. */
export const RESTORE_FD = 3;

export class Vm implements WatchTarget {
  private stdoutText = '';
  private stderrText = '';
  private exited = false;
  private exitInfo: { exitCode: number | null; signal: string | null } = { exitCode: null, signal: null };
  private readonly exitPromise: Promise<void>;
  private ramFd: Awaited<ReturnType<typeof open>> | null = null;
  /** Where guest-physical 0 is in what ramFd reads: 0 in the RAM file, QEMU's mapping in /proc/<pid>/mem. */
  private ramBase = 0;
  private ramFdPath = '';
  private ramMapping: Mapping | null = null;
  /** Bytes the guest must hold once it runs (the program image at LAYOUT.program): checked once, on a read after expectRam. */
  private ramExpected: { addr: number; bytes: Uint8Array } | null = null;
  private ramChecked = false;
  /** Non-file RAM copied into ramPath when the guest finished (guestFinished): what reads use once QEMU is gone. */
  private ramSnapshot = false;
  /** KVM's statistics once the VM was created, before its guest first ran; null: not read, or none (TCG). */
  kvmStatsAtStart: KvmStatsReading | null = null;

  private constructor(
    readonly config: MachineConfig,
    readonly dir: string,
    readonly ramPath: string,
    readonly args: readonly string[],
    private readonly proc: ResultPromise,
    readonly qmp: QmpClient,
    readonly startedAt: number,
    /** The file QEMU reads as fd RESTORE_FD (StartOptions.restoreFile), or null. */
    readonly restorePath: string | null = null,
  ) {
    proc.stdout?.on('data', (b: Buffer) => {
      if (this.stdoutText.length < MAX_CAPTURE) this.stdoutText += b.toString('latin1');
    });
    proc.stderr?.on('data', (b: Buffer) => {
      if (this.stderrText.length < MAX_CAPTURE) this.stderrText += b.toString('latin1');
    });
    this.exitPromise = proc.then(
      (r) => this.markExited(r.exitCode ?? null, r.signal ?? null),
      (e: { exitCode?: number; signal?: string }) => this.markExited(e.exitCode ?? null, e.signal ?? null),
    );
  }

  private markExited(exitCode: number | null, signal: string | null): void {
    this.exited = true;
    this.exitInfo = { exitCode, signal };
    if (this.proc.pid) untrackPid(this.proc.pid);
  }

  /** Launch QEMU paused, take its QMP connection, then let the guest run (unless asked not to). */
  static async start(cfg: MachineConfig, opts: StartOptions): Promise<Vm> {
    const dir = await createPrivateDir(opts.label ?? 'vm');
    let proc: ResultPromise | undefined;
    let qmp: QmpClient | null = null;
    try {
      const ramPath = join(dir, 'ram');
      const qmpSocket = join(dir, 'qmp.sock');
      let program: string | undefined;
      if (opts.program) {
        program = join(dir, 'program.bin');
        await writeFile(program, opts.program.image, { mode: 0o600 });
      }
      if (opts.program && cfg.ramMiB < opts.program.minRamMiB) {
        throw new VmSetupError(`the program needs at least ${opts.program.minRamMiB} MiB of guest RAM; the VM has ${cfg.ramMiB}`);
      }
      const args = [
        ...qemuArgs(cfg, { kernel: opts.guestElf, ram: ramPath, qmpSocket, ...(program ? { program } : {}) }, opts.incoming ? { incoming: opts.incoming } : {}),
        ...(opts.prepare ? await opts.prepare(dir) : []),
      ];
      const listener = await listenQmp(qmpSocket);
      const restorePath = opts.restoreFile ? join(dir, 'restore.bin') : null;
      // Only QEMU keeps the descriptor: ours is closed once it is spawned (or failed to be).
      const restore = restorePath ? await writeFile(restorePath, new Uint8Array(), { mode: 0o600 }).then(() => open(restorePath, 'r')) : null;
      try {
        // setpriv makes the kernel SIGKILL QEMU when we die, however we die; it keeps fd 3 open for QEMU.
        // execa passes a bare fd number in stdio[3] to spawn as it is (QEMU's fd 3 is a dup of it;
        // measured), though its types admit numbers for fds 0-2 only.
        const stdio = (restore ? ['ignore', 'pipe', 'pipe', restore.fd] : ['ignore', 'pipe', 'pipe']) as unknown as ['ignore', 'pipe', 'pipe'];
        proc = execa('setpriv', ['--pdeathsig', 'KILL', '--', cfg.qemu, ...args], { stdio, buffer: false, reject: false, cleanup: true });
      } finally {
        await restore?.close();
      }
      if (proc.pid) trackPid(proc.pid);
      // Until the Vm exists (and captures it), keep what QEMU says: a failed start explains itself.
      let stderr = '';
      const early = (b: Buffer) => (stderr += b.toString('latin1'));
      proc.stderr?.on('data', early);
      const exited = proc.then(() => null);
      const commandLine = [cfg.qemu, ...args];
      /** QEMU went away while we were still setting it up: say so in its own words. */
      const refused = async (cause?: unknown): Promise<VmSetupError> => {
        const r = await Promise.race([proc!, sleep(3000).then(() => null)]);
        const status = r ? (r.signal ? `signal ${r.signal}` : `exit status ${r.exitCode}`) : 'still running';
        const words = qemuWords(stderr) || (cause instanceof Error ? cause.message : status);
        return new VmSetupError(`QEMU (${cfg.qemu}) could not start the VM (${status}): ${words}`, stderr, commandLine);
      };
      try {
        qmp = await Promise.race([listener.accept({ timeoutMs: 30_000 }), exited]);
      } catch (e) {
        if (e instanceof QmpClosedError) throw await refused(e);
        throw e;
      } finally {
        await listener.close();
      }
      if (!qmp) throw await refused();
      // The Vm captures QEMU's output from here on; the guest runs only after `cont`.
      proc.stderr?.off('data', early);
      const vm = new Vm(cfg, dir, ramPath, args, proc, qmp, Date.now(), restorePath);
      if (program && opts.program) vm.expectRam(LAYOUT.program, opts.program.image);
      vm.stderrText = stderr;
      try {
        // QEMU connects to QMP early; it can still abort while it sets the vCPUs up (a KVM that
        // refuses an MSR), before or after the greeting. Either way the VM never ran.
        // KVM's statistics first: the VM and its vCPUs exist, nothing has run (all 0 but the schema).
        if (opts.kvmStats ?? cfg.accel === 'kvm') vm.kvmStatsAtStart = await readKvmStats(qmp);
        if (!opts.paused && !opts.incoming) await qmp.execute('cont');
        else await qmp.execute('query-status');
      } catch (e) {
        if (!(e instanceof QmpClosedError)) throw e;
        // A short program can run to its end (and QEMU exit through isa-debug-exit) before the
        // reply to `cont` is written, as TCG does: then the guest ran, and the VM is its result.
        if (!opts.paused && !opts.incoming && (await vm.readMailbox()).mailbox.magic === BigInt(MAILBOX_MAGIC)) return vm;
        stderr = vm.stderrText;
        throw await refused(e);
      }
      return vm;
    } catch (e) {
      // Nothing of a failed start survives: QEMU (if it runs), its pid record, its directory.
      qmp?.close();
      if (proc) {
        proc.kill('SIGKILL');
        await proc.catch(() => undefined);
        if (proc.pid) untrackPid(proc.pid);
      }
      await removePrivateDir(dir);
      throw e;
    }
  }

  /** QEMU's pid (setpriv execs it, so the child is QEMU itself). */
  get pid(): number | undefined {
    return this.proc.pid;
  }

  get serial(): string {
    return this.stdoutText;
  }

  get stderr(): string {
    return this.stderrText;
  }

  get hasExited(): boolean {
    return this.exited;
  }

  /** Settles when QEMU has exited. */
  get whenExited(): Promise<void> {
    return this.exitPromise;
  }

  /** QEMU's exit status or signal, once it has exited. */
  get exitStatus(): { readonly exitCode: number | null; readonly signal: string | null } {
    return this.exitInfo;
  }

  /**
   * Say what the guest holds at `addr` from now on (a destination, once its stream arrived: the
   * program image its source loaded). A RAM block found in QEMU's mappings is checked against it
   * on the next read, once; a mismatch is an error (the mapping is not guest RAM).
   */
  expectRam(addr: number, bytes: Uint8Array): void {
    if (this.ramExpected) return;
    this.ramExpected = { addr, bytes: bytes.subarray(0, Math.min(bytes.length, 4096)) };
    this.ramChecked = false;
  }

  get ramBackend(): RamBackend {
    return this.config.ramBackend ?? 'file';
  }

  /**
   * What to pread for guest-physical memory: the RAM file from 0, or /proc/<QEMU pid>/mem from the
   * RAM block's host address (found on first use, harness/ramMap.ts). Throws one line where QEMU is
   * gone (non-file RAM goes with it) or its RAM block cannot be told.
   */
  async ramSource(): Promise<RamSource> {
    await this.ramHandle();
    return { path: this.ramFdPath, base: this.ramBase, len: this.config.ramMiB << 20 };
  }

  private async locate(): Promise<{ path: string; base: number }> {
    const backend = this.ramBackend;
    if (backend === 'file' || (this.exited && this.ramSnapshot)) return { path: this.ramPath, base: 0 };
    const pid = this.proc.pid;
    if (this.exited || !pid) throw new RamLocateError(`guest RAM (${backend}) went with QEMU (it exited): only 'file' RAM can be read afterwards`);
    this.ramMapping ??= await locateRam(pid, backend, this.config.ramMiB << 20);
    return ramReadPath(pid, this.ramMapping);
  }

  /** The RAM block's mapping in QEMU (null for 'file', or before the first read), read again for its huge-page figures. */
  async ramMappingNow(): Promise<Mapping | null> {
    if (this.ramBackend === 'file' || this.exited || !this.proc.pid) return null;
    await this.ramSource();
    const start = this.ramMapping?.start;
    const maps = parseSmaps(await readFile(`/proc/${this.proc.pid}/smaps`, 'utf8').catch(() => ''));
    return maps.find((m) => m.start === start) ?? null;
  }

  private async ramHandle(): Promise<Awaited<ReturnType<typeof open>>> {
    if (this.ramFd && this.exited && this.ramBackend !== 'file' && this.ramFdPath !== this.ramPath) {
      // QEMU's memory went with it: from here on the copy taken when the guest finished, if any.
      await this.ramFd.close().catch(() => undefined);
      this.ramFd = null;
    }
    if (!this.ramFd) {
      const { path, base } = await this.locate();
      this.ramFd = await open(path, 'r');
      this.ramBase = base;
      this.ramFdPath = path;
    }
    if (this.ramExpected && !this.ramChecked && this.ramBackend !== 'file') {
      const { addr, bytes } = this.ramExpected;
      const got = Buffer.alloc(bytes.length);
      const { bytesRead } = await this.ramFd.read(got, 0, bytes.length, this.ramBase + addr);
      const why = checkKnownBytes(got.subarray(0, bytesRead), bytes, addr);
      if (why) throw new RamLocateError(`guest RAM (${this.ramBackend}) of QEMU pid ${this.proc.pid}: the mapping at 0x${this.ramBase.toString(16)} is not guest RAM: ${why}`);
      this.ramChecked = true;
    }
    return this.ramFd;
  }

  /** Read guest-physical memory (RAM below 2 GiB maps 1:1 onto the RAM file, or QEMU's RAM block). */
  async readPhys(addr: number, len: number): Promise<Uint8Array> {
    const buf = new Uint8Array(len);
    await this.readPhysInto(addr, buf, len);
    return buf;
  }

  /** readPhys into the caller's buffer (a loop over a large range reuses one, with no copy); resolves with the bytes read. */
  async readPhysInto(addr: number, buf: Uint8Array, len: number): Promise<number> {
    const fd = await this.ramHandle();
    let got = 0;
    while (got < len) {
      const { bytesRead } = await fd.read(buf, got, len - got, this.ramBase + addr + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got;
  }

  async readMailbox(): Promise<{ mailbox: Record<string, bigint>; threads: Record<string, bigint>[] }> {
    const page = await this.readPhys(LAYOUT.mailbox, MAILBOX_THREADS_OFFSET + THREAD_STATUS_BYTES * LAYOUT.maxCpus);
    const mailbox = readStruct('mailbox', page, 0);
    const threads: Record<string, bigint>[] = [];
    for (let i = 0; i < LAYOUT.maxCpus; i++) threads.push(readStruct('thread_status', page, MAILBOX_THREADS_OFFSET + i * THREAD_STATUS_BYTES));
    return { mailbox, threads };
  }

  /** HMP `info registers -a`, bounded in time: a wedged vCPU must not wedge us. */
  async registers(timeoutMs = 2000): Promise<string | null> {
    if (this.exited || this.qmp.closed) return null;
    try {
      return await this.qmp.hmp('info registers -a', { timeoutMs });
    } catch {
      return null;
    }
  }

  /**
   * Wait until the guest finishes or something goes wrong, and say which. `nthreads` is how many
   * threads the program runs (for stall detection); the VM is left as it is (call dispose()).
   * The watchdog (harness/watchdog.ts) does the watching: a VM paused on purpose, a waiting
   * -incoming destination and a source in its switchover are waited on, never a hang or an error.
   * VmOutcome has no kind for a source that was migrated away (its users, e.g. workload.ts
   * describeOutcome, have no case for one; sessions, harness/session.ts, report { kind: 'migrated' }):
   * here it reads as an internal stop with status 'postmigrate'.
   */
  async waitForOutcome(opts: Omit<WatchOptions, 'signal'>): Promise<VmOutcome> {
    const outcome = await watchVm(this, opts);
    switch (outcome.kind) {
      case 'migrated':
        return { kind: 'internal-error', status: outcome.status, dump: this.stderrText.slice(-4000), registers: await this.registers() };
      case 'aborted': // no signal was given
        throw new Error('the watchdog stopped watching without being asked to');
      default:
        return outcome;
    }
  }

  /** Collect the verdict and observations after waitForOutcome. */
  private vcpuTids: number[] | null = null;
  private pitTid: number | null | undefined = undefined;
  /** hostWait() read when the guest finished, before it was let go (guestFinished). */
  private finishedHostWait: HostWait | null = null;
  /** KVM's statistics read when the guest finished, before it was let go (guestFinished). */
  private finishedKvmStats: KvmStatsReading | null = null;

  /** The exit handshake's host side: take the last readings, then set mailbox.exit_ack. */
  async guestFinished(): Promise<void> {
    this.finishedHostWait = await this.hostWait();
    // Only where the start was read: under TCG there is nothing to ask for.
    if (this.kvmStatsAtStart) this.finishedKvmStats = await readKvmStats(this.qmp);
    // The guest waits for the ack and writes nothing meanwhile: its RAM is final, copy it out
    // while QEMU still holds it (results are collected after QEMU exited).
    if (this.ramBackend !== 'file') await this.copyRamOut();
    const { path, base } = await this.locate();
    // The ack goes to the guest, and to the copy of its RAM too (the copy is what reads see later).
    for (const [p, at] of [[path, base], ...(this.ramSnapshot ? [[this.ramPath, 0] as const] : [])] as const) {
      const fd = await open(p, 'r+');
      try {
        const ack = new Uint8Array(4);
        new DataView(ack.buffer).setUint32(0, 1, true);
        await fd.write(ack, 0, 4, at + LAYOUT.mailbox + fieldOffset('mailbox', 'exit_ack'));
      } finally {
        await fd.close();
      }
    }
  }

  private async copyRamOut(): Promise<void> {
    const CHUNK = 1 << 20;
    const buf = Buffer.allocUnsafe(CHUNK);
    const out = await open(this.ramPath, 'w', 0o600);
    try {
      for (let at = 0; at < this.config.ramMiB << 20; at += CHUNK) {
        const n = await this.readPhysInto(at, buf, CHUNK);
        await out.write(buf, 0, n, at);
      }
    } finally {
      await out.close();
    }
    this.ramSnapshot = true;
  }

  /** KVM's statistics now, or null (none: TCG; QEMU gone or not answering). */
  kvmStatsNow(): Promise<KvmStatsReading | null> {
    return this.exited ? Promise.resolve(null) : readKvmStats(this.qmp);
  }

  /**
   * What KVM counted since the VM was created: up to the guest's finish (guestFinished) when it got
   * there, else up to now while QEMU still answers. Null without a start reading (TCG) or an end one.
   */
  async kvmStatsRun(): Promise<KvmStatsRun | null> {
    const start = this.kvmStatsAtStart;
    if (!start) return null;
    if (this.finishedKvmStats) return { delta: statsDelta(start, this.finishedKvmStats), at: 'finished' };
    const now = await this.kvmStatsNow();
    return now ? { delta: statsDelta(start, now), at: 'outcome' } : null;
  }

  /** What hostWait() said when the guest finished (null: it did not finish, or /proc did not say). */
  get hostWaitAtFinish(): HostWait | null {
    return this.finishedHostWait;
  }

  /** The run_delay so far of each vCPU thread and the main thread (HostWait), or null where it cannot be read. */
  async hostWait(): Promise<HostWait | null> {
    const pid = this.proc.pid;
    if (!pid || this.exited) return null;
    try {
      this.vcpuTids ??= (await this.qmp.execute<{ 'cpu-index': number; 'thread-id': number }[]>('query-cpus-fast')).sort((a, b) => a['cpu-index'] - b['cpu-index']).map((c) => c['thread-id']);
    } catch {
      return null;
    }
    const vcpus = await Promise.all(this.vcpuTids.map((tid) => runDelayNs(pid, tid)));
    const main = await runDelayNs(pid, pid);
    if (main === null || vcpus.some((v) => v === null)) return null;
    // KVM creates the kthread with the in-kernel PIT (KVM_CREATE_PIT2, at VM creation): one scan of /proc per VM.
    if (this.pitTid === undefined) this.pitTid = await kvmPitThread(pid);
    const pit = this.pitTid === null ? null : await runDelayNs(this.pitTid, this.pitTid);
    return { vcpusNs: vcpus as number[], mainNs: main, ...(pit === null ? {} : { pitNs: pit }) };
  }

  async collect(outcome: VmOutcome, program: ProgramImage | undefined, nthreads: number, hostWait: HostWait | null = null, kvmStats: KvmStatsRun | null = null): Promise<VmRunResult> {
    const { mailbox, threads } = await this.readMailbox();
    const results: ThreadResult[] = [];
    for (let i = 0; i < nthreads; i++) {
      const status = threads[i]!;
      const region = program?.regions[i];
      const used = Math.min(Number(status.obs_used), region?.len ?? 0);
      const records = region && used > 0 ? await this.readPhys(region.addr, used) : new Uint8Array();
      const irqLog = decodeIrqLog(await this.readPhys(LAYOUT.irqLog + i * IRQ_LOG_BYTES_PER_VCPU, IRQ_LOG_BYTES_PER_VCPU));
      results.push({ status, records, irqLog });
    }
    return {
      outcome,
      tap: parseTap(this.stdoutText),
      serial: this.stdoutText,
      stderr: this.stderrText,
      mailbox,
      threads: results,
      durationMs: Date.now() - this.startedAt,
      args: this.args,
      hostWait,
      kvmStats,
    };
  }

  async kill(): Promise<void> {
    if (!this.exited) {
      this.proc.kill('SIGKILL');
      await this.exitPromise;
    }
  }

  /** Kill QEMU if it still runs and remove the VM's directory. Idempotent. */
  async dispose(): Promise<void> {
    this.qmp.close();
    await this.kill();
    if (this.ramFd) {
      await this.ramFd.close().catch(() => undefined);
      this.ramFd = null;
    }
    await removePrivateDir(this.dir);
  }
}

export function parseTap(serial: string): TapVerdict {
  const results: { id: number; ok: boolean; name: string }[] = [];
  let verdict: TapVerdict = { ok: false, bailout: null, plan: null, results };
  const p = new Parser();
  p.on('assert', (a: { id: number; ok: boolean; name: string }) => results.push({ id: a.id, ok: a.ok, name: a.name }));
  p.on('complete', (r: { ok: boolean; bailout: string | false; plan: { end: number } | null }) => {
    verdict = { ok: r.ok, bailout: r.bailout === false ? null : String(r.bailout), plan: r.plan ? r.plan.end : null, results };
  });
  p.end(serial.replace(/\r/g, ''));
  return verdict;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Boot a program, wait for the outcome, collect everything (KVM's statistics included), clean up. */
export async function runVm(
  cfg: MachineConfig,
  opts: Pick<StartOptions, 'prepare'> & {
    guestElf: string;
    program: ProgramImage;
    nthreads: number;
    label?: string;
    timeoutMs?: number;
    stallMs?: number;
    /**
     * Runs beside the guest until the VM's outcome is known (a mutant disturbing the VM through
     * QMP); its errors are ignored, since the VM may end under it.
     */
    during?: (vm: Vm, done: AbortSignal) => Promise<void>;
    /** Sample QEMU's main loop and the host CPUs' steal while the guest runs (HostWait.mainLongestWaitNs, cpuLongestStealNs). */
    sampleHostWaits?: boolean;
  },
): Promise<VmRunResult> {
  const vm = await Vm.start(cfg, { guestElf: opts.guestElf, program: opts.program, label: opts.label ?? 'vm', ...(opts.prepare ? { prepare: opts.prepare } : {}) });
  const done = new AbortController();
  const beside = opts.during ? opts.during(vm, done.signal).catch(() => undefined) : Promise.resolve();
  try {
    const waitBefore = await vm.hostWait();
    const sampled = new AbortController();
    const pid = vm.pid;
    const waits =
      opts.sampleHostWaits && pid
        ? largestSteps([() => runDelayNs(pid, pid).then((v) => (v === null ? null : [v])), cpuStealNs], sampled.signal)
        : Promise.resolve([null, null]);
    const outcome = await vm.waitForOutcome({ nthreads: opts.nthreads, timeoutMs: opts.timeoutMs ?? 60_000, stallMs: opts.stallMs ?? 2000 });
    sampled.abort();
    done.abort();
    await beside;
    const kvmStats = await vm.kvmStatsRun();
    const between = hostWaitBetween(waitBefore, vm.hostWaitAtFinish);
    const [mainWait, steal] = await waits;
    const sampledWaits = {
      ...(mainWait == null ? {} : { mainLongestWaitNs: mainWait }),
      ...(steal == null ? {} : { cpuLongestStealNs: steal }),
    };
    return await vm.collect(outcome, opts.program, opts.nthreads, between ? { ...between, ...sampledWaits } : between, kvmStats);
  } finally {
    done.abort();
    await vm.dispose();
  }
}
