/**
 * Timer schedules as fast-check commands (generators/commands.ts): each command appends the guest
 * ops of one timer action to its vCPU's thread and records, in the schedule, which ops stamp it —
 * the schedule is plain data, so a shrunk case saves and replays as JSON.
 *
 * Every action is stamped: the ops that carry their own TSC stamps (apicWrite, wrmsrAt) stamp
 * themselves; any other (port writes, reads, CLI/STI) is bracketed by two rdtsc ops. The suite
 * (suites/timers/observe.ts) turns the records of a run into the models' timelines.
 *
 * Sources and routing (fixed, so a case is self-describing):
 *  - LAPIC timer of vCPU t: LVTT vector LAPIC_VECTOR; xAPIC at start, a command may switch to x2APIC.
 *  - RTC periodic interrupt: IRQ8 → IOAPIC pin 8 → vCPU 0, vector RTC_VECTOR; the ISR reads
 *    register C (isrAction 1), which acknowledges it.
 *  - PIT channel 0: IRQ0 → IOAPIC pin 2 (the ISA override KVM's routing applies) and pin 0 (QEMU's
 *    userspace IOAPIC without the override) → vCPU 0, vector PIT_VECTOR; the 8259s are masked.
 *  - kvmclock: each vCPU's pvclock area at LAYOUT.pvclock + t·pvclockStride.
 */
import fc from 'fast-check';
import type { ProgramBuilder } from '../ir/builder.js';
import type { Op } from '../ir/ops.js';
import { programCommand, type ProgramCommand } from './commands.js';

export const LAPIC_VECTOR = 0x40;
export const RTC_VECTOR = 0x58;
export const PIT_VECTOR = 0x50;
export const IOAPIC_BASE = 0xfec0_0000n;
export const MSR_TSC_DEADLINE = 0x6e0;
export const MSR_APIC_BASE = 0x1b;
export const MSR_KVM_SYSTEM_TIME_NEW = 0x4b56_4d01;
/** xAPIC register offsets (SDM Table 10-1). */
export const APIC_LVTT = 0x320;
export const APIC_TMICT = 0x380;
export const APIC_TMCCT = 0x390;
export const APIC_TDCR = 0x3e0;
/** TDCR encodings in divide order ÷1, ÷2 ... ÷128 (SDM Figure 10-10). */
export const TDCR_BY_DIVIDE: readonly number[] = [0xb, 0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xa];

export type TimerSource = 'lapic' | 'rtc' | 'pit' | 'kvmclock' | 'control';

/** How an action's TSC stamps are found in its thread's records. */
export type StampAt =
  /** The op records tscBefore/tscAfter itself (apicWrite, wrmsrAt). */
  | { readonly self: number }
  /** rdtsc ops before and after the action. */
  | { readonly before: number; readonly after: number };

/** One stamped action of a schedule. Values are numbers (JSON); TSC offsets are cycles. */
export interface ScheduledEvent {
  readonly thread: number;
  readonly source: TimerSource;
  /** The models' event kinds: lvtt, tdcr, tmict, tscDeadline, readTmcct, readTscDeadline, writeA, writeB, program, reload, kvmclock, sti, cli, mark. */
  readonly kind: string;
  readonly value?: number;
  /** PIT: the mode of a program event. */
  readonly mode?: number;
  readonly stamp: StampAt;
  /** The op whose record holds a value read (apicRead, rdmsr, kvmclockRead), or the wrmsrAt that wrote it. */
  readonly valueOp?: number;
  /** Byte reads (pioIn) that make up the value read, least significant first: a PIT count read LSB then MSB. */
  readonly valueBytes?: readonly number[];
}

export interface ThreadState {
  started: boolean;
  interrupts: boolean;
  x2apic: boolean;
  divide: number;
  waitedUs: number;
  kvmclockOn: boolean;
  /** LVTT as last written (mode, mask), and TMICT's last value as a duration at the divide of its write, µs. */
  lvtt: { mode: 'one-shot' | 'periodic' | 'tsc-deadline'; masked: boolean };
  tmictUs: number;
}

/** The command model: the schedule so far, and the state preconditions need. */
export interface TimerSchedule {
  readonly threads: ThreadState[];
  readonly events: ScheduledEvent[];
  pitOn: boolean;
  rtcRouted: boolean;
  pitRouted: boolean;
}

