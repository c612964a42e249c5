/**
 * What every timer property knows before its first case: the machine its VMs run (an RTC and a
 * PIT, a TSC rate the guest can read), the clock rates as the guest sees them, KVM's period floor,
 * and the lateness bound — calibrated from the host's own timer-wakeup noise, measured outside
 * any VM (harness/probe/jitter.c), never from the guest timers under test: an injection delay
 * would calibrate itself away.
 */
import { execa } from 'execa';
import { join } from 'node:path';
import { buildProbe } from '../../harness/fingerprint.js';
import { PROJECT_ROOT } from '../../harness/guest/build.js';
import { LAYOUT } from '../../harness/guest/abi.js';
import type { MachineConfig } from '../../harness/vm.js';
import { ProgramBuilder } from '../../ir/builder.js';
import { recordsOf } from '../../ir/ops.js';
import { tscRateFromCpuid } from '../../models/timers/common.js';
import { APIC_LVTT, APIC_TDCR, APIC_TMICT, LAPIC_VECTOR } from '../../generators/timers.js';
import { vcpuModel } from '../lib/options.js';
import { difference, type Difference, type PropertyEnv } from '../lib/property.js';
import { observeProgram } from '../lib/run.js';
import type { TimerDifference } from '../../models/timers/common.js';

const JITTER_SRC = join(PROJECT_ROOT, 'harness', 'probe', 'jitter.c');

export interface HostNoise {
  readonly samples: number;
  readonly sleepNs: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
}

/** The host's timer-wakeup lateness (ns): a thread sleeping SLEEP_NS on CLOCK_MONOTONIC, SAMPLES times. */
export async function measureHostNoise(samples = 2000, sleepNs = 200_000): Promise<HostNoise> {
  const bin = await buildProbe(JITTER_SRC);
  const r = await execa(bin, [String(samples), String(sleepNs)], { reject: false, timeout: 60_000 });
  if (r.exitCode !== 0) throw new Error(`the host noise probe failed: ${r.stderr || r.exitCode}`);
  const j = JSON.parse(r.stdout) as { samples: number; sleep_ns: number; p50: number; p90: number; p99: number; max: number };
  return { samples: j.samples, sleepNs: j.sleep_ns, p50: j.p50, p90: j.p90, p99: j.p99, max: j.max };
}

let recent: { at: number; noise: HostNoise } | null = null;

/**
 * The host's noise measured at most maxAgeMs ago (else measured now): a failing case measures it
 * again after itself (timerProperty.ts), and shrinking fails many cases in a row, each a second
 * or two apart — one measurement serves them all (a vcpu-stop-cont run took 84 s instead of 21
 * measuring it after every one).
 */
export async function recentHostNoise(maxAgeMs = 10_000): Promise<HostNoise> {
  if (recent && Date.now() - recent.at <= maxAgeMs) return recent.noise;
  const noise = await measureHostNoise();
  recent = { at: Date.now(), noise };
  return noise;
}

/**
 * The lateness bound, from the host's noise: a guest timer interrupt goes through the same hrtimer
 * wake-up as the probe's thread, then a VM entry with an injection. The bound allows the host's
 * p99 wake-up delay eight times over plus a fixed 500 µs for the exit/inject path (kvm_pvm takes
 * tens of µs per exit here; trapped APIC writes 10–30 µs). A case fails the lateness property when
 * its p90 lateness exceeds the bound; an interrupt later than LOST_FACTOR bounds counts as lost.
 */
export function latenessBoundNs(noise: HostNoise): number {
  return 8 * noise.p99 + 500_000;
}

/** How latenessBoundNs came from the noise, in words (the source a failure names). */
export function latenessBoundWords(noise: HostNoise): string {
  return `8 × host timer-wakeup p99 (${(noise.p99 / 1000).toFixed(0)} µs over ${noise.samples} sleeps) + 500 µs`;
}

