/**
 * results.json: the versioned record of one `kvmprop run`. Readers (the regression gate, report
 * writers, other tools) check `schema` and `version` before trusting anything else.
 */
import type { HostFingerprint } from '../harness/fingerprint.js';

export const RESULTS_SCHEMA = 'kvmprop-results';
/** 2: host-level findings (`findings`) and the vCPU model that ran; version 1 had neither. */
export const RESULTS_VERSION = 2;

export type PropertyStatus = 'pass' | 'fail' | 'known-deviation' | 'skip';

export interface PropertyResult {
  readonly id: string;
  readonly family: string;
  /** The property in one sentence. */
  readonly statement: string;
  readonly status: PropertyStatus;
  /** Why it was skipped, or the one-line failure. */
  readonly reason?: string;
  /** For a failure: the property's rule that caught it. */
  readonly rule?: string;
  /** Cases executed, shrinking included. */
  readonly numRuns: number;
  readonly seed: number;
  /** fast-check path of the shrunk counterexample. */
  readonly path?: string;
  /** For a stateful property: fast-check's replayPath of the shrunk commands (with seed and path, replays them). */
  readonly replayPath?: string;
  /** Saved counterexample (workload, expected, observed), relative to results.json. */
  readonly counterexample?: string;
  /** One command that reproduces the failure. */
  readonly replay?: string;
  /** The known deviation that waived this failure. */
  readonly deviation?: { readonly id: string; readonly citation: string };
  readonly durationMs: number;
  /** What the property exercised, e.g. cpuidQueries, deviceReads, vms. */
  readonly metrics: Readonly<Record<string, number>>;
  /**
   * Samples the property measured, by series, each with the labels it was taken under (timer
   * lateness per kind and mode, RTC/PIT counts per window): what reports plot and the gate compares.
   */
  readonly measurements?: Readonly<Record<string, readonly MeasurementSample[]>>;
  /**
   * What KVM itself counted in the property's VMs beyond the `kvm.*` metrics (suites/lib/coverage.ts),
   * and the family's coverage claims about it, judged. Absent where nothing was measured or claimed.
   */
  readonly kvm?: KvmReport;
  /** What the property could not do on this host (a parameter value it could not generate, and why); absent: nothing. */
  readonly notes?: readonly string[];
}

/** A property's KVM statistics and coverage claims (suites/lib/coverage.ts). */
export interface KvmReport {
  /** VMs whose KVM statistics were read (also metrics `kvm.vms`). */
  readonly measuredVms: number;
  /** Instant and peak statistics, `vm.<name>` / `vcpu.<name>`: the largest over the VMs (and vCPUs). */
  readonly levels?: Readonly<Record<string, number>>;
  /** Histograms, summed bucket by bucket over the VMs and vCPUs (log2: bucket 0 holds 0, bucket i ≥ 1 [2^(i-1), 2^i)). */
  readonly histograms?: Readonly<Record<string, { readonly type: 'log2-histogram' | 'linear-histogram'; readonly bucketSize?: number; readonly buckets: readonly number[] }>>;
  readonly claims: readonly ClaimResult[];
}

export type ClaimStatus = 'met' | 'unmet' | 'not-driven' | 'not-measured';

/**
 * One coverage claim, judged: 'unmet' is a warning (the property never drove a path it claims to
 * test), never a failure; 'not-driven' (this host cannot take or does not count the path) and
 * 'not-measured' (no KVM statistics: TCG) say why in `reason`.
 */
export interface ClaimResult {
  /** KVM counters, any of which counts ('vcpu.mmio_exits'). */
  readonly counters: readonly string[];
  readonly why: string;
  readonly status: ClaimStatus;
  /** Their total over the measured VMs; null when not measured. */
  readonly total: number | null;
  /** The least total that meets the claim. */
  readonly needed?: number;
  readonly reason?: string;
}

/** One measured value and what it was measured under (timer kind, mode, divide, configuration...). */
export interface MeasurementSample {
  readonly value: number;
  readonly labels?: Readonly<Record<string, string | number>>;
}

/**
 * A finding about the host as a whole, made before any property ran: the default vCPU model does
 * not start (and which one ran instead), or the configured machine does not start at all. Each is
 * reported once, with QEMU's own words and the exact command line.
 */
export interface HostFinding {
  /** The host check, as known deviations name it (suites/lib/machine.ts HOST_CHECKS). */
  readonly check: string;
  readonly status: 'fail' | 'known-deviation';
  readonly summary: string;
  readonly qemuMessage: string;
  readonly commandLine: readonly string[];
  readonly deviation?: { readonly id: string; readonly citation: string };
}

export interface RunOptionsRecord {
  readonly families: readonly string[];
  readonly runs: number;
  readonly seed: number;
  readonly machine: string;
  readonly accel: string;
  /** The -cpu model every VM ran. */
  readonly cpu: string;
  /** The -cpu model asked for, when it differs from the one that ran (a fallback). */
  readonly cpuRequested?: string;
  readonly kernelIrqchip?: string;
  readonly qemu: string;
  readonly qemuArgs: readonly string[];
  /** Set when the run targeted a deliberately broken system (a family manifest lists its mutants). */
  readonly mutant?: string;
}

