/**
 * The migration family at a small budget, on the real KVM of whatever host runs the tests: each
 * property runs its cases and classifies them. A host's own finding (a rule failed, with its saved
 * counterexample) is a result of `kvmprop run`, not a red npm test. What fails here is the suite
 * itself: a setup or checking error, a failure without its rule or counterexample, no migration
 * completed, or no figures recorded.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type fc from 'fast-check';
import type { MigrationCase } from '../../generators/migration.js';
import { defaultOptions } from '../lib/options.js';
import type { AnyProperty, PropertyEnv } from '../lib/property.js';
import { propertyEnv, runProperty } from '../lib/runner.js';
import { expectClassified } from '../lib/selfTest.js';
import { migration } from './manifest.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-migration-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

/** The same property on cases of at most 128 MiB: a 1 GiB case with ping-pong takes a minute here; `kvmprop run` covers it. */
function small(p: AnyProperty): AnyProperty {
  return { ...p, arbitrary: (f: unknown, env: PropertyEnv) => (p.arbitrary(f, env) as fc.Arbitrary<MigrationCase>).filter((c) => c.ramMiB <= 128) };
}

describe('migration properties on this host, 3 cases each (at most 128 MiB)', () => {
  for (const p of migration.properties.map(small)) {
    it(`${p.id} classifies, with each completed migration's figures`, async () => {
      const options = defaultOptions({ families: ['migration'], properties: [p.id], runs: 3, seed: 5, out });
      const r = await runProperty(p, await propertyEnv(options));
      expectClassified(r, options, /^(setup error|error while checking|could not gather host facts)|did not run/);
      expect(r.metrics.migrationCases).toBeGreaterThanOrEqual(3);
      expect(r.metrics.migrationsCompleted).toBeGreaterThanOrEqual(1);
      const downtimes = r.measurements?.['migration.downtimeMs'] ?? [];
      expect(downtimes.length).toBe(r.metrics.migrationsCompleted);
    }, 600_000);
  }
});
