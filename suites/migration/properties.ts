/**
 * Migration properties. Both observe the same kind of case (observe.ts): a dirtying workload
 * migrated live with generated parameters; each makes its own claim about it.
 *  - migration.switchover: with the source stopped at completion and the destination loaded but
 *    not resumed, both hold the same guest RAM, byte for byte, and the same vCPU and device state
 *    (through QMP/HMP, and for a hop through a file, the device sections of the two streams);
 *    a migration that should converge completes, one that cannot complete in time does not.
 *  - migration.resume: the destination then runs the guest on from there and stops when told,
 *    the source stays where it stopped, and what the workload wrote is what the model says
 *    (models/migration/dirty.ts) for the progress the destination reports.
 */
import type fc from 'fast-check';
import { migrationCaseArb, writersNotGenerated, type MigrationCase } from '../../generators/migration.js';
import { readFileSync } from 'node:fs';
import { freeHugePages2M, type RamBackend } from '../../harness/ramMap.js';
import { runRootFilesystem } from '../../harness/runtime.js';
import { filteredBits } from '../../models/cpuid/features.js';
import { factsFor } from '../lib/run.js';
import { defineProperty, difference, rule, type Difference, type PropertyEnv, type Rule } from '../lib/property.js';
import { HOPELESS, observeMigration, type Hop, type MigrationFacts, type MigrationObservation, type ObserveOptions } from './observe.js';

/** RAM sizes a case draws from (MiB); larger ones under --runs big enough to afford them. */
export const RAM_SIZES = [64, 64, 128, 256, 1024] as const;

async function facts(env: PropertyEnv): Promise<MigrationFacts> {
  const khz = env.host.kvm.vcpuTscKhz;
  // The vector writers need the vCPU's features, which QEMU's facts tell (not the host's /proc/cpuinfo).
  const m = await factsFor(env);
  const has = (prop: string, leaf: number, reg: 'ebx' | 'ecx', bit: number) => m.cpu.props[prop] === true && ((filteredBits(m.filteredFeatures, leaf, 0, reg) >>> bit) & 1) === 0;
  const avx = has('xsave', 1, 'ecx', 26) && has('avx', 1, 'ecx', 28);
  // Only the delays between passes use the rate (a dirty rate, not a measurement): a rough one will do.
  // PV EOI where QEMU gives the vCPU KVM's feature bit (kvm-pv-eoi; on by default under KVM) and
  // KVM has the LAPIC (the flag is its lapic.c's: kvm_lapic_set_pv_eoi).
  const pvEoi = env.options.accel === 'kvm' && env.options.kernelIrqchip !== 'off' && m.cpu.props['kvm-pv-eoi'] !== false;
  return { tscHz: khz ? khz * 1000 : 2e9, avx, avx512: avx && has('avx512f', 7, 'ebx', 16), hugePagesFreeMiB: hugePagesFreeMiB(), pvEoi };
}

function hugePagesFreeMiB(): number {
  try {
    return freeHugePages2M(readFileSync('/proc/meminfo', 'utf8')) * 2;
  } catch {
    return 0;
  }
}

/**
 * The RAM backends this host can run (harness/ramMap.ts): a file, anonymous memory (THP under
 * `madvise`), memfd everywhere; hugetlbfs where the free 2 MiB pages hold the smallest case (both
 * VMs). What the host cannot run is said once, in the family's not-generated list.
 */
export function ramBackendsFor(hugePagesMiB: number, minRamMiB: number): { backends: RamBackend[]; notGenerated: { what: string; why: string }[] } {
  const need = 2 * minRamMiB;
  if (hugePagesMiB >= need) return { backends: ['file', 'anonymous', 'memfd', 'hugetlbfs'], notGenerated: [] };
  return {
    backends: ['file', 'anonymous', 'memfd'],
    notGenerated: [{ what: 'guest RAM on hugetlbfs', why: `the host has ${hugePagesMiB} MiB of free 2 MiB huge pages (/proc/meminfo HugePages_Free); a case needs ${need} MiB at least, its two VMs' RAM` }],
  };
}

