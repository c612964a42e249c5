/**
 * The timer oracles can fail: an injected delay (QMP stop/cont of the workload VM, mutants.ts)
 * makes the RTC property fail its lateness bound with a shrunk counterexample that
 * `kvmprop replay` reproduces. (Measured by hand, not run here for time: the same mutant fails
 * timers.lapic.schedule by its lateness bound, seed 7, 309 cases with shrinking, ~200 s.)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { readCounterexample } from '../../reports/counterexample.js';
import { defaultOptions, PROJECT_ROOT } from '../lib/options.js';
import { propertyEnv, runProperty } from '../lib/runner.js';
import { propertyById } from '../registry.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-timer-sensitivity-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('timer properties fail on a deliberately disturbed system', () => {
  it('vcpu-stop-cont fails timers.rtc.periodic with a shrunk, replayable counterexample', async () => {
    const id = 'timers.rtc.periodic';
    const options = defaultOptions({ families: ['timers'], properties: [id], runs: 40, seed: 7, mutant: 'vcpu-stop-cont', out });
    const r = await runProperty(propertyById(id)!, await propertyEnv(options));
    expect(r.status, r.reason).toBe('fail');
    expect(r.rule).toBeDefined();
    const file = join(out, r.counterexample!);
    const c = readCounterexample(file);
    expect((c.workload as { kind?: string }).kind).toBe('kvmprop-commands-case');
    expect((c.workload as { ran: string[] }).ran.length).toBeLessThanOrEqual(8);
    expect(c.replayPath).toBeDefined();
    const replay = await execa(process.execPath, [join(PROJECT_ROOT, 'bin', 'kvmprop.mjs'), 'replay', file], { reject: false });
    expect(replay.exitCode, replay.stderr).toBe(1);
    expect(replay.stdout).toContain(`${id} fails again`);
  }, 600_000);
});
