/**
 * One shape for every timer property: a case is a command sequence (generators/timers.ts) built
 * into one program and run in one VM; each source's timeline goes through its model and judge
 * (models/timers/), and the property's named rules pick the judge's differences by rule. Every
 * case's lateness samples go to the results (measurements) for reports and the gate.
 *
 * The judging happens while observing (the case is settled there, generators/commands.ts); no
 * command is blamed, because the event a difference names (an arming write) precedes the wait in
 * which the interrupt came or did not: fast-check shrinks by dropping commands instead.
 */
import type fc from 'fast-check';
import { checkCommands, commandsArb, savedCase, type CommandsWorkload, type ProgramCommand, type SavedCommandsCase } from '../../generators/commands.js';
import { emptySchedule, type ScheduleLimits, type TimerSchedule, type TimerSource } from '../../generators/timers.js';
import type { ObservedInterrupt, TimerDifference, TimerRule } from '../../models/timers/common.js';
import { defineProperty, difference, rule, type Difference, type Observation, type PropertyEnv, type PropertyDef } from '../lib/property.js';
import { observeProgram } from '../lib/run.js';
import { asDifference, latenessBoundNs, latenessBoundWords, lostAfterNsFor, quantile, recentHostNoise, timerFacts, type TimerFacts } from './clock.js';
import { threadViews, timelineOf, type SourceTimeline, type ThreadView } from './observe.js';

/** What one source's judge gives for one timeline. */
export interface Judgement {
  readonly differences: readonly TimerDifference[];
  /** How late each required interrupt came after it was due, µs, with its labels. */
  readonly lateness: readonly { readonly us: number; readonly labels: Readonly<Record<string, string | number>> }[];
  /** Counters for the metrics (interrupts delivered and predicted, reads judged...). */
  readonly counts: Readonly<Record<string, number>>;
  /** The interrupts judged. */
  readonly observed: readonly ObservedInterrupt[];
  /** Extra samples (RTC/PIT counts per window...). */
  readonly samples?: readonly { readonly series: string; readonly value: number; readonly labels?: Readonly<Record<string, string | number>> }[];
}

export interface TimerCaseResult {
  readonly thread: number;
  readonly source: TimerSource;
  readonly judgement: Judgement;
  readonly lostLogEntries: number;
  readonly timeline: SourceTimeline;
  /** Host scheduling delay (steal) the judge allowed on top of the calibrated bound (hostSlackNs), µs. */
  readonly hostWaitUs: number;
  /** Of which the delay of a host thread other than the vCPU (KVM's PIT worker, or QEMU's main loop's longest wait), µs: added to the lateness bound too, since the samples are net of steal only. */
  readonly workerWaitUs: number;
  /** Which thread that was. */
  readonly worker: string;
  /** Of which the steal time of the host's own CPUs (its longest single stall; the host is a VM; harness/vm.ts HostWait.cpuLongestStealNs), µs: added to the lateness bound too. */
  readonly hostStealUs: number;
}

export interface TimerObservation {
  readonly results: readonly TimerCaseResult[];
  readonly latenessBoundUs: number;
  readonly latenessSource: string;
  readonly ran: readonly string[];
  /** The built program and schedule as data: the witness a failure saves, which `kvmprop replay` runs. */
  readonly saved: SavedCommandsCase<TimerSchedule>;
}

export interface TimerPropertySpec {
  readonly id: string;
  readonly statement: string;
  readonly source: TimerSource;
  /** What the property's differences are about, when not the source's usual name (the RTC's time of day, not its periodic interrupt). */
  readonly subject?: string;
  readonly threads: number;
  readonly maxCommands: number;
  readonly maxWaitUs: number;
  /** QEMU arguments the property's VMs need (-rtc driftfix=slew). */
  readonly familyArgs?: readonly string[];
  /** A reason the property cannot run with these options (kvmclock under TCG), or null. */
  readonly skip?: (env: PropertyEnv) => string | null;
  readonly commands: (lim: ScheduleLimits) => fc.Arbitrary<ProgramCommand<TimerSchedule>>[];
  /** Judge one thread's timeline of the source (only those that used it). */
  readonly judge?: (t: SourceTimeline, view: ThreadView, facts: TimerFacts, env: PropertyEnv) => Judgement;
  /** Or judge every thread's timeline at once (a clock read on every vCPU); reported as thread -1. */
  readonly judgeCase?: (ts: readonly SourceTimeline[], views: readonly ThreadView[], facts: TimerFacts, env: PropertyEnv) => Judgement;
  /** The property's rules: name → the judge rules it reports. */
  readonly rules: readonly (readonly [name: string, rules: readonly TimerRule[]])[];
  /** Bound the lateness quantile (bounded-lateness rule). */
  readonly latenessRule: boolean;
}

