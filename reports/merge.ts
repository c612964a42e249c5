/**
 * `kvmprop merge`: several results files (shards of one run, runs on several hosts, imported
 * kvm-unit-tests or kselftest logs) into one, so that one gate and one report cover them all.
 *
 * Hosts are told apart by `hostId`: the fingerprintId of the host fingerprint (kernel release, KVM
 * modules and their parameters, QEMU version, CPU identity), which `kvmprop run` records; imported
 * logs carry 'unknown' unless `kvmprop import --host host.json|--host-id ID` names the host. Two
 * files with one hostId are shards of one host: a property is kept once per (hostId, property id);
 * the same property twice on one host with the same status is a duplicate (the first is kept),
 * with different statuses it is an error (MergeError), never a silent choice. Shards are expected
 * to share their run options; each source's options stay in `sources`.
 *
 * The merged file is a ResultsFile (validateResults accepts it) with these additions
 * (MergedResultsFile): every property and finding carries its `hostId`; `hosts` lists each host
 * once with its fingerprint and options; `sources` lists the files merged. Totals and metrics are
 * recomputed (tally, sumMetrics); the top-level `host` and `options` are the first file's (options
 * with the union of families), and the top-level `hostId` is the one host's id, or the ids joined
 * with '+'. Counterexample paths are rebased onto the merged file's directory.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { parseArgs } from 'node:util';
import type { HostFingerprint } from '../harness/fingerprint.js';
import { sumMetrics, tally, validateResults, type HostFinding, type PropertyResult, type ResultsFile, type RunOptionsRecord } from './schema.js';
import { commandFailure } from './commandFailure.js';

export type HostedProperty = PropertyResult & { readonly hostId: string };
export type HostedFinding = HostFinding & { readonly hostId: string };

export interface MergedHost {
  readonly hostId: string;
  readonly host: HostFingerprint;
  readonly options: RunOptionsRecord;
  readonly tool: ResultsFile['tool'];
  readonly startedAt: string;
  readonly finishedAt: string;
}

export interface MergeSource {
  /** The file as given to merge (or as the merged input recorded it). */
  readonly file: string;
  readonly hostId: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly options: RunOptionsRecord;
  readonly properties: number;
  readonly status: 'pass' | 'fail';
  /** Set for a file made by `kvmprop import`. */
  readonly imported?: unknown;
}

export interface MergedResultsFile extends ResultsFile {
  readonly properties: readonly HostedProperty[];
  readonly findings: readonly HostedFinding[];
  readonly hosts: readonly MergedHost[];
  readonly sources: readonly MergeSource[];
}

export class MergeError extends Error {
  override name = 'MergeError';
}

/** The hosts of a results file: its `hosts` list when merged, else its one host. */
export function hostsOf(r: ResultsFile): readonly MergedHost[] {
  const m = r as Partial<MergedResultsFile>;
  if (Array.isArray(m.hosts) && m.hosts.length) return m.hosts;
  return [{ hostId: r.hostId, host: r.host, options: r.options, tool: r.tool, startedAt: r.startedAt, finishedAt: r.finishedAt }];
}

/** The host a property (or finding) of this file ran on. */
export function hostIdOf(x: PropertyResult | HostFinding, r: ResultsFile): string {
  const h = (x as { hostId?: unknown }).hostId;
  return typeof h === 'string' ? h : r.hostId;
}

export interface MergeInput {
  readonly file: string;
  readonly results: ResultsFile;
}

/** Read one results file (or DIR/results.json), checked with validateResults; MergeError otherwise. */
export function readResultsFile(path: string): MergeInput {
  let file = path;
  try {
    if (statSync(path).isDirectory()) file = join(path, 'results.json');
  } catch {
    // reported by the read below
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new MergeError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new MergeError(`${file} is not valid JSON: ${(e as Error).message.split('\n')[0]}`);
  }
  const problems = validateResults(raw);
  if (problems.length) throw new MergeError(`${file} is not a kvmprop results file: ${problems[0]}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`);
  return { file, results: raw as ResultsFile };
}

const toPosix = (p: string) => p.split(sep).join('/');

/**
 * Merge results files in the order given. `outDir`: where the merged file will live, to rebase
 * counterexample paths (relative to each source's directory) onto it; without it they stay as they are.
 */
