/**
 * The timer family at a small budget, on the real KVM of whatever host runs the tests: every
 * property runs its cases and classifies them. A host's own finding (a rule failed, with its
 * saved counterexample) is a result of `kvmprop run`, not a red npm test: a host that deviates
 * where this one does not passes here too. What fails here is the suite itself — a setup or
 * checking error, a failure without its rule or counterexample, or no cases run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultOptions } from '../lib/options.js';
import { propertyEnv, runProperty } from '../lib/runner.js';
import { expectClassified } from '../lib/selfTest.js';
import { timers } from './manifest.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-timers-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('timer properties on this host, 4 cases each', () => {
  for (const p of timers.properties) {
    it(`${p.id} classifies, with lateness samples for the timers that interrupt`, async () => {
      const options = defaultOptions({ families: ['timers'], properties: [p.id], runs: 4, seed: 11, out });
      const r = await runProperty(p, await propertyEnv(options));
      expectClassified(r, options);
      expect(r.metrics.timerCases).toBeGreaterThanOrEqual(4);
      // The facts VM measured what a LAPIC timer interrupt costs the guest here (it is never free).
      const cost = r.measurements?.['timers.interruptCostUs'] ?? [];
      expect(cost.length).toBeGreaterThan(0);
      expect(cost[0]!.value).toBeGreaterThan(0);
    }, 300_000);
  }
});
