/**
 * Sessions of several VMs: `withVms(specs, body)` starts every VM a test or property needs (a
 * migration source and its destination, two VMs side by side), hands the body one handle per VM, and
 * always disposes of all of them afterwards: when the body returns, when it throws, and when one of
 * them fails to start. runVm/runWorkload hold exactly one VM from start to collect; the families
 * that compare VMs (migration first) need several alive at once, each driven at chosen moments.
 *
 * Each VM is an ordinary harness/vm.ts Vm (its own private 0700 directory, QMP socket, RAM file,
 * QEMU under setpriv --pdeathsig; the config's qemu binary and extraArgs on every side), watched by
 * harness/watchdog.ts, which knows the run states migration passes through. A migration goes over a
 * unix socket inside the destination's private directory; never TCP.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Program } from '../ir/program.js';
import { encodeProgram, type ProgramImage } from './bytecode.js';
import { LAYOUT, THREAD_STATE } from './guest/abi.js';
import { buildGuest } from './guest/build.js';
import { QmpError, type QmpClient } from './qmp.js';
import { RESTORE_FD, Vm, type KvmStatsRun, type MachineConfig, type RamSource, type StartOptions } from './vm.js';
import { qemuWords, watchVm, type WatchOptions, type WatchOutcome } from './watchdog.js';

export interface VmSpec {
  /** Used as given (build it with defaultMachineConfig); a source and its destination need the same one. */
  readonly config: MachineConfig;
  /** What the guest runs: an IR program (encoded here) or an encoded image. None for a destination. */
  readonly program?: Program | ProgramImage;
  /** Start as a migration destination: 'defer' (migrateTo picks the address) or a QEMU -incoming URI. */
  readonly incoming?: string;
  /** Leave the VM in 'prelaunch' after start (default: it runs; a destination waits either way). */
  readonly paused?: boolean;
  /** Name of its directory (default: the key in the specs). */
  readonly label?: string;
  /** Threads to watch (default: the program's; a destination takes its source's at migration). */
  readonly nthreads?: number;
  readonly prepare?: StartOptions['prepare'];
  /** Can be restored from a file (StartOptions.restoreFile): the destination of migrateViaFile. */
  readonly restoreFile?: boolean;
}

export interface SessionOptions {
  /** The guest ELF (default: buildGuest(), cached). */
  readonly guestElf?: string;
}

export interface UntilOptions {
  readonly timeoutMs?: number;
  readonly pollMs?: number;
}

export interface MigrateOptions {
  /** migrate-set-capabilities on both sides; `events` is always on (the watchdog listens for MIGRATION). */
  readonly capabilities?: Readonly<Record<string, boolean>>;
  /** migrate-set-parameters on both sides, e.g. { 'downtime-limit': 100, 'max-bandwidth': 1 << 30 }. */
  readonly parameters?: Readonly<Record<string, unknown>>;
  /** Where the stream goes (default: a unix socket in the destination's private directory). */
  readonly uri?: string;
  /** Let the destination run once it has everything (default: when the source ran at the start). */
  readonly resume?: boolean;
  /**
   * With capability 'pause-before-switchover': called when the source has stopped for the
   * switchover (migration status 'pre-switchover') and has not yet sent its device state; the
   * migration continues when it resolves.
   */
  readonly beforeSwitchover?: () => Promise<void> | void;
  readonly timeoutMs?: number;
  readonly pollMs?: number;
  /**
   * Put something between source and destination (a stream proxy that mutates page records, for
   * the sensitivity tests): given the URI the destination listens on and its private directory,
   * it returns the URI the source must send to; it is closed when the migration ends.
   */
  readonly intercept?: (dstUri: string, dstDir: string) => Promise<StreamIntercept>;
  /** migrate_cancel this long after the start; the migration then resolves with status 'cancelled' (not an error). */
  readonly cancelAfterMs?: number;
  /** migrate-start-postcopy this long after the start (needs capability postcopy-ram on both sides). */
  readonly postcopyAfterMs?: number;
}

export interface StreamIntercept {
  readonly uri: string;
  close(): Promise<void>;
}

