/**
 * Nothing survives the runner: a separate Node process (a "runner") boots a VM whose guest loops
 * forever, then dies in one of the ways a real run can die. Whatever way it dies, its QEMU must go;
 * when it gets to run its handlers (signals, uncaught exceptions) its VM directory must go too, and
 * when it cannot (SIGKILL) the owner of the run root sweeps the directory.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT, buildGuest } from './guest/build.js';
import { RUNTIME_ROOT_ENV, createRunRoot, processesMatching, removeRunRoot } from './runtime.js';

const harness = (path: string) => JSON.stringify(pathToFileURL(join(PROJECT_ROOT, path)).href);

/**
 * The runner: boots a VM that never finishes, prints {pid, dir} once the guest runs, then waits.
 * A line "throw" on stdin makes it throw from an event handler (an uncaught exception).
 * Vm has no public accessor for QEMU's pid; the runtime tracks exactly one pid in this process,
 * QEMU's (setpriv execs it, so the pid is QEMU's own), and the test checks it against /proc.
 */
const RUNNER = `
import { buildGuest } from ${harness('harness/guest/build.js')};
import { Vm, defaultMachineConfig } from ${harness('harness/vm.js')};
import { encodeProgram } from ${harness('harness/bytecode.js')};
import { liveResources } from ${harness('harness/runtime.js')};
import { MAILBOX_STATE } from ${harness('harness/guest/abi.js')};
import { DEFAULT_CANARY } from ${harness('ir/program.js')};

const { elf } = await buildGuest();
const program = encodeProgram({
  threads: [[{ op: 'loopBegin', count: 0 }, { op: 'mark', value: 1n }, { op: 'loopEnd' }]],
  canary: DEFAULT_CANARY,
});
const vm = await Vm.start(defaultMachineConfig(), { guestElf: elf, program, label: 'runner' });
const deadline = Date.now() + 30_000;
for (;;) {
  const { mailbox } = await vm.readMailbox();
  if (mailbox.state === BigInt(MAILBOX_STATE.running)) break;
  if (vm.hasExited || Date.now() > deadline) throw new Error('the guest did not start: ' + vm.stderr);
  await new Promise((r) => setTimeout(r, 10));
}
const pids = liveResources().pids;
process.stdout.write(JSON.stringify({ pids, dir: vm.dir }) + '\\n');
process.stdin.setEncoding('utf8');
process.stdin.on('data', (text) => {
  if (text.includes('throw')) throw new Error('runner: deliberate uncaught exception');
});
setInterval(() => {}, 1 << 30);
`;

let scriptDir: string;
let script: string;

beforeAll(async () => {
  await buildGuest(); // the runners find it in the cache
  scriptDir = await mkdtemp(join(tmpdir(), 'kvmprop-cleanup-test-'));
  await writeFile(join(scriptDir, 'package.json'), '{ "type": "module" }\n');
  script = join(scriptDir, 'runner.ts');
  await writeFile(script, RUNNER);
});

afterAll(async () => {
  await rm(scriptDir, { recursive: true, force: true });
});

interface Runner {
  readonly proc: ResultPromise<{ reject: false; buffer: false }>;
  readonly root: string;
  readonly pid: number;
  readonly dir: string;
  stderr(): string;
}

const runners: Runner[] = [];
const roots: string[] = [];

afterEach(async () => {
  for (const r of runners.splice(0)) {
    r.proc.kill('SIGKILL');
    await r.proc;
    await waitUntil(() => !qemuAlive(r.pid, r.dir), `QEMU ${r.pid} to go`);
  }
  for (const root of roots.splice(0)) removeRunRoot(root);
});

/** Start a runner with its own run root, and wait until its guest runs. */
async function startRunner(): Promise<Runner> {
  const root = createRunRoot();
  roots.push(root);
  const proc = execa('node', ['--import', 'tsx', script], {
    cwd: PROJECT_ROOT,
    env: { [RUNTIME_ROOT_ENV]: root },
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    reject: false,
  });
  let out = '';
  let err = '';
  proc.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const line = await new Promise<string>((resolve, reject) => {
    proc.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    void proc.then((r) => reject(new Error(`the runner exited (${r.exitCode ?? r.signal}) before its VM ran:\n${out}\n${err}`)));
  });
  const { pids, dir } = JSON.parse(line) as { pids: number[]; dir: string };
  expect(pids).toHaveLength(1);
  const runner: Runner = { proc, root, pid: pids[0]!, dir, stderr: () => err };
  runners.push(runner);
  return runner;
}

/** Whether a live (not zombie) process with this pid names the VM dir on its command line. */
function qemuAlive(pid: number, dir: string): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return false;
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(dir);
  } catch {
    return false;
  }
}

async function waitUntil(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The runner's reported pid is the QEMU running its VM. */
async function expectQemuRunning(r: Runner): Promise<void> {
  expect(processesMatching(r.dir)).toEqual([r.pid]);
  expect(readFileSync(`/proc/${r.pid}/cmdline`, 'latin1')).toContain('qemu-system');
  expect(existsSync(r.dir)).toBe(true);
}

describe('nothing outlives the runner', () => {
  it.each([
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const)('%s: the runner exits %i, its QEMU and VM dir are gone, the run root is left to its owner', async (signal, code) => {
    const r = await startRunner();
    await expectQemuRunning(r);

    r.proc.kill(signal);
    const result = await r.proc;

    expect(result.exitCode, r.stderr()).toBe(code);
    await waitUntil(() => !qemuAlive(r.pid, r.dir), `QEMU ${r.pid} to go`);
    expect(existsSync(r.dir)).toBe(false);
    expect(existsSync(r.root)).toBe(true);
    removeRunRoot(r.root);
    expect(existsSync(r.root)).toBe(false);
  });

  it('SIGKILL: QEMU dies with the runner (pdeathsig); the root owner removes what is left', async () => {
    const r = await startRunner();
    await expectQemuRunning(r);

    r.proc.kill('SIGKILL');
    const result = await r.proc;

    expect(result.signal).toBe('SIGKILL');
    await waitUntil(() => !qemuAlive(r.pid, r.dir), `QEMU ${r.pid} to go`);
    removeRunRoot(r.root);
    expect(existsSync(r.dir)).toBe(false);
    expect(existsSync(r.root)).toBe(false);
  });

  it('an uncaught exception: the runner fails, its QEMU and VM dir are gone', async () => {
    const r = await startRunner();
    await expectQemuRunning(r);

    r.proc.stdin.write('throw\n');
    const result = await r.proc;

    expect(result.exitCode).not.toBe(0);
    expect(result.exitCode).not.toBeNull();
    expect(r.stderr()).toContain('runner: deliberate uncaught exception');
    await waitUntil(() => !qemuAlive(r.pid, r.dir), `QEMU ${r.pid} to go`);
    expect(existsSync(r.dir)).toBe(false);
  });
});