/** After how long a missing interrupt counts as lost, for a lateness bound (ns). */
export function lostAfterNsFor(boundNs: number): number {
  return Math.max(LOST_FLOOR_NS, LOST_FACTOR * boundNs);
}
export const LOST_FACTOR = 20;
/** Least time, ns, after which a missing interrupt counts as lost: a descheduled vCPU thread on a 2-core shared host. */
export const LOST_FLOOR_NS = 50_000_000;

export interface TimerFacts {
  readonly tscHz: number;
  readonly tscSource: string;
  readonly apicBusHz: number;
  readonly apicBusSource: string;
  /** KVM's min_timer_period_us as ns (0 under TCG: QEMU's APIC has no floor). */
  readonly minPeriodNs: number;
  readonly tscDeadline: boolean;
  readonly x2apic: boolean;
  readonly kvmclock: boolean;
  readonly noise: HostNoise;
  readonly latenessBoundNs: number;
  readonly latenessSource: string;
  readonly lostAfterNs: number;
  /** The host's scheduling delay of this case's vCPU, already added to the two bounds above (timerProperty.ts withHostSlack); 0 in the run's facts. */
  readonly hostWaitNs?: number;
  /** The machine every VM of the property runs. */
  readonly machine: Partial<MachineConfig>;
  /** The in-kernel LAPIC/PIT (KVM) or QEMU's own (TCG; the PIT also with kernel-irqchip=split). */
  readonly lapicImpl: 'kvm' | 'qemu';
  /**
   * What one LAPIC timer interrupt costs the guest's thread on this host, ns: the time a
   * busy-wait with a one-shot expiring inside it takes beyond the same wait without one (the
   * host's injection and the guest's handler; median of INTERRUPT_COST_SAMPLES pairs). Absent
   * under TCG, where QEMU's timers fire on their own schedule.
   */
  readonly interruptCostNs?: number;
  /**
   * No periodic LAPIC timer fires more often than this, ns (generators/timers.ts
   * ScheduleLimits.minPeriodicUs): INTERRUPT_COST_FACTOR interrupt costs, or 0 where KVM's floor
   * (minPeriodNs) is longer anyway. A period the guest cannot keep up with starves its thread:
   * on an Intel host of this kind a periodic timer at KVM's 200 µs floor made a 2.4 ms wait last
   * 2.5 s (12 500 interrupts), and two 20-seed loops each lost a seed to a vCPU that made no
   * progress for 3.5 s. That is the host's speed, not a timer rule broken.
   */
  readonly minPeriodicNs: number;
  readonly pitImpl: 'kvm' | 'qemu';
  /** At most this many vCPUs run a case on this host and configuration, and why (absent: as many as the property asks). */
  readonly vcpuLimit?: { readonly max: number; readonly reason: string };
}

/**
 * QEMU 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18) took "i386/cpu: Prevent delivering SIPI during SMM in
 * TCG mode" (its changelog): with kernel-irqchip=off a 2-vCPU guest then never finishes. Measured
 * here: both threads run their ops to THREAD_DONE, the mailbox stays 'running', and the VM runs
 * until the timeout (1 vCPU, or kernel-irqchip=on, completes in under a second). Such a host runs
 * the timer cases on one vCPU, and says so.
 */
export function vcpuLimitOf(o: { readonly accel: string; readonly kernelIrqchip?: string }, qemuVersion: string | null | undefined): TimerFacts['vcpuLimit'] {
  if (o.accel !== 'kvm' || o.kernelIrqchip !== 'off' || !/^7\.2\.22(\D|$)/.test(qemuVersion ?? '')) return undefined;
  return {
    max: 1,
    reason: `QEMU ${qemuVersion} with kernel-irqchip=off does not finish a 2-vCPU guest (its userspace APIC after "i386/cpu: Prevent delivering SIPI during SMM in TCG mode"): cases run on vCPU 0 only`,
  };
}

