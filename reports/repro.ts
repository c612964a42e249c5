/**
 * `kvmprop repro COUNTEREXAMPLE --out DIR`: a self-contained reproducer of a counterexample, runnable
 * with only QEMU installed (no Node, no kvmprop), after syzkaller's C reproducers.
 *
 * The directory holds:
 *   guest.elf            the kvmprop guest (PVH ELF) the counterexample ran;
 *   program.bin          the case as a guest program (program-N.bin when the property runs N VMs),
 *                        carrying self-checks (ir/checks.ts): the model's expected values;
 *   run.sh               POSIX sh: runs each VM with the exact QEMU command line the harness used
 *                        (minus QMP and -S), in a temporary directory for the RAM file; the guest
 *                        prints its verdict as TAP 13 on COM1 (stdout). Exit status 0: every check
 *                        passed (the bug is not there); 1: a check failed, the guest did not finish
 *                        or hung (the bug is there); 2: QEMU could not run. QEMU=... and TIMEOUT=...
 *                        override the binary and the per-VM limit (seconds, where timeout(1) exists);
 *   checks.json          what each TAP test compares, readable;
 *   expected.json, observed.json   the counterexample's difference as kvmprop recorded it;
 *   host.json            the fingerprint of the host the directory was written on, and the
 *                        counterexample's host id;
 *   README.txt           what it shows, the property, how to run it, the one-line kvmprop replay.
 *
 * The expected values are the model's under the counterexample's own options, mutant included: a
 * mutant that breaks the model makes the directory expect the broken model's values (a correct
 * host then fails it, which is the mutant's failure seen again); one that breaks the system adds
 * its QEMU arguments to the VMs of its roles.
 *
 * Properties say how a case becomes self-checking programs (PropertyDef.repro). Those whose verdict
 * needs the harness (timers: interrupt timing against a calibrated bound; migration: a QMP-driven
 * migration between two QEMUs) have none, and are refused with one line that points at
 * `kvmprop replay`. Errors a user can cause (a missing or corrupt file, a property without repro
 * support, a directory holding other files) are one line and exit status 2.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { encodeProgram } from '../harness/bytecode.js';
import { fingerprintId } from '../harness/fingerprint.js';
import { GuestBuildError } from '../harness/guest/build.js';
import { EXIT_VALUE, GUEST_ABI_VERSION, qemuExitStatus } from '../harness/guest/abi.js';
import { qemuArgs, rawQemuArgs, type MachineConfig } from '../harness/vm.js';
import type { Check, FieldRef } from '../ir/checks.js';
import { sanitizeCheckName } from '../ir/checks.js';
import { defaultOptions, machineConfig, type RunOptions } from '../suites/lib/options.js';
import { Metrics, type AnyProperty, type PropertyEnv, type ReproPlan } from '../suites/lib/property.js';
import { propertyEnv, replayCommand } from '../suites/lib/runner.js';
import { FAMILIES, propertyById, UnknownMutantError } from '../suites/registry.js';
import { commandFailure } from './commandFailure.js';
import { CounterexampleError, readCounterexample, toJsonValue, type Counterexample } from './counterexample.js';

export class ReproError extends Error {
  override name = 'ReproError';
}

export const REPRO_USAGE = 'usage: kvmprop repro COUNTEREXAMPLE --out DIR [--qemu PATH]';

/** Written into every directory this command makes: what lets it overwrite one of its own. */
const MARKER = 'kvmprop-repro.json';

/** run.sh's exit statuses. */
export const REPRO_EXIT = { pass: 0, fail: 1, noQemu: 2 } as const;

/** Why a family's properties without a repro hook have none, for the refusal. */
const NO_REPRO_BECAUSE: Readonly<Record<string, string>> = {
  timers: 'its verdict judges interrupt timing against a bound calibrated on the host while the case runs',
  migration: 'its case is a QMP-driven migration between two QEMUs, judged from both ends',
  leaks: "its verdict needs the host's leak-pattern search or QEMU's device map, not values a model predicts per record",
};

