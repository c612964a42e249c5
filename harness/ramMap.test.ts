/** Finding QEMU's RAM block in its smaps (harness/ramMap.ts), on excerpts measured on this host. */
import { describe, expect, it } from 'vitest';
import { checkKnownBytes, freeHugePages2M, parseSmaps, pickRam, ramCandidates, RamLocateError, ramReadPath } from './ramMap.js';

const MiB64 = 64 << 20;

function block(start: number, bytes: number, perms: string, path: string, flags: string, anonHugeKiB = 0): string {
  const end = start + bytes;
  return [
    `${start.toString(16)}-${end.toString(16)} ${perms} 00000000 00:00 0${path ? `                          ${path}` : ''}`,
    `Size:           ${bytes >> 10} kB`,
    `AnonHugePages:  ${anonHugeKiB} kB`,
    `ShmemPmdMapped:        0 kB`,
    `VmFlags: ${flags}`,
  ].join('\n');
}

const ARENA = 0x7efccc021000;
const RAM = 0x7efcd3e00000;
/** memory-backend-ram, 64 MiB, beside a glibc arena of the same reservation size (measured layout). */
const anonymous = [
  block(ARENA - 0x21000, 0x21000, 'rw-p', '', 'rd wr mr mw me nr'),
  block(ARENA, MiB64 - 0x21000, '---p', '', 'mr mw me nr'),
  block(RAM, MiB64, 'rw-p', '', 'rd wr mr mw me dc ac hg mg', 6144),
  block(RAM + MiB64, 4096, '---p', '', 'mr mw me'),
  block(0x7efcde6b9000, 4096, '---p', '/usr/lib/x86_64-linux-gnu/libslirp.so.0.4.0', 'mr mw me'),
].join('\n');
const MEMFD = 0x7f531ffff000;
const memfd = [
  block(MEMFD, MiB64, 'rw-s', '/memfd:memory-backend-memfd (deleted)', 'rd wr sh mr mw me ms dc hg'),
  block(MEMFD + MiB64, 4096, '---p', '', 'mr mw me'),
].join('\n');

describe('QEMU RAM block in smaps', () => {
  it('parses mappings, their VmFlags and THP figures', () => {
    const maps = parseSmaps(anonymous);
    expect(maps).toHaveLength(5);
    expect(maps[2]).toMatchObject({ start: RAM, end: RAM + MiB64, perms: 'rw-p', offset: 0, path: '', anonHugeBytes: 6144 * 1024 });
    expect(maps[2]!.flags).toContain('hg');
    expect(maps[4]!.path).toBe('/usr/lib/x86_64-linux-gnu/libslirp.so.0.4.0');
    expect(parseSmaps(memfd)[0]!.path).toBe('/memfd:memory-backend-memfd (deleted)');
  });

  it('picks the anonymous block by size, hg and its guard page, not an arena or a block of another size', () => {
    expect(pickRam(parseSmaps(anonymous), 'anonymous', MiB64, 1).start).toBe(RAM);
    expect(ramCandidates(parseSmaps(anonymous), 'anonymous', 128 << 20)).toEqual([]);
    // Without its guard page, or without hg, it is not taken for RAM.
    const unguarded = parseSmaps(anonymous).filter((m) => m.start !== RAM + MiB64);
    expect(ramCandidates(unguarded, 'anonymous', MiB64)).toEqual([]);
    const noHg = parseSmaps(anonymous.replace('dc ac hg mg', 'dc ac mg'));
    expect(ramCandidates(noHg, 'anonymous', MiB64)).toEqual([]);
    // A memfd block is not anonymous RAM, and the other way round.
    expect(ramCandidates(parseSmaps(memfd), 'anonymous', MiB64)).toEqual([]);
    expect(ramCandidates(parseSmaps(anonymous), 'memfd', MiB64)).toEqual([]);
  });

  it('picks a memfd block by its name; hugetlb ones by ht', () => {
    expect(pickRam(parseSmaps(memfd), 'memfd', MiB64, 1).start).toBe(MEMFD);
    expect(ramCandidates(parseSmaps(memfd), 'hugetlbfs', MiB64)).toEqual([]);
    const huge = parseSmaps(memfd.replace('ms dc hg', 'ms dc ht'));
    expect(pickRam(huge, 'hugetlbfs', MiB64, 1).start).toBe(MEMFD);
    expect(ramCandidates(huge, 'memfd', MiB64)).toEqual([]);
  });

  it('refuses in one line when none or several look like RAM', () => {
    expect(() => pickRam([], 'anonymous', MiB64, 42)).toThrow(RamLocateError);
    expect(() => pickRam([], 'anonymous', MiB64, 42)).toThrow(/^guest RAM \(anonymous\) of QEMU pid 42: no anonymous rw-p mapping of 64 MiB with VmFlags hg/);
    const twice = parseSmaps(`${anonymous}\n${block(RAM + 0x8000000, MiB64, 'rw-p', '', 'rd wr hg')}\n${block(RAM + 0x8000000 + MiB64, 4096, '---p', '', 'mr')}`);
    const e = (() => {
      try {
        pickRam(twice, 'anonymous', MiB64, 42);
      } catch (x) {
        return x as Error;
      }
      return null;
    })();
    expect(e?.message).toMatch(/2 anonymous .*cannot tell which is guest RAM/);
    expect(e?.message).not.toContain('\n');
  });

  it('reads a memfd through its own file, anonymous memory through /proc/<pid>/mem', () => {
    expect(ramReadPath(7, parseSmaps(memfd)[0]!)).toEqual({ path: `/proc/7/map_files/${MEMFD.toString(16)}-${(MEMFD + MiB64).toString(16)}`, base: 0 });
    expect(ramReadPath(7, pickRam(parseSmaps(anonymous), 'anonymous', MiB64, 7))).toEqual({ path: '/proc/7/mem', base: RAM });
  });

  it('checks known bytes and says where they first differ', () => {
    const img = Uint8Array.from([1, 2, 3, 4]);
    expect(checkKnownBytes(Uint8Array.from([1, 2, 3, 4, 9]), img, 0x1000)).toBeNull();
    expect(checkKnownBytes(Uint8Array.from([1, 2, 0, 4]), img, 0x1000)).toBe('guest 0x1002 holds 0x0, the program image 0x3');
    expect(checkKnownBytes(Uint8Array.from([1, 2]), img, 0x1000)).toMatch(/only 2 of 4 bytes/);
  });

  it('counts free 2 MiB huge pages from /proc/meminfo', () => {
    expect(freeHugePages2M('HugePages_Total:       0\nHugePages_Free:        0\nHugepagesize:       2048 kB\n')).toBe(0);
    expect(freeHugePages2M('HugePages_Total:     512\nHugePages_Free:      300\nHugepagesize:       2048 kB\n')).toBe(300);
    expect(freeHugePages2M('HugePages_Free:      300\nHugepagesize:    1048576 kB\n')).toBe(0);
  });
});