export interface ScheduleLimits {
  readonly threads: number;
  /** Most busy-wait time per thread, µs (the case's length). */
  readonly maxWaitUs: number;
  readonly tscHz: number;
  readonly apicBusHz: number;
  readonly tscDeadline: boolean;
  readonly x2apic: boolean;
  /**
   * No command leaves an unmasked periodic LAPIC timer with a period below this, µs, counting
   * KVM's floor (0: no limit). Timer facts set it from the guest's measured interrupt cost
   * (suites/timers/clock.ts TimerFacts.minPeriodicNs) on hosts too slow for the floor's rate.
   */
  readonly minPeriodicUs?: number;
  /** KVM's min_timer_period_us (0: none): a shorter period runs at this one. */
  readonly floorUs?: number;
}

export function emptySchedule(threads: number): TimerSchedule {
  return {
    threads: Array.from({ length: threads }, () => ({ started: false, interrupts: false, x2apic: false, divide: 1, waitedUs: 0, kvmclockOn: false, lvtt: { mode: 'one-shot' as const, masked: true }, tmictUs: 0 })),
    events: [],
    pitOn: false,
    rtcRouted: false,
    pitRouted: false,
  };
}

// ---------------------------------------------------------------------------------------------
// Appending stamped actions

/** Append ops bracketed by rdtsc ops and record the event. */
function bracketed(m: TimerSchedule, b: ProgramBuilder, thread: number, ev: Omit<ScheduledEvent, 'thread' | 'stamp' | 'valueOp'>, ops: readonly Op[], valueOpOffset?: number): void {
  const t = b.thread(thread);
  const before = t.length;
  t.op({ op: 'rdtsc' });
  t.ops(ops);
  const after = t.length;
  t.op({ op: 'rdtsc' });
  m.events.push({ ...ev, thread, stamp: { before, after }, ...(valueOpOffset === undefined ? {} : { valueOp: before + 1 + valueOpOffset }) });
}

/** Append one self-stamping op (apicWrite, wrmsrAt) and record the event. */
function selfStamped(m: TimerSchedule, b: ProgramBuilder, thread: number, ev: Omit<ScheduledEvent, 'thread' | 'stamp' | 'valueOp'>, o: Op): void {
  const t = b.thread(thread);
  const at = t.length;
  t.op(o);
  m.events.push({ ...ev, thread, stamp: { self: at }, valueOp: at });
}

/** The first command of a thread enables interrupts (a stamped STI): every timeline starts there. */
function ensureStarted(m: TimerSchedule, b: ProgramBuilder, thread: number): void {
  const s = m.threads[thread]!;
  if (s.started) return;
  s.started = true;
  s.interrupts = true;
  bracketed(m, b, thread, { source: 'control', kind: 'sti' }, [{ op: 'sti' }]);
}

function ioapicRoute(b: ProgramBuilder, thread: number, pin: number, vector: number, destApicId: number): void {
  const t = b.thread(thread);
  const w = (reg: number, v: number) => {
    t.op({ op: 'mmioWrite', addr: IOAPIC_BASE, width: 4, value: BigInt(reg) });
    t.op({ op: 'mmioWrite', addr: IOAPIC_BASE + 0x10n, width: 4, value: BigInt(v >>> 0) });
  };
  w(0x11 + 2 * pin, destApicId << 24);
  w(0x10 + 2 * pin, vector); // fixed, physical, active high, edge, unmasked
}

/**
 * Route IRQ8 (the RTC) to vCPU 0 once, with the 8259s masked, and let the ISR acknowledge the RTC.
 * Only the RTC commands route it, so the PIT's vector never shows in an RTC case.
 */
function ensureRtcRouted(m: TimerSchedule, b: ProgramBuilder): void {
  if (m.rtcRouted) return;
  m.rtcRouted = true;
  const t = b.thread(0);
  t.op({ op: 'pioOut', port: 0x21, width: 1, value: 0xff });
  t.op({ op: 'pioOut', port: 0xa1, width: 1, value: 0xff });
  ioapicRoute(b, 0, 8, RTC_VECTOR, 0);
  t.op({ op: 'isrAction', vector: RTC_VECTOR, action: 1 });
}

/**
 * Route IRQ0 (the PIT) to vCPU 0 once. Channel 0 runs from reset (QEMU: mode 3, count 65536,
 * 18.2 Hz, phase unknown), so it is first quieted with a mode 0 count of 65535 (OUT low for 55 ms,
 * no edge) before the pins are routed; the first PIT command reprograms it at once.
 */
