/**
 * The CLI end to end on real QEMU/KVM: a fixed-seed leak run writes a valid results.json; a
 * failure found under a mutant replays from its seed and path; bad input gets one line and a
 * non-zero exit.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { readCounterexample } from '../reports/counterexample.js';
import { processesMatching } from '../harness/runtime.js';
import { PROJECT_ROOT } from '../suites/lib/options.js';
import { familyNamed } from '../suites/registry.js';

const LEAKS = familyNamed('leaks')!.properties;
import { readResults } from './cli.js';

const work = mkdtempSync(join(tmpdir(), 'kvmprop-cli-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmprop = (args: string[]) => execa(process.execPath, [join(PROJECT_ROOT, 'bin', 'kvmprop.mjs'), ...args], { reject: false, cwd: work });

function runRoots(): string[] {
  return existsSync('/dev/shm') ? readdirSync('/dev/shm').filter((n) => n.startsWith('kvmprop-run-')) : [];
}

describe('kvmprop run', () => {
  it('runs the leak family with a fixed seed: every property classified, every failure replays', async () => {
    const out = join(work, 'leaks');
    const r = await kvmprop(['run', '--family', 'leaks', '--runs', '5', '--seed', '1', '--out', out]);
    // The suite is under test, not the host: 0 (nothing failed) and 1 (the host deviates) are both results.
    expect([0, 1], r.stderr + r.stdout).toContain(r.exitCode);
    const results = readResults(join(out, 'results.json'));
    expect(results.status).toBe(r.exitCode === 0 ? 'pass' : 'fail');
    expect(results.errors).toEqual([]);
    expect(results.options.seed).toBe(1);
    expect(results.options.cpu).toBe(results.host.qemuCpu?.used);
    expect(results.properties.map((p) => p.id).sort()).toEqual(LEAKS.map((p) => p.id).sort());
    for (const p of results.properties) {
      expect(['pass', 'known-deviation', 'fail'], `${p.id}: ${p.reason}`).toContain(p.status);
      // A harness problem is never a finding: no property fails on a setup or checking error.
      expect(p.reason ?? '', p.id).not.toMatch(/^(setup error|error while checking|could not gather host facts)/);
      expect(p.numRuns).toBeGreaterThanOrEqual(5);
      expect(p.seed).toBe(1);
    }
    for (const f of results.findings) {
      expect(f.qemuMessage.length).toBeGreaterThan(0);
      expect(f.commandLine.length).toBeGreaterThan(0);
    }
    expect(results.metrics.cpuidQueries).toBeGreaterThan(1000);
    expect(results.metrics.deviceReads).toBeGreaterThan(1000);
    expect(results.host.kvm.device).toBe('ok');
    expect(r.stdout).toMatch(/exercised: \d+ CPUID queries, \d+ device reads/);
    // Every failure on this host carries a counterexample that kvmprop replay reproduces.
    for (const p of results.properties.filter((x) => x.status === 'fail')) {
      expect(p.counterexample, p.id).toBeDefined();
      const replay = await kvmprop(['replay', join(out, p.counterexample!)]);
      expect(replay.exitCode, `${p.id}: ${replay.stdout}${replay.stderr}`).toBe(1);
      expect(replay.stdout).toContain(`${p.id} fails again`);
    }
    // The run's private root is gone with it (named on stderr: other runs may share the machine).
    const root = /run root (\S+)/.exec(r.stderr)?.[1];
    expect(root, r.stderr).toBeDefined();
    expect(existsSync(root!)).toBe(false);
    expect(runRoots()).not.toContain(basename(root!));
  }, 600_000);

  it('replays a failure from its seed and path', async () => {
    const out = join(work, 'mutant');
    // TCG with a fixed CPU model: QEMU's own CPUID is the reference, whatever this host deviates in.
    const tcg = ['--accel', 'tcg', '--cpu', 'Skylake-Client-v3'];
    const first = await kvmprop(['run', '--property', 'leaks.cpuid.rules', '--mutant', 'cpuid-drop-feature', ...tcg, '--runs', '20', '--seed', '3', '--out', out]);
    expect(first.exitCode).toBe(1);
    const failed = readResults(join(out, 'results.json')).properties[0]!;
    expect(failed.status).toBe('fail');
    expect(first.stdout).toContain(`seed 3, path ${failed.path}`);
    expect(first.stdout).toContain('replay: npx kvmprop replay ');
    expect(first.stdout).toContain(
      `or: npx kvmprop run --family leaks --property leaks.cpuid.rules --seed 3 --path ${failed.path} --accel tcg --cpu Skylake-Client-v3 --mutant cpuid-drop-feature`,
    );
    const c = readCounterexample(join(out, failed.counterexample!));
    expect(c.workload).toBeDefined();
    expect(c.expected).toBeDefined();
    expect(c.observed).toBeDefined();

    const again = await kvmprop(['run', '--property', 'leaks.cpuid.rules', '--mutant', 'cpuid-drop-feature', ...tcg, '--seed', '3', '--path', failed.path!, '--out', join(work, 'again')]);
    expect(again.exitCode).toBe(1);
    const replayed = readResults(join(work, 'again', 'results.json')).properties[0]!;
    expect(replayed.reason?.split(' (also:')[0]).toBe(failed.reason?.split(' (also:')[0]);
  }, 600_000);
});

/** Processes of a run: its vitest processes (by their environment) and its QEMUs (by their command line). */
function processesOfRun(root: string): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const env = readFileSync(`/proc/${entry}/environ`, 'latin1');
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'latin1');
      if (env.includes(`KVMPROP_RUNTIME_ROOT=${root}\0`) || cmd.includes(root)) out.push(Number(entry));
    } catch {
      // it ended while we looked
    }
  }
  return out;
}

