/**
 * KVM's own statistics for one VM, through QMP `query-stats` (QEMU 7.1 and later, provider `kvm`;
 * QEMU reads KVM's binary stats file descriptors, KVM_GET_STATS_FD, for the VM and each vCPU): what
 * KVM itself did while a case ran — exits to QEMU, emulated instructions, injected interrupts, page
 * faults it fixed — so that a family can be held to the KVM paths it claims to drive
 * (suites/lib/coverage.ts). No kcov kernel is needed: every stock kernel since 5.14 has them.
 *
 * The QAPI (QEMU 7.2 qapi/stats.json), exactly:
 *  - `query-stats-schemas {provider?}` → [{provider, target: 'vm' | 'vcpu', stats: [{name, type,
 *    unit?, base?, exponent, bucket-size?}]}], type one of cumulative | instant | peak |
 *    linear-histogram | log2-histogram; unit bytes | seconds | cycles (absent: a plain count),
 *    scaled by base^exponent (halt_wait_ns: seconds, 10^-9);
 *  - `query-stats {target, providers?: [{provider}], vcpus?: [qom-path]}` (`vcpus` only for target
 *    'vcpu') → [{provider, qom-path?, stats: [{name, value}]}], one per object (the VM has no
 *    qom-path; each vCPU has its own), value a uint64 or a list of them (histograms).
 * Under TCG both answer [] for KVM: readKvmStats then says null, and nothing is measured.
 *
 * Decoding keeps each statistic's kind, since only cumulative counters make a delta by subtraction:
 *  - cumulative (exits, io_exits, pf_fixed...): after − before;
 *  - instant (pages_4k, blocking, guest_mode) and peak (max_mmu_rmap_size): the value after;
 *  - histograms (halt_poll_success_hist, halt_wait_hist...): bucket by bucket after − before.
 *    KVM's log2 histograms put value 0 in bucket 0 and [2^(i-1), 2^i) in bucket i ≥ 1; its linear
 *    ones put [i·size, (i+1)·size) in bucket i, the last bucket taking everything above.
 *
 * Reading the vCPU statistics runs a function on each vCPU's thread (QEMU's run_on_cpu), which
 * kicks it out of KVM_RUN once: one more `exits` (and `signal_exits`/`irq_exits`) per vCPU per
 * reading. harness/vm.ts reads twice per VM: before the guest first runs (prelaunch, counters all 0)
 * and once the guest has finished and waits for the host (PROGRAM_FLAGS.holdExit).
 */
import { QmpClosedError, QmpError, QmpTimeoutError, type QmpClient } from './qmp.js';

export type StatsType = 'cumulative' | 'instant' | 'peak' | 'linear-histogram' | 'log2-histogram';
export type StatsTarget = 'vm' | 'vcpu';

/** One statistic's schema (QAPI StatsSchemaValue). */
export interface StatsSchemaValue {
  readonly name: string;
  readonly type: StatsType;
  readonly unit?: 'bytes' | 'seconds' | 'cycles' | 'boolean';
  readonly base?: number;
  readonly exponent: number;
  readonly 'bucket-size'?: number;
}

/** One provider's schema for one target (QAPI StatsSchema). */
export interface StatsSchema {
  readonly provider: string;
  readonly target: StatsTarget;
  readonly stats: readonly StatsSchemaValue[];
}

/** One object's values for one provider (QAPI StatsResult). */
export interface StatsResult {
  readonly provider: string;
  /** The vCPU's QOM path; absent for the VM. */
  readonly 'qom-path'?: string;
  readonly stats: readonly { readonly name: string; readonly value: number | boolean | readonly number[] }[];
}

/** A decoded statistic. */
export type StatValue =
  | { readonly type: 'cumulative' | 'instant' | 'peak'; readonly value: number }
  | { readonly type: 'log2-histogram'; readonly buckets: readonly number[] }
  | { readonly type: 'linear-histogram'; readonly buckets: readonly number[]; readonly bucketSize: number };

/** One object's statistics, by name. */
export type StatSet = Readonly<Record<string, StatValue>>;

/** One reading of a VM: the VM's statistics and each vCPU's, in QOM-path order. */
export interface KvmStatsReading {
  readonly vm: StatSet;
  readonly vcpus: readonly StatSet[];
}

const PROVIDER = 'kvm';
const TARGETS: readonly StatsTarget[] = ['vm', 'vcpu'];

/** The KVM provider's statistics by target and name; null when QEMU has none (TCG, QEMU 7.0 and older). */
export type KvmSchema = ReadonlyMap<StatsTarget, ReadonlyMap<string, StatsSchemaValue>>;

