/**
 * The state of a stopped VM (harness/vmState.ts): first the parsers on text QEMU 7.2 printed
 * (captured from this suite's guest under KVM, cut short where it repeats), and capture on a
 * stand-in monitor; then on real KVM: two captures of one stopped VM agree, a source and its
 * destination agree after a migration that leaves the destination paused, and the comparison is
 * not blind: once the destination has run on, the difference is found and named.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Op } from '../ir/ops.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { buildGuest } from './guest/build.js';
import { useOwnRunRoot } from './testing/runRoot.js';
import { withVms, type VmHandle } from './session.js';
import { defaultMachineConfig, type MachineConfig } from './vm.js';
import {
  captureVmState,
  diffVmState,
  formatVmStateDiff,
  parseLapic,
  parsePic,
  parseRegisters,
  VmStateError,
  type QmpLike,
  type VmState,
  type VmStateItem,
} from './vmState.js';

const crlf = (s: string) => s.replace(/\n/g, '\r\n');

// --- fixtures: QEMU 7.2's own words -----------------------------------------------------------

/**
 * `info registers -a` on a 2-vCPU microvm: CPU 0 runs a ring-3 thread in long mode (XMM02-15 cut),
 * CPU 1 was never started (the reset state, printed in the 32-bit layout; its x87/XMM lines cut).
 */
const REGISTERS = crlf(`
CPU#0
RAX=0000000016d2af05 RBX=0000000000000038 RCX=00002b2016d3580f RDX=0000000000002b20
RSI=0000000000000023 RDI=0000000000000001 RBP=0000000000600080 RSP=000000000011d708
R8 =000000000011d730 R9 =0000000002faf080 R10=0000000000001140 R11=0000000000004500
R12=000000000000004a R13=0000000000800058 R14=0000000000000001 R15=0000000000004608
RIP=0000000000101b51 RFL=00000006 [-----P-] CPL=3 II=0 A20=1 SMM=0 HLT=0
ES =0010 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]
CS =002b 0000000000000000 ffffffff 00a0fa00 DPL=3 CS64 [-R-]
SS =0023 0000000000000000 ffffffff 00c0f200 DPL=3 DS   [-W-]
DS =0010 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]
FS =0010 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]
GS =0010 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]
LDT=0000 0000000000000000 0000ffff 00008200 DPL=0 LDT
TR =0030 0000000000118158 00002068 00008b00 DPL=0 TSS64-busy
GDT=     0000000000103d10 0000012f
IDT=     0000000000198010 00000fff
CR0=80010013 CR2=0000000000000000 CR3=0000000000400000 CR4=00000620
DR0=0000000000000000 DR1=0000000000000000 DR2=0000000000000000 DR3=0000000000000000 
DR6=00000000ffff0ff0 DR7=0000000000000400
EFER=0000000000000500
FCW=037f FSW=0000 [ST=0] FTW=00 MXCSR=00001f80
FPR0=0000000000000000 0000 FPR1=0000000000000000 0000
FPR2=0000000000000000 0000 FPR3=0000000000000000 0000
FPR4=0000000000000000 0000 FPR5=0000000000000000 0000
FPR6=0000000000000000 0000 FPR7=0000000000000000 0000
XMM00=0000000000000000 0000000000000000 XMM01=0000000000000000 0000000000000000

CPU#1
EAX=00000000 EBX=00000000 ECX=00000000 EDX=00a00f11
ESI=00000000 EDI=00000000 EBP=00000000 ESP=00000000
EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
ES =0000 00000000 0000ffff 00009300
CS =f000 ffff0000 0000ffff 00009b00
GDT=     00000000 0000ffff
CR0=60000010 CR2=00000000 CR3=00000000 CR4=00000000
EFER=0000000000000000
`);

/** `info lapic` (cpu-index 0) with a periodic timer armed (vector 0x40, pending in IRR: IF is 0). */
const LAPIC0 = crlf(`dumping local APIC state for CPU 0 

LVT0\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)
LVT1\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)
LVTPC\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)
LVTERR\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)
LVTTHMR\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)
LVTT\t 0x00020040 active-hi edge                 periodic     Fixed  (vec 64)
Timer\t DCR=0xb (divide by 1) initial_count = 50000000 current_count = 50000000
SPIV\t 0x000001ff APIC enabled, focus=off, spurious vec 255
ICR\t 0x00004608 physical edge assert no-shorthand
ICR2\t 0x01000000 cpu 16777216 (X2APIC ID)
ESR\t 0x00000000
ISR\t (none)
IRR\t 64 

APR 0x00 TPR 0x00 DFR 0x0f LDR 0x00 PPR 0x00
`);

