/**
 * The leak oracles can fail: each mutant in the family's manifest must make the properties it
 * breaks fail, with a counterexample shrunk to one read or one query that `kvmprop replay`
 * reproduces. Each runs in the configuration its catalog entry names (CPUID mutants: TCG with a
 * fixed CPU model), so a deviation of the host under test cannot mask it or shrink it to another
 * difference.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { expandQueries, type CpuidWorkload } from '../../generators/cpuid.js';
import { readStats, type DeviceReadWorkload } from '../../generators/deviceReads.js';
import { readCounterexample } from '../../reports/counterexample.js';
import { defaultOptions, PROJECT_ROOT } from '../lib/options.js';
import { propertyEnv, runProperty } from '../lib/runner.js';
import { propertyById } from '../registry.js';
import { leaks } from './manifest.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-sensitivity-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

/** How many reads or queries a leak case holds. */
function caseSize(w: unknown): number {
  const x = w as Partial<CpuidWorkload & DeviceReadWorkload> & { cpuid?: CpuidWorkload };
  if (x.cpuid) return expandQueries(x.cpuid).length;
  if (x.sweeps && 'space' in (x.sweeps[0] ?? {})) return readStats(x as DeviceReadWorkload).reads;
  return expandQueries(x as CpuidWorkload).length;
}

describe('leak properties fail on deliberately broken systems', () => {
  for (const mutant of leaks.mutants) {
    for (const id of mutant.breaks) {
      it(`${mutant.name} fails ${id} with a one-element counterexample that replays`, async () => {
        const options = defaultOptions({
          runs: 40,
          seed: 7,
          mutant: mutant.name,
          machine: mutant.machine ?? 'microvm',
          ...(mutant.sensitivity ? { accel: mutant.sensitivity.accel, ...(mutant.sensitivity.cpu ? { cpu: mutant.sensitivity.cpu } : {}) } : {}),
          properties: [id],
          out: join(out, mutant.name),
        });
        const result = await runProperty(propertyById(id)!, await propertyEnv(options));
        expect(result.status, result.reason).toBe('fail');
        expect(result.rule).toBeDefined();
        expect(result.counterexample).toBeDefined();
        expect(result.replay).toMatch(/kvmprop replay /);
        const file = join(options.out, result.counterexample!);
        const c = readCounterexample(file);
        expect(c.summary).toBe(result.reason?.replace(/ \(also: .*\)$/, ''));
        expect(c.rule).toBe(result.rule);
        expect(caseSize(c.workload)).toBe(1);
        expect(c.seed).toBe(7);
        expect(c.path).toMatch(/^\d+(:\d+)*$/);

        const replay = await execa(process.execPath, [join(PROJECT_ROOT, 'bin', 'kvmprop.mjs'), 'replay', file], { reject: false });
        expect(replay.exitCode, replay.stderr).toBe(1);
        expect(replay.stdout).toContain(`${id} fails again`);
      }, 600_000);
    }
  }
});
