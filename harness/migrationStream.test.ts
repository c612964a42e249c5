/**
 * The migration stream reader (harness/migrationStream.ts) on real streams of our guest
 * (harness/fixtures/migration-stream-*.bin.gz, scripts/capture-migration-stream-fixture.ts): a
 * 2-vCPU microvm saved live into a file by its source, and the destination that loaded it saved
 * again before it resumed.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { STREAM_EXCLUSIONS } from '../suites/migration/streamExclusions.js';
import { compareDeviceState, layoutVmsd, parseMigrationStream, sectionBytes, StreamFormatError, type MigrationStream } from './migrationStream.js';

const fixture = (name: string) => gunzipSync(readFileSync(join(import.meta.dirname, 'fixtures', `migration-stream-${name}.bin.gz`)));
const source = fixture('source');
const destination = fixture('destination');
const ps = parseMigrationStream(source);
const pd = parseMigrationStream(destination);
const keys = (p: MigrationStream) => p.devices.map((d) => `${d.section.idstr}/${d.section.instanceId}`);

describe('the migration stream reader, on a real stream', () => {
  it('reads the header, the configuration and every section up to EOF and the VMDESCRIPTION', () => {
    expect(ps.version).toBe(3);
    expect(ps.machine).toBe('microvm');
    expect(ps.vmdesc?.page_size).toBe(4096);
    // RAM: one START, PARTs while it iterated, one END at completion; the device sections after.
    const ram = ps.sections.filter((s) => s.idstr === 'ram').map((s) => s.kind);
    expect(ram[0]).toBe('start');
    expect(ram.at(-1)).toBe('end');
    expect(ram.slice(1, -1).every((k) => k === 'part')).toBe(true);
    expect(ps.sections.findIndex((s) => s.kind === 'full')).toBeGreaterThan(ps.sections.findIndex((s) => s.kind === 'end'));
    expect(keys(ps)).toEqual(expect.arrayContaining(['timer/0', 'cpu/0', 'cpu/1', 'apic/0', 'apic/1', 'kvmclock/0', 'ioapic/0', 'i8254/0', 'globalstate/0']));
    expect(keys(pd)).toEqual(keys(ps));
    // EOF, then 0x06 and the JSON's be32 length, then the JSON to the end.
    expect(source[ps.eof]).toBe(0x00);
    expect(source[ps.eof + 1]).toBe(0x06);
    expect(source.readUInt32BE(ps.eof + 2)).toBe(source.length - ps.eof - 6);
  });

  it('walks the RAM records: the blocks MEM_SIZE names, every page of ram0 sent at least once', () => {
    expect(ps.ram.blocks[0]).toEqual({ idstr: 'ram0', bytes: 64 << 20 });
    expect(ps.ram.total).toBe(ps.ram.blocks.reduce((n, b) => n + b.bytes, 0));
    expect(ps.ram.sends.get('ram0')!.size).toBe((64 << 20) / 4096);
    // The 16 pages the loop dirties went more than once (the first pass, and again once dirtied).
    for (let p = 0; p < 16; p++) expect(ps.ram.sends.get('ram0')!.get(0x0200_0000 + p * 4096)!, `page ${p}`).toBeGreaterThan(1);
    expect(ps.ram.pages).toBeGreaterThan(16);
    expect(ps.ram.zeroPages).toBeGreaterThan(10_000);
  });

  it('lays every device section out from the VMDESCRIPTION exactly, leaf by leaf, to its footer', () => {
    for (const [bytes, p] of [[source, ps], [destination, pd]] as const) for (const d of p.devices) {
      const len = d.section.dataEnd - d.section.dataStart;
      expect(d.fields.length, d.section.idstr).toBeGreaterThan(0);
      let at = 0;
      for (const f of d.fields) {
        expect(f.offset, `${d.section.idstr} ${f.path}`).toBe(at);
        at += f.size;
      }
      expect(at, d.section.idstr).toBe(len);
      expect(bytes[d.section.dataEnd]).toBe(0x7e);
      expect(bytes.readUInt32BE(d.section.dataEnd + 1)).toBe(d.section.sectionId);
    }
    const cpu1 = pd.devices.find((d) => d.section.idstr === 'cpu' && d.section.instanceId === 1)!;
    expect(cpu1.fields.map((f) => f.path)).toEqual(expect.arrayContaining(['env.regs[0]', 'env.eip', 'env.segs[1].base', 'env.cr[3]']));
  });

  it('without the VMDESCRIPTION, finds the same sections by their footers', () => {
    const bare = Buffer.concat([source.subarray(0, ps.eof + 1)]);
    const p = parseMigrationStream(bare);
    expect(p.vmdesc).toBeNull();
    expect(p.devices.map((d) => [d.section.dataStart, d.section.dataEnd])).toEqual(ps.devices.map((d) => [d.section.dataStart, d.section.dataEnd]));
    expect(p.devices.every((d) => d.fields.length === 0)).toBe(true);
  });

  it('refuses what is not a whole stream, and says where', () => {
    expect(() => parseMigrationStream(Buffer.from('QEVX\0\0\0\x03'))).toThrow(/no 'QEVM' magic/);
    const cut = source.subarray(0, ps.devices[3]!.section.dataStart + 5);
    expect(() => parseMigrationStream(cut)).toThrow(StreamFormatError);
    const wrongFooter = Buffer.from(source);
    wrongFooter[ps.devices[0]!.section.dataEnd + 4]! ^= 0xff;
    expect(() => parseMigrationStream(wrongFooter)).toThrow(/does not end in its footer/);
  });
});

describe('comparing two streams’ device state', () => {
  it('the source and the destination saved before it resumed: globalstate allowed, and kvmclock’s clock differs', () => {
    const r = compareDeviceState(source, ps, destination, pd, STREAM_EXCLUSIONS);
    expect(r.compared).toEqual(keys(ps));
    expect(r.onlyIn).toEqual({ a: [], b: [] });
    expect(r.differences.filter((d) => d.excluded).map((d) => `${d.section} ${d.field}`)).toEqual(['globalstate/0 size', 'globalstate/0 runstate']);
    // QEMU 7.2's kvmclock pre_save re-reads KVM's clock in a destination that has not run since it
    // loaded (reports/known-deviations.json qemu-kvmclock-save-before-resume): it saves a later one.
    expect(r.differences.filter((d) => !d.excluded).map((d) => `${d.section} ${d.field}`)).toEqual(['kvmclock/0 clock']);
    const [a, b] = [r.differences.find((d) => d.field === 'clock')!.a, r.differences.find((d) => d.field === 'clock')!.b].map((h) => BigInt(`0x${h}`));
    expect(b).toBeGreaterThan(a!);
  });

  it('names the section and field of a byte that differs, and nothing else', () => {
    const d = Buffer.from(destination);
    const cpu1 = pd.devices.find((x) => x.section.idstr === 'cpu' && x.section.instanceId === 1)!;
    const rax3 = cpu1.fields.find((f) => f.path === 'env.regs[3]')!;
    d[cpu1.section.dataStart + rax3.offset + 7]! ^= 0x01;
    const r = compareDeviceState(destination, pd, d, parseMigrationStream(d));
    expect(r.differences).toEqual([{ section: 'cpu/1', field: 'env.regs[3]', a: sectionBytes(destination, cpu1).subarray(rax3.offset, rax3.offset + 8).toString('hex'), b: sectionBytes(d, cpu1).subarray(rax3.offset, rax3.offset + 8).toString('hex') }]);
    expect(compareDeviceState(destination, pd, destination, pd).differences).toEqual([]);
  });

  it('lays out subsections after their header, and names a struct that does not add up as a whole', () => {
    const lay = layoutVmsd({
      vmsd_name: 'x',
      version: 1,
      fields: [
        { name: 'a', type: 'uint32', size: 4, array_len: 2 },
        { name: 's', type: 'struct', size: 6, struct: { vmsd_name: 'y', version: 0, fields: [{ name: 'p', type: 'uint16', size: 2 }, { name: 'q', type: 'uint32', size: 4 }] } },
        { name: 'odd', type: 'struct', size: 5, struct: { vmsd_name: 'z', version: 0, fields: [{ name: 'r', type: 'uint16', size: 2 }] } },
      ],
      subsections: [{ vmsd_name: 'x/sub', version: 1, fields: [{ name: 'b', type: 'bool', size: 1 }] }],
    });
    expect(lay.fields.map((f) => [f.path, f.offset, f.size])).toEqual([
      ['a[0]', 0, 4],
      ['a[1]', 4, 4],
      ['s.p', 8, 2],
      ['s.q', 10, 4],
      ['odd', 14, 5],
      ['x/sub (subsection header)', 19, 1 + 1 + 5 + 4],
      ['x/sub/b', 30, 1],
    ]);
    expect(lay.end).toBe(31);
  });
});