/**
 * The rules whose verdict depends on the lateness bound alone (an interrupt later than it counts as
 * lost; a window's count allows the ticks it can hold): judged again with the host's noise measured
 * after a case that fails them. Early, extra and spurious interrupts and every read are not.
 */
export const TIMING_RULES: ReadonlySet<TimerRule> = new Set<TimerRule>(['exact-count', 'window-count', 'slew-converges']);

/** A difference the lateness bound decides: of a timing rule, and for exact-count a lost interrupt (one due by a time), never an extra one. */
export function decidedByBound(d: TimerDifference): boolean {
  if (!TIMING_RULES.has(d.rule)) return false;
  return d.rule !== 'exact-count' || (typeof d.expected === 'object' && d.expected !== null && 'dueBy' in d.expected);
}

/** The quantile of each case's lateness samples the bounded-lateness rule holds to the bound. */
export const LATENESS_QUANTILE = 0.9;
/** Fewer samples than this make no quantile: one late interrupt is the exact-count rule's business. */
export const MIN_LATENESS_SAMPLES = 5;

/** A judgement's lateness samples (µs) and their LATENESS_QUANTILE (null: too few to make one). */
function latenessQuantile(j: Judgement): { us: number[]; q: number | null } {
  const us = j.lateness.map((l) => l.us);
  return { us, q: us.length >= MIN_LATENESS_SAMPLES ? quantile(us, LATENESS_QUANTILE) : null };
}

