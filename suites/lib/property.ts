/**
 * A conformance property: generate a workload, run it on the real system, compare with the model.
 * `runProperty` drives fast-check, and on failure saves the shrunk counterexample (workload,
 * expected, observed) as JSON with a one-line replay command, and checks it against the known
 * deviations. Properties only say what they check; everything else is here.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import fc from 'fast-check';
import { buildGuest } from '../../harness/guest/build.js';
import { collectFingerprint, fingerprintId, type HostFingerprint } from '../../harness/fingerprint.js';
import { VmSetupError } from '../../harness/vm.js';
import { writeCounterexample } from '../../reports/counterexample.js';
import { loadDeviations, matchDeviation, type DeviationsFile, type KnownDeviation } from '../../reports/deviations.js';
import type { PropertyResult } from '../../reports/schema.js';
import { defaultOptions, type RunOptions } from './options.js';
import { HOST_CHECKS, MachineStartError, settleVcpuModel } from './machine.js';

export interface Failure {
  readonly ok: false;
  /** One line: what differs, where. */
  readonly summary: string;
  readonly expected: unknown;
  readonly observed: unknown;
  /** QEMU's dump, registers, serial output... */
  readonly evidence?: unknown;
  /**
   * A smaller workload that should fail the same way (the one read or query that differed).
   * Greedy shrinking cannot always reach it (a sweep cannot trade its count for its offset), so
   * the runner re-checks it and, if it fails, saves it as the counterexample.
   */
  readonly witness?: unknown;
}
export type Verdict = { readonly ok: true } | Failure;

export const PASS: Verdict = { ok: true };

export interface FailureExtras {
  readonly evidence?: unknown;
  readonly witness?: unknown;
}

export function fail(summary: string, expected: unknown, observed: unknown, extras: FailureExtras = {}): Failure {
  return {
    ok: false,
    summary,
    expected,
    observed,
    ...(extras.evidence === undefined ? {} : { evidence: extras.evidence }),
    ...(extras.witness === undefined ? {} : { witness: extras.witness }),
  };
}

/** Counters a property bumps as it works (cpuidQueries, deviceReads, vms, ...). */
export class Metrics {
  readonly counts: Record<string, number> = {};
  add(name: string, n = 1): void {
    this.counts[name] = (this.counts[name] ?? 0) + n;
  }
}

/** What every property gets: the options, the guest, the host, and its metrics. */
export interface SuiteEnv {
  readonly options: RunOptions;
  readonly guestElf: string;
  readonly host: HostFingerprint;
  readonly metrics: Metrics;
  /**
   * Report a difference between model and observation. Returns the Failure to return from check(),
   * or null when a known deviation of this host covers exactly this difference: it is then
   * recorded (the property ends as 'known-deviation', never 'pass') and checking goes on, so any
   * other difference in the same run still fails.
   */
  mismatch(summary: string, expected: unknown, observed: unknown, extras?: FailureExtras): Failure | null;
}

interface Waived {
  readonly deviation: KnownDeviation;
  count: number;
  readonly example: string;
}

export interface PropertyDef<W, F> {
  readonly id: string;
  readonly suite: string;
  readonly statement: string;
  /** A reason to skip on this host or with these options, or null. */
  skip?(env: SuiteEnv): string | null;
  /** Host facts the generator and the model need, gathered once. */
  facts(env: SuiteEnv): Promise<F>;
  arbitrary(facts: F, env: SuiteEnv): fc.Arbitrary<W>;
  check(workload: W, facts: F, env: SuiteEnv): Promise<Verdict>;
}

/** Properties are generic in their workload and facts; the registry does not care which. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the registry holds every kind
export type AnyProperty = PropertyDef<any, any>;

export function defineProperty<W, F>(def: PropertyDef<W, F>): PropertyDef<W, F> {
  return def;
}

class PropertyFailed extends Error {
  constructor(readonly verdict: Failure) {
    super(verdict.summary);
  }
}

export type BaseEnv = Omit<SuiteEnv, 'metrics' | 'mismatch'> & {
  /** Set when the configured machine does not start: every property then skips, pointing at it. */
  readonly startFailure?: MachineStartError;
};

