/**
 * Run options: what `kvmprop run` was asked for, defined once. The table below is the only place an
 * option is spelled: the CLI parses it from the table, the usage text is printed from it, the
 * rerun command and the results record are made from it, and the defaults live in it. The CLI
 * passes the parsed options to the vitest workers through the environment (one variable, JSON), so
 * a property file sees exactly what the user typed.
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { defaultMachineConfig, MACHINE_TYPES, type Accel, type MachineConfig, type MachineType } from '../../harness/vm.js';
import { defaultVcpuModel, publishedChoice } from '../../harness/vcpuChoice.js';
import { PROJECT_ROOT } from '../../harness/guest/build.js';

export { PROJECT_ROOT };
export const OPTIONS_ENV = 'KVMPROP_OPTIONS';
export const DEFAULT_DEVIATIONS = resolve(PROJECT_ROOT, 'reports', 'known-deviations.json');

export interface RunOptions {
  /** Property families to run. */
  readonly families: readonly string[];
  /** Only properties whose id equals one of these (empty: all). */
  readonly properties: readonly string[];
  readonly runs: number;
  readonly seed: number;
  /** fast-check replay path: with seed, re-runs exactly one recorded counterexample. */
  readonly path?: string;
  /** fast-check commands' replayPath: with seed and path, replays a stateful case's shrunk commands. */
  readonly replayPath?: string;
  readonly machine: MachineType;
  readonly accel: Accel;
  /**
   * The -cpu model the user gave (used as given, never changed). Absent: the default, `host`
   * (`max` under TCG) or the nearest model that starts on this host (harness/vcpuModel.ts).
   */
  readonly cpu?: string;
  readonly kernelIrqchip?: 'on' | 'split' | 'off';
  readonly qemu: string;
  readonly qemuArgs: readonly string[];
  /** Absolute output directory (results.json, properties/, counterexamples/). */
  readonly out: string;
  /** Known-deviations file. */
  readonly deviations: string;
  /** Run against a deliberately broken system (suites/<family>/mutants.ts). */
  readonly mutant?: string;
  /**
   * Timer families: how late (µs) a timer interrupt may arrive after its expiry, at the quantile the
   * lateness property bounds. Absent: calibrated in the same run from the host's own timer-wakeup
   * noise (suites/timers/clock.ts), never from the guest timers under test.
   */
  readonly latenessBoundUs?: number;
  /** Per-VM limits. */
  readonly vmTimeoutMs: number;
  readonly stallMs: number;
  /** Run only every n-th selected property, starting at the i-th ("i/n"): one shard of a fleet's run. */
  readonly shard?: string;
  /** Stream KTAP v1 on stdout as properties finish (the summary then goes to stderr). */
  readonly ktap?: boolean;
}

export class OptionError extends Error {
  override name = 'OptionError';
}

type Kind = 'list' | 'int' | 'string' | 'path' | 'enum' | 'flag';

interface OptionSpec<K extends keyof RunOptions = keyof RunOptions> {
  readonly key: K;
  readonly flag: string;
  /** Older spellings still accepted (kvmprop 0.1 called families suites). */
  readonly aliases?: readonly string[];
  readonly kind: Kind;
  readonly arg: string;
  readonly help: string;
  readonly values?: readonly string[];
  readonly min?: number;
  readonly max?: number;
  /** Part of the `kvmprop run` line that re-runs a recorded case (when not the default). */
  readonly rerun: boolean;
  /** Part of results.json's options record. */
  readonly record: boolean;
}

const opt = <K extends keyof RunOptions>(s: OptionSpec<K>): OptionSpec<K> => s;

