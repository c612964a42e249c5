/**
 * Private runtime directories and the cleanup that guarantees nothing outlives a run.
 *
 * Layout: one run root (0700) per run, one directory (0700) per VM inside it holding its QMP socket,
 * its RAM file and its program. The root lives on /dev/shm when there is one, because guest RAM is a
 * file there and the host reads observations straight out of it.
 *
 * Three layers keep QEMU and its files from leaking:
 *  1. every VM removes its own directory and kills its QEMU when its run ends (harness/vm.ts);
 *  2. this module kills every QEMU it started and removes its directories on exit, SIGINT, SIGTERM
 *     and SIGHUP of this process;
 *  3. QEMU is started under `setpriv --pdeathsig KILL`, so it dies with us even if we are SIGKILLed;
 *     the owner of the run root (the CLI, or vitest's global setup) removes the root afterwards.
 */
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const RUNTIME_ROOT_ENV = 'KVMPROP_RUNTIME_ROOT';

let processRoot: string | null = null;
const livePids = new Set<number>();
const liveDirs = new Set<string>();
let handlersInstalled = false;

function baseDir(): string {
  return existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
}

/**
 * The filesystem type that holds VM directories (and so guest RAM files): postcopy needs one whose
 * pages userfaultfd can track (tmpfs); on ext4 the destination's userfault registration fails and
 * the source is left in postcopy-paused (QEMU 7.2, measured).
 */
export function runRootFilesystem(): string {
  const dir = process.env[RUNTIME_ROOT_ENV] || baseDir();
  let best = { at: '', type: 'unknown' };
  try {
    for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const [, at, type] = line.split(' ');
      if (at && type && (dir === at || dir.startsWith(at.endsWith('/') ? at : `${at}/`)) && at.length > best.at.length) best = { at, type };
    }
  } catch {
    /* no /proc: unknown */
  }
  return best.type;
}

/** Create a run root (0700) that the caller owns and must remove with removeRunRoot. */
export function createRunRoot(): string {
  const root = mkdtempSync(join(baseDir(), 'kvmprop-run-'));
  chmodSync(root, 0o700);
  return root;
}

export function removeRunRoot(root: string): void {
  rmSync(root, { recursive: true, force: true });
}

/** The run root for this process: the one named in the environment, or a private one of our own. */
function runRoot(): string {
  const fromEnv = process.env[RUNTIME_ROOT_ENV];
  installHandlers();
  if (fromEnv && existsSync(fromEnv)) return fromEnv;
  if (!processRoot) {
    processRoot = createRunRoot();
    liveDirs.add(processRoot);
  }
  return processRoot;
}

/** A fresh private (0700) directory for one VM or one tool run. */
export async function createPrivateDir(label: string): Promise<string> {
  const root = runRoot();
  const dir = await mkdtemp(join(root, `${label.replace(/[^a-zA-Z0-9_-]/g, '_').slice(0, 40)}-`));
  await chmod(dir, 0o700);
  liveDirs.add(dir);
  return dir;
}

export async function removePrivateDir(dir: string): Promise<void> {
  liveDirs.delete(dir);
  await rm(dir, { recursive: true, force: true });
}

/** Remember a child that must not outlive this process. */
export function trackPid(pid: number): void {
  installHandlers();
  livePids.add(pid);
}

export function untrackPid(pid: number): void {
  livePids.delete(pid);
}

/** Synchronous, so it can run from 'exit': kill what we started, remove what we created. */
export function cleanupNow(): void {
  for (const pid of livePids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  livePids.clear();
  for (const dir of [...liveDirs].reverse()) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort: the run root owner sweeps what is left
    }
  }
  liveDirs.clear();
  processRoot = null;
}

let signalDelegate: ((sig: NodeJS.Signals) => void) | null = null;

/**
 * Exit now. Inside a vitest worker process.exit is replaced by one that only reports the call, so
 * a worker told to stop would run its next case (seen: a SIGINT'd run's worker booted three more
 * QEMUs); Node's own process.reallyExit is what process.exit ends in.
 */
function hardExit(code: number): never {
  const really = (process as unknown as { reallyExit?: (code: number) => never }).reallyExit;
  if (typeof really === 'function') really.call(process, code);
  process.exit(code);
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupNow);
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.on(sig, () => {
      cleanupNow();
      if (signalDelegate) signalDelegate(sig);
      else hardExit(code);
    });
  }
}

/**
 * While `delegate` is set, a signal still kills and removes what this process started, but the
 * process does not exit: the delegate decides (the CLI passes it on to the vitest run it waits
 * for, which then ends with its workers and their QEMUs). Returns the undo.
 */
export function delegateSignals(delegate: (sig: NodeJS.Signals) => void): () => void {
  installHandlers();
  signalDelegate = delegate;
  return () => {
    if (signalDelegate === delegate) signalDelegate = null;
  };
}

/** For tests: what this process still holds. */
export function liveResources(): { pids: number[]; dirs: string[] } {
  return { pids: [...livePids], dirs: [...liveDirs] };
}

/**
 * Pids of processes whose command line contains `text`, read from /proc (no procps needed: a
 * minimal Debian has no pgrep).
 */
export function processesMatching(text: string): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'latin1').replace(/\0/g, ' ');
      if (cmdline.includes(text)) out.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}
