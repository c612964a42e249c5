import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { OPS } from '../ir/ops.js';
import { buildFromCommands, commandsArb } from './commands.js';
import { emptySchedule, kvmclockCommands, lapicCommands, pitCommands, rtcCommands, type ScheduleLimits, type TimerSchedule } from './timers.js';

const LIM: ScheduleLimits = { threads: 2, maxWaitUs: 30_000, tscHz: 2_445_402_000, apicBusHz: 1e9, tscDeadline: true, x2apic: true };

const families = {
  lapic: lapicCommands(LIM),
  rtc: rtcCommands({ ...LIM, threads: 1 }),
  pit: pitCommands({ ...LIM, threads: 1 }),
  kvmclock: kvmclockCommands(LIM, 0x68_0000, 64),
};

describe('timer schedules', () => {
  for (const [name, cmds] of Object.entries(families)) {
    it(`${name}: every scheduled event points at ops that stamp it, in its own thread`, () => {
      const threads = name === 'rtc' || name === 'pit' ? 1 : 2;
      fc.assert(
        fc.property(commandsArb(cmds, { maxCommands: 24, size: '+1' }), (w) => {
          const built = buildFromCommands<TimerSchedule>(w, () => emptySchedule(threads), { maxThreads: threads, threads });
          for (const ev of built.model.events) {
            const ops = built.program.threads[ev.thread]!;
            if ('self' in ev.stamp) {
              const o = ops[ev.stamp.self]!;
              expect(['apicWrite', 'wrmsrAt', 'kvmclockRead']).toContain(o.op);
              expect(OPS[o.op].record).toBe(true);
            } else {
              expect(ops[ev.stamp.before]!.op).toBe('rdtsc');
              expect(ops[ev.stamp.after]!.op).toBe('rdtsc');
              expect(ev.stamp.after).toBeGreaterThan(ev.stamp.before);
            }
            if (ev.valueOp !== undefined) expect(OPS[ops[ev.valueOp]!.op].record).toBe(true);
          }
          // Every thread that did anything starts by enabling interrupts (the timeline's first event).
          for (let t = 0; t < threads; t++) {
            const first = built.model.events.find((e) => e.thread === t);
            if (first) expect(first.kind).toBe('sti');
          }
          // The busy-wait budget holds per thread.
          for (const s of built.model.threads) expect(s.waitedUs).toBeLessThanOrEqual(LIM.maxWaitUs);
        }),
        { numRuns: 60, seed: 1 },
      );
    });
  }

  it('lapic: on a host too slow for the floor, no command leaves an unmasked periodic count shorter than minPeriodicUs (the floor counted)', () => {
    const lim: ScheduleLimits = { ...LIM, minPeriodicUs: 800, floorUs: 200 };
    /** The LAPIC of each vCPU as its writes leave it: LVTT mode and mask, divide, TMICT (counts). */
    const apicAfter = (events: TimerSchedule['events']) => {
      const apic = [0, 1].map(() => ({ mode: 0, masked: true, divide: 1, tmict: 0 }));
      for (const ev of events) {
        if (ev.source !== 'lapic' || ev.value === undefined) continue;
        const a = apic[ev.thread]!;
        if (ev.kind === 'lvtt') {
          const mode = (ev.value >>> 17) & 3;
          if ((mode === 2) !== (a.mode === 2)) a.tmict = 0;
          a.mode = mode;
          a.masked = ((ev.value >>> 16) & 1) === 1;
        } else if (ev.kind === 'tdcr') {
          const enc = ((ev.value & 8) >> 1) | (ev.value & 3);
          a.divide = enc === 7 ? 1 : 2 << enc;
        } else if (ev.kind === 'tmict') a.tmict = ev.value;
      }
      return apic;
    };
    let periodicSeen = 0;
    fc.assert(
      fc.property(commandsArb(lapicCommands(lim), { maxCommands: 24, size: '+1' }), (w) => {
        const cmds = [...w];
        // After every command (inside one, a write or two apart, a short period lasts microseconds).
        for (let k = 1; k <= cmds.length; k++) {
          const built = buildFromCommands<TimerSchedule>(cmds.slice(0, k), () => emptySchedule(2), { maxThreads: 2, threads: 2 });
          for (const a of apicAfter(built.model.events)) {
            if (a.mode !== 1 || a.masked || a.tmict === 0) continue;
            periodicSeen++;
            const us = Math.max((a.tmict * a.divide * 1e6) / LIM.apicBusHz, lim.floorUs!);
            // A TMICT rounds to whole counts: a few ns short of the duration it was written for.
            expect(us).toBeGreaterThanOrEqual(lim.minPeriodicUs! - 0.5);
          }
        }
      }),
      { numRuns: 100, seed: 2 },
    );
    expect(periodicSeen).toBeGreaterThan(50);
  });

  it('lapic: with no minPeriodicUs, periodic counts below the floor are still generated (KVM raises them to it)', () => {
    const short = fc.sample(commandsArb(lapicCommands(LIM), { maxCommands: 24, size: '+1' }), { seed: 3, numRuns: 200 }).some((w) => {
      const built = buildFromCommands<TimerSchedule>(w, () => emptySchedule(2), { maxThreads: 2, threads: 2 });
      return built.ran.some((c) => /arm periodic ÷\d+ (\d+)us/.test(c) && Number(/arm periodic ÷\d+ (\d+)us/.exec(c)![1]) < 200);
    });
    expect(short).toBe(true);
  });

  it('rtc: with interrupts on, no interrupt can fall between a CMOS index write and its data write', () => {
    // The ISR selects register C (OUT 0x70, 0x0C) to acknowledge: an interrupt between the index
    // and the data access would send the data to the wrong register.
    fc.assert(
      fc.property(commandsArb(families.rtc, { maxCommands: 24, size: '+1' }), (w) => {
        const built = buildFromCommands<TimerSchedule>(w, () => emptySchedule(1), { maxThreads: 1, threads: 1 });
        let on = false;
        const ops = built.program.threads[0]!;
        ops.forEach((o, i) => {
          if (o.op === 'sti') on = true;
          if (o.op === 'cli') on = false;
          if (o.op === 'pioOut' && o.port === 0x70) {
            expect(ops[i + 1]).toMatchObject({ port: 0x71 });
            if (ops[i + 1]!.op === 'pioOut') expect(on, `op ${i}: CMOS write with interrupts on`).toBe(false);
          }
        });
      }),
      { numRuns: 100, seed: 2 },
    );
  });

  it('a schedule is plain data: a built case survives JSON and structuredClone unchanged', () => {
    const [w] = fc.sample(commandsArb(families.lapic, { maxCommands: 24, size: '+1' }), { numRuns: 1, seed: 3 });
    const built = buildFromCommands<TimerSchedule>(w!, () => emptySchedule(2), { maxThreads: 2, threads: 2 });
    expect(JSON.parse(JSON.stringify(built.model))).toEqual(built.model);
  });
});