/** The machine a timer VM runs: microvm gets its RTC and PIT; under KVM the guest is told the TSC rate (CPUID 0x4000_0010). */
export function timerMachine(env: PropertyEnv, extraFamilyArgs: readonly string[] = []): Partial<MachineConfig> {
  const o = env.options;
  const khz = env.host.kvm.vcpuTscKhz;
  // tsc-frequency equal to KVM's own rate needs no TSC scaling; with it QEMU publishes 0x4000_0010.
  const cpu = o.accel === 'kvm' && khz && !o.cpu ? `${vcpuModel(o)},tsc-frequency=${khz * 1000}` : undefined;
  // The family tests KVM's timers: with no --kernel-irqchip given, the whole irqchip is KVM's
  // (microvm would default to split, leaving the PIT and IOAPIC to QEMU; --kernel-irqchip split
  // tests those).
  const irqchip = o.accel === 'kvm' && !o.kernelIrqchip ? { kernelIrqchip: 'on' as const } : {};
  return {
    ...irqchip,
    ...(o.machine === 'microvm' ? { machineProps: ['rtc=on', 'pit=on'] } : {}),
    ...(cpu ? { cpuModel: cpu } : {}),
    ...(extraFamilyArgs.length ? { familyArgs: extraFamilyArgs } : {}),
  };
}

