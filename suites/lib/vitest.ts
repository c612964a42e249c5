/**
 * Registers a family's properties as vitest tests. A family's property file is then one line. The
 * CLI collects each test's result record from out/properties/.
 */
import { describe, test } from 'vitest';
import type { Family } from './family.js';
import { optionsFromEnv } from './options.js';
import { formatFailure, propertyEnv, runProperty } from './runner.js';

export function familyTests(family: Family): void {
  const options = optionsFromEnv();
  describe.skipIf(!options.families.includes(family.name))(family.name, () => {
    for (const p of family.properties) {
      const wanted = options.properties.length === 0 || options.properties.includes(p.id);
      test.skipIf(!wanted)(p.id, async (ctx) => {
        const result = await runProperty(p, await propertyEnv(options));
        if (result.status === 'skip') ctx.skip(result.reason);
        if (result.status === 'fail') throw new Error(formatFailure(result, options));
        if (result.status === 'known-deviation') ctx.annotate(`known deviation ${result.deviation?.id}: ${result.reason}`);
      });
    }
  });
}
