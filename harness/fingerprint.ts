/**
 * Host fingerprint behind `kvmprop doctor`: what kernel, KVM modules (with their parameters), KVM
 * capabilities, CPU and QEMU this host has. Results from different hosts are only comparable when
 * this matches, and known deviations are recorded against `fingerprintId`.
 *
 * Collecting never throws: whatever is missing is recorded, so that doctor can say how to fix it.
 * KVM capabilities come from a small C probe (probe/kvmcaps.c) built here on demand, because
 * Node cannot issue ioctls.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, mkdtemp, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { PROJECT_ROOT } from './guest/build.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const PROBE_SRC = join(HERE, 'probe', 'kvmcaps.c');
const PROBE_CACHE = join(PROJECT_ROOT, '.cache', 'probe');
const PROBE_CFLAGS = ['-O2', '-std=gnu11', '-Wall', '-Wextra'];
const KVM_DEVICE = '/dev/kvm';

/**
 * The /proc/cpuinfo flags that change what KVM can offer a guest; the rest is noise here. Known
 * deviations may only name these (see reports/deviations.ts).
 *
 * `cpuid_fault`: the host can make CPUID fault at CPL > 0, which is what lets a hypervisor that runs
 * guest user mode natively (kvm_pvm) intercept it. Linux shows Intel's CPUID faulting
 * (MSR_PLATFORM_INFO bit 31) under this name, and recent kernels also AMD's CpuidUserDis
 * (CPUID 0x80000021:EAX[17], X86_FEATURE_GP_ON_USER_CPUID, which has no /proc/cpuinfo name of its own;
 * Zen 3 lacks it).
 */
export const CPU_FLAGS = [
  'vmx', 'svm', 'x2apic', 'tsc_deadline_timer', 'constant_tsc', 'nonstop_tsc', 'tsc_scale', 'hypervisor', 'pdpe1gb',
  'cpuid_fault',
] as const;

/** Shown when a module parameter exists but cannot be read (write-only, EACCES, EIO). */
export const UNREADABLE = '<unreadable>';

export interface HostFingerprint {
  schema: 1;
  collectedAt: string;
  kernel: { release: string; version: string };
  cpu: {
    /** /proc/cpuinfo "model name". */
    model: string;
    /** /proc/cpuinfo "vendor_id": 'GenuineIntel', 'AuthenticAMD', or 'unknown'. */
    vendor: string;
    /**
     * /proc/cpuinfo "cpu family", "model" and "stepping" (family and model as Linux computes them,
     * extended fields included: 25/1/1 for an AMD EPYC Milan). null where /proc/cpuinfo has no number;
     * absent in fingerprints written before kvmprop recorded them.
     */
    family?: number | null;
    modelNumber?: number | null;
    stepping?: number | null;
    /** Those of CPU_FLAGS the host has, in CPU_FLAGS order. */
    flags: string[];
  };
  kvm: {
    device: 'ok' | 'missing' | 'no-access';
    apiVersion: number | null;
    modules: { name: string; parameters: Record<string, string> }[];
    vendorModules: string[];
    /** KVM_CHECK_EXTENSION results by constant name; -1 means the probe could not ask. */
    caps: Record<string, number>;
    nested: boolean | null;
    dirtyRing: boolean | null;
    manualDirtyLogProtect: boolean | null;
    tscScaling: boolean | null;
    x2apic: boolean | null;
    tscDeadline: boolean | null;
    /** KVM_GET_TSC_KHZ on a fresh vCPU: the guest TSC rate KVM keeps (null: unknown, older files). */
    vcpuTscKhz?: number | null;
    probeError?: string;
  };
  qemu: { path: string; found: boolean; version: string | null };
  /** The -cpu model of the run; absent where nothing was booted (kvmprop doctor) or in older files. */
  qemuCpu?: QemuCpuChoice;
  tools: { gcc: string | null; ld: string | null };
}