export function timerProperty(spec: TimerPropertySpec): PropertyDef<CommandsWorkload<TimerSchedule>, TimerFacts, TimerObservation> {
  /** The vCPUs a case runs on: the property's, or fewer where the host cannot run that many (TimerFacts.vcpuLimit). */
  const threadsOf = (f: TimerFacts) => Math.min(spec.threads, f.vcpuLimit?.max ?? spec.threads);
  const limits = (f: TimerFacts): ScheduleLimits => ({
    threads: threadsOf(f),
    maxWaitUs: spec.maxWaitUs,
    tscHz: f.tscHz,
    apicBusHz: f.apicBusHz,
    tscDeadline: f.tscDeadline,
    x2apic: f.x2apic,
    ...(f.minPeriodicNs > 0 ? { minPeriodicUs: f.minPeriodicNs / 1000, floorUs: f.minPeriodNs / 1000 } : {}),
  });
  const judgeRules = spec.rules.map(([name, rs]) =>
    rule<TimerObservation>(name, function* (o) {
      const noisy = noisyHostOf(o);
      for (const r of o.results) {
        for (const d of r.judgement.differences) {
          if (!rs.includes(d.rule)) continue;
          const where = r.thread < 0 ? (spec.subject ?? sourceName(r.source)) : `${spec.subject ?? sourceName(r.source)} on vCPU ${r.thread}`;
          const found = asDifference(d, where, { commands: o.ran, timeline: r.timeline.events.map(describeEvent), interrupts: r.judgement.observed.map((x) => `0x${x.tsc.toString(16)} v${x.vector}`) }, o.saved);
          if (!decidedByBound(d)) {
            yield found;
            continue;
          }
          yield { ...found, timing: true, ...(noisy ? { noisyHost: noisy } : {}) };
        }
      }
    }),
  );
  const logRule = rule<TimerObservation>('interrupt log complete', function* (o) {
    for (const r of o.results) {
      if (r.lostLogEntries > 0) {
        yield difference(`vCPU ${r.thread}'s interrupt log overwrote ${r.lostLogEntries} entries: the case took more interrupts than the guest can log`, 'every interrupt logged', r.lostLogEntries, { witness: o.saved });
      }
    }
  });
  const latenessRule = rule<TimerObservation>('bounded lateness', function* (o) {
    const noisy = noisyHostOf(o);
    for (const r of o.results) {
      const { us, q } = latenessQuantile(r.judgement);
      // The samples are already net of each delivery's steal gap (latenessOf's excuse); a worker
      // thread's delay (KVM's PIT) is known only for the whole case.
      const bound = o.latenessBoundUs + r.workerWaitUs + r.hostStealUs;
      if (q !== null && q > bound) {
        const worst = r.judgement.lateness.reduce((a, b) => (b.us > a.us ? b : a));
        yield difference(
          `${sourceName(r.source)} on vCPU ${r.thread}: p${LATENESS_QUANTILE * 100} lateness ${q.toFixed(0)} µs over ${us.length} interrupts exceeds the bound ${bound.toFixed(0)} µs (${o.latenessSource}; each sample net of the steal time before it${r.workerWaitUs > 0 ? `; + ${r.workerWaitUs.toFixed(0)} µs the host kept ${r.worker} waiting` : ''}${r.hostStealUs > 0 ? `; + ${r.hostStealUs.toFixed(0)} µs the host's own hypervisor took its CPUs` : ''}); worst ${worst.us.toFixed(0)} µs (${JSON.stringify(worst.labels)})`,
          { quantile: LATENESS_QUANTILE, boundUs: bound, maxStealGapUs: r.hostWaitUs, hostStealUs: r.hostStealUs },
          { quantileUs: q, samplesUs: us.map((x) => Math.round(x)) },
          { evidence: { commands: o.ran }, witness: o.saved, timing: true, ...(noisy ? { noisyHost: noisy } : {}) },
        );
      }
    }
  });
  return defineProperty({
    id: spec.id,
    family: 'timers',
    statement: spec.statement,
    machine: { cpus: spec.threads },
    // Whether an interrupt comes just before or just after its bound is up to the host's noise:
    // a smaller case must fail twice running to become the counterexample.
    confirmShrinks: 2,
    facts: async (env) => {
      const f = await timerFacts(env, spec.familyArgs ?? []);
      if (f.interruptCostNs !== undefined) env.metrics.sample('timers.interruptCostUs', Math.round(f.interruptCostNs / 100) / 10, { minPeriodicUs: Math.round(f.minPeriodicNs / 1000) });
      return f;
    },
    skip: (env) => spec.skip?.(env) ?? null,
    arbitrary: (f, env) => commandsArb(spec.commands(limits(f)), { maxCommands: spec.maxCommands, size: '+1', ...(env.options.replayPath ? { replayPath: env.options.replayPath } : {}) }),
    async observe(w, f, env): Promise<Observation<TimerObservation>> {
      const threads = threadsOf(f);
      if (f.vcpuLimit) env.metrics.sample('timers.vcpus', threads, { reason: f.vcpuLimit.reason });
      return checkCommands<TimerSchedule, Observation<TimerObservation>>(w, () => emptySchedule(threads), { maxThreads: threads, threads }, async (built) => {
        const o = await observeProgram(env, { ...built.program, stealTime: true }, { role: 'workload', config: { ...f.machine, cpus: threads } });
        if (!o.ok) return { verdict: o, blame: null };
        const views = threadViews(o.value);
        const results: TimerCaseResult[] = [];
        const pitWorker = spec.source === 'pit' && f.pitImpl === 'kvm' ? (o.value.vm.hostWait?.pitNs ?? 0) : 0;
        // One stall of the host by its own hypervisor, not the case's total steal (harness/vm.ts).
        const hostSteal = o.value.vm.hostWait?.cpuLongestStealNs ?? 0;
        // The timers QEMU emulates fire from its main loop: its longest single wait meanwhile.
        const inMainLoop = spec.source === 'rtc' || (spec.source === 'pit' && f.pitImpl === 'qemu') || (spec.source === 'lapic' && f.lapicImpl === 'qemu');
        const mainWait = inMainLoop ? (o.value.vm.hostWait?.mainLongestWaitNs ?? 0) : 0;
        const slack = (t: number) => hostSlackNs(views, t, pitWorker + hostSteal + mainWait);
        const timelines = Array.from({ length: threads }, (_, t) => timelineOf(built.model, views, spec.source, t)).filter((t) => t.used);
        const judgeAll = (facts: TimerFacts): { thread: number; timeline: SourceTimeline; judgement: Judgement; lost: number }[] => {
          const judgedWith = (t: number) => withSourceRate(withHostSlack(facts, slack(t)), env, spec.source);
          return spec.judgeCase
            ? timelines.length
              ? [{ thread: -1, timeline: timelines[0]!, judgement: spec.judgeCase(timelines, views, judgedWith(-1), env), lost: 0 }]
              : []
            : timelines.map((timeline) => ({ thread: timeline.thread, timeline, judgement: spec.judge!(timeline, views[timeline.thread]!, judgedWith(timeline.thread), env), lost: views[timeline.thread]!.lostLogEntries }));
        };
        let judged = judgeAll(f);
        let bounds = { latenessBoundUs: f.latenessBoundNs / 1000, latenessSource: f.latenessSource };
        // The calibrated bound is the host's noise when the property began. A host that got busier
        // since (seen: load 10-12 on 2 cores; a 5 ms late periodic tick and 14 ms without an RTC tick,
        // neither of which replayed) would cry wolf on the timing rules: when a case fails one of
        // them, measure the noise again now, outside the VM, and judge those rules with the larger
        // bound. The other rules keep the first judgement. An injected delay (QMP stop/cont) or a
        // KVM that holds an injection back leaves the host quiet and still fails.
        const tooLate = (r: (typeof judged)[number]) => {
          const { q } = latenessQuantile(r.judgement);
          return spec.latenessRule && q !== null && q > bounds.latenessBoundUs + (pitWorker + mainWait + hostSteal) / 1000;
        };
        if (env.options.latenessBoundUs === undefined && judged.some((r) => tooLate(r) || r.judgement.differences.some(decidedByBound))) {
          const fresh = await recentHostNoise();
          const freshBound = latenessBoundNs(fresh);
          env.metrics.sample(`latenessRecalibrated.${spec.source}`, Math.round(freshBound / 100) / 10, { firstUs: Math.round(f.latenessBoundNs / 1000) });
          if (freshBound > f.latenessBoundNs) {
            const source = `${f.latenessSource}; recalibrated after this case failed a timing rule (measured within 10 s of it): ${latenessBoundWords(fresh)}`;
            const again = judgeAll({ ...f, latenessBoundNs: freshBound, lostAfterNs: lostAfterNsFor(freshBound), latenessSource: source, noise: fresh });
            judged = again.map((r, i) => ({
              ...r,
              judgement: { ...r.judgement, differences: [...judged[i]!.judgement.differences.filter((d) => !decidedByBound(d)), ...r.judgement.differences.filter(decidedByBound)] },
            }));
            bounds = { latenessBoundUs: freshBound / 1000, latenessSource: source };
          }
        }
        for (const { thread: t, timeline, judgement, lost } of judged) {
          const hostWaitUs = slack(t) / 1000;
          results.push({ thread: t, source: spec.source, judgement, lostLogEntries: lost, timeline, hostWaitUs, workerWaitUs: (pitWorker + mainWait) / 1000, worker: inMainLoop ? "QEMU's main loop" : "KVM's PIT worker", hostStealUs: hostSteal / 1000 });
          env.metrics.sample(`hostWait.${spec.source}`, Math.round(hostWaitUs * 10) / 10, { thread: t });
          if (hostSteal > 0) env.metrics.sample(`hostSteal.${spec.source}`, Math.round(hostSteal / 100) / 10, { thread: t });
          for (const [k, v] of Object.entries(judgement.counts)) env.metrics.add(k, v);
          for (const l of judgement.lateness) env.metrics.sample(`lateness.${spec.source}`, Math.round(l.us * 10) / 10, l.labels);
          for (const s of judgement.samples ?? []) env.metrics.sample(s.series, s.value, s.labels);
        }
        env.metrics.add('timerCases');
        for (const k of caseKinds(built.ran)) env.metrics.add(`timerCases.${k}`);
        const value: TimerObservation = { results, ...bounds, ran: built.ran, saved: savedCase(built) };
        // No blame: the event a timer difference names (the arming write) comes before the wait in
        // which the interrupt was, or was not, observed; cutting the commands after it would cut
        // the observation too. fast-check shrinks by dropping commands instead.
        return { verdict: { ok: true, value }, blame: null };
      });
    },
    rules: [...judgeRules, ...(spec.latenessRule ? [latenessRule] : []), logRule],
  });
}

