/**
 * kvmprop repro end to end on the real host: a counterexample the runner makes under a mutant that
 * breaks the model (nested-model-gp-as-ud: a non-canonical load is predicted to raise #UD) becomes
 * a directory whose run.sh, run by plain sh and QEMU, fails on this correct host with the model's
 * wrong expectation in its TAP; the same case with the unbroken model passes (from a directory
 * whose path has a space, a comma and a quote in it, which run.sh must keep as one word each).
 * Also: the one-line refusals, and the quoting of run.sh's words.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { execa } from 'execa';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { main } from '../bin/cli.js';
import { encodeStep, type SingleLevelCase } from '../generators/nested.js';
import { singleLevelDelivery, singleLevelRepro } from '../suites/nested/singleLevel.js';
import { APM_EXCEPTIONS } from '../models/nested/exceptions.js';
import { encodeProgram } from '../harness/bytecode.js';
import { defaultOptions } from '../suites/lib/options.js';
import { propertyEnv, runProperty } from '../suites/lib/runner.js';
import { readCounterexample, writeCounterexample } from './counterexample.js';
import { REPRO_EXIT, runScript, shellWord, shQuote, writeRepro } from './repro.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-repro-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

/** `kvmprop ARGS` in this process (a spawned CLI costs seconds of start-up): its exit status and stderr. */
async function cli(args: string[]): Promise<{ exitCode: number; stderr: string }> {
  let stderr = '';
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderr += String(chunk);
    return true;
  });
  try {
    return { exitCode: await main(args), stderr };
  } finally {
    spy.mockRestore();
  }
}

describe('run.sh words', () => {
  it('quotes literal text and keeps the directories one word, commas doubled inside option lists', async () => {
    expect(shQuote("it's")).toBe(`'it'\\''s'`);
    expect(shellWord('\u0000HERE\u0000/guest.elf')).toBe(`"$here"'/guest.elf'`);
    expect(shellWord('loader,file=\u0000HERE\u0000/program.bin,addr=0x800000')).toBe(`'loader,file='"$here_q"'/program.bin,addr=0x800000'`);
    expect(shellWord('$(reboot) `x` "y"')).toBe(`'$(reboot) \`x\` "y"'`);
    // sh itself reads the words back as they were meant (a QEMU stand-in that prints its arguments).
    const dir = mkdtempSync(join(out, "a dir, with 'quotes' "));
    const fake = join(dir, 'fake-qemu');
    writeFileSync(fake, '#!/bin/sh\nfor a in "$@"; do printf "<%s>\\n" "$a"; done\nexit 33\n', { mode: 0o755 });
    writeFileSync(join(dir, 'run.sh'), runScript([{ label: 'vm', args: ['-kernel', '\u0000HERE\u0000/g.elf', '-object', 'x,mem-path=\u0000TMP\u0000/ram', "it's $HOME"] }], ['test']));
    const r = await execa('sh', [join(dir, 'run.sh')], { reject: false, env: { QEMU: fake } });
    expect(r.exitCode).toBe(REPRO_EXIT.pass);
    const words = r.stdout.split('\n');
    expect(words[1]).toBe(`<${dir}/g.elf>`);
    expect(words[3]).toMatch(/^<x,mem-path=\/.*kvmprop-repro\.\w+\/ram>$/);
    expect(words[4]).toBe("<it's $HOME>");
    // QEMU that cannot run is exit status 2.
    const missing = await execa('sh', [join(dir, 'run.sh')], { reject: false, env: { QEMU: join(dir, 'no-such-qemu') } });
    expect(missing.exitCode).toBe(REPRO_EXIT.noQemu);
  });
});

describe('PropertyDef.repro hooks', () => {
  it('single level: a CPL-3 #PF step checks vector, error code, CR2, RIP offset and one entry, then the thread', () => {
    const plan = singleLevelRepro({ cpl: 3, steps: [{ instruction: 'load-unmapped', address: 0x2_0000_0000n }] }, { switches: APM_EXCEPTIONS, variant: {} });
    const checks = plan.vms[0]!.program.checks!;
    expect(checks.map((c) => c.kind)).toEqual(['value', 'value', 'value', 'diff', 'diff', 'status']);
    expect(checks.map((c) => ('expected' in c ? c.expected : null))).toEqual([14n, 4n, 0x2_0000_0000n, BigInt(encodeStep({ instruction: 'load-unmapped', address: 0x2_0000_0000n }).at), 1n, 2n]);
    expect(checks[0]!.name).toBe('step 0 load-unmapped 0x200000000 at CPL 3: vector #PF');
    // The checks resolve against the program they travel in.
    expect(() => encodeProgram(plan.vms[0]!.program)).not.toThrow();
    // The mutant's model expects the user bit gone.
    const broken = singleLevelRepro({ cpl: 3, steps: [{ instruction: 'load-unmapped', address: 0x2_0000_0000n }] }, { switches: APM_EXCEPTIONS, variant: { pageFaultUserBit: false } });
    expect((broken.vms[0]!.program.checks![1] as { expected: bigint }).expected).toBe(0n);
  });
});