/** query-migrate's answer (QEMU's names); `status` is 'completed' when migrateTo resolves. */
export interface MigrationInfo {
  readonly status: string;
  readonly 'total-time'?: number;
  readonly downtime?: number;
  readonly 'expected-downtime'?: number;
  readonly 'setup-time'?: number;
  readonly 'error-desc'?: string;
  /** Set by migrateTo: the highest cpu-throttle-percentage (auto-converge) seen while it ran. */
  readonly throttleReached?: number;
  /**
   * Set by migrateTo: the highest dirty rate QEMU measured while it ran (ram dirty-pages-rate ×
   * page-size, bytes/s; the final answer no longer carries it). 0 where QEMU measured none (it
   * measures once per dirty-bitmap sync after the first: a migration done in one pass has none).
   */
  readonly dirtyRateReached?: number;
  readonly ram?: {
    readonly transferred: number;
    readonly remaining: number;
    readonly total: number;
    readonly duplicate: number;
    readonly normal: number;
    readonly 'normal-bytes': number;
    readonly 'dirty-sync-count': number;
    readonly 'page-size': number;
    readonly mbps: number;
    readonly [field: string]: unknown;
  };
  readonly [field: string]: unknown;
}

/** A migration that did not complete: QEMU's error-desc, and the destination's words if it died. */
export class MigrationError extends Error {
  override name = 'MigrationError';
  constructor(
    message: string,
    readonly info: MigrationInfo | null,
  ) {
    super(message);
  }
}

export interface VmSnapshot {
  /** QEMU's run state (query-status). */
  readonly status: string;
  readonly mailbox: Record<string, bigint>;
  /** Thread statuses, one per watched thread (per vCPU while none is known). */
  readonly threads: readonly Record<string, bigint>[];
}

type Handles<S> = { readonly [K in keyof S]: VmHandle };

const MIGRATE_TERMINAL = new Set(['completed', 'failed', 'cancelled']);
/** Thread states after which a marker can no longer change. */
const THREAD_FINISHED = new Set([THREAD_STATE.done, THREAD_STATE.faulted, THREAD_STATE.overflow, THREAD_STATE.badOp].map(BigInt));

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function isImage(p: Program | ProgramImage): p is ProgramImage {
  return (p as ProgramImage).image instanceof Uint8Array;
}

export class VmHandle {
  /** What the guest runs here (a destination takes its source's at migration). */
  program: ProgramImage | undefined;
  nthreads: number;
  private readonly abort = new AbortController();
  private readonly watches = new Set<Promise<unknown>>();
  private migrations = 0;

  constructor(
    readonly name: string,
    readonly vm: Vm,
    readonly incoming: string | undefined,
    program: ProgramImage | undefined,
    nthreads: number,
  ) {
    this.program = program;
    this.nthreads = nthreads;
  }

  /** QEMU's run state: 'running', 'paused', 'inmigrate', 'postmigrate', 'internal-error', ... */
  async status(): Promise<string> {
    return (await this.vm.qmp.execute<{ status: string }>('query-status')).status;
  }

  async stop(): Promise<void> {
    await this.vm.qmp.execute('stop');
  }

  async cont(): Promise<void> {
    await this.vm.qmp.execute('cont');
  }

  /** Run state, mailbox and thread statuses (read one after the other: stop the VM for a still picture). */
  async snapshot(): Promise<VmSnapshot> {
    const status = await this.status();
    const { mailbox, threads } = await this.vm.readMailbox();
    return { status, mailbox, threads: threads.slice(0, this.nthreads || this.vm.config.cpus) };
  }

  /**
   * What KVM counted in this VM since it was created (harness/kvmStats.ts; read at start, before
   * `cont`, under KVM): up to the guest's finish if it finished, else up to now. Null under TCG or
   * once QEMU is gone. Reading kicks every vCPU out of KVM_RUN once: read where that disturbs
   * nothing observed (stopped, or after the last observation). A destination's counters start at
   * its own creation, so each side counts what ran there.
   */
  kvmStats(): Promise<KvmStatsRun | null> {
    return this.vm.kvmStatsRun();
  }