/**
 * What kinds of timer use a case's commands had, each once (the per-kind case counts a run
 * reports: metrics timerCases.<kind>): LAPIC modes armed or switched to, mid-count TDCR writes,
 * stops, masks, deadlines now / zero / in the past, x2APIC; RTC rates; PIT modes; kvmclock reads.
 */
export function caseKinds(ran: readonly string[]): string[] {
  const kinds = new Set<string>();
  for (const c of ran) {
    for (const m of c.matchAll(/\b(?:arm|LVTT) (one-shot|periodic|tsc-deadline)\b/g)) kinds.add(`lapic.${m[1]}`);
    const mid = /^cpu\d (one-shot|periodic) ÷\d+ \d+us, at \d+us TDCR/.exec(c);
    if (mid) kinds.add(`lapic.${mid[1]}`).add('lapic.tdcr-mid-count');
    if (/ TDCR ÷\d+$/.test(c)) kinds.add('lapic.tdcr');
    if (/TMICT 0 \(stop\)/.test(c)) kinds.add('lapic.stop');
    if (/^cpu\d LVTT .* masked$/.test(c)) kinds.add('lapic.masked');
    const dl = /TSC deadline (now\+|now-|zero|now$)/.exec(c);
    if (dl) kinds.add(`lapic.deadline-${dl[1] === 'now+' ? 'ahead' : dl[1] === 'now-' ? 'past' : dl[1] === 'zero' ? 'zero' : 'now'}`);
    if (/switch to x2APIC/.test(c)) kinds.add('lapic.x2apic');
    const hz = /^RTC (?:rate|steady) RS=\d+ \((\d+) Hz\)/.exec(c);
    if (hz) kinds.add(`rtc.${hz[1]}Hz`);
    const pit = /^PIT (?:steady )?mode (\d)/.exec(c);
    if (pit) kinds.add(`pit.mode${pit[1]}`);
    if (/^PIT reload/.test(c)) kinds.add('pit.reload');
    if (/read kvmclock/.test(c)) kinds.add('kvmclock.reads');
  }
  return [...kinds].sort();
}

