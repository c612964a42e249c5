/**
 * What a conformance property is: generate a case, observe it on the real system, then apply a
 * list of named rules, each saying what differs from the model (or nothing). A property says only
 * what it checks; the runner (runner.ts) drives fast-check, waives what a known deviation covers
 * (waive.ts), re-checks a smaller witness and persists the result (reports/).
 *
 * Names: a *case* (W) is what fast-check generates for one run of a property; the *program* is the
 * guest bytecode a case turns into (ir/program.ts); *facts* (F) are what the property learns about
 * the host and QEMU once, before any case; an *observation* (O) is what one case saw.
 */
import type fc from 'fast-check';
import type { HostFingerprint } from '../../harness/fingerprint.js';
import type { MachineConfig } from '../../harness/vm.js';
import type { RunOptions } from './options.js';
import type { Mutant } from './family.js';
import type { MeasurementSample, NotGenerated } from '../../reports/schema.js';
import type { Histogram } from '../../harness/kvmStats.js';
import type { Program } from '../../ir/program.js';
import type { VmRole } from './run.js';

/** One way the system differs from the model. */
export interface Difference {
  /** One line: what differs, where. */
  readonly summary: string;
  readonly expected: unknown;
  readonly observed: unknown;
  /** QEMU's dump, registers, serial output... */
  readonly evidence?: unknown;
  /**
   * A smaller case that should fail the same way (the one read or query that differed). Greedy
   * shrinking cannot always reach it (a sweep cannot trade its count for its offset), so the runner
   * re-checks it and, if it fails, saves it as the counterexample.
   */
  readonly witness?: unknown;
  /**
   * Decided by a bound on the host's timing (a lateness quantile, a window's tick count): the
   * runner runs the case once more before it counts as failed (runner.ts runCases).
   */
  readonly timing?: boolean;
  /**
   * With `timing`: the host itself kept the case's vCPUs (or the QEMU thread that drives the
   * timer) from running for longer than the bound at once, measured during the case, in words.
   * Such a failure says nothing about the system under test either way: a re-run that fails so
   * is run again after a pause (runner.ts runCases), and only one on a quiet host confirms.
   */
  readonly noisyHost?: string;
}

export function difference(summary: string, expected: unknown, observed: unknown, extras: { evidence?: unknown; witness?: unknown; timing?: boolean; noisyHost?: string } = {}): Difference {
  return {
    summary,
    expected,
    observed,
    ...(extras.evidence === undefined ? {} : { evidence: extras.evidence }),
    ...(extras.witness === undefined ? {} : { witness: extras.witness }),
    ...(extras.timing ? { timing: true } : {}),
    ...(extras.timing && extras.noisyHost ? { noisyHost: extras.noisyHost } : {}),
  };
}

/** A named rule over an observation: it yields every difference it finds; none means it holds. */
export interface Rule<O> {
  readonly name: string;
  check(observation: O): Iterable<Difference>;
}

export function rule<O>(name: string, check: (observation: O) => Iterable<Difference>): Rule<O> {
  return { name, check };
}

/** What observing a case gave: the observation, or the difference that ended it (a VM that did not finish). */
export type Observation<O> = { readonly ok: true; readonly value: O } | { readonly ok: false; readonly difference: Difference };

/** Counters a property bumps as it works (cpuidQueries, deviceReads, vms, ...). */
export class Metrics {
  readonly counts: Record<string, number> = {};
  /** Measured samples by series (results' `measurements`), capped per series so results stay small. */
  readonly samples: Record<string, MeasurementSample[]> = {};
  add(name: string, n = 1): void {
    this.counts[name] = (this.counts[name] ?? 0) + n;
  }
  sample(series: string, value: number, labels?: Readonly<Record<string, string | number>>): void {
    const s = (this.samples[series] ??= []);
    if (s.length < Metrics.MAX_SAMPLES) s.push(labels ? { value, labels } : { value });
  }
  /** KVM's instant and peak values (the largest seen) and histograms (summed) over the property's VMs (suites/lib/coverage.ts). */
  readonly kvm: { readonly levels: Record<string, number>; readonly histograms: Record<string, Histogram> } = { levels: {}, histograms: {} };
  static readonly MAX_SAMPLES = 20_000;
}

