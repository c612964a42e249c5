/**
 * KVM's own counters as coverage. Every VM a property's cases run adds what KVM counted in it
 * (harness/kvmStats.ts, read before `cont` and when the guest finished) to the property's metrics:
 * `kvm.vm.<name>` and `kvm.vcpu.<name>` (vCPUs summed), with `kvm.vms` the VMs measured. Instant and
 * peak values (their largest) and histograms (summed bucket by bucket) go beside them, and each VM's
 * headline counters are kept as samples (`kvm.<counter>` series, labelled with the VM's role), so a
 * case's deltas can be read back per case.
 *
 * A family's manifest says, as data, which KVM paths its properties drive (Family.coverage). After
 * the run each claim is judged against the property's totals: 'met'; 'unmet', a property that never
 * drove a path it claims to test (a warning in results and in the run summary, never a failure:
 * the self-tests test the suite, not the host); 'not-driven', where this host cannot take the path
 * (kvm_pvm does not intercept CPL-3 CPUID without cpuid_fault) or does not count it (kvm_pvm's
 * io_exits), with the reason; 'not-measured', where there are no KVM statistics at all (--accel
 * tcg, a QEMU without query-stats).
 */
import { cumulativeCounters, histograms, levels, addHistogram } from '../../harness/kvmStats.js';
import type { HostFingerprint } from '../../harness/fingerprint.js';
import type { KvmStatsRun } from '../../harness/vm.js';
import type { ClaimResult, KvmReport } from '../../reports/schema.js';
import type { RunOptions } from './options.js';
import type { Metrics } from './property.js';

/** Metrics keys of KVM's counters: `kvm.vm.<name>`, `kvm.vcpu.<name>`. */
export const KVM_METRIC_PREFIX = 'kvm.';
/** How many of the property's VMs had their KVM statistics read. */
export const KVM_MEASURED_VMS = 'kvm.vms';
/** Of those, how many never finished and were read at their outcome (VmRunResult.kvmStats.at). */
export const KVM_AT_OUTCOME_VMS = 'kvm.vmsReadAtOutcome';

/** The counters each VM keeps as a per-case sample (the rest are in the property's sums only). */
export const HEADLINE_COUNTERS = [
  'vcpu.exits',
  'vcpu.io_exits',
  'vcpu.mmio_exits',
  'vcpu.irq_injections',
  'vcpu.nmi_injections',
  'vcpu.insn_emulation',
  'vcpu.insn_emulation_fail',
  'vcpu.pf_fixed',
  'vcpu.pf_emulate',
  'vcpu.pf_fast',
  'vcpu.pf_mmio_spte_created',
  'vcpu.halt_exits',
  'vcpu.nested_run',
  'vm.remote_tlb_flush',
  'vm.remote_tlb_flush_requests',
] as const;

/**
 * Add what KVM counted in one VM to a property's metrics. Every cumulative counter is added, zeros
 * included: with `kvm.vms` above 0, a counter at 0 was counted and stayed 0.
 */
export function recordKvmStats(metrics: Metrics, stats: KvmStatsRun | null, labels: Readonly<Record<string, string | number>> = {}): void {
  if (!stats) return;
  metrics.add(KVM_MEASURED_VMS);
  if (stats.at === 'outcome') metrics.add(KVM_AT_OUTCOME_VMS);
  const counters = cumulativeCounters(stats.delta);
  for (const [name, n] of Object.entries(counters)) metrics.add(`${KVM_METRIC_PREFIX}${name}`, n);
  for (const name of HEADLINE_COUNTERS) if (name in counters) metrics.sample(`${KVM_METRIC_PREFIX}${name}`, counters[name]!, labels);
  const { levels: lv, histograms: hs } = metrics.kvm;
  for (const [name, v] of Object.entries(levels(stats.delta))) lv[name] = Math.max(lv[name] ?? v, v);
  for (const [name, h] of Object.entries(histograms(stats.delta))) hs[name] = addHistogram(hs[name], h);
}

/** A condition on the host under which a claim cannot hold, as data: every field given must match. */
export interface HostCondition {
  /** A KVM vendor module loaded (fingerprint kvm.vendorModules): 'kvm_pvm', 'kvm_intel', 'kvm_amd'. */
  readonly vendorModule?: string;
  /** A /proc/cpuinfo flag of harness/fingerprint.ts CPU_FLAGS the host lacks ('cpuid_fault'). */
  readonly lacksCpuFlag?: string;
  /** Why the path is not driven (or not counted) there. */
  readonly reason: string;
}

/** A KVM path a family's properties drive, judged against KVM's counters after the run. */
export interface CoverageClaim {
  /** The properties it is about (ids); default: every property of the family. */
  readonly properties?: readonly string[];
  /** KVM counters ('vcpu.mmio_exits', 'vm.remote_tlb_flush'), any of which counts: their total is judged. */
  readonly anyOf: readonly string[];
  /**
   * The total must reach at least the sum of these metrics of the property's own (every CPUID
   * query is an exit, every timer interrupt the guest logged an injection); without them, above 0.
   */
  readonly atLeast?: readonly string[];
  /** The path, and why the property's cases must take it. */
  readonly why: string;
  /** Hosts that cannot drive it or do not count it: reported 'not-driven' with the reason, never unmet. */
  readonly notOn?: readonly HostCondition[];
}

