/**
 * From a run to the models' inputs: the schedule (generators/timers.ts) says which ops stamp each
 * action; the records give the stamps and the values read; the vCPU's interrupt log gives the
 * deliveries. One timeline per (source, vCPU), with the vCPU's own CLI/STI/marks in it.
 */
import type { OpRecord } from '../../ir/ops.js';
import type { WorkloadRun } from '../../harness/workload.js';
import type { ScheduledEvent, TimerSchedule, TimerSource } from '../../generators/timers.js';
import type { ObservedInterrupt, Stamp } from '../../models/timers/common.js';

export interface StampedEvent extends Stamp {
  readonly kind: string;
  readonly value?: number | bigint;
  readonly mode?: number;
  readonly faulted?: boolean;
  /** The value a read returned (TMCCT, IA32_TSC_DEADLINE). */
  readonly read?: bigint;
  /** Where it came from: the schedule's event, and its op. */
  readonly scheduleIndex: number;
  readonly opIndex: number;
}

export interface ThreadView {
  readonly records: ReadonlyMap<number, OpRecord>;
  readonly interrupts: readonly ObservedInterrupt[];
  /** Entries the vCPU's interrupt ring overwrote: the log is incomplete. */
  readonly lostLogEntries: number;
}

export function threadViews(run: WorkloadRun): ThreadView[] {
  return run.records.map((recs, i) => {
    const byOp = new Map<number, OpRecord>();
    for (const r of recs) byOp.set(r.opIndex, r);
    const log = run.vm.threads[i]?.irqLog;
    return {
      records: byOp,
      // The steal between consecutive entries of this vCPU (any vector), modulo the u32 µs counter.
      interrupts: (log?.entries ?? []).map((e, k, all) => ({ tsc: e.tsc, vector: e.vector, stealGapUs: (e.stealUs - (k > 0 ? all[k - 1]!.stealUs : 0)) >>> 0 })),
      lostLogEntries: log?.lost ?? 0,
    };
  });
}

/** The stamped form of one scheduled event, or null when its records are missing (the thread stopped early). */
export function stamped(ev: ScheduledEvent, index: number, view: ThreadView): StampedEvent | null {
  const base = { kind: ev.kind, scheduleIndex: index, ...(ev.mode === undefined ? {} : { mode: ev.mode }) };
  if ('self' in ev.stamp) {
    const r = view.records.get(ev.stamp.self);
    if (!r) return null;
    const f = r.fields as Record<string, bigint>;
    const faulted = r.faultVector !== null;
    if (r.op.op === 'kvmclockRead') return { ...base, tscBefore: f.tsc!, tscAfter: f.tsc!, opIndex: ev.stamp.self };
    const tscBefore = f.tscBefore!;
    const tscAfter = faulted || !f.tscAfter ? tscBefore : f.tscAfter;
    const value = r.op.op === 'wrmsrAt' ? f.written! : ev.value;
    return { ...base, tscBefore, tscAfter, ...(value === undefined ? {} : { value }), ...(faulted ? { faulted } : {}), opIndex: ev.stamp.self };
  }
  const a = view.records.get(ev.stamp.before);
  const z = view.records.get(ev.stamp.after);
  if (!a || !z) return null;
  const read = ev.valueOp === undefined ? undefined : view.records.get(ev.valueOp);
  const bytes = ev.valueBytes?.map((i) => view.records.get(i));
  if (bytes && bytes.some((r) => !r)) return null;
  const readValue = bytes
    ? bytes.reduce((v, r, k) => v | (((r!.fields as Record<string, bigint>).rax! & 0xffn) << BigInt(8 * k)), 0n)
    : read
      ? (read.fields as Record<string, bigint>).value
      : undefined;
  return {
    ...base,
    tscBefore: (a.fields as Record<string, bigint>).tsc!,
    tscAfter: (z.fields as Record<string, bigint>).tsc!,
    ...(ev.value === undefined ? {} : { value: ev.value }),
    ...(readValue === undefined ? {} : { read: readValue }),
    ...((read && read.faultVector !== null) || bytes?.some((r) => r!.faultVector !== null) ? { faulted: true } : {}),
    opIndex: ev.stamp.before,
  };
}

export interface SourceTimeline {
  readonly thread: number;
  readonly events: readonly StampedEvent[];
  readonly endTsc: bigint;
  /** Whether the source was touched at all on this thread. */
  readonly used: boolean;
}

/** The events of one source on one thread, with that thread's control events, in program order. */
export function timelineOf(schedule: TimerSchedule, views: readonly ThreadView[], source: TimerSource, thread: number): SourceTimeline {
  const view = views[thread];
  const events: StampedEvent[] = [];
  let used = false;
  if (view) {
    schedule.events.forEach((ev, i) => {
      if (ev.thread !== thread || (ev.source !== source && ev.source !== 'control')) return;
      const s = stamped(ev, i, view);
      if (!s) return;
      if (ev.source === source) used = true;
      events.push(s);
    });
  }
  const last = events.reduce((m, e) => (e.tscAfter > m ? e.tscAfter : m), 0n);
  return { thread, events, endTsc: last, used };
}

/** Interrupts of these vectors up to the end of the timeline (later ones fall outside every prediction). */
export function interruptsFor(view: ThreadView | undefined, vectors: ReadonlySet<number>, endTsc: bigint): ObservedInterrupt[] {
  return (view?.interrupts ?? []).filter((o) => vectors.has(o.vector) && o.tsc <= endTsc);
}
