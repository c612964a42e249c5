/**
 * The migration oracles can fail (mutants.ts): a proxy between source and destination that flips
 * one byte of a page record, or drops the record, of a page written once before the migration,
 * makes migration.switchover fail on real KVM (and so does a proxy that replays a stale record of
 * the guest's mailbox page after each fresh one) (RAM differs at the switchover: the page, the
 * offset, both sides' bytes) and migration.resume fail (the page is not what the model says), each
 * with a shrunk counterexample that `kvmprop replay` fails again: the proxy hits every migration.
 * A time model with its clock wrong (a deadline taken as a second later) makes the time rule of
 * migration.resume fail on a correct host.
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
import { LAYOUT } from '../../harness/guest/abi.js';
import { CORRUPT_OFFSET } from './mutants.js';

const out = mkdtempSync(join(tmpdir(), 'kvmprop-migration-sensitivity-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

async function failing(id: string, mutant: string) {
  const options = defaultOptions({ families: ['migration'], properties: [id], runs: 5, seed: 3, mutant, out: join(out, `${mutant}-${id}`) });
  const r = await runProperty(propertyById(id)!, await propertyEnv(options));
  expect(r.status, r.reason).toBe('fail');
  expect(r.replay).toMatch(/kvmprop replay /);
  const file = join(options.out, r.counterexample!);
  return { r, file, c: readCounterexample(file) };
}

async function replays(file: string, id: string) {
  const replay = await execa(process.execPath, [join(PROJECT_ROOT, 'bin', 'kvmprop.mjs'), 'replay', file], { reject: false });
  expect(replay.exitCode, replay.stderr).toBe(1);
  expect(replay.stdout).toContain(`${id} fails again`);
}

describe('migration properties fail on a broken stream', () => {
  it('stream-corrupt-page-byte: the switchover RAM differs in one page, at the offset, shrunk and replayed', async () => {
    const { r, file, c } = await failing('migration.switchover', 'stream-corrupt-page-byte');
    expect(r.rule).toBe('RAM identical at switchover');
    expect(r.reason).toMatch(new RegExp(`1 page\\(s\\) of guest RAM differ .* \\+ 0x${CORRUPT_OFFSET.toString(16)},`));
    const w = c.workload as { threads: { regions: unknown[] }[]; sentinels: number };
    // Shrunk: one thread, one region, one sentinel page.
    expect(w.threads.length).toBe(1);
    expect(w.threads[0]!.regions.length).toBe(1);
    expect(w.sentinels).toBe(1);
    await replays(file, 'migration.switchover');
  }, 600_000);

  it('migration-model-late-deadline: a deadline armed before the migration looks early, shrunk to the deadline alone, replayed', async () => {
    const { r, file, c } = await failing('migration.resume', 'migration-model-late-deadline');
    expect(r.rule).toBe('time never goes back, and a timer or device interrupt armed before fires once, not early');
    expect(r.reason).toMatch(/before its deadline/);
    expect((c.workload as { deadlineMs: number | null }).deadlineMs).not.toBeNull();
    await replays(file, 'migration.resume');
  }, 600_000);

  it('stream-replay-stale-page-record: the switchover RAM differs in the mailbox page, shrunk and replayed', async () => {
    const { r, file, c } = await failing('migration.switchover', 'stream-replay-stale-page-record');
    expect(r.rule).toBe('RAM identical at switchover');
    expect(r.reason).toMatch(new RegExp(`1 page\\(s\\) of guest RAM differ .*page 0x${LAYOUT.mailbox.toString(16)} \\+`));
    const w = c.workload as { threads: { regions: unknown[] }[]; sentinels: number };
    expect(w.threads.length).toBe(1);
    expect(w.threads[0]!.regions.length).toBe(1);
    await replays(file, 'migration.switchover');
  }, 600_000);

  it('stream-drop-page-record: the destination lacks the page the model says is there, shrunk and replayed', async () => {
    const { r, file } = await failing('migration.resume', 'stream-drop-page-record');
    expect(r.rule).toBe('RAM matches the model after resume');
    expect(r.reason).toMatch(/sentinel page/);
    await replays(file, 'migration.resume');
  }, 600_000);
});
