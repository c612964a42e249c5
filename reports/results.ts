/**
 * Assemble results.json from the per-property records the workers wrote (out/properties/*.json).
 * A property that was selected but left no record (its worker crashed, the run was interrupted)
 * is an error of the run, listed as such: partial results are kept, never passed off as complete.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HostFingerprint } from '../harness/fingerprint.js';
import { RESULTS_SCHEMA, RESULTS_VERSION, sumMetrics, tally, type HostFinding, type PropertyResult, type ResultsFile, type RunOptionsRecord } from './schema.js';

/** One property's result record, written by the worker that ran it (out/properties/ID.json). */
export function writePropertyRecord(out: string, r: PropertyResult): void {
  mkdirSync(join(out, 'properties'), { recursive: true });
  writeFileSync(join(out, 'properties', `${r.id}.json`), JSON.stringify(r, null, 2) + '\n');
}

export function readPropertyRecords(out: string): PropertyResult[] {
  const dir = join(out, 'properties');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as PropertyResult);
}

export function assembleResults(args: {
  out: string;
  expected: readonly { id: string; family: string; statement: string }[];
  options: RunOptionsRecord;
  host: HostFingerprint;
  hostId: string;
  startedAt: Date;
  toolVersion: string;
  errors: readonly string[];
  findings: readonly HostFinding[];
}): ResultsFile {
  const got = new Map(readPropertyRecords(args.out).map((r) => [r.id, r]));
  const errors = [...args.errors];
  const properties: PropertyResult[] = [];
  for (const e of args.expected) {
    const r = got.get(e.id);
    if (r) properties.push(r);
    else errors.push(`${e.id}: no result recorded (the run stopped before this property finished)`);
  }
  const totals = tally(properties);
  const notGenerated = [...new Map(properties.flatMap((p) => (p.notGenerated ?? []).map((n) => ({ family: p.family, ...n }))).map((n) => [JSON.stringify(n), n])).values()];
  return {
    schema: RESULTS_SCHEMA,
    version: RESULTS_VERSION,
    tool: { name: 'kvmprop', version: args.toolVersion },
    startedAt: args.startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    options: args.options,
    host: args.host,
    hostId: args.hostId,
    findings: args.findings,
    properties,
    ...(notGenerated.length ? { notGenerated } : {}),
    totals,
    metrics: sumMetrics(properties),
    status: totals.fail > 0 || errors.length > 0 || args.findings.some((f) => f.status === 'fail') ? 'fail' : 'pass',
    errors,
  };
}

export function writeResults(out: string, r: ResultsFile): string {
  const file = join(out, 'results.json');
  writeFileSync(file, JSON.stringify(r, null, 2) + '\n');
  return file;
}
