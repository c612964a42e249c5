/**
 * The kvmprop command line.
 *
 *   kvmprop run     run property families (vitest underneath), write DIR/results.json
 *   kvmprop replay  re-run one saved counterexample
 *   kvmprop doctor  host fingerprint and what is missing
 *   kvmprop list    suites, properties, mutants
 *   kvmprop build   build (or reuse) the guest
 *
 * Bad input gets one line on stderr and exit status 2; a run exits 0 exactly when nothing failed.
 */
import { watchRun } from './progress.js';
import { KtapStream } from '../reports/ktap.js';
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { collectFingerprint, doctorVerdicts, fingerprintId, formatFingerprint, type HostFingerprint } from '../harness/fingerprint.js';
import { buildGuest, GuestBuildError } from '../harness/guest/build.js';
import { fillAndFreeHostMemory } from '../harness/hostPattern.js';
import { createRunRoot, delegateSignals, removeRunRoot, RUNTIME_ROOT_ENV } from '../harness/runtime.js';
import { readCounterexample, CounterexampleError } from '../reports/counterexample.js';
import { OutDirError, prepareOutDir } from '../reports/outdir.js';
import { VCPU_CHOICE_ENV, type VcpuModelChoice } from '../harness/vcpuChoice.js';
import { HOST_CHECKS, hostFindings, MachineStartError, settleVcpuModel } from '../suites/lib/machine.js';
import { DeviationsError, loadDeviations, runConfigOf } from '../reports/deviations.js';
import { assembleResults, writePropertyRecord, writeResults } from '../reports/results.js';
import { validateResults, type PropertyResult, type ResultsFile, type RunOptionsRecord } from '../reports/schema.js';
import { defaultOptions, joinDashValues, OptionError, optionsRecord, optionsToEnv, parseRunArgs, PROJECT_ROOT, rerunCommand, runUsage, vcpuModel, type RunOptions } from '../suites/lib/options.js';
import { formatFailure, propertyEnv, replayCase } from '../suites/lib/runner.js';
import { KVM_METRIC_PREFIX, kvmSummaryLines, unmetClaims } from '../suites/lib/coverage.js';
import { FAMILIES, FAMILY_NAMES, familyNamed, mutantNamed, propertyById, selectedProperties, UnknownMutantError } from '../suites/registry.js';

export class UsageError extends Error {
  override name = 'UsageError';
}

const USAGE = `usage: kvmprop <command> [options]

commands:
  run       run property families against real QEMU/KVM and write DIR/results.json
  replay    re-run a saved counterexample: kvmprop replay FILE
  doctor    show the host fingerprint and what is missing
  list      list families, properties and mutants
  build     build the guest (cached by a hash of its sources)
  merge     merge results of shards or hosts: kvmprop merge RESULTS... --out FILE
  export    write results as JUnit XML, KTAP v1 or KCIDB JSON: kvmprop export --format junit|ktap|kcidb RESULTS --out FILE
  import    read a foreign suite's log as kvmprop results: kvmprop import --format kut-tap|ktap LOG --out FILE
  gate      fail on regressions from a baseline: kvmprop gate --baseline A.json --candidate B.json [--policy FILE] [--out DIR]
  repro     write a counterexample as a directory that reproduces it with QEMU alone: kvmprop repro FILE --out DIR
  report    write a self-contained HTML report (verdict, matrix, plots, counterexamples, host): kvmprop report RESULTS... --out DIR

families: ${FAMILY_NAMES.join(', ')}
${runUsage()}`;