/**
 * Whether the host itself disturbed the case by more than the lateness bound at once (its longest
 * stall of a vCPU, of the QEMU or KVM thread that drives the timer, or of its own CPUs: a
 * result's hostWaitUs), in words; undefined on a quiet host. A timing failure on a noisy host is
 * re-run (Difference.noisyHost). An injected pause (QMP stop/cont) or a KVM that holds an
 * injection back disturbs none of these.
 */
export function noisyHostOf(o: Pick<TimerObservation, 'results' | 'latenessBoundUs'>): string | undefined {
  const worst = o.results.reduce<TimerCaseResult | null>((a, r) => (!a || r.hostWaitUs > a.hostWaitUs ? r : a), null);
  if (!worst || worst.hostWaitUs <= o.latenessBoundUs) return undefined;
  return `the host kept ${worst.thread < 0 ? 'a vCPU' : `vCPU ${worst.thread}`} (or a thread the timer needs, or its own CPUs) from running for ${worst.hostWaitUs.toFixed(0)} µs at once during the case, over the ${o.latenessBoundUs.toFixed(0)} µs bound`;
}

/**
 * How much later than the calibrated bound a delivery on vCPU `thread` may come because the host
 * did not run it, for the count rules (a tick due by its bound): the largest KVM steal time the
 * vCPU accrued between two of its logged interrupts (the guest logs it with each, abi.ts
 * PROGRAM_FLAGS.stealTime). The calibrated bound is measured once per run, before the cases; steal
 * is measured during each case by the host's own scheduler accounting (it is the vCPU thread's
 * run_delay), so a host that gets busy later does not cry wolf, and a quiet one (steal near 0) is
 * held to the bound. A VM paused through QMP (the injected-delay mutant), or KVM holding an
 * injection back, accrues none. thread −1: the worst vCPU. The lateness samples themselves are
 * excused per interrupt (stealExcuses).
 *
 * KVM's in-kernel PIT injects its ticks from a worker kthread (`kvm-pit/PID`, pit_do_work()); the
 * host's delay of that thread during the case (harness/vm.ts HostWait.pitNs) is added for the PIT:
 * a 3.7 ms stall of it made four ticks late in a row while the vCPU accrued no steal.
 *
 * Where the host is itself a virtual machine (this one is: CPUID's hypervisor bit, and /proc/stat's
 * steal column moves), its hypervisor can take a CPU from every thread on it at once: seed 302 of
 * the PIT property under load had 14 ticks late by up to 11.7 ms, delivered in one burst, that
 * neither the vCPU's steal gaps nor the PIT worker's run_delay excused (it did not replay). The
 * longest single stall of any host CPU during the case (HostWait.cpuLongestStealNs, sampled every
 * 2 ms, in 10 ms steps) is added for every source; not the case's total steal, which on this host
 * reached 40-120 ms a case in small pieces and let vcpu-stop-cont's 50 ms pauses pass. On bare
 * metal it is 0.
 *
 * QEMU's main loop thread runs the timers QEMU emulates (the RTC; the PIT and APIC in user space):
 * its longest single wait to run during the case (HostWait.mainLongestWaitNs, sampled every 2 ms)
 * is added for those. Not its total run_delay: the case's own QMP traffic raises that in many
 * small steps, and allowing the total swallowed the injected pauses of vcpu-stop-cont (20 ms then). Seed
 * 401 of the RTC property under load (average 11.6) had no tick at all in 14 ms at 2048 Hz.
 */