function ensurePitRouted(m: TimerSchedule, b: ProgramBuilder): void {
  if (m.pitRouted) return;
  m.pitRouted = true;
  const t = b.thread(0);
  t.op({ op: 'pioOut', port: 0x21, width: 1, value: 0xff });
  t.op({ op: 'pioOut', port: 0xa1, width: 1, value: 0xff });
  t.op({ op: 'pioOut', port: 0x43, width: 1, value: 0x30 });
  t.op({ op: 'pioOut', port: 0x40, width: 1, value: 0xff });
  t.op({ op: 'pioOut', port: 0x40, width: 1, value: 0xff });
  ioapicRoute(b, 0, 0, PIT_VECTOR, 0);
  ioapicRoute(b, 0, 2, PIT_VECTOR, 0);
}

/** Let time pass with interrupts as they are: a busy wait, then a stamp (a window edge). */
function wait(m: TimerSchedule, b: ProgramBuilder, thread: number, us: number, lim: ScheduleLimits): void {
  const cycles = BigInt(Math.round((us * lim.tscHz) / 1e6));
  b.thread(thread).op({ op: 'delayTsc', cycles });
  m.threads[thread]!.waitedUs += us;
  bracketed(m, b, thread, { source: 'control', kind: 'mark' }, []);
}

/**
 * A duration in µs that shrinking leaves alone: fast-check would walk it down to where a timing
 * difference is only just visible above the host's noise, and such a case does not replay. Shrinking
 * drops whole commands instead.
 */
const timeSpan = (min: number, max: number): fc.Arbitrary<number> => fc.noShrink(fc.integer({ min, max }));

const threadArb = (lim: ScheduleLimits) => fc.integer({ min: 0, max: lim.threads - 1 });

function cmd(description: string, thread: number, run: (m: TimerSchedule, b: ProgramBuilder) => void, check: (m: Readonly<TimerSchedule>) => boolean = () => true): ProgramCommand<TimerSchedule> {
  return programCommand<TimerSchedule>(
    description,
    (m, b) => {
      ensureStarted(m, b, thread);
      run(m, b);
    },
    check,
  );
}

/** A command arbitrary and how often fc.commands should pick it (relative). */
export type Weighted = { readonly weight: number; readonly arbitrary: fc.Arbitrary<ProgramCommand<TimerSchedule>> };

/** The one arbitrary fc.commands picks from: the weighted commands of a schedule. */
export function weightedCommands(ws: readonly Weighted[]): fc.Arbitrary<ProgramCommand<TimerSchedule>>[] {
  return [fc.oneof(...ws)];
}

/** Commands every timer schedule has: waiting (often: timers need time), and interrupts off and on. */
export function controlCommands(lim: ScheduleLimits, threads: fc.Arbitrary<number> = threadArb(lim)): Weighted[] {
  return [
    {
      weight: 5,
      arbitrary: fc.tuple(threads, timeSpan(100, 4000)).map(([t, us]) =>
        cmd(`cpu${t} wait ${us}us`, t, (m, b) => wait(m, b, t, us, lim), (m) => m.threads[t]!.waitedUs + us <= lim.maxWaitUs),
      ),
    },
    {
      weight: 1,
      arbitrary: threads.map((t) =>
        cmd(`cpu${t} cli`, t, (m, b) => {
          m.threads[t]!.interrupts = false;
          bracketed(m, b, t, { source: 'control', kind: 'cli' }, [{ op: 'cli' }]);
        }, (m) => !m.threads[t]!.started || m.threads[t]!.interrupts),
      ),
    },
    {
      weight: 1,
      arbitrary: threads.map((t) =>
        cmd(`cpu${t} sti`, t, (m, b) => {
          m.threads[t]!.interrupts = true;
          bracketed(m, b, t, { source: 'control', kind: 'sti' }, [{ op: 'sti' }]);
        }, (m) => m.threads[t]!.started && !m.threads[t]!.interrupts),
      ),
    },
  ];
}

// ---------------------------------------------------------------------------------------------
// LAPIC timer

const LVTT_MODE_BITS = { 'one-shot': 0, periodic: 1, 'tsc-deadline': 2 } as const;

export function lvttValue(mode: keyof typeof LVTT_MODE_BITS, masked: boolean): number {
  return LAPIC_VECTOR | (masked ? 1 << 16 : 0) | (LVTT_MODE_BITS[mode] << 17);
}

