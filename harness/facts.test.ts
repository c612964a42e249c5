/**
 * Host facts from QEMU itself: the device map after firmware set-up, and QEMU's expansion of the
 * CPU model (with the model's own +feat/-feat/key=value properties passed through).
 */
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { regionAt } from '../ir/deviceMap.js';
import { parseCpuModel, probeMachineFacts } from './facts.js';
import { buildGuest } from './guest/build.js';
import { liveResources } from './runtime.js';
import { defaultMachineConfig } from './vm.js';

let guestElf: string;
let before: { pids: Set<number>; dirs: Set<string> };

beforeAll(async () => {
  guestElf = (await buildGuest()).elf;
});

beforeEach(() => {
  const live = liveResources();
  before = { pids: new Set(live.pids), dirs: new Set(live.dirs) };
});

afterEach(() => {
  const live = liveResources();
  expect(live.pids.filter((p) => !before.pids.has(p)), 'QEMU pids left tracked').toEqual([]);
  // The process run root may appear (created on first use); VM directories must not stay.
  expect(live.dirs.filter((d) => !before.dirs.has(d) && !/\/kvmprop-run-[^/]+$/.test(d)), 'VM dirs left').toEqual([]);
});

describe('probeMachineFacts (real QEMU, microvm)', () => {
  it('reads the device map and the expanded host CPU model', async () => {
    const facts = await probeMachineFacts(defaultMachineConfig({ machine: 'microvm' }), guestElf);

    const serial = facts.deviceMap.io.find((r) => r.name === 'serial');
    expect(serial).toMatchObject({ start: 0x3f8n, end: 0x3ffn, kind: 'i/o' });
    expect(regionAt(facts.deviceMap.io, 0x3fdn)?.name).toBe('serial');
    expect(facts.deviceMap.io.find((r) => r.name === 'isa-debug-exit')).toMatchObject({ start: 0xf4n });
    const msi = facts.deviceMap.memory.find((r) => r.name === 'kvm-apic-msi');
    expect(msi).toMatchObject({ start: 0xfee00000n, kind: 'i/o', kvmSlot: false });
    expect(regionAt(facts.deviceMap.memory, 0x100000n)).toMatchObject({ kind: 'ram', kvmSlot: true });
    expect(facts.mtreeText).toContain('FlatView');

    expect(facts.cpu.name).toBe('host');
    expect(facts.cpu.props.vendor).toEqual(expect.any(String));
    expect(facts.cpu.props.vendor as string).toHaveLength(12);
    expect(facts.cpu.props.level).toEqual(expect.any(Number));
    expect(facts.qemuVersion).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('passes the CPU model’s own properties to the expansion', async () => {
    // On top of the model this host boots (host, or host minus what it refuses: harness/vcpuModel.ts).
    const base = defaultMachineConfig().cpuModel;
    const facts = await probeMachineFacts(defaultMachineConfig({ cpuModel: `${base},+x2apic,level=13,model-id=kvmprop test` }), guestElf);

    expect(facts.cpu.props).toMatchObject({ x2apic: true, level: 13, 'model-id': 'kvmprop test' });
  });
});

describe('parseCpuModel', () => {
  it('splits a -cpu argument into the model and typed properties', () => {
    expect(parseCpuModel('host,-sse4.2,+x2apic,level=13,model-id=x')).toEqual({
      name: 'host',
      props: { 'sse4.2': false, x2apic: true, level: 13, 'model-id': 'x' },
    });
  });

  it('reads on/off, bare flags and a bare model', () => {
    expect(parseCpuModel('max,pmu=off,x2apic=on,avx')).toEqual({ name: 'max', props: { pmu: false, x2apic: true, avx: true } });
    expect(parseCpuModel('host')).toEqual({ name: 'host', props: {} });
  });
});