describe('kvmprop run, interrupted', () => {
  it('a SIGINT to the CLI alone ends its vitest workers and QEMUs too, exits 130, and keeps what it has', async () => {
    const out = join(work, 'interrupted');
    const run = execa(process.execPath, [join(PROJECT_ROOT, 'bin', 'kvmprop.mjs'), 'run', '--family', 'migration', '--property', 'migration.resume', '--runs', '1000', '--out', out], { reject: false, cwd: work });
    let stderr = '';
    run.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const deadline = Date.now() + 120_000;
    let root: string | undefined;
    // Wait until a case runs: a QEMU whose command line names the run root.
    while (Date.now() < deadline) {
      root ??= /run root (\S+)/.exec(stderr)?.[1];
      if (root && processesMatching(root).length > 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(root, stderr).toBeDefined();
    expect(processesOfRun(root!).length).toBeGreaterThan(1);
    process.kill(run.pid!, 'SIGINT');
    const r = await run;
    expect(r.exitCode, r.stderr).toBe(130);
    for (let i = 0; i < 50 && processesOfRun(root!).length > 0; i++) await new Promise((res) => setTimeout(res, 100));
    expect(processesOfRun(root!)).toEqual([]);
    expect(existsSync(root!)).toBe(false);
    const results = readResults(join(out, 'results.json'));
    expect(results.errors.join('\n')).toMatch(/run interrupted by SIGINT/);
  }, 180_000);
});

describe('bad input gets one clear line and a non-zero exit', () => {
  const cases: [string, string[], RegExp][] = [
    ['an unknown family', ['run', '--family', 'nosuch'], /^kvmprop: unknown family 'nosuch' \(known: leaks/],
    ['an unknown family, in the old spelling', ['run', '--suite', 'nosuch'], /^kvmprop: unknown family 'nosuch' \(known: leaks/],
    ['a bad seed', ['run', '--seed', '12x'], /^kvmprop: --seed must be an integer/],
    ['a bad run count', ['run', '--runs', '0'], /^kvmprop: --runs must be an integer from 1/],
    ['an unknown property', ['run', '--property', 'leaks.nope'], /^kvmprop: unknown property 'leaks.nope'/],
    ['a path without its seed', ['run', '--path', '1:2'], /^kvmprop: --path needs the --seed/],
    ['an unknown mutant', ['run', '--mutant', 'nope'], /^kvmprop: unknown mutant 'nope'/],
    ['a missing QEMU', ['run', '--qemu', '/nonexistent/qemu'], /^kvmprop: QEMU not found or not runnable: \/nonexistent\/qemu/],
    ['an unreadable deviations file', ['run', '--deviations', '/nonexistent/dev.json'], /^kvmprop: cannot read known deviations \/nonexistent\/dev.json: ENOENT/],
    ['an unknown command', ['frobnicate'], /^kvmprop: unknown command 'frobnicate'/],
    ['an unknown option', ['run', '--frob'], /^kvmprop: Unknown option '--frob'/],
    ['a missing counterexample', ['replay', '/nonexistent/ce.json'], /^kvmprop: cannot read \/nonexistent\/ce.json: ENOENT/],
    ['a missing results file for the report', ['report', '/nonexistent/results.json', '--out', '/nonexistent/report'], /^kvmprop: cannot read \/nonexistent\/results.json: ENOENT/],
  ];
  for (const [what, args, message] of cases) {
    it(what, async () => {
      const r = await kvmprop(args);
      expect(r.exitCode).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(message);
    });
  }

  it('an --out that is a file, that cannot be created, or that holds files kvmprop did not write', async () => {
    const file = join(work, 'a-file');
    writeFileSync(file, 'mine');
    const user = join(work, 'thesis');
    mkdirSync(join(user, 'properties'), { recursive: true });
    writeFileSync(join(user, 'properties', 'thesis.txt'), 'years of work');
    for (const [out, words] of [
      [file, /is a file/],
      [join(file, 'below'), /below .*a-file, which is a file/],
      ['/proc/x', /cannot create the directory/],
      [user, /holds files kvmprop did not write \(properties\/thesis.txt\)/],
    ] as const) {
      const r = await kvmprop(['run', '--family', 'leaks', '--runs', '1', '--out', out]);
      expect(r.exitCode, out).toBe(2);
      expect(r.stderr.trim().split('\n'), out).toHaveLength(1);
      expect(r.stderr).toMatch(/^kvmprop: --out /);
      expect(r.stderr).toMatch(words);
    }
    expect(readFileSync(join(user, 'properties', 'thesis.txt'), 'utf8')).toBe('years of work');
    expect(readFileSync(file, 'utf8')).toBe('mine');
  });

  it('a corrupt counterexample or deviations file', async () => {
    const bad = join(work, 'bad.json');
    writeFileSync(bad, '{ not json');
    const replay = await kvmprop(['replay', bad]);
    expect(replay.exitCode).toBe(2);
    expect(replay.stderr).toMatch(/is not valid JSON/);
    const dev = await kvmprop(['run', '--deviations', bad]);
    expect(dev.exitCode).toBe(2);
    expect(dev.stderr).toMatch(/not valid JSON/);
  });

  it('doctor reports this host without errors, and the vCPU model a VM of the default configuration boots with', async () => {
    const r = await kvmprop(['doctor']);
    expect(r.exitCode, r.stdout).toBe(0);
    expect(r.stdout).toMatch(/kvm_pvm/);
    expect(r.stdout).toMatch(/^\[(ok|warn)\]\s+vcpu-model\s+(a microvm VM boots with -cpu host|-cpu host cannot start on this host)/m);
  });
});

describe('a machine that does not start is one host-level finding in QEMU\'s own words', () => {
  const abortingQemu = () => join(PROJECT_ROOT, 'bin', 'fixtures', 'qemu-that-aborts.mjs');

  const startFails: [string, string[], RegExp][] = [
    ['a QEMU that aborts after connecting QMP', ['--qemu', abortingQemu(), '--cpu', 'host'], /error: failed to set MSR 0x10a to 0x69 \/ .*Assertion/],
    ['an unknown CPU model', ['--cpu', 'nosuchcpu'], /unable to find CPU model 'nosuchcpu'/],
    ['an unknown QEMU option', ['--qemu-arg', '-nosuchflag'], /-nosuchflag: invalid option/],
  ];
  for (const [what, args, words] of startFails) {
    it(what, async () => {
      const out = join(work, `start-${what.replace(/\W+/g, '-')}`);
      const r = await kvmprop(['run', '--family', 'leaks', '--runs', '1', '--seed', '1', '--out', out, ...args]);
      expect(r.exitCode, r.stderr).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^kvmprop: the configured machine does not start: /);
      expect(r.stderr).toMatch(words);
      const results = readResults(join(out, 'results.json'));
      expect(results.findings).toHaveLength(1);
      expect(results.findings[0]).toMatchObject({ check: 'host.machine-starts', status: 'fail' });
      expect(results.findings[0]!.qemuMessage).toMatch(words);
      expect(results.findings[0]!.commandLine.length).toBeGreaterThan(10);
      expect(results.properties).toHaveLength(LEAKS.length);
      for (const p of results.properties) {
        expect(p.status).toBe('skip');
        expect(p.reason).toMatch(/host finding host.machine-starts/);
        expect(p.reason).not.toMatch(/QMP/);
      }
    }, 120_000);
  }
});