function toolVersion(): string {
  return (JSON.parse(readFileSync(join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
}

/** `kvmprop run`'s options (suites/lib/options.ts has the table), checked against the registry. */
export function parseRunOptions(argv: readonly string[], cwd = process.cwd()): RunOptions {
  const { options: given } = parseRunArgs(argv, cwd);
  const families = given.families?.length ? given.families : FAMILY_NAMES;
  for (const f of families) if (!FAMILY_NAMES.includes(f)) throw new UsageError(`unknown family '${f}' (known: ${FAMILY_NAMES.join(', ')})`);
  for (const id of given.properties ?? []) {
    const p = propertyById(id);
    if (!p) throw new UsageError(`unknown property '${id}' (kvmprop list shows them)`);
    if (!families.includes(p.family)) throw new UsageError(`property '${id}' belongs to family '${p.family}', which this run does not select`);
  }
  let machine = given.machine;
  if (given.mutant) {
    const m = mutantNamed(given.mutant);
    if (m.machine && machine && machine !== m.machine) throw new UsageError(`mutant '${m.name}' needs --machine ${m.machine}`);
    machine ??= m.machine;
  }
  let properties = given.properties;
  if (given.shard) {
    // Shards split the selected properties round-robin, in the registry's order: every shard of
    // one selection gets a stable, disjoint part, and together they cover it.
    const [i, n] = given.shard.split('/').map(Number) as [number, number];
    const all = selectedProperties(families, given.properties ?? []);
    properties = all.filter((_, k) => k % n === i - 1).map((p) => p.id);
    if (properties.length === 0) throw new UsageError(`--shard ${given.shard}: no property falls in this shard (${all.length} selected: use at most ${all.length} shards)`);
  }
  return defaultOptions({ ...given, families, ...(properties ? { properties } : {}), out: given.out ?? resolve(cwd, 'results'), ...(machine ? { machine } : {}) });
}

/** What a run cannot start without; each missing piece is one line with the fix. */
export async function preflight(o: RunOptions): Promise<string[]> {
  const problems: string[] = [];
  if (o.accel === 'kvm') {
    if (!existsSync('/dev/kvm')) problems.push('/dev/kvm does not exist: load the kvm modules (modprobe kvm_intel or kvm_amd) or use --accel tcg');
    else {
      try {
        accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
      } catch {
        problems.push('/dev/kvm is not writable by this user: sudo usermod -aG kvm "$USER" (then log in again), or run as root');
      }
    }
  }
  const q = await execa(o.qemu, ['--version'], { reject: false });
  if (q.exitCode !== 0) problems.push(`QEMU not found or not runnable: ${o.qemu} (apt-get install qemu-system-x86, or --qemu PATH)`);
  try {
    loadDeviations(o.deviations);
  } catch (e) {
    problems.push((e as Error).message);
  }
  return problems;
}

function vitestEntry(): string {
  const require = createRequire(import.meta.url);
  return join(require.resolve('vitest/package.json').replace(/package\.json$/, ''), 'vitest.mjs');
}

function line(r: PropertyResult): string {
  // KVM's counters (kvm.*) stay in results.json and get their own lines: dozens would bury this one.
  const m = Object.entries(r.metrics)
    .filter(([k]) => !k.startsWith(KVM_METRIC_PREFIX))
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const status = r.status.toUpperCase().padEnd(15);
  return `${status} ${r.id}  (${r.numRuns} runs, ${(r.durationMs / 1000).toFixed(1)} s${m ? `, ${m}` : ''})${r.status === 'skip' || r.status === 'known-deviation' ? `\n                ${r.reason ?? ''}` : ''}`;
}

export function summarize(results: ResultsFile, file: string, o: RunOptions): string {
  const lines = ['', `kvmprop ${results.tool.version}: ${results.properties.length} properties, seed ${results.options.seed}, host ${results.hostId}`];
  for (const f of results.findings) {
    lines.push(`${(f.status === 'fail' ? 'FAIL' : 'KNOWN-DEVIATION').padEnd(15)} ${f.check}  ${f.summary}`, `                QEMU: ${f.qemuMessage}`);
  }
  for (const p of results.properties) lines.push(line(p));
  lines.push(...kvmSummaryLines(results.properties));
  for (const n of results.notGenerated ?? []) lines.push(`${n.family}: not generated: ${n.what} (${n.why})`);
  for (const p of results.properties.filter((x) => x.status === 'fail')) lines.push('', formatFailure(p, o));
  for (const e of results.errors) lines.push(`ERROR ${e}`);
  const t = results.totals;
  const unmet = unmetClaims(results.properties);
  lines.push('', `pass ${t.pass}, fail ${t.fail}, known-deviation ${t['known-deviation']}, skip ${t.skip}${unmet ? `, unmet KVM coverage claims ${unmet} (warning)` : ''}`);
  const m = results.metrics;
  // What the run exercised, in the words of the families' manifests.
  const specs = [...new Map(o.families.flatMap((n) => familyNamed(n)?.metrics ?? []).map((x) => [x.key, x])).values()];
  if (specs.some((x) => m[x.key])) lines.push(`exercised: ${specs.map((x) => `${m[x.key] ?? 0} ${x.label}`).join(', ')}`);
  lines.push(`results: ${file}`);
  return lines.join('\n');
}

async function cmdRun(argv: readonly string[]): Promise<number> {
  const o = parseRunOptions(argv);
  const problems = await preflight(o);
  if (problems.length) throw new UsageError(problems.join('\n'));
  const known = loadDeviations(o.deviations);
  const startedAt = new Date();
  // Refuses (one line) a directory holding anything kvmprop did not write; clears an earlier result.
  prepareOutDir(o.out);
  const [guest, host] = await Promise.all([buildGuest(), collectFingerprint({ qemu: o.qemu })]);
  // The machine is settled once for the whole run: which vCPU model, and whether it starts at all.
  let choice: VcpuModelChoice | undefined;
  let startError: MachineStartError | undefined;
  try {
    choice = await settleVcpuModel(o, guest.elf, { fresh: true });
  } catch (e) {
    if (!(e instanceof MachineStartError)) throw e;
    startError = e;
  }
  if (choice) host.qemuCpu = { requested: choice.requested, used: choice.used, ...(choice.fallback ? { fallback: choice.fallback } : {}) };
  writeFileSync(join(o.out, 'host.json'), JSON.stringify(host, null, 2) + '\n');
  const findings = hostFindings({ ...(choice ? { choice } : {}), ...(startError ? { startError } : {}) }, known, host, runConfigOf(o));
  if (!startError) for (const f of findings) process.stderr.write(`kvmprop: host finding ${f.check} (${f.status}): ${f.summary}\n  QEMU: ${f.qemuMessage}\n`);
  const expected = selectedProperties(o.families, o.properties);
  const ktap = o.ktap ? new KtapStream((s) => process.stdout.write(s)) : undefined;
  const errors: string[] = [];
  let interrupted: NodeJS.Signals | null = null;
  if (startError) {
    // One root cause, reported once: no property runs on a machine that does not start.
    const reason = `not run: the configured machine does not start (host finding ${HOST_CHECKS.machine})`;
    for (const p of expected) {
      writePropertyRecord(o.out, { id: p.id, family: p.family, statement: p.statement, status: 'skip', reason, numRuns: 0, seed: o.seed, durationMs: 0, metrics: {} });
    }
  } else {
    const fill = await fillAndFreeHostMemory();
    const root = createRunRoot();
    process.stderr.write(
      `kvmprop: guest ${guest.hash}${guest.cached ? ' (cached)' : ''}; vCPU model ${choice!.used}; host pattern: ${fill.anonymousMiB} MiB anonymous + ${fill.pageCacheMiB} MiB page cache filled and freed; seed ${o.seed}; run root ${root}\n`,
    );
    if (ktap) ktap.begin(expected.length, `kvmprop ${toolVersion()}: host ${fingerprintId(host)}, seed ${o.seed}${o.shard ? `, shard ${o.shard}` : ''}`);
    const child = execa(process.execPath, [vitestEntry(), 'run', '--project', 'properties', '--config', join(PROJECT_ROOT, 'vitest.config.ts')], {
      cwd: PROJECT_ROOT,
      env: { ...optionsToEnv(o), [RUNTIME_ROOT_ENV]: root, [VCPU_CHOICE_ENV]: JSON.stringify(choice) },
      // With --ktap stdout is the KTAP stream alone: vitest's own output goes to stderr.
      stdio: ['ignore', ktap ? process.stderr : 'inherit', 'inherit'],
      reject: false,
      // Its own process group, signalled as a whole: vitest's main process exits on SIGINT without
      // waiting for its workers, and a worker nobody signals runs its case on, QEMUs and all (seen:
      // a run interrupted by a SIGINT to this process alone left a worker and three QEMUs behind).
      detached: true,
    });
    const forward = (sig: NodeJS.Signals) => {
      interrupted = sig;
      try {
        if (child.pid) process.kill(-child.pid, sig);
      } catch {
        child.kill(sig);
      }
    };
    const undelegate = delegateSignals(forward);
    const watch = watchRun({ out: o.out, root, expected: expected.map((p) => p.id), status: process.stderr, ...(ktap ? { ktap } : {}) });
    try {
      const r = await child;
      if (interrupted) errors.push(`run interrupted by ${interrupted}`);
      else if (r.exitCode !== 0 && r.exitCode !== 1) errors.push(`vitest exited with status ${r.exitCode ?? r.signal}`);
    } finally {
      watch.stop();
      undelegate();
      // Whatever a worker could not clean up (it was killed) goes with the run root; its QEMUs died
      // with it (setpriv --pdeathsig).
      removeRunRoot(root);
    }
  }
  const used = choice?.used ?? vcpuModel(o);
  const results = assembleResults({
    out: o.out,
    expected,
    options: optionsRecord(o, { used, ...(choice ? { requested: choice.requested } : {}) }) as unknown as RunOptionsRecord,
    host,
    hostId: fingerprintId(host),
    startedAt,
    toolVersion: toolVersion(),
    errors,
    findings,
  });
  const file = writeResults(o.out, results);
  if (ktap) {
    for (const p of results.properties) ktap.property(p);
    const t = results.totals;
    ktap.end(expected.map((p) => p.id), `pass ${t.pass}, fail ${t.fail}, known-deviation ${t['known-deviation']}, skip ${t.skip}`);
  }
  (ktap ? process.stderr : process.stdout).write(summarize(results, file, o) + '\n');
  if (startError) process.stderr.write(`kvmprop: the configured machine does not start: ${startError.qemuMessage}\n`);
  if (interrupted) return interrupted === 'SIGINT' ? 130 : 143;
  return results.status === 'pass' ? 0 : 1;
}

async function cmdReplay(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: joinDashValues(argv),
    strict: true,
    allowPositionals: true,
    options: { qemu: { type: 'string' }, 'qemu-arg': { type: 'string', multiple: true }, out: { type: 'string' } },
  });
  if (positionals.length !== 1) throw new UsageError('usage: kvmprop replay FILE');
  const file = resolve(positionals[0]!);
  let c;
  try {
    c = readCounterexample(file);
  } catch (e) {
    if (e instanceof CounterexampleError) throw new UsageError(e.message);
    throw e;
  }
  const def = propertyById(c.property);
  if (!def) throw new UsageError(`${file}: property '${c.property}' does not exist in this version of kvmprop`);
  const saved = c.options as Partial<RunOptions>;
  const o = defaultOptions({
    ...saved,
    ...(values.qemu ? { qemu: values.qemu } : {}),
    ...(values['qemu-arg'] ? { qemuArgs: values['qemu-arg'] } : {}),
    out: values.out ? resolve(values.out) : resolve(file, '..', '..'),
  });
  const problems = await preflight(o);
  if (problems.length) throw new UsageError(problems.join('\n'));
  const w = c.workload as { commands?: unknown; kind?: unknown } | null;
  if (w && typeof w === 'object' && Array.isArray(w.commands) && w.kind === undefined) {
    // A command list is a description, not a program: fast-check rebuilds it from the seed, path and replayPath.
    throw new UsageError(`${file}: the saved case is a command list, not a program; re-run it with: ${rerunCommand({ family: c.family, id: c.property, seed: c.seed, ...(c.path ? { path: c.path } : {}), ...(c.replayPath ? { replayPath: c.replayPath } : {}) }, o)}`);
  }
  process.stderr.write(`kvmprop: replaying ${c.property} (seed ${c.seed}, path ${c.path})\n  ${c.summary}\n`);
  // Replay shows the first difference as it is: no deviation waives it.
  const failure = await replayCase(def, c.workload, await propertyEnv(o));
  if (!failure) {
    process.stdout.write(`${c.property}: the counterexample no longer fails on this host\n`);
    return 0;
  }
  process.stdout.write(`${c.property} fails again (${failure.rule}):\n  ${failure.difference.summary}\n`);
  return 1;
}

async function cmdDoctor(argv: readonly string[]): Promise<number> {
  const { values } = parseArgs({ args: [...argv], strict: true, options: { qemu: { type: 'string' } } });
  const o = defaultOptions({ ...(values.qemu ? { qemu: values.qemu } : {}) });
  const fp: HostFingerprint = await collectFingerprint({ qemu: o.qemu });
  const verdicts = doctorVerdicts(fp);
  // Does a VM of the default configuration boot here, and with which vCPU model?
  if (fp.kvm.device === 'ok' && fp.qemu.found && fp.tools.gcc !== null && fp.tools.ld !== null) {
    try {
      const guest = await buildGuest();
      const choice = await settleVcpuModel(o, guest.elf, { fresh: true });
      fp.qemuCpu = { requested: choice.requested, used: choice.used, ...(choice.fallback ? { fallback: choice.fallback } : {}) };
      if (choice.fallback) {
        verdicts.push({ level: 'warn', item: 'vcpu-model', message: `${choice.fallback.reason} (QEMU: ${choice.fallback.qemuMessage})` });
      } else verdicts.push({ level: 'ok', item: 'vcpu-model', message: `a ${o.machine} VM boots with -cpu ${choice.used}` });
    } catch (e) {
      if (!(e instanceof MachineStartError)) throw e;
      verdicts.push({ level: 'error', item: 'vcpu-model', message: `no VM of the default configuration boots: ${e.qemuMessage || e.message}` });
    }
  }
  process.stdout.write(formatFingerprint(fp, verdicts) + '\n');
  return verdicts.some((v) => v.level === 'error') ? 1 : 0;
}

function cmdList(): number {
  const lines: string[] = [];
  for (const f of FAMILIES) {
    lines.push(`${f.name}: ${f.title}`);
    for (const p of f.properties) {
      lines.push(`  ${p.id}\n      ${p.statement}`);
      for (const r of p.rules) lines.push(`      - ${r.name}`);
    }
    if (f.mutants.length) lines.push(`  mutants (--mutant):`);
    for (const m of f.mutants) {
      const roles = m.roles === 'all' ? 'every VM' : `VMs: ${m.roles.join(', ')}`;
      lines.push(`    ${m.name}${m.machine ? ` [--machine ${m.machine}]` : ''}: breaks ${m.breaks.join(', ')} (${roles})\n        ${m.description}`);
    }
  }
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}

async function cmdBuild(): Promise<number> {
  const g = await buildGuest();
  process.stdout.write(`guest ${g.hash} ${g.cached ? '(cached)' : '(built)'}: ${g.elf}\n`);
  return 0;
}

export async function main(argv: readonly string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd && rest.some((a) => a === '--help' || a === '-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  try {
    switch (cmd) {
      case 'run':
        return await cmdRun(rest);
      case 'replay':
        return await cmdReplay(rest);
      case 'doctor':
        return await cmdDoctor(rest);
      case 'list':
        return cmdList();
      case 'build':
        return await cmdBuild();
      case 'merge':
        return (await import('../reports/merge.js')).cmdMerge(rest);
      case 'export':
        return (await import('../reports/junit.js')).cmdExport(rest);
      case 'import':
        return await (await import('../reports/tapImport.js')).cmdImport(rest);
      case 'gate':
        return await (await import('../reports/gate.js')).cmdGate(rest);
      case 'repro':
        return await (await import('../reports/repro.js')).cmdRepro(rest);
      case 'report':
        return await (await import('../reports/html.js')).cmdReport(rest);
      case '--version':
        process.stdout.write(`kvmprop ${toolVersion()}\n`);
        return 0;
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command '${cmd}' (kvmprop --help)`);
    }
  } catch (e) {
    if (e instanceof UsageError || e instanceof OptionError || e instanceof UnknownMutantError || e instanceof OutDirError || e instanceof GuestBuildError || e instanceof DeviationsError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`kvmprop: ${(e as Error).message}\n`);
      return 2;
    }
    throw e;
  }
}

/** Used by tests: absolute path of a results file, validated. */
export function readResults(file: string): ResultsFile {
  const r = JSON.parse(readFileSync(isAbsolute(file) ? file : resolve(file), 'utf8')) as ResultsFile;
  const problems = validateResults(r);
  if (problems.length) throw new Error(`invalid results file ${file}: ${problems.join('; ')}`);
  return r;
}