export function hostSlackNs(views: readonly ThreadView[], thread: number, pitWorkerNs = 0): number {
  const gaps = (v: ThreadView | undefined) => (v?.interrupts ?? []).reduce((m, o) => Math.max(m, o.stealGapUs ?? 0), 0);
  const vcpuUs = thread < 0 ? Math.max(0, ...views.map(gaps)) : gaps(views[thread]);
  return vcpuUs * 1000 + pitWorkerNs;
}

/** The steal gap of each logged interrupt of a vCPU, by TSC (latenessOf's excuse). */
export function stealExcuses(view: ThreadView | undefined): Map<bigint, number> {
  return new Map((view?.interrupts ?? []).map((o) => [o.tsc, o.stealGapUs ?? 0]));
}

/** The facts a judge uses, with the host's measured scheduling delay added to both lateness bounds. */
export function withHostSlack(f: TimerFacts, slackNs: number): TimerFacts {
  return slackNs > 0 ? { ...f, latenessBoundNs: f.latenessBoundNs + slackNs, lostAfterNs: f.lostAfterNs + slackNs, hostWaitNs: slackNs } : f;
}

/**
 * A model-variant mutant may take a source's clock as running `rate` times its nominal speed
 * (mutants.ts *-model-rate-*): every duration it predicts for that source is then 1/rate as long,
 * which is the model's TSC rate scaled by 1/rate.
 */
export function withSourceRate(f: TimerFacts, env: PropertyEnv, source: TimerSource): TimerFacts {
  const v = env.mutant?.modelVariant?.sourceRate as { rate?: number; sources?: readonly string[] } | undefined;
  if (!v?.rate || !(v.sources ?? []).includes(source)) return f;
  return { ...f, tscHz: f.tscHz / v.rate };
}