/** Every `kvmprop run` option, in the order the usage text shows them. */
export const RUN_OPTIONS: readonly OptionSpec[] = [
  opt({ key: 'families', flag: 'family', aliases: ['suite'], kind: 'list', arg: 'F[,F...]', help: 'property families to run (default: all; --suite is the old spelling)', rerun: true, record: true }),
  opt({ key: 'properties', flag: 'property', kind: 'list', arg: 'ID', help: 'only this property (repeatable)', rerun: true, record: false }),
  opt({ key: 'runs', flag: 'runs', kind: 'int', arg: 'N', help: 'cases per property', min: 1, max: 1_000_000, rerun: false, record: true }),
  opt({ key: 'seed', flag: 'seed', kind: 'int', arg: 'S', help: 'fast-check seed (default: random, printed)', min: -(2 ** 31), max: 2 ** 31 - 1, rerun: true, record: true }),
  opt({ key: 'path', flag: 'path', kind: 'string', arg: 'P', help: 'fast-check path: with --seed, replays one recorded case', rerun: true, record: false }),
  opt({ key: 'replayPath', flag: 'replay-path', kind: 'string', arg: 'R', help: "fast-check commands' replayPath: with --seed and --path, replays a stateful case", rerun: true, record: false }),
  opt({ key: 'machine', flag: 'machine', kind: 'enum', arg: 'M', values: MACHINE_TYPES, help: 'machine type', rerun: true, record: true }),
  opt({ key: 'accel', flag: 'accel', kind: 'enum', arg: 'A', values: ['kvm', 'tcg'], help: 'accelerator', rerun: true, record: true }),
  opt({ key: 'cpu', flag: 'cpu', kind: 'string', arg: 'MODEL', help: '-cpu model, used as given (default: host, or what this host can start; max under tcg)', rerun: true, record: false }),
  opt({ key: 'kernelIrqchip', flag: 'kernel-irqchip', kind: 'enum', arg: 'X', values: ['on', 'split', 'off'], help: 'KVM irqchip: in the kernel, split with QEMU, or off (QEMU emulates the APIC, IOAPIC, PIC and PIT)', rerun: true, record: true }),
  opt({ key: 'qemu', flag: 'qemu', kind: 'string', arg: 'PATH', help: 'QEMU binary (default $KVMPROP_QEMU or qemu-system-x86_64)', rerun: true, record: true }),
  opt({ key: 'qemuArgs', flag: 'qemu-arg', kind: 'list', arg: 'A', help: 'extra QEMU argument, appended as is (repeatable)', rerun: true, record: true }),
  opt({ key: 'mutant', flag: 'mutant', kind: 'string', arg: 'NAME', help: 'run against a deliberately broken system (kvmprop list)', rerun: true, record: true }),
  opt({ key: 'latenessBoundUs', flag: 'lateness-bound-us', kind: 'int', arg: 'N', help: 'timers: bound on interrupt lateness, µs (default: calibrated from host timer noise)', min: 1, max: 10_000_000, rerun: true, record: true }),
  opt({ key: 'out', flag: 'out', kind: 'path', arg: 'DIR', help: 'output directory', rerun: false, record: false }),
  opt({ key: 'deviations', flag: 'deviations', kind: 'path', arg: 'FILE', help: 'known deviations', rerun: true, record: false }),
  opt({ key: 'stallMs', flag: 'stall-ms', kind: 'int', arg: 'N', help: 'a vCPU with no progress for N ms is a hang', min: 100, rerun: false, record: false }),
  opt({ key: 'vmTimeoutMs', flag: 'vm-timeout-ms', kind: 'int', arg: 'N', help: 'per-VM limit', min: 1000, rerun: false, record: false }),
  opt({ key: 'shard', flag: 'shard', kind: 'string', arg: 'I/N', help: 'run shard I of N: every N-th selected property from the I-th (merge the shards with kvmprop merge)', rerun: false, record: true }),
  opt({ key: 'ktap', flag: 'ktap', kind: 'flag', arg: '', help: 'stream KTAP v1 on stdout as properties finish; the summary goes to stderr', rerun: false, record: false }),
];

/** The defaults, once. `seed` is random per run. */
export function defaultOptions(over: Partial<RunOptions> = {}): RunOptions {
  return {
    families: ['leaks'],
    properties: [],
    runs: 25,
    seed: Date.now() % 2 ** 31,
    machine: 'microvm',
    accel: 'kvm',
    qemu: process.env.KVMPROP_QEMU || 'qemu-system-x86_64',
    qemuArgs: [],
    out: resolve(PROJECT_ROOT, 'results'),
    deviations: DEFAULT_DEVIATIONS,
    vmTimeoutMs: 120_000,
    stallMs: 3000,
    ...over,
  };
}

