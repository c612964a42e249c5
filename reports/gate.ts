/**
 * `kvmprop gate --baseline A.json --candidate B.json [--policy FILE] [--deviations FILE] [--out DIR]`:
 * the regression gate between two results files (runs, or merged shards and hosts), typically the
 * current kernel and the candidate one.
 *
 * It fails (exit 1) when
 *   - a property (or host finding) that passed on the baseline fails on the candidate: "passed"
 *     includes a documented known deviation, "fails" includes a known deviation whose id the
 *     known-deviations file does not document (a waiver is never taken on the results file's word);
 *   - a gated measurement series got significantly worse: a one-sided Mann–Whitney U test says the
 *     candidate's samples are larger (Holm-adjusted p < alpha over all the measurement tests of the
 *     gate), AND the effect is at least the policy's: the chosen quantile grew by the minimum
 *     relative and absolute amounts, and Cliff's delta reaches its minimum. Significance alone is not
 *     enough: with a thousand samples on a quiet host a 1 µs shift is significant and harmless;
 *   - (by policy, default on) a property of the baseline is missing from the candidate, or the
 *     candidate run had errors of its own — an incomplete candidate cannot pass.
 * Fixed properties, waived ones ("waived: documented deviation X"), properties still failing,
 * newly skipped or new ones, improvements and significant-but-small changes are listed, not failed.
 *
 * Hosts: each side's hosts (a merged file has several) are paired — the same hostId, else the same
 * CPU identity, else the only host of each side — and properties and measurements are compared
 * within a pair. Which hosts (hostId, CPU, kernel, QEMU, vCPU model) were compared is part of the
 * output, with a warning for every difference that changes what a comparison means: another CPU,
 * QEMU version, KVM module parameter, vCPU model, or other run options (seed, runs: pooled samples
 * assume the same workload mix).
 *
 * The policy (reports/gate-policy.json is the default; GatePolicyFile below) is versioned JSON; an
 * unknown key, a wrong type or a value out of range is one line and exit 2, as is an unreadable
 * or corrupt results file.
 *
 * Outputs: a summary on stdout (one line per regression, fix and waiver, each measurement line with
 * the test, p, effect sizes and the thresholds), and with --out DIR: gate.json (GateResult) and
 * gate.html (self-contained, everything escaped; reports/gateHtml.ts).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { HostFingerprint } from '../harness/fingerprint.js';
import { commandFailure } from './commandFailure.js';
import { DeviationsError, loadDeviations, type DeviationsFile } from './deviations.js';
import { ascending, hodgesLehmann, holm, mannWhitney, quantile } from './gateStats.js';
import { hostIdOf, hostsOf, MergeError, readResultsFile, type MergedHost } from './merge.js';
import type { HostFinding, PropertyResult, PropertyStatus, ResultsFile } from './schema.js';

export const GATE_SCHEMA = 'kvmprop-gate';
export const GATE_VERSION = 1;
export const POLICY_SCHEMA = 'kvmprop-gate-policy';
export const POLICY_VERSION = 1;

const REPORTS_DIR = dirname(fileURLToPath(import.meta.url));
export const DEFAULT_POLICY_FILE = join(REPORTS_DIR, 'gate-policy.json');
const DEFAULT_DEVIATIONS_FILE = join(REPORTS_DIR, 'known-deviations.json');

// ---------------------------------------------------------------------------------------------
// Policy

export type Direction = 'higher-is-worse' | 'lower-is-worse';
export type Action = 'fail' | 'warn';

/** The thresholds of one series rule; each may be given in `defaults` or on the rule. */
export interface Thresholds {
  /** Significance level of the one-sided test (after Holm's adjustment). */
  readonly alpha: number;
  /** The quantile whose change is the effect, in (0, 1): 0.9 = p90. */
  readonly quantile: number;
  /** Minimum relative worsening of that quantile: 0.25 = 25 % larger (for higher-is-worse). */
  readonly minRelativeIncrease: number;
  /** Minimum absolute worsening of that quantile, in the series' unit (guards a baseline quantile near 0). */
  readonly minAbsoluteIncrease: number;
  /** Minimum Cliff's delta in the worse direction, in [0, 1]. */
  readonly minCliffsDelta: number;
  /** Fewer samples than this on either side: not tested (said so, never a pass by silence). */
  readonly minSamples: number;
}

export interface SeriesRule extends Thresholds {
  /** Glob over the series name: `*` matches any characters (dots too), `?` one. */
  readonly series: string;
  readonly direction: Direction;
  /** What a significant worsening does: fail the gate, or warn. */
  readonly action: Action;
  /** Label keys that define the groups compared besides all samples pooled; absent: every label. */
  readonly groupBy?: readonly string[];
  /** For display: µs, ms... */
  readonly unit?: string;
}

export interface GatePolicy {
  readonly source: string;
  /** Holm's step-down adjustment over all the measurement tests of the gate, or none. */
  readonly multipleComparisons: 'holm' | 'none';
  readonly properties: {
    /** A property of the baseline (on a paired host) absent from the candidate. */
    readonly missing: Action;
    /** A property that ran on the baseline and is skipped on the candidate. */
    readonly newlySkipped: Action;
    /** A property that fails on the candidate and did not run (or did not exist) on the baseline. */
    readonly newFailure: Action;
    /** Errors of the candidate run itself (a suite that crashed, a property that never reported). */
    readonly runErrors: Action;
  };
  /** First matching rule wins; a series no rule matches is listed, not tested. */
  readonly series: readonly SeriesRule[];
}

export class GatePolicyError extends Error {
  override name = 'GatePolicyError';
}

const THRESHOLD_KEYS: readonly (keyof Thresholds)[] = ['alpha', 'quantile', 'minRelativeIncrease', 'minAbsoluteIncrease', 'minCliffsDelta', 'minSamples'];
const BUILTIN_DEFAULTS: Thresholds = { alpha: 0.01, quantile: 0.9, minRelativeIncrease: 0.25, minAbsoluteIncrease: 0, minCliffsDelta: 0.2, minSamples: 20 };
const PROPERTY_KEYS = ['missing', 'newlySkipped', 'newFailure', 'runErrors'] as const;
const PROPERTY_DEFAULTS: GatePolicy['properties'] = { missing: 'fail', newlySkipped: 'warn', newFailure: 'warn', runErrors: 'fail' };