function sourceName(s: TimerSource): string {
  return { lapic: 'LAPIC timer', rtc: 'RTC periodic interrupt', pit: 'PIT channel 0', kvmclock: 'kvmclock', control: 'control' }[s];
}

function describeEvent(e: { kind: string; value?: number | bigint; tscBefore: bigint; tscAfter: bigint; read?: bigint }): string {
  const v = e.value === undefined ? '' : ` ${typeof e.value === 'bigint' ? `0x${e.value.toString(16)}` : e.value}`;
  const r = e.read === undefined ? '' : ` → ${e.read}`;
  return `${e.kind}${v}${r} @[0x${e.tscBefore.toString(16)}, 0x${e.tscAfter.toString(16)}]`;
}

/** Model rules whose differences count interrupts: what a root-cause variant must explain. */
export const COUNT_RULES: ReadonlySet<string> = new Set(['exact-count', 'spurious-after-disarm', 'never-early', 'window-count']);

/**
 * Name the root cause of count differences: each cause is a behaviour the model can predict as a
 * variant (never the reference); when judging with one switched on leaves no count difference, the
 * differences of every rule the variant leaves clean are labelled with it, so a known deviation can
 * name exactly that cause and nothing else. Differences no variant explains keep their plain
 * summary (and fail). A cause with `rules` is tried on differences of those rules instead of the
 * count rules, and must leave none of them (QEMU's TDCR recount shows in TMCCT reads alone).
 */
export function attributeRootCauses<V>(
  diffs: readonly TimerDifference[],
  causes: readonly { readonly label: string; readonly variant: V; readonly rules?: ReadonlySet<string> }[],
  judgeWith: (variant: V) => readonly TimerDifference[],
): TimerDifference[] {
  const tried = causes.flatMap((cause) => {
    const trigger = cause.rules ?? COUNT_RULES;
    if (!diffs.some((d) => trigger.has(d.rule))) return [];
    const rest = judgeWith(cause.variant);
    if (rest.some((d) => trigger.has(d.rule) || COUNT_RULES.has(d.rule))) return [];
    // The cause also explains what follows from it in other rules (a TMCCT read of the count it
    // restarted): those rules it leaves without a difference are labelled too.
    return [{ cause, explained: new Set(diffs.map((d) => d.rule).filter((r) => !rest.some((x) => x.rule === r))) }];
  });
  // A cause that explains every rule with a difference comes before one that explains only the
  // count (seed 1 under kernel-irqchip=off: ignoring TSC-deadline mode happened to clear the count
  // difference of a TDCR recount, whose TMCCT reads only the recount explains).
  const all = new Set(diffs.map((d) => d.rule));
  const best = tried.find((t) => t.explained.size === all.size) ?? tried[0];
  if (!best) return [...diffs];
  return diffs.map((d) => (best.explained.has(d.rule) ? { ...d, summary: `${best.cause.label}: ${d.summary}` } : d));
}

/** Expected 'once' interrupts and how late the delivery that covers each came (µs after it was due). */
export function latenessOf(
  expected: readonly { readonly earliest: bigint; readonly expiryLatest: bigint; readonly count: string; readonly latest: bigint | null }[],
  delivered: readonly bigint[],
  unblock: (t: bigint) => bigint,
  endTsc: bigint,
  tscHz: number,
  /** µs of each delivery's lateness the host owes (its steal gap, by delivery TSC): taken off the sample. */
  excuseUs: ReadonlyMap<bigint, number> = new Map(),
): { index: number; us: number; excusedUs: number }[] {
  const out: { index: number; us: number; excusedUs: number }[] = [];
  const sorted = [...delivered].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  expected.forEach((e, index) => {
    if (e.count !== 'once') return;
    const due = unblock(e.expiryLatest);
    if (due > endTsc) return;
    const d = sorted.find((t) => t >= e.earliest);
    if (d === undefined || d > endTsc) return;
    const raw = (Math.max(0, Number(d - due)) * 1e6) / tscHz;
    const excused = Math.min(raw, excuseUs.get(d) ?? 0);
    out.push({ index, us: raw - excused, excusedUs: excused });
  });
  return out;
}

export type { Difference };