/** `info pic` on microvm (split irqchip: two userspace IOAPICs, both labelled "ioapic0"); pins 2-23 cut. */
const PIC = crlf(`pic0: irr=01 imr=ff isr=00 hprio=0 irq_base=00 rr_sel=0 elcr=00 fnm=0
ioapic0: ver=0x20 id=0x00 sel=0x00
  pin 0  0x0000000000010000 dest=0 vec=0   active-hi edge  masked fixed  physical
  pin 1  0x0000000000010000 dest=0 vec=0   active-hi edge  masked fixed  physical
  IRR      (none)
  Remote IRR (none)
pic1: irr=00 imr=ff isr=00 hprio=0 irq_base=00 rr_sel=0 elcr=00 fnm=0
ioapic0: ver=0x11 id=0x00 sel=0x00
  pin 0  0x0000000000010000 dest=0 vec=0   active-hi edge  masked fixed  physical
  pin 1  0x0000000000018031 dest=0 vec=49  active-hi level masked fixed  physical
  IRR      1 
  Remote IRR (none)
`);

function valueOf(items: readonly VmStateItem[], section: string, key: string): string | undefined {
  return items.find((i) => i.section === section && i.key === key)?.value;
}

// --- the parsers --------------------------------------------------------------------------------

describe('parseRegisters', () => {
  const items = parseRegisters(REGISTERS);
  const cpu0 = (key: string) => valueOf(items, 'cpu0.registers', key);

  it('reads every register of a long-mode vCPU, one item each', () => {
    expect(cpu0('RIP')).toBe('0000000000101b51');
    expect(cpu0('RAX')).toBe('0000000016d2af05');
    expect(cpu0('R8')).toBe('000000000011d730'); // "R8 =": the padding is not part of the name
    expect([cpu0('RFL'), cpu0('CPL'), cpu0('II'), cpu0('A20'), cpu0('SMM'), cpu0('HLT')]).toEqual(['00000006', '3', '0', '1', '0', '0']);
    expect([cpu0('CS.sel'), cpu0('CS.base'), cpu0('CS.limit'), cpu0('CS.flags')]).toEqual(['002b', '0000000000000000', 'ffffffff', '00a0fa00']);
    expect([cpu0('TR.sel'), cpu0('TR.base'), cpu0('LDT.flags')]).toEqual(['0030', '0000000000118158', '00008200']);
    expect([cpu0('GDT.base'), cpu0('GDT.limit'), cpu0('IDT.limit')]).toEqual(['0000000000103d10', '0000012f', '00000fff']);
    expect([cpu0('CR0'), cpu0('CR3'), cpu0('CR4'), cpu0('DR3'), cpu0('DR6'), cpu0('DR7'), cpu0('EFER')]).toEqual([
      '80010013', '0000000000400000', '00000620', '0000000000000000', '00000000ffff0ff0', '0000000000000400', '0000000000000500',
    ]);
    expect([cpu0('FCW'), cpu0('FSW'), cpu0('FTW'), cpu0('MXCSR')]).toEqual(['037f', '0000', '00', '00001f80']);
    expect(cpu0('FPR7')).toBe('0000000000000000 0000');
    expect(cpu0('XMM01')).toBe('0000000000000000 0000000000000000');
    const keys = items.filter((i) => i.section === 'cpu0.registers').map((i) => i.key);
    // 16 GPRs, RIP RFL CPL II A20 SMM HLT, 8 segments x 4, GDT/IDT x 2, 4 CRs, 6 DRs, EFER, 4 x87/SSE control, 8 FPRs, 2 XMMs
    expect(keys).toHaveLength(16 + 7 + 32 + 4 + 4 + 6 + 1 + 4 + 8 + 2);
  });

  it('drops what QEMU decodes from a raw value it also prints: the flag letters, ST, DPL and type', () => {
    const keys = new Set(items.map((i) => i.key));
    for (const derived of ['DPL', 'ST', 'CS64', 'DS']) expect(keys.has(derived), derived).toBe(false);
    expect(items.some((i) => i.key.startsWith('line '))).toBe(false);
    expect(items.some((i) => /\[|\]/.test(i.value))).toBe(false);
  });

  it('keeps the vCPUs apart, in the 32-bit layout too', () => {
    const cpu1 = (key: string) => valueOf(items, 'cpu1.registers', key);
    expect([cpu1('EIP'), cpu1('EFL'), cpu1('EDX'), cpu1('CS.sel'), cpu1('CS.base'), cpu1('GDT.base'), cpu1('CR0')]).toEqual([
      '0000fff0', '00000002', '00a00f11', 'f000', 'ffff0000', '00000000', '60000010',
    ]);
    expect(valueOf(items, 'cpu1.registers', 'RIP')).toBeUndefined();
    expect([...new Set(items.map((i) => i.section))]).toEqual(['cpu0.registers', 'cpu1.registers']);
  });

  it('reads text without a CPU header as CPU 0 (plain `info registers`)', () => {
    expect(parseRegisters('RIP=0000000000101b51 RFL=00000006 [-----P-] CPL=3 II=0 A20=1 SMM=0 HLT=1\n')).toEqual(
      ['RIP', 'RFL', 'CPL', 'II', 'A20', 'SMM', 'HLT'].map((key, i) => ({ section: 'cpu0.registers', key, value: ['0000000000101b51', '00000006', '3', '0', '1', '0', '1'][i] })),
    );
  });

  it('keeps a line it cannot read whole, so nothing QEMU prints goes uncompared', () => {
    const odd = parseRegisters('CPU#0\nRIP=0000000000101b51\nsomething new: 42\nPKRU=00000000 and more words\n');
    expect(odd).toEqual([
      { section: 'cpu0.registers', key: 'RIP', value: '0000000000101b51' },
      { section: 'cpu0.registers', key: 'line 2', value: 'something new: 42' },
      { section: 'cpu0.registers', key: 'PKRU', value: '00000000' },
      { section: 'cpu0.registers', key: 'line 3', value: 'PKRU=00000000 and more words' },
    ]);
  });

  it('refuses a register printed twice for one vCPU', () => {
    expect(() => parseRegisters('CPU#0\nRIP=0000000000000001\nRIP=0000000000000002\n')).toThrow(VmStateError);
  });
});