/** The properties that can be written as a repro, for the refusal message. */
export function reproProperties(): string[] {
  return FAMILIES.flatMap((f) => f.properties.filter((p) => p.repro).map((p) => p.id));
}

// ---------------------------------------------------------------------------------------------
// Shell

/** One shell word, single-quoted: nothing in it is interpreted. */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

const HERE = '\u0000HERE\u0000';
const TMP = '\u0000TMP\u0000';

/**
 * One QEMU argument as a shell word: literal text single-quoted, the directory of the script and
 * the temporary directory as "$here" and "$tmp" (double-quoted, so a path with spaces stays one
 * word). Inside an option list (`loader,file=...`) a path's commas must be doubled, so there the
 * escaped forms are used.
 */
export function shellWord(arg: string): string {
  const parts = arg.split(/(\u0000HERE\u0000|\u0000TMP\u0000)/).filter((p) => p !== '');
  if (parts.length === 0) return "''";
  // A bare path (-kernel PATH) is not an option list; anything with text before the path is.
  const optionList = !(parts[0] === HERE || parts[0] === TMP);
  return parts
    .map((p) => {
      if (p === HERE) return optionList ? '"$here_q"' : '"$here"';
      if (p === TMP) return optionList ? '"$tmp_q"' : '"$tmp"';
      return shQuote(p);
    })
    .join('');
}

export interface ReproVmScript {
  readonly label: string;
  /** QEMU's arguments, with HERE/TMP placeholders. */
  readonly args: readonly string[];
}