function checkThreshold(k: keyof Thresholds, v: unknown, where: string): number {
  const bad = (what: string) => new GatePolicyError(`${where}.${k} must be ${what}, not ${JSON.stringify(v)}`);
  if (typeof v !== 'number' || !Number.isFinite(v)) throw bad('a number');
  switch (k) {
    case 'alpha':
    case 'quantile':
      if (!(v > 0 && v < 1)) throw bad('between 0 and 1 (exclusive)');
      break;
    case 'minCliffsDelta':
      if (!(v >= 0 && v <= 1)) throw bad('between 0 and 1');
      break;
    case 'minSamples':
      if (!Number.isInteger(v) || v < 2) throw bad('an integer ≥ 2');
      break;
    default:
      if (v < 0) throw bad('≥ 0');
  }
  return v;
}

function onlyKeys(o: Record<string, unknown>, known: readonly string[], where: string): void {
  for (const k of Object.keys(o)) if (!known.includes(k)) throw new GatePolicyError(`${where}.${k} is not a policy key (known: ${known.join(', ')})`);
}

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);

/**
 * The policy file:
 *   { "schema": "kvmprop-gate-policy", "version": 1,
 *     "defaults": { alpha, quantile, minRelativeIncrease, minAbsoluteIncrease, minCliffsDelta, minSamples },
 *     "multipleComparisons": "holm" | "none",
 *     "properties": { missing, newlySkipped, newFailure, runErrors: "fail" | "warn" },
 *     "series": [ { series: GLOB, direction, action?, groupBy?, unit?, ...thresholds } ] }
 * Anything else, or anything out of range, is a GatePolicyError naming the key.
 */