const hostCache = new Map<string, Promise<{ guestElf: string; host: HostFingerprint }>>();
const machineCache = new Map<string, Promise<MachineStartError | undefined>>();

/**
 * The environment for a set of options; the guest is built and the host read once per process and
 * QEMU, and the vCPU model settled once per configuration (suites/lib/machine.ts).
 */
export async function suiteEnv(options: RunOptions): Promise<BaseEnv> {
  let p = hostCache.get(options.qemu);
  if (!p) {
    p = Promise.all([buildGuest(), collectFingerprint({ qemu: options.qemu })]).then(([guest, host]) => ({ guestElf: guest.elf, host }));
    p.catch(() => hostCache.delete(options.qemu));
    hostCache.set(options.qemu, p);
  }
  const { guestElf, host } = await p;
  const key = JSON.stringify([options.qemu, options.accel, options.cpu ?? null]);
  let m = machineCache.get(key);
  if (!m) {
    m = settleVcpuModel(options, guestElf).then(
      () => undefined,
      (e: unknown) => {
        if (e instanceof MachineStartError) return e;
        throw e;
      },
    );
    machineCache.set(key, m);
  }
  const startFailure = await m;
  return { options, guestElf, host, ...(startFailure ? { startFailure } : {}) };
}

export function replayCommand(file: string): string {
  return `npx kvmprop replay ${file}`;
}

function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

/** Run one property under fast-check and return its result record (also written to out/properties). */
export async function runProperty(def: AnyProperty, base: BaseEnv, deviations?: DeviationsFile): Promise<PropertyResult> {
  const o = base.options;
  const known = deviations ?? loadDeviations(o.deviations);
  const waived = new Map<string, Waived>();
  const env: SuiteEnv = {
    ...base,
    metrics: new Metrics(),
    mismatch(summary, expected, observed, extras) {
      const d = matchDeviation(known, def.id, summary, base.host, o);
      if (!d) return fail(summary, expected, observed, extras);
      const w = waived.get(d.id);
      if (w) w.count++;
      else waived.set(d.id, { deviation: d, count: 1, example: summary });
      return null;
    },
  };
  const waivedSummary = () =>
    [...waived.values()].map((w) => `${w.count} difference(s) covered by known deviation ${w.deviation.id} (first: ${w.example})`).join('; ');
  const t0 = Date.now();
  const record = (r: Omit<PropertyResult, 'id' | 'suite' | 'statement' | 'durationMs' | 'metrics' | 'seed'> & { seed?: number }): PropertyResult => {
    const result: PropertyResult = {
      id: def.id,
      suite: def.suite,
      statement: def.statement,
      seed: o.seed,
      ...r,
      durationMs: Date.now() - t0,
      metrics: env.metrics.counts,
    };
    mkdirSync(join(o.out, 'properties'), { recursive: true });
    writeFileSync(join(o.out, 'properties', `${def.id}.json`), JSON.stringify(result, null, 2) + '\n');
    return result;
  };

  if (base.startFailure) {
    return record({ status: 'skip', reason: `not run: the configured machine does not start (host finding ${HOST_CHECKS.machine}: ${base.startFailure.qemuMessage})`, numRuns: 0 });
  }
  const skip = def.skip?.(env);
  if (skip) return record({ status: 'skip', reason: skip, numRuns: 0 });

  let facts: unknown;
  try {
    facts = await def.facts(env);
  } catch (e) {
    return record({ status: 'fail', reason: `could not gather host facts: ${describeError(e)}`, numRuns: 0 });
  }
  let executed = 0;
  const prop = fc.asyncProperty(def.arbitrary(facts, env), async (w: unknown) => {
    executed++;
    const v = await def.check(w, facts, env);
    if (!v.ok) throw new PropertyFailed(v);
  });
  const details = await fc.check(prop, { seed: o.seed, numRuns: o.runs, ...(o.path ? { path: o.path } : {}) });
  const firstWaived = [...waived.values()][0];
  if (!details.failed) {
    if (!firstWaived) return record({ status: 'pass', numRuns: executed });
    return record({
      status: 'known-deviation',
      reason: waivedSummary(),
      numRuns: executed,
      deviation: { id: firstWaived.deviation.id, citation: firstWaived.deviation.citation },
    });
  }

  const err = details.errorInstance;
  if (!(err instanceof PropertyFailed)) {
    // The harness itself broke (QEMU missing, a bad option, a bug of ours): not a finding about KVM.
    const reason = err instanceof VmSetupError ? `setup error: ${err.message}` : `error while checking: ${describeError(err)}`;
    return record({ status: 'fail', reason, numRuns: executed, ...(details.counterexamplePath ? { path: details.counterexamplePath } : {}) });
  }
  let v = err.verdict;
  let workload: unknown = details.counterexample?.[0];
  let shrunkFrom: unknown;
  if (v.witness !== undefined) {
    const again = await def.check(v.witness, facts, env);
    if (!again.ok) {
      shrunkFrom = workload;
      workload = v.witness;
      v = again;
    }
  }
  const path = details.counterexamplePath ?? '';
  const file = join(o.out, 'counterexamples', `${def.id}.json`);
  const replay = replayCommand(file);
  writeCounterexample(file, {
    schema: 'kvmprop-counterexample',
    version: 1,
    property: def.id,
    suite: def.suite,
    statement: def.statement,
    seed: details.seed,
    path,
    replay,
    options: { ...o, path },
    hostId: fingerprintId(env.host),
    summary: v.summary,
    workload,
    ...(shrunkFrom === undefined ? {} : { fastCheckCounterexample: shrunkFrom }),
    expected: v.expected,
    observed: v.observed,
    ...(v.evidence === undefined ? {} : { evidence: v.evidence }),
    createdAt: new Date().toISOString(),
  });
  // A failure that ends the run (KVM stopped the VM, ...) can itself be a documented deviation.
  const deviation = matchDeviation(known, def.id, v.summary, env.host, o);
  return record({
    status: deviation ? 'known-deviation' : 'fail',
    reason: waived.size ? `${v.summary} (also: ${waivedSummary()})` : v.summary,
    numRuns: executed,
    seed: details.seed,
    path,
    counterexample: relative(o.out, file),
    replay,
    ...(deviation ? { deviation: { id: deviation.id, citation: deviation.citation } } : {}),
  });
}