/** What the defaults are for the usage text (the seed's is random). */
function defaultShown(s: OptionSpec): string {
  const d = defaultOptions();
  if (s.key === 'seed' || s.key === 'families' || s.key === 'cpu' || s.key === 'qemu') return '';
  if (s.key === 'out') return ' (default ./results)';
  if (s.key === 'deviations') return ' (default reports/known-deviations.json)';
  const v = d[s.key];
  if (v === undefined || (Array.isArray(v) && v.length === 0)) return '';
  return ` (default ${String(v)})`;
}

export function runUsage(): string {
  const rows = RUN_OPTIONS.map((s) => {
    const left = `  --${s.flag} ${s.arg}`;
    const values = s.values ? `${s.values.join(' | ')}: ` : '';
    return `${left.padEnd(23)}${values}${s.help}${defaultShown(s)}`;
  });
  return `run options:\n${rows.join('\n')}\n`;
}

/** `--qemu-arg -cpu` is what people type; parseArgs wants `--qemu-arg=-cpu`. */
export function joinDashValues(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--qemu-arg' && i + 1 < argv.length) out.push(`--qemu-arg=${argv[++i]}`);
    else out.push(a);
  }
  return out;
}

/** Parse `kvmprop run` arguments by the table; each bad value is one OptionError line. */
export function parseRunArgs(argv: readonly string[], cwd = process.cwd()): { options: Partial<RunOptions>; given: ReadonlySet<keyof RunOptions> } {
  const { values, positionals } = parseArgs({
    args: joinDashValues(argv),
    strict: true,
    allowPositionals: true,
    options: Object.fromEntries(
      RUN_OPTIONS.flatMap((s) => [s.flag, ...(s.aliases ?? [])].map((f) => [f, s.kind === 'flag' ? { type: 'boolean' as const } : { type: 'string' as const, multiple: s.kind === 'list' }])),
    ),
  });
  if (positionals.length) throw new OptionError(`unexpected argument '${positionals[0]}'`);
  const out: Record<string, unknown> = {};
  const given = new Set<keyof RunOptions>();
  for (const s of RUN_OPTIONS) {
    const all = values as Record<string, string | string[] | boolean | undefined>;
    const spelled = [s.flag, ...(s.aliases ?? [])].map((f) => all[f]).filter((x) => x !== undefined);
    if (spelled.length === 0) continue;
    const v = s.kind === 'list' ? spelled.flat() : spelled[spelled.length - 1]!;
    given.add(s.key);
    switch (s.kind) {
      case 'list':
        // --suite takes comma lists; --property and --qemu-arg are repeated as they are.
        out[s.key] = s.key === 'families' ? (v as string[]).flatMap((x) => x.split(',')).map((x) => x.trim()).filter(Boolean) : v;
        break;
      case 'int': {
        const t = v as string;
        const min = s.min ?? 0;
        const max = s.max ?? Number.MAX_SAFE_INTEGER;
        if (!/^-?\d+$/.test(t) || Number(t) < min || Number(t) > max) throw new OptionError(`--${s.flag} must be an integer from ${min} to ${max}, got '${t}'`);
        out[s.key] = Number(t);
        break;
      }
      case 'enum':
        if (!s.values!.includes(v as string)) throw new OptionError(`--${s.flag} must be one of ${s.values!.join(', ')}, got '${v as string}'`);
        out[s.key] = v;
        break;
      case 'path':
        out[s.key] = resolve(cwd, v as string);
        break;
      case 'string':
        out[s.key] = v;
        break;
      case 'flag':
        out[s.key] = v === true;
        break;
    }
  }
  if (out.shard !== undefined) {
    const m = /^(\d+)\/(\d+)$/.exec(out.shard as string);
    if (!m || Number(m[1]) < 1 || Number(m[2]) < 1 || Number(m[1]) > Number(m[2])) throw new OptionError(`--shard must be I/N with 1 <= I <= N, got '${out.shard as string}'`);
  }
  if (out.path !== undefined && out.seed === undefined) throw new OptionError('--path needs the --seed it was recorded with');
  if (out.replayPath !== undefined && out.path === undefined) throw new OptionError('--replay-path needs the --seed and --path it was recorded with');
  if (out.path !== undefined && !/^\d+(:\d+)*$/.test(out.path as string)) throw new OptionError(`--path must look like 3:0:1, got '${out.path as string}'`);
  return { options: out as Partial<RunOptions>, given };
}