export function mergeResults(inputs: readonly MergeInput[], opts: { outDir?: string } = {}): MergedResultsFile {
  if (!inputs.length) throw new MergeError('nothing to merge: give at least one results file');
  const props = new Map<string, { p: HostedProperty; file: string }>();
  const findings = new Map<string, HostedFinding>();
  const hosts = new Map<string, MergedHost>();
  const sources: MergeSource[] = [];
  const errors: { hostId: string; e: string }[] = [];
  const families: string[] = [];
  for (const { file, results: r } of inputs) {
    const problems = validateResults(r);
    if (problems.length) throw new MergeError(`${file} is not a kvmprop results file: ${problems[0]}`);
    for (const h of hostsOf(r)) {
      const had = hosts.get(h.hostId);
      hosts.set(h.hostId, had ? { ...had, startedAt: min(had.startedAt, h.startedAt), finishedAt: max(had.finishedAt, h.finishedAt) } : h);
    }
    for (const f of r.options?.families ?? []) if (!families.includes(f)) families.push(f);
    for (const p of r.properties) {
      const hostId = hostIdOf(p, r);
      const key = `${hostId}\u0000${p.id}`;
      const seen = props.get(key);
      if (seen) {
        if (seen.p.status !== p.status) {
          throw new MergeError(`conflicting results for ${p.id} on host ${hostId}: ${seen.p.status} in ${seen.file}, ${p.status} in ${file}`);
        }
        continue;
      }
      let counterexample = p.counterexample;
      if (counterexample && opts.outDir && !isAbsolute(counterexample)) counterexample = toPosix(relative(resolve(opts.outDir), resolve(dirname(file), counterexample)));
      props.set(key, { p: { ...p, ...(counterexample ? { counterexample } : {}), hostId }, file });
    }
    for (const f of r.findings) {
      const hostId = hostIdOf(f, r);
      const key = JSON.stringify([hostId, f.check, f.status, f.summary]);
      if (!findings.has(key)) findings.set(key, { ...f, hostId });
    }
    const srcs = (r as Partial<MergedResultsFile>).sources;
    if (Array.isArray(srcs) && srcs.length) sources.push(...srcs);
    else {
      const imported = (r as { imported?: unknown }).imported;
      sources.push({ file, hostId: r.hostId, startedAt: r.startedAt, finishedAt: r.finishedAt, options: r.options, properties: r.properties.length, status: r.status, ...(imported ? { imported } : {}) });
    }
    // A merged input's errors already name their host.
    for (const e of r.errors) errors.push({ hostId: Array.isArray(srcs) ? '' : r.hostId, e });
  }
  const first = inputs[0]!.results;
  const hostList = [...hosts.values()];
  const properties = [...props.values()].map((x) => x.p);
  const findingList = [...findings.values()];
  const totals = tally(properties);
  const errorList = errors.map(({ hostId, e }) => (hostList.length > 1 && hostId ? `${hostId}: ${e}` : e));
  return {
    schema: first.schema,
    version: first.version,
    tool: first.tool,
    startedAt: inputs.map((i) => i.results.startedAt).reduce(min),
    finishedAt: inputs.map((i) => i.results.finishedAt).reduce(max),
    options: { ...first.options, families },
    host: first.host,
    hostId: hostList.length === 1 ? hostList[0]!.hostId : hostList.map((h) => h.hostId).join('+'),
    findings: findingList,
    properties,
    totals,
    metrics: sumMetrics(properties),
    status: totals.fail > 0 || errorList.length > 0 || findingList.some((f) => f.status === 'fail') ? 'fail' : 'pass',
    errors: errorList,
    hosts: hostList,
    sources,
  };
}

const min = (a: string, b: string) => (b < a ? b : a);
const max = (a: string, b: string) => (b > a ? b : a);

/**
 * `kvmprop merge RESULTS... --out FILE` (a RESULTS may be a run's directory). Writes the merged
 * file (stdout without --out) and one summary line on stderr; exit 0 when written, 2 with one line
 * for bad input or a conflict. Merging does not judge: the gate reads the merged file's status.
 */
export function cmdMerge(argv: readonly string[]): number {
  try {
    const { values, positionals } = parseArgs({ args: [...argv], strict: true, allowPositionals: true, options: { out: { type: 'string' } } });
    if (!positionals.length) throw new MergeError('usage: kvmprop merge RESULTS... [--out FILE]');
    const inputs = positionals.map(readResultsFile);
    const merged = mergeResults(inputs, values.out ? { outDir: dirname(resolve(values.out)) } : {});
    const json = JSON.stringify(merged, null, 2) + '\n';
    if (values.out) writeFileSync(values.out, json);
    else process.stdout.write(json);
    const t = merged.totals;
    process.stderr.write(
      `kvmprop: merged ${inputs.length} file${inputs.length === 1 ? '' : 's'}, ${merged.hosts.length} host${merged.hosts.length === 1 ? '' : 's'}: ` +
        `${merged.properties.length} results (pass ${t.pass}, fail ${t.fail}, known-deviation ${t['known-deviation']}, skip ${t.skip}), status ${merged.status}${values.out ? ` → ${values.out}` : ''}\n`,
    );
    return 0;
  } catch (e) {
    return commandFailure(e, [MergeError]);
  }
}