describe('parseLapic', () => {
  it('reads each register as its raw value, and the timer fields', () => {
    const items = parseLapic(LAPIC0, 0);
    expect(Object.fromEntries(items.map((i) => [i.key, i.value]))).toEqual({
      LVT0: '0x00010000',
      LVT1: '0x00010000',
      LVTPC: '0x00010000',
      LVTERR: '0x00010000',
      LVTTHMR: '0x00010000',
      LVTT: '0x00020040',
      'Timer.DCR': '0xb',
      'Timer.initial_count': '50000000',
      'Timer.current_count': '50000000',
      SPIV: '0x000001ff',
      ICR: '0x00004608',
      ICR2: '0x01000000',
      ESR: '0x00000000',
      ISR: '(none)',
      IRR: '64',
      APR: '0x00',
      TPR: '0x00',
      DFR: '0x0f',
      LDR: '0x00',
      PPR: '0x00',
    });
    expect(new Set(items.map((i) => i.section))).toEqual(new Set(['cpu0.lapic']));
  });

  it('checks that QEMU dumped the vCPU asked for', () => {
    expect(() => parseLapic(LAPIC0, 1)).toThrow(/printed CPU 0, expected CPU 1/);
    expect(() => parseLapic('No CPU available\n', 3)).toThrow(VmStateError);
  });
});

describe('parsePic', () => {
  const items = parsePic(PIC);
  it('names the i8259s as QEMU does and the IOAPICs by their place in the output', () => {
    expect([...new Set(items.map((i) => i.section))]).toEqual(['pic0', 'ioapic[0]', 'pic1', 'ioapic[1]']);
    expect(items.filter((i) => i.section === 'pic0').map((i) => `${i.key}=${i.value}`)).toEqual([
      'irr=01', 'imr=ff', 'isr=00', 'hprio=0', 'irq_base=00', 'rr_sel=0', 'elcr=00', 'fnm=0',
    ]);
    expect(valueOf(items, 'ioapic[0]', 'ver')).toBe('0x20');
    expect(valueOf(items, 'ioapic[1]', 'ver')).toBe('0x11');
    expect(valueOf(items, 'ioapic[1]', 'pin 1')).toBe('0x0000000000018031');
    expect(valueOf(items, 'ioapic[1]', 'IRR')).toBe('1');
    expect(valueOf(items, 'ioapic[1]', 'Remote IRR')).toBe('(none)');
    expect(items.some((i) => i.section === 'pic.text')).toBe(false);
  });
});

