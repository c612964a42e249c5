/**
 * The timer family at a small budget, on the real KVM of whatever host runs the tests: every
 * property classifies (pass, or a documented known deviation of this host; skip only where the
 * configuration has no such timer), never 'fail' — a host's own finding fails `kvmprop run`, not
 * npm test, so a deviation this suite does not know yet shows here as the failure to record.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultOptions } from '../lib/options.js';
import { formatFailure, propertyEnv, runProperty } from '../lib/runner.js';
import { timers } from './manifest.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-timers-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('timer properties on this host, 6 cases each', () => {
  for (const p of timers.properties) {
    it(`${p.id} classifies, with lateness samples for the timers that interrupt`, async () => {
      const options = defaultOptions({ families: ['timers'], properties: [p.id], runs: 6, seed: 11, out });
      const r = await runProperty(p, await propertyEnv(options));
      expect(['pass', 'known-deviation'], r.status === 'fail' ? formatFailure(r, options) : r.reason).toContain(r.status);
      expect(r.metrics.timerCases).toBeGreaterThanOrEqual(6);
    }, 300_000);
  }
});
