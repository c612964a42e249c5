/**
 * The single-level oracle can fail: each mutant (a model with one rule broken, mutants.ts) makes
 * nested.single-level.delivery fail on the real host with a one-instruction counterexample that
 * `kvmprop replay` reproduces, and the same case passes against the unbroken model, so the
 * failure is the mutant's and not the host's.
 *
 * Each draws only from instructions this host's KVM is known to get right (kvm_pvm here: INT n,
 * INT3 and SSE instructions at CPL 0 stop the VM with an emulation failure, and INT n/INT3 at CPL 3
 * are mis-delivered, a CPL-3 #PF on an upper-half address sometimes carries P|RSVD, and a #PF
 * pushing a frame onto a not-present stack becomes #DF: the family's own findings), so that a host
 * deviation is not what fails.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { singleLevelCaseArb, type SingleLevelCase, type SingleLevelInstruction } from '../../generators/nested.js';
import { readCounterexample } from '../../reports/counterexample.js';
import { loadDeviations } from '../../reports/deviations.js';
import { defaultOptions, PROJECT_ROOT } from '../lib/options.js';
import { Metrics } from '../lib/property.js';
import { checkCase, propertyEnv, runProperty } from '../lib/runner.js';
import { Waiver } from '../lib/waive.js';
import { singleLevelDelivery } from './singleLevel.js';
import { svmDelivery } from './svm.js';
import type { SvmCase } from '../../generators/nestedSvm.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-nested-sensitivity-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

const CASES: readonly { mutant: string; instructions: readonly SingleLevelInstruction[]; rule: string }[] = [
  { mutant: 'nested-model-gp-as-ud', instructions: ['load-non-canonical', 'div-by-zero', 'ud2', 'load-unmapped'], rule: 'vector as the model predicts' },
  { mutant: 'nested-model-pf-no-user-bit', instructions: ['load-unmapped', 'store-unmapped', 'div-by-zero', 'ud2'], rule: 'error code as the model predicts' },
];

describe('nested.single-level.delivery fails on deliberately broken models', () => {
  for (const { mutant, instructions, rule } of CASES) {
    it(`${mutant}: a one-instruction counterexample that replays, and passes without the mutant`, async () => {
      // No not-present stacks: kvm_pvm turns their frame-push #PF into #DF (pvm-frame-push-fault-becomes-double-fault).
      const def = { ...singleLevelDelivery, arbitrary: () => singleLevelCaseArb({ instructions, unmappedRegions: ['above-map', 'lower-half'], stacks: false }) };
      const options = defaultOptions({ families: ['nested'], properties: [def.id], runs: 20, seed: 7, mutant, out: join(out, mutant) });
      const r = await runProperty(def, await propertyEnv(options));
      expect(r.status, r.reason).toBe('fail');
      expect(r.rule).toBe(rule);
      const file = join(options.out, r.counterexample!);
      const c = readCounterexample(file);
      const w = c.workload as SingleLevelCase;
      expect(w.steps).toHaveLength(1);
      expect(c.seed).toBe(7);

      const plain = await propertyEnv(defaultOptions({ families: ['nested'], out: join(out, `${mutant}-plain`) }));
      const env = { ...plain, metrics: new Metrics() };
      const facts = await def.facts(env);
      expect(await checkCase(def, w, facts, env, Waiver.none(def.id, env.host))).toBeNull();

      const replay = await execa(process.execPath, [join(PROJECT_ROOT, 'bin', 'kvmprop.mjs'), 'replay', file], { reject: false });
      expect(replay.exitCode, replay.stderr).toBe(1);
      expect(replay.stdout).toContain(`${def.id} fails again`);
    }, 120_000);
  }
});

describe('nested.svm.delivery fails on an L1 that drops an intercept it claims to set', () => {
  it('nested-l1-drops-gp-intercept (under TCG): a one-run counterexample that replays, and passes with the intercept kept', async () => {
    const mutant = 'nested-l1-drops-gp-intercept';
    const options = defaultOptions({ families: ['nested'], properties: [svmDelivery.id], accel: 'tcg', runs: 30, seed: 7, mutant, out: join(out, mutant) });
    const r = await runProperty(svmDelivery, await propertyEnv(options));
    expect(r.status, r.reason).toBe('fail');
    const file = join(options.out, r.counterexample!);
    const c = readCounterexample(file);
    const w = c.workload as SvmCase;
    expect(w.runs).toHaveLength(1);
    // What the broken L1 changed: the run intercepts #GP.
    expect((w.runs[0]!.intercepts.exceptions >>> 13) & 1).toBe(1);

    // The same run with the intercept kept: nothing but QEMU's own documented TCG deviations.
    const plainOptions = defaultOptions({ families: ['nested'], properties: [svmDelivery.id], accel: 'tcg', out: join(out, `${mutant}-plain`) });
    const plain = await propertyEnv(plainOptions);
    const env = { ...plain, metrics: new Metrics() };
    const facts = await svmDelivery.facts(env);
    const waiver = new Waiver(loadDeviations(plainOptions.deviations), svmDelivery.id, env.host, { accel: 'tcg', machine: plainOptions.machine });
    expect(await checkCase(svmDelivery, w, facts, env, waiver)).toBeNull();

    const replay = await execa(process.execPath, [join(PROJECT_ROOT, 'bin', 'kvmprop.mjs'), 'replay', file], { reject: false });
    expect(replay.exitCode, replay.stderr).toBe(1);
    expect(replay.stdout).toContain(`${svmDelivery.id} fails again`);
  }, 180_000);
});
