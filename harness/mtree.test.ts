import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { deviceMapFromMtree, gaps, parseFlatViews, regionAt, regionsTouched, MtreeParseError } from './mtree.js';

const fixture = (m: string) => readFileSync(join(import.meta.dirname, 'fixtures', `mtree-${m}.txt`), 'utf8');

describe('info mtree -f parsing (real QEMU 7.2 output)', () => {
  it('finds the memory and I/O views of microvm and drops the I/O root pieces', () => {
    const map = deviceMapFromMtree(fixture('microvm'));
    expect(map.io.map((r) => r.name)).toEqual([
      'pic', 'pit', 'kvmvapic', 'pic', 'isa-debug-exit', 'serial', 'elcr', 'elcr', 'fwcfg', 'fwcfg.dma',
    ]);
    const serial = map.io.find((r) => r.name === 'serial')!;
    expect([serial.start, serial.end]).toEqual([0x3f8n, 0x3ffn]);
    const ram = map.memory.filter((r) => r.name === 'microvm.ram');
    expect(ram).toHaveLength(2);
    expect(ram[1]).toMatchObject({ start: 0x100000n, end: 0x3ffffffn, kind: 'ram', offset: 0x100000n, kvmSlot: true });
    expect(map.memory.find((r) => r.name === 'kvm-apic-msi')).toMatchObject({ start: 0xfee00000n, priority: 4096, kind: 'i/o', kvmSlot: false });
  });

  it('parses pc and q35, and a pc-dimm above 4 GiB', () => {
    for (const m of ['pc', 'q35']) {
      const map = deviceMapFromMtree(fixture(m));
      expect(map.memory.some((r) => r.name === 'pc.bios')).toBe(true);
      expect(map.io.length).toBeGreaterThan(5);
    }
    const dimm = deviceMapFromMtree(fixture('pc-dimm')).memory.find((r) => r.name === 'leak');
    expect(dimm).toMatchObject({ start: 0x100000000n, end: 0x1001fffffn, kind: 'ram' });
  });

  it('keeps regions sorted and disjoint', () => {
    for (const m of ['microvm', 'pc', 'q35', 'pc-dimm']) {
      const { memory, io } = deviceMapFromMtree(fixture(m));
      for (const rs of [memory, io]) {
        for (let i = 1; i < rs.length; i++) expect(rs[i]!.start > rs[i - 1]!.end).toBe(true);
      }
    }
  });

  it('lists every address space of a shared view', () => {
    const views = parseFlatViews(fixture('microvm'));
    const mem = views.find((v) => v.addressSpaces.includes('memory'))!;
    expect(mem.addressSpaces).toContain('cpu-memory-1');
    expect(mem.root).toBe('system');
  });

  it('rejects a region line it cannot read rather than guessing', () => {
    const bad = 'FlatView #0\n AS "memory", root: system\n Root memory region: system\n  0000-zzzz (prio 0, ram): x\n';
    expect(() => parseFlatViews(bad)).toThrow(MtreeParseError);
    expect(() => deviceMapFromMtree('FlatView #0\n AS "memory", root: system\n')).toThrow(/I\/O/);
  });
});

describe('region queries', () => {
  const { io, memory } = deviceMapFromMtree(fixture('microvm'));
  it('regionAt finds the claiming region or nothing', () => {
    expect(regionAt(io, 0x3fan)?.name).toBe('serial');
    expect(regionAt(io, 0x1234n)).toBeUndefined();
    expect(regionAt(memory, 0xfee00030n)?.name).toBe('kvm-apic-msi');
  });
  it('gaps are the complement of the claimed regions', () => {
    const g = gaps(io, 0n, 0xffffn);
    expect(g[0]).toEqual({ start: 0n, end: 0x1fn });
    expect(g.at(-1)).toEqual({ start: 0x51cn, end: 0xffffn });
    const claimed = io.reduce((n, r) => n + (r.end - r.start + 1n), 0n);
    const free = g.reduce((n, r) => n + (r.end - r.start + 1n), 0n);
    expect(claimed + free).toBe(0x10000n);
  });
  it('regionsTouched follows an access across a boundary', () => {
    expect(regionsTouched(io, 0x3fen, 4).map((r) => r?.name)).toEqual(['serial', undefined]);
    expect(regionsTouched(io, 0x40n, 4).map((r) => r?.name)).toEqual(['pit']);
  });
});