export function lapicCommands(lim: ScheduleLimits): fc.Arbitrary<ProgramCommand<TimerSchedule>>[] {
  const threads = threadArb(lim);
  const modes = lim.tscDeadline ? (['one-shot', 'periodic', 'tsc-deadline'] as const) : (['one-shot', 'periodic'] as const);
  const apicWrite = (m: TimerSchedule, b: ProgramBuilder, t: number, kind: string, reg: number, value: number) =>
    selfStamped(m, b, t, { source: 'lapic', kind, value }, { op: 'apicWrite', reg, value: BigInt(value >>> 0) });
  const cycles = (us: number) => Math.round((us * lim.tscHz) / 1e6);
  // A count given as a duration: the divide in force turns it into TMICT, so every divide keeps a case short.
  const tmictFor = (m: TimerSchedule, t: number, us: number) =>
    us === 0 ? 0 : Math.max(1, Math.min(0xffff_ffff, Math.round((us * lim.apicBusHz) / 1e6 / m.threads[t]!.divide)));
  const durations = timeSpan(50, 3000);
  const writeDeadline = (m: TimerSchedule, b: ProgramBuilder, t: number, relative: 0 | 1, offset: number) =>
    selfStamped(m, b, t, { source: 'lapic', kind: 'tscDeadline', value: offset, mode: relative }, { op: 'wrmsrAt', msr: MSR_TSC_DEADLINE, relative, value: BigInt.asUintN(64, BigInt(offset)) });
  /**
   * What a write leaves of vCPU t's LAPIC in the schedule's state: a TDCR write rescales what TMICT
   * counts to; a switch into or out of TSC-deadline mode disarms (KVM and the SDM §10.5.4.1: TMICT
   * 0). The setters apply it; periodOk judges it before a command runs.
   */
  type Lapic = Pick<ThreadState, 'lvtt' | 'tmictUs' | 'divide'>;
  const after = (s: Readonly<Lapic>, w: { lvtt?: ThreadState['lvtt']; divide?: number; tmictUs?: number }): Lapic => {
    let tmictUs = s.tmictUs;
    if (w.lvtt && (w.lvtt.mode === 'tsc-deadline') !== (s.lvtt.mode === 'tsc-deadline')) tmictUs = 0;
    if (w.divide !== undefined) tmictUs = (tmictUs * w.divide) / s.divide;
    if (w.tmictUs !== undefined) tmictUs = w.tmictUs;
    return { lvtt: w.lvtt ?? s.lvtt, divide: w.divide ?? s.divide, tmictUs };
  };
  const apply = (m: TimerSchedule, t: number, w: Parameters<typeof after>[1]) => Object.assign(m.threads[t]!, after(m.threads[t]!, w));
  const setDivide = (m: TimerSchedule, b: ProgramBuilder, t: number, log2: number) => {
    apply(m, t, { divide: 1 << log2 });
    apicWrite(m, b, t, 'tdcr', APIC_TDCR, TDCR_BY_DIVIDE[log2]!);
  };
  const setLvtt = (m: TimerSchedule, b: ProgramBuilder, t: number, mode: keyof typeof LVTT_MODE_BITS, masked: boolean) => {
    apply(m, t, { lvtt: { mode, masked } });
    apicWrite(m, b, t, 'lvtt', APIC_LVTT, lvttValue(mode, masked));
  };
  const setTmict = (m: TimerSchedule, b: ProgramBuilder, t: number, us: number) => {
    apply(m, t, { tmictUs: us });
    apicWrite(m, b, t, 'tmict', APIC_TMICT, tmictFor(m, t, us));
  };
  /**
   * Whether vCPU t's LAPIC, after write `w`, keeps any unmasked periodic count (the last TMICT at
   * the divide in force, KVM's floor counted) at or above lim.minPeriodicUs. Counted whether or
   * not the count is still running: a TDCR write restarts an expired one on KVM
   * (kvm-tdcr-write-refires-expired-oneshot).
   */
  const periodOk = (m: Readonly<TimerSchedule>, t: number, w: Parameters<typeof after>[1]) => {
    const min = lim.minPeriodicUs ?? 0;
    if (min <= 0) return true;
    const { lvtt, tmictUs } = after(m.threads[t]!, w);
    return lvtt.mode !== 'periodic' || lvtt.masked || tmictUs === 0 || Math.max(tmictUs, lim.floorUs ?? 0) >= min;
  };
  const ws: Weighted[] = [
    // Arm: LVTT unmasked in a mode, then the divide and count (or the deadline): the common start.
    {
      weight: 4,
      arbitrary: fc.tuple(threads, fc.constantFrom(...modes), fc.integer({ min: 0, max: 7 }), durations).map(([t, mode, log2, us]) =>
        cmd(`cpu${t} arm ${mode} ${mode === 'tsc-deadline' ? '' : `÷${1 << log2} `}${us}us`, t, (m, b) => {
          setLvtt(m, b, t, mode, false);
          if (mode === 'tsc-deadline') writeDeadline(m, b, t, 1, cycles(us));
          else {
            setDivide(m, b, t, log2);
            setTmict(m, b, t, us);
          }
        }, (m) => periodOk(m, t, { lvtt: { mode, masked: false }, tmictUs: mode === 'tsc-deadline' ? 0 : us })),
      ),
    },
    {
      weight: 2,
      arbitrary: fc.tuple(threads, fc.constantFrom(...modes), fc.boolean()).map(([t, mode, masked]) =>
        cmd(`cpu${t} LVTT ${mode}${masked ? ' masked' : ''}`, t, (m, b) => {
          setLvtt(m, b, t, mode, masked);
        }, (m) => periodOk(m, t, { lvtt: { mode, masked } })),
      ),
    },
    {
      weight: 2,
      arbitrary: fc.tuple(threads, fc.integer({ min: 0, max: 7 })).map(([t, log2]) => cmd(`cpu${t} TDCR ÷${1 << log2}`, t, (m, b) => setDivide(m, b, t, log2), (m) => periodOk(m, t, { divide: 1 << log2 }))),
    },
    {
      weight: 2,
      arbitrary: fc.tuple(threads, fc.oneof({ weight: 1, arbitrary: fc.constant(0) }, { weight: 4, arbitrary: durations })).map(([t, us]) =>
        cmd(us === 0 ? `cpu${t} TMICT 0 (stop)` : `cpu${t} TMICT ${us}us`, t, (m, b) => setTmict(m, b, t, us), (m) => periodOk(m, t, { tmictUs: us })),
      ),
    },
    // A divide change in the middle of a running count, then TMCCT at once and again a while later,
    // still within the count: the case the TDCR rule is about (c301b909e4b9: TMCCT does not jump,
    // only its slope changes at once). The later read is what tells the slopes apart: the two rules
    // differ by (1/old − 1/new divide) × the time since the write. As separate commands this order
    // is rare; as one it is about one LAPIC command in twelve.
    {
      weight: 2,
      arbitrary: fc
        .tuple(threads, fc.constantFrom('one-shot' as const, 'periodic' as const), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 7 }), timeSpan(1000, 3000), fc.noShrink(fc.integer({ min: 20, max: 60 })), fc.noShrink(fc.integer({ min: 30, max: 70 })))
        .map(([t, mode, from, to, us, pct, laterPct]) => {
          const to2 = to === from ? (to + 1) % 8 : to;
          const midUs = Math.round((us * pct) / 100);
          // What is left of the count runs at the new divide; read again within it, at most 2 ms on.
          const leftUs = ((us - midUs) * (1 << to2)) / (1 << from);
          const laterUs = Math.max(20, Math.min(2000, Math.round((leftUs * laterPct) / 100)));
          return cmd(`cpu${t} ${mode} ÷${1 << from} ${us}us, at ${midUs}us TDCR ÷${1 << to2}, read TMCCT then and ${laterUs}us later`, t, (m, b) => {
            setLvtt(m, b, t, mode, false);
            setDivide(m, b, t, from);
            setTmict(m, b, t, us);
            wait(m, b, t, midUs, lim);
            setDivide(m, b, t, to2);
            bracketed(m, b, t, { source: 'lapic', kind: 'readTmcct' }, [{ op: 'apicRead', reg: APIC_TMCCT }], 0);
            wait(m, b, t, laterUs, lim);
            bracketed(m, b, t, { source: 'lapic', kind: 'readTmcct' }, [{ op: 'apicRead', reg: APIC_TMCCT }], 0);
          }, (m) => m.threads[t]!.waitedUs + midUs + laterUs <= lim.maxWaitUs && periodOk(m, t, { lvtt: { mode, masked: false }, tmictUs: us }) && periodOk(m, t, { lvtt: { mode, masked: false }, tmictUs: (us * (1 << to2)) / (1 << from) }));
        }),
    },
    {
      weight: 2,
      arbitrary: threads.map((t) => cmd(`cpu${t} read TMCCT`, t, (m, b) => bracketed(m, b, t, { source: 'lapic', kind: 'readTmcct' }, [{ op: 'apicRead', reg: APIC_TMCCT }], 0))),
    },
  ];
  if (lim.tscDeadline) {
    ws.push(
      {
        weight: 2,
        arbitrary: fc
          .tuple(
            threads,
            fc.oneof(
              fc.constant({ what: 'zero' as const, cycles: 0, us: 0 }),
              fc.constant({ what: 'now' as const, cycles: 0, us: 0 }),
              fc.integer({ min: 1, max: 2_000_000 }).map((c) => ({ what: 'past' as const, cycles: -c, us: 0 })),
              durations.map((us) => ({ what: 'ahead' as const, cycles: cycles(us), us })),
            ),
          )
          .map(([t, d]) =>
            cmd(`cpu${t} TSC deadline ${d.what === 'ahead' ? `now+${d.us}us` : d.what === 'past' ? `now${d.cycles}` : d.what}`, t, (m, b) =>
              writeDeadline(m, b, t, d.what === 'zero' ? 0 : 1, d.cycles),
            ),
          ),
      },
      {
        weight: 1,
        arbitrary: threads.map((t) =>
          cmd(`cpu${t} read IA32_TSC_DEADLINE`, t, (m, b) => bracketed(m, b, t, { source: 'lapic', kind: 'readTscDeadline' }, [{ op: 'rdmsr', msr: MSR_TSC_DEADLINE }], 0)),
        ),
      },
    );
  }
  if (lim.x2apic) {
    ws.push({
      weight: 1,
      arbitrary: threads.map((t) =>
        cmd(`cpu${t} switch to x2APIC`, t, (m, b) => {
          m.threads[t]!.x2apic = true;
          // IA32_APIC_BASE: base 0xfee00000, enabled (bit 11), x2APIC (bit 10), BSP (bit 8) on vCPU 0.
          const value = 0xfee0_0000n | (1n << 11n) | (1n << 10n) | (t === 0 ? 1n << 8n : 0n);
          b.thread(t).op({ op: 'wrmsr', msr: MSR_APIC_BASE, value });
        }, (m) => !m.threads[t]!.x2apic),
      ),
    });
  }
  return weightedCommands([...ws, ...controlCommands(lim, threads)]);
}