function arbitrary(f: MigrationFacts, env: PropertyEnv): fc.Arbitrary<MigrationCase> {
  const ram = ramBackendsFor(f.hugePagesFreeMiB ?? 0, Math.min(...RAM_SIZES));
  return migrationCaseArb({
    avx: f.avx === true,
    avx512: f.avx512 === true,
    ramBackends: ram.backends,
    hugePagesMiB: f.hugePagesFreeMiB ?? 0,
    ramMiB: RAM_SIZES,
    maxCpus: 2,
    dirtyRing: env.options.accel === 'kvm' && env.host.kvm.dirtyRing === true,
    // Postcopy needs guest RAM that userfaultfd can track: a tmpfs file (harness/runtime.ts).
    postcopy: runRootFilesystem() === 'tmpfs',
    kvmclock: env.options.accel === 'kvm',
    pvEoi: f.pvEoi === true,
    tscDeadline: env.options.accel === 'tcg' || env.host.kvm.tscDeadline === true,
    // Every machine we run (microvm, pc, q35) has an 8254 on IRQ0 and an IOAPIC.
    pit: true,
    // A mutant's run: plain precopy (all a stream proxy understands), one hop, the smallest RAM:
    // cheap cases, which shrink fast.
    ...(env.mutant?.migrationIntercept || env.mutant?.modelVariant?.migrationTime ? { plainStream: true } : {}),
  });
}

/** What a property asks of the observation beyond the common part (ObserveOptions). */
type Observing = Pick<ObserveOptions, 'streamOracle' | 'resume'>;

function observer(how: Observing) {
  return (c: MigrationCase, f: MigrationFacts, env: PropertyEnv) => {
    const m = env.mutant?.migrationIntercept;
    return observeMigration(c, f, env, { ...how, ...(m ? { interceptFor: (w) => m({ pages: w.sentinels, magic: w.magic }) } : {}) });
  };
}

function where(h: Hop): string {
  return `migration ${h.from} → ${h.to}`;
}

function words(o: MigrationObservation): Record<string, string> {
  return Object.fromEntries(Object.entries(o.qemuStderr).filter(([, v]) => v.trim().length > 0));
}

const completes: Rule<MigrationObservation> = rule('a migration that should complete does', function* (o) {
  for (const h of o.hops) {
    if (h.error === null || h.gaveUp) continue;
    yield difference(`${where(h)} did not complete: ${h.error}`, { status: 'completed', prediction: h.prediction }, { status: h.info?.status ?? 'failed', error: h.error, info: h.info }, { evidence: { qemu: words(o) } });
  }
});

const hopeless: Rule<MigrationObservation> = rule('a migration that cannot complete does not', function* (o) {
  if (!o.hopeless || o.hopeless.status === 'cancelled') return;
  yield difference(
    `a migration capped at ${HOPELESS.bandwidth} B/s ended '${o.hopeless.status}' within the ${HOPELESS.cancelAfterMs} ms before its cancel, though its first pass alone puts ${o.firstPassBytes} bytes on the wire (a zero-page record per page at least)`,
    { status: 'cancelled', why: 'no migration completes before its first pass sent every page once (models/migration/convergence.ts cannotCompleteWithin)' },
    { status: o.hopeless.status, info: o.hopeless.info, error: o.hopeless.error },
    { evidence: { qemu: words(o) } },
  );
});

const ramIdentical: Rule<MigrationObservation> = rule('RAM identical at switchover', function* (o) {
  for (const h of o.hops) {
    if (!h.ram || h.ram.identical) continue;
    const p = h.ram.pages[0];
    const at = p ? ` (first: page 0x${p.page.toString(16)} + 0x${p.offset.toString(16)}, source ${p.a}, destination ${p.b}${p.why ? `: ${p.why}` : ''})` : '';
    yield difference(`${where(h)}: ${h.ram.differingPages} page(s) of guest RAM differ at the switchover${at}`, { differingPages: 0 }, { differingPages: h.ram.differingPages, pages: h.ram.pages }, { evidence: { qemu: words(o), info: h.info } });
  }
});