/** What every property gets: the options, the guest, the host, the run's mutant, and its metrics. */
export interface PropertyEnv {
  readonly options: RunOptions;
  readonly guestElf: string;
  readonly host: HostFingerprint;
  readonly metrics: Metrics;
  /** The deliberately broken system the run targets (--mutant), resolved from the registry. */
  readonly mutant?: Mutant;
}

export interface PropertyDef<W, F, O> {
  readonly id: string;
  readonly family: string;
  readonly statement: string;
  /** What its VMs need beyond the family's machine (vCPUs, RAM, ...): data, not code. */
  readonly machine?: Partial<Pick<MachineConfig, 'cpus' | 'ramMiB'>>;
  /** A reason to skip with these options on this host, or null. */
  skip?(env: PropertyEnv): string | null;
  /** Facts the generator and the model need, gathered once per run. */
  facts(env: PropertyEnv): Promise<F>;
  arbitrary(facts: F, env: PropertyEnv): fc.Arbitrary<W>;
  /**
   * What `arbitrary` leaves out under these facts, each with why (a writer the vCPU cannot run):
   * recorded in the property's result and said once per family in results.json and the summary,
   * so a kind of case this host never generates is not silently missing.
   */
  notGenerated?(facts: F, env: PropertyEnv): readonly NotGenerated[];
  /** Fixed cases that run before the generated ones (a peer suite's sequence, say), within --runs. */
  examples?(facts: F, env: PropertyEnv): readonly W[];
  /** Run the case on the real system. */
  observe(c: W, facts: F, env: PropertyEnv): Promise<Observation<O>>;
  /** The claim, rule by rule. */
  readonly rules: readonly Rule<O>[];
  /**
   * How many times in a row a smaller case must fail to replace the one that failed (default 1).
   * A timing-dependent failure otherwise shrinks to the edge of the host's noise, where the
   * smallest case fails on one run in many and its replay no longer shows it (seen: a timer
   * mutant's shrunk case passed 5 replays of 5).
   */
  readonly confirmShrinks?: number;
  /** The pause before re-running a timing failure on a noisy host (runner.ts NOISY_PAUSE_MS; tests shorten it). */
  readonly noisyPauseMs?: number;
  /**
   * The case as self-checking programs (ReproPlan), or null when this case's verdict needs the
   * harness (timing, QMP). Absent: the property has no repro support.
   */
  repro?(c: W, facts: F, env: PropertyEnv): ReproPlan | null;
}

/**
 * A case as programs that judge themselves (kvmprop repro, reports/repro.ts): the VMs to run, in
 * order, each with a program whose checks (ir/checks.ts) carry the model's expected values, so
 * that plain QEMU shows the failure again with no harness and no model.
 */
export interface ReproPlan {
  readonly vms: readonly ReproVm[];
  /** What the checks do not cover that the property does (said in the directory's README). */
  readonly note?: string;
}

export interface ReproVm {
  /** The role the VM plays in the property (a mutant's QEMU arguments apply to its roles). */
  readonly role: VmRole;
  readonly program: Program;
  /** What this VM needs beyond the property's machine (vCPUs, RAM). */
  readonly config?: Partial<Pick<MachineConfig, 'cpus' | 'ramMiB'>>;
}

/** Properties are generic in their case, facts and observation; the registry does not care which. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the registry holds every kind
export type AnyProperty = PropertyDef<any, any, any>;

export function defineProperty<W, F, O>(def: PropertyDef<W, F, O>): PropertyDef<W, F, O> {
  return def;
}