export function parsePolicy(text: string, source = 'gate policy'): GatePolicy {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new GatePolicyError(`${source}: not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  if (!isObject(raw)) throw new GatePolicyError(`${source}: expected a JSON object`);
  if (raw.schema !== POLICY_SCHEMA || raw.version !== POLICY_VERSION) {
    throw new GatePolicyError(`${source}: expected "schema": "${POLICY_SCHEMA}", "version": ${POLICY_VERSION} (got ${JSON.stringify(raw.schema)}, ${JSON.stringify(raw.version)})`);
  }
  onlyKeys(raw, ['schema', 'version', 'description', 'defaults', 'multipleComparisons', 'properties', 'series'], source);
  const defaults: Record<string, number> = { ...BUILTIN_DEFAULTS };
  if (raw.defaults !== undefined) {
    if (!isObject(raw.defaults)) throw new GatePolicyError(`${source}: defaults must be an object`);
    onlyKeys(raw.defaults, THRESHOLD_KEYS, `${source}: defaults`);
    for (const [k, v] of Object.entries(raw.defaults)) defaults[k] = checkThreshold(k as keyof Thresholds, v, `${source}: defaults`);
  }
  const mc = raw.multipleComparisons ?? 'holm';
  if (mc !== 'holm' && mc !== 'none') throw new GatePolicyError(`${source}: multipleComparisons must be "holm" or "none", not ${JSON.stringify(mc)}`);
  const properties: Record<string, Action> = { ...PROPERTY_DEFAULTS };
  if (raw.properties !== undefined) {
    if (!isObject(raw.properties)) throw new GatePolicyError(`${source}: properties must be an object`);
    onlyKeys(raw.properties, PROPERTY_KEYS, `${source}: properties`);
    for (const [k, v] of Object.entries(raw.properties)) {
      if (v !== 'fail' && v !== 'warn') throw new GatePolicyError(`${source}: properties.${k} must be "fail" or "warn", not ${JSON.stringify(v)}`);
      properties[k] = v;
    }
  }
  if (!Array.isArray(raw.series)) throw new GatePolicyError(`${source}: series must be an array of rules`);
  const series = raw.series.map((r: unknown, i: number): SeriesRule => {
    const where = `${source}: series[${i}]`;
    if (!isObject(r)) throw new GatePolicyError(`${where} must be an object`);
    onlyKeys(r, ['series', 'direction', 'action', 'groupBy', 'unit', 'description', ...THRESHOLD_KEYS], where);
    if (typeof r.series !== 'string' || r.series === '') throw new GatePolicyError(`${where}.series must be a glob over series names, e.g. "lateness.*"`);
    if (r.direction !== 'higher-is-worse' && r.direction !== 'lower-is-worse') throw new GatePolicyError(`${where}.direction must be "higher-is-worse" or "lower-is-worse", not ${JSON.stringify(r.direction)}`);
    const action = r.action ?? 'fail';
    if (action !== 'fail' && action !== 'warn') throw new GatePolicyError(`${where}.action must be "fail" or "warn", not ${JSON.stringify(r.action)}`);
    if (r.groupBy !== undefined && !(Array.isArray(r.groupBy) && r.groupBy.every((k) => typeof k === 'string' && k !== ''))) throw new GatePolicyError(`${where}.groupBy must be an array of label names`);
    if (r.unit !== undefined && typeof r.unit !== 'string') throw new GatePolicyError(`${where}.unit must be a string`);
    const t = Object.fromEntries(THRESHOLD_KEYS.map((k) => [k, r[k] === undefined ? defaults[k]! : checkThreshold(k, r[k], where)])) as unknown as Thresholds;
    return { series: r.series, direction: r.direction, action, ...(r.groupBy ? { groupBy: r.groupBy as string[] } : {}), ...(r.unit ? { unit: r.unit } : {}), ...t };
  });
  return { source, multipleComparisons: mc, properties: properties as GatePolicy['properties'], series };
}

export function loadPolicy(file: string): GatePolicy {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new GatePolicyError(`cannot read policy ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parsePolicy(text, file);
}

/** `*` any run of characters, `?` one; everything else literal. */
export function globMatches(glob: string, name: string): boolean {
  const re = new RegExp(`^${glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  return re.test(name);
}

export const ruleFor = (policy: GatePolicy, series: string): SeriesRule | undefined => policy.series.find((r) => globMatches(r.series, series));

// ---------------------------------------------------------------------------------------------
// Result types

export interface HostSummary {
  readonly hostId: string;
  readonly cpu: string;
  readonly kernel: string;
  readonly qemu: string;
  readonly vcpuModel: string;
  readonly run: string;
}

export interface HostPair {
  readonly baseline: HostSummary;
  readonly candidate: HostSummary;
  /** How they were paired: same hostId, same CPU identity, or the only host of each side. */
  readonly pairedBy: 'hostId' | 'cpu' | 'only-host';
  /** Differences that change what the comparison means. */
  readonly warnings: readonly string[];
  /** Differences worth saying (the kernel, expected in a kernel upgrade; the QEMU binary's path). */
  readonly notes: readonly string[];
}

export type TransitionKind =
  | 'regressed'
  | 'fixed'
  | 'waived'
  | 'still-failing'
  | 'still-waived'
  | 'unchanged'
  | 'newly-skipped'
  | 'new'
  | 'new-failure'
  | 'missing';

export interface PropertyTransition {
  readonly id: string;
  /** "baselineHostId → candidateHostId" */
  readonly hosts: string;
  readonly baseline: PropertyStatus | null;
  readonly candidate: PropertyStatus | null;
  readonly kind: TransitionKind;
  /** What this transition does to the gate. */
  readonly effect: 'fail' | 'warn' | 'none';
  readonly detail: string;
  readonly deviation?: string;
}

export type MeasurementVerdict = 'regression' | 'improvement' | 'significant-below-threshold' | 'no-significant-change' | 'insufficient-samples' | 'not-gated';

export interface QuantileSet {
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
}

export interface SeriesComparison {
  readonly series: string;
  readonly hosts: string;
  /** The label set compared, as "k=v, k=v"; "all" for every sample of the series pooled. */
  readonly group: string;
  readonly rule: string | null;
  readonly direction: Direction | null;
  readonly action: Action | null;
  readonly unit?: string;
  readonly n: { readonly baseline: number; readonly candidate: number };
  readonly quantiles: { readonly baseline: QuantileSet; readonly candidate: QuantileSet };
  /** The policy's quantile (e.g. 0.9) of each side, its worsening, relative and absolute (positive: worse). */
  readonly quantile?: { readonly q: number; readonly baseline: number; readonly candidate: number; readonly relativeWorsening: number; readonly absoluteWorsening: number; readonly ratio: number };
  readonly test?: {
    readonly name: string;
    readonly method: 'exact' | 'normal';
    readonly u: number;
    readonly z?: number;
    /** One-sided p for "candidate worse", and for "candidate better"; adjusted: after Holm. */
    readonly pWorse: number;
    readonly pWorseAdjusted: number;
    readonly pBetter: number;
    readonly pBetterAdjusted: number;
  };
  /** Cliff's delta in the worse direction (positive: the candidate tends to be worse). */
  readonly cliffsDelta?: number;
  /** Hodges–Lehmann shift candidate − baseline (in the series' unit, sign as measured). */
  readonly hodgesLehmann?: { readonly shift: number; readonly approximate: boolean };
  readonly thresholds?: Thresholds;
  readonly verdict: MeasurementVerdict;
  readonly effect: 'fail' | 'warn' | 'none';
  readonly detail: string;
}

export interface GateResult {
  readonly schema: typeof GATE_SCHEMA;
  readonly version: typeof GATE_VERSION;
  readonly verdict: 'pass' | 'fail';
  /** One line per reason the gate failed. */
  readonly failures: readonly string[];
  readonly warnings: readonly string[];
  readonly policy: GatePolicy;
  readonly deviationsSource: string;
  readonly inputs: { readonly baseline: string; readonly candidate: string };
  readonly hosts: {
    readonly baseline: readonly HostSummary[];
    readonly candidate: readonly HostSummary[];
    readonly pairs: readonly HostPair[];
  };
  readonly properties: readonly PropertyTransition[];
  readonly measurements: readonly SeriesComparison[];
  /** Series of paired hosts no policy rule matches: listed with their sample counts, not tested. */
  readonly notGated: readonly { readonly series: string; readonly hosts: string; readonly n: { readonly baseline: number; readonly candidate: number } }[];
  /** Label sets below a rule's minimum samples on a side, per series: counted, not tested. */
  readonly smallGroups: readonly { readonly series: string; readonly hosts: string; readonly groups: number }[];
}

// ---------------------------------------------------------------------------------------------
// Hosts

const cpuIdentity = (h: HostFingerprint): string =>
  `${h.cpu?.model ?? '?'} (${h.cpu?.vendor ?? '?'} ${h.cpu?.family ?? '?'}/${h.cpu?.modelNumber ?? '?'}/${h.cpu?.stepping ?? '?'})`;

function summarizeHost(h: MergedHost): HostSummary {
  const fp = h.host;
  const o = h.options;
  return {
    hostId: h.hostId,
    cpu: fp ? cpuIdentity(fp) : 'unknown',
    kernel: fp?.kernel?.release ?? 'unknown',
    qemu: fp?.qemu?.version ?? 'unknown',
    vcpuModel: fp?.qemuCpu?.used ?? o?.cpu ?? 'unknown',
    run: o ? `seed ${o.seed}, ${o.runs} runs, ${o.accel}, ${o.machine}${o.mutant ? `, mutant ${o.mutant}` : ''}` : 'unknown options',
  };
}

function moduleParams(fp: HostFingerprint | undefined): Map<string, string> {
  const m = new Map<string, string>();
  for (const mod of fp?.kvm?.modules ?? []) for (const [k, v] of Object.entries(mod.parameters ?? {})) m.set(`${mod.name}.${k}`, v);
  return m;
}

/** What differs between the two hosts of a pair, split into what matters for the comparison and what is only worth saying. */
export function hostDifferences(b: MergedHost, c: MergedHost): { warnings: string[]; notes: string[] } {
  const warnings: string[] = [];
  const notes: string[] = [];
  const fb = b.host;
  const fc = c.host;
  if (!fb || !fc) return { warnings: ['a host fingerprint is missing: cannot tell what differs between the hosts'], notes };
  if (fb.kernel?.release !== fc.kernel?.release) notes.push(`kernel ${fb.kernel?.release} → ${fc.kernel?.release}`);
  else notes.push(`same kernel (${fb.kernel?.release}): this compares two runs of one kernel`);
  if (cpuIdentity(fb) !== cpuIdentity(fc)) warnings.push(`different CPUs: ${cpuIdentity(fb)} vs ${cpuIdentity(fc)}; measurements compare machines, not kernels`);
  if ((fb.kvm?.vcpuTscKhz ?? null) !== (fc.kvm?.vcpuTscKhz ?? null) && fb.kvm?.vcpuTscKhz && fc.kvm?.vcpuTscKhz) notes.push(`vCPU TSC ${fb.kvm.vcpuTscKhz} kHz → ${fc.kvm.vcpuTscKhz} kHz`);
  if (fb.qemu?.version !== fc.qemu?.version) warnings.push(`different QEMU: ${fb.qemu?.version} vs ${fc.qemu?.version}; a kernel comparison should keep QEMU fixed`);
  if (fb.qemu?.path !== fc.qemu?.path) notes.push(`QEMU binary ${fb.qemu?.path} → ${fc.qemu?.path}`);
  const vb = (fb.kvm?.vendorModules ?? []).join(',');
  const vc = (fc.kvm?.vendorModules ?? []).join(',');
  if (vb !== vc) warnings.push(`different KVM vendor modules: ${vb || 'none'} vs ${vc || 'none'}`);
  const pb = moduleParams(fb);
  const pc = moduleParams(fc);
  const changed = [...new Set([...pb.keys(), ...pc.keys()])].filter((k) => pb.get(k) !== pc.get(k)).sort();
  if (changed.length) {
    const shown = changed.slice(0, 8).map((k) => `${k} ${pb.get(k) ?? '(absent)'} → ${pc.get(k) ?? '(absent)'}`);
    warnings.push(`KVM module parameters differ (they change timing and behaviour): ${shown.join(', ')}${changed.length > 8 ? ` and ${changed.length - 8} more` : ''}`);
  }
  const cb = fb.qemuCpu?.used ?? b.options?.cpu;
  const cc = fc.qemuCpu?.used ?? c.options?.cpu;
  if (cb !== cc) warnings.push(`different vCPU models: ${cb} vs ${cc}`);
  const ob = b.options;
  const oc = c.options;
  if (ob && oc) {
    const opt: [string, unknown, unknown][] = [
      ['seed', ob.seed, oc.seed],
      ['runs', ob.runs, oc.runs],
      ['accel', ob.accel, oc.accel],
      ['machine', ob.machine, oc.machine],
      ['kernel irqchip', ob.kernelIrqchip ?? 'on', oc.kernelIrqchip ?? 'on'],
      ['families', [...(ob.families ?? [])].sort().join(','), [...(oc.families ?? [])].sort().join(',')],
      ['QEMU arguments', (ob.qemuArgs ?? []).join(' '), (oc.qemuArgs ?? []).join(' ')],
    ];
    const diff = opt.filter(([, x, y]) => x !== y).map(([k, x, y]) => `${k} ${JSON.stringify(x)} vs ${JSON.stringify(y)}`);
    if (diff.length) warnings.push(`run options differ (${diff.join('; ')}): the workloads differ, and pooled measurements assume the same mix`);
    if (ob.mutant || oc.mutant) warnings.push(`a run targeted a mutant (${ob.mutant ?? 'none'} vs ${oc.mutant ?? 'none'}): a deliberately broken system`);
  }
  return { warnings, notes };
}

interface Paired {
  readonly b: MergedHost;
  readonly c: MergedHost;
  readonly by: HostPair['pairedBy'];
}

function pairHosts(bs: readonly MergedHost[], cs: readonly MergedHost[]): { pairs: Paired[]; baselineOnly: MergedHost[]; candidateOnly: MergedHost[] } {
  const pairs: Paired[] = [];
  const left = [...bs];
  const right = [...cs];
  const take = (i: number, j: number, by: Paired['by']) => {
    pairs.push({ b: left[i]!, c: right[j]!, by });
    left.splice(i, 1);
    right.splice(j, 1);
  };
  for (let i = left.length - 1; i >= 0; i--) {
    const j = right.findIndex((c) => c.hostId === left[i]!.hostId);
    if (j >= 0) take(i, j, 'hostId');
  }
  // The same machine under another kernel: the CPU identity, when it names one host on each side.
  const id = (h: MergedHost) => (h.host ? `${cpuIdentity(h.host)}|${h.host.cpu?.flags?.join(',')}` : '');
  for (let i = left.length - 1; i >= 0; i--) {
    const k = id(left[i]!);
    const js = right.map((c, j) => (id(c) === k ? j : -1)).filter((j) => j >= 0);
    if (k && js.length === 1 && left.filter((b) => id(b) === k).length === 1) take(i, js[0]!, 'cpu');
  }
  if (left.length === 1 && right.length === 1 && !pairs.length) take(0, 0, 'only-host');
  return { pairs: pairs.reverse(), baselineOnly: left, candidateOnly: right };
}

// ---------------------------------------------------------------------------------------------
// Properties

type Item = { readonly id: string; readonly status: PropertyStatus; readonly reason?: string; readonly deviation?: { readonly id: string } };

/** Properties and host findings (by their check, `host.<name>`) of one host of a results file. */
function itemsOf(r: ResultsFile, hostId: string): Map<string, Item> {
  const m = new Map<string, Item>();
  for (const p of r.properties) if (hostIdOf(p, r) === hostId && !m.has(p.id)) m.set(p.id, p);
  for (const f of r.findings as readonly HostFinding[]) {
    if (hostIdOf(f, r) !== hostId) continue;
    const id = f.check.startsWith('host.') ? f.check : `host.${f.check}`;
    const had = m.get(id);
    // Several findings of one check: the worst counts.
    if (!had || (had.status !== 'fail' && f.status === 'fail')) m.set(id, { id, status: f.status, reason: f.summary, ...(f.deviation ? { deviation: f.deviation } : {}) });
  }
  return m;
}

const oneLine = (s: string | undefined, max = 300): string => {
  const t = (s ?? '').replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
};

/** pass or documented deviation: "ok"; fail or a deviation the file does not document: "bad". */
function outcome(it: Item, documented: ReadonlySet<string>): { ok: boolean; waiver?: string; undocumented?: string } {
  if (it.status === 'pass') return { ok: true };
  if (it.status === 'known-deviation') {
    const id = it.deviation?.id;
    if (id && documented.has(id)) return { ok: true, waiver: id };
    return { ok: false, undocumented: id ?? '(no id)' };
  }
  return { ok: false };
}

export function compareProperties(b: Map<string, Item>, c: Map<string, Item>, hosts: string, documented: ReadonlySet<string>, policy: GatePolicy): PropertyTransition[] {
  const out: PropertyTransition[] = [];
  const eff = (a: Action): 'fail' | 'warn' => a;
  const ids = [...new Set([...b.keys(), ...c.keys()])].sort();
  for (const id of ids) {
    const x = b.get(id);
    const y = c.get(id);
    const base = { id, hosts, baseline: x?.status ?? null, candidate: y?.status ?? null };
    if (!y) {
      out.push({ ...base, kind: 'missing', effect: eff(policy.properties.missing), detail: `in the baseline (${x!.status}), absent from the candidate: a shard or host that did not run?` });
      continue;
    }
    const oy = outcome(y, documented);
    const undocumented = oy.undocumented ? `known deviation ${oy.undocumented} is not in the known-deviations file, so it counts as a failure: ${oneLine(y.reason)}` : undefined;
    const failText = undocumented ?? oneLine(y.reason);
    if (!x || x.status === 'skip') {
      const was = x ? 'skipped on the baseline' : 'not in the baseline';
      if (y.status === 'skip') out.push({ ...base, kind: x ? 'unchanged' : 'new', effect: 'none', detail: `${was}; skipped: ${oneLine(y.reason)}` });
      else if (oy.ok) out.push({ ...base, kind: 'new', effect: 'none', detail: `${was}; ${oy.waiver ? `waived: documented deviation ${oy.waiver}` : 'passes'}`, ...(oy.waiver ? { deviation: oy.waiver } : {}) });
      else out.push({ ...base, kind: 'new-failure', effect: eff(policy.properties.newFailure), detail: `${was}; fails: ${failText}` });
      continue;
    }
    if (y.status === 'skip') {
      out.push({ ...base, kind: 'newly-skipped', effect: eff(policy.properties.newlySkipped), detail: `${x.status} on the baseline, skipped on the candidate: ${oneLine(y.reason)}` });
      continue;
    }
    const ox = outcome(x, documented);
    if (ox.ok && !oy.ok) out.push({ ...base, kind: 'regressed', effect: 'fail', detail: failText });
    else if (!ox.ok && oy.ok) out.push({ ...base, kind: 'fixed', effect: 'none', detail: oy.waiver ? `no longer fails; waived: documented deviation ${oy.waiver}` : 'passes on the candidate', ...(oy.waiver ? { deviation: oy.waiver } : {}) });
    else if (!ox.ok && !oy.ok) out.push({ ...base, kind: 'still-failing', effect: 'none', detail: `fails on both: ${failText}` });
    else if (oy.waiver && oy.waiver !== ox.waiver) {
      out.push({ ...base, kind: 'waived', effect: 'none', detail: `waived: documented deviation ${oy.waiver}${ox.waiver ? ` (the baseline had ${ox.waiver})` : ' (it passed on the baseline)'}: ${oneLine(y.reason)}`, deviation: oy.waiver });
    } else if (oy.waiver) out.push({ ...base, kind: 'still-waived', effect: 'none', detail: `waived on both: documented deviation ${oy.waiver}`, deviation: oy.waiver });
    else out.push({ ...base, kind: 'unchanged', effect: 'none', detail: x.status === 'known-deviation' ? `passes now; the baseline's deviation ${ox.waiver} is no longer seen` : 'passes on both' });
  }
  // A baseline deviation that the candidate no longer shows is a fix worth listing.
  return out.map((t) => (t.kind === 'unchanged' && t.baseline === 'known-deviation' && t.candidate === 'pass' ? { ...t, kind: 'fixed' as const } : t));
}

// ---------------------------------------------------------------------------------------------
// Measurements

type Samples = Map<string, { value: number; labels: Record<string, string | number> }[]>;

function samplesOf(r: ResultsFile, hostId: string): { series: Samples; dropped: number } {
  const m: Samples = new Map();
  let dropped = 0;
  for (const p of r.properties as readonly PropertyResult[]) {
    if (hostIdOf(p, r) !== hostId || !p.measurements || typeof p.measurements !== 'object') continue;
    for (const [series, xs] of Object.entries(p.measurements)) {
      if (!Array.isArray(xs)) continue;
      const into = m.get(series) ?? m.set(series, []).get(series)!;
      for (const s of xs) {
        if (typeof s?.value !== 'number' || !Number.isFinite(s.value)) {
          dropped++;
          continue;
        }
        into.push({ value: s.value, labels: (s.labels ?? {}) as Record<string, string | number> });
      }
    }
  }
  return { series: m, dropped };
}

const groupKey = (labels: Record<string, string | number>, by: readonly string[] | undefined): string =>
  (by ?? Object.keys(labels).sort())
    .filter((k) => labels[k] !== undefined)
    .map((k) => `${k}=${labels[k]}`)
    .join(', ') || '(no labels)';

const quantiles = (sorted: readonly number[]): QuantileSet => ({ p50: quantile(sorted, 0.5), p90: quantile(sorted, 0.9), p99: quantile(sorted, 0.99) });

interface Pending {
  readonly c: Omit<SeriesComparison, 'verdict' | 'effect' | 'detail' | 'test'> & { test?: Omit<NonNullable<SeriesComparison['test']>, 'pWorseAdjusted' | 'pBetterAdjusted'> };
  readonly rule: SeriesRule;
}

function measure(series: string, hosts: string, group: string, rule: SeriesRule, b: readonly number[], c: readonly number[]): Pending | SeriesComparison {
  const sb = ascending(b);
  const sc = ascending(c);
  const common = {
    series,
    hosts,
    group,
    rule: rule.series,
    direction: rule.direction,
    action: rule.action,
    ...(rule.unit ? { unit: rule.unit } : {}),
    n: { baseline: b.length, candidate: c.length },
    quantiles: { baseline: quantiles(sb), candidate: quantiles(sc) },
    thresholds: pickThresholds(rule),
  };
  if (b.length < rule.minSamples || c.length < rule.minSamples) {
    return { ...common, verdict: 'insufficient-samples', effect: 'none', detail: `not tested: ${b.length} baseline and ${c.length} candidate samples, the policy asks for ${rule.minSamples} on each side` };
  }
  const sign = rule.direction === 'higher-is-worse' ? 1 : -1;
  const qb = quantile(sb, rule.quantile);
  const qc = quantile(sc, rule.quantile);
  const absoluteWorsening = sign * (qc - qb);
  const relativeWorsening = qb === 0 ? (absoluteWorsening === 0 ? 0 : Math.sign(absoluteWorsening) * Infinity) : absoluteWorsening / Math.abs(qb);
  const mw = mannWhitney(b, c);
  return {
    c: {
      ...common,
      quantile: { q: rule.quantile, baseline: qb, candidate: qc, relativeWorsening, absoluteWorsening, ratio: qb === 0 ? (qc === 0 ? 1 : Infinity) : qc / qb },
      test: {
        name: `Mann–Whitney U, one-sided (candidate ${rule.direction === 'higher-is-worse' ? 'larger' : 'smaller'})`,
        method: mw.method,
        u: mw.u,
        ...(mw.z !== undefined ? { z: mw.z } : {}),
        pWorse: sign > 0 ? mw.pGreater : mw.pLess,
        pBetter: sign > 0 ? mw.pLess : mw.pGreater,
      },
      cliffsDelta: sign * mw.cliffsDelta,
      hodgesLehmann: hodgesLehmann(b, c),
    },
    rule,
  };
}

const pickThresholds = (r: SeriesRule): Thresholds => ({ alpha: r.alpha, quantile: r.quantile, minRelativeIncrease: r.minRelativeIncrease, minAbsoluteIncrease: r.minAbsoluteIncrease, minCliffsDelta: r.minCliffsDelta, minSamples: r.minSamples });

export const fmt = (x: number, digits = 3): string => {
  if (x === Infinity) return '∞';
  if (x === -Infinity) return '−∞';
  if (Number.isNaN(x)) return 'n/a';
  if (x !== 0 && Math.abs(x) < 1e-3) return x.toExponential(2);
  return String(Number(x.toPrecision(digits + 1)));
};
export const fmtP = (p: number): string => (p === 0 ? '<1e-300' : p < 1e-4 ? p.toExponential(1) : String(Number(p.toPrecision(2))));
const pct = (x: number): string => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${Number((x * 100).toPrecision(3))}%` : x > 0 ? '+∞%' : '−∞%');

/** Judge the tests once all of them are known: Holm's adjustment is over the whole family. */
function judge(pending: readonly Pending[], policy: GatePolicy): SeriesComparison[] {
  const adj = (ps: number[]) => (policy.multipleComparisons === 'holm' ? holm(ps) : ps);
  const worse = adj(pending.map((p) => p.c.test!.pWorse));
  const better = adj(pending.map((p) => p.c.test!.pBetter));
  const m = pending.length;
  return pending.map(({ c, rule }, i): SeriesComparison => {
    const test = { ...c.test!, pWorseAdjusted: worse[i]!, pBetterAdjusted: better[i]! };
    const q = c.quantile!;
    const d = c.cliffsDelta!;
    const name = `p${Math.round(rule.quantile * 100)}`;
    const u = rule.unit ? ` ${rule.unit}` : '';
    const pText = (p: number, pa: number) => `p=${fmtP(p)}${policy.multipleComparisons === 'holm' && m > 1 ? ` (Holm over ${m}: ${fmtP(pa)})` : ''}`;
    const effectsWorse = q.relativeWorsening >= rule.minRelativeIncrease && q.absoluteWorsening >= rule.minAbsoluteIncrease && d >= rule.minCliffsDelta;
    const effectsBetter = -q.absoluteWorsening >= rule.minAbsoluteIncrease && (q.baseline === 0 ? false : -q.relativeWorsening >= rule.minRelativeIncrease) && -d >= rule.minCliffsDelta;
    const quant = `${name} ${fmt(q.baseline)} → ${fmt(q.candidate)}${u} (${pct(q.relativeWorsening * (rule.direction === 'higher-is-worse' ? 1 : -1))}, ${q.absoluteWorsening * (rule.direction === 'higher-is-worse' ? 1 : -1) >= 0 ? '+' : ''}${fmt(q.candidate - q.baseline)}${u})`;
    const limits = `thresholds: alpha ${rule.alpha}, ${name} worse by ≥ ${pct(rule.minRelativeIncrease)} and ≥ ${fmt(rule.minAbsoluteIncrease)}${u}, Cliff's delta ≥ ${rule.minCliffsDelta}`;
    const stats = (p: number, pa: number) => `${test.name}: U=${fmt(test.u, 6)}, ${pText(p, pa)}; Cliff's delta ${fmt(d)}; ${quant}; n ${c.n.baseline}/${c.n.candidate}; ${limits}`;
    if (test.pWorseAdjusted < rule.alpha && effectsWorse) {
      return { ...c, test, verdict: 'regression', effect: rule.action, detail: stats(test.pWorse, test.pWorseAdjusted) };
    }
    if (test.pBetterAdjusted < rule.alpha && effectsBetter) {
      return { ...c, test, verdict: 'improvement', effect: 'none', detail: stats(test.pBetter, test.pBetterAdjusted) };
    }
    if (test.pWorseAdjusted < rule.alpha) {
      const short = [
        q.relativeWorsening < rule.minRelativeIncrease && `${name} worse by ${pct(q.relativeWorsening)} < ${pct(rule.minRelativeIncrease)}`,
        q.absoluteWorsening < rule.minAbsoluteIncrease && `${name} worse by ${fmt(q.absoluteWorsening)}${u} < ${fmt(rule.minAbsoluteIncrease)}${u}`,
        d < rule.minCliffsDelta && `Cliff's delta ${fmt(d)} < ${rule.minCliffsDelta}`,
      ].filter(Boolean);
      return { ...c, test, verdict: 'significant-below-threshold', effect: 'none', detail: `significantly worse but below the policy's effect (${short.join('; ')}): ${stats(test.pWorse, test.pWorseAdjusted)}` };
    }
    return { ...c, test, verdict: 'no-significant-change', effect: 'none', detail: stats(test.pWorse, test.pWorseAdjusted) };
  });
}