const stateIdentical: Rule<MigrationObservation> = rule('vCPU and device state identical at switchover', function* (o) {
  for (const h of o.hops) {
    if (!h.state || h.state.length === 0) continue;
    const d = h.state[0]!;
    yield difference(
      `${where(h)}: ${h.state.length} item(s) of vCPU/device state differ at the switchover (first: ${d.section} ${d.key}: source ${d.a ?? '(absent)'}, destination ${d.b ?? '(absent)'})`,
      { differences: 0 },
      { differences: h.state },
      { evidence: { ...h.stateEvidence, qemu: words(o) } },
    );
  }
});

const streamsIdentical: Rule<MigrationObservation> = rule('device sections of the two streams identical at switchover', function* (o) {
  for (const h of o.hops) {
    const s = h.stream;
    if (!s) continue;
    if (s.error) {
      yield difference(`${where(h)}: the streams of the switchover could not be saved and read: ${s.error}`, 'the destination saves, and both streams parse', s.error, { evidence: { qemu: words(o) } });
      continue;
    }
    for (const [side, missing] of [['source', s.onlyIn.b], ['destination', s.onlyIn.a]] as const) {
      if (missing.length) yield difference(`${where(h)}: the ${side}'s stream has no section ${missing.join(', ')}`, 'the same device sections in both streams', { missing, side }, { evidence: { compared: s.compared } });
    }
    for (const d of s.differences) {
      yield difference(
        `${where(h)}: device section ${d.section} field ${d.field} differs between the stream the source sent and the destination saved before resuming (source ${d.a}, destination ${d.b})`,
        { section: d.section, field: d.field, value: d.a },
        { section: d.section, field: d.field, value: d.b },
        { evidence: { compared: s.compared, allowed: s.allowed, qemu: words(o) } },
      );
    }
  }
});

const progressIdentical: Rule<MigrationObservation> = rule('guest progress identical at switchover', function* (o) {
  for (const h of o.hops) {
    if (!h.progress || h.progress.source.every((v, i) => v === h.progress!.destination[i])) continue;
    yield difference(`${where(h)}: the destination's threads report ops_done ${h.progress.destination.join(', ')}, the source stopped at ${h.progress.source.join(', ')}`, h.progress.source, h.progress.destination, { evidence: { qemu: words(o) } });
  }
});

const runsOn: Rule<MigrationObservation> = rule('the destination runs on', function* (o) {
  for (const h of o.hops) {
    if (!h.resumed || h.resumed.ran) continue;
    yield difference(`${where(h)}: after cont the destination did not run on: ${h.resumed.ranWhy}`, 'every thread moves past where the source stopped', h.resumed.ranWhy, { evidence: { qemu: words(o) } });
  }
});

const stopStops: Rule<MigrationObservation> = rule('stop stops the destination, and the source stays stopped', function* (o) {
  for (const h of o.hops) {
    if (!h.resumed) continue;
    if (!h.resumed.stopped) yield difference(`${where(h)}: after stop the destination's threads still moved`, 'no progress while stopped', 'progress');
    if (!h.resumed.sourceStill) yield difference(`${where(h)}: the source moved after it was migrated away (or left 'postmigrate')`, 'the source stays where it stopped', 'it moved');
  }
});

const modelAfterResume: Rule<MigrationObservation> = rule('RAM matches the model after resume', function* (o) {
  for (const h of o.hops) {
    if (!h.resumed || h.resumed.arena.length === 0) continue;
    const d = h.resumed.arena[0]!;
    yield difference(
      `${where(h)}: after the destination ran to ops_done ${h.resumed.opsDone.join(', ')}, 0x${d.addr.toString(16)} reads ${d.observed}, the model says ${d.expected} (${d.why})${h.resumed.arena.length > 1 ? `; ${h.resumed.arena.length - 1} more` : ''}`,
      h.resumed.arena.map((x) => ({ addr: x.addr, value: x.expected })),
      h.resumed.arena.map((x) => ({ addr: x.addr, value: x.observed, why: x.why })),
      { evidence: { qemu: words(o), info: h.info } },
    );
  }
});

