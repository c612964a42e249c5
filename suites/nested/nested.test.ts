/**
 * The nested family at a small budget on the host's own KVM: the single-level property runs its
 * cases and classifies them (a host finding, a rule failed with its saved counterexample, is a
 * result of `kvmprop run`, not a red test here: this host's kvm_pvm has some, see the family's
 * report); the nested SVM property skips with its reason on a KVM without nested SVM, never
 * passes there, and under TCG runs the guest as its own L1.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultOptions } from '../lib/options.js';
import { propertyEnv, runProperty } from '../lib/runner.js';
import { expectClassified } from '../lib/selfTest.js';
import { singleLevelDelivery } from './singleLevel.js';
import { svmDelivery } from './svm.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-nested-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('nested properties on this host', () => {
  it('nested.single-level.delivery classifies 3 cases, counting handler entries', async () => {
    const options = defaultOptions({ families: ['nested'], properties: [singleLevelDelivery.id], runs: 3, seed: 11, out });
    const r = await runProperty(singleLevelDelivery, await propertyEnv(options));
    expectClassified(r, options);
    expect(r.metrics.exceptionCases).toBeGreaterThanOrEqual(1);
    expect(r.metrics.handlerEntries).toBeGreaterThanOrEqual(1);
  }, 120_000);

  it('nested.svm.delivery skips on KVM without nested SVM, saying why', async () => {
    const options = defaultOptions({ families: ['nested'], properties: [svmDelivery.id], runs: 3, seed: 11, out });
    const env = await propertyEnv(options);
    if (env.host.kvm.nested === true) return; // then it runs, as under TCG below
    const r = await runProperty(svmDelivery, env);
    expect(r.status).toBe('skip');
    expect(r.reason).toMatch(/no nested SVM/);
    expect(r.reason).toMatch(/--accel tcg/);
  }, 60_000);

  it('nested.svm.delivery under TCG: the guest as L1 runs KVM\'s sequence and 2 generated cases, each classified', async () => {
    const options = defaultOptions({ families: ['nested'], properties: [svmDelivery.id], accel: 'tcg', runs: 3, seed: 11, out });
    const r = await runProperty(svmDelivery, await propertyEnv(options));
    expectClassified(r, options);
    expect(r.metrics.svmCases).toBe(3);
    expect(r.metrics.l2Runs).toBeGreaterThanOrEqual(4);
  }, 120_000);
});
