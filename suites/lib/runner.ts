/**
 * Runs a property: observe each generated case and apply its rules under fast-check (run), let
 * known deviations cover exactly what they document (waive, waive.ts), and record the result and
 * the shrunk counterexample (persist, reports/). Properties only say what they check.
 */
import { join, relative } from 'node:path';
import fc from 'fast-check';
import { buildGuest } from '../../harness/guest/build.js';
import { collectFingerprint, fingerprintId, type HostFingerprint } from '../../harness/fingerprint.js';
import { VmSetupError } from '../../harness/vm.js';
import { loadDeviations, type DeviationsFile } from '../../reports/deviations.js';
import { writeCounterexample } from '../../reports/counterexample.js';
import { writePropertyRecord } from '../../reports/results.js';
import type { PropertyResult } from '../../reports/schema.js';
import { HOST_CHECKS, MachineStartError, settleVcpuModel } from './machine.js';
import { rerunCommand, type RunOptions } from './options.js';
import { Metrics, type AnyProperty, type Difference, type PropertyEnv } from './property.js';
import { Waiver } from './waive.js';
import { unmetRequirement } from './family.js';
import { familyNamed, mutantNamed } from '../registry.js';

/** The environment before a property adds its metrics. */
export type BaseEnv = Omit<PropertyEnv, 'metrics'> & {
  /** Set when the configured machine does not start: every property then skips, pointing at it. */
  readonly startFailure?: MachineStartError;
};

const hostCache = new Map<string, Promise<{ guestElf: string; host: HostFingerprint }>>();
const machineCache = new Map<string, Promise<MachineStartError | undefined>>();

/**
 * The environment for a set of options; the guest is built and the host read once per process and
 * QEMU, and the vCPU model settled once per configuration (machine.ts).
 */
export async function propertyEnv(options: RunOptions): Promise<BaseEnv> {
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
  const mutant = options.mutant ? mutantNamed(options.mutant) : undefined;
  return { options, guestElf, host, ...(mutant ? { mutant } : {}), ...(startFailure ? { startFailure } : {}) };
}

/** A case that failed: the rule that caught it (or the run that ended it) and the difference. */
export interface CaseFailure {
  readonly rule: string;
  readonly difference: Difference;
}

/** Observe one case and apply the rules; the first difference no known deviation covers fails it. */
export async function checkCase(def: AnyProperty, c: unknown, facts: unknown, env: PropertyEnv, waiver: Waiver): Promise<CaseFailure | null> {
  const o = await def.observe(c, facts, env);
  if (!o.ok) return waiver.waive(o.difference) ? null : { rule: 'the case runs to completion', difference: o.difference };
  for (const r of def.rules) {
    for (const d of r.check(o.value)) if (!waiver.waive(d)) return { rule: r.name, difference: d };
  }
  return null;
}

class CaseFailed extends Error {
  constructor(readonly failure: CaseFailure) {
    super(failure.difference.summary);
  }
}

function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

export function replayCommand(file: string): string {
  return `npx kvmprop replay ${file}`;
}

type Outcome = Omit<PropertyResult, 'id' | 'family' | 'statement' | 'durationMs' | 'metrics' | 'seed'> & { seed?: number };