const timeGoesOn: Rule<MigrationObservation> = rule('time never goes back, and a timer or device interrupt armed before fires once, not early', function* (o) {
  for (const h of o.hops) {
    for (const d of h.resumed?.time ?? []) yield difference(`${where(h)}: ${d.summary}`, d.expected, d.observed, { evidence: { watches: h.resumed!.watches.map((w) => ({ ...w, last: w.last.toString(), backwards: w.backwards.toString(), worstBack: w.worstBack.toString(), samples: w.samples.toString() })), qemu: words(o) } });
  }
});

const vectorsKept: Rule<MigrationObservation> = rule('vector registers keep their pattern', function* (o) {
  for (const h of o.hops) {
    const v = h.resumed?.vectors ?? [];
    if (v.length === 0) continue;
    yield difference(
      `${where(h)}: after the destination ran, vCPU ${v[0]!.cpu} ${v[0]!.reg} holds ${v[0]!.observed ?? '(not shown)'}, the pattern filled before the migration is ${v[0]!.expected}${v.length > 1 ? `; ${v.length - 1} more` : ''}`,
      v.map((x) => ({ cpu: x.cpu, reg: x.reg, value: x.expected })),
      v.map((x) => ({ cpu: x.cpu, reg: x.reg, value: x.observed })),
      { evidence: { qemu: words(o) } },
    );
  }
});

function migrationProperty(id: string, statement: string, rules: readonly Rule<MigrationObservation>[], how: Observing = {}) {
  return defineProperty<MigrationCase, MigrationFacts, MigrationObservation>({
    id,
    family: 'migration',
    statement,
    facts,
    arbitrary,
    notGenerated: (f) => [
      ...writersNotGenerated({ avx: f.avx === true, avx512: f.avx512 === true }),
      ...ramBackendsFor(f.hugePagesFreeMiB ?? 0, Math.min(...RAM_SIZES)).notGenerated,
      ...(f.pvEoi ? [] : [{ what: 'PV EOI (MSR_KVM_PV_EOI_EN)', why: "the vCPU does not offer it (not KVM, or QEMU's kvm-pv-eoi is off)" }]),
    ],
    observe: observer(how),
    rules,
  });
}

export const migrationSwitchover = migrationProperty(
  'migration.switchover',
  'A live migration of a guest that dirties memory (generated writers, layouts and rates; dirty bitmap or ring; multifd, xbzrle, auto-converge, postcopy, bandwidth and downtime limits; cancel-then-retry; ping-pong) completes when the model says it converges, and one capped so that it cannot complete before its cancel does not; at the switchover the stopped source and the loaded destination hold byte-identical guest RAM (where the destination KVM may only have completed a later update of an enabled kvmclock area, which msr.rst allows at any time), the same vCPU and device state and the same guest progress; after a hop through a file, the device sections of the stream the source saved equal those of the destination saved again before it resumes, field by field (suites/migration/streamExclusions.ts names the fields that may differ, and why)',
  [hopeless, completes, ramIdentical, stateIdentical, streamsIdentical, progressIdentical],
  // Every rule is judged before the resume: the last hop is not resumed.
  { streamOracle: true, resume: false },
);

export const migrationResume = migrationProperty(
  'migration.resume',
  'After a live migration the destination runs the guest on from where the source stopped and stops when told, the source stays stopped, and the memory the workload wrote is exactly what the model predicts for the progress the destination reports (every counter its count, one +1 edge in the pass in progress, sentinel pages intact, every other byte zero), the vector registers hold the pattern filled before it; TSC and kvmclock never go back across it, and a TSC deadline or a PIT one-shot (IRQ0 through the IOAPIC) armed before it interrupts exactly once, not early, not while interrupts are off, and not lost',
  [completes, runsOn, stopStops, modelAfterResume, vectorsKept, timeGoesOn],
);

export type { Difference };
