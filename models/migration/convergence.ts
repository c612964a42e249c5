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
 * A hopeless setting (a working set of at least one page against 1 KiB per downtime) must not
 * converge: the source would have to stop for longer than the limit allows.
 */
export type Convergence = 'converges' | 'no-claim' | 'cannot';

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
  // At least a page rewritten for ever, against a threshold below a page: never below it.
  if (i.workingSetBytes >= 4096 && threshold < 4096) return 'cannot';
  return 'no-claim';
}