/** The -cpu model kvmprop asked QEMU for, and the one QEMU ran. */
export interface QemuCpuChoice {
  /** The -cpu argument kvmprop chose or was given, e.g. 'host'. */
  requested: string;
  /** The -cpu argument QEMU ran, e.g. 'host,-arch-capabilities'; equal to `requested` without a fallback. */
  used: string;
  /** Why `requested` was given up: it could not start on this host. */
  fallback?: {
    /** One line, e.g. "KVM refuses MSR 0x10a (IA32_ARCH_CAPABILITIES)". */
    reason: string;
    /** What QEMU printed when `requested` failed. */
    qemuMessage: string;
    /** The QEMU command line that failed. */
    commandLine: readonly string[];
  };
}

export interface Verdict {
  level: 'ok' | 'warn' | 'error';
  item: string;
  message: string;
}

/** What the probe prints (see probe/kvmcaps.c). */
interface ProbeOutput {
  api_version?: number;
  caps?: Record<string, number>;
  supported_cpuid?: { x2apic: boolean; tsc_deadline: boolean; vmx: boolean; svm: boolean; hypervisor: boolean } | null;
  cpuid_error?: string;
  vcpu_tsc_khz?: number;
  error: string | null;
  errno?: number;
}

// ---------------------------------------------------------------------------------------------
// Collecting

export async function collectFingerprint(opts: { qemu: string }): Promise<HostFingerprint> {
  const [kernel, cpu, modules, device, qemu, gcc, ld] = await Promise.all([
    readKernel(),
    readCpu(),
    readKvmModules(),
    checkDevice(),
    readQemu(opts.qemu),
    firstLineOf('gcc', ['--version']),
    firstLineOf('ld', ['--version']),
  ]);

  const kvm = kvmBeforeProbe(device, modules);

  // Without a usable /dev/kvm the probe has nothing to say; `device` already explains why.
  let probe: ProbeOutput | null = null;
  if (device === 'ok') {
    if (gcc === null) {
      kvm.probeError = 'gcc not found: cannot build the capability probe';
    } else {
      try {
        probe = await runProbe();
      } catch (e) {
        kvm.probeError = (e as Error).message;
      }
    }
  }
  if (probe) {
    if (probe.error !== null) {
      kvm.probeError = probe.error;
      // The file looked usable but open() disagreed (e.g. a device cgroup or no module behind it).
      const { EACCES, EPERM, ENOENT, ENXIO, ENODEV } = os.constants.errno;
      if (probe.errno === EACCES || probe.errno === EPERM) kvm.device = 'no-access';
      else if (probe.errno === ENOENT || probe.errno === ENXIO || probe.errno === ENODEV) kvm.device = 'missing';
    } else {
      kvm.apiVersion = probe.api_version ?? null;
      kvm.caps = probe.caps ?? {};
      kvm.vcpuTscKhz = probe.vcpu_tsc_khz ? probe.vcpu_tsc_khz : null;
      if (probe.cpuid_error) kvm.probeError = probe.cpuid_error;
    }
  }
  const cpuid = probe?.supported_cpuid ?? null;
  const cap = (...names: string[]) => capFlag(kvm.caps, names);
  kvm.nested = nestedState(modules, cpuid);
  kvm.dirtyRing = cap('KVM_CAP_DIRTY_LOG_RING', 'KVM_CAP_DIRTY_LOG_RING_ACQ_REL');
  kvm.manualDirtyLogProtect = cap('KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2');
  kvm.tscScaling = cap('KVM_CAP_TSC_CONTROL', 'KVM_CAP_VM_TSC_CONTROL');
  kvm.x2apic = cpuid ? cpuid.x2apic : null;
  // KVM emulates the TSC-deadline timer in its LAPIC; depending on kernel version it says so in the
  // cap, the supported CPUID, or both.
  kvm.tscDeadline = anyTrue(cap('KVM_CAP_TSC_DEADLINE_TIMER'), cpuid ? cpuid.tsc_deadline : null);

  return {
    schema: 1,
    collectedAt: new Date().toISOString(),
    kernel,
    cpu,
    kvm,
    qemu,
    tools: { gcc, ld },
  };
}

