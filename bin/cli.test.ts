/**
 * The CLI end to end on real QEMU/KVM: a fixed-seed leak run writes a valid results.json; a
 * failure found under a mutant replays from its seed and path; bad input gets one line and a
 * non-zero exit.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { readCounterexample } from '../reports/counterexample.js';
import { PROJECT_ROOT } from '../suites/lib/options.js';
import { SUITES } from '../suites/registry.js';
import { readResults } from './cli.js';

const work = mkdtempSync(join(tmpdir(), 'kvmprop-cli-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmprop = (args: string[]) => execa(process.execPath, [join(PROJECT_ROOT, 'bin', 'kvmprop.mjs'), ...args], { reject: false, cwd: work });

function runRoots(): string[] {
  return existsSync('/dev/shm') ? readdirSync('/dev/shm').filter((n) => n.startsWith('kvmprop-run-')) : [];
}

describe('kvmprop run', () => {
  it('runs the leak family with a fixed seed and writes a valid results.json', async () => {
    const before = runRoots();
    const out = join(work, 'leaks');
    const r = await kvmprop(['run', '--suite', 'leaks', '--runs', '5', '--seed', '1', '--out', out]);
    expect(r.exitCode, r.stderr + r.stdout).toBe(0);
    const results = readResults(join(out, 'results.json'));
    expect(results.status).toBe('pass');
    expect(results.options.seed).toBe(1);
    expect(results.properties.map((p) => p.id).sort()).toEqual(SUITES.leaks!.map((p) => p.id).sort());
    for (const p of results.properties) {
      expect(['pass', 'known-deviation']).toContain(p.status);
      expect(p.numRuns).toBeGreaterThanOrEqual(5);
      expect(p.seed).toBe(1);
    }
    expect(results.metrics.cpuidQueries).toBeGreaterThan(1000);
    expect(results.metrics.deviceReads).toBeGreaterThan(1000);
    expect(results.host.kvm.device).toBe('ok');
    expect(r.stdout).toMatch(/exercised: \d+ CPUID queries, \d+ device reads/);
    // The run's private root is gone with it.
    expect(runRoots().filter((n) => !before.includes(n))).toEqual([]);
  }, 600_000);

  it('replays a failure from its seed and path', async () => {
    const out = join(work, 'mutant');
    const first = await kvmprop(['run', '--property', 'leaks.cpuid.rules', '--mutant', 'cpuid-drop-feature', '--runs', '20', '--seed', '3', '--out', out]);
    expect(first.exitCode).toBe(1);
    const failed = readResults(join(out, 'results.json')).properties[0]!;
    expect(failed.status).toBe('fail');
    expect(first.stdout).toContain(`seed 3, path ${failed.path}`);
    expect(first.stdout).toContain('replay: npx kvmprop replay ');
    expect(first.stdout).toContain(`or: npx kvmprop run --suite leaks --property leaks.cpuid.rules --seed 3 --path ${failed.path} --mutant cpuid-drop-feature`);
    const c = readCounterexample(join(out, failed.counterexample!));
    expect(c.workload).toBeDefined();
    expect(c.expected).toBeDefined();
    expect(c.observed).toBeDefined();

    const again = await kvmprop(['run', '--property', 'leaks.cpuid.rules', '--mutant', 'cpuid-drop-feature', '--seed', '3', '--path', failed.path!, '--out', join(work, 'again')]);
    expect(again.exitCode).toBe(1);
    const replayed = readResults(join(work, 'again', 'results.json')).properties[0]!;
    expect(replayed.reason?.split(' (also:')[0]).toBe(failed.reason?.split(' (also:')[0]);
  }, 600_000);
});

describe('bad input gets one clear line and a non-zero exit', () => {
  const cases: [string, string[], RegExp][] = [
    ['an unknown suite', ['run', '--suite', 'nosuch'], /^kvmprop: unknown suite 'nosuch' \(known: leaks/],
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
  ];
  for (const [what, args, message] of cases) {
    it(what, async () => {
      const r = await kvmprop(args);
      expect(r.exitCode).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(message);
    });
  }

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

  it('doctor reports this host without errors', async () => {
    const r = await kvmprop(['doctor']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/kvm_pvm/);
  });
});
