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
import { accessSync, constants, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { MUTANTS, mutantNamed } from '../bench/mutants.js';
import { collectFingerprint, doctorVerdicts, fingerprintId, formatFingerprint, type HostFingerprint } from '../harness/fingerprint.js';
import { buildGuest, GuestBuildError } from '../harness/guest/build.js';
import { fillAndFreeHostMemory } from '../harness/hostPattern.js';
import { createRunRoot, removeRunRoot, RUNTIME_ROOT_ENV } from '../harness/runtime.js';
import { MACHINE_TYPES, type Accel, type MachineType } from '../harness/vm.js';
import { readCounterexample, CounterexampleError } from '../reports/counterexample.js';
import { OutDirError, prepareOutDir } from '../reports/outdir.js';
import { VCPU_CHOICE_ENV, type VcpuModelChoice } from '../harness/vcpuChoice.js';
import { HOST_CHECKS, hostFindings, MachineStartError, settleVcpuModel } from '../suites/lib/machine.js';
import { DeviationsError, loadDeviations } from '../reports/deviations.js';
import { assembleResults, writeResults } from '../reports/results.js';
import { validateResults, type PropertyResult, type ResultsFile } from '../reports/schema.js';
import { defaultOptions, optionsToEnv, PROJECT_ROOT, vcpuModel, type RunOptions } from '../suites/lib/options.js';
import { fail, formatFailure, Metrics, suiteEnv, type SuiteEnv } from '../suites/lib/property.js';
import { propertyById, selectedProperties, SUITE_NAMES, SUITES } from '../suites/registry.js';

export class UsageError extends Error {
  override name = 'UsageError';
}

const USAGE = `usage: kvmprop <command> [options]

commands:
  run       run property families against real QEMU/KVM and write DIR/results.json
  replay    re-run a saved counterexample: kvmprop replay FILE
  doctor    show the host fingerprint and what is missing
  list      list suites, properties and mutants
  build     build the guest (cached by a hash of its sources)

run options:
  --suite S[,S...]     families to run (${SUITE_NAMES.join(', ')}; default: all)
  --property ID        only this property (repeatable)
  --runs N             cases per property (default 25)
  --seed S             fast-check seed (default: random, printed)
  --path P             fast-check path: with --seed, replays one recorded case
  --machine M          ${MACHINE_TYPES.join(' | ')} (default microvm)
  --accel A            kvm | tcg (default kvm)
  --cpu MODEL          -cpu model, e.g. host or host,-x2apic (default host; max under tcg)
  --kernel-irqchip X   on | split
  --qemu PATH          QEMU binary (default $KVMPROP_QEMU or qemu-system-x86_64)
  --qemu-arg A         extra QEMU argument, appended as is (repeatable)
  --mutant NAME        run against a deliberately broken system (kvmprop list)
  --out DIR            output directory (default ./results)
  --deviations FILE    known deviations (default reports/known-deviations.json)
  --stall-ms N         a vCPU with no progress for N ms is a hang (default 3000)
  --vm-timeout-ms N    per-VM limit (default 120000)
`;

function toolVersion(): string {
  return (JSON.parse(readFileSync(join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
}

/** `--qemu-arg -cpu` is what people type; parseArgs wants `--qemu-arg=-cpu`. */
function joinDashValues(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--qemu-arg' && i + 1 < argv.length) out.push(`--qemu-arg=${argv[++i]}`);
    else out.push(a);
  }
  return out;
}

function intOption(name: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got '${v}'`);
  return Number(v);
}

function oneOf<T extends string>(name: string, v: string | undefined, allowed: readonly T[]): T | undefined {
  if (v === undefined) return undefined;
  if (!allowed.includes(v as T)) throw new UsageError(`--${name} must be one of ${allowed.join(', ')}, got '${v}'`);
  return v as T;
}

export function parseRunOptions(argv: readonly string[], cwd = process.cwd()): RunOptions {
  const { values, positionals } = parseArgs({
    args: joinDashValues(argv),
    strict: true,
    allowPositionals: true,
    options: {
      suite: { type: 'string', multiple: true },
      property: { type: 'string', multiple: true },
      runs: { type: 'string' },
      seed: { type: 'string' },
      path: { type: 'string' },
      machine: { type: 'string' },
      accel: { type: 'string' },
      cpu: { type: 'string' },
      'kernel-irqchip': { type: 'string' },
      qemu: { type: 'string' },
      'qemu-arg': { type: 'string', multiple: true },
      mutant: { type: 'string' },
      out: { type: 'string' },
      deviations: { type: 'string' },
      'stall-ms': { type: 'string' },
      'vm-timeout-ms': { type: 'string' },
    },
  });
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const suites = (values.suite ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  for (const s of suites) if (!SUITES[s]) throw new UsageError(`unknown suite '${s}' (known: ${SUITE_NAMES.join(', ')})`);
  const chosenSuites = suites.length ? suites : SUITE_NAMES;
  const properties = values.property ?? [];
  for (const id of properties) {
    const p = propertyById(id);
    if (!p) throw new UsageError(`unknown property '${id}' (kvmprop list shows them)`);
    if (!chosenSuites.includes(p.suite)) throw new UsageError(`property '${id}' belongs to suite '${p.suite}', which this run does not select`);
  }
  if (values.path && values.seed === undefined) throw new UsageError('--path needs the --seed it was recorded with');
  if (values.path && !/^\d+(:\d+)*$/.test(values.path)) throw new UsageError(`--path must look like 3:0:1, got '${values.path}'`);
  const accel = oneOf<Accel>('accel', values.accel, ['kvm', 'tcg']);
  let machine = oneOf<MachineType>('machine', values.machine, MACHINE_TYPES);
  if (values.mutant) {
    const m = mutantNamed(values.mutant);
    if (m.machine && machine && machine !== m.machine) throw new UsageError(`mutant '${m.name}' needs --machine ${m.machine}`);
    machine ??= m.machine;
  }
  const out = resolve(cwd, values.out ?? 'results');
  const deviations = values.deviations ? resolve(cwd, values.deviations) : undefined;
  const seed = intOption('seed', values.seed, -(2 ** 31), 2 ** 31 - 1);
  const runs = intOption('runs', values.runs, 1, 1_000_000);
  const stallMs = intOption('stall-ms', values['stall-ms'], 100);
  const vmTimeoutMs = intOption('vm-timeout-ms', values['vm-timeout-ms'], 1000);
  const kernelIrqchip = oneOf<'on' | 'split'>('kernel-irqchip', values['kernel-irqchip'], ['on', 'split']);
  return defaultOptions({
    suites: chosenSuites,
    properties,
    out,
    ...(runs !== undefined ? { runs } : {}),
    ...(seed !== undefined ? { seed } : {}),
    ...(values.path ? { path: values.path } : {}),
    ...(machine ? { machine } : {}),
    ...(accel ? { accel } : {}),
    ...(values.cpu ? { cpu: values.cpu } : {}),
    ...(kernelIrqchip ? { kernelIrqchip } : {}),
    ...(values.qemu ? { qemu: values.qemu } : {}),
    qemuArgs: values['qemu-arg'] ?? [],
    ...(values.mutant ? { mutant: values.mutant } : {}),
    ...(deviations ? { deviations } : {}),
    ...(stallMs !== undefined ? { stallMs } : {}),
    ...(vmTimeoutMs !== undefined ? { vmTimeoutMs } : {}),
  });
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
  const m = Object.entries(r.metrics)
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
  for (const p of results.properties.filter((x) => x.status === 'fail')) lines.push('', formatFailure(p, o));
  for (const e of results.errors) lines.push(`ERROR ${e}`);
  const t = results.totals;
  lines.push('', `pass ${t.pass}, fail ${t.fail}, known-deviation ${t['known-deviation']}, skip ${t.skip}`);
  const m = results.metrics;
  if (m.cpuidQueries || m.deviceReads) lines.push(`exercised: ${m.cpuidQueries ?? 0} CPUID queries, ${m.deviceReads ?? 0} device reads, ${m.vms ?? 0} VMs`);
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
  const findings = hostFindings({ ...(choice ? { choice } : {}), ...(startError ? { startError } : {}) }, known, host);
  if (!startError) for (const f of findings) process.stderr.write(`kvmprop: host finding ${f.check} (${f.status}): ${f.summary}\n  QEMU: ${f.qemuMessage}\n`);
  const expected = selectedProperties(o.suites, o.properties);
  const errors: string[] = [];
  let interrupted: NodeJS.Signals | null = null;
  if (startError) {
    // One root cause, reported once: no property runs on a machine that does not start.
    const reason = `not run: the configured machine does not start (host finding ${HOST_CHECKS.machine})`;
    mkdirSync(join(o.out, 'properties'), { recursive: true });
    for (const p of expected) {
      const r: PropertyResult = { id: p.id, suite: p.suite, statement: p.statement, status: 'skip', reason, numRuns: 0, seed: o.seed, durationMs: 0, metrics: {} };
      writeFileSync(join(o.out, 'properties', `${p.id}.json`), JSON.stringify(r, null, 2) + '\n');
    }
  } else {
    const fill = await fillAndFreeHostMemory();
    process.stderr.write(
      `kvmprop: guest ${guest.hash}${guest.cached ? ' (cached)' : ''}; vCPU model ${choice!.used}; host pattern: ${fill.anonymousMiB} MiB anonymous + ${fill.pageCacheMiB} MiB page cache filled and freed; seed ${o.seed}\n`,
    );
    const root = createRunRoot();
    const child = execa(process.execPath, [vitestEntry(), 'run', '--project', 'properties', '--config', join(PROJECT_ROOT, 'vitest.config.ts')], {
      cwd: PROJECT_ROOT,
      env: { ...optionsToEnv(o), [RUNTIME_ROOT_ENV]: root, [VCPU_CHOICE_ENV]: JSON.stringify(choice) },
      stdio: ['ignore', 'inherit', 'inherit'],
      reject: false,
    });
    const forward = (sig: NodeJS.Signals) => {
      interrupted = sig;
      child.kill(sig);
    };
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    try {
      const r = await child;
      if (interrupted) errors.push(`run interrupted by ${interrupted}`);
      else if (r.exitCode !== 0 && r.exitCode !== 1) errors.push(`vitest exited with status ${r.exitCode ?? r.signal}`);
    } finally {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
      // Whatever a worker could not clean up (it was killed) goes with the run root; its QEMUs died
      // with it (setpriv --pdeathsig).
      removeRunRoot(root);
    }
  }
  const used = choice?.used ?? vcpuModel(o);
  const results = assembleResults({
    out: o.out,
    expected,
    options: {
      suites: o.suites,
      runs: o.runs,
      seed: o.seed,
      machine: o.machine,
      accel: o.accel,
      cpu: used,
      ...(choice && choice.requested !== used ? { cpuRequested: choice.requested } : {}),
      ...(o.kernelIrqchip ? { kernelIrqchip: o.kernelIrqchip } : {}),
      qemu: o.qemu,
      qemuArgs: o.qemuArgs,
      ...(o.mutant ? { mutant: o.mutant } : {}),
    },
    host,
    hostId: fingerprintId(host),
    startedAt,
    toolVersion: toolVersion(),
    errors,
    findings,
  });
  const file = writeResults(o.out, results);
  process.stdout.write(summarize(results, file, o) + '\n');
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
  process.stderr.write(`kvmprop: replaying ${c.property} (seed ${c.seed}, path ${c.path})\n  ${c.summary}\n`);
  const base = await suiteEnv(o);
  // Replay shows the first difference as it is: no deviation waives it.
  const env: SuiteEnv = { ...base, metrics: new Metrics(), mismatch: (summary, expected, observed, extras) => fail(summary, expected, observed, extras) };
  const facts = await def.facts(env);
  const verdict = await def.check(c.workload, facts, env);
  if (verdict.ok) {
    process.stdout.write(`${c.property}: the counterexample no longer fails on this host\n`);
    return 0;
  }
  process.stdout.write(`${c.property} fails again:\n  ${verdict.summary}\n`);
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
  for (const [suite, props] of Object.entries(SUITES)) {
    lines.push(`${suite}:`);
    for (const p of props) lines.push(`  ${p.id}\n      ${p.statement}`);
  }
  lines.push('mutants (--mutant):');
  for (const m of Object.values(MUTANTS)) lines.push(`  ${m.name}${m.machine ? ` [--machine ${m.machine}]` : ''}: breaks ${m.breaks.join(', ')}\n      ${m.description}`);
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
    if (e instanceof UsageError || e instanceof OutDirError || e instanceof GuestBuildError || e instanceof DeviationsError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`kvmprop: ${(e as Error).message}\n`);
      return 2;
    }
    if ((e as Error).name === 'UnknownMutantError') {
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