function argsFor(o: RunOptions, s: OptionSpec): string[] {
  const v = o[s.key];
  const d = defaultOptions()[s.key];
  if (v === undefined || JSON.stringify(v) === JSON.stringify(d)) return [];
  if (Array.isArray(v)) return s.key === 'families' ? [`--${s.flag} ${v.join(',')}`] : v.map((x) => (s.key === 'qemuArgs' ? `--${s.flag}=${String(x)}` : `--${s.flag} ${String(x)}`));
  return [`--${s.flag} ${String(v)}`];
}

/** The `kvmprop run` line that re-runs exactly the recorded fast-check case, under the same options. */
export function rerunCommand(r: { family: string; id: string; seed: number; path?: string; replayPath?: string }, o: RunOptions): string {
  const recorded: RunOptions = { ...o, families: [r.family], properties: [r.id], seed: r.seed, ...(r.path ? { path: r.path } : {}), ...(r.replayPath ? { replayPath: r.replayPath } : {}) };
  const identity: readonly (keyof RunOptions)[] = ['families', 'properties', 'seed', 'path', 'replayPath'];
  const args = RUN_OPTIONS.filter((s) => s.rerun).flatMap((s) => (identity.includes(s.key) ? argsForAlways(recorded, s) : argsFor(recorded, s)));
  return ['npx kvmprop run', ...args].join(' ');
}

/** The case identity (family, property, seed, path) is always spelled out, default or not. */
function argsForAlways(o: RunOptions, s: OptionSpec): string[] {
  const v = o[s.key];
  if (v === undefined) return [];
  if (Array.isArray(v)) return s.key === 'families' ? [`--${s.flag} ${v.join(',')}`] : v.map((x) => `--${s.flag} ${String(x)}`);
  return [`--${s.flag} ${String(v)}`];
}

/** The options as results.json records them, with the vCPU model that actually ran. */
export function optionsRecord(o: RunOptions, vcpu: { used: string; requested?: string }): Record<string, unknown> {
  const rec: Record<string, unknown> = {};
  for (const s of RUN_OPTIONS.filter((x) => x.record)) if (o[s.key] !== undefined) rec[s.key] = o[s.key];
  rec.cpu = vcpu.used;
  if (vcpu.requested !== undefined && vcpu.requested !== vcpu.used) rec.cpuRequested = vcpu.requested;
  return rec;
}

export function optionsToEnv(o: RunOptions): Record<string, string> {
  return { [OPTIONS_ENV]: JSON.stringify(o) };
}

export function optionsFromEnv(env: NodeJS.ProcessEnv = process.env): RunOptions {
  const raw = env[OPTIONS_ENV];
  if (!raw) return defaultOptions();
  return defaultOptions(JSON.parse(raw) as Partial<RunOptions>);
}

/** The machine a property's VMs run on, from the options. */
export function machineConfig(o: RunOptions, over: Partial<MachineConfig> = {}): MachineConfig {
  return defaultMachineConfig({
    qemu: o.qemu,
    machine: o.machine,
    accel: o.accel,
    cpuModel: vcpuModel(o),
    extraArgs: o.qemuArgs,
    ...(o.kernelIrqchip ? { kernelIrqchip: o.kernelIrqchip } : {}),
    ...over,
  });
}

/** The -cpu model the run's VMs get: the user's, or the one the run chose for this host. */
export function vcpuModel(o: RunOptions): string {
  return o.cpu ?? publishedChoice(o.qemu, o.accel)?.used ?? defaultVcpuModel(o.accel);
}