export interface ResultsFile {
  readonly schema: typeof RESULTS_SCHEMA;
  readonly version: typeof RESULTS_VERSION;
  readonly tool: { readonly name: 'kvmprop'; readonly version: string };
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly options: RunOptionsRecord;
  readonly host: HostFingerprint;
  readonly hostId: string;
  /** Host-level findings (the vCPU model, a machine that does not start); see HostFinding. */
  readonly findings: readonly HostFinding[];
  readonly properties: readonly PropertyResult[];
  readonly totals: Readonly<Record<PropertyStatus, number>>;
  readonly metrics: Readonly<Record<string, number>>;
  /** 'fail' exactly when a property failed (known deviations do not fail a run). */
  readonly status: 'pass' | 'fail';
  /** Problems of the run itself (a suite file that crashed, a property that never reported). */
  readonly errors: readonly string[];
}

const STATUSES: readonly PropertyStatus[] = ['pass', 'fail', 'known-deviation', 'skip'];

/** Structural check of a parsed results file; returns the problems found (empty: valid). */
export function validateResults(x: unknown): string[] {
  const errs: string[] = [];
  if (typeof x !== 'object' || x === null) return ['not a JSON object'];
  const r = x as Record<string, unknown>;
  if (r.schema !== RESULTS_SCHEMA) errs.push(`schema is ${JSON.stringify(r.schema)}, expected "${RESULTS_SCHEMA}"`);
  if (r.version !== RESULTS_VERSION) errs.push(`version is ${JSON.stringify(r.version)}, expected ${RESULTS_VERSION}`);
  if (!Array.isArray(r.properties)) errs.push('properties is not an array');
  else {
    r.properties.forEach((p: unknown, i: number) => {
      const q = p as Record<string, unknown>;
      for (const k of ['id', 'family', 'statement', 'status']) if (typeof q?.[k] !== 'string') errs.push(`properties[${i}].${k} missing`);
      if (!STATUSES.includes(q?.status as PropertyStatus)) errs.push(`properties[${i}].status ${JSON.stringify(q?.status)} unknown`);
      for (const k of ['numRuns', 'seed', 'durationMs']) if (typeof q?.[k] !== 'number') errs.push(`properties[${i}].${k} missing`);
      if (q?.status === 'fail' && typeof q.counterexample !== 'string' && typeof q.reason !== 'string') errs.push(`properties[${i}] failed without a counterexample or reason`);
      if (q?.status === 'skip' && typeof q.reason !== 'string') errs.push(`properties[${i}] skipped without a reason`);
      if (q?.kvm !== undefined) errs.push(...kvmReportProblems(q.kvm, `properties[${i}].kvm`));
      if (q?.notes !== undefined && !(Array.isArray(q.notes) && q.notes.every((n: unknown) => typeof n === 'string'))) errs.push(`properties[${i}].notes is not a list of strings`);
    });
  }
  if (!Array.isArray(r.findings)) errs.push('findings is not an array');
  else {
    r.findings.forEach((f: unknown, i: number) => {
      const q = f as Record<string, unknown>;
      for (const k of ['check', 'summary', 'qemuMessage']) if (typeof q?.[k] !== 'string') errs.push(`findings[${i}].${k} missing`);
      if (q?.status !== 'fail' && q?.status !== 'known-deviation') errs.push(`findings[${i}].status ${JSON.stringify(q?.status)} unknown`);
      if (!Array.isArray(q?.commandLine)) errs.push(`findings[${i}].commandLine missing`);
    });
  }
  if (r.status !== 'pass' && r.status !== 'fail') errs.push('status must be pass or fail');
  return errs;
}

const CLAIM_STATUSES: readonly ClaimStatus[] = ['met', 'unmet', 'not-driven', 'not-measured'];

function kvmReportProblems(x: unknown, at: string): string[] {
  if (typeof x !== 'object' || x === null) return [`${at} is not an object`];
  const k = x as Record<string, unknown>;
  const errs: string[] = [];
  if (typeof k.measuredVms !== 'number') errs.push(`${at}.measuredVms missing`);
  if (!Array.isArray(k.claims)) return [...errs, `${at}.claims is not an array`];
  k.claims.forEach((c: Record<string, unknown> | null, i) => {
    const w = `${at}.claims[${i}]`;
    if (!Array.isArray(c?.counters) || c.counters.length === 0 || !c.counters.every((n: unknown) => typeof n === 'string')) errs.push(`${w}.counters must name counters`);
    if (typeof c?.why !== 'string') errs.push(`${w}.why missing`);
    if (!CLAIM_STATUSES.includes(c?.status as ClaimStatus)) errs.push(`${w}.status ${JSON.stringify(c?.status)} unknown`);
    if ((c?.status === 'met' || c?.status === 'unmet') && typeof c.total !== 'number') errs.push(`${w}: a judged claim needs its total`);
    if ((c?.status === 'not-driven' || c?.status === 'not-measured') && typeof c.reason !== 'string') errs.push(`${w}: ${String(c.status)} without a reason`);
  });
  return errs;
}

export function tally(props: readonly PropertyResult[]): Record<PropertyStatus, number> {
  const t: Record<PropertyStatus, number> = { pass: 0, fail: 0, 'known-deviation': 0, skip: 0 };
  for (const p of props) t[p.status]++;
  return t;
}

export function sumMetrics(props: readonly PropertyResult[]): Record<string, number> {
  const m: Record<string, number> = {};
  for (const p of props) for (const [k, v] of Object.entries(p.metrics)) m[k] = (m[k] ?? 0) + v;
  return m;
}
