/**
 * Fill host memory with the leak pattern and free it, so stale host data is recognisable if a
 * hypervisor ever hands it to a guest. Two kinds of memory, freed before any VM starts:
 *  - anonymous memory of a short-lived child process (returned to the kernel when it exits);
 *  - page cache of a file on /dev/shm (returned when the file is removed).
 */
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { HOST_PATTERN } from '../models/hostPattern.js';
import { createPrivateDir, removePrivateDir } from './runtime.js';

export interface FillReport {
  readonly anonymousMiB: number;
  readonly pageCacheMiB: number;
  readonly ms: number;
}

const CHILD = `
const mib = Number(process.argv[1]);
const pattern = Buffer.from(process.argv[2], 'hex');
const chunks = [];
for (let i = 0; i < mib; i += 64) chunks.push(Buffer.allocUnsafe(64 << 20).fill(pattern));
process.stdout.write(String(chunks.length * 64));
`;

export async function fillAndFreeHostMemory(opts: { anonymousMiB?: number; pageCacheMiB?: number } = {}): Promise<FillReport> {
  const t0 = Date.now();
  const anonymousMiB = opts.anonymousMiB ?? 512;
  const pageCacheMiB = opts.pageCacheMiB ?? 64;
  const hex = Buffer.from(HOST_PATTERN).toString('hex');
  const child = await execa(process.execPath, ['-e', CHILD, String(anonymousMiB), hex], { reject: false });
  if (child.exitCode !== 0) throw new Error(`host pattern fill failed: ${child.stderr || child.exitCode}`);
  const dir = await createPrivateDir('pattern');
  try {
    const file = join(dir, 'pattern.bin');
    await writeFile(file, Buffer.alloc(pageCacheMiB << 20, Buffer.from(HOST_PATTERN)), { mode: 0o600 });
    await rm(file);
  } finally {
    await removePrivateDir(dir);
  }
  return { anonymousMiB: Number(child.stdout), pageCacheMiB, ms: Date.now() - t0 };
}