// ---------------------------------------------------------------------------------------------
// The gate

export interface GateInputs {
  readonly baseline: ResultsFile;
  readonly candidate: ResultsFile;
  readonly policy: GatePolicy;
  readonly deviations: DeviationsFile;
  /** Names of the inputs, for the report. */
  readonly files?: { readonly baseline: string; readonly candidate: string };
  readonly deviationsSource?: string;
}

export function gate(inputs: GateInputs): GateResult {
  const { baseline, candidate, policy } = inputs;
  const documented = new Set(inputs.deviations.deviations.map((d) => d.id));
  const bh = hostsOf(baseline);
  const ch = hostsOf(candidate);
  const { pairs, baselineOnly, candidateOnly } = pairHosts(bh, ch);
  const failures: string[] = [];
  const warnings: string[] = [];
  const hostPairs: HostPair[] = [];
  const properties: PropertyTransition[] = [];
  const pending: Pending[] = [];
  const decided: SeriesComparison[] = [];
  const notGated: GateResult['notGated'][number][] = [];
  const smallGroups: GateResult['smallGroups'][number][] = [];
  for (const h of baselineOnly) {
    const line = `baseline host ${h.hostId} (${summarizeHost(h).cpu}, kernel ${summarizeHost(h).kernel}) has no counterpart in the candidate: its results are not compared`;
    (policy.properties.missing === 'fail' ? failures : warnings).push(line);
  }
  for (const h of candidateOnly) warnings.push(`candidate host ${h.hostId} (${summarizeHost(h).cpu}, kernel ${summarizeHost(h).kernel}) has no counterpart in the baseline: its results are not compared`);
  for (const { b, c, by } of pairs) {
    const hosts = `${b.hostId} → ${c.hostId}`;
    const d = hostDifferences(b, c);
    hostPairs.push({ baseline: summarizeHost(b), candidate: summarizeHost(c), pairedBy: by, warnings: d.warnings, notes: d.notes });
    for (const w of d.warnings) warnings.push(`hosts ${hosts}: ${w}`);
    properties.push(...compareProperties(itemsOf(baseline, b.hostId), itemsOf(candidate, c.hostId), hosts, documented, policy));
    const sb = samplesOf(baseline, b.hostId);
    const sc = samplesOf(candidate, c.hostId);
    if (sb.dropped + sc.dropped) warnings.push(`hosts ${hosts}: ${sb.dropped + sc.dropped} measurement samples without a finite value were ignored`);
    for (const series of [...new Set([...sb.series.keys(), ...sc.series.keys()])].sort()) {
      const xb = sb.series.get(series) ?? [];
      const xc = sc.series.get(series) ?? [];
      const rule = ruleFor(policy, series);
      if (!rule) {
        notGated.push({ series, hosts, n: { baseline: xb.length, candidate: xc.length } });
        continue;
      }
      const all = measure(series, hosts, 'all', rule, xb.map((s) => s.value), xc.map((s) => s.value));
      ('c' in all ? pending.push(all) : decided.push(all));
      const gb = new Map<string, number[]>();
      const gc = new Map<string, number[]>();
      for (const s of xb) (gb.get(groupKey(s.labels, rule.groupBy)) ?? gb.set(groupKey(s.labels, rule.groupBy), []).get(groupKey(s.labels, rule.groupBy))!).push(s.value);
      for (const s of xc) (gc.get(groupKey(s.labels, rule.groupBy)) ?? gc.set(groupKey(s.labels, rule.groupBy), []).get(groupKey(s.labels, rule.groupBy))!).push(s.value);
      const keys = [...new Set([...gb.keys(), ...gc.keys()])].sort();
      // One group is the pooled comparison again.
      if (keys.length < 2) continue;
      let small = 0;
      for (const k of keys) {
        const vb = gb.get(k) ?? [];
        const vc = gc.get(k) ?? [];
        if (vb.length < rule.minSamples || vc.length < rule.minSamples) {
          small++;
          continue;
        }
        const g = measure(series, hosts, k, rule, vb, vc);
        ('c' in g ? pending.push(g) : decided.push(g));
      }
      if (small) smallGroups.push({ series, hosts, groups: small });
    }
  }
  const measurements = [...judge(pending, policy), ...decided].sort((x, y) => x.hosts.localeCompare(y.hosts) || x.series.localeCompare(y.series) || (x.group === 'all' ? -1 : y.group === 'all' ? 1 : x.group.localeCompare(y.group)));
  for (const t of properties) {
    const line = `${t.id} (${t.hosts}): ${t.kind}, ${t.baseline ?? 'absent'} → ${t.candidate ?? 'absent'}: ${t.detail}`;
    if (t.effect === 'fail') failures.push(line);
    else if (t.effect === 'warn') warnings.push(line);
  }
  for (const m of measurements) {
    if (m.verdict !== 'regression') continue;
    const line = `${m.series} [${m.group}] (${m.hosts}): regression: ${m.detail}`;
    (m.effect === 'fail' ? failures : warnings).push(line);
  }
  for (const [side, r] of [['baseline', baseline], ['candidate', candidate]] as const) {
    if (!r.errors.length) continue;
    const line = `the ${side} run had errors of its own: ${r.errors.slice(0, 3).map((e) => oneLine(e, 200)).join('; ')}${r.errors.length > 3 ? ` (and ${r.errors.length - 3} more)` : ''}`;
    if (side === 'candidate' && policy.properties.runErrors === 'fail') failures.push(line);
    else warnings.push(line);
  }
  return {
    schema: GATE_SCHEMA,
    version: GATE_VERSION,
    verdict: failures.length ? 'fail' : 'pass',
    failures,
    warnings,
    policy,
    deviationsSource: inputs.deviationsSource ?? 'known deviations',
    inputs: inputs.files ?? { baseline: 'baseline', candidate: 'candidate' },
    hosts: { baseline: bh.map(summarizeHost), candidate: ch.map(summarizeHost), pairs: hostPairs },
    properties,
    measurements,
    notGated,
    smallGroups,
  };
}