export async function timerFacts(env: PropertyEnv, extraFamilyArgs: readonly string[] = []): Promise<TimerFacts> {
  const machine = timerMachine(env, extraFamilyArgs);
  const b = new ProgramBuilder({ maxThreads: 1 });
  for (const leaf of [0x1, 0x4000_0000, 0x4000_0001, 0x4000_0010, 0x15, 0x16]) b.thread(0).op({ op: 'cpuid', leaf, subleaf: 0, cpl: 0 });
  // Under TCG the guest's TSC rate is QEMU's own, which no CPUID leaf states: measure it against a
  // second clock, the RTC's seconds (two seconds; the op gives up after 2^40 cycles unchanged).
  const calibrate = env.options.accel === 'tcg';
  if (calibrate) for (let i = 0; i < 3; i++) b.thread(0).op({ op: 'rtcSecondsEdge', timeoutCycles: 1n << 40n });
  const khzForCost = env.host.kvm.vcpuTscKhz;
  const measureCost = !calibrate && !!khzForCost;
  if (measureCost) interruptCostOps(b, khzForCost!);
  const [noise, o] = await Promise.all([measureHostNoise(), observeProgram(env, b.build(), { role: 'facts', config: machine })]);
  if (!o.ok) throw new Error(`the timer facts VM did not run: ${o.difference.summary}`);
  const q = recordsOf(o.value.records[0] ?? [], 'cpuid');
  const leaf = (l: number) => q.find((r) => r.op.leaf === l)?.fields;
  const l1 = leaf(1)!;
  const hv = leaf(0x4000_0000);
  const kvmSig = hv && Number(hv.rbx) === 0x4b4d_564b; // "KVMK"
  const maxHv = hv ? Number(hv.rax) : 0;
  const l10 = kvmSig && maxHv >= 0x4000_0010 ? leaf(0x4000_0010) : undefined;
  const l15 = leaf(0x15);
  const l16 = leaf(0x16);
  const rates = tscRateFromCpuid({
    ...(l10 ? { leaf40000010: { eax: Number(l10.rax), ebx: Number(l10.rbx) } } : {}),
    ...(l15 ? { leaf15: { eax: Number(l15.rax), ebx: Number(l15.rbx), ecx: Number(l15.rcx) } } : {}),
    ...(l16 ? { leaf16: { eax: Number(l16.rax) } } : {}),
  });
  const khz = env.host.kvm.vcpuTscKhz;
  let tscHz: number;
  let tscSource: string;
  const edges = calibrate ? recordsOf(o.value.records[0] ?? [], 'rtcSecondsEdge').map((r) => r.fields) : [];
  if (calibrate) {
    if (edges.length !== 3 || edges.some((e) => e.timedOut !== 0n)) throw new Error('calibrating the TCG guest TSC: the RTC seconds did not change three times');
    const a = edges[0]!;
    const z = edges[2]!;
    const lo = Number(z.tscBefore! - a.tscAfter!);
    const hi = Number(z.tscAfter! - a.tscBefore!);
    tscHz = (lo + hi) / 4;
    tscSource = `calibrated against the RTC's seconds over 2 s: ${(tscHz / 1e6).toFixed(3)} MHz ±${(((hi - lo) / (lo + hi)) * 1e6).toFixed(0)} ppm (the stamps)`;
  } else if (rates) {
    tscHz = Number(rates.tscHz);
    tscSource = rates.source;
  } else if (khz) {
    // TCG's RDTSC is the host's TSC (cpu_get_host_ticks), which runs at KVM's vCPU rate where no scaling is offered.
    tscHz = khz * 1000;
    tscSource = 'host KVM_GET_TSC_KHZ (the guest sees no TSC rate in CPUID)';
  } else {
    throw new Error('no TSC rate: the guest sees none in CPUID (0x15/0x16/0x4000_0010) and KVM_GET_TSC_KHZ gave none');
  }
  const interruptCostNs = measureCost ? interruptCostFrom(recordsOf(o.value.records[0] ?? [], 'rdtsc').map((r) => r.fields.tsc!), tscHz) : undefined;
  const kvm = env.options.accel === 'kvm';
  // With kernel-irqchip=off QEMU's own APIC (hw/intc/apic.c) counts the LAPIC timer, as under TCG.
  const kvmLapic = kvm && env.options.kernelIrqchip !== 'off';
  const apicBusHz = rates?.apicBusHz ? Number(rates.apicBusHz) : 1e9;
  const minUs = Number(env.host.kvm.modules.find((m) => m.name === 'kvm')?.parameters.min_timer_period_us ?? '200');
  const bound = env.options.latenessBoundUs === undefined ? latenessBoundNs(noise) : env.options.latenessBoundUs * 1000;
  const kvmFeatures = kvmSig ? Number(leaf(0x4000_0001)?.rax ?? 0n) : 0;
  const limit = vcpuLimitOf(env.options, env.host.qemu.version);
  return {
    tscHz,
    tscSource,
    apicBusHz,
    apicBusSource: rates?.apicBusHz ? 'CPUID 0x40000010 EBX' : 'KVM and QEMU count the APIC timer in ns (1 GHz)',
    minPeriodNs: kvmLapic ? minUs * 1000 : 0,
    tscDeadline: ((Number(l1.rcx) >>> 24) & 1) === 1,
    x2apic: ((Number(l1.rcx) >>> 21) & 1) === 1,
    kvmclock: (kvmFeatures & (1 << 3)) !== 0,
    noise,
    latenessBoundNs: bound,
    latenessSource:
      env.options.latenessBoundUs === undefined
        ? `calibrated: ${latenessBoundWords(noise)}`
        : `--lateness-bound-us ${env.options.latenessBoundUs}`,
    lostAfterNs: lostAfterNsFor(bound),
    machine,
    lapicImpl: kvmLapic ? 'kvm' : 'qemu',
    ...(interruptCostNs === undefined ? {} : { interruptCostNs }),
    minPeriodicNs: minPeriodicNsFor(interruptCostNs, kvmLapic ? minUs * 1000 : 0),
    pitImpl: pitImplOf(env),
    ...(limit ? { vcpuLimit: limit } : {}),
  };
}

export const INTERRUPT_COST_SAMPLES = 16;
/** A periodic timer may take at most 1/INTERRUPT_COST_FACTOR of its vCPU's time (at the measured cost). */
export const INTERRUPT_COST_FACTOR = 4;
/** The busy-wait each sample spans, µs, and how far into it the one-shot expires (TMICT at ÷1, 1 GHz). */
const COST_WAIT_US = 200;
const COST_TMICT = 20_000;

/**
 * The facts VM's interrupt-cost samples: LVTT one-shot on LAPIC_VECTOR at ÷1, interrupts on, then
 * INTERRUPT_COST_SAMPLES pairs of [rdtsc, TMICT, busy-wait, rdtsc], one arming a one-shot that
 * expires inside the wait and one writing TMICT 0, interleaved so both see the same host.
 */
