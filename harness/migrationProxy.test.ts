/**
 * The migration-stream proxy (harness/migrationProxy.ts).
 *
 * First the pure transform on synthetic streams: a record is found wherever chunk boundaries fall,
 * each mutation changes exactly what it says and nothing else, and what it must not touch (a magic
 * behind a header of other flags, of a page not asked for, streams with no match) comes out
 * byte-identical. Then the sockets, against a stand-in destination (no QEMU). Then on real
 * QEMU/KVM: the RAM-equivalence oracle (compareRam) sees the identity proxy as nothing, and sees
 * each mutation as exactly one differing page where the mutation says, so it can fail.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Op } from '../ir/ops.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { GUEST_ABI_VERSION, LAYOUT, MAILBOX_MAGIC } from './guest/abi.js';
import { buildGuest } from './guest/build.js';
import { PageRecordMutator, interceptMigration, startStreamProxy, type PageMutation } from './migrationProxy.js';
import { compareRam, withVms } from './session.js';
import { useOwnRunRoot } from './testing/runRoot.js';
import { defaultMachineConfig } from './vm.js';

const PAGE = 4096;
const MAGIC_VALUE = 0x4b56_4d50_524f_5859n; // "KVMPROXY", as the guest stores it: little-endian
const MAGIC = Buffer.alloc(8);
MAGIC.writeBigUInt64LE(MAGIC_VALUE);

// --- synthetic streams ------------------------------------------------------------------------

function header(offset: number, flags: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(offset) | BigInt(flags));
  return b;
}

/** Page data starting with the magic, the rest a pattern that cannot contain it. */
function pageData(seed = 1): Buffer {
  const d = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i++) d[i] = (i * 7 + seed) & 0x7f;
  MAGIC.copy(d, 0);
  return d;
}

/** A PAGE|CONTINUE record: header, then the data. */
function record(offset: number, data = pageData(), flags = 0x28): Buffer {
  return Buffer.concat([header(offset, flags), data]);
}

/** Bytes with no magic in them (the magic's bytes are ASCII capitals, these stay below 0x40). */
function filler(n: number, seed = 3): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 13 + seed) % 0x40;
  return b;
}

function run(m: PageRecordMutator, chunks: readonly Buffer[]): Buffer {
  return Buffer.concat([...chunks.map((c) => m.push(c)), m.end()]);
}

/** Split `b` at the given sorted, distinct points. */
function splitAt(b: Buffer, points: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(b.subarray(from, p));
    from = p;
  }
  out.push(b.subarray(from));
  return out;
}