export function kvmSchema(schemas: readonly StatsSchema[]): KvmSchema | null {
  const out = new Map<StatsTarget, Map<string, StatsSchemaValue>>();
  for (const s of schemas) {
    if (s.provider !== PROVIDER || !TARGETS.includes(s.target)) continue;
    const names = out.get(s.target) ?? new Map<string, StatsSchemaValue>();
    for (const v of s.stats) names.set(v.name, v);
    out.set(s.target, names);
  }
  return out.size ? out : null;
}

function asNumber(v: unknown): number | null {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'boolean') return v ? 1 : 0;
  return null;
}

function decodeOne(desc: StatsSchemaValue, value: unknown): StatValue | null {
  switch (desc.type) {
    case 'cumulative':
    case 'instant':
    case 'peak': {
      const n = asNumber(value);
      return n === null ? null : { type: desc.type, value: n };
    }
    case 'log2-histogram':
    case 'linear-histogram': {
      if (!Array.isArray(value) || !value.every((b) => typeof b === 'number')) return null;
      const buckets = [...(value as number[])];
      return desc.type === 'log2-histogram' ? { type: desc.type, buckets } : { type: desc.type, buckets, bucketSize: desc['bucket-size'] ?? 1 };
    }
    default:
      return null;
  }
}

function decodeSet(schema: ReadonlyMap<string, StatsSchemaValue>, r: StatsResult): StatSet {
  const out: Record<string, StatValue> = {};
  for (const { name, value } of r.stats) {
    const desc = schema.get(name);
    const v = desc ? decodeOne(desc, value) : null;
    if (v) out[name] = v;
  }
  return out;
}

/** Decode the `query-stats` answers for both targets; statistics the schema does not know are skipped. */
export function decodeKvmStats(schema: KvmSchema, replies: { readonly vm: readonly StatsResult[]; readonly vcpu: readonly StatsResult[] }): KvmStatsReading {
  const vmSchema = schema.get('vm') ?? new Map();
  const vcpuSchema = schema.get('vcpu') ?? new Map();
  const vm = replies.vm.filter((r) => r.provider === PROVIDER).reduce<StatSet>((acc, r) => ({ ...acc, ...decodeSet(vmSchema, r) }), {});
  const vcpus = replies.vcpu
    .filter((r) => r.provider === PROVIDER)
    .slice()
    .sort((a, b) => qomOrder(a['qom-path']) - qomOrder(b['qom-path']))
    .map((r) => decodeSet(vcpuSchema, r));
  return { vm, vcpus };
}

/** /machine/unattached/device[N] sorts by N; vCPUs are created in cpu-index order. */
function qomOrder(path: string | undefined): number {
  const m = /\[(\d+)\]$/.exec(path ?? '');
  return m ? Number(m[1]) : 0;
}

function deltaOne(before: StatValue | undefined, after: StatValue): StatValue {
  switch (after.type) {
    case 'cumulative':
      return { type: 'cumulative', value: after.value - (before?.type === 'cumulative' ? before.value : 0) };
    case 'instant':
    case 'peak':
      return after;
    case 'log2-histogram':
    case 'linear-histogram': {
      const was = before && 'buckets' in before ? before.buckets : [];
      const buckets = after.buckets.map((b, i) => b - (was[i] ?? 0));
      return after.type === 'log2-histogram' ? { type: after.type, buckets } : { ...after, buckets };
    }
  }
}

function deltaSet(before: StatSet | undefined, after: StatSet): StatSet {
  const out: Record<string, StatValue> = {};
  for (const [name, v] of Object.entries(after)) out[name] = deltaOne(before?.[name], v);
  return out;
}

/**
 * What happened between two readings of one VM: cumulative counters after − before, instant and
 * peak values as they are after, histograms bucket by bucket. A statistic `before` lacks counts
 * from 0 (a vCPU that appeared meanwhile, a reading that missed it).
 */
export function statsDelta(before: KvmStatsReading, after: KvmStatsReading): KvmStatsReading {
  return { vm: deltaSet(before.vm, after.vm), vcpus: after.vcpus.map((v, i) => deltaSet(before.vcpus[i], v)) };
}

/**
 * The cumulative counters of a reading (or a delta) as one flat record: `vm.<name>` for the VM's,
 * `vcpu.<name>` for the vCPUs' summed over every vCPU. These add up over VMs and cases, which is
 * what a property's metrics do (suites/lib/run.ts).
 */
export function cumulativeCounters(r: KvmStatsReading): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, v] of Object.entries(r.vm)) if (v.type === 'cumulative') out[`vm.${name}`] = v.value;
  for (const set of r.vcpus) {
    for (const [name, v] of Object.entries(set)) if (v.type === 'cumulative') out[`vcpu.${name}`] = (out[`vcpu.${name}`] ?? 0) + v.value;
  }
  return out;
}

