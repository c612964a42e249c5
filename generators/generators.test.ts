import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { encodeOps, threadRecordBytes } from '../harness/bytecode.js';
import { deviceMapFromMtree } from '../harness/mtree.js';
import { cpuidOps, cpuidWorkloadArb, expandQueries, queryCount, type CpuidRanges, type CpuidWorkload } from './cpuid.js';
import {
  MMIO_LIMIT,
  PORT_LIMIT,
  deviceReadOps,
  deviceReadWorkloadArb,
  readStats,
  sweepAddresses,
  sweepOps,
  type ReadSweep,
} from './deviceReads.js';

const isU32 = (n: number) => Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff;

describe('CPUID workloads', () => {
  const w: CpuidWorkload = {
    sweeps: [
      { leaf: 0xffff_fffe, leafCount: 3, subleaf: 0xffff_ffff, subleafCount: 2, cpl: 3 },
      { leaf: 7, leafCount: 1, subleaf: 0, subleafCount: 4, cpl: 0 },
    ],
    repeat: 2,
  };

  it('expands sweeps leaf-major, in order, wrapping at 2^32', () => {
    expect(expandQueries(w)).toEqual([
      { leaf: 0xffff_fffe, subleaf: 0xffff_ffff, cpl: 3 },
      { leaf: 0xffff_fffe, subleaf: 0, cpl: 3 },
      { leaf: 0xffff_ffff, subleaf: 0xffff_ffff, cpl: 3 },
      { leaf: 0xffff_ffff, subleaf: 0, cpl: 3 },
      { leaf: 0, subleaf: 0xffff_ffff, cpl: 3 },
      { leaf: 0, subleaf: 0, cpl: 3 },
      { leaf: 7, subleaf: 0, cpl: 0 },
      { leaf: 7, subleaf: 1, cpl: 0 },
      { leaf: 7, subleaf: 2, cpl: 0 },
      { leaf: 7, subleaf: 3, cpl: 0 },
    ]);
  });

  it('counts queries, repeats included', () => {
    expect(queryCount(w)).toBe(20);
    expect(queryCount({ ...w, repeat: 1 })).toBe(10);
    expect(queryCount({ sweeps: [], repeat: 3 })).toBe(0);
  });

  it('emits one cpuid op per query, and wraps them in a loop when repeated', () => {
    const once = cpuidOps({ ...w, repeat: 1 });
    expect(once).toHaveLength(10);
    expect(once[0]).toEqual({ op: 'cpuid', leaf: 0xffff_fffe, subleaf: 0xffff_ffff, cpl: 3 });
    expect(once.every((o) => o.op === 'cpuid')).toBe(true);
    const twice = cpuidOps(w);
    expect(twice[0]).toEqual({ op: 'loopBegin', count: 2 });
    expect(twice.at(-1)).toEqual({ op: 'loopEnd' });
    expect(twice.slice(1, -1)).toEqual(once);
    // One 48-byte record per query, repeats included.
    expect(threadRecordBytes(twice, 0)).toBe(queryCount(w) * 48);
  });

  const ranges: [string, CpuidRanges][] = [
    ['QEMU-like ranges', { maxBasic: 0xd, maxExtended: 0x8000_0008, maxHypervisor: 0x4000_0001 }],
    // Ranges at the top of the space: "max + 8" runs past 2^32 and must wrap.
    ['ranges at the top of the space', { maxBasic: 0x3fff_ffff, maxExtended: 0xffff_ffff, maxHypervisor: 0x4fff_ffff }],
  ];
  for (const [name, r] of ranges) {
    test.prop([cpuidWorkloadArb(r, { maxSweeps: 8 })], { numRuns: 100 })(`generates u32 leaves and subleaves that always encode: ${name}`, (wl) => {
      expect(expandQueries(wl).filter((q) => !isU32(q.leaf) || !isU32(q.subleaf))).toEqual([]);
      const ops = cpuidOps(wl);
      expect(() => encodeOps(ops)).not.toThrow();
      expect(ops.filter((o) => o.op === 'cpuid')).toHaveLength(queryCount(wl) / wl.repeat);
    });
  }
});