/** The run.sh text for these VMs. */
export function runScript(vms: readonly ReproVmScript[], header: readonly string[], qemu = 'qemu-system-x86_64'): string {
  const done = qemuExitStatus(EXIT_VALUE.done);
  const failed = qemuExitStatus(EXIT_VALUE.failed);
  const checks = qemuExitStatus(EXIT_VALUE.checksFailed);
  const lines = [
    '#!/bin/sh',
    ...header.map((h) => `# ${h}`.trimEnd()),
    '#',
    `# Needs only QEMU (${cleanOneLine(qemu)}; QEMU=/path/to/qemu-system-x86_64 to use another) and, for KVM, /dev/kvm.`,
    '# The guest prints its verdict as TAP 13 on COM1 (stdout here).',
    '# Exit status: 0 every check passed; 1 a check failed, the guest did not finish or hung; 2 QEMU could not run.',
    '# TIMEOUT=seconds bounds each VM (default 120; needs timeout(1), else no bound).',
    'set -eu',
    `QEMU=\${QEMU:-${shQuote(qemu)}}`,
    'TIMEOUT=${TIMEOUT:-120}',
    'here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)',
    'tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmprop-repro.XXXXXX")',
    "trap 'rm -rf -- \"$tmp\"' EXIT",
    "trap 'exit 130' INT TERM",
    '# Inside a QEMU option list a comma is written twice.',
    "here_q=$(printf '%s\\n' \"$here\" | sed 's/,/,,/g')",
    "tmp_q=$(printf '%s\\n' \"$tmp\" | sed 's/,/,,/g')",
    '',
    '# run_vm LABEL QEMU-ARGUMENTS...: 0 the guest passed every check, 1 it did not, 2 QEMU could not run.',
    'run_vm() {',
    '  label=$1',
    '  shift',
    '  status=0',
    '  if command -v timeout >/dev/null 2>&1; then',
    '    timeout "$TIMEOUT" "$QEMU" "$@" </dev/null || status=$?',
    '  else',
    '    "$QEMU" "$@" </dev/null || status=$?',
    '  fi',
    '  case $status in',
    `    ${done}) echo "# $label: every check passed" >&2; return 0 ;;`,
    `    ${checks}) echo "# $label: a check failed (not ok above)" >&2; return 1 ;;`,
    `    ${failed}) echo "# $label: the guest did not run the program to its end (see above)" >&2; return 1 ;;`,
    '    124) echo "# $label: no verdict within $TIMEOUT s: the guest hung" >&2; return 1 ;;',
    '    *) echo "# $label: QEMU could not run the VM (exit status $status)" >&2; return 2 ;;',
    '  esac',
    '}',
    '',
    'rc=0',
  ];
  for (const vm of vms) {
    // One option per line: a flag with its value, or a flag alone.
    const rows: string[] = [];
    for (let i = 0; i < vm.args.length; i++) {
      const a = vm.args[i]!;
      const next = vm.args[i + 1];
      if (a.startsWith('-') && next !== undefined && !next.startsWith('-')) {
        rows.push(`${shellWord(a)} ${shellWord(next)}`);
        i++;
      } else rows.push(shellWord(a));
    }
    lines.push('', `# ${vm.label}`, 'set -- \\');
    rows.forEach((r, i) => lines.push(`  ${r}${i === rows.length - 1 ? '' : ' \\'}`));
    lines.push('r=0', `run_vm ${shQuote(vm.label)} "$@" || r=$?`, 'if [ "$r" -gt "$rc" ]; then rc=$r; fi');
  }
  lines.push('exit "$rc"', '');
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// The directory

export interface ReproResult {
  readonly dir: string;
  readonly files: readonly string[];
  readonly checks: number;
  readonly vms: number;
}

function refField(r: FieldRef): string {
  return `thread ${r.thread} record ${r.record} ${r.field}`;
}

function describeCheck(c: Check): Record<string, unknown> {
  const mask = c.mask === undefined ? {} : { mask: `0x${c.mask.toString(16)}` };
  switch (c.kind) {
    case 'value':
      return { name: sanitizeCheckName(c.name), compares: refField(c.at), expected: `0x${c.expected.toString(16)}`, ...mask };
    case 'diff':
      return { name: sanitizeCheckName(c.name), compares: `${refField(c.at)} - ${c.minus.field}`, expected: `0x${c.expected.toString(16)}`, ...mask };
    case 'same':
      return { name: sanitizeCheckName(c.name), compares: refField(c.at), expected: `the same as ${refField(c.as)}`, ...mask };
    case 'status':
      return { name: sanitizeCheckName(c.name), compares: `thread ${c.thread} status ${c.field}`, expected: `0x${c.expected.toString(16)}`, ...mask };
  }
}

/** Refuse a directory that holds anything but an earlier repro of ours. */
function prepareDir(dir: string): void {
  if (existsSync(dir)) {
    const entries = readdirSync(dir);
    if (entries.length && !entries.includes(MARKER)) throw new ReproError(`${dir} exists and holds files kvmprop repro did not write; give an empty or new directory`);
    // An earlier repro of ours: none of its files may outlive it (a program-N.bin of more VMs).
    for (const e of entries) rmSync(join(dir, e), { recursive: true, force: true });
  }
  mkdirSync(dir, { recursive: true });
}

/** Write the repro directory of a counterexample (the work of `kvmprop repro`). */
export async function writeRepro(file: string, outDir: string, over: { qemu?: string } = {}): Promise<ReproResult> {
  let c: Counterexample;
  try {
    c = readCounterexample(file);
  } catch (e) {
    if (e instanceof CounterexampleError) throw new ReproError(e.message);
    throw e;
  }
  const def: AnyProperty | undefined = propertyById(c.property);
  if (!def) throw new ReproError(`${file}: property '${c.property}' does not exist in this version of kvmprop`);
  if (!def.repro) {
    const why = NO_REPRO_BECAUSE[def.family] ?? 'its verdict needs what only the harness does while the case runs';
    throw new ReproError(`${c.property} has no self-checking repro (${why}); replay it with: ${replayCommand(file)} (repro supports: ${reproProperties().join(', ')})`);
  }
  const w = c.workload as { commands?: unknown; kind?: unknown } | null;
  if (w && typeof w === 'object' && Array.isArray(w.commands) && w.kind === undefined) throw new ReproError(`${file}: the saved case is a command list, not a program; replay it with: ${replayCommand(file)}`);
  const dir = resolve(outDir);
  prepareDir(dir);
  const saved = c.options as Partial<RunOptions>;
  const o = defaultOptions({ ...saved, ...(over.qemu ? { qemu: over.qemu } : {}), out: dir });
  const base = await propertyEnv(o);
  if (base.startFailure) throw new ReproError(`the counterexample's machine does not start on this host: ${base.startFailure.qemuMessage || base.startFailure.message}`);
  const { startFailure: _ignored, ...rest } = base;
  const env: PropertyEnv = { ...rest, metrics: new Metrics() };
  if (env.mutant?.during || env.mutant?.migrationIntercept) throw new ReproError(`mutant '${env.mutant.name}' works through QMP or the migration stream while the VM runs, which a script cannot do; replay it with: ${replayCommand(file)}`);
  const facts = await def.facts(env);
  const plan: ReproPlan | null = def.repro(c.workload, facts, env);
  if (!plan || plan.vms.length === 0) throw new ReproError(`${c.property}: this case cannot be written as a self-checking program; replay it with: ${replayCommand(file)}`);

  const files: string[] = [];
  const put = (name: string, data: string | Uint8Array, mode = 0o644) => {
    writeFileSync(join(dir, name), data);
    chmodSync(join(dir, name), mode);
    files.push(name);
  };
  copyFileSync(env.guestElf, join(dir, 'guest.elf'));
  files.push('guest.elf');
  const scripts: ReproVmScript[] = [];
  const checksOut: Record<string, unknown>[] = [];
  let nchecks = 0;
  const realDir = realpathSync(dir);
  for (const [i, vm] of plan.vms.entries()) {
    const program = { ...vm.program, holdExit: false };
    let image;
    try {
      image = encodeProgram(program);
    } catch (e) {
      // Too many checks or too large a program: the case is not shrunk far enough for a guest to carry.
      if (e instanceof RangeError) throw new ReproError(`${c.property}: this case cannot be written as one guest program (${e.message}); shrink it or replay it with: ${replayCommand(file)}`);
      throw e;
    }
    const programFile = plan.vms.length === 1 ? 'program.bin' : `program-${i + 1}.bin`;
    put(programFile, image.image);
    const want: Partial<MachineConfig> = { ...def.machine, ...vm.config };
    const cfg0 = machineConfig(o, want);
    const cfg: MachineConfig = { ...cfg0, cpus: Math.max(cfg0.cpus, program.threads.length), ramMiB: Math.max(cfg0.ramMiB, image.minRamMiB) };
    const ram = `${TMP}/ram-${i + 1}`;
    const args = rawQemuArgs(qemuArgs(cfg, { kernel: `${HERE}/guest.elf`, ram, qmpSocket: `${TMP}/unused.sock`, program: `${HERE}/${programFile}` }));
    // A mutant of this VM's role adds its arguments (files it makes land in the directory).
    const m = env.mutant;
    if (m?.qemuArgs && (m.roles === 'all' || m.roles.includes(vm.role))) {
      const extra = await m.qemuArgs({ role: vm.role, dir, config: cfg });
      for (const a of extra) args.push(a.split(dir).join(HERE).split(realDir).join(HERE));
      for (const f of readdirSync(dir)) if (!files.includes(f) && f !== MARKER && !/^(run\.sh|README\.txt|.*\.json)$/.test(f)) files.push(f);
    }
    const label = `VM ${i + 1} of ${plan.vms.length} (${vm.role}): ${cfg.accel}, -cpu ${cfg.cpuModel}, ${cfg.cpus} vCPU, ${cfg.ramMiB} MiB`;
    scripts.push({ label, args });
    nchecks += program.checks?.length ?? 0;
    checksOut.push({ vm: i + 1, role: vm.role, program: programFile, checks: (program.checks ?? []).map(describeCheck) });
  }
  const header = [
    `kvmprop repro of ${c.property} (counterexample ${c.seed}:${c.path}${saved.mutant ? `, mutant ${saved.mutant}` : ''})`,
    `${cleanOneLine(c.summary)}`,
  ];
  put('run.sh', runScript(scripts, header, o.qemu), 0o755);
  put('checks.json', JSON.stringify(checksOut, null, 2) + '\n');
  put('expected.json', JSON.stringify(toJsonValue(c.expected), null, 2) + '\n');
  put('observed.json', JSON.stringify(toJsonValue(c.observed), null, 2) + '\n');
  put('host.json', JSON.stringify({ writtenOn: { hostId: fingerprintId(env.host), fingerprint: env.host }, counterexampleHostId: c.hostId }, null, 2) + '\n');
  put('README.txt', readme(c, file, plan, scripts, nchecks, saved));
  put(MARKER, JSON.stringify({ schema: 'kvmprop-repro', version: 1, property: c.property, counterexample: resolve(file), guestAbi: GUEST_ABI_VERSION, vms: scripts.length, checks: nchecks, createdAt: new Date().toISOString() }, null, 2) + '\n');
  return { dir, files, checks: nchecks, vms: scripts.length };
}

function cleanOneLine(s: string): string {
  return s.replace(/[^\x20-\x7e]+/g, ' ').trim();
}

function readme(c: Counterexample, file: string, plan: ReproPlan, vms: readonly ReproVmScript[], nchecks: number, saved: Partial<RunOptions>): string {
  const wrap = (s: string) => cleanOneLine(s).replace(/(.{1,96})(\s+|$)/g, '$1\n').trimEnd();
  return [
    `kvmprop repro: ${c.property}`,
    '',
    wrap(`What it shows: ${c.summary}`),
    `Rule that caught it: ${cleanOneLine(c.rule)}`,
    '',
    wrap(`The property: ${c.statement}`),
    '',
    wrap(
      `How: run.sh boots the kvmprop guest (guest.elf, a PVH ELF) under QEMU ${vms.length === 1 ? 'once' : `${vms.length} times, one VM after another`}, with the command line the harness used (no QMP, no -S). ` +
        `The guest runs the case (program.bin${vms.length > 1 ? ', program-N.bin' : ''}), then checks ${nchecks} values of its own observations against the model's expectations carried in the program, ` +
        'and prints one TAP line per check on COM1 (stdout): `ok N - name` or `not ok N - name expected 0x.. got 0x..`. checks.json says what each compares.',
    ),
    '',
    '  sh run.sh            # exit 0: every check passed; 1: a check failed (the bug is here); 2: QEMU could not run',
    '  QEMU=/path/to/qemu-system-x86_64 sh run.sh',
    '',
    wrap(
      `Expected values: the model's, under the counterexample's options (accel ${saved.accel ?? 'kvm'}, machine ${saved.machine ?? 'microvm'}${saved.mutant ? `, mutant ${saved.mutant}: a deliberately broken model or system, so a correct host fails this repro` : ''}). ` +
        'No known deviation is waived (as with kvmprop replay): a host with a documented deviation fails its checks too. ' +
        'expected.json and observed.json are the difference kvmprop recorded; host.json the host this directory was written on.',
    ),
    ...(plan.note ? ['', wrap(`Not covered by the checks: ${plan.note}`)] : []),
    '',
    `With kvmprop: ${replayCommand(resolve(file))}`,
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// The command

export async function cmdRepro(argv: readonly string[]): Promise<number> {
  try {
    const { values, positionals } = parseArgs({ args: [...argv], strict: true, allowPositionals: true, options: { out: { type: 'string' }, qemu: { type: 'string' } } });
    if (positionals.length !== 1 || !values.out) throw new ReproError(REPRO_USAGE);
    const r = await writeRepro(positionals[0]!, values.out, values.qemu ? { qemu: values.qemu } : {});
    process.stderr.write(`kvmprop: repro of ${r.vms} VM${r.vms === 1 ? '' : 's'} with ${r.checks} checks → ${r.dir} (sh ${join(r.dir, 'run.sh')})\n`);
    return 0;
  } catch (e) {
    return commandFailure(e, [ReproError, GuestBuildError, UnknownMutantError]);
  }
}