describe('diffVmState', () => {
  const state = (items: [string, string, string][]): VmState => ({ items: items.map(([section, key, value]) => ({ section, key, value })), raw: {} });
  const a = state([['cpu0.registers', 'RIP', '1'], ['cpu0.registers', 'RAX', '2'], ['cpu0.lapic', 'IRR', '64'], ['pic0', 'irr', '01']]);

  it('is empty for equal states, whatever their item order', () => {
    expect(diffVmState(a, a)).toEqual([]);
    expect(diffVmState(a, state([['pic0', 'irr', '01'], ['cpu0.lapic', 'IRR', '64'], ['cpu0.registers', 'RAX', '2'], ['cpu0.registers', 'RIP', '1']]))).toEqual([]);
  });

  it("names each differing item, in a's order, then what only b has", () => {
    const b = state([['cpu0.registers', 'RAX', '3'], ['cpu0.registers', 'RIP', '1'], ['pic0', 'irr', '01'], ['cpu1.registers', 'RIP', '9']]);
    const diff = diffVmState(a, b);
    expect(diff).toEqual([
      { section: 'cpu0.registers', key: 'RAX', a: '2', b: '3' },
      { section: 'cpu0.lapic', key: 'IRR', a: '64', b: null },
      { section: 'cpu1.registers', key: 'RIP', a: null, b: '9' },
    ]);
    expect(formatVmStateDiff(diff, ['src', 'dst']).split('\n')).toEqual([
      'cpu0.registers RAX: src 2, dst 3',
      'cpu0.lapic IRR: src 64, dst (absent)',
      'cpu1.registers RIP: src (absent), dst 9',
    ]);
  });

  it('refuses a state that holds an item twice', () => {
    expect(() => diffVmState(state([['s', 'k', '1'], ['s', 'k', '2']]), a)).toThrow(VmStateError);
  });
});

// --- capture on a stand-in monitor ------------------------------------------------------------

/** A monitor that answers from the fixtures and remembers what it was asked. */
function standIn(running = false): QmpLike & { calls: { command: string; args?: Record<string, unknown> }[] } {
  const calls: { command: string; args?: Record<string, unknown> }[] = [];
  const lapic1 = LAPIC0.replace('CPU 0', 'CPU 1').replace('0x00020040', '0x00010000');
  return {
    calls,
    async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
      calls.push(args ? { command, args } : { command });
      const answer = ((): unknown => {
        switch (command) {
          case 'query-status':
            return { status: running ? 'running' : 'postmigrate', singlestep: false, running };
          case 'query-cpus-fast':
            return [0, 1].map((i) => ({ 'cpu-index': i, 'thread-id': 8077 + i, 'qom-path': `/machine/unattached/device[${2 * i}]`, target: 'x86_64', props: { 'socket-id': 0, 'core-id': i, 'thread-id': 0 } }));
          case 'query-kvm':
            return { enabled: true, present: true };
          case 'human-monitor-command': {
            const line = args?.['command-line'];
            if (line === 'info registers -a') return REGISTERS;
            if (line === 'info pic') return PIC;
            if (line === 'info lapic') return args?.['cpu-index'] === 1 ? lapic1 : LAPIC0;
            throw new Error(`unexpected HMP ${String(line)}`);
          }
          default:
            throw new Error(`unexpected ${command}`);
        }
      })();
      return answer as T;
    },
  };
}