describe('device-read sweeps', () => {
  const sweep = (over: Partial<ReadSweep>): ReadSweep => ({
    space: 'mmio',
    form: 'reg',
    windowStart: 0x1000n,
    windowSize: 16,
    offset: 0,
    width: 1,
    count: 1,
    stride: 1,
    repCount: 1,
    ...over,
  });

  it('stays inside its window, wrapping around it', () => {
    expect(sweepAddresses(sweep({ offset: 14, width: 4, count: 4, stride: 1 }))).toEqual([0x100en, 0x100fn, 0x1000n, 0x1001n]);
    expect(sweepAddresses(sweep({ offset: 3, count: 5, stride: 16 }))).toEqual(Array(5).fill(0x1003n));
    const addrs = sweepAddresses(sweep({ windowSize: 100, offset: 37, count: 500, stride: 7 }));
    expect(addrs).toHaveLength(500);
    for (const a of addrs) expect(a >= 0x1000n && a < 0x1000n + 100n).toBe(true);
  });

  it('treats an empty window as one address', () => {
    expect(sweepAddresses(sweep({ windowSize: 0, offset: 0, count: 3, stride: 5 }))).toEqual([0x1000n, 0x1000n, 0x1000n]);
  });

  it('drops accesses that would run past the end of the port space', () => {
    const reg = sweep({ space: 'pio', windowStart: 0xfff0n, windowSize: 16, width: 4, count: 4, stride: 4 });
    expect(sweepAddresses(reg)).toEqual([0xfff0n, 0xfff4n, 0xfff8n, 0xfffcn]);
    expect(sweepAddresses({ ...reg, offset: 1 })).toEqual([0xfff1n, 0xfff5n, 0xfff9n]);
    // A REP INSD of 2 elements spans 8 bytes.
    expect(sweepAddresses({ ...reg, form: 'string', repCount: 2 })).toEqual([0xfff0n, 0xfff4n, 0xfff8n]);
  });

  it('drops accesses that would run past MMIO_LIMIT', () => {
    const s = sweep({ windowStart: MMIO_LIMIT - 8n, windowSize: 16, width: 8, count: 16, stride: 1 });
    expect(sweepAddresses(s)).toEqual([MMIO_LIMIT - 8n]);
    expect(sweepAddresses({ ...s, width: 1 })).toEqual(Array.from({ length: 8 }, (_, i) => MMIO_LIMIT - 8n + BigInt(i)));
  });

  it('maps sweeps to ops, with port width 8 read as 4', () => {
    expect(sweepOps(sweep({ space: 'pio', windowStart: 0x60n, width: 8, count: 1 }))).toEqual([{ op: 'pioIn', port: 0x60, width: 4 }]);
    expect(sweepOps(sweep({ space: 'pio', form: 'string', windowStart: 0x60n, width: 8, repCount: 3 }))).toEqual([
      { op: 'pioIns', port: 0x60, width: 4, count: 3 },
    ]);
    expect(sweepOps(sweep({ width: 8 }))).toEqual([{ op: 'mmioRead', addr: 0x1000n, width: 8 }]);
    expect(sweepOps(sweep({ form: 'string', width: 2, repCount: 5, count: 2, stride: 2 }))).toEqual([
      { op: 'mmioMovs', addr: 0x1000n, width: 2, count: 5 },
      { op: 'mmioMovs', addr: 0x1002n, width: 2, count: 5 },
    ]);
  });

  it('counts reads and the bytes they read', () => {
    const w = {
      sweeps: [
        sweep({ space: 'pio', windowStart: 0x60n, width: 2, count: 3 }),
        sweep({ form: 'string', width: 4, repCount: 5, count: 2 }),
        sweep({ space: 'pio', windowStart: 0x60n, width: 8, count: 1 }),
      ],
    };
    expect(deviceReadOps(w)).toHaveLength(6);
    expect(readStats(w)).toEqual({ reads: 6, bytes: 3 * 2 + 2 * 20 + 4 });
    expect(readStats({ sweeps: [] })).toEqual({ reads: 0, bytes: 0 });
  });
});

describe('device-read workloads on microvm', () => {
  const map = deviceMapFromMtree(readFileSync(join(import.meta.dirname, '..', 'harness', 'fixtures', 'mtree-microvm.txt'), 'utf8'));

  test.prop([deviceReadWorkloadArb(map, { maxSweeps: 8, maxCount: 64 })], { numRuns: 300 })(
    'generate ops that encode, with ports and addresses inside their spaces',
    (w) => {
      for (const s of w.sweeps) expect(s.windowStart < (s.space === 'pio' ? PORT_LIMIT : MMIO_LIMIT)).toBe(true);
      const ops = deviceReadOps(w);
      expect(() => encodeOps(ops)).not.toThrow();
      const outside = ops.filter((o) => {
        switch (o.op) {
          case 'pioIn':
          case 'pioIns':
            return o.port + o.width > 0x10000 || ![1, 2, 4].includes(o.width);
          case 'mmioRead':
            return o.addr + BigInt(o.width) > MMIO_LIMIT;
          case 'mmioMovs':
            return o.addr + BigInt(o.width * o.count) > MMIO_LIMIT;
          default:
            return true; // not a read
        }
      });
      expect(outside).toEqual([]);
    },
  );

  it('reach both spaces, both forms, and every width', () => {
    const sweeps = fc.sample(deviceReadWorkloadArb(map, { maxSweeps: 8, maxCount: 4 }), { numRuns: 200, seed: 1 }).flatMap((w) => w.sweeps);
    const kinds = new Set(sweeps.map((s) => `${s.space}/${s.form}`));
    expect([...kinds].sort()).toEqual(['mmio/reg', 'mmio/string', 'pio/reg', 'pio/string']);
    expect([...new Set(sweeps.filter((s) => s.space === 'mmio').map((s) => s.width))].sort()).toEqual([1, 2, 4, 8]);
    expect([...new Set(sweeps.filter((s) => s.space === 'pio').map((s) => s.width))].sort()).toEqual([1, 2, 4]);
  });
});