// ---------------------------------------------------------------------------------------------
// The summary and the command

const KIND_LABEL: Partial<Record<TransitionKind, string>> = {
  regressed: 'REGRESSED',
  fixed: 'FIXED',
  waived: 'WAIVED',
  'still-failing': 'STILL-FAILING',
  'newly-skipped': 'NEWLY-SKIPPED',
  'new-failure': 'NEW-FAILURE',
  missing: 'MISSING',
};

/** The human summary: hosts compared, then one line per regression, fix, waiver and measurement finding. */
export function formatSummary(g: GateResult): string {
  const L: string[] = [];
  const nReg = g.properties.filter((t) => t.kind === 'regressed').length + g.measurements.filter((m) => m.verdict === 'regression' && m.effect === 'fail').length;
  L.push(`kvmprop gate: ${g.verdict.toUpperCase()} (${g.failures.length} failing finding${g.failures.length === 1 ? '' : 's'}, ${nReg} regression${nReg === 1 ? '' : 's'}; ${g.warnings.length} warning${g.warnings.length === 1 ? '' : 's'})`);
  L.push(`baseline ${oneLine(g.inputs.baseline)}; candidate ${oneLine(g.inputs.candidate)}; policy ${oneLine(g.policy.source)}; deviations ${oneLine(g.deviationsSource)}`);
  L.push('hosts compared:');
  const host = (s: HostSummary) => `${s.hostId}  ${oneLine(s.cpu)}, kernel ${oneLine(s.kernel)}, QEMU ${oneLine(s.qemu)}, vCPU ${oneLine(s.vcpuModel)}; ${oneLine(s.run)}`;
  for (const p of g.hosts.pairs) {
    L.push(`  baseline  ${host(p.baseline)}`, `  candidate ${host(p.candidate)}   (paired by ${p.pairedBy})`);
    for (const n of p.notes) L.push(`    note: ${oneLine(n)}`);
    for (const w of p.warnings) L.push(`    WARNING: ${oneLine(w)}`);
  }
  if (!g.hosts.pairs.length) L.push('  no host of the baseline pairs with one of the candidate');
  const counts = new Map<string, number>();
  for (const t of g.properties) counts.set(t.kind, (counts.get(t.kind) ?? 0) + 1);
  L.push(`properties: ${g.properties.length} compared (${[...counts].map(([k, n]) => `${n} ${k}`).join(', ') || 'none'})`);
  for (const t of g.properties) {
    const label = KIND_LABEL[t.kind];
    if (label) L.push(`  ${label.padEnd(14)} ${oneLine(t.id)}  ${t.baseline ?? 'absent'} → ${t.candidate ?? 'absent'}: ${oneLine(t.detail, 400)}${t.effect === 'warn' ? ' [warning]' : ''}`);
  }
  const tested = g.measurements.filter((m) => m.test);
  L.push(`measurements: ${tested.length} comparisons tested, ${g.measurements.length - tested.length} with too few samples${g.policy.multipleComparisons === 'holm' ? '; p-values Holm-adjusted over the tests' : ''}`);
  const mLabel: Partial<Record<MeasurementVerdict, string>> = { regression: 'REGRESSION', improvement: 'IMPROVED', 'significant-below-threshold': 'below-effect' };
  for (const m of g.measurements) {
    const label = mLabel[m.verdict];
    if (label) L.push(`  ${(m.verdict === 'regression' && m.effect === 'warn' ? 'REGRESSION(w)' : label).padEnd(14)} ${oneLine(m.series)} [${oneLine(m.group)}]  ${m.detail}`);
  }
  const quiet = g.measurements.filter((m) => m.verdict === 'no-significant-change');
  if (quiet.length) L.push(`  no significant change: ${quiet.map((m) => `${oneLine(m.series)} [${oneLine(m.group)}] p=${fmtP(m.test!.pWorseAdjusted)}`).join('; ')}`);
  for (const m of g.measurements.filter((x) => x.verdict === 'insufficient-samples' && x.group === 'all')) L.push(`  not tested      ${oneLine(m.series)} [all]  ${m.detail}`);
  for (const s of g.smallGroups) L.push(`  ${s.series}: ${s.groups} label set${s.groups === 1 ? '' : 's'} below the minimum samples on a side (pooled in [all] only)`);
  if (g.notGated.length) L.push(`  not gated (no policy rule): ${g.notGated.map((x) => `${oneLine(x.series)} (${x.n.baseline}/${x.n.candidate})`).join(', ')}`);
  if (g.failures.length) {
    L.push('the gate fails because:');
    for (const f of g.failures) L.push(`  - ${oneLine(f, 600)}`);
  }
  if (g.warnings.length) {
    L.push('warnings:');
    for (const w of g.warnings) L.push(`  - ${oneLine(w, 600)}`);
  }
  return L.join('\n');
}

