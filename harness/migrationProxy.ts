/**
 * A man-in-the-middle for a QEMU live-migration stream, for the sensitivity tests: an oracle that
 * says "the destination's RAM equals the source's" is only worth something if it can fail, and the
 * cheapest way to make it fail on real QEMU/KVM is to damage exactly one RAM page on the wire. The
 * proxy sits between the source and the destination's `migrate-incoming unix:PATH` socket, applies
 * ONE mutation to ONE page record of a page the test chose, and passes every other byte through
 * unchanged, in both directions (the destination's return path included), so the migration itself
 * still completes and only the oracle can tell. Or it REPLAYS one: it keeps the first record of
 * the page and sends that stale copy again right after every later record of the same page, so
 * the destination's last word on a page the guest keeps changing (its mailbox) is an old one.
 *
 * The stream format it relies on (QEMU 7.2 precopy; no multifd, xbzrle or compression), from
 * migration/ram.c save_page_header / save_normal_page and ram_load_precopy: inside a RAM section a
 * normal page is a big-endian u64 `(offset_in_block & TARGET_PAGE_MASK) | flags` followed by the
 * 4096 page bytes. When the page is of the same RAM block as the record before it the header carries
 * RAM_SAVE_FLAG_CONTINUE (0x20) and nothing else comes between header and data; otherwise a length
 * byte and the block's idstr do. We do not parse the stream (sections, device state and the other
 * record kinds have formats of their own that we would have to track exactly); instead the guest
 * writes a known 8-byte magic at offset 0 of each candidate page, and a record is recognised by the
 * magic preceded by a header of exactly PAGE|CONTINUE (0x28) whose offset is one of the candidates.
 * Records without CONTINUE (idstr before the data) fail that test and are left alone, which is why
 * a caller gives several candidate pages. On microvm the main RAM block ("ram0") starts at guest-
 * physical 0, so a low-RAM page's offset in the block is its guest-physical address.
 */