/** What is known of KVM before its capability probe has run (or where it cannot): the device and the modules. */
export function kvmBeforeProbe(device: HostFingerprint['kvm']['device'], modules: HostFingerprint['kvm']['modules']): HostFingerprint['kvm'] {
  return {
    device,
    apiVersion: null,
    modules,
    vendorModules: modules.map((m) => m.name).filter((n) => n.startsWith('kvm_')),
    caps: {},
    nested: null,
    dirtyRing: null,
    manualDirtyLogProtect: null,
    tscScaling: null,
    x2apic: null,
    tscDeadline: null,
    vcpuTscKhz: null,
  };
}

/** true if any is true, false if all known ones are false, null if nothing is known. */
function anyTrue(...xs: (boolean | null)[]): boolean | null {
  if (xs.includes(true)) return true;
  return xs.includes(false) ? false : null;
}

function capFlag(caps: Record<string, number>, names: string[]): boolean | null {
  return anyTrue(
    ...names.map((n) => {
      const v = caps[n];
      return v === undefined || v < 0 ? null : v > 0;
    }),
  );
}

/**
 * Nested virtualization needs both the vendor module's `nested` switch (kvm_intel/kvm_amd) and
 * VMX/SVM in KVM's supported CPUID; either one saying no settles it. Modules without the
 * parameter (e.g. kvm_pvm) leave it to CPUID.
 */
function nestedState(
  modules: HostFingerprint['kvm']['modules'],
  cpuid: ProbeOutput['supported_cpuid'],
): boolean | null {
  const params = modules
    .map((m) => m.parameters['nested'])
    .filter((v): v is string => v !== undefined && v !== UNREADABLE)
    .map((v) => /^(y|1)/i.test(v.trim()));
  const param = params.length ? params.includes(true) : null;
  const fromCpuid = cpuid ? cpuid.vmx || cpuid.svm : null;
  if (param === false || fromCpuid === false) return false;
  return param ?? fromCpuid;
}

async function readKernel(): Promise<HostFingerprint['kernel']> {
  const version = await readFile('/proc/version', 'utf8').then((s) => s.trim(), () => os.version());
  return { release: os.release(), version };
}

async function readCpu(): Promise<HostFingerprint['cpu']> {
  return parseCpuinfo(await readFile('/proc/cpuinfo', 'utf8').catch(() => ''));
}

/** The CPU part of the fingerprint from /proc/cpuinfo's text. */
export function parseCpuinfo(text: string): HostFingerprint['cpu'] {
  // All processors report the same model and flags; the first block is enough.
  const first = text.split(/\n\s*\n/)[0] ?? '';
  const field = (key: string) => first.match(new RegExp(`^${key}\\s*:\\s*(.*)$`, 'm'))?.[1]?.trim() ?? '';
  const have = new Set(field('flags').split(/\s+/));
  return {
    model: field('model name') || 'unknown',
    vendor: field('vendor_id') || 'unknown',
    family: cpuinfoNumber(field('cpu family')),
    modelNumber: cpuinfoNumber(field('model')),
    stepping: cpuinfoNumber(field('stepping')),
    flags: CPU_FLAGS.filter((f) => have.has(f)),
  };
}

/** A decimal /proc/cpuinfo value ("25"), or null for "", "unknown" and the like. */
function cpuinfoNumber(text: string): number | null {
  return /^\d+$/.test(text.trim()) ? Number(text.trim()) : null;
}

async function readKvmModules(): Promise<HostFingerprint['kvm']['modules']> {
  const names = (await readdir('/sys/module').catch(() => [] as string[])).filter((n) => n.startsWith('kvm')).sort();
  return Promise.all(
    names.map(async (name) => {
      const dir = join('/sys/module', name, 'parameters');
      const files = (await readdir(dir).catch(() => [] as string[])).sort();
      const parameters: Record<string, string> = {};
      for (const f of files) {
        // Write-only parameters and some others refuse reads; note them rather than drop them.
        parameters[f] = await readFile(join(dir, f), 'utf8').then((s) => s.trim(), () => UNREADABLE);
      }
      return { name, parameters };
    }),
  );
}