describe('captureVmState (stand-in monitor)', () => {
  it('asks each vCPU for its LAPIC by cpu-index and puts every section together, host thread ids left out', async () => {
    const qmp = standIn();
    const s = await captureVmState(qmp, 2);
    expect(qmp.calls.filter((c) => c.args?.['command-line'] === 'info lapic').map((c) => c.args?.['cpu-index'])).toEqual([0, 1]);
    expect([...new Set(s.items.map((i) => i.section))]).toEqual([
      'cpu0.identity', 'cpu0.registers', 'cpu0.lapic', 'cpu1.identity', 'cpu1.registers', 'cpu1.lapic', 'pic0', 'ioapic[0]', 'pic1', 'ioapic[1]', 'kvm',
    ]);
    expect(s.items.filter((i) => i.section === 'cpu1.identity')).toEqual([
      { section: 'cpu1.identity', key: 'qom-path', value: '/machine/unattached/device[2]' },
      { section: 'cpu1.identity', key: 'target', value: 'x86_64' },
      { section: 'cpu1.identity', key: 'props.core-id', value: '1' },
      { section: 'cpu1.identity', key: 'props.socket-id', value: '0' },
      { section: 'cpu1.identity', key: 'props.thread-id', value: '0' }, // the topology's thread, not the host's
    ]);
    expect(s.items.some((i) => i.value === '8078')).toBe(false);
    expect(valueOf(s.items, 'cpu1.lapic', 'LVTT')).toBe('0x00010000');
    expect(Object.keys(s.raw)).toEqual(['query-status', 'query-cpus-fast', 'info registers -a', 'info lapic (cpu-index 0)', 'info lapic (cpu-index 1)', 'info pic', 'query-kvm']);
    expect(s.raw['info pic']).toBe(PIC);
  });

  it('refuses a running VM, and a vCPU count that is not the one given', async () => {
    await expect(captureVmState(standIn(true), 2)).rejects.toThrow(/running/);
    await expect(captureVmState(standIn(), 1)).rejects.toThrow(/has 2 vCPUs .* expected 1/);
  });
});

// --- on real KVM ----------------------------------------------------------------------------------