import { lstat, unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

export type PageMutation =
  | { kind: 'corrupt-byte'; offset: number } // XOR 0xff into byte `offset` (0..4095) of the page data
  | { kind: 'drop-record' } // remove the whole record (8-byte header + 4096 data bytes)
  // keep a copy of the first record and send it again right after every later record of that page:
  // the destination loads the stale copy last (for a page the guest keeps changing)
  | { kind: 'replay-stale' };

export interface StreamProxyOptions {
  /** unix socket path to listen on (inside a private 0700 dir the caller owns) */
  readonly listenPath: string;
  /** unix socket path the destination QEMU listens on (migrate-incoming unix:PATH) */
  readonly targetPath: string;
  /** guest-physical addresses (4 KiB aligned) of candidate pages; the first record found for any of them is mutated */
  readonly pages: readonly number[];
  /** 8 bytes the guest wrote at offset 0 of each candidate page, used to find the record in the stream */
  readonly magic: Buffer;
  readonly mutation: PageMutation;
}

/** What the mutator did to the stream. */
export interface MutationDone {
  /** The candidate page whose record was mutated. */
  readonly page: number;
  /** Where the record's 8-byte header starts in the source's stream (bytes from its start, before any mutation). */
  readonly streamOffset: number;
  readonly kind: PageMutation['kind'];
  /** corrupt-byte: the byte before and after the XOR. */
  readonly before?: number;
  readonly after?: number;
  /** replay-stale: how many times the stale copy went out again (after each later record of the page). */
  readonly replays?: number;
}

export interface StreamProxy {
  readonly uri: string; // `unix:${listenPath}`
  /** what was done: null until the mutation happened */
  readonly mutated: MutationDone | null;
  /** Bytes written towards the destination (source → destination, every connection, after the mutation). */
  readonly bytesForwarded: number;
  /** Bytes written back towards the source (the destination's return path, every connection). */
  readonly bytesReturned: number;
  /** How many connections the source opened (QEMU 7.2 precopy without multifd: one). */
  readonly connections: number;
  close(): Promise<void>; // closes server and all sockets, removes listenPath; idempotent
}

export const TARGET_PAGE_BYTES = 4096;
export const RAM_SAVE_FLAG_PAGE = 0x08;
export const RAM_SAVE_FLAG_CONTINUE = 0x20;
const HEADER_BYTES = 8;
const FLAGS_MASK = 0xfffn;
const WANT_FLAGS = BigInt(RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE);

/**
 * The pure part: a stateful transform of the source → destination byte stream, fed in whatever
 * chunks the socket delivers. Until it has mutated it holds back the last HOLD bytes, so that a
 * record whose header, magic or page data straddles chunk boundaries is still whole in its buffer
 * when recognised (a magic first seen at the very end needs its 8 header bytes behind it and its
 * 4096 data bytes ahead). After the mutation it passes chunks straight through: one page, once.
 * Bytes come out in order and exactly once (but for a dropped record); end() gives back whatever
 * is still held, so a stream with no match is delayed, never stuck.
 */
export class PageRecordMutator {
  private readonly pages: ReadonlySet<bigint>;
  private readonly magic: Buffer;
  private readonly mutation: PageMutation;
  /** Bytes not yet handed out, starting at stream offset `heldAt`. */
  private held: Buffer = Buffer.alloc(0);
  private heldAt = 0;
  /** Every magic starting in `held` before this index has been judged (and rejected). */
  private scanFrom = 0;
  private result: MutationDone | null = null;
  private ended = false;
  /** replay-stale: the first record found (header and data), and how often it went out again. */
  private stale: Buffer | null = null;
  private replays = 0;
  /** What must stay held: a header (replay-stale: and an idstr), a page of data, and a magic's worth for a match still arriving. */
  private readonly hold: number;
  private readonly idstrRoom: number;

  constructor(o: Pick<StreamProxyOptions, 'pages' | 'magic' | 'mutation'>) {
    if (o.magic.length !== 8) throw new Error(`the magic must be 8 bytes (got ${o.magic.length})`);
    for (const p of o.pages) {
      if (!Number.isSafeInteger(p) || p < 0 || p % TARGET_PAGE_BYTES !== 0) throw new Error(`candidate page 0x${p.toString(16)} is not a 4 KiB aligned address`);
    }
    if (o.mutation.kind === 'corrupt-byte') {
      const off = o.mutation.offset;
      if (!Number.isInteger(off) || off < 0 || off >= TARGET_PAGE_BYTES) throw new Error(`corrupt-byte offset ${off} is outside the page (0..4095)`);
    } else if (o.mutation.kind !== 'drop-record' && o.mutation.kind !== 'replay-stale') {
      throw new Error(`unknown mutation ${(o.mutation as { kind: string }).kind}`);
    }
    this.pages = new Set(o.pages.map(BigInt));
    this.magic = Buffer.from(o.magic);
    this.mutation = o.mutation;
    this.idstrRoom = o.mutation.kind === 'replay-stale' ? 256 : 0;
    this.hold = HEADER_BYTES + this.idstrRoom + TARGET_PAGE_BYTES + this.magic.length;
  }

  /**
   * Where the header of a record whose data starts at held[at] is, or -1: right before it with
   * PAGE|CONTINUE, or (replay-stale only) PAGE alone with a block idstr between (u8 length, name):
   * the first page of a block after a page of another, as each later pass of QEMU's RAM begins
   * once the bulk stage sent the ROM blocks. Corrupting or dropping such a record would leave the
   * next CONTINUE in the wrong block, so only a replay, which adds a CONTINUE copy after it, uses it.
   */
  private headerOf(at: number): number {
    if (at >= HEADER_BYTES && this.accepts(this.held.readBigUInt64BE(at - HEADER_BYTES))) return at - HEADER_BYTES;
    for (let n = 1; n <= this.idstrRoom - 1 && at - 1 - n - HEADER_BYTES >= 0; n++) {
      if (this.held[at - 1 - n] !== n) continue;
      const h = this.held.readBigUInt64BE(at - 1 - n - HEADER_BYTES);
      if ((h & FLAGS_MASK) === BigInt(RAM_SAVE_FLAG_PAGE) && this.pages.has(h & ~FLAGS_MASK)) return at - 1 - n - HEADER_BYTES;
    }
    return -1;
  }

  get mutated(): MutationDone | null {
    return this.result && this.mutation.kind === 'replay-stale' ? { ...this.result, replays: this.replays } : this.result;
  }

  /** Feed the next chunk of the stream; returns the bytes that may go on now (possibly none). */
  push(chunk: Buffer): Buffer {
    if (this.ended) throw new Error('PageRecordMutator: push after end');
    // replay-stale watches the whole stream for later records of its page; the others mutate once.
    if ((this.result && this.mutation.kind !== 'replay-stale') || this.pages.size === 0) return chunk;
    // Always a copy: the mutation writes into it, and the caller's chunk stays as it was.
    this.held = Buffer.concat([this.held, chunk]);
    const outs: Buffer[] = [];
    for (;;) {
      const at = this.held.indexOf(this.magic, this.scanFrom);
      if (at < 0) {
        this.scanFrom = Math.max(this.scanFrom, this.held.length - this.magic.length + 1);
        break;
      }
      // A match with no room for a header behind it can only be at the stream's very start.
      const headerAt = this.headerOf(at);
      if (headerAt < 0) {
        this.scanFrom = at + 1;
        continue;
      }
      if (this.held.length < at + TARGET_PAGE_BYTES) {
        this.scanFrom = at; // judge it again once its page data is all here
        break;
      }
      if (this.mutation.kind !== 'replay-stale') return this.apply(at);
      outs.push(this.replay(at, headerAt));
    }
    // Keep the last `hold` bytes, and never a header (and idstr) of a magic still to be judged.
    const cut = Math.max(0, Math.min(this.held.length - this.hold, this.scanFrom - HEADER_BYTES - this.idstrRoom));
    outs.push(this.held.subarray(0, cut));
    this.held = this.held.subarray(cut);
    this.heldAt += cut;
    this.scanFrom -= cut;
    return outs.length === 1 ? outs[0]! : Buffer.concat(outs);
  }

  /**
   * replay-stale, at a record whose magic is at held[at] (header at held[headerAt], page held):
   * the first one is kept and goes on unchanged; after each later one of the same page the kept
   * copy goes out again (as PAGE|CONTINUE, valid: the record before it is of the same block). Lets
   * go of everything up to the record's end and keeps scanning the rest.
   */
  private replay(at: number, headerAt: number): Buffer {
    const end = at + TARGET_PAGE_BYTES;
    const page = Number(this.held.readBigUInt64BE(headerAt) & ~FLAGS_MASK);
    let out = this.held.subarray(0, end);
    if (!this.stale) {
      // Kept as PAGE|CONTINUE: it always follows a record of its own block.
      this.stale = Buffer.alloc(HEADER_BYTES + TARGET_PAGE_BYTES);
      this.stale.writeBigUInt64BE(BigInt(page) | WANT_FLAGS);
      this.held.copy(this.stale, HEADER_BYTES, at, end);
      this.result = { page, streamOffset: this.heldAt + headerAt, kind: 'replay-stale' };
    } else if (page === this.result!.page) {
      out = Buffer.concat([out, this.stale]);
      this.replays++;
    }
    this.held = this.held.subarray(end);
    this.heldAt += end;
    this.scanFrom = 0;
    return out;
  }

  /** The stream ended: everything still held, unchanged (a record cut short is not mutated). */
  end(): Buffer {
    this.ended = true;
    const out = this.held;
    this.heldAt += out.length;
    this.held = Buffer.alloc(0);
    this.scanFrom = 0;
    return out;
  }

  private accepts(header: bigint): boolean {
    return (header & FLAGS_MASK) === WANT_FLAGS && this.pages.has(header & ~FLAGS_MASK);
  }

  /** Mutate the record whose magic is at held[at] (its header and whole page are held) and let everything go. */
  private apply(at: number): Buffer {
    const headerAt = at - HEADER_BYTES;
    const page = Number(this.held.readBigUInt64BE(headerAt) & ~FLAGS_MASK);
    const streamOffset = this.heldAt + headerAt;
    let out: Buffer;
    if (this.mutation.kind === 'corrupt-byte') {
      const i = at + this.mutation.offset;
      const before = this.held[i]!;
      this.held[i] = before ^ 0xff;
      this.result = { page, streamOffset, kind: 'corrupt-byte', before, after: this.held[i]! };
      out = this.held;
    } else {
      out = Buffer.concat([this.held.subarray(0, headerAt), this.held.subarray(at + TARGET_PAGE_BYTES)]);
      this.result = { page, streamOffset, kind: 'drop-record' };
    }
    this.heldAt += this.held.length;
    this.held = Buffer.alloc(0);
    this.scanFrom = 0;
    return out;
  }
}

/**
 * Listen on `listenPath` and relay every connection to `targetPath`. Only the first connection's
 * source → destination stream goes through a PageRecordMutator (it is the one carrying RAM; QEMU
 * may open more channels, and those pass unchanged). A path that already exists is refused rather
 * than unlinked: it lives in a directory the caller owns, and something there is a bug to see.
 */
export async function startStreamProxy(o: StreamProxyOptions): Promise<StreamProxy> {
  if (Buffer.byteLength(o.listenPath) > 107) throw new Error(`the proxy socket path is too long for a unix socket: ${o.listenPath}`);
  const exists = await lstat(o.listenPath).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
  if (exists) throw new Error(`refusing to listen on ${o.listenPath}: it already exists`);
  // Built now, so that bad options are refused before anything listens.
  const mutator = new PageRecordMutator(o);

  const sockets = new Set<Socket>();
  let connections = 0;
  let bytesForwarded = 0;
  let bytesReturned = 0;
  let closing: Promise<void> | null = null;

  const relay = (src: Socket) => {
    const n = connections++;
    const m = n === 0 ? mutator : null;
    const dst = createConnection({ path: o.targetPath });
    for (const s of [src, dst]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    const kill = () => {
      src.destroy();
      dst.destroy();
    };
    src.on('error', kill);
    dst.on('error', kill);

    // Source → destination, through the mutator, with backpressure.
    src.on('data', (chunk: Buffer) => {
      const out = m ? m.push(chunk) : chunk;
      if (out.length === 0) return;
      bytesForwarded += out.length;
      if (!dst.write(out)) src.pause();
    });
    dst.on('drain', () => src.resume());
    // The source has sent everything: flush what the mutator held, then end gracefully (a
    // destroy here could discard the stream's last bytes, the device state, still buffered).
    src.on('end', () => {
      const rest = m ? m.end() : Buffer.alloc(0);
      bytesForwarded += rest.length;
      dst.end(rest);
    });

    // Destination → source (the return path), unchanged.
    dst.on('data', (chunk: Buffer) => {
      bytesReturned += chunk.length;
      if (!src.write(chunk)) dst.pause();
    });
    src.on('drain', () => dst.resume());
    dst.on('end', () => src.end());

    // Once the destination is gone there is nobody left to relay for; a source that closed with
    // an error takes its destination with it (a clean close was handled by 'end' above).
    dst.on('close', () => src.destroy());
    src.on('close', (hadError) => {
      if (hadError) dst.destroy();
    });
  };

  const server: Server = createServer({ allowHalfOpen: true }, relay);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.listenPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', () => undefined); // after listening: nothing left for it to report

  return {
    uri: `unix:${o.listenPath}`,
    get mutated() {
      return mutator.mutated;
    },
    get bytesForwarded() {
      return bytesForwarded;
    },
    get bytesReturned() {
      return bytesReturned;
    },
    get connections() {
      return connections;
    },
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((r) => server.close(() => r()));
        for (const s of sockets) s.destroy();
        await closed;
        // server.close() removes the path itself on Linux; tolerate its being gone already.
        await unlink(o.listenPath).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'ENOENT') throw e;
        });
      })();
      return closing;
    },
  };
}

/**
 * For MigrateOptions.intercept (harness/session.ts): a proxy listening in the destination's
 * private directory, relaying to the socket the destination listens on. `proxy` is the one started
 * by the last migration (null before), for the test to read `mutated` afterwards.
 */
export function interceptMigration(o: Pick<StreamProxyOptions, 'pages' | 'magic' | 'mutation'> & { readonly socketName?: string }): {
  readonly intercept: (dstUri: string, dstDir: string) => Promise<StreamProxy>;
  readonly proxy: StreamProxy | null;
} {
  let proxy: StreamProxy | null = null;
  return {
    intercept: async (dstUri, dstDir) => {
      if (!dstUri.startsWith('unix:')) throw new Error(`the migration proxy relays unix sockets only, not ${dstUri}`);
      proxy = await startStreamProxy({
        listenPath: join(dstDir, o.socketName ?? 'proxy.sock'),
        targetPath: dstUri.slice('unix:'.length),
        pages: o.pages,
        magic: o.magic,
        mutation: o.mutation,
      });
      return proxy;
    },
    get proxy() {
      return proxy;
    },
  };
}