  /** sha256 (hex) of guest RAM, all of it or [addr, addr + len): the RAM file, read directly. */
  async ramDigest(range: { addr: number; len: number } = { addr: 0, len: this.vm.config.ramMiB << 20 }): Promise<string> {
    const hash = createHash('sha256');
    await forEachRamChunk([await this.vm.ramSource()], range, ([chunk]) => void hash.update(chunk!));
    return hash.digest('hex');
  }

  /** Poll thread `thread`'s status until `predicate` holds; resolves with that status. */
  async untilThread(thread: number, predicate: (t: Record<string, bigint>) => boolean, opts: UntilOptions = {}): Promise<Record<string, bigint>> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const pollMs = opts.pollMs ?? 10;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.abort.signal.aborted) throw new Error(`${this.name}: the session ended while waiting on thread ${thread}`);
      const t = (await this.vm.readMailbox()).threads[thread]!;
      if (predicate(t)) return t;
      const why = this.vm.hasExited
        ? `QEMU exited (${qemuWords(this.vm.stderr) || `status ${this.vm.exitStatus.exitCode ?? this.vm.exitStatus.signal}`})`
        : THREAD_FINISHED.has(t.state ?? 0n)
          ? `the thread ended (state ${t.state})`
          : Date.now() >= deadline
            ? `nothing after ${timeoutMs} ms`
            : null;
      if (why) {
        const status = this.vm.hasExited ? 'exited' : await this.status().catch(() => 'unknown');
        throw new Error(`${this.name}: thread ${thread} never got there: ${why}; its marker is ${t.marker}, ops done ${t.ops_done}, QEMU status ${status}`);
      }
      await sleep(pollMs);
    }
  }

  /** Wait for the marker thread `thread` publishes with `mark` to equal `value` (or satisfy a predicate). */
  async untilMarker(thread: number, want: bigint | ((marker: bigint) => boolean), opts: UntilOptions = {}): Promise<Record<string, bigint>> {
    const ok = typeof want === 'bigint' ? (m: bigint) => m === want : want;
    return this.untilThread(thread, (t) => ok(t.marker ?? 0n), opts);
  }

  /**
   * Watch this VM until its guest finishes or something goes wrong (harness/watchdog.ts): a source
   * that was migrated away ends as { kind: 'migrated' }, a waiting destination is never a hang.
   * Ends with { kind: 'aborted' } if the session ends first. `nthreads` defaults to this handle's at
   * the call (a destination learns its source's at migration; give it to watch one from before).
   */
  waitForOutcome(opts: Partial<Omit<WatchOptions, 'signal'>> = {}): Promise<WatchOutcome> {
    const w = watchVm(this.vm, {
      nthreads: opts.nthreads ?? this.nthreads,
      timeoutMs: opts.timeoutMs ?? 60_000,
      stallMs: opts.stallMs ?? 2000,
      ...(opts.pollMs !== undefined ? { pollMs: opts.pollMs } : {}),
      ...(opts.bootHangMs !== undefined ? { bootHangMs: opts.bootHangMs } : {}),
      signal: this.abort.signal,
    });
    this.watches.add(w);
    void w.finally(() => this.watches.delete(w)).catch(() => undefined);
    return w;
  }

  /**
   * Migrate this VM's guest to `dst` (a VM of the same session started with `incoming`), wait until
   * the migration ends, and resolve with QEMU's final query-migrate; reject with a MigrationError
   * (QEMU's error-desc) when it fails. Afterwards this VM reads 'postmigrate'; the destination runs
   * (or stays paused at the switchover state with `resume: false`).
   */
  async migrateTo(dst: VmHandle, opts: MigrateOptions = {}): Promise<MigrationInfo> {
    if (dst === this) throw new Error(`${this.name}: cannot migrate to itself`);
    if (!dst.incoming) throw new Error(`${dst.name} was not started as a migration destination (give its spec incoming: 'defer')`);
    await this.setMigrationOptions([this, dst], opts);
    let uri = opts.uri;
    if (dst.incoming === 'defer') {
      if (!uri) {
        uri = `unix:${join(dst.vm.dir, `migrate-${++dst.migrations}.sock`)}`;
        if (Buffer.byteLength(uri) - 'unix:'.length > 107) throw new Error(`the migration socket path is too long for a unix socket: ${uri}`);
      }
      await dst.vm.qmp.execute('migrate-incoming', { uri });
    } else {
      uri ??= dst.incoming;
    }
    const resume = opts.resume ?? (await this.status()) === 'running';
    const intercept = opts.intercept ? await opts.intercept(uri!, dst.vm.dir) : null;
    try {
      return await this.runMigration(dst, intercept?.uri ?? uri!, resume, opts);
    } finally {
      await intercept?.close();
    }
  }

  private async runMigration(dst: VmHandle, uri: string, resume: boolean, opts: MigrateOptions): Promise<MigrationInfo> {
    const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
    const info = await this.runOutgoing(dst, uri, opts);
    if (info.status === 'cancelled') return info;
    await this.untilLoaded(dst, deadline, info, opts.pollMs ?? 20);
    return this.handOver(dst, resume, info);
  }

  /**
   * Save this VM into a file and restore `dst` (started with `restoreFile`) from it: the source
   * stops (as a save does: unless `live`, which lets precopy iterate into the file, every re-sent
   * page appended: measured 873 MB for a 64 MiB guest dirtying 100 MB/s), then migrates, with the
   * case's capabilities, into a unix socket in `dst`'s private directory whose every byte the
   * harness writes to `dst`'s restore file; once the source completed and the file is whole,
   * `dst` loads it with `migrate-incoming fd:3`. Resolves with the source's final
   * query-migrate plus `restoreMs` (migrate-incoming until the destination left 'inmigrate') and
   * `savedBytes` (the file's size); afterwards as migrateTo. No multifd and no postcopy: a file
   * is one channel with no return path.
   */
  async migrateViaFile(dst: VmHandle, opts: Omit<MigrateOptions, 'uri' | 'intercept' | 'postcopyAfterMs'> & { readonly live?: boolean } = {}): Promise<MigrationInfo & { readonly restoreMs: number; readonly savedBytes: number }> {
    if (dst === this) throw new Error(`${this.name}: cannot migrate to itself`);
    if (!dst.vm.restorePath || dst.incoming !== 'defer') throw new Error(`${dst.name} was not started to restore from a file (give its spec incoming: 'defer', restoreFile: true)`);
    if (opts.capabilities?.multifd || opts.capabilities?.['postcopy-ram']) throw new Error('a save to a file is one channel without a return path: no multifd, no postcopy');
    const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
    const resume = opts.resume ?? (await this.status()) === 'running';
    await this.setMigrationOptions([this, dst], opts);
    if (!opts.live && (await this.status()) === 'running') await this.stop();
    const sink = await saveSink(join(dst.vm.dir, `save-${++dst.migrations}.sock`), dst.vm.restorePath);
    let info: MigrationInfo;
    try {
      info = await this.runOutgoing(dst, sink.uri, opts);
      if (info.status === 'cancelled') return { ...info, restoreMs: 0, savedBytes: sink.bytes };
      await sink.done;
    } finally {
      await sink.close();
    }
    const started = Date.now();
    await dst.vm.qmp.execute('migrate-incoming', { uri: `fd:${RESTORE_FD}` });
    await this.untilLoaded(dst, deadline, info, opts.pollMs ?? 20);
    return { ...(await this.handOver(dst, resume, info)), restoreMs: Date.now() - started, savedBytes: sink.bytes };
  }

  /**
   * Save this (stopped) VM's whole state into `file` (0600, in a private directory the caller
   * owns) through a unix socket `socketPath` beside it, and resolve with the final query-migrate
   * once the file is whole. Afterwards the VM reads 'postmigrate' (QEMU stops nothing else); `cont`
   * runs it again. For reading its stream (harness/migrationStream.ts), not for restoring.
   */
  async saveState(file: string, socketPath: string, opts: Pick<MigrateOptions, 'timeoutMs' | 'pollMs'> = {}): Promise<MigrationInfo & { readonly savedBytes: number }> {
    await this.vm.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    const sink = await saveSink(socketPath, file);
    try {
      const info = await this.runOutgoing(null, sink.uri, opts);
      await sink.done;
      return { ...info, savedBytes: sink.bytes };
    } finally {
      await sink.close();
    }
  }

  private async setMigrationOptions(sides: readonly VmHandle[], opts: Pick<MigrateOptions, 'capabilities' | 'parameters'>): Promise<void> {
    const capabilities = Object.entries({ events: true, ...opts.capabilities }).map(([capability, state]) => ({ capability, state }));
    for (const side of sides) {
      await side.vm.qmp.execute('migrate-set-capabilities', { capabilities });
      if (opts.parameters && Object.keys(opts.parameters).length) await side.vm.qmp.execute('migrate-set-parameters', { ...opts.parameters });
    }
  }

  /** The source's side of a migration: `migrate`, poll until it ends, QEMU's final answer (with the highest throttle and dirty rate seen). */
  private async runOutgoing(dst: VmHandle | null, uri: string, opts: MigrateOptions): Promise<MigrationInfo> {
    const dstName = dst?.name ?? 'a file';
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const pollMs = opts.pollMs ?? 20;
    try {
      await this.vm.qmp.execute('migrate', { uri });
    } catch (e) {
      if (e instanceof QmpError) throw new MigrationError(`migration ${this.name} → ${dstName} refused: ${e.desc}`, null);
      throw e;
    }
    const started = Date.now();
    const deadline = started + timeoutMs;
    let continued = false;
    let cancelled = false;
    let postcopied = false;
    // The final answer no longer carries cpu-throttle-percentage: keep the highest seen on the way.
    let throttle = 0;
    let dirtyRate = 0;
    let info: MigrationInfo;
    // A MIGRATION event (a status change) ends a poll's wait early: the loop sees 'completed' at once.
    const waker = eventWaker(this.vm.qmp, MIGRATION_WAKE);
    try {
      for (;;) {
        info = await this.vm.qmp.execute<MigrationInfo>('query-migrate').catch((e: unknown) => {
          if (!this.vm.hasExited && !this.vm.qmp.closed) throw e;
          throw new MigrationError(`migration ${this.name} → ${dstName}: the source's QEMU went away: ${qemuWords(this.vm.stderr) || String(e)}`, null);
        });
        throttle = Math.max(throttle, Number(info['cpu-throttle-percentage'] ?? 0));
        dirtyRate = Math.max(dirtyRate, Number(info.ram?.['dirty-pages-rate'] ?? 0) * Number(info.ram?.['page-size'] ?? 4096) || 0);
        if (MIGRATE_TERMINAL.has(info.status)) break;
        const elapsed = Date.now() - started;
        if (opts.cancelAfterMs !== undefined && !cancelled && elapsed >= opts.cancelAfterMs) {
          cancelled = true;
          await this.vm.qmp.execute('migrate_cancel');
          continue;
        }
        if (opts.postcopyAfterMs !== undefined && !postcopied && elapsed >= opts.postcopyAfterMs && info.status === 'active') {
          postcopied = true;
          await this.vm.qmp.execute('migrate-start-postcopy');
          continue;
        }
        if (info.status === 'pre-switchover' && !continued) {
          continued = true;
          await opts.beforeSwitchover?.();
          await this.vm.qmp.execute('migrate-continue', { state: 'pre-switchover' });
          continue;
        }
        if (Date.now() >= deadline) {
          await this.vm.qmp.execute('migrate_cancel').catch(() => undefined);
          throw new MigrationError(`migration ${this.name} → ${dstName} did not end within ${timeoutMs} ms (status ${info.status})`, info);
        }
        await waker.wait(pollMs);
      }
    } finally {
      waker.close();
    }
    if (info.status === 'cancelled' && cancelled) return info;
    // QEMU sets 'completed' a moment before it fills in the times: read them once more (measured: total-time 0 in 3 of 17).
    for (let i = 0; i < 100 && info.status === 'completed' && !info['total-time']; i++) {
      await sleep(2);
      info = await this.vm.qmp.execute<MigrationInfo>('query-migrate');
    }
    if (info.status !== 'completed') {
      // The destination usually knows why (a source only sees the broken pipe): give its words too.
      let there = '';
      if (dst) {
        await Promise.race([dst.vm.whenExited, sleep(200)]);
        if (dst.vm.hasExited && qemuWords(dst.vm.stderr)) there = `; ${dst.name}: ${qemuWords(dst.vm.stderr)}`;
      }
      throw new MigrationError(`migration ${this.name} → ${dstName} ${info.status}: ${info['error-desc'] ?? 'QEMU gave no reason'}${there}`, info);
    }
    return { ...info, throttleReached: throttle, dirtyRateReached: dirtyRate };
  }

  /** The source is done before the destination has loaded the last device state: wait for that. */
  private async untilLoaded(dst: VmHandle, deadline: number, info: MigrationInfo, pollMs: number): Promise<void> {
    const from = Date.now();
    // The destination's MIGRATION 'completed' (or a RESUME) says it left 'inmigrate': look at once.
    const waker = eventWaker(dst.vm.qmp, LOADED_WAKE);
    try {
      for (;;) {
        const s = dst.vm.hasExited ? null : await dst.status().catch(() => null);
        if (s === null) throw new MigrationError(`migration ${this.name} → ${dst.name}: the destination died loading it: ${qemuWords(dst.vm.stderr)}`, info);
        if (s !== 'inmigrate') return;
        if (Date.now() >= deadline) throw new MigrationError(`migration ${this.name} → ${dst.name}: the destination still loads after ${Date.now() - from} ms`, info);
        await waker.wait(pollMs);
      }
    } finally {
      waker.close();
    }
  }

  private async handOver<I extends MigrationInfo>(dst: VmHandle, resume: boolean, info: I): Promise<I> {
    dst.program ??= this.program;
    // The destination holds its source's RAM now: a RAM block found in its mappings must show the program.
    if (dst.program) dst.vm.expectRam(LAYOUT.program, dst.program.image);
    if (!dst.nthreads) dst.nthreads = this.nthreads;
    if (resume && (await dst.status()) !== 'running') await dst.cont();
    return info;
  }

  /** End every watch and wait of this handle, kill QEMU, remove its directory. Idempotent. */
  async dispose(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled([...this.watches]);
    await this.vm.dispose();
  }
}

