/**
 * Results files to test report code with: one property record and one results.json, with
 * defaults a test overrides field by field. Shared by the writer, import and merge tests.
 */
import type { HostFingerprint } from '../../harness/fingerprint.js';
import { RESULTS_SCHEMA, RESULTS_VERSION, sumMetrics, tally, type PropertyResult, type ResultsFile } from '../schema.js';

/** A host with only what the writers read. */
export function sampleHost(release = '6.18.44', over: Record<string, unknown> = {}): HostFingerprint {
  return { schema: 1, collectedAt: '2026-12-01T00:00:00.000Z', kernel: { release, version: `Linux ${release}` }, qemu: { path: 'qemu', found: true, version: '7.2.22' }, ...over } as unknown as HostFingerprint;
}

/** A passing property record (family from the id), `over` on top. */
export function sampleProperty(over: Partial<PropertyResult> & Pick<PropertyResult, 'id'>): PropertyResult {
  return { family: over.id.split('.')[0]!, statement: `${over.id} holds`, status: 'pass', numRuns: 10, seed: 1, durationMs: 1000, metrics: { vms: 2 }, ...over };
}

/** A results file around the properties, totals and status derived from them, `over` on top. */
export function sampleResults(properties: PropertyResult[], over: Partial<ResultsFile> = {}): ResultsFile {
  const totals = tally(properties);
  return {
    schema: RESULTS_SCHEMA,
    version: RESULTS_VERSION,
    tool: { name: 'kvmprop', version: '0.1.0' },
    startedAt: '2026-12-01T10:00:00.000Z',
    finishedAt: '2026-12-01T10:05:00.000Z',
    options: { families: [...new Set(properties.map((p) => p.family))], runs: 10, seed: 1, machine: 'microvm', accel: 'kvm', cpu: 'host', qemu: 'qemu-system-x86_64', qemuArgs: [] },
    host: sampleHost(),
    hostId: 'aaaaaaaaaaaa',
    findings: [],
    properties,
    totals,
    metrics: sumMetrics(properties),
    status: totals.fail || over.errors?.length ? 'fail' : 'pass',
    errors: [],
    ...over,
  };
}