// ---------------------------------------------------------------------------------------------
// RTC (vCPU 0)

/** Register A: divider 010 (32.768 kHz time base), RS in bits 3:0. */
export const rtcRegA = (rs: number) => 0x20 | (rs & 0xf);

/**
 * RTC schedules. `slowRates`: only RS 8–15 (256 Hz down to 2 Hz) and off — for driftfix=slew,
 * where a re-injection backlog at 1–8 kHz would keep the vCPU in its ISR.
 */
/** One stamped RTC register write: the index (port 0x70), then the data (0x71). */
function rtcRegisterWrite(m: TimerSchedule, b: ProgramBuilder, t: number, kind: 'writeA' | 'writeB', reg: number, value: number): void {
  bracketed(m, b, t, { source: 'rtc', kind, value }, [
    { op: 'pioOut', port: 0x70, width: 1, value: reg },
    { op: 'pioOut', port: 0x71, width: 1, value },
  ]);
}

export function rtcCommands(lim: ScheduleLimits, slowRates = false): fc.Arbitrary<ProgramCommand<TimerSchedule>>[] {
  const t = 0;
  // The index (port 0x70) and data (0x71) writes are one access: the ISR selects register C to
  // acknowledge, so an interrupt taken between them sends the data to register C, where it is lost
  // (seed 111 kept 8192 Hz after an RS=10 write). As Linux's CMOS_WRITE does under rtc_lock with
  // interrupts off, the pair runs inside CLI..STI, stamped as control events so the models see the
  // interrupts held back.
  const write = (m: TimerSchedule, b: ProgramBuilder, kind: 'writeA' | 'writeB', reg: number, value: number) => {
    ensureRtcRouted(m, b);
    const masked = m.threads[t]!.interrupts;
    if (masked) bracketed(m, b, t, { source: 'control', kind: 'cli' }, [{ op: 'cli' }]);
    rtcRegisterWrite(m, b, t, kind, reg, value);
    if (masked) bracketed(m, b, t, { source: 'control', kind: 'sti' }, [{ op: 'sti' }]);
  };
  // Windows flips between 64 and 1024 Hz (RS 10 and 6); every other rate, and the same rate again, too.
  const rates = slowRates
    ? fc.oneof({ weight: 3, arbitrary: fc.constantFrom(8, 10) }, { weight: 2, arbitrary: fc.integer({ min: 8, max: 15 }) }, { weight: 1, arbitrary: fc.constant(0) })
    : fc.oneof({ weight: 3, arbitrary: fc.constantFrom(6, 10) }, { weight: 2, arbitrary: fc.integer({ min: 3, max: 15 }) }, { weight: 1, arbitrary: fc.constantFrom(0, 1, 2) });
  return weightedCommands([
    { weight: 3, arbitrary: rates.map((rs) => cmd(`RTC rate RS=${rs} (${rs === 0 ? 'off' : `${32768 / (1 << ((rs <= 2 ? rs + 7 : rs) - 1))} Hz`})`, t, (m, b) => {
      write(m, b, 'writeA', 0x0a, rtcRegA(rs));
    })) },
    { weight: 2, arbitrary: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }).map((on) => cmd(`RTC periodic interrupt ${on ? 'on' : 'off'}`, t, (m, b) => {
      write(m, b, 'writeB', 0x0b, 0x02 | (on ? 0x40 : 0)); // 24-hour mode, PIE
    })) },
    // A steady stretch: one rate (1024 or 2048 Hz), on for 12-25 ms, then off. The rate-drift rule
    // needs a run of 15 or more ticks delivered one each, each within half a period of its tick
    // (1% of 25 ms is half a 2048 Hz period), to tell a clock 1% off; short, changing schedules
    // rarely give one.
    { weight: 1, arbitrary: fc.tuple(slowRates ? fc.constantFrom(8, 9) : fc.constantFrom(5, 6), timeSpan(12_000, 25_000)).map(([rs, us]) => cmd(`RTC steady RS=${rs} (${32768 / (1 << (rs - 1))} Hz) for ${us}us`, t, (m, b) => {
      write(m, b, 'writeA', 0x0a, rtcRegA(rs));
      write(m, b, 'writeB', 0x0b, 0x02 | 0x40);
      wait(m, b, t, us, lim);
      write(m, b, 'writeB', 0x0b, 0x02);
    }, (m) => m.threads[t]!.waitedUs + us <= lim.maxWaitUs)) },
    { weight: 1, arbitrary: fc.constant(null).map(() => cmd('RTC read register C', t, (m, b) => {
      ensureRtcRouted(m, b);
      bracketed(m, b, t, { source: 'rtc', kind: 'readC' }, [
        { op: 'pioOut', port: 0x70, width: 1, value: 0x0c },
        { op: 'pioIn', port: 0x71, width: 1 },
      ]);
    })) },
    ...controlCommands(lim, fc.constant(0)),
  ]);
}

