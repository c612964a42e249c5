/** Migration cases' RAM backends (generators/migration.ts ramBackend, suites/migration/properties.ts ramBackendsFor). */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ramBackendsFor } from '../suites/migration/properties.js';
import { migrationCaseArb, vmsOf } from './migration.js';

const lim = { ramMiB: [64, 128, 1024], maxCpus: 2 as const, dirtyRing: true, postcopy: true, kvmclock: true, tscDeadline: true };

describe('migration cases’ RAM backends', () => {
  it('draw every backend the limits allow, and only those', () => {
    const seen = new Set(fc.sample(migrationCaseArb({ ...lim, ramBackends: ['file', 'anonymous', 'memfd'] }), { seed: 3, numRuns: 200 }).map((c) => c.ramBackend));
    expect([...seen].sort()).toEqual(['anonymous', 'file', 'memfd']);
    // Without the field (as before it existed): a file, always.
    expect(new Set(fc.sample(migrationCaseArb(lim), { seed: 3, numRuns: 50 }).map((c) => c.ramBackend))).toEqual(new Set(['file']));
  });

  it('put a case on hugetlbfs only where the free huge pages hold all its VMs at once', () => {
    fc.assert(
      fc.property(migrationCaseArb({ ...lim, ramBackends: ['file', 'hugetlbfs'], hugePagesMiB: 400 }), (c) => {
        if (c.ramBackend === 'hugetlbfs') expect(vmsOf(c) * c.ramMiB).toBeLessThanOrEqual(400);
      }),
      { seed: 5, numRuns: 300 },
    );
    const some = fc.sample(migrationCaseArb({ ...lim, ramBackends: ['hugetlbfs'], hugePagesMiB: 400 }), { seed: 5, numRuns: 300 });
    expect(some.some((c) => c.ramBackend === 'hugetlbfs')).toBe(true);
    expect(some.some((c) => c.ramBackend === 'file')).toBe(true); // 1 GiB cases do not fit
  });

  it('a mutant’s plain stream stays on a file', () => {
    const cs = fc.sample(migrationCaseArb({ ...lim, plainStream: true, ramBackends: ['file', 'anonymous', 'memfd'] }), { seed: 1, numRuns: 50 });
    expect(cs.every((c) => c.ramBackend === 'file')).toBe(true);
  });

  it('offer hugetlbfs only with enough free huge pages, and say so otherwise', () => {
    expect(ramBackendsFor(0, 64)).toEqual({ backends: ['file', 'anonymous', 'memfd'], notGenerated: [{ what: 'guest RAM on hugetlbfs', why: expect.stringMatching(/^the host has 0 MiB of free 2 MiB huge pages.*needs 128 MiB/) }] });
    expect(ramBackendsFor(128, 64)).toEqual({ backends: ['file', 'anonymous', 'memfd', 'hugetlbfs'], notGenerated: [] });
  });
});
