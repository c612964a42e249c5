import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { DeviceMap, Region } from '../ir/deviceMap.js';
import { STRING_GUARD_BYTES, stringBufferBytes } from '../ir/ops.js';
import { DEFAULT_CANARY } from '../ir/program.js';
import { deviceMapFromMtree } from '../harness/mtree.js';
import {
  QEMU_DEVICE_READS,
  VOLATILE_REGIONS,
  classifyByte,
  firstMaskedMismatch,
  predictRead,
  type DeviceRead,
  type DeviceReadSwitches,
} from './deviceReads.js';

const region = (start: bigint, end: bigint, name: string, kind = 'i/o'): Region => ({ start, end, name, kind, priority: 0, kvmSlot: false });

const MAP: DeviceMap = {
  io: [region(0x20n, 0x21n, 'pic'), region(0x40n, 0x43n, 'pit'), region(0x60n, 0x60n, 'kbd')],
  memory: [
    region(0x0n, 0x9ffffn, 'pc.ram', 'ram'),
    region(0xc0000n, 0xdffffn, 'pc.rom', 'rom'),
    region(0xfec00000n, 0xfec00fffn, 'ioapic'),
    region(0xfed00000n, 0xfed003ffn, 'hpet'),
  ],
};
const MICROVM = deviceMapFromMtree(readFileSync(join(import.meta.dirname, '..', 'harness', 'fixtures', 'mtree-microvm.txt'), 'utf8'));

const CANARY = DEFAULT_CANARY;
/** The canary's bytes, little-endian: b4 e8 7d 5a e1 96 a5 c3. */
const C = Array.from({ length: 8 }, (_, i) => Number((CANARY >> BigInt(8 * i)) & 0xffn));
const ctx = (map: DeviceMap = MAP) => ({ map, canary: CANARY, guardBytes: STRING_GUARD_BYTES });
const predict = (read: DeviceRead, map: DeviceMap = MAP, sw?: DeviceReadSwitches) => predictRead(read, ctx(map), sw);
const arr = (b: Uint8Array | undefined) => Array.from(b ?? []);

