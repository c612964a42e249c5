/**
 * Whether precopy can converge: QEMU stops the source for the switchover once what is left to send
 * fits the downtime limit at the bandwidth it measured (migration/migration.c
 * migration_iteration_run: pending_size < threshold_size = bandwidth × downtime-limit). A workload
 * that keeps rewriting W bytes leaves up to W dirty after every iteration, so:
 *  - W at most half of max-bandwidth × downtime-limit: it converges whatever the guest's speed
 *    (half: the bandwidth QEMU measures runs below the limit it is given);
 *  - postcopy: it always completes (the rest is pulled after the switchover);
 *  - otherwise the model claims nothing: whether the guest rewrites W within one iteration depends
 *    on how fast it runs, which the model does not know. The case records what happened.
 * "Cannot converge" is never claimed from the working set: QEMU completes as soon as a dirty sync
 * finds nothing left (pending_size 0), and a vCPU the host did not schedule for one short
 * iteration dirties nothing (measured: at 1 MiB/s and a 1 ms limit, a 3-page working set
 * completed in 1 of 4 tries). What is certain is the rate limit: no migration completes before
 * its first pass sent every page once, if only as a zero-page record (RAM_SAVE_FLAG_ZERO: an
 * 8-byte header and a fill byte), so `cannotCompleteWithin` holds whatever the guest does.
 */

/** The least a first pass over `ramBytes` of guest RAM puts on the wire: a zero-page record per page. */
export function firstPassBytes(ramBytes: number): number {
  return (ramBytes / 4096) * 9;
}
export type Convergence = 'converges' | 'no-claim';

/**
 * A migration capped at `bandwidth` bytes/s cannot complete within `windowMs` when what it must
 * send (`mustSendBytes`) takes longer than that. QEMU 7.2 meters bandwidth/10 per 100 ms window
 * (measured: 311 KB in 299 ms at 1 MiB/s, three windows of 105 KB); each window is granted two
 * page records of overshoot, and one window more for where the first begins.
 */
export function cannotCompleteWithin(mustSendBytes: number, bandwidth: number, windowMs: number): boolean {
  const windows = Math.ceil(windowMs / 100) + 1;
  const sendable = windows * (bandwidth / 10 + 2 * (4096 + 9));
  return mustSendBytes > sendable;
}

export interface ConvergenceInput {
  readonly workingSetBytes: number;
  /** Bytes per second (max-bandwidth). */
  readonly bandwidth: number;
  readonly downtimeMs: number;
  readonly postcopy: boolean;
}

export function predictConvergence(i: ConvergenceInput): Convergence {
  if (i.postcopy) return 'converges';
  const threshold = (i.bandwidth * i.downtimeMs) / 1000;
  if (i.workingSetBytes <= threshold / 2) return 'converges';
  return 'no-claim';
}
