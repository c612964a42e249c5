/**
 * Known deviations: documented ways a particular host differs from the spec. A failure is reported
 * as `known-deviation` (never hidden, never a pass) only when the property, the host and the
 * failure itself all match an entry — so the gate waives exactly that, and any other failure of the
 * same property on the same host still fails.
 */
import { readFileSync } from 'node:fs';
import { CPU_FLAGS, type HostFingerprint } from '../harness/fingerprint.js';

export interface HostMatch {
  /** Regular expression over the kernel release. */
  readonly kernelRelease?: string;
  /** All of these KVM vendor modules are loaded. */
  readonly vendorModules?: readonly string[];
  /** Regular expression over QEMU's version string. */
  readonly qemuVersion?: string;
  /** Regular expression over the CPU model name. */
  readonly cpuModel?: string;
  /** The CPU vendor, exactly: 'GenuineIntel', 'AuthenticAMD'. */
  readonly cpuVendor?: string;
  /** The CPU family as /proc/cpuinfo gives it (extended family included: 25 for AMD Zen 3/4). */
  readonly cpuFamily?: number;
  /** The CPU model number as /proc/cpuinfo gives it ("model"; extended model included). */
  readonly cpuModelNumber?: number;
  /** All of these CPU flags are present (names as in /proc/cpuinfo; only those the fingerprint records). */
  readonly cpuFlagsPresent?: readonly string[];
  /** None of these CPU flags is present. */
  readonly cpuFlagsAbsent?: readonly string[];
  /** Regular expression over the -cpu model QEMU ran (the fingerprint's qemuCpu.used); no match when unknown. */
  readonly qemuCpuModel?: string;
}

const HOST_TRAITS: readonly (keyof HostMatch)[] = [
  'kernelRelease', 'vendorModules', 'qemuVersion', 'cpuModel',
  'cpuVendor', 'cpuFamily', 'cpuModelNumber', 'cpuFlagsPresent', 'cpuFlagsAbsent', 'qemuCpuModel',
];
const REGEX_TRAITS = ['kernelRelease', 'qemuVersion', 'cpuModel', 'qemuCpuModel'] as const;
const RECORDED_FLAGS: readonly string[] = CPU_FLAGS;

export interface KnownDeviation {
  readonly id: string;
  /** Property id this deviation applies to. */
  /** Property id this deviation applies to, or a family prefix ending in `.*` (e.g. `leaks.device.*`). */
  readonly property: string;
  /**
   * The run configuration it applies under, when it is a property of one configuration rather than
   * of the host alone (e.g. a QEMU TCG quirk: `{ "accel": "tcg" }`). Absent: every configuration.
   */
  readonly when?: RunConfigMatch;
  readonly host: HostMatch;
  /** Regular expression the failure's one-line summary must match. */
  readonly failure: string;
  /** What was observed, with figures, and how to reproduce it. */
  readonly evidence: string;
  /** The spec text the host departs from. */
  readonly citation: string;
  readonly recorded: string;
}

/** The parts of a run's configuration a deviation can be limited to. */
export interface RunConfigMatch {
  readonly accel?: 'kvm' | 'tcg';
  /** Machine type: microvm, pc or q35. */
  readonly machine?: string;
  /**
   * Whose interrupt controllers run under KVM: 'on' (all in the kernel, the default), 'split' (the
   * LAPIC in the kernel, IOAPIC/PIC/PIT in QEMU) or 'off' (QEMU's own APIC, hw/intc/apic.c), as
   * given with --kernel-irqchip. A run without it (whose irqchip is the machine's or the family's
   * default) or under TCG never matches a `kernelIrqchip`.
   */
  readonly kernelIrqchip?: 'on' | 'split' | 'off';
}

const CONFIG_TRAITS: readonly (keyof RunConfigMatch)[] = ['accel', 'machine', 'kernelIrqchip'];

/** The run configuration traits of a run's options (kernelIrqchip only as given, and only under KVM). */
export function runConfigOf(o: { readonly accel: 'kvm' | 'tcg'; readonly machine?: string; readonly kernelIrqchip?: 'on' | 'split' | 'off' }): RunConfigMatch {
  return { accel: o.accel, ...(o.machine !== undefined ? { machine: o.machine } : {}), ...(o.accel === 'kvm' && o.kernelIrqchip ? { kernelIrqchip: o.kernelIrqchip } : {}) };
}

export interface DeviationsFile {
  readonly version: 1;
  readonly deviations: readonly KnownDeviation[];
}

export class DeviationsError extends Error {
  override name = 'DeviationsError';
}