const MIGRATION_WAKE: ReadonlySet<string> = new Set(['MIGRATION']);
const LOADED_WAKE: ReadonlySet<string> = new Set(['MIGRATION', 'RESUME', 'STOP']);

/**
 * The pause of a poll loop that an event cuts short: wait(ms) settles after ms, or as soon as
 * `qmp` sends one of `events` (at once if one came since the last wait, during a query).
 */
function eventWaker(qmp: QmpClient, events: ReadonlySet<string>): { wait(ms: number): Promise<void>; close(): void } {
  let seen = false;
  let wake: (() => void) | null = null;
  const off = qmp.onEvent((e) => {
    if (!events.has(e.event)) return;
    seen = true;
    wake?.();
  });
  return {
    wait(ms) {
      if (seen) {
        seen = false;
        return Promise.resolve();
      }
      return new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          wake = null;
          seen = false;
          resolve();
        };
        const timer = setTimeout(done, ms);
        wake = done;
      });
    },
    close: () => {
      off();
      wake?.();
    },
  };
}

/**
 * Where a save goes: a unix socket at `socketPath` whose first connection's bytes are written to
 * `file` (created 0600; the caller's private directory holds both). `done` settles when the
 * connection ended and the file is flushed and closed; close() stops listening, drops any
 * connection and removes the socket (the file stays, for its owner to read or remove). Idempotent.
 */
