/**
 * The runner on a stateful toy property, no VM: its cases are fast-check commands that append ops
 * and step a counter model; its "system" counts the ops (with a planted bug: the third inc is lost).
 * A failure must shrink to exactly the commands that ran, be saved as data with its replayPath,
 * and re-run from seed + path + replayPath to the same failure.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { checkCommands, commandsArb, programCommand } from '../../generators/commands.js';
import type { HostFingerprint } from '../../harness/fingerprint.js';
import { readCounterexample } from '../../reports/counterexample.js';
import { defaultOptions, rerunCommand } from './options.js';
import { defineProperty, difference, rule, type PropertyEnv } from './property.js';
import { runProperty, type BaseEnv } from './runner.js';

interface Counter {
  count: number;
}
const inc = programCommand<Counter>('inc', (m, b) => {
  b.thread(0).op({ op: 'pioOut', port: 0x80, width: 1, value: 1 });
  m.count++;
});
const noop = programCommand<Counter>('noop', (_m, b) => {
  b.thread(0).op({ op: 'pioOut', port: 0x81, width: 1, value: 0 });
});

/** The toy system: counts incs, losing the third. */
const countOf = (ops: readonly { op: string; port?: number }[]) => ops.filter((o) => o.op === 'pioOut' && o.port === 0x80).length - (ops.filter((o) => o.op === 'pioOut' && o.port === 0x80).length >= 3 ? 1 : 0);

const toy = defineProperty({
  id: 'toy.counter',
  family: 'toy',
  statement: 'the counter counts every inc',
  facts: async () => null,
  arbitrary: (_f: null, env: PropertyEnv) => commandsArb([fc.constant(inc), fc.constant(noop)], { maxCommands: 12, ...(env.options.replayPath ? { replayPath: env.options.replayPath } : {}) }),
  observe: async (cmds: Parameters<typeof checkCommands<Counter, unknown>>[0]) => {
    const seen = await checkCommands(cmds, () => ({ count: 0 }), { maxThreads: 1 }, (built) => {
      const observed = countOf(built.program.threads[0]!);
      return { verdict: { expected: built.model.count, observed } };
    });
    return { ok: true as const, value: seen as { expected: number; observed: number } };
  },
  rules: [
    rule('every inc counts', function* (o: { expected: number; observed: number }) {
      if (o.expected !== o.observed) yield difference(`counted ${o.observed}, expected ${o.expected}`, o.expected, o.observed);
    }),
  ],
});

const out = mkdtempSync(join(tmpdir(), 'kvmprop-runner-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));
const host = { kvm: { vendorModules: [], modules: [] }, cpu: { flags: [] }, kernel: { release: 'test' }, qemu: { version: 'test' } } as unknown as HostFingerprint;
const base = (over: Parameters<typeof defaultOptions>[0]): BaseEnv => ({ options: defaultOptions({ runs: 50, out, deviations: join(import.meta.dirname, '..', '..', 'reports', 'known-deviations.json'), ...over }), guestElf: '', host });

describe('runProperty on a stateful property', () => {
  it('shrinks to the commands that ran, saves them with the replayPath, and replays them', async () => {
    const r = await runProperty(toy, base({ seed: 11 }));
    expect(r.status).toBe('fail');
    expect(r.rule).toBe('every inc counts');
    expect(r.reason).toBe('counted 2, expected 3');
    expect(r.replayPath).toEqual(expect.any(String));
    const c = readCounterexample(join(out, r.counterexample!));
    expect(c.replayPath).toBe(r.replayPath);
    // Saved as data: the commands that ran, shrunk to the three incs.
    expect(c.workload).toEqual({ commands: ['inc', 'inc', 'inc'], replayPath: r.replayPath });
    expect(rerunCommand(r, base({}).options)).toContain(`--seed 11 --path ${r.path} --replay-path ${r.replayPath}`);

    const again = await runProperty(toy, base({ seed: 11, path: r.path!, replayPath: r.replayPath! }));
    expect(again.status).toBe('fail');
    // The recorded case first; fast-check then tries (and fails) to shrink it further.
    expect(again.numRuns).toBeLessThan(r.numRuns);
    expect(again.reason).toBe(r.reason);
  });
});

describe('confirmShrinks', () => {
  // A flaky system: any case with n >= 10 fails, but near the edge (10 <= n < 20) only every other time it runs.
  const make = (confirmShrinks?: number) => {
    const runsOf = new Map<number, number>();
    return defineProperty({
      id: 'toy.flaky',
      family: 'toy',
      statement: 'n stays below 10',
      facts: async () => null,
      arbitrary: () => fc.integer({ min: 0, max: 1000 }),
      observe: async (n: number) => {
        const k = (runsOf.get(n) ?? 0) + 1;
        runsOf.set(n, k);
        return { ok: true as const, value: { n, fails: n >= 20 || (n >= 10 && k % 2 === 1) } };
      },
      rules: [
        rule('n below 10', function* (o: { n: number; fails: boolean }) {
          if (o.fails) yield difference(`n = ${o.n}`, '< 10', o.n);
        }),
      ],
      ...(confirmShrinks ? { confirmShrinks } : {}),
    });
  };
  it('without it, shrinking walks into the flaky edge; with it, the counterexample is one that fails every time', async () => {
    const loose = await runProperty(make(), base({ seed: 3, runs: 100 }));
    const strict = await runProperty(make(3), base({ seed: 3, runs: 100 }));
    expect(loose.reason).toMatch(/^n = 1\d$/);
    expect(strict.reason).toBe('n = 20');
  });
});

describe('a timing failure must show again on a quiet host', () => {
  // Every case n >= 500 fails a timing bound. `noisyRuns` of its re-runs see a noisy host (and fail
  // so); what comes after them is `then`: a pass (it was the host) or a failure on a quiet host.
  const make = (noisyRuns: number, then: 'pass' | 'fail') => {
    const runsOf = new Map<number, number>();
    return defineProperty({
      id: 'toy.timing',
      family: 'toy',
      statement: 'n stays below 500, in time',
      facts: async () => null,
      arbitrary: () => fc.integer({ min: 0, max: 1000 }),
      observe: async (n: number) => {
        const k = (runsOf.get(n) ?? 0) + 1;
        runsOf.set(n, k);
        const noisy = n >= 500 && k >= 2 && k <= 1 + noisyRuns;
        return { ok: true as const, value: { n, fails: n >= 500 && (k === 1 || noisy || then === 'fail'), noisy } };
      },
      rules: [
        rule('in time', function* (o: { n: number; fails: boolean; noisy: boolean }) {
          if (o.fails) yield difference(`n = ${o.n} late`, '< 500', o.n, { timing: true, ...(o.noisy ? { noisyHost: 'the host kept vCPU 0 from running' } : {}) });
        }),
      ],
      confirmShrinks: 2,
      noisyPauseMs: 1,
    });
  };
  it('re-runs a failure while its re-runs see a noisy host; one that then passes does not count', async () => {
    const r = await runProperty(make(2, 'pass'), base({ seed: 7, runs: 30 }));
    expect(r.status).toBe('pass');
    expect(r.measurements?.timingRerunOnNoisyHost?.length).toBeGreaterThanOrEqual(2);
    expect(r.metrics.timingFailuresNotConfirmed).toBeGreaterThan(0);
  });
  it('one that fails again on a quiet host counts, and so does a host noisy on every re-run', async () => {
    expect((await runProperty(make(1, 'fail'), base({ seed: 7, runs: 30 }))).status).toBe('fail');
    expect((await runProperty(make(100, 'pass'), base({ seed: 7, runs: 30 }))).status).toBe('fail');
  });
});
