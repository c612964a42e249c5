/** What every bench starts from: the run's environment with default options, writing next to `outFile`. */
import { dirname } from 'node:path';
import { defaultOptions } from '../suites/lib/options.js';
import { Metrics, type PropertyEnv } from '../suites/lib/property.js';
import { propertyEnv, type BaseEnv } from '../suites/lib/runner.js';

export async function benchEnv(outFile: string): Promise<{ base: BaseEnv; env: PropertyEnv }> {
  const base = await propertyEnv(defaultOptions({ out: dirname(outFile) }));
  return { base, env: { ...base, metrics: new Metrics() } };
}

/**
 * Our QEMU arguments without the harness: no QMP chardev and monitor, and no -S unless `keepS`
 * (a raw migration destination waits for its stream either way).
 */
export function rawQemuArgs(all: readonly string[], opts: { keepS?: boolean } = {}): string[] {
  const out: string[] = [];
  for (let i = 0; i < all.length; i++) {
    if (all[i] === '-S' && !opts.keepS) continue;
    if ((all[i] === '-chardev' && all[i + 1]!.startsWith('socket,id=qmp')) || all[i] === '-mon') {
      i++;
      continue;
    }
    out.push(all[i]!);
  }
  return out;
}