async function saveSink(socketPath: string, file: string): Promise<{ readonly uri: string; readonly done: Promise<void>; readonly bytes: number; close(): Promise<void> }> {
  if (Buffer.byteLength(socketPath) > 107) throw new Error(`the save socket path is too long for a unix socket: ${socketPath}`);
  const out = createWriteStream(file, { mode: 0o600, flags: 'w' });
  await new Promise<void>((resolve, reject) => out.once('open', () => resolve()).once('error', reject));
  let bytes = 0;
  const sockets = new Set<Socket>();
  let settle!: { resolve: () => void; reject: (e: Error) => void };
  const done = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  done.catch(() => undefined);
  out.on('error', (e) => settle.reject(e));
  const server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    if (sockets.size > 1) return void sock.destroy(); // one channel: a second connection has no place in one file
    sock.on('data', (b: Buffer) => (bytes += b.length));
    sock.on('error', (e) => settle.reject(e));
    sock.pipe(out);
    out.on('finish', () => settle.resolve());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', () => undefined);
  let closing: Promise<void> | null = null;
  return {
    uri: `unix:${socketPath}`,
    done,
    get bytes() {
      return bytes;
    },
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((r) => server.close(() => r()));
        for (const s of sockets) s.destroy();
        await closed;
        if (!out.closed) await new Promise<void>((r) => out.close(() => r()));
        await unlink(socketPath).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'ENOENT') throw e;
        });
      })();
      return closing;
    },
  };
}

