import { describe, expect, it } from 'vitest';
import type { MigrationCase } from '../../generators/migration.js';
import type { MigrationInfo } from '../../harness/session.js';
import { figureSamples } from './observe.js';

// A pure unit: what a completed migration puts in the results' measurements.
const c = { tracking: { kind: 'ring', size: 4096 }, stream: { multifdChannels: 2, xbzrleCacheMiB: 0, autoConverge: false, postcopy: null }, ramMiB: 64, cpus: 1 } as unknown as MigrationCase;

describe('migration figure samples', () => {
  it('label every figure with the case, the working set and the dirty rate QEMU measured', () => {
    const info = { status: 'completed', 'total-time': 420, downtime: 12, ram: { transferred: 5_000_000, 'dirty-sync-count': 3, mbps: 800 }, throttleReached: 0, dirtyRateReached: 123_456.7 } as unknown as MigrationInfo;
    const s = figureSamples(c, info, 96);
    const labels = { tracking: 'ring-4096', multifd: 2, xbzrle: 'off', autoConverge: 'off', postcopy: 'off', ramMiB: 64, cpus: 1, ramBackend: 'file', via: 'socket', workingSetPages: 96, dirtyRateBps: 123_457 };
    expect(s.map((x) => [x.series, x.value])).toEqual([
      ['migration.totalTimeMs', 420],
      ['migration.downtimeMs', 12],
      ['migration.transferredBytes', 5_000_000],
      ['migration.dirtySyncCount', 3],
      ['migration.mbps', 800],
      ['migration.throttlePercent', 0],
    ]);
    for (const x of s) expect(x.labels).toEqual(labels);
  });
  it('a hop through a file adds how long the restore took and the file’s size, labelled via file', () => {
    const s = figureSamples(c, { status: 'completed', downtime: 3, restoreMs: 150, savedBytes: 1_000_000 } as MigrationInfo, 1, 'file');
    expect(s.map((x) => [x.series, x.value, x.labels.via])).toEqual([
      ['migration.downtimeMs', 3, 'file'],
      ['migration.throttlePercent', 0, 'file'],
      ['migration.restoreMs', 150, 'file'],
      ['migration.savedBytes', 1_000_000, 'file'],
    ]);
  });
  it('give dirty rate 0 where QEMU measured none', () => {
    const s = figureSamples(c, { status: 'completed', downtime: 3 } as MigrationInfo, 1);
    expect(s).toEqual([
      { series: 'migration.downtimeMs', value: 3, labels: expect.objectContaining({ dirtyRateBps: 0 }) },
      { series: 'migration.throttlePercent', value: 0, labels: expect.objectContaining({ dirtyRateBps: 0 }) },
    ]);
  });
});