/** Instant and peak values, `vm.<name>` and `vcpu.<name>` (the largest over the vCPUs). */
export function levels(r: KvmStatsReading): Record<string, number> {
  const out: Record<string, number> = {};
  const put = (k: string, v: StatValue) => {
    if (v.type === 'instant' || v.type === 'peak') out[k] = Math.max(out[k] ?? -Infinity, v.value);
  };
  for (const [name, v] of Object.entries(r.vm)) put(`vm.${name}`, v);
  for (const set of r.vcpus) for (const [name, v] of Object.entries(set)) put(`vcpu.${name}`, v);
  return out;
}

/** A histogram summed over objects: `vm.<name>` / `vcpu.<name>` → its kind and buckets. */
export interface Histogram {
  readonly type: 'log2-histogram' | 'linear-histogram';
  readonly bucketSize?: number;
  readonly buckets: readonly number[];
}

/** The histograms of a reading, the vCPUs' summed bucket by bucket. */
export function histograms(r: KvmStatsReading): Record<string, Histogram> {
  const out: Record<string, Histogram> = {};
  const put = (k: string, v: StatValue) => {
    if (v.type !== 'log2-histogram' && v.type !== 'linear-histogram') return;
    out[k] = addHistogram(out[k], { type: v.type, ...(v.type === 'linear-histogram' ? { bucketSize: v.bucketSize } : {}), buckets: v.buckets });
  };
  for (const [name, v] of Object.entries(r.vm)) put(`vm.${name}`, v);
  for (const set of r.vcpus) for (const [name, v] of Object.entries(set)) put(`vcpu.${name}`, v);
  return out;
}

/** a + b, bucket by bucket (a may be absent). */
export function addHistogram(a: Histogram | undefined, b: Histogram): Histogram {
  if (!a) return b;
  const n = Math.max(a.buckets.length, b.buckets.length);
  return { ...b, buckets: Array.from({ length: n }, (_, i) => (a.buckets[i] ?? 0) + (b.buckets[i] ?? 0)) };
}

/** The values bucket `i` holds: [lo, hi), hi Infinity for a linear histogram's last bucket. */
export function bucketRange(h: Pick<Histogram, 'type' | 'bucketSize'> & { readonly buckets: { readonly length: number } }, i: number): readonly [number, number] {
  if (h.type === 'log2-histogram') return i === 0 ? [0, 1] : [2 ** (i - 1), 2 ** i];
  const size = h.bucketSize ?? 1;
  return [i * size, i === h.buckets.length - 1 ? Infinity : (i + 1) * size];
}

type Execute = Pick<QmpClient, 'execute'>;

/** The KVM schema of a QEMU, asked once per connection (the first reading, before the guest runs, pays). */
const schemaCache = new WeakMap<Execute, Promise<KvmSchema | null>>();

function schemaOf(qmp: Execute, timeoutMs: number): Promise<KvmSchema | null> {
  let p = schemaCache.get(qmp);
  if (!p) {
    p = qmp.execute<StatsSchema[]>('query-stats-schemas', { provider: PROVIDER }, { timeoutMs }).then(kvmSchema, (e: unknown) => {
      // A QEMU without query-stats (7.0 and older) has no KVM statistics to give: not an error.
      if (e instanceof QmpError && e.errorClass === 'CommandNotFound') return null;
      throw e;
    });
    p.catch(() => schemaCache.delete(qmp));
    schemaCache.set(qmp, p);
  }
  return p;
}

/** Both `query-stats` answers, raw (what the fixture in harness/fixtures holds). */
export async function queryKvmStats(qmp: Execute, timeoutMs = 2000): Promise<{ vm: StatsResult[]; vcpu: StatsResult[] }> {
  const request = (target: StatsTarget) => qmp.execute<StatsResult[]>('query-stats', { target, providers: [{ provider: PROVIDER }] }, { timeoutMs });
  const [vm, vcpu] = await Promise.all([request('vm'), request('vcpu')]);
  return { vm, vcpu };
}

/**
 * KVM's statistics for this VM now. Null when there are none to be had: QEMU has no KVM
 * statistics (TCG), predates `query-stats`, or is gone or does not answer in time.
 */
export async function readKvmStats(qmp: Execute, opts: { readonly timeoutMs?: number } = {}): Promise<KvmStatsReading | null> {
  const timeoutMs = opts.timeoutMs ?? 2000;
  try {
    const schema = await schemaOf(qmp, timeoutMs);
    if (!schema) return null;
    return decodeKvmStats(schema, await queryKvmStats(qmp, timeoutMs));
  } catch (e) {
    if (e instanceof QmpError || e instanceof QmpClosedError || e instanceof QmpTimeoutError) return null;
    throw e;
  }
}