function matches(c: HostCondition, host: HostFingerprint): boolean {
  if (c.vendorModule !== undefined && !host.kvm.vendorModules.includes(c.vendorModule)) return false;
  if (c.lacksCpuFlag !== undefined && host.cpu.flags.includes(c.lacksCpuFlag)) return false;
  return true;
}

export const NOT_MEASURED_TCG = '--accel tcg: KVM keeps no statistics for a TCG guest (query-stats has no kvm provider), so no claim can be judged';
export const NOT_MEASURED_NONE = 'no VM of the property had its KVM statistics read (a QEMU without query-stats, or every VM gone before its last reading)';

/** The claims about property `id`, judged against its metrics on this host. */
export function judgeClaims(claims: readonly CoverageClaim[], id: string, counts: Readonly<Record<string, number>>, host: HostFingerprint, o: Pick<RunOptions, 'accel'>): ClaimResult[] {
  const mine = claims.filter((c) => !c.properties || c.properties.includes(id));
  const measuredVms = counts[KVM_MEASURED_VMS] ?? 0;
  return mine.map((c) => {
    const base = { counters: [...c.anyOf], why: c.why };
    if (o.accel !== 'kvm') return { ...base, status: 'not-measured', total: null, reason: NOT_MEASURED_TCG };
    if (!measuredVms) return { ...base, status: 'not-measured', total: null, reason: NOT_MEASURED_NONE };
    const total = c.anyOf.reduce((n, name) => n + (counts[`${KVM_METRIC_PREFIX}${name}`] ?? 0), 0);
    const needed = Math.max(1, (c.atLeast ?? []).reduce((n, k) => n + (counts[k] ?? 0), 0));
    const cannot = c.notOn?.find((x) => matches(x, host));
    if (cannot) return { ...base, status: 'not-driven', total, needed, reason: cannot.reason };
    return { ...base, status: total >= needed ? 'met' : 'unmet', total, needed };
  });
}

/** results.json's `kvm` of a property: what its VMs' KVM counters said, and its claims judged; null when it has neither. */
export function kvmReport(metrics: Metrics, claims: readonly ClaimResult[]): KvmReport | null {
  const measuredVms = metrics.counts[KVM_MEASURED_VMS] ?? 0;
  if (!measuredVms && !claims.length) return null;
  const t = metrics.kvm;
  return {
    measuredVms,
    ...(Object.keys(t.levels).length ? { levels: t.levels } : {}),
    ...(Object.keys(t.histograms).length ? { histograms: t.histograms } : {}),
    claims,
  };
}

/** The counters a family's summary line shows, in this order, where they were measured. */
const SUMMARY_COUNTERS = ['exits', 'io_exits', 'mmio_exits', 'irq_injections', 'nmi_injections', 'insn_emulation', 'insn_emulation_fail', 'pf_fixed', 'pf_emulate', 'pf_fast', 'pf_mmio_spte_created', 'nested_run'];

interface SummaryProperty {
  readonly id: string;
  readonly family: string;
  readonly metrics: Readonly<Record<string, number>>;
  readonly kvm?: KvmReport;
}

/**
 * The run summary's KVM lines: per family, what its VMs made KVM do (the headline counters summed
 * over its properties), then one UNMET CLAIM line per claim a property did not meet.
 */
export function kvmSummaryLines(properties: readonly SummaryProperty[]): string[] {
  const lines: string[] = [];
  const families = [...new Set(properties.map((p) => p.family))];
  for (const f of families) {
    const ps = properties.filter((p) => p.family === f);
    const vms = ps.reduce((n, p) => n + (p.metrics[KVM_MEASURED_VMS] ?? 0), 0);
    const sum = (name: string) => ps.reduce((n, p) => n + (p.metrics[`${KVM_METRIC_PREFIX}vcpu.${name}`] ?? 0), 0);
    if (vms) lines.push(`kvm paths (${f}, ${vms} VMs): ${SUMMARY_COUNTERS.map((c) => `${c} ${sum(c)}`).join(', ')}`);
    const claims = ps.flatMap((p) => p.kvm?.claims ?? []);
    if (!claims.length) continue;
    const count = (s: ClaimResult['status']) => claims.filter((c) => c.status === s).length;
    // Each reason once: the same claim about four properties is one sentence.
    const reasons = [...new Set(claims.filter((c) => c.status === 'not-driven' || c.status === 'not-measured').map((c) => `${c.counters.join(' | ')}: ${c.reason}`))];
    lines.push(
      `kvm claims (${f}): met ${count('met')}, unmet ${count('unmet')}, not driven here ${count('not-driven')}, not measured ${count('not-measured')}${reasons.length ? ` (${reasons.join('; ')})` : ''}`,
    );
  }
  for (const p of properties) {
    for (const c of p.kvm?.claims ?? []) {
      if (c.status !== 'unmet') continue;
      lines.push(`${'UNMET CLAIM'.padEnd(15)} ${p.id}  ${c.counters.join(' | ')} ${c.total} < ${c.needed} over ${p.kvm!.measuredVms} VMs: ${c.why}`);
    }
  }
  return lines;
}

/** How many claims the run's properties did not meet. */
export function unmetClaims(properties: readonly SummaryProperty[]): number {
  return properties.reduce((n, p) => n + (p.kvm?.claims.filter((c) => c.status === 'unmet').length ?? 0), 0);
}