/**
 * RTC time of day against TSC time (vCPU 0): wait for the seconds register to change (rtcSecondsEdge,
 * which brackets the change with TSC stamps), again and again, with register B's data mode (BCD or
 * binary, 12 or 24 hours) and register A's rate changed in between; the periodic interrupt stays
 * off. Each wait costs up to a second of the case's budget.
 */
export function rtcClockCommands(lim: ScheduleLimits): fc.Arbitrary<ProgramCommand<TimerSchedule>>[] {
  const t = 0;
  // No periodic interrupt here, so no ISR selects register C between the index and the data.
  const write = (m: TimerSchedule, b: ProgramBuilder, kind: 'writeA' | 'writeB', reg: number, value: number) => rtcRegisterWrite(m, b, t, kind, reg, value);
  // A change is due within a second; 1.2 s before the op gives up (then the rate rule says so).
  const timeoutCycles = BigInt(Math.round(lim.tscHz * 1.2));
  return weightedCommands([
    { weight: 6, arbitrary: fc.constant(cmd('RTC wait for the next second', t, (m, b) => {
      selfStamped(m, b, t, { source: 'rtc', kind: 'secondsEdge' }, { op: 'rtcSecondsEdge', timeoutCycles });
      m.threads[t]!.waitedUs += 1_000_000;
    }, (m) => m.threads[t]!.waitedUs + 1_000_000 <= lim.maxWaitUs)) },
    { weight: 1, arbitrary: fc.tuple(fc.boolean(), fc.boolean()).map(([binary, h24]) => cmd(`RTC data mode ${binary ? 'binary' : 'BCD'}, ${h24 ? '24' : '12'}-hour`, t, (m, b) => {
      write(m, b, 'writeB', 0x0b, (binary ? 0x04 : 0) | (h24 ? 0x02 : 0)); // PIE, AIE, UIE off; SET clear
    })) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 15 }).map((rs) => cmd(`RTC rate RS=${rs} (periodic interrupt off)`, t, (m, b) => {
      write(m, b, 'writeA', 0x0a, rtcRegA(rs));
    })) },
  ]);
}