export function parseDeviations(text: string, source = 'known deviations'): DeviationsFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new DeviationsError(`${source}: not valid JSON (${(e as Error).message})`);
  }
  const f = raw as Partial<DeviationsFile>;
  if (f?.version !== 1 || !Array.isArray(f.deviations)) throw new DeviationsError(`${source}: expected {"version": 1, "deviations": [...]}`);
  f.deviations.forEach((d, i) => {
    for (const k of ['id', 'property', 'failure', 'evidence', 'citation', 'recorded'] as const) {
      if (typeof d?.[k] !== 'string' || d[k].length === 0) throw new DeviationsError(`${source}: deviations[${i}].${k} is required`);
    }
    if (typeof d.host !== 'object' || d.host === null || Object.keys(d.host).length === 0) {
      throw new DeviationsError(`${source}: deviations[${i}].host must name at least one host trait`);
    }
    // A misspelled trait would otherwise match every host.
    for (const k of Object.keys(d.host)) {
      if (!HOST_TRAITS.includes(k as keyof HostMatch)) {
        throw new DeviationsError(`${source}: deviations[${i}].host.${k} is not a host trait (known: ${HOST_TRAITS.join(', ')})`);
      }
    }
    if (d.when !== undefined) {
      if (typeof d.when !== 'object' || d.when === null || Object.keys(d.when).length === 0) {
        throw new DeviationsError(`${source}: deviations[${i}].when must name at least one of ${CONFIG_TRAITS.join(', ')}`);
      }
      for (const k of Object.keys(d.when)) {
        if (!CONFIG_TRAITS.includes(k as keyof RunConfigMatch)) {
          throw new DeviationsError(`${source}: deviations[${i}].when.${k} is not a run configuration trait (known: ${CONFIG_TRAITS.join(', ')})`);
        }
      }
      if (d.when.accel !== undefined && d.when.accel !== 'kvm' && d.when.accel !== 'tcg') {
        throw new DeviationsError(`${source}: deviations[${i}].when.accel must be kvm or tcg`);
      }
      if (d.when.kernelIrqchip !== undefined && !['on', 'split', 'off'].includes(d.when.kernelIrqchip)) {
        throw new DeviationsError(`${source}: deviations[${i}].when.kernelIrqchip must be on, split or off`);
      }
    }
    const host = d.host as Record<keyof HostMatch, unknown>;
    const bad = (k: keyof HostMatch, what: string) => new DeviationsError(`${source}: deviations[${i}].host.${k} must be ${what}`);
    const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((m) => typeof m === 'string' && m.length > 0);
    if (host.vendorModules !== undefined && !isStrings(host.vendorModules)) throw bad('vendorModules', 'an array of module names');
    for (const k of REGEX_TRAITS) {
      if (host[k] !== undefined && (typeof host[k] !== 'string' || host[k] === '')) throw bad(k, 'a regular expression (a non-empty string)');
    }
    if (host.cpuVendor !== undefined && (typeof host.cpuVendor !== 'string' || host.cpuVendor === '')) {
      throw bad('cpuVendor', "a vendor string such as 'GenuineIntel' or 'AuthenticAMD'");
    }
    for (const k of ['cpuFamily', 'cpuModelNumber'] as const) {
      const n = host[k];
      if (n !== undefined && !(typeof n === 'number' && Number.isInteger(n) && n >= 0)) throw bad(k, 'a non-negative integer');
    }
    for (const k of ['cpuFlagsPresent', 'cpuFlagsAbsent'] as const) {
      const flags = host[k];
      if (flags === undefined) continue;
      if (!isStrings(flags)) throw bad(k, 'an array of CPU flag names');
      // A flag the fingerprint does not record always reads absent: it would match every host.
      for (const f of flags) {
        if (!RECORDED_FLAGS.includes(f)) {
          throw new DeviationsError(`${source}: deviations[${i}].host.${k}: ${JSON.stringify(f)} is not a CPU flag the ` +
            `fingerprint records (known: ${RECORDED_FLAGS.join(', ')})`);
        }
      }
    }
    for (const re of [d.failure, ...REGEX_TRAITS.map((k) => d.host[k])]) {
      if (re !== undefined) {
        try {
          new RegExp(re);
        } catch {
          throw new DeviationsError(`${source}: deviations[${i}] has an invalid regular expression ${JSON.stringify(re)}`);
        }
      }
    }
  });
  return f as DeviationsFile;
}

export function loadDeviations(path: string): DeviationsFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new DeviationsError(`cannot read known deviations ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseDeviations(text, path);
}

export function hostMatches(m: HostMatch, fp: HostFingerprint): boolean {
  if (m.kernelRelease && !new RegExp(m.kernelRelease).test(fp.kernel.release)) return false;
  if (m.qemuVersion && !new RegExp(m.qemuVersion).test(fp.qemu.version ?? '')) return false;
  if (m.cpuModel && !new RegExp(m.cpuModel).test(fp.cpu.model)) return false;
  if (m.vendorModules && !m.vendorModules.every((v) => fp.kvm.vendorModules.includes(v))) return false;
  const cpu = fp.cpu;
  if (m.cpuVendor !== undefined && cpu.vendor !== m.cpuVendor) return false;
  // Older fingerprints lack family and model numbers: unknown never matches.
  if (m.cpuFamily !== undefined && (cpu.family ?? null) !== m.cpuFamily) return false;
  if (m.cpuModelNumber !== undefined && (cpu.modelNumber ?? null) !== m.cpuModelNumber) return false;
  if (m.cpuFlagsPresent && !m.cpuFlagsPresent.every((f) => cpu.flags.includes(f))) return false;
  if (m.cpuFlagsAbsent && m.cpuFlagsAbsent.some((f) => cpu.flags.includes(f))) return false;
  if (m.qemuCpuModel !== undefined && (fp.qemuCpu === undefined || !new RegExp(m.qemuCpuModel).test(fp.qemuCpu.used))) return false;
  return true;
}

/** The deviation that covers this failure on this host, if any. */
export function propertyMatches(pattern: string, property: string): boolean {
  return pattern.endsWith('.*') ? property.startsWith(pattern.slice(0, -1)) : pattern === property;
}

export function configMatches(when: RunConfigMatch | undefined, config: RunConfigMatch | undefined): boolean {
  if (!when) return true;
  if (!config) return false;
  return CONFIG_TRAITS.every((k) => when[k] === undefined || when[k] === config[k]);
}

export function matchDeviation(
  file: DeviationsFile,
  property: string,
  failureSummary: string,
  fp: HostFingerprint,
  config?: RunConfigMatch,
): KnownDeviation | undefined {
  return file.deviations.find(
    (d) => propertyMatches(d.property, property) && configMatches(d.when, config) && hostMatches(d.host, fp) && new RegExp(d.failure).test(failureSummary),
  );
}
