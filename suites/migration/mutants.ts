/**
 * The migration family's mutants: a proxy between source and destination that breaks the stream
 * in one page record of a page written once before the migration (harness/migrationProxy.ts), so
 * the page is never sent again to repair it. Both must make the switchover and resume properties
 * fail with the page, the offset and the bytes; suites/migration/sensitivity.test.ts runs them.
 */
import { join } from 'node:path';
import { startStreamProxy, type PageMutation } from '../../harness/migrationProxy.js';
import type { Mutant } from '../lib/family.js';

function le64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

function proxyMutant(name: string, description: string, mutation: PageMutation): Mutant {
  return {
    name,
    description,
    breaks: ['migration.switchover', 'migration.resume'],
    roles: [],
    migrationIntercept: (target) => async (dstUri, dstDir) => {
      if (!dstUri.startsWith('unix:')) throw new Error(`the stream proxy needs a unix destination, not ${dstUri}`);
      return startStreamProxy({ listenPath: join(dstDir, 'proxy.sock'), targetPath: dstUri.slice('unix:'.length), pages: target.pages, magic: le64(target.magic), mutation });
    },
  };
}

/** Byte 0x123 of the page: past the sentinel's words, so only a RAM comparison sees it. */
export const CORRUPT_OFFSET = 0x123;

export const MIGRATION_MUTANTS: readonly Mutant[] = [
  proxyMutant(
    'stream-corrupt-page-byte',
    `A proxy between source and destination flips byte 0x${CORRUPT_OFFSET.toString(16)} of the first page record it sees of a sentinel page (written once, before the migration): the destination loads a page the source never had.`,
    { kind: 'corrupt-byte', offset: CORRUPT_OFFSET },
  ),
  {
    name: 'migration-model-late-deadline',
    description:
      'The time model with its clock wrong: it takes the TSC deadline vCPU 0 armed before the migration as one second later than the value written, so a correct host delivers the interrupt before the model allows.',
    breaks: ['migration.resume'],
    roles: [],
    modelVariant: { migrationTime: { deadlineShiftMs: 1000 } },
  },
  proxyMutant(
    'stream-drop-page-record',
    'A proxy between source and destination drops the first page record it sees of a sentinel page (written once, before the migration): the destination never receives that page and keeps zeroes.',
    { kind: 'drop-record' },
  ),
];
