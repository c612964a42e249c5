/** What every bench starts from: the run's environment with default options, writing next to `outFile`. */
import { dirname } from 'node:path';
import { defaultOptions } from '../suites/lib/options.js';
import { Metrics, type PropertyEnv } from '../suites/lib/property.js';
import { propertyEnv, type BaseEnv } from '../suites/lib/runner.js';

export async function benchEnv(outFile: string): Promise<{ base: BaseEnv; env: PropertyEnv }> {
  const base = await propertyEnv(defaultOptions({ out: dirname(outFile) }));
  return { base, env: { ...base, metrics: new Metrics() } };
}
