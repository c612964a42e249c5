/**
 * Builds the guest ELF with the system gcc/binutils, cached by a hash of everything that goes into
 * it (sources, generated header, flags, compiler version). A compiler error is reported as such,
 * with the compiler's own words.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile, access } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { renderGuestHeader } from './header.js';

const HERE = dirname(fileURLToPath(import.meta.url));
export const GUEST_SRC = join(HERE, 'src');
export const PROJECT_ROOT = join(HERE, '..', '..');
const CACHE = join(PROJECT_ROOT, '.cache', 'guest');

const CFLAGS = [
  '-m64', '-O2', '-std=gnu11', '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter',
  '-ffreestanding', '-fno-pic', '-fno-pie', '-mno-red-zone', '-mgeneral-regs-only',
  '-fno-stack-protector', '-fno-asynchronous-unwind-tables', '-fcf-protection=none',
  '-fno-builtin', '-fno-strict-aliasing',
];
const LDFLAGS = ['-m', 'elf_x86_64', '-nostdlib', '-static', '--build-id=none', '-z', 'noexecstack'];

export class GuestBuildError extends Error {
  constructor(message: string, readonly output: string) {
    super(message);
    this.name = 'GuestBuildError';
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

async function toolVersion(tool: string): Promise<string> {
  try {
    const r = await execa(tool, ['--version']);
    return r.stdout.split('\n')[0] ?? tool;
  } catch {
    throw new GuestBuildError(`${tool} not found: install gcc and binutils (apt-get install gcc binutils)`, '');
  }
}

export interface GuestBinary {
  readonly elf: string;
  readonly hash: string;
  readonly cached: boolean;
}

/** Build (or reuse) the guest; returns the path of the ELF. */
export async function buildGuest(opts: { force?: boolean } = {}): Promise<GuestBinary> {
  const header = renderGuestHeader();
  const files = (await readdir(GUEST_SRC)).filter((f) => /\.(c|S|h|ld)$/.test(f)).sort();
  const hash = createHash('sha256');
  hash.update(header);
  for (const f of files) hash.update(f).update(await readFile(join(GUEST_SRC, f)));
  hash.update(CFLAGS.join(' ')).update(LDFLAGS.join(' '));
  hash.update(await toolVersion('gcc')).update(await toolVersion('ld'));
  const key = hash.digest('hex').slice(0, 16);
  const outDir = join(CACHE, key);
  const elf = join(outDir, 'kvmprop-guest.elf');
  if (!opts.force && (await exists(elf))) return { elf, hash: key, cached: true };

  await mkdir(CACHE, { recursive: true });
  const work = await mkdtemp(join(CACHE, 'build-'));
  try {
    await writeFile(join(work, 'kvmprop_gen.h'), header);
    const objs: string[] = [];
    for (const f of files.filter((f) => /\.(c|S)$/.test(f))) {
      const obj = join(work, f.replace(/\.(c|S)$/, '.o'));
      await compile(['-c', join(GUEST_SRC, f), '-o', obj, `-I${work}`, `-I${GUEST_SRC}`]);
      objs.push(obj);
    }
    const tmpElf = join(work, 'kvmprop-guest.elf');
    await run('ld', [...LDFLAGS, '-T', join(GUEST_SRC, 'guest.ld'), '-o', tmpElf, ...objs], 'link');
    await mkdir(outDir, { recursive: true });
    await rename(tmpElf, elf);
    await writeFile(join(outDir, 'kvmprop_gen.h'), header);
    return { elf, hash: key, cached: false };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function compile(args: string[]): Promise<void> {
  await run('gcc', [...CFLAGS, ...args], 'compile');
}

async function run(tool: string, args: string[], what: string): Promise<void> {
  const r = await execa(tool, args, { reject: false, all: true });
  if (r.exitCode !== 0) {
    const all = r.all ?? '';
    const lines = all.split('\n');
    const shown = lines.slice(0, 40).join('\n') + (lines.length > 40 ? `\n… ${lines.length - 40} more lines` : '');
    throw new GuestBuildError(`guest ${what} failed (${tool} exited ${r.exitCode ?? r.signal}):\n${shown}`, all);
  }
}