describe('kvmprop repro refuses what it cannot write, in one line', () => {
  it('a missing file, a corrupt one, no --out, and a property without repro support: exit 2', async () => {
    const missing = await cli(['repro', join(out, 'nope.json'), '--out', join(out, 'x')]);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr.trim().split('\n')).toHaveLength(1);
    expect(missing.stderr).toMatch(/cannot read .*nope\.json: ENOENT/);
    const corrupt = join(out, 'corrupt.json');
    writeFileSync(corrupt, '{"schema": "kvmprop-counterexample", ');
    expect((await cli(['repro', corrupt, '--out', join(out, 'x')])).stderr).toMatch(/is not valid JSON/);
    expect((await cli(['repro', corrupt])).stderr).toMatch(/usage: kvmprop repro COUNTEREXAMPLE --out DIR/);
    const timers = join(out, 'timers.json');
    writeCounterexample(timers, {
      schema: 'kvmprop-counterexample', version: 1, property: 'timers.rtc.periodic', family: 'timers', statement: '', rule: 'r', seed: 1, path: '0',
      replay: '', options: {}, hostId: 'h', summary: 's', workload: {}, expected: 1, observed: 2, createdAt: new Date(0).toISOString(),
    });
    const r = await cli(['repro', timers, '--out', join(out, 'x')]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/timers.rtc.periodic has no self-checking repro .*kvmprop replay .*repro supports: .*nested.single-level.delivery/);
  });
});

describe.skipIf(!existsSync('/dev/kvm'))('a repro directory shows the failure again with QEMU alone', () => {
  /** A non-canonical load at CPL 3: #GP(0) on any correct host; the mutant's model says #UD. */
  const CASE: SingleLevelCase = { cpl: 3, steps: [{ instruction: 'load-non-canonical', address: 0x8000_0000_0000n }] };

  it('fails (exit 1, the broken expectation in TAP) under the mutant and passes (exit 0) with the correct model', async () => {
    // The runner makes the counterexample (the one case, so nothing to shrink).
    const def = { ...singleLevelDelivery, arbitrary: () => fc.constant(CASE) };
    const options = defaultOptions({ families: ['nested'], properties: [def.id], runs: 1, seed: 7, mutant: 'nested-model-gp-as-ud', out: join(out, 'run') });
    const result = await runProperty(def, await propertyEnv(options));
    expect(result.status, result.reason).toBe('fail');
    const file = join(options.out, result.counterexample!);

    const broken = join(out, 'broken');
    const made = await cli(['repro', file, '--out', broken]);
    expect(made.exitCode, made.stderr).toBe(0);
    for (const f of ['guest.elf', 'program.bin', 'run.sh', 'expected.json', 'observed.json', 'host.json', 'README.txt', 'checks.json']) expect(existsSync(join(broken, f)), f).toBe(true);
    expect(readFileSync(join(broken, 'README.txt'), 'utf8')).toContain(`npx kvmprop replay ${file}`);
    const bad = await execa('sh', [join(broken, 'run.sh')], { reject: false, cwd: tmpdir() });
    expect(bad.exitCode, bad.stderr).toBe(REPRO_EXIT.fail);
    expect(bad.stdout).toMatch(/^TAP version 13$/m);
    expect(bad.stdout).toMatch(/^1\.\.5$/m);
    expect(bad.stdout).toContain('not ok 1 - step 0 load-non-canonical 0x800000000000 at CPL 3: vector \\#UD expected 0x6 got 0xd');
    expect(bad.stdout).toMatch(/^ok 5 - the thread ran every step at CPL 3 \(state done\)$/m);

    // The same case, the model unbroken: the host's #GP(0) is what it expects.
    const c = readCounterexample(file);
    const plainFile = join(out, 'plain.json');
    writeCounterexample(plainFile, { ...c, options: { ...(c.options as object), mutant: undefined } });
    const plain = join(out, "it's a, dir");
    expect((await writeRepro(plainFile, plain)).checks).toBe(5);
    const good = await execa('sh', ['run.sh'], { reject: false, cwd: plain });
    expect(good.exitCode, good.stdout + good.stderr).toBe(REPRO_EXIT.pass);
    expect(good.stdout).toContain('ok 1 - step 0 load-non-canonical 0x800000000000 at CPL 3: vector \\#GP');
    expect(good.stdout).not.toMatch(/not ok/);
    // A directory of ours is rewritten; one holding anything else is refused.
    expect((await cli(['repro', plainFile, '--out', plain])).exitCode).toBe(0);
    expect((await cli(['repro', plainFile, '--out', out])).stderr).toMatch(/holds files kvmprop repro did not write/);
  }, 120_000);
});
