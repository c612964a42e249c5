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