export function interruptCostOps(b: ProgramBuilder, tscKhz: number): void {
  const t = b.thread(0);
  const cycles = BigInt(Math.round(COST_WAIT_US * tscKhz / 1000));
  t.op({ op: 'apicWrite', reg: APIC_LVTT, value: BigInt(LAPIC_VECTOR) });
  t.op({ op: 'apicWrite', reg: APIC_TDCR, value: 0xbn });
  t.op({ op: 'sti' });
  for (let i = 0; i < INTERRUPT_COST_SAMPLES; i++) {
    for (const tmict of [COST_TMICT, 0]) {
      t.op({ op: 'rdtsc' });
      t.op({ op: 'apicWrite', reg: APIC_TMICT, value: BigInt(tmict) });
      t.op({ op: 'delayTsc', cycles });
      t.op({ op: 'rdtsc' });
    }
  }
  t.op({ op: 'cli' });
}

/** The median cost (ns) from interruptCostOps' rdtsc values, in order: with, without, with, ... */
export function interruptCostFrom(tscs: readonly bigint[], tscHz: number): number | undefined {
  if (tscs.length < 4 * INTERRUPT_COST_SAMPLES) return undefined;
  const median = (k: number) => quantile(Array.from({ length: INTERRUPT_COST_SAMPLES }, (_, i) => Number(tscs[4 * i + 2 * k + 1]! - tscs[4 * i + 2 * k]!)), 0.5)!;
  return Math.max(0, Math.round(((median(0) - median(1)) * 1e9) / tscHz));
}

/** TimerFacts.minPeriodicNs: INTERRUPT_COST_FACTOR costs where that is longer than KVM's floor, else 0. */
export function minPeriodicNsFor(costNs: number | undefined, floorNs: number): number {
  const need = (costNs ?? 0) * INTERRUPT_COST_FACTOR;
  return need > floorNs ? need : 0;
}

/**
 * Whose PIT the VM has: KVM's in-kernel one (kvm-pit) only with the whole irqchip in the kernel.
 * (QEMU 7.2's microvm on its own defaults to kernel-irqchip=split: `info qtree` shows isa-pit and
 * QEMU's own ioapic and i8259 there, kvm-pit with kernel-irqchip=on; pc and q35 default to on.)
 */
export function pitImplOf(env: PropertyEnv): 'kvm' | 'qemu' {
  const o = env.options;
  if (o.accel !== 'kvm') return 'qemu';
  return (o.kernelIrqchip ?? 'on') === 'on' ? 'kvm' : 'qemu'; // timerMachine() asks for 'on' by default
}

/**
 * How long before the TSC its ISR logged an interrupt may have been accepted (IRR → ISR): the guest
 * reads the TSC first thing in its handler, but a host that deschedules the vCPU thread between
 * the injection and that read separates the two by as much as it makes deliveries late — the
 * lateness bound. A second expiry inside that gap is a delivery of its own, not one merged into it.
 */
export const isrEntryTsc = (f: TimerFacts): bigint => nsToTsc(f.latenessBoundNs, f);

export const nsToTsc = (ns: number, f: TimerFacts): bigint => BigInt(Math.ceil((ns * f.tscHz) / 1e9));
export const tscToUs = (tsc: bigint, f: TimerFacts): number => (Number(tsc) * 1e6) / f.tscHz;

/** A model's difference as the property's. */
export function asDifference(d: TimerDifference, where: string, evidence: object, witness?: unknown): Difference {
  return difference(`${where}: ${d.summary}`, d.expected, d.observed, { evidence: { rule: d.rule, eventIndex: d.eventIndex ?? null, ...evidence }, ...(witness === undefined ? {} : { witness }) });
}

/** The pvclock areas (generators/timers.ts kvmclockCommands). */
export const PVCLOCK = { base: LAYOUT.pvclock, stride: LAYOUT.pvclockStride };

/** The q-quantile of values (nearest rank), or null when empty. */
export function quantile(values: readonly number[], q: number): number | null {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}