export class GateUsageError extends Error {
  override name = 'GateUsageError';
}

const GATE_USAGE = 'usage: kvmprop gate --baseline RESULTS --candidate RESULTS [--policy FILE] [--deviations FILE] [--out DIR]';

/** `kvmprop gate`: exit 0 no regression, 1 regression, 2 bad arguments or unreadable input. */
export async function cmdGate(argv: readonly string[]): Promise<number> {
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: true,
      options: { baseline: { type: 'string' }, candidate: { type: 'string' }, policy: { type: 'string' }, deviations: { type: 'string' }, out: { type: 'string' } },
    });
    if (positionals.length || !values.baseline || !values.candidate) throw new GateUsageError(GATE_USAGE);
    const b = readResultsFile(values.baseline);
    const c = readResultsFile(values.candidate);
    const policy = loadPolicy(resolve(values.policy ?? DEFAULT_POLICY_FILE));
    const deviationsFile = resolve(values.deviations ?? DEFAULT_DEVIATIONS_FILE);
    const deviations = loadDeviations(deviationsFile);
    const g = gate({ baseline: b.results, candidate: c.results, policy, deviations, files: { baseline: b.file, candidate: c.file }, deviationsSource: deviationsFile });
    process.stdout.write(formatSummary(g) + '\n');
    if (values.out) {
      const dir = resolve(values.out);
      try {
        mkdirSync(dir, { recursive: true });
        writeFileSync(join(dir, 'gate.json'), JSON.stringify(g, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 2) + '\n');
        const { gateHtml } = await import('./gateHtml.js');
        writeFileSync(join(dir, 'gate.html'), gateHtml(g));
      } catch (e) {
        throw new GateUsageError(`cannot write the report to ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      process.stderr.write(`kvmprop: gate report → ${join(dir, 'gate.json')}, ${join(dir, 'gate.html')}\n`);
    }
    return g.verdict === 'pass' ? 0 : 1;
  } catch (e) {
    return commandFailure(e, [GateUsageError, MergeError, GatePolicyError, DeviationsError]);
  }
}