let guestElf: string;
useOwnRunRoot();
beforeAll(async () => {
  guestElf = (await buildGuest()).elf;
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const APIC_LVTT = 0x320;
const APIC_TMICT = 0x380;
const APIC_TDCR = 0x3e0;
const TIMER_COUNT = 50_000_000;
const DIRTY_BASE = 0x0200_0000n;

/**
 * Thread `t`: arm its LAPIC timer (periodic, divide by 1, vector 0x40; with IF clear the interrupt
 * stays pending in IRR), then forever: publish marker 7, busy-wait 200k TSC cycles (RAX/RDX hold
 * the TSC, so the registers never come back to an earlier state), dirty 16 pages of its own.
 */
function thread(t: number): Op[] {
  return [
    { op: 'apicWrite', reg: APIC_TDCR, value: 0xbn },
    { op: 'apicWrite', reg: APIC_LVTT, value: 0x2_0040n },
    { op: 'apicWrite', reg: APIC_TMICT, value: BigInt(TIMER_COUNT) },
    { op: 'loopBegin', count: 0 },
    { op: 'mark', value: 7n },
    { op: 'delayTsc', cycles: 200_000n },
    { op: 'dirtyPages', base: DIRTY_BASE + BigInt(t) * 0x1_0000n, pages: 16, stride: 4096 },
    { op: 'loopEnd' },
  ];
}

function program(threads: number): Program {
  return { threads: Array.from({ length: threads }, (_, t) => thread(t)), canary: DEFAULT_CANARY };
}

/** Wait until every thread has armed its timer and is in its loop. */
async function allLooping(h: VmHandle, threads: number): Promise<void> {
  for (let t = 0; t < threads; t++) await h.untilMarker(t, 7n);
}

function expectSame(a: VmState, b: VmState, names: [string, string]): void {
  const diff = diffVmState(a, b);
  expect(diff, `${names[0]} and ${names[1]} differ:\n${formatVmStateDiff(diff, names)}`).toEqual([]);
}

/** What every capture of these guests must hold, so that an empty diff is not an empty capture. */
function expectNonTrivial(s: VmState, cfg: MachineConfig, threads: number): void {
  for (let c = 0; c < cfg.cpus; c++) {
    expect(s.items.filter((i) => i.section === `cpu${c}.registers`).length, `cpu${c} registers`).toBeGreaterThan(40);
    expect(valueOf(s.items, `cpu${c}.lapic`, 'SPIV'), `cpu${c} SPIV`).toMatch(/^0x/);
  }
  for (let t = 0; t < threads; t++) {
    expect(valueOf(s.items, `cpu${t}.registers`, 'CPL')).toBe('3');
    expect(valueOf(s.items, `cpu${t}.lapic`, 'LVTT')).toBe('0x00020040');
    expect(valueOf(s.items, `cpu${t}.lapic`, 'Timer.initial_count')).toBe(String(TIMER_COUNT));
  }
  expect(s.items.some((i) => i.section.startsWith('ioapic['))).toBe(true);
  expect(s.items.some((i) => i.section.startsWith('pic.text') || i.key.startsWith('line '))).toBe(false);
}

describe('the state of a stopped VM on real KVM', () => {
  it('(a) two captures of one stopped VM are equal, half a second apart, the LAPIC timer running', async () => {
    const cfg = defaultMachineConfig({ cpus: 2 });
    await withVms(
      { vm: { config: cfg, program: program(2) } },
      async ({ vm }) => {
        await allLooping(vm, 2);
        await sleep(150); // the 50 ms periodic timer has fired: its vector waits in IRR
        await vm.stop();
        const first = await captureVmState(vm.vm.qmp, 2);
        expectNonTrivial(first, cfg, 2);
        expect(valueOf(first.items, 'cpu0.lapic', 'IRR')).toBe('64');
        await sleep(500);
        const second = await captureVmState(vm.vm.qmp, 2);
        expectSame(first, second, ['first', 'second']);
        // The running VM is refused, not captured.
        await vm.cont();
        await expect(captureVmState(vm.vm.qmp, 2)).rejects.toThrow(/running/);
      },
      { guestElf },
    );
  });

  const cases: { name: string; cfg: MachineConfig; threads: number }[] = [
    { name: 'microvm, 1 vCPU', cfg: defaultMachineConfig({ cpus: 1 }), threads: 1 },
    { name: 'microvm, 2 vCPUs', cfg: defaultMachineConfig({ cpus: 2 }), threads: 2 },
    { name: 'microvm, kernel-irqchip=on, 2 vCPUs', cfg: defaultMachineConfig({ cpus: 2, kernelIrqchip: 'on' }), threads: 2 },
    { name: 'pc, kernel-irqchip=on, 2 vCPUs (one never started)', cfg: defaultMachineConfig({ cpus: 2, machine: 'pc', kernelIrqchip: 'on' }), threads: 1 },
  ];
  it.each(cases)('(b) after a migration left paused, source and destination hold the same state: $name', async ({ cfg, threads }) => {
    await withVms(
      { src: { config: cfg, program: program(threads) }, dst: { config: cfg, incoming: 'defer' } },
      async ({ src, dst }) => {
        await allLooping(src, threads);
        await sleep(100);
        const info = await src.migrateTo(dst, { resume: false });
        expect(info.status).toBe('completed');
        expect([await src.status(), await dst.status()]).toEqual(['postmigrate', 'paused']);
        const [s, d] = [await captureVmState(src.vm.qmp, cfg.cpus), await captureVmState(dst.vm.qmp, cfg.cpus)];
        expectNonTrivial(s, cfg, threads);
        expectSame(s, d, ['source', 'destination']);
      },
      { guestElf },
    );
  });

  it('(c) is not blind: once the destination has run on and stopped again, the registers differ and are named', async () => {
    const cfg = defaultMachineConfig({ cpus: 1 });
    await withVms(
      { src: { config: cfg, program: program(1) }, dst: { config: cfg, incoming: 'defer' } },
      async ({ src, dst }) => {
        await allLooping(src, 1);
        await src.migrateTo(dst, { resume: false });
        const s = await captureVmState(src.vm.qmp, 1);
        expectSame(s, await captureVmState(dst.vm.qmp, 1), ['source', 'destination']);
        const opsAtMigration = (await dst.snapshot()).threads[0]!.ops_done!;
        // Run on a little and stop. The thread spends nearly all its time in a TSC busy-wait, so
        // the registers cannot repeat; should it stop where they happen to, it runs on once more.
        let diff: ReturnType<typeof diffVmState> = [];
        for (let attempt = 0; attempt < 3 && !diff.length; attempt++) {
          await dst.cont();
          const ops = (await dst.snapshot()).threads[0]!.ops_done!;
          await dst.untilThread(0, (t) => t.ops_done! > ops + 30n);
          await dst.stop();
          diff = diffVmState(s, await captureVmState(dst.vm.qmp, 1));
        }
        expect((await dst.snapshot()).threads[0]!.ops_done).toBeGreaterThan(opsAtMigration);
        expect(diff.length, 'no difference after the destination ran on').toBeGreaterThan(0);
        const named = diff.map((d) => `${d.section} ${d.key}`);
        expect(named.some((n) => n.startsWith('cpu0.registers ')), formatVmStateDiff(diff, ['source', 'destination'])).toBe(true);
        for (const d of diff) expect(d.a !== null && d.b !== null && d.a !== d.b, `${d.section} ${d.key}`).toBe(true);
        // The source did not move.
        expectSame(s, await captureVmState(src.vm.qmp, 1), ['source before', 'source after']);
      },
      { guestElf },
    );
  });
});