/** Run one property under fast-check and return its result record (also written to out/properties). */
export async function runProperty(def: AnyProperty, base: BaseEnv, deviations?: DeviationsFile): Promise<PropertyResult> {
  const o = base.options;
  const waiver = new Waiver(deviations ?? loadDeviations(o.deviations), def.id, base.host, { accel: o.accel, machine: o.machine });
  const { startFailure, ...rest } = base;
  const env: PropertyEnv = { ...rest, metrics: new Metrics() };
  const t0 = Date.now();
  const persist = (r: Outcome): PropertyResult => {
    const result: PropertyResult = { id: def.id, family: def.family, statement: def.statement, seed: o.seed, ...r, durationMs: Date.now() - t0, metrics: env.metrics.counts };
    writePropertyRecord(o.out, result);
    return result;
  };

  if (startFailure) {
    return persist({ status: 'skip', reason: `not run: the configured machine does not start (host finding ${HOST_CHECKS.machine}: ${startFailure.qemuMessage})`, numRuns: 0 });
  }
  const family = familyNamed(def.family);
  const skip = (family ? unmetRequirement(family, env.host, o) : null) ?? def.skip?.(env);
  if (skip) return persist({ status: 'skip', reason: skip, numRuns: 0 });

  let facts: unknown;
  try {
    facts = await def.facts(env);
  } catch (e) {
    return persist({ status: 'fail', reason: `could not gather host facts: ${describeError(e)}`, numRuns: 0 });
  }

  // run
  let executed = 0;
  const prop = fc.asyncProperty(def.arbitrary(facts, env), async (c: unknown) => {
    executed++;
    const f = await checkCase(def, c, facts, env, waiver);
    if (f) throw new CaseFailed(f);
  });
  const details = await fc.check(prop, { seed: o.seed, numRuns: o.runs, ...(o.path ? { path: o.path } : {}) });

  // waive
  if (!details.failed) {
    const dev = waiver.first;
    if (!dev) return persist({ status: 'pass', numRuns: executed });
    return persist({ status: 'known-deviation', reason: waiver.summary(), numRuns: executed, deviation: { id: dev.id, citation: dev.citation } });
  }
  const err = details.errorInstance;
  if (!(err instanceof CaseFailed)) {
    // The harness itself broke (QEMU missing, a bad option, a bug of ours): not a finding about KVM.
    const reason = err instanceof VmSetupError ? `setup error: ${err.message}` : `error while checking: ${describeError(err)}`;
    return persist({ status: 'fail', reason, numRuns: executed, ...(details.counterexamplePath ? { path: details.counterexamplePath } : {}) });
  }
  let failure = err.failure;
  let c: unknown = details.counterexample?.[0];
  let shrunkFrom: unknown;
  if (failure.difference.witness !== undefined) {
    const again = await checkCase(def, failure.difference.witness, facts, env, waiver);
    if (again) {
      shrunkFrom = c;
      c = failure.difference.witness;
      failure = again;
    }
  }

  // persist
  const d = failure.difference;
  const path = details.counterexamplePath ?? '';
  const file = join(o.out, 'counterexamples', `${def.id}.json`);
  const replay = replayCommand(file);
  writeCounterexample(file, {
    schema: 'kvmprop-counterexample',
    version: 1,
    property: def.id,
    family: def.family,
    statement: def.statement,
    rule: failure.rule,
    seed: details.seed,
    path,
    replay,
    options: { ...o, path },
    hostId: fingerprintId(env.host),
    summary: d.summary,
    workload: c,
    ...(shrunkFrom === undefined ? {} : { fastCheckCounterexample: shrunkFrom }),
    expected: d.expected,
    observed: d.observed,
    ...(d.evidence === undefined ? {} : { evidence: d.evidence }),
    createdAt: new Date().toISOString(),
  });
  // A difference that ends the run (KVM stopped the VM, ...) can itself be a documented deviation.
  const deviation = waiver.deviationFor(d);
  return persist({
    status: deviation ? 'known-deviation' : 'fail',
    reason: waiver.any ? `${d.summary} (also: ${waiver.summary()})` : d.summary,
    rule: failure.rule,
    numRuns: executed,
    seed: details.seed,
    path,
    counterexample: relative(o.out, file),
    replay,
    ...(deviation ? { deviation: { id: deviation.id, citation: deviation.citation } } : {}),
  });
}

/** Re-check one saved case with nothing waived: the first difference, as it is. */
export async function replayCase(def: AnyProperty, c: unknown, base: BaseEnv): Promise<CaseFailure | null> {
  const env: PropertyEnv = { options: base.options, guestElf: base.guestElf, host: base.host, metrics: new Metrics(), ...(base.mutant ? { mutant: base.mutant } : {}) };
  const facts = await def.facts(env);
  return checkCase(def, c, facts, env, Waiver.none(def.id, base.host));
}

/** The message a failed property prints: seed, path, the shrunk counterexample and how to replay it. */
export function formatFailure(r: PropertyResult, o: RunOptions): string {
  const lines = [`${r.id} failed: ${r.reason ?? 'no reason given'}`];
  if (r.rule) lines.push(`  rule: ${r.rule}`);
  lines.push(`  seed ${r.seed}${r.path ? `, path ${r.path}` : ''}`);
  if (r.counterexample) lines.push(`  counterexample: ${join(o.out, r.counterexample)}`);
  if (r.replay) lines.push(`  replay: ${r.replay}`);
  if (r.path) lines.push(`  or: ${rerunCommand(r, o)}`);
  return lines.join('\n');
}