async function checkDevice(): Promise<HostFingerprint['kvm']['device']> {
  try {
    await stat(KVM_DEVICE);
  } catch {
    return 'missing';
  }
  try {
    await access(KVM_DEVICE, constants.R_OK | constants.W_OK);
    return 'ok';
  } catch {
    return 'no-access';
  }
}

async function readQemu(path: string): Promise<HostFingerprint['qemu']> {
  const line = await firstLineOf(path, ['--version']);
  // "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" → "7.2.22 (Debian …)"
  const version = line === null ? null : (line.match(/version\s+(\d.*)$/)?.[1]?.trim() ?? line);
  return { path, found: line !== null, version };
}

/** First line of a tool's output, or null if it is missing or fails. */
async function firstLineOf(cmd: string, args: string[]): Promise<string | null> {
  try {
    const r = await execa(cmd, args, { reject: false, timeout: 15_000 });
    if (r.exitCode !== 0) return null;
    return r.stdout.split('\n')[0]?.trim() || null;
  } catch {
    return null;
  }
}

/**
 * Builds the probe with the system gcc, cached under .cache/probe/<hash of source, flags and gcc
 * version>/kvmcaps, and returns its path. A compiler error is thrown with gcc's own output.
 * `source` is there for tests.
 */
export async function buildProbe(source: string = PROBE_SRC): Promise<string> {
  const gcc = await firstLineOf('gcc', ['--version']);
  if (gcc === null) throw new Error('gcc not found: cannot build the KVM capability probe (apt-get install gcc)');
  const text = await readFile(source);
  const key = createHash('sha256').update(text).update(PROBE_CFLAGS.join(' ')).update(gcc).digest('hex').slice(0, 16);
  const dir = join(PROBE_CACHE, key);
  const name = basename(source, '.c');
  const bin = join(dir, name);
  if (await access(bin, constants.X_OK).then(() => true, () => false)) return bin;

  // Build in a scratch dir and rename into place: parallel test workers never see a half-written
  // binary, and a failed build leaves no cache entry behind.
  await mkdir(PROBE_CACHE, { recursive: true });
  const work = await mkdtemp(join(PROBE_CACHE, 'build-'));
  try {
    const tmp = join(work, name);
    const r = await execa('gcc', [...PROBE_CFLAGS, '-o', tmp, source], { reject: false, all: true });
    if (r.exitCode !== 0) {
      throw new Error(`building the host probe ${name} failed (gcc exited ${r.exitCode ?? r.signal}):\n${r.all ?? ''}`);
    }
    await mkdir(dir, { recursive: true });
    await rename(tmp, bin);
    return bin;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Builds and runs the probe; returns its parsed output. */
async function runProbe(): Promise<ProbeOutput> {
  const bin = await buildProbe();
  // Exit 2 means "could not open /dev/kvm" and still prints JSON, so don't reject on it.
  const r = await execa(bin, [], { reject: false, timeout: 15_000 });
  try {
    return JSON.parse(r.stdout) as ProbeOutput;
  } catch {
    throw new Error(`KVM capability probe gave no JSON (exit ${r.exitCode ?? r.signal}): ${r.stdout}${r.stderr}`.trim());
  }
}

// ---------------------------------------------------------------------------------------------
// Judging and showing

export function doctorVerdicts(fp: HostFingerprint): Verdict[] {
  const v: Verdict[] = [];
  const say = (level: Verdict['level'], item: string, message: string) => v.push({ level, item, message });
  const k = fp.kvm;

  if (k.device === 'missing') {
    say('error', 'kvm', `${KVM_DEVICE} does not exist: enable virtualization in the firmware and load KVM ` +
      `(modprobe kvm_intel, or modprobe kvm_amd); without it nothing runs on KVM`);
  } else if (k.device === 'no-access') {
    say('error', 'kvm', `${KVM_DEVICE} is not readable and writable by this user: ` +
      `sudo usermod -aG kvm "$USER" and log in again (or run as root)`);
  } else if (k.probeError && k.apiVersion === null) {
    say('warn', 'kvm', `${KVM_DEVICE} is there but its capabilities are unknown: ${k.probeError}`);
  } else {
    say('ok', 'kvm', `${KVM_DEVICE} usable, API ${k.apiVersion ?? '?'}, modules: ${k.modules.map((m) => m.name).join(', ') || 'none'}`);
    if (k.apiVersion !== null && k.apiVersion !== 12) {
      say('error', 'kvm', `KVM API version ${k.apiVersion}, expected 12: this kernel's KVM is not the stable API`);
    }
    if (k.probeError) say('warn', 'kvm', k.probeError);
  }

  if (k.device === 'ok') {
    const vendors = k.vendorModules.join(', ') || 'kvm';
    if (k.nested === true) say('ok', 'nested', 'nested virtualization available');
    else if (k.nested === false) {
      const fix = k.vendorModules.includes('kvm_intel')
        ? ' (to enable: modprobe -r kvm_intel && modprobe kvm_intel nested=1)'
        : k.vendorModules.includes('kvm_amd')
          ? ' (to enable: modprobe -r kvm_amd && modprobe kvm_amd nested=1)'
          : ` (${vendors} offers no VMX/SVM to guests)`;
      say('warn', 'nested', `nested virtualization unavailable: the nested family runs under TCG instead${fix}`);
    } else say('warn', 'nested', 'cannot tell whether nested virtualization works: the nested family runs under TCG');

    const features: [boolean | null, string, string][] = [
      [k.x2apic, 'x2apic', 'x2APIC'],
      [k.tscDeadline, 'tsc-deadline', 'the TSC-deadline timer'],
      [k.dirtyRing, 'dirty-ring', 'the dirty log ring'],
      [k.manualDirtyLogProtect, 'manual-dirty-log-protect', 'manual dirty log protection'],
      [k.tscScaling, 'tsc-scaling', 'TSC scaling'],
    ];
    for (const [have, item, what] of features) {
      if (have === false) say('warn', item, `KVM here does not offer ${what}: properties that need it cannot run on this host`);
      // Unknown only matters if the probe ran; a probe failure was already reported above.
      else if (have === null && k.apiVersion !== null) say('warn', item, `unknown whether KVM here offers ${what}`);
    }

    // kvm_pvm runs guest user mode natively, so it sees a CPL-3 CPUID only if the host CPU can make
    // CPUID fault there (Intel CPUID faulting, AMD CpuidUserDis; Linux calls both cpuid_fault).
    if (k.vendorModules.includes('kvm_pvm') && !fp.cpu.flags.includes('cpuid_fault')) {
      say('warn', 'cpl3-cpuid', `kvm_pvm cannot intercept CPUID at CPL 3 on this ${fp.cpu.vendor} CPU (no cpuid_fault flag): ` +
        'guest user-mode CPUID is answered by the physical CPU, not by the vCPU model; kvmprop reports it as a ' +
        'known deviation (leaks.cpuid.cpl-invariant)');
    }
  }

  if (!fp.qemu.found) {
    say('error', 'qemu', `QEMU not found at ${fp.qemu.path}: apt-get install qemu-system-x86 (or pass --qemu <path>)`);
  } else say('ok', 'qemu', `QEMU ${fp.qemu.version ?? '(version unknown)'} at ${fp.qemu.path}`);

  if (fp.tools.gcc === null) say('error', 'gcc', 'gcc not found (needed to build the guest and the probe): apt-get install gcc');
  if (fp.tools.ld === null) say('error', 'ld', 'ld not found (needed to link the guest): apt-get install binutils');
  if (fp.tools.gcc !== null && fp.tools.ld !== null) say('ok', 'toolchain', `${fp.tools.gcc}; ${fp.tools.ld}`);

  return v;
}

/**
 * Short stable id over what decides KVM's behaviour here; not over time or mutable details, nor over
 * the run's -cpu model (`qemuCpu`), which is a choice of the run rather than a trait of the host.
 */
export function fingerprintId(fp: HostFingerprint): string {
  const modules = [...fp.kvm.modules]
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((m) => [m.name, Object.entries(m.parameters).sort(([a], [b]) => a.localeCompare(b))]);
  const c = fp.cpu;
  const cpu = [c.model, c.vendor, c.family ?? null, c.modelNumber ?? null, c.stepping ?? null];
  const basis = JSON.stringify([fp.kernel.release, modules, fp.qemu.version, ...cpu]);
  return createHash('sha256').update(basis).digest('hex').slice(0, 12);
}

export function formatFingerprint(fp: HostFingerprint, verdicts: Verdict[]): string {
  const k = fp.kvm;
  const yn = (b: boolean | null) => (b === null ? '?' : b ? 'yes' : 'no');
  const lines = [
    `host ${fingerprintId(fp)} (collected ${fp.collectedAt})`,
    `  kernel    ${fp.kernel.release}`,
    `  cpu       ${fp.cpu.model} (${cpuIdentity(fp.cpu)}); flags: ${fp.cpu.flags.join(' ') || 'none of interest'}`,
    `  kvm       ${KVM_DEVICE} ${k.device}, API ${k.apiVersion ?? '?'}, vendor modules: ${k.vendorModules.join(', ') || 'none'}`,
    `  features  nested=${yn(k.nested)} x2apic=${yn(k.x2apic)} tsc-deadline=${yn(k.tscDeadline)} ` +
      `tsc-scaling=${yn(k.tscScaling)} vcpu-tsc=${k.vcpuTscKhz ? `${k.vcpuTscKhz} kHz` : '?'} dirty-ring=${yn(k.dirtyRing)} manual-dirty-log-protect=${yn(k.manualDirtyLogProtect)}`,
  ];
  const caps = Object.entries(k.caps).map(([n, r]) => `${n.replace(/^KVM_CAP_/, '')}=${r}`);
  if (caps.length) lines.push(...wrap('  caps      ', caps));
  if (k.probeError) lines.push(`  probe     ${k.probeError}`);
  k.modules.forEach((m, i) => {
    const params = Object.entries(m.parameters).map(([p, val]) => `${p}=${val}`);
    lines.push(...wrap(i === 0 ? '  modules   ' : '            ', [`${m.name}:`, ...params]));
  });
  if (!k.modules.length) lines.push('  modules   none loaded');
  lines.push(
    `  qemu      ${fp.qemu.found ? `${fp.qemu.version ?? '?'} at ${fp.qemu.path}` : `not found at ${fp.qemu.path}`}`,
  );
  if (fp.qemuCpu) lines.push(`  vcpu      ${formatQemuCpu(fp.qemuCpu)}`);
  lines.push(
    `  gcc       ${fp.tools.gcc ?? 'not found'}`,
    `  ld        ${fp.tools.ld ?? 'not found'}`,
    '',
  );
  for (const v of verdicts) lines.push(`${`[${v.level}]`.padEnd(8)}${v.item.padEnd(26)}${v.message}`);
  return lines.join('\n');
}

/** "AuthenticAMD family 25 model 1 stepping 1"; unknown numbers are left out. */
function cpuIdentity(cpu: HostFingerprint['cpu']): string {
  const parts = [cpu.vendor];
  for (const [name, n] of [['family', cpu.family], ['model', cpu.modelNumber], ['stepping', cpu.stepping]] as const) {
    if (n !== null && n !== undefined) parts.push(`${name} ${n}`);
  }
  return parts.join(' ');
}

/** "host,-arch-capabilities (requested host: <reason>)", or just the model when nothing fell back. */
export function formatQemuCpu(q: QemuCpuChoice): string {
  if (q.fallback) return `${q.used} (requested ${q.requested}: ${q.fallback.reason})`;
  return q.used === q.requested ? q.used : `${q.used} (requested ${q.requested})`;
}

/** Joins words after a label, continuing under it so long parameter lists stay readable. */
function wrap(label: string, words: string[], width = 100): string[] {
  const out: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && label.length + line.length + 1 + w.length > width) {
      out.push(line);
      line = '';
    }
    line += (line ? ' ' : '') + w;
  }
  out.push(line);
  return out.map((l, i) => (i === 0 ? label : ' '.repeat(label.length)) + l);
}