/** One page that differs between two RAM files. */
export interface PageDifference {
  /** Guest-physical address of the page. */
  readonly page: number;
  /** Offset of its first differing byte, and the 16 bytes from there on each side (hex). */
  readonly offset: number;
  readonly a: string;
  readonly b: string;
  readonly differingBytes: number;
}

/**
 * Where two VMs' RAM differs: how many `pageBytes` pages, the first differing byte's address, and
 * the first `details` pages. Both should be stopped for the answer to mean anything.
 */
export async function compareRam(
  a: VmHandle,
  b: VmHandle,
  pageBytes = 4096,
  opts: { details?: number } = {},
): Promise<RamComparison> {
  return compareRamFiles(await a.vm.ramSource(), await b.vm.ramSource(), Math.max(a.vm.config.ramMiB, b.vm.config.ramMiB) << 20, pageBytes, opts);
}

export interface RamComparison {
  readonly identical: boolean;
  readonly differingPages: number;
  readonly firstDifference: number | null;
  /** The first `details` differing pages. */
  readonly pages: PageDifference[];
}

/** compareRam over two RAM files (or RamSources: QEMU's RAM block) of `len` bytes (what compareRam runs, and the bench times). */
export async function compareRamFiles(pathA: string | RamSource, pathB: string | RamSource, len: number, pageBytes = 4096, opts: { details?: number } = {}): Promise<RamComparison> {
  let differingPages = 0;
  let firstDifference: number | null = null;
  const pages: PageDifference[] = [];
  const details = opts.details ?? 0;
  await forEachRamChunk([pathA, pathB], { addr: 0, len }, ([x, y], at) => {
    if (x!.equals(y!)) return;
    for (let p = 0; p < x!.length; p += pageBytes) {
      const px = x!.subarray(p, p + pageBytes);
      const py = y!.subarray(p, p + pageBytes);
      if (px.equals(py)) continue;
      differingPages++;
      // Where in the page it differs: only for the first difference and the pages reported.
      if (firstDifference !== null && pages.length >= details) continue;
      let i = 0;
      while (i < px.length && px[i] === py[i]) i++;
      if (firstDifference === null) firstDifference = at + p + i;
      if (pages.length < details) {
        let n = 0;
        for (let j = i; j < px.length; j++) if (px[j] !== py[j]) n++;
        pages.push({ page: at + p, offset: i, a: px.subarray(i, i + 16).toString('hex'), b: py.subarray(i, i + 16).toString('hex'), differingBytes: n });
      }
    }
  });
  return { identical: differingPages === 0, differingPages, firstDifference, pages };
}