function diffPositions(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

const P = 0x0300_0000;
const PREFIX = filler(300);
const SUFFIX = filler(200, 9);
const STREAM = Buffer.concat([PREFIX, record(P), SUFFIX]);
const HEADER_AT = PREFIX.length;

describe('PageRecordMutator on synthetic streams', () => {
  it('finds the record across every split point of one chunk boundary, for both mutations', () => {
    const corrupt = { kind: 'corrupt-byte', offset: 100 } as const;
    const want = Buffer.from(STREAM);
    want[HEADER_AT + 8 + 100]! ^= 0xff;
    const dropped = Buffer.concat([PREFIX, SUFFIX]);
    for (let split = 0; split <= STREAM.length; split++) {
      const chunks = splitAt(STREAM, [split]);
      const m1 = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: corrupt });
      expect(run(m1, chunks).equals(want), `corrupt, split at ${split}`).toBe(true);
      expect(m1.mutated, `split at ${split}`).toEqual({ page: P, streamOffset: HEADER_AT, kind: 'corrupt-byte', before: STREAM[HEADER_AT + 108], after: STREAM[HEADER_AT + 108]! ^ 0xff });
      const m2 = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'drop-record' } });
      expect(run(m2, chunks).equals(dropped), `drop, split at ${split}`).toBe(true);
      expect(m2.mutated).toEqual({ page: P, streamOffset: HEADER_AT, kind: 'drop-record' });
    }
  });

  it('finds it whatever the chunks (random splits into many pieces, random placement)', () => {
    fc.assert(
      fc.property(
        fc.nat(9000),
        fc.nat(9000),
        fc.uniqueArray(fc.nat(30_000), { maxLength: 40 }),
        fc.integer({ min: 0, max: PAGE - 1 }),
        (pre, post, rawPoints, offset) => {
          const stream = Buffer.concat([filler(pre), record(P), filler(post, 5)]);
          const points = rawPoints.filter((p) => p > 0 && p < stream.length).sort((a, b) => a - b);
          const m = new PageRecordMutator({ pages: [0x1000, P], magic: MAGIC, mutation: { kind: 'corrupt-byte', offset } });
          const out = run(m, splitAt(stream, points));
          expect(diffPositions(out, stream)).toEqual([pre + 8 + offset]);
          expect(out[pre + 8 + offset]).toBe(stream[pre + 8 + offset]! ^ 0xff);
          expect(m.mutated).toMatchObject({ page: P, streamOffset: pre });
        },
      ),
      { numRuns: 300 },
    );
  });

  it('corrupt-byte flips exactly one byte, at each offset of the page (the magic itself included)', () => {
    for (const offset of [0, 7, 8, 2048, PAGE - 1]) {
      const m = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'corrupt-byte', offset } });
      const out = run(m, [STREAM]);
      expect(out.length).toBe(STREAM.length);
      expect(diffPositions(out, STREAM)).toEqual([HEADER_AT + 8 + offset]);
      expect(out[HEADER_AT + 8 + offset]).toBe(STREAM[HEADER_AT + 8 + offset]! ^ 0xff);
    }
  });

  it('drop-record removes exactly the 4104 bytes of the record', () => {
    const m = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'drop-record' } });
    const out = run(m, splitAt(STREAM, [10, 4000]));
    expect(STREAM.length - out.length).toBe(4104);
    expect(out.equals(Buffer.concat([PREFIX, SUFFIX]))).toBe(true);
  });

  it('mutates only the first record found: a second candidate passes unchanged', () => {
    const second = record(P + PAGE, pageData(2));
    const stream = Buffer.concat([PREFIX, record(P), filler(50), second, SUFFIX]);
    const m = new PageRecordMutator({ pages: [P + PAGE, P], magic: MAGIC, mutation: { kind: 'drop-record' } });
    const out = run(m, [stream.subarray(0, 5000), stream.subarray(5000)]);
    expect(out.equals(Buffer.concat([PREFIX, filler(50), second, SUFFIX]))).toBe(true);
    expect(m.mutated?.page).toBe(P);
  });

  it('leaves alone a magic behind other flags, a page not asked for, an idstr, or no header at all', () => {
    const idstr = Buffer.from('ram0');
    const untouchable = [
      // The block's first record: PAGE without CONTINUE, then the idstr, then the data.
      Buffer.concat([PREFIX, header(P, 0x08), Buffer.from([idstr.length]), idstr, pageData(), SUFFIX]),
      // PAGE without CONTINUE directly before the data (not what QEMU sends, but not ours to touch).
      Buffer.concat([PREFIX, record(P, pageData(), 0x08), SUFFIX]),
      // Other flag combinations: a zero page's flags, PAGE|CONTINUE|ZERO, XBZRLE|CONTINUE.
      Buffer.concat([PREFIX, record(P, pageData(), 0x22), SUFFIX]),
      Buffer.concat([PREFIX, record(P, pageData(), 0x2a), SUFFIX]),
      Buffer.concat([PREFIX, record(P, pageData(), 0x60), SUFFIX]),
      // The right flags for a page that is not a candidate (and one that differs only above bit 31).
      Buffer.concat([PREFIX, record(P + PAGE), SUFFIX]),
      Buffer.concat([PREFIX, record(P + 0x1_0000_0000), SUFFIX]),
      // The magic at the very start of the stream: no header before it.
      Buffer.concat([pageData(), SUFFIX]),
      // Half a record at the end: the magic is there, the page data never all arrives.
      Buffer.concat([PREFIX, record(P).subarray(0, 8 + 2000)]),
    ];
    for (const [i, stream] of untouchable.entries()) {
      for (const chunks of [[stream], splitAt(stream, [HEADER_AT + 4]), splitAt(stream, [1, 2, 3, HEADER_AT + 11, HEADER_AT + 12])]) {
        const m = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'drop-record' } });
        expect(run(m, chunks).equals(stream), `stream ${i}`).toBe(true);
        expect(m.mutated, `stream ${i}`).toBeNull();
      }
    }
  });

  it('streams with no match come out identical, in order, whatever the chunks', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 20_000 }), fc.uniqueArray(fc.nat(20_000), { maxLength: 30 }), (bytes, rawPoints) => {
        const stream = Buffer.from(bytes);
        const points = rawPoints.filter((p) => p > 0 && p < stream.length).sort((a, b) => a - b);
        const m = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'corrupt-byte', offset: 1 } });
        const out = run(m, splitAt(stream, points));
        expect(out.equals(stream)).toBe(true);
        expect(m.mutated).toBeNull();
      }),
      { numRuns: 200 },
    );
  });

  it('replay-stale sends the first record of the page again after each later one, whatever the chunks; other pages pass', () => {
    const [r1, r2, r3] = [1, 2, 3].map((seed) => record(P, pageData(seed)));
    const other = record(P + PAGE, pageData(4));
    const stream = Buffer.concat([PREFIX, r1!, filler(70), other, r2!, filler(5000, 5), r3!, SUFFIX]);
    const want = Buffer.concat([PREFIX, r1!, filler(70), other, r2!, r1!, filler(5000, 5), r3!, r1!, SUFFIX]);
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 12 }), (points) => {
        const m = new PageRecordMutator({ pages: [P, P + PAGE], magic: MAGIC, mutation: { kind: 'replay-stale' } });
        const out = run(m, splitAt(stream, [...points].sort((a, b) => a - b)));
        expect(out.equals(want)).toBe(true);
        expect(m.mutated).toEqual({ page: P, streamOffset: HEADER_AT, kind: 'replay-stale', replays: 2 });
      }),
      { numRuns: 200 },
    );
    // A later record that names its block (PAGE alone, then u8 length and idstr, as the first page
    // of a pass after the ROM blocks): replayed after it too, as PAGE|CONTINUE.
    const named = Buffer.concat([header(P, 0x08), Buffer.from([4]), Buffer.from('ram0'), pageData(5)]);
    const s2 = Buffer.concat([PREFIX, r1!, filler(90), named, SUFFIX]);
    const m2 = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'replay-stale' } });
    expect(run(m2, splitAt(s2, [HEADER_AT + 4, s2.length - SUFFIX.length - 3000])).equals(Buffer.concat([PREFIX, r1!, filler(90), named, r1!, SUFFIX]))).toBe(true);
    expect(m2.mutated?.replays).toBe(1);
    // The other mutations leave such a record alone (the next CONTINUE would land in the wrong block).
    const m3 = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'drop-record' } });
    const s3 = Buffer.concat([PREFIX, named, SUFFIX]);
    expect(run(m3, [s3]).equals(s3)).toBe(true);
    // A page sent once: nothing to replay after, the stream comes out as it went in.
    const once = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'replay-stale' } });
    expect(run(once, [STREAM]).equals(STREAM)).toBe(true);
    expect(once.mutated?.replays).toBe(0);
  });

  it('holds back no more than a record until the mutation, and nothing after it', () => {
    const m = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'corrupt-byte', offset: 3 } });
    const first = m.push(filler(20_000));
    expect(first.length).toBe(20_000 - (8 + PAGE + 8));
    m.push(record(P));
    expect(m.mutated).not.toBeNull();
    const after = filler(10);
    expect(m.push(after)).toBe(after);
    expect(m.end().length).toBe(0);
  });

  it('does not write into the caller’s chunks', () => {
    const input = Buffer.from(STREAM);
    const m = new PageRecordMutator({ pages: [P], magic: MAGIC, mutation: { kind: 'corrupt-byte', offset: 0 } });
    run(m, [input]);
    expect(input.equals(STREAM)).toBe(true);
  });

  it('refuses options it could not honour', () => {
    const ok = { pages: [P], magic: MAGIC, mutation: { kind: 'drop-record' } as PageMutation };
    expect(() => new PageRecordMutator({ ...ok, magic: Buffer.alloc(4) })).toThrow(/8 bytes/);
    expect(() => new PageRecordMutator({ ...ok, pages: [P + 1] })).toThrow(/aligned/);
    expect(() => new PageRecordMutator({ ...ok, mutation: { kind: 'corrupt-byte', offset: PAGE } })).toThrow(/outside the page/);
    expect(() => new PageRecordMutator({ ...ok, mutation: { kind: 'corrupt-byte', offset: -1 } })).toThrow(/outside the page/);
  });
});