/** The `kvmprop run` line that re-runs exactly the recorded fast-check case, under the same options. */
export function rerunCommand(r: Pick<PropertyResult, 'suite' | 'id' | 'seed' | 'path'>, o: RunOptions): string {
  const d = defaultOptions();
  const args = ['npx kvmprop run', `--suite ${r.suite}`, `--property ${r.id}`, `--seed ${r.seed}`, `--path ${r.path}`];
  if (o.machine !== d.machine) args.push(`--machine ${o.machine}`);
  if (o.accel !== d.accel) args.push(`--accel ${o.accel}`);
  if (o.cpu) args.push(`--cpu ${o.cpu}`);
  if (o.kernelIrqchip) args.push(`--kernel-irqchip ${o.kernelIrqchip}`);
  if (o.qemu !== d.qemu) args.push(`--qemu ${o.qemu}`);
  for (const a of o.qemuArgs) args.push(`--qemu-arg=${a}`);
  if (o.mutant) args.push(`--mutant ${o.mutant}`);
  if (o.deviations !== d.deviations) args.push(`--deviations ${o.deviations}`);
  return args.join(' ');
}

/** The message a failed property prints: seed, path, the shrunk counterexample and how to replay it. */
export function formatFailure(r: PropertyResult, o: RunOptions): string {
  const lines = [`${r.id} failed: ${r.reason ?? 'no reason given'}`, `  seed ${r.seed}${r.path ? `, path ${r.path}` : ''}`];
  if (r.counterexample) lines.push(`  counterexample: ${join(o.out, r.counterexample)}`);
  if (r.replay) lines.push(`  replay: ${r.replay}`);
  if (r.path) lines.push(`  or: ${rerunCommand(r, o)}`);
  return lines.join('\n');
}
