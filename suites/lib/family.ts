/**
 * A property family, declared once: its properties, what its VMs need, the roles its VMs play,
 * what the host must offer (or the family skips, saying why), the metrics worth printing, and the
 * mutants that prove its oracles can fail. The registry lists families; the CLI, the summary line,
 * results.json and the sensitivity tests read everything else from here.
 */
import type { HostFingerprint } from '../../harness/fingerprint.js';
import type { MachineConfig, MachineType, Vm } from '../../harness/vm.js';
import type { RunOptions } from './options.js';
import type { AnyProperty } from './property.js';
import type { VmRole } from './run.js';
import type { CoverageClaim } from './coverage.js';

export interface MutantVm {
  readonly role: VmRole;
  /** The VM's private directory, for files the mutant needs. */
  readonly dir: string;
  readonly config: MachineConfig;
}

/** A deliberately broken system under test: a property must fail on it, with a shrunk counterexample. */
export interface Mutant {
  readonly name: string;
  readonly description: string;
  /** Properties this mutant must make fail. */
  readonly breaks: readonly string[];
  /** The VM roles it changes; the others run as they are (so facts and workload disagree). */
  readonly roles: readonly VmRole[] | 'all';
  /** A machine type the mutant needs. */
  readonly machine?: MachineType;
  /**
   * The configuration its sensitivity test runs in, chosen so that no deviation of the host under
   * test can mask the mutant: CPUID mutants run under TCG with a fixed CPU model, where QEMU's own
   * CPUID is the reference on any host, whatever its vendor or its KVM.
   */
  readonly sensitivity?: { readonly accel: 'kvm' | 'tcg'; readonly cpu?: string };
  /** Arguments it adds to a VM of its roles (none: the mutant breaks the model or the stream, not QEMU). */
  qemuArgs?(vm: MutantVm): Promise<readonly string[]>;
  /** Disturbs a running VM of its roles through QMP (stop/cont at chosen moments), until `done`. */
  during?(vm: Vm, done: AbortSignal): Promise<void>;
  /**
   * A broken model instead of a broken system: the property predicts with these switches flipped
   * (e.g. { lapic: { tdcrMidCount: 'next-reload' } }), so a correct host disagrees with it. Each
   * family reads the keys it knows.
   */
  readonly modelVariant?: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  /**
   * Something put between a migration's source and destination (a proxy that mutates one page
   * record of the stream), given the pages it may aim at and the word they begin with. Its
   * property then generates only plain precopy streams, the only kind the proxy understands.
   */
  readonly migrationIntercept?: (target: { readonly pages: readonly number[]; readonly magic: bigint }) => (dstUri: string, dstDir: string) => Promise<{ readonly uri: string; close(): Promise<void> }>;
}

/** A host capability a family needs, read from the fingerprint; without it the family skips. */
export interface Requirement {
  readonly name: 'kvm' | 'nested' | 'dirty-ring' | 'tsc-deadline' | 'x2apic';
  /** Why the family needs it, for the skip reason. */
  readonly why: string;
}

export interface MetricSpec {
  /** The key properties count under (Metrics.add). */
  readonly key: string;
  /** How the summary line names it: "exercised: N <label>". */
  readonly label: string;
}

export interface Family {
  readonly name: string;
  readonly title: string;
  readonly properties: readonly AnyProperty[];
  /** What every VM of the family needs (properties may ask for more). */
  readonly machine?: Partial<Pick<MachineConfig, 'cpus' | 'ramMiB'>>;
  /** The VM roles its cases use, and what each is. */
  readonly roles: Readonly<Partial<Record<VmRole, string>>>;
  readonly requires: readonly Requirement[];
  readonly metrics: readonly MetricSpec[];
  readonly mutants: readonly Mutant[];
  /**
   * The KVM paths its properties drive, judged against KVM's own counters after each run
   * (suites/lib/coverage.ts). A family with none under some configuration says so in its manifest.
   */
  readonly coverage?: readonly CoverageClaim[];
}

export function defineFamily(f: Family): Family {
  for (const p of f.properties) {
    if (p.family !== f.name) throw new Error(`property ${p.id} says family '${p.family}', but is listed in '${f.name}'`);
  }
  const ids = new Set(f.properties.map((p) => p.id));
  for (const c of f.coverage ?? []) {
    const unknown = (c.properties ?? []).filter((id) => !ids.has(id));
    if (unknown.length) throw new Error(`family '${f.name}': a coverage claim names properties it does not have: ${unknown.join(', ')}`);
    if (!c.anyOf.length || !c.anyOf.every((n) => /^(vm|vcpu)\.[a-z0-9_]+$/.test(n))) throw new Error(`family '${f.name}': a coverage claim must name counters as vm.<name> or vcpu.<name>: ${c.anyOf.join(', ')}`);
  }
  return f;
}

/** Why a family cannot run on this host with these options, or null. */
export function unmetRequirement(f: Family, host: HostFingerprint, o: RunOptions): string | null {
  for (const r of f.requires) {
    const have = (() => {
      switch (r.name) {
        case 'kvm':
          return o.accel !== 'kvm' || host.kvm.device === 'ok';
        case 'nested':
          return host.kvm.nested === true;
        case 'dirty-ring':
          return host.kvm.dirtyRing === true;
        case 'tsc-deadline':
          return o.accel === 'tcg' || host.kvm.tscDeadline === true;
        case 'x2apic':
          return o.accel === 'tcg' || host.kvm.x2apic === true;
      }
    })();
    if (!have) return `this host has no ${r.name} (${r.why})`;
  }
  return null;
}