// --- the sockets, against a stand-in destination -------------------------------------------------

describe('startStreamProxy over unix sockets (a stand-in destination)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kvmprop-proxy-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A destination that records what each connection sent and answers `reply` on each. */
  async function standInDestination(path: string, reply: Buffer) {
    const received: Buffer[][] = [];
    const ended: Promise<void>[] = [];
    const server = createServer((s: Socket) => {
      const got: Buffer[] = [];
      received.push(got);
      s.write(reply);
      ended.push(
        new Promise<void>((r) =>
          s.on('end', () => {
            s.end();
            r();
          }),
        ),
      );
      s.on('data', (c: Buffer) => got.push(c));
    });
    await new Promise<void>((r) => server.listen(path, r));
    return { received, ended, close: () => new Promise<void>((r) => server.close(() => r())) };
  }

  /** Send `payload` in pieces through `uri`'s socket, collect what comes back until the other side ends. */
  function source(path: string, payload: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const s = createConnection({ path });
      const back: Buffer[] = [];
      s.on('data', (c: Buffer) => back.push(c));
      s.on('end', () => resolve(Buffer.concat(back)));
      s.on('error', reject);
      s.on('connect', () => {
        for (let i = 0; i < payload.length; i += 777) s.write(payload.subarray(i, i + 777));
        s.end();
      });
    });
  }

  it('mutates the first connection’s stream only, pipes the return path, and cleans up', async () => {
    const target = join(dir, 'dst.sock');
    const listenPath = join(dir, 'proxy.sock');
    const dst = await standInDestination(target, Buffer.from('return path'));
    const big = Buffer.concat([filler(100_000), record(P), filler(50_000, 7)]);
    const proxy = await startStreamProxy({ listenPath, targetPath: target, pages: [P], magic: MAGIC, mutation: { kind: 'corrupt-byte', offset: 9 } });
    expect(proxy.uri).toBe(`unix:${listenPath}`);
    expect(proxy.mutated).toBeNull();
    try {
      // A listening path is refused, not replaced.
      await expect(startStreamProxy({ listenPath, targetPath: target, pages: [], magic: MAGIC, mutation: { kind: 'drop-record' } })).rejects.toThrow(/already exists/);

      expect((await source(listenPath, big)).toString()).toBe('return path');
      await Promise.all(dst.ended);
      const first = Buffer.concat(dst.received[0]!);
      expect(diffPositions(first, big)).toEqual([100_000 + 8 + 9]);
      expect(proxy.mutated).toMatchObject({ page: P, streamOffset: 100_000, kind: 'corrupt-byte' });

      // A second channel passes unchanged, even with a candidate record in it.
      expect((await source(listenPath, big)).toString()).toBe('return path');
      await Promise.all(dst.ended);
      expect(Buffer.concat(dst.received[1]!).equals(big)).toBe(true);
      expect(proxy.connections).toBe(2);
      expect(proxy.bytesForwarded).toBe(2 * big.length);
      expect(proxy.bytesReturned).toBe(2 * 'return path'.length);
    } finally {
      await proxy.close();
      await proxy.close(); // idempotent
      await dst.close();
    }
    await expect(startStreamProxy({ listenPath, targetPath: target, pages: [], magic: MAGIC, mutation: { kind: 'drop-record' } }).then((p) => p.close())).resolves.toBeUndefined();
  });

  it('a destination that is not there ends the source’s connection instead of hanging it', async () => {
    const listenPath = join(dir, 'proxy2.sock');
    const proxy = await startStreamProxy({ listenPath, targetPath: join(dir, 'nobody.sock'), pages: [P], magic: MAGIC, mutation: { kind: 'drop-record' } });
    try {
      const outcome = await new Promise<string>((resolve) => {
        const s = createConnection({ path: listenPath });
        s.on('error', () => resolve('closed'));
        s.on('close', () => resolve('closed'));
        s.on('connect', () => s.write(filler(1000)));
      });
      expect(outcome).toBe('closed');
    } finally {
      await proxy.close();
    }
  });
});

