/**
 * Registers properties as vitest tests. A property file is then just a list: which properties of a
 * family exist. The CLI collects each test's result record from out/properties/.
 */
import { describe, test } from 'vitest';
import { optionsFromEnv } from './options.js';
import { formatFailure, runProperty, suiteEnv, type AnyProperty } from './property.js';

export function propertySuite(suite: string, properties: readonly AnyProperty[]): void {
  const options = optionsFromEnv();
  describe.skipIf(!options.suites.includes(suite))(suite, () => {
    for (const p of properties) {
      const wanted = options.properties.length === 0 || options.properties.includes(p.id);
      test.skipIf(!wanted)(p.id, async (ctx) => {
        const result = await runProperty(p, await suiteEnv(options));
        if (result.status === 'skip') ctx.skip(result.reason);
        if (result.status === 'fail') throw new Error(formatFailure(result, options));
        if (result.status === 'known-deviation') ctx.annotate(`known deviation ${result.deviation?.id}: ${result.reason}`);
      });
    }
  });
}