// ---------------------------------------------------------------------------------------------
// PIT channel 0 (vCPU 0)

export const PIT_HZ = 1_193_182;

export function pitCommands(lim: ScheduleLimits): fc.Arbitrary<ProgramCommand<TimerSchedule>>[] {
  const t = 0;
  const countOf = (us: number) => Math.max(2, Math.min(0xffff, Math.round((us * PIT_HZ) / 1e6)));
  const durations = timeSpan(100, 5000);
  return weightedCommands([
    { weight: 3, arbitrary: fc.tuple(fc.constantFrom(0, 2, 3), durations).map(([mode, us]) => cmd(`PIT mode ${mode}, ${us}us`, t, (m, b) => {
      ensurePitRouted(m, b);
      m.pitOn = true;
      const count = countOf(us);
      bracketed(m, b, t, { source: 'pit', kind: 'program', mode, value: count }, [
        { op: 'pioOut', port: 0x43, width: 1, value: 0x30 | (mode << 1) }, // channel 0, LSB then MSB, binary
        { op: 'pioOut', port: 0x40, width: 1, value: count & 0xff },
        { op: 'pioOut', port: 0x40, width: 1, value: count >> 8 },
      ]);
    })) },
    // A steady stretch: mode 2 at one period (0.6-1 ms) for 18-25 ms: the rate-drift rule's run of
    // 18 or more ticks, each period long enough that 1% of the stretch stays under half of it.
    { weight: 1, arbitrary: fc.tuple(timeSpan(600, 1000), timeSpan(18_000, 25_000)).map(([periodUs, us]) => cmd(`PIT steady mode 2, ${periodUs}us for ${us}us`, t, (m, b) => {
      ensurePitRouted(m, b);
      m.pitOn = true;
      const count = countOf(periodUs);
      bracketed(m, b, t, { source: 'pit', kind: 'program', mode: 2, value: count }, [
        { op: 'pioOut', port: 0x43, width: 1, value: 0x30 | (2 << 1) },
        { op: 'pioOut', port: 0x40, width: 1, value: count & 0xff },
        { op: 'pioOut', port: 0x40, width: 1, value: count >> 8 },
      ]);
      wait(m, b, t, us, lim);
    }, (m) => m.threads[t]!.waitedUs + us <= lim.maxWaitUs)) },
    // Latch channel 0's count and read it (LSB, MSB): where the count is tells the PIT's rate
    // against the TSC without waiting for an interrupt, so delivery delays cannot hide a PIT 1% slow.
    { weight: 2, arbitrary: fc.constant(cmd('PIT read count', t, (m, b) => {
      const th = b.thread(t);
      const before = th.length;
      th.op({ op: 'rdtsc' });
      th.op({ op: 'pioOut', port: 0x43, width: 1, value: 0x00 }); // counter latch command, channel 0
      const after = th.length;
      th.op({ op: 'rdtsc' });
      const lsb = th.length;
      th.op({ op: 'pioIn', port: 0x40, width: 1 });
      th.op({ op: 'pioIn', port: 0x40, width: 1 });
      m.events.push({ thread: t, source: 'pit', kind: 'readCount', stamp: { before, after }, valueBytes: [lsb, lsb + 1] });
    }, (m) => m.pitOn)) },
    { weight: 2, arbitrary: durations.map((us) => cmd(`PIT reload ${us}us`, t, (m, b) => {
      const count = countOf(us);
      bracketed(m, b, t, { source: 'pit', kind: 'reload', value: count }, [
        { op: 'pioOut', port: 0x40, width: 1, value: count & 0xff },
        { op: 'pioOut', port: 0x40, width: 1, value: count >> 8 },
      ]);
    }, (m) => m.pitOn)) },
    ...controlCommands(lim, fc.constant(0)),
  ]);
}