// --- on real QEMU/KVM ---------------------------------------------------------------------------

const CANDIDATES = [0, 1, 2, 3].map((i) => 0x0300_0000 + i * PAGE);
/** The mailbox page's first 8 bytes: its magic and the ABI version (little-endian u32s). */
const MAILBOX_HEAD = Buffer.alloc(8);
MAILBOX_HEAD.writeUInt32LE(MAILBOX_MAGIC, 0);
MAILBOX_HEAD.writeUInt32LE(GUEST_ABI_VERSION, 4);
const DIRTY_BASE = 0x0200_0000n;
/** Magic at offset 0 of each candidate page, marker 7, then dirty other pages forever. */
const MAGIC_THEN_DIRTY: Program = {
  canary: DEFAULT_CANARY,
  threads: [
    [
      ...CANDIDATES.map((addr): Op => ({ op: 'mmioWrite', addr: BigInt(addr), width: 8, value: MAGIC_VALUE })),
      { op: 'mark', value: 7n },
      { op: 'loopBegin', count: 0 },
      { op: 'dirtyPages', base: DIRTY_BASE, pages: 256, stride: 4096 },
      { op: 'loopEnd' },
    ],
  ],
};

describe('on real KVM: the RAM oracle sees what the proxy did', () => {
  let guestElf: string;
  useOwnRunRoot();
  beforeAll(async () => {
    guestElf = (await buildGuest()).elf;
  });

  /** Migrate a guest through a proxy (resume: false: both stay stopped) and compare their RAM. */
  async function migrateThrough(pages: readonly number[], mutation: PageMutation) {
    const cfg = defaultMachineConfig();
    return withVms(
      { src: { config: cfg, program: MAGIC_THEN_DIRTY }, dst: { config: cfg, incoming: 'defer' } },
      async ({ src, dst }) => {
        await src.untilMarker(0, 7n);
        const via = interceptMigration({ pages, magic: MAGIC, mutation });
        const info = await src.migrateTo(dst, { resume: false, intercept: via.intercept });
        expect(info.status).toBe('completed');
        expect(await dst.status()).toBe('paused');
        const proxy = via.proxy!;
        expect(proxy.bytesForwarded).toBeGreaterThan(0);
        const cmp = await compareRam(src, dst);
        const at = async (vm: typeof src, page: number) => Buffer.from(await vm.vm.readPhys(page, PAGE));
        const page = proxy.mutated?.page;
        return {
          cmp,
          mutated: proxy.mutated,
          connections: proxy.connections,
          srcPage: page === undefined ? null : await at(src, page),
          dstPage: page === undefined ? null : await at(dst, page),
        };
      },
      { guestElf },
    );
  }

  it('identity: with no record matching, RAM is identical', async () => {
    // A candidate the guest never wrote: the mutator looks, holds back, and finds nothing.
    const r = await migrateThrough([0x0380_0000], { kind: 'corrupt-byte', offset: 0 });
    expect(r.mutated).toBeNull();
    expect(r.connections).toBe(1); // QEMU 7.2 precopy without multifd: one channel
    expect(r.cmp).toMatchObject({ identical: true, differingPages: 0, firstDifference: null });
  });

  it('corrupt-byte: exactly one page differs, at the candidate page plus the offset', async () => {
    const r = await migrateThrough(CANDIDATES, { kind: 'corrupt-byte', offset: 1234 });
    expect(r.mutated).not.toBeNull();
    const { page, before, after } = r.mutated!;
    expect(CANDIDATES).toContain(page);
    expect(r.cmp).toMatchObject({ identical: false, differingPages: 1, firstDifference: page + 1234 });
    expect(r.srcPage!.subarray(0, 8).equals(MAGIC)).toBe(true);
    expect([r.srcPage![1234], r.dstPage![1234]]).toEqual([before, after]);
    expect(diffPositions(r.srcPage!, r.dstPage!)).toEqual([1234]);
  });

  it('replay-stale: the page the guest keeps changing (its mailbox) loads stale, and only that page differs', async () => {
    // The mailbox starts with its magic and ABI version and holds every thread's ops_done.
    const r = await withVms(
      { src: { config: defaultMachineConfig(), program: MAGIC_THEN_DIRTY }, dst: { config: defaultMachineConfig(), incoming: 'defer' } },
      async ({ src, dst }) => {
        await src.untilMarker(0, 7n);
        const via = interceptMigration({ pages: [LAYOUT.mailbox], magic: MAILBOX_HEAD, mutation: { kind: 'replay-stale' } });
        expect((await src.migrateTo(dst, { resume: false, intercept: via.intercept, parameters: { 'downtime-limit': 300 } })).status).toBe('completed');
        const [s, d] = [(await src.vm.readMailbox()).threads[0]!, (await dst.vm.readMailbox()).threads[0]!];
        return { cmp: await compareRam(src, dst), mutated: via.proxy!.mutated, srcOps: s.ops_done!, dstOps: d.ops_done! };
      },
      { guestElf },
    );
    expect(r.mutated).toMatchObject({ page: LAYOUT.mailbox, kind: 'replay-stale' });
    expect(r.mutated!.replays).toBeGreaterThan(0);
    expect(r.cmp).toMatchObject({ identical: false, differingPages: 1 });
    expect(r.cmp.firstDifference! & ~(PAGE - 1)).toBe(LAYOUT.mailbox);
    expect(r.dstOps).toBeLessThan(r.srcOps); // the copy sent first, before the guest went on
  });

  it('drop-record: exactly one page differs, and the destination never got it (zero)', async () => {
    const r = await migrateThrough(CANDIDATES, { kind: 'drop-record' });
    expect(r.mutated).not.toBeNull();
    const { page } = r.mutated!;
    expect(CANDIDATES).toContain(page);
    expect(r.cmp).toMatchObject({ identical: false, differingPages: 1, firstDifference: page });
    expect(r.srcPage!.subarray(0, 8).equals(MAGIC)).toBe(true);
    expect(r.dstPage!.equals(Buffer.alloc(PAGE))).toBe(true);
  });
});
