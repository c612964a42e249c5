/**
 * Where QEMU keeps guest RAM that is not a file we can open (MachineConfig.ramBackend 'anonymous',
 * 'memfd', 'hugetlbfs'): its host virtual address, found in /proc/<QEMU pid>/smaps, so the harness
 * reads it through /proc/<pid>/mem. QEMU 7.2's `info ramblock` prints no host address (checked).
 *
 * What a RAM block looks like there (measured, QEMU 7.2 on Linux 6.18, 64 MiB):
 *  - memory-backend-ram: an anonymous `rw-p` mapping of exactly the RAM's size, VmFlags with `hg`
 *    (QEMU madvises MADV_HUGEPAGE), then a 4 KiB `---p` guard page right after it;
 *  - memory-backend-memfd: an `rw-s` mapping of `/memfd:memory-backend-memfd (deleted)` of the
 *    RAM's size (with hugetlb=on the VmFlags also say `ht`), then the same guard page.
 * glibc arenas are 64 MiB anonymous mappings too (mostly `---p`), so a candidate must be unique,
 * and is checked against bytes known to be there (the program image the loader put at
 * LAYOUT.program) once the VM holds them.
 */
import { readFile } from 'node:fs/promises';

export type RamBackend = 'file' | 'anonymous' | 'memfd' | 'hugetlbfs';

export const RAM_BACKENDS: readonly RamBackend[] = ['file', 'anonymous', 'memfd', 'hugetlbfs'];

export interface Mapping {
  readonly start: number;
  readonly end: number;
  readonly perms: string;
  /** Offset in the file it maps (0 for anonymous memory). */
  readonly offset: number;
  /** The pathname column ('' for an anonymous mapping). */
  readonly path: string;
  readonly flags: readonly string[];
  /** smaps AnonHugePages and ShmemPmdMapped, in bytes (THP-backed parts of the mapping). */
  readonly anonHugeBytes: number;
  readonly shmemPmdBytes: number;
}

const HEADER = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \S+ ?(.*)$/;

/** /proc/<pid>/smaps (or maps: then no flags and no huge-page figures) as mappings. */
export function parseSmaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  let cur: { start: number; end: number; perms: string; offset: number; path: string; flags: string[]; anonHugeBytes: number; shmemPmdBytes: number } | null = null;
  for (const line of text.split('\n')) {
    const m = HEADER.exec(line);
    if (m) {
      if (cur) out.push(cur);
      cur = { start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), perms: m[3]!, offset: parseInt(m[4]!, 16), path: m[5]!.trim(), flags: [], anonHugeBytes: 0, shmemPmdBytes: 0 };
      continue;
    }
    if (!cur) continue;
    if (line.startsWith('VmFlags:')) cur.flags = line.slice(8).trim().split(/\s+/).filter(Boolean);
    else if (line.startsWith('AnonHugePages:')) cur.anonHugeBytes = kib(line);
    else if (line.startsWith('ShmemPmdMapped:')) cur.shmemPmdBytes = kib(line);
  }
  if (cur) out.push(cur);
  return out;
}

function kib(line: string): number {
  return Number(/(\d+)\s*kB/.exec(line)?.[1] ?? 0) * 1024;
}

const MEMFD_NAME = '/memfd:memory-backend-memfd (deleted)';

/** The mappings that look like a RAM block of `bytes` for this backend (see the header). */
export function ramCandidates(maps: readonly Mapping[], backend: Exclude<RamBackend, 'file'>, bytes: number): Mapping[] {
  return maps.filter((m, i) => {
    if (m.end - m.start !== bytes) return false;
    const next = maps[i + 1];
    const guarded = !!next && next.start === m.end && next.perms === '---p' && next.end - next.start === 4096;
    if (backend === 'anonymous') return m.perms === 'rw-p' && m.path === '' && m.flags.includes('hg') && guarded;
    if (m.perms !== 'rw-s' || m.path !== MEMFD_NAME) return false;
    return backend === 'hugetlbfs' ? m.flags.includes('ht') : !m.flags.includes('ht');
  });
}

/** The one candidate, or why there is none (one line). */
export function pickRam(maps: readonly Mapping[], backend: Exclude<RamBackend, 'file'>, bytes: number, pid: number): Mapping {
  const c = ramCandidates(maps, backend, bytes);
  if (c.length === 1) return c[0]!;
  const what = backend === 'anonymous' ? `anonymous rw-p mapping of ${bytes >> 20} MiB with VmFlags hg and a 4 KiB guard page after it` : `${MEMFD_NAME} rw-s mapping of ${bytes >> 20} MiB${backend === 'hugetlbfs' ? ' with VmFlags ht' : ''}`;
  throw new RamLocateError(`guest RAM (${backend}) of QEMU pid ${pid}: ${c.length === 0 ? 'no' : c.length} ${what} in /proc/${pid}/smaps${c.length > 1 ? ` (at ${c.map((m) => `0x${m.start.toString(16)}`).join(', ')}): cannot tell which is guest RAM` : ''}`);
}

/** Null when `got` holds `expected`, else one line saying where they first differ. */
export function checkKnownBytes(got: Uint8Array, expected: Uint8Array, guestAddr: number): string | null {
  if (got.length < expected.length) return `only ${got.length} of ${expected.length} bytes could be read at guest 0x${guestAddr.toString(16)}`;
  for (let i = 0; i < expected.length; i++) {
    if (got[i] !== expected[i]) return `guest 0x${(guestAddr + i).toString(16)} holds 0x${got[i]!.toString(16)}, the program image 0x${expected[i]!.toString(16)}`;
  }
  return null;
}

export class RamLocateError extends Error {
  override name = 'RamLocateError';
}

/**
 * What to pread for a RAM block found in QEMU's mappings: a memfd's own file through
 * /proc/<pid>/map_files (page-cache reads, as fast as the RAM file's, and holes read as zeroes
 * without allocating them, which a read fault through /proc/<pid>/mem would); anonymous memory
 * only through /proc/<pid>/mem.
 */
export function ramReadPath(pid: number, m: Mapping): { path: string; base: number } {
  if (m.path === MEMFD_NAME) return { path: `/proc/${pid}/map_files/${m.start.toString(16)}-${m.end.toString(16)}`, base: m.offset };
  return { path: `/proc/${pid}/mem`, base: m.start };
}

/** Read QEMU's smaps and pick its RAM block. */
export async function locateRam(pid: number, backend: Exclude<RamBackend, 'file'>, bytes: number): Promise<Mapping> {
  return pickRam(parseSmaps(await readFile(`/proc/${pid}/smaps`, 'utf8')), backend, bytes, pid);
}

/** The host's free 2 MiB huge pages (/proc/meminfo HugePages_Free, when Hugepagesize is 2048 kB), else 0. */
export function freeHugePages2M(meminfo: string): number {
  if (!/^Hugepagesize:\s+2048 kB/m.test(meminfo)) return 0;
  return Number(/^HugePages_Free:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
}