// ---------------------------------------------------------------------------------------------
// kvmclock (every vCPU)

export function kvmclockCommands(lim: ScheduleLimits, pvclockBase: number, stride: number): fc.Arbitrary<ProgramCommand<TimerSchedule>>[] {
  const threads = threadArb(lim);
  const addr = (t: number) => BigInt(pvclockBase + t * stride);
  return [
    fc.tuple(threads, fc.integer({ min: 1, max: 8 })).map(([t, n]) => cmd(`cpu${t} read kvmclock ×${n}`, t, (m, b) => {
      const s = m.threads[t]!;
      if (!s.kvmclockOn) {
        s.kvmclockOn = true;
        b.thread(t).op({ op: 'wrmsr', msr: MSR_KVM_SYSTEM_TIME_NEW, value: addr(t) | 1n });
      }
      for (let i = 0; i < n; i++) {
        const at = b.thread(t).length;
        b.thread(t).op({ op: 'kvmclockRead', addr: addr(t) });
        m.events.push({ thread: t, source: 'kvmclock', kind: 'kvmclock', stamp: { self: at }, valueOp: at });
      }
    })),
    fc.tuple(threads, timeSpan(10, 2000)).map(([t, us]) =>
      cmd(`cpu${t} spin ${us}us`, t, (m, b) => {
        b.thread(t).op({ op: 'delayTsc', cycles: BigInt(Math.round((us * lim.tscHz) / 1e6)) });
        m.threads[t]!.waitedUs += us;
      }, (m) => m.threads[t]!.waitedUs + us <= lim.maxWaitUs),
    ),
  ];
}