/**
 * Read the same range of several RAM files chunk by chunk (a short file reads as zeroes), the
 * next chunk's reads in flight while `fn` looks at this one. The buffers (two sets) are reused:
 * a fresh 1 MiB buffer per read ran at 0.4 GiB/s on the Intel host, reused 256 KiB ones at over
 * 2 GiB/s; reused 1 MiB ones, a quarter of the reads, at 3.6-5.4 GiB/s over 1 GiB on the AMD host
 * (256 KiB: 2.8-3.8 there), which took the 64 MiB bench case's ratio from 1.32 to 1.23-1.25.
 * `fn` must be done with a chunk when it returns.
 */
async function forEachRamChunk(sources: readonly (string | RamSource)[], range: { addr: number; len: number }, fn: (chunks: Buffer[], at: number) => void): Promise<void> {
  const CHUNK = 1 << 20;
  const paths = sources.map((s) => (typeof s === 'string' ? { path: s, base: 0, len: Infinity } : s));
  const files = await Promise.all(paths.map((p) => open(p.path, 'r')));
  const sets = [paths.map(() => Buffer.allocUnsafe(CHUNK)), paths.map(() => Buffer.allocUnsafe(CHUNK))];
  const end = range.addr + range.len;
  const readAt = (at: number, bufs: Buffer[]): Promise<Buffer[]> => {
    const n = Math.min(CHUNK, end - at);
    return Promise.all(
      files.map(async (f, i) => {
        const buf = bufs[i]!.subarray(0, n);
        let got = 0;
        // QEMU's RAM block ends where the guest's RAM does (past it, /proc/<pid>/mem says EIO).
        const want = Math.max(0, Math.min(n, paths[i]!.len - at));
        while (got < want) {
          const { bytesRead } = await f.read(buf, got, want - got, paths[i]!.base + at + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        buf.fill(0, got);
        return buf;
      }),
    );
  };
  let pending: Promise<Buffer[]> | null = null;
  try {
    pending = range.len > 0 ? readAt(range.addr, sets[0]!) : null;
    for (let at = range.addr, k = 0; pending; at += CHUNK, k++) {
      const chunks = await pending;
      pending = at + CHUNK < end ? readAt(at + CHUNK, sets[(k + 1) % 2]!) : null;
      fn(chunks, at);
    }
  } finally {
    // A read still in flight (fn threw) must not land in a closed file.
    await pending?.catch(() => undefined);
    await Promise.all(files.map((f) => f.close()));
  }
}

/**
 * Start every VM in `specs`, run `body` with a handle per VM, dispose of all of them, and return what
 * `body` returned. No QEMU, socket or directory survives it, whatever happens; if a VM fails to start,
 * the others are disposed of and the error (prefixed with that VM's name) is thrown.
 */
export async function withVms<const S extends Readonly<Record<string, VmSpec>>, R>(
  specs: S,
  body: (vms: Handles<S>) => Promise<R> | R,
  opts: SessionOptions = {},
): Promise<R> {
  const names = Object.keys(specs) as (keyof S & string)[];
  const prepared = names.map((name) => {
    const spec = specs[name]!;
    const image = spec.program === undefined ? undefined : isImage(spec.program) ? spec.program : encodeProgram(spec.program);
    const nthreads = spec.nthreads ?? (spec.program ? (isImage(spec.program) ? spec.program.regions.length : spec.program.threads.length) : 0);
    if (nthreads > spec.config.cpus) throw new Error(`${name}: the program runs ${nthreads} threads but the VM has ${spec.config.cpus} vCPUs`);
    if (nthreads > LAYOUT.maxCpus) throw new Error(`${name}: at most ${LAYOUT.maxCpus} threads`);
    return { name, spec, image, nthreads };
  });
  const guestElf = opts.guestElf ?? (await buildGuest()).elf;
  // Start them all and wait for every start to settle, so none is still starting when we clean up.
  const started = await Promise.allSettled(
    prepared.map(async ({ name, spec, image, nthreads }) => {
      const vm = await Vm.start(spec.config, {
        guestElf,
        label: spec.label ?? name,
        ...(image ? { program: image } : {}),
        ...(spec.incoming ? { incoming: spec.incoming } : {}),
        ...(spec.paused ? { paused: true } : {}),
        ...(spec.prepare ? { prepare: spec.prepare } : {}),
        ...(spec.restoreFile ? { restoreFile: true } : {}),
      });
      return new VmHandle(name, vm, spec.incoming, image, nthreads);
    }),
  );
  const handles = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  let failed = false;
  try {
    const refused = started.findIndex((s) => s.status === 'rejected');
    if (refused >= 0) {
      const e = (started[refused] as PromiseRejectedResult).reason as unknown;
      if (e instanceof Error) e.message = `${prepared[refused]!.name}: ${e.message}`;
      throw e;
    }
    return await body(Object.fromEntries(handles.map((h) => [h.name, h])) as Handles<S>);
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    const disposed = await Promise.allSettled(handles.map((h) => h.dispose()));
    const errors = disposed.flatMap((d) => (d.status === 'rejected' ? [d.reason as unknown] : []));
    // A body's own error says more than a cleanup error; without one, the cleanup error is the news.
    if (errors.length && !failed) throw new AggregateError(errors, 'disposing of the session’s VMs failed');
  }
}
