/**
 * The migration family's mutants: a proxy between source and destination that breaks the stream
 * in one page record of a page written once before the migration (harness/migrationProxy.ts), so
 * the page is never sent again to repair it, or replays a stale record of a page the guest keeps
 * changing after each fresh one. Both must make the switchover and resume properties
 * fail with the page, the offset and the bytes; suites/migration/sensitivity.test.ts runs them.
 */
import { join } from 'node:path';
import { GUEST_ABI_VERSION, LAYOUT, MAILBOX_MAGIC } from '../../harness/guest/abi.js';
import { startStreamProxy, type PageMutation } from '../../harness/migrationProxy.js';
import type { Mutant } from '../lib/family.js';

function le64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

/** The mailbox page's first 8 bytes, as the guest keeps them: its magic and ABI version (u32 each). */
function mailboxHead(): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(MAILBOX_MAGIC, 0);
  b.writeUInt32LE(GUEST_ABI_VERSION, 4);
  return b;
}

/**
 * A proxy on the stream; by default it targets the sentinel pages (written once, before the
 * migration), `mailbox` aims it at the guest's mailbox page instead (every thread's ops_done and
 * heartbeat: changed all the time, so sent again and again).
 */
function proxyMutant(name: string, description: string, mutation: PageMutation, opts: { breaks?: readonly string[]; mailbox?: boolean } = {}): Mutant {
  return {
    name,
    description,
    breaks: opts.breaks ?? ['migration.switchover', 'migration.resume'],
    roles: [],
    migrationIntercept: (target) => async (dstUri, dstDir) => {
      if (!dstUri.startsWith('unix:')) throw new Error(`the stream proxy needs a unix destination, not ${dstUri}`);
      const aim = opts.mailbox ? { pages: [LAYOUT.mailbox], magic: mailboxHead() } : { pages: target.pages, magic: le64(target.magic) };
      return startStreamProxy({ listenPath: join(dstDir, 'proxy.sock'), targetPath: dstUri.slice('unix:'.length), ...aim, mutation });
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
  proxyMutant(
    'stream-replay-stale-page-record',
    "A proxy between source and destination keeps the first record it sees of the guest's mailbox page (its threads' progress, rewritten all the time) and sends that stale copy again right after every later record of the page: the destination's last copy of the page is the oldest one.",
    { kind: 'replay-stale' },
    { breaks: ['migration.switchover'], mailbox: true },
  ),
];