describe('predictRead: IN', () => {
  it('reads all-ones from an unclaimed port and keeps the canary above width 1 and 2', () => {
    const p1 = predict({ op: 'pioIn', port: 0x300, width: 1 });
    expect(arr(p1.rax?.value)).toEqual([0xff, ...C.slice(1)]);
    expect(arr(p1.rax?.mask)).toEqual(Array(8).fill(0xff));
    const p2 = predict({ op: 'pioIn', port: 0x300, width: 2 });
    expect(arr(p2.rax?.value)).toEqual([0xff, 0xff, ...C.slice(2)]);
    expect(arr(p2.rax?.mask)).toEqual(Array(8).fill(0xff));
    expect(p2.dataOffsets).toEqual([0, 1]);
    expect(p2.regions).toEqual(['(unclaimed)']);
    expect(p2.fault).toBeNull();
  });

  it('zero-extends a 4-byte IN', () => {
    const p = predict({ op: 'pioIn', port: 0x300, width: 4 });
    expect(arr(p.rax?.value)).toEqual([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    expect(arr(p.rax?.mask)).toEqual(Array(8).fill(0xff));
    expect(p.stableBytes).toEqual([true, true, true, true]);
  });

  it('asserts no data byte of a claimed port, only the bytes above the width', () => {
    const p = predict({ op: 'pioIn', port: 0x20, width: 1 });
    expect(arr(p.rax?.mask)).toEqual([0, ...Array(7).fill(0xff)]);
    expect(arr(p.rax?.value).slice(1)).toEqual(C.slice(1));
    expect(p.regions).toEqual(['pic']);
    const p4 = predict({ op: 'pioIn', port: 0x20, width: 4 });
    expect(arr(p4.rax?.mask)).toEqual([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    expect(arr(p4.rax?.value).slice(4)).toEqual([0, 0, 0, 0]);
  });

  it('treats any IN from the VMware backdoor as a 32-bit one: EAX the device reply, RAX[63:32] zero', () => {
    const map: DeviceMap = { ...MAP, io: [...MAP.io, region(0x5658n, 0x5658n, 'vmport')] };
    for (const width of [1, 2, 4]) {
      const p = predict({ op: 'pioIn', port: 0x5658, width }, map);
      expect(arr(p.rax?.mask)).toEqual([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
      expect(arr(p.rax?.value).slice(4)).toEqual([0, 0, 0, 0]);
      expect(p.dataOffsets).toEqual([0, 1, 2, 3]);
      expect(p.stableBytes).toHaveLength(4);
    }
    // An access that only reaches into the port is answered the same way (the device rewrites EAX).
    expect(arr(predict({ op: 'pioIn', port: 0x5657, width: 2 }, map).rax?.mask)).toEqual([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    expect(arr(predict({ op: 'pioIn', port: 0x5656, width: 2 }, map).rax?.mask)).toEqual([0xff, 0xff, ...Array(6).fill(0xff)]);
  });

  it('leaves an access that touches a device and unclaimed space to the device (microvm 0x4d1: elcr, then nothing)', () => {
    const p = predict({ op: 'pioIn', port: 0x4d1, width: 2 }, MICROVM);
    expect(arr(p.rax?.mask)).toEqual([0, 0, ...Array(6).fill(0xff)]);
    expect(p.regions).toEqual(['elcr', '(unclaimed)']);
    // The same at an unclaimed port one further is all-ones.
    expect(arr(predict({ op: 'pioIn', port: 0x4d2, width: 2 }, MICROVM).rax?.value).slice(0, 2)).toEqual([0xff, 0xff]);
  });
});

describe('predictRead: MOV from MMIO', () => {
  const unclaimed = 0x1_0000_0000n;

  it('reads zeros from unclaimed memory at every width', () => {
    expect(arr(predict({ op: 'mmioRead', addr: unclaimed, width: 1 }).rax?.value)).toEqual([0, ...C.slice(1)]);
    expect(arr(predict({ op: 'mmioRead', addr: unclaimed, width: 2 }).rax?.value)).toEqual([0, 0, ...C.slice(2)]);
    expect(arr(predict({ op: 'mmioRead', addr: unclaimed, width: 4 }).rax?.value)).toEqual(Array(8).fill(0));
    const p8 = predict({ op: 'mmioRead', addr: unclaimed, width: 8 });
    expect(arr(p8.rax?.value)).toEqual(Array(8).fill(0));
    expect(arr(p8.rax?.mask)).toEqual(Array(8).fill(0xff));
    expect(p8.dataOffsets).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('asserts nothing about an 8-byte read of a device', () => {
    const p = predict({ op: 'mmioRead', addr: 0xfec00000n, width: 8 });
    expect(arr(p.rax?.mask)).toEqual(Array(8).fill(0));
    expect(p.regions).toEqual(['ioapic']);
  });

  it('asserts no data byte of a read straddling a region edge', () => {
    const p = predict({ op: 'mmioRead', addr: 0xfed003fen, width: 4 });
    expect(arr(p.rax?.mask)).toEqual([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    expect(p.regions).toEqual(['hpet', '(unclaimed)']);
  });

  it('reads zeros above microvm RAM', () => {
    expect(arr(predict({ op: 'mmioRead', addr: 0x400_0000n, width: 4 }, MICROVM).rax?.value)).toEqual(Array(8).fill(0));
  });
});

describe('predictRead: string reads', () => {
  it('REP INSW from an unclaimed port: all-ones data between canary guards', () => {
    const p = predict({ op: 'pioIns', port: 0x300, width: 2, count: 3 });
    const total = stringBufferBytes(2, 3);
    expect(p.buffer?.value.length).toBe(total);
    const value = arr(p.buffer?.value);
    for (let i = 0; i < total; i++) {
      const inData = i >= STRING_GUARD_BYTES && i < STRING_GUARD_BYTES + 6;
      expect(value[i], `byte ${i}`).toBe(inData ? 0xff : C[i & 7]);
    }
    expect(arr(p.buffer?.mask)).toEqual(Array(total).fill(0xff));
    expect(p.rcx).toBe(0n);
    expect(p.rdiDelta).toBe(6n);
    expect(p.rsiDelta).toBeUndefined();
    expect(p.dataOffsets).toEqual([16, 17, 18, 19, 20, 21]);
    expect(p.rax).toBeUndefined();
  });

  it('REP INSB from a device leaves the data unasserted but the guards asserted', () => {
    const p = predict({ op: 'pioIns', port: 0x60, width: 1, count: 4 });
    const mask = arr(p.buffer?.mask);
    expect(mask.slice(STRING_GUARD_BYTES, STRING_GUARD_BYTES + 4)).toEqual([0, 0, 0, 0]);
    expect(mask.filter((m) => m === 0xff)).toHaveLength(mask.length - 4);
    expect(p.regions).toEqual(['kbd']);
  });

  it('REP MOVSW walks from unclaimed memory into a region, element by element', () => {
    const p = predict({ op: 'mmioMovs', addr: 0xfecffffcn, width: 2, count: 4 });
    const data = (b: Uint8Array | undefined) => arr(b).slice(STRING_GUARD_BYTES, STRING_GUARD_BYTES + 8);
    expect(data(p.buffer?.mask)).toEqual([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    expect(data(p.buffer?.value).slice(0, 4)).toEqual([0, 0, 0, 0]);
    expect(p.stableBytes).toEqual([true, true, true, true, false, false, false, false]);
    expect(p.rcx).toBe(0n);
    expect(p.rsiDelta).toBe(8n);
    expect(p.rdiDelta).toBe(8n);
    expect(p.regions).toEqual(['(unclaimed)', 'hpet']);
  });

  it('an element straddling the edge is the device’s to answer', () => {
    const p = predict({ op: 'mmioMovs', addr: 0xfecffffen, width: 4, count: 2 });
    expect(arr(p.buffer?.mask).slice(STRING_GUARD_BYTES, STRING_GUARD_BYTES + 8)).toEqual(Array(8).fill(0));
  });

  it('uses the given buffer size when there is one', () => {
    const p = predictRead({ op: 'pioIns', port: 0x300, width: 1, count: 1 }, { ...ctx(), bufferBytes: 64 });
    expect(p.buffer?.value.length).toBe(64);
    expect(arr(p.buffer?.value).slice(56)).toEqual(C);
  });
});

describe('stableBytes', () => {
  const stable = (read: DeviceRead, map: DeviceMap = MAP) => predict(read, map).stableBytes;

  it('is false for volatile regions', () => {
    expect('pit' in VOLATILE_REGIONS).toBe(true);
    expect(stable({ op: 'pioIn', port: 0x40, width: 2 })).toEqual([false, false]);
    expect(stable({ op: 'mmioRead', addr: 0xfed000f0n, width: 8 })).toEqual(Array(8).fill(false)); // hpet
    expect(stable({ op: 'pioIn', port: 0x3f8, width: 1 }, MICROVM)).toEqual([false]); // serial
    expect(stable({ op: 'pioIn', port: 0x20, width: 1 })).toEqual([false]); // pic: the IRR follows the PIT
  });

  it('is false for RAM and true for ROM', () => {
    expect(stable({ op: 'mmioRead', addr: 0x1000n, width: 4 })).toEqual(Array(4).fill(false));
    expect(stable({ op: 'mmioRead', addr: 0x1000n, width: 4 }, MICROVM)).toEqual(Array(4).fill(false)); // microvm.ram
    expect(stable({ op: 'mmioRead', addr: 0xc0000n, width: 4 })).toEqual(Array(4).fill(true));
  });

  it('is true for unclaimed space and other devices', () => {
    expect(stable({ op: 'pioIn', port: 0x300, width: 4 })).toEqual(Array(4).fill(true));
    expect(stable({ op: 'pioIn', port: 0x60, width: 1 })).toEqual([true]); // kbd
    expect(stable({ op: 'mmioRead', addr: 0xfec00000n, width: 4 })).toEqual(Array(4).fill(true));
    expect(stable({ op: 'pioIn', port: 0x4d0, width: 1 }, MICROVM)).toEqual([true]); // elcr
  });

  it('classifyByte says which kind of byte it is', () => {
    expect(classifyByte('pio', MAP, 0x41n, QEMU_DEVICE_READS)).toMatchObject({ kind: 'device', stable: false });
    expect(classifyByte('mmio', MAP, 0xc1234n, QEMU_DEVICE_READS)).toMatchObject({ kind: 'memory', stable: true });
    expect(classifyByte('mmio', MAP, 0x1234n, QEMU_DEVICE_READS)).toMatchObject({ kind: 'memory', stable: false });
    expect(classifyByte('mmio', MAP, 0xa0000n, QEMU_DEVICE_READS)).toEqual({ kind: 'unclaimed', value: 0 });
    expect(classifyByte('pio', MAP, 0xa0n, QEMU_DEVICE_READS)).toEqual({ kind: 'unclaimed', value: 0xff });
  });
});

describe('switches', () => {
  it('QEMU: ones for ports, zeros for memory', () => {
    expect(QEMU_DEVICE_READS).toEqual({ unclaimedMmio: 'zeros', unclaimedPio: 'ones' });
  });

  it("a 'ones' MMIO switch predicts all-ones for unclaimed memory", () => {
    const p = predict({ op: 'mmioRead', addr: 0x1_0000_0000n, width: 4 }, MAP, { unclaimedMmio: 'ones', unclaimedPio: 'ones' });
    expect(arr(p.rax?.value)).toEqual([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    const s = predict({ op: 'mmioMovs', addr: 0x1_0000_0000n, width: 1, count: 2 }, MAP, { unclaimedMmio: 'ones', unclaimedPio: 'ones' });
    expect(arr(s.buffer?.value).slice(STRING_GUARD_BYTES, STRING_GUARD_BYTES + 2)).toEqual([0xff, 0xff]);
  });

  it("a 'zeros' port switch predicts zeros for unclaimed ports", () => {
    const p = predict({ op: 'pioIn', port: 0x300, width: 1 }, MAP, { unclaimedMmio: 'zeros', unclaimedPio: 'zeros' });
    expect(arr(p.rax?.value)).toEqual([0, ...C.slice(1)]);
  });
});

describe('firstMaskedMismatch', () => {
  const expected = { value: Uint8Array.from([1, 2, 3]), mask: Uint8Array.from([0xff, 0x0f, 0xff]) };

  it('compares only the masked bits', () => {
    expect(firstMaskedMismatch(Uint8Array.from([1, 2, 3]), expected)).toBe(-1);
    expect(firstMaskedMismatch(Uint8Array.from([1, 0xf2, 3]), expected)).toBe(-1);
    expect(firstMaskedMismatch(Uint8Array.from([1, 0x03, 3]), expected)).toBe(1);
    expect(firstMaskedMismatch(Uint8Array.from([0, 0x03, 4]), expected)).toBe(0);
  });

  it('reads missing observed bytes as zero', () => {
    expect(firstMaskedMismatch(Uint8Array.from([1]), expected)).toBe(1);
    expect(firstMaskedMismatch(Uint8Array.from([1]), { value: Uint8Array.from([1, 0]), mask: Uint8Array.from([0xff, 0xff]) })).toBe(-1);
  });

  it('finds the first bad data byte of a predicted read', () => {
    const p = predict({ op: 'pioIn', port: 0x300, width: 2 });
    const observed = Uint8Array.from(p.rax!.value);
    expect(firstMaskedMismatch(observed, p.rax!)).toBe(-1);
    observed[1] = 0x00;
    expect(firstMaskedMismatch(observed, p.rax!)).toBe(1);
  });
});
