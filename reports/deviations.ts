/**
 * Known deviations: documented ways a particular host differs from the spec. A failure is reported
 * as `known-deviation` (never hidden, never a pass) only when the property, the host and the
 * failure itself all match an entry — so the gate waives exactly that, and any other failure of the
 * same property on the same host still fails.
 */
import { readFileSync } from 'node:fs';
import type { HostFingerprint } from '../harness/fingerprint.js';

export interface HostMatch {
  /** Regular expression over the kernel release. */
  readonly kernelRelease?: string;
  /** All of these KVM vendor modules are loaded. */
  readonly vendorModules?: readonly string[];
  /** Regular expression over QEMU's version string. */
  readonly qemuVersion?: string;
  /** Regular expression over the CPU model name. */
  readonly cpuModel?: string;
}

const HOST_TRAITS: readonly (keyof HostMatch)[] = ['kernelRelease', 'vendorModules', 'qemuVersion', 'cpuModel'];

export interface KnownDeviation {
  readonly id: string;
  /** Property id this deviation applies to. */
  readonly property: string;
  readonly host: HostMatch;
  /** Regular expression the failure's one-line summary must match. */
  readonly failure: string;
  /** What was observed, with figures, and how to reproduce it. */
  readonly evidence: string;
  /** The spec text the host departs from. */
  readonly citation: string;
  readonly recorded: string;
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
    const mods = d.host.vendorModules;
    if (mods !== undefined && (!Array.isArray(mods) || !mods.every((m) => typeof m === 'string'))) {
      throw new DeviationsError(`${source}: deviations[${i}].host.vendorModules must be an array of module names`);
    }
    for (const re of [d.failure, d.host.kernelRelease, d.host.qemuVersion, d.host.cpuModel]) {
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
  return true;
}

/** The deviation that covers this failure on this host, if any. */
export function matchDeviation(
  file: DeviationsFile,
  property: string,
  failureSummary: string,
  fp: HostFingerprint,
): KnownDeviation | undefined {
  return file.deviations.find((d) => d.property === property && hostMatches(d.host, fp) && new RegExp(d.failure).test(failureSummary));
}
