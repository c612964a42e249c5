/**
 * The device-state fields that may legitimately differ between the stream a source sent at its
 * switchover and the same guest's destination saved again before it resumes (the stream oracle,
 * observe.ts streamOracle). Each names its section and field and says why; nothing else is
 * excused, and a field QEMU gets wrong is a known deviation (reports/known-deviations.json), not
 * an exclusion.
 */
import type { StreamExclusion } from '../../harness/migrationStream.js';

export const STREAM_EXCLUSIONS: readonly StreamExclusion[] = [
  {
    section: 'globalstate',
    field: /^(size|runstate)$/,
    why: "globalstate carries the run state the VM had when its save began (migration/global_state.c global_state_store): the source was 'running' when it was migrated, the destination is saved 'paused', as it loaded; the length of the name changes with it",
  },
];
