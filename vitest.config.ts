import { defineConfig } from 'vitest/config';

/**
 * Two projects:
 *  - `unit`: the project's own tests (pure units, and harness/suite tests that boot real QEMU/KVM);
 *    this is what `npm test` runs.
 *  - `properties`: the conformance properties themselves (suites/<family>/*.prop.ts); `kvmprop run`
 *    runs this project with its options passed through the environment.
 * Test files run in forked processes: every QEMU we start dies with its parent (see harness/vm.ts).
 */
export default defineConfig({
  test: {
    pool: 'forks',
    projects: [
      {
        test: {
          name: 'unit',
          globalSetup: ['harness/globalSetup.ts'],
          include: ['{ir,bin,harness,generators,models,reports,suites,bench,scripts}/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 120_000,
          pool: 'forks',
        },
      },
      {
        test: {
          name: 'properties',
          include: ['suites/**/*.prop.ts'],
          testTimeout: 0,
          hookTimeout: 300_000,
          pool: 'forks',
        },
      },
    ],
  },
});
