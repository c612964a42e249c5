import { describe, expect, it } from 'vitest';
import {
  OPS,
  OPS_HASH,
  OP_BY_CODE,
  STRING_GUARD_BYTES,
  fnv1a32,
  opsTableText,
  recordBytes,
  recordsOf,
  stringBufferBytes,
  type Op,
  type OpDef,
  type OpName,
} from '../ir/ops.js';
import { DEFAULT_CANARY, type Program } from '../ir/program.js';
import { decodeRecords, encodeOps, encodeProgram, opIndexAtOffset, threadRecordBytes } from './bytecode.js';
import { GUEST_ABI_VERSION, LAYOUT, PROGRAM_FLAGS, PROGRAM_MAGIC, readStruct, structBytes } from './guest/abi.js';

const bytes = (...b: number[]) => Uint8Array.from(b);
/** Ops the type system would reject, for the encoder's run-time checks. */
const untyped = (o: Record<string, unknown>) => o as unknown as Op;

describe('encodeOps', () => {
  it('writes the opcode, then the operands little-endian and packed', () => {
    expect(encodeOps([{ op: 'cpuid', leaf: 0x12345678, subleaf: 0xd, cpl: 3 }])).toEqual(
      bytes(0x01, 0x78, 0x56, 0x34, 0x12, 0x0d, 0, 0, 0, 0x03),
    );
    expect(encodeOps([{ op: 'pioIn', port: 0x3f8, width: 1 }])).toEqual(bytes(0x10, 0xf8, 0x03, 0x01));
    expect(encodeOps([{ op: 'mmioRead', addr: 0xfee00030n, width: 4 }])).toEqual(
      bytes(0x12, 0x30, 0x00, 0xe0, 0xfe, 0, 0, 0, 0, 0x04),
    );
    expect(encodeOps([{ op: 'waitIrq', vector: 0x20, count: 2, timeoutCycles: 0x0102030405060708n }])).toEqual(
      bytes(0x26, 0x20, 0x02, 0, 0, 0, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01),
    );
    expect(encodeOps([{ op: 'end' }])).toEqual(bytes(0x00));
  });

  it('concatenates ops with no padding between them', () => {
    const code = encodeOps([{ op: 'sti' }, { op: 'pioIns', port: 0x60, width: 2, count: 0x102 }, { op: 'rdtsc' }, { op: 'loopEnd' }]);
    expect(code).toEqual(bytes(0x24, 0x11, 0x60, 0x00, 0x02, 0x02, 0x01, 0x22, 0x41));
  });

  it('writes full-range u64 operands', () => {
    const code = encodeOps([{ op: 'mark', value: 0xffff_ffff_ffff_ffffn }]);
    expect(code).toEqual(bytes(0x43, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff));
  });

  it('rejects u8/u16/u32 operands out of range, negative or not integers', () => {
    expect(() => encodeOps([{ op: 'pioIn', port: 0x3f8, width: 256 }])).toThrow(/pioIn\.width: expected a u8/);
    expect(() => encodeOps([{ op: 'pioIn', port: 0x10000, width: 1 }])).toThrow(/pioIn\.port: expected a u16/);
    expect(() => encodeOps([{ op: 'cpuid', leaf: 2 ** 32, subleaf: 0, cpl: 3 }])).toThrow(/cpuid\.leaf: expected a u32/);
    expect(() => encodeOps([{ op: 'cpuid', leaf: -1, subleaf: 0, cpl: 3 }])).toThrow(RangeError);
    expect(() => encodeOps([{ op: 'cpuid', leaf: 1.5, subleaf: 0, cpl: 3 }])).toThrow(RangeError);
    expect(() => encodeOps([untyped({ op: 'cpuid', leaf: 1n, subleaf: 0, cpl: 3 })])).toThrow(/cpuid\.leaf/);
    expect(() => encodeOps([untyped({ op: 'cpuid', leaf: 1 })])).toThrow(/cpuid\.subleaf: expected a u32, got undefined/);
    // The largest values of each type are fine.
    expect(() => encodeOps([{ op: 'pioIns', port: 0xffff, width: 0xff, count: 0xffff }])).not.toThrow();
    expect(() => encodeOps([{ op: 'cpuid', leaf: 0xffff_ffff, subleaf: 0xffff_ffff, cpl: 3 }])).not.toThrow();
  });

  it('requires u64 operands to be non-negative bigints below 2^64', () => {
    expect(() => encodeOps([untyped({ op: 'mmioRead', addr: 0x1000, width: 1 })])).toThrow(/mmioRead\.addr: expected a u64 bigint/);
    expect(() => encodeOps([{ op: 'mmioRead', addr: -1n, width: 1 }])).toThrow(RangeError);
    expect(() => encodeOps([{ op: 'mmioRead', addr: 1n << 64n, width: 1 }])).toThrow(RangeError);
  });
});

describe('opIndexAtOffset', () => {
  // cpuid (10 bytes) @0, sti (1) @10, pioIn (4) @11, end (1) @15; 16 bytes in all.
  const ops: Op[] = [{ op: 'cpuid', leaf: 0, subleaf: 0, cpl: 3 }, { op: 'sti' }, { op: 'pioIn', port: 0x80, width: 1 }, { op: 'end' }];

  it('maps the start of each op to its index', () => {
    expect([0, 10, 11, 15].map((pc) => opIndexAtOffset(ops, pc))).toEqual([0, 1, 2, 3]);
  });

  it('maps an offset inside an op to that op, and one past the code to -1', () => {
    expect(opIndexAtOffset(ops, 5)).toBe(0);
    expect(opIndexAtOffset(ops, 13)).toBe(2);
    expect(opIndexAtOffset(ops, 16)).toBe(-1);
    expect(opIndexAtOffset([], 0)).toBe(-1);
  });
});

describe('threadRecordBytes', () => {
  const cpuid: Op = { op: 'cpuid', leaf: 1, subleaf: 0, cpl: 3 }; // 8 + 40
  const rdtsc: Op = { op: 'rdtsc' }; // 8 + 8

  it('adds up the records of straight-line code, skipping ops that record nothing', () => {
    expect(threadRecordBytes([cpuid, { op: 'sti' }, rdtsc, { op: 'mark', value: 1n }], 0)).toBe(48 + 16);
  });

  it('multiplies loop bodies, nested loops included', () => {
    const ops: Op[] = [
      { op: 'loopBegin', count: 3 },
      rdtsc,
      { op: 'loopBegin', count: 2 },
      cpuid,
      { op: 'loopEnd' },
      { op: 'loopEnd' },
      rdtsc,
    ];
    expect(threadRecordBytes(ops, 0)).toBe(3 * (16 + 2 * 48) + 16);
  });

  it('gives an open loop (count 0) the open-loop budget, unless its body records nothing', () => {
    expect(threadRecordBytes([{ op: 'loopBegin', count: 0 }, rdtsc, { op: 'loopEnd' }, cpuid], 1000)).toBe(1000 + 48);
    expect(threadRecordBytes([{ op: 'loopBegin', count: 0 }, { op: 'mark', value: 1n }, { op: 'loopEnd' }], 1000)).toBe(0);
    // An open loop inside a counted one: the budget per iteration.
    expect(threadRecordBytes([{ op: 'loopBegin', count: 2 }, { op: 'loopBegin', count: 0 }, rdtsc, { op: 'loopEnd' }, { op: 'loopEnd' }], 1000)).toBe(2000);
  });

  it('counts string buffers (guards and 8-byte rounding included)', () => {
    // 8 header + 16 fields + roundUp8(2*16 + 2*3) = 40
    expect(threadRecordBytes([{ op: 'pioIns', port: 0x60, width: 2, count: 3 }], 0)).toBe(8 + 16 + 40);
  });

  it('rejects unbalanced loops', () => {
    expect(() => threadRecordBytes([{ op: 'loopEnd' }], 0)).toThrow(/loopEnd without loopBegin/);
    expect(() => threadRecordBytes([{ op: 'loopBegin', count: 2 }, rdtsc], 0)).toThrow(/loopBegin without loopEnd/);
  });
});

describe('encodeProgram', () => {
  const HEADER = structBytes('prog_header');
  const DESC = structBytes('thread_desc');
  const t0: Op[] = [{ op: 'cpuid', leaf: 0, subleaf: 0, cpl: 3 }, { op: 'rdtsc' }];
  const t1: Op[] = [{ op: 'loopBegin', count: 100 }, { op: 'cpuid', leaf: 7, subleaf: 0, cpl: 3 }, { op: 'loopEnd' }];
  const program: Program = { threads: [t0, t1], canary: DEFAULT_CANARY, x2apic: true, ring0: true, mapLimit: 1n << 36n };

  it('writes the header fields', () => {
    const { image } = encodeProgram(program);
    expect(new TextDecoder().decode(image.subarray(0, 4))).toBe('KVMP');
    const h = readStruct('prog_header', image);
    expect(h).toMatchObject({
      magic: BigInt(PROGRAM_MAGIC),
      abi: BigInt(GUEST_ABI_VERSION),
      ops_hash: BigInt(OPS_HASH),
      nthreads: 2n,
      canary: DEFAULT_CANARY,
      flags: PROGRAM_FLAGS.x2apic | PROGRAM_FLAGS.ring0 | PROGRAM_FLAGS.holdExit,
      map_limit: 1n << 36n,
    });
  });

  it('sets only holdExit and map_limit 0 by default', () => {
    const h = readStruct('prog_header', encodeProgram({ threads: [t0], canary: 1n }).image);
    expect(h.flags).toBe(PROGRAM_FLAGS.holdExit);
    expect(h.map_limit).toBe(0n);
    const flags = (over: Partial<Program>) => readStruct('prog_header', encodeProgram({ threads: [t0], canary: 1n, holdExit: false, ...over }).image).flags;
    expect(flags({})).toBe(0n);
    expect(flags({ x2apic: true })).toBe(PROGRAM_FLAGS.x2apic);
    expect(flags({ ring0: true })).toBe(PROGRAM_FLAGS.ring0);
  });

  it('describes each thread: its code after the descriptors, and a page-aligned observation region', () => {
    const { image, regions, minRamMiB } = encodeProgram(program);
    const codes = [encodeOps(t0), encodeOps(t1)];
    const lens = [threadRecordBytes(t0, 0), threadRecordBytes(t1, 0)];
    expect(lens).toEqual([48 + 16, 100 * 48]);
    const d0 = readStruct('thread_desc', image, HEADER);
    const d1 = readStruct('thread_desc', image, HEADER + DESC);
    expect(d0).toEqual({ code_off: BigInt(HEADER + 2 * DESC), code_len: BigInt(codes[0]!.length), obs_addr: BigInt(LAYOUT.observations), obs_len: BigInt(lens[0]!) });
    expect(d1).toEqual({
      code_off: BigInt(HEADER + 2 * DESC + codes[0]!.length),
      code_len: BigInt(codes[1]!.length),
      obs_addr: BigInt(LAYOUT.observations + 4096),
      obs_len: BigInt(lens[1]!),
    });
    const codeOf = (d: Record<string, bigint>) => image.subarray(Number(d.code_off), Number(d.code_off! + d.code_len!));
    expect(codeOf(d0)).toEqual(codes[0]);
    expect(codeOf(d1)).toEqual(codes[1]);
    expect(image.length).toBe(HEADER + 2 * DESC + codes[0]!.length + codes[1]!.length);
    expect(regions).toEqual([
      { addr: LAYOUT.observations, len: lens[0] },
      { addr: LAYOUT.observations + 4096, len: lens[1] },
    ]);
    for (const r of regions) expect(r.addr % 4096).toBe(0);
    expect(minRamMiB).toBe(LAYOUT.minRamMiB);
  });

  it('raises minRamMiB to hold every observation region', () => {
    const open: Op[] = [{ op: 'loopBegin', count: 0 }, { op: 'rdtsc' }, { op: 'loopEnd' }];
    const { regions, minRamMiB } = encodeProgram({ threads: [open, open], canary: 1n, openLoopRecordBytes: 32 << 20 });
    expect(regions).toEqual([
      { addr: LAYOUT.observations, len: 32 << 20 },
      { addr: LAYOUT.observations + (32 << 20), len: 32 << 20 },
    ]);
    // Regions end at 16 + 64 = 80 MiB.
    expect(minRamMiB).toBe(81);
  });

  it('rejects 0 or more than 16 threads', () => {
    expect(() => encodeProgram({ threads: [], canary: 1n })).toThrow(/1\.\.16 threads, got 0/);
    expect(() => encodeProgram({ threads: Array.from({ length: 17 }, () => t0), canary: 1n })).toThrow(/got 17/);
    expect(() => encodeProgram({ threads: Array.from({ length: 16 }, () => t0), canary: 1n })).not.toThrow();
  });

  it('rejects a program larger than the guest takes', () => {
    // dirtyPages is 17 bytes and records nothing: 250k of them are 4.25 MB > LAYOUT.programMax.
    const big: Op[] = new Array<Op>(250_000).fill({ op: 'dirtyPages', base: 0x200000n, pages: 1, stride: 4096 });
    expect(() => encodeProgram({ threads: [big], canary: 1n })).toThrow(new RegExp(`the guest takes at most ${LAYOUT.programMax}`));
  });
});

/** Builds an observation stream the way the guest writes it. */
class Stream {
  readonly bytes = new Uint8Array(4096);
  private readonly view = new DataView(this.bytes.buffer);
  at = 0;
  header(opcode: number, faultVector = 0xff, flags = 0, errorCode = 0): this {
    this.view.setUint8(this.at, opcode);
    this.view.setUint8(this.at + 1, faultVector);
    this.view.setUint16(this.at + 2, flags, true);
    this.view.setUint32(this.at + 4, errorCode, true);
    this.at += 8;
    return this;
  }
  u64(v: bigint): this {
    this.view.setBigUint64(this.at, v, true);
    this.at += 8;
    return this;
  }
  u32(v: number): this {
    this.view.setUint32(this.at, v, true);
    this.at += 4;
    return this;
  }
  raw(b: Uint8Array): this {
    this.bytes.set(b, this.at);
    this.at += b.length;
    return this;
  }
}

describe('decodeRecords', () => {
  const ops: Op[] = [
    { op: 'cpuid', leaf: 1, subleaf: 0, cpl: 3 }, // 0
    { op: 'mark', value: 7n }, // 1: no record
    { op: 'pioIn', port: 0x60, width: 1 }, // 2
    { op: 'pioIns', port: 0x3f8, width: 1, count: 3 }, // 3
    { op: 'loopBegin', count: 3 }, // 4
    { op: 'rdtsc' }, // 5
    { op: 'loopEnd' }, // 6
  ];
  const pioInsBuffer = Uint8Array.from({ length: stringBufferBytes(1, 3) }, (_, i) => (i >= STRING_GUARD_BYTES && i < STRING_GUARD_BYTES + 3 ? 0x41 + i : 0xb4));

  function stream(): Stream {
    const s = new Stream();
    s.header(OPS.cpuid.code).u64(0x50657n).u64(0x00020800n).u64(0xfffa3203n).u64(0x0f8bfbffn).u32(0x40).u32(0);
    s.header(OPS.pioIn.code, 13, 0x1, 0x1234).u64(0xc3a596e15a7de8aan);
    s.header(OPS.pioIns.code).u64(0n).u64(3n).raw(pioInsBuffer);
    for (const tsc of [1000n, 2000n, 3000n]) s.header(OPS.rdtsc.code).u64(tsc);
    return s;
  }

  it('reads one record per recording op, loops unrolled', () => {
    const s = stream();
    expect(s.at).toBe(threadRecordBytes(ops, 0));
    const recs = decodeRecords(ops, s.bytes, s.at);
    expect(recs.map((r) => [r.index, r.opIndex, r.op.op])).toEqual([
      [0, 0, 'cpuid'],
      [2, 2, 'pioIn'],
      [3, 3, 'pioIns'],
      [4, 5, 'rdtsc'],
      [5, 5, 'rdtsc'],
      [6, 5, 'rdtsc'],
    ]);
    expect(recs[0]).toMatchObject({
      faultVector: null,
      flags: 0,
      errorCode: 0,
      fields: { rax: 0x50657n, rbx: 0x00020800n, rcx: 0xfffa3203n, rdx: 0x0f8bfbffn, clobbered: 0x40n, pad: 0n },
    });
    expect(recs[0]!.buffer).toBeUndefined();
    expect(recs[1]).toMatchObject({ faultVector: 13, flags: 1, errorCode: 0x1234, fields: { rax: 0xc3a596e15a7de8aan } });
    expect(recs[2]!.fields).toEqual({ rcx: 0n, rdiDelta: 3n });
    expect(recs[2]!.buffer).toEqual(pioInsBuffer);
    expect(recordsOf(recs, 'rdtsc').map((r) => r.fields.tsc)).toEqual([1000n, 2000n, 3000n]);
    // Each record carries the op that produced it.
    expect(recs[0]!.op).toBe(ops[0]);
    expect(recs[5]!.op).toBe(ops[5]);
  });

  it('stops at the bytes used', () => {
    const s = stream();
    expect(decodeRecords(ops, s.bytes, 48 + 16 + 64).map((r) => r.op.op)).toEqual(['cpuid', 'pioIn', 'pioIns']);
    expect(decodeRecords(ops, s.bytes, 0)).toEqual([]);
  });

  it('decodes an open loop for as long as records were written', () => {
    const s = new Stream();
    for (let i = 0; i < 5; i++) s.header(OPS.rdtsc.code).u64(BigInt(i));
    const recs = decodeRecords([{ op: 'loopBegin', count: 0 }, { op: 'rdtsc' }, { op: 'loopEnd' }], s.bytes, s.at);
    expect(recordsOf(recs, 'rdtsc').map((r) => [r.index, r.fields.tsc])).toEqual([0, 1, 2, 3, 4].map((i) => [i, BigInt(i)]));
  });

  it('works on a view into a larger buffer', () => {
    const s = stream();
    const big = new Uint8Array(8 + s.at);
    big.set(s.bytes.subarray(0, s.at), 8);
    expect(decodeRecords(ops, big.subarray(8), s.at)).toEqual(decodeRecords(ops, s.bytes, s.at));
  });

  it('rejects a record with the wrong opcode', () => {
    const s = stream();
    s.bytes[48] = OPS.mmioRead.code;
    expect(() => decodeRecords(ops, s.bytes, s.at)).toThrow(/record at byte 48 has opcode 0x12 \(mmioRead\), expected pioIn/);
    s.bytes[48] = 0xee;
    expect(() => decodeRecords(ops, s.bytes, s.at)).toThrow(/opcode 0xee \(\?\)/);
  });

  it('rejects a record cut short', () => {
    const s = stream();
    expect(() => decodeRecords(ops, s.bytes, s.at - 4)).toThrow(/record of op 6 \(rdtsc\) is cut short at byte 160 of 172/);
  });
});

/** One op of each kind with small valid operands. */
function sampleOp(name: OpName): Op {
  const def: OpDef = OPS[name];
  const o: Record<string, unknown> = { op: name };
  for (const [field, type] of def.operands) o[field] = type === 'u64' ? 0x1000n : field === 'width' ? 4 : 3;
  return o as unknown as Op;
}

describe('the op table', () => {
  const names = Object.keys(OPS) as OpName[];

  it('has unique one-byte codes, and OP_BY_CODE inverts them', () => {
    const codes = names.map((n) => OPS[n].code);
    expect(new Set(codes).size).toBe(codes.length);
    for (const n of names) {
      expect(OPS[n].code).toBeGreaterThanOrEqual(0);
      expect(OPS[n].code).toBeLessThan(256);
      expect(OP_BY_CODE.get(OPS[n].code)).toBe(n);
    }
  });

  it('gives every recording op a record of a multiple of 8 bytes, at least the header', () => {
    for (const n of names) {
      const o = sampleOp(n);
      const size = recordBytes(o);
      expect(size % 8, n).toBe(0);
      if (OPS[n].record) expect(size, n).toBeGreaterThanOrEqual(8);
      else expect(size, n).toBe(0);
      expect(encodeOps([o]).length, n).toBe(1 + OPS[n].operands.reduce((k, [, t]) => k + { u8: 1, u16: 2, u32: 4, u64: 8 }[t], 0));
    }
  });

  it('sizes string records by width and count', () => {
    expect(recordBytes({ op: 'mmioMovs', addr: 0n, width: 8, count: 5 })).toBe(8 + 24 + 2 * STRING_GUARD_BYTES + 40);
    expect(recordBytes({ op: 'pioIns', port: 0, width: 1, count: 1 })).toBe(8 + 16 + 40);
  });
});

describe('OPS_HASH', () => {
  it('is FNV-1a 32 of the table text', () => {
    expect(fnv1a32('')).toBe(0x811c9dc5);
    expect(fnv1a32('a')).toBe(0xe40c292c);
    expect(fnv1a32('foobar')).toBe(0xbf9cf968);
    expect(OPS_HASH).toBe(fnv1a32(opsTableText()));
  });

  it('is deterministic and lists every op with its operands and results', () => {
    const text = opsTableText();
    expect(opsTableText()).toBe(text);
    expect(text.split('\n')).toHaveLength(Object.keys(OPS).length);
    expect(text).toContain('pioIns=17;port:u16,width:u8,count:u16;rcx:u64,rdiDelta:u64;s');
    expect(text).toContain('sti=36;;-;');
  });

  it('changes when the table text changes', () => {
    const text = opsTableText();
    expect(fnv1a32(text.replace('cpuid=1;', 'cpuid=2;'))).not.toBe(OPS_HASH);
    expect(fnv1a32(text.replace('port:u16', 'port:u32'))).not.toBe(OPS_HASH);
    expect(fnv1a32(text + '\n')).not.toBe(OPS_HASH);
  });
});

describe('encodeProgram: self-checks (ir/checks.ts)', () => {
  const CHECK_BYTES = structBytes('check_desc');
  const ops: Op[] = [
    { op: 'cpuid', leaf: 1, subleaf: 0, cpl: 0 },
    { op: 'pioIns', port: 0x60, width: 1, count: 5 },
    { op: 'cpuid', leaf: 7, subleaf: 0, cpl: 0 },
  ];
  const p: Program = {
    threads: [ops, [{ op: 'cpuid', leaf: 1, subleaf: 0, cpl: 0 }]],
    canary: DEFAULT_CANARY,
    checks: [
      { kind: 'value', name: 'CPUID(0x1).EBX[31:24]', at: { thread: 0, record: 0, field: 'rbx' }, expected: 0x0100_0000n, mask: 0xff00_0000n },
      { kind: 'value', name: 'no fault\u00e9#x', at: { thread: 0, record: 2, field: 'faultVector' }, expected: 0xffn },
      { kind: 'same', name: 'same', at: { thread: 0, record: 0, field: 'rax' }, as: { thread: 1, record: 0, field: 'rax' } },
      { kind: 'diff', name: 'diff', at: { thread: 0, record: 1, field: 'rdiDelta' }, minus: { thread: 0, record: 1, field: 'rcx' }, expected: 5n },
      { kind: 'status', name: 'done', thread: 1, field: 'state', expected: 2n },
    ],
  };

  it('places the table 8-aligned after the code, names after the table, and points the header at it', () => {
    const { image } = encodeProgram(p);
    const h = readStruct('prog_header', image);
    const withoutChecks = encodeProgram({ ...p, checks: [] }).image;
    expect(GUEST_ABI_VERSION).toBeGreaterThanOrEqual(6); // checks came with ABI 6
    expect(Number(h.nchecks)).toBe(5);
    expect(Number(h.checks_off)).toBe((withoutChecks.length + 7) & ~7);
    expect(readStruct('prog_header', withoutChecks).nchecks).toBe(0n);
    const d = (i: number) => readStruct('check_desc', image, Number(h.checks_off) + i * CHECK_BYTES);
    const name = (i: number) => {
      const at = Number(d(i).name_off);
      return Buffer.from(image.slice(at, image.indexOf(0, at))).toString('latin1');
    };
    expect(name(0)).toBe('CPUID(0x1).EBX[31:24]');
    // Printable ASCII only, and TAP's escape for a directive marker.
    expect(name(1)).toBe('no fault?\\#x');
    expect(image.length).toBe(Number(d(4).name_off) + 'done'.length + 1);
  });

  it('resolves each field to its record and offset in the observation region, with width, opcode, mask and shift', () => {
    const { image } = encodeProgram(p);
    const off = Number(readStruct('prog_header', image).checks_off);
    const d = (i: number) => readStruct('check_desc', image, off + i * CHECK_BYTES);
    const cpuidBytes = recordBytes(ops[0]!);
    // rbx is the second u64 after the 8-byte header.
    expect(d(0)).toMatchObject({ kind: 0n, thread: 0n, rec: 0n, off: 16n, width: 8n, opcode: 1n, expected: 0x0100_0000n, mask: 0xff00_0000n, shift: 24n });
    // Record 2 comes after a cpuid record and a string record with its buffer.
    const rec2 = cpuidBytes + recordBytes(ops[1]!);
    expect(d(1)).toMatchObject({ rec: BigInt(rec2), off: BigInt(rec2 + 1), width: 1n, opcode: 1n, mask: (1n << 64n) - 1n, shift: 0n });
    expect(d(2)).toMatchObject({ kind: 2n, thread: 0n, thread2: 1n, off: 8n, off2: 8n });
    expect(d(3)).toMatchObject({ kind: 1n, rec: BigInt(cpuidBytes), off: BigInt(cpuidBytes + 16), rec2: BigInt(cpuidBytes), off2: BigInt(cpuidBytes + 8), opcode: 0x11n, opcode2: 0x11n, expected: 5n });
    expect(d(4)).toMatchObject({ kind: 3n, thread: 1n, off: 0n, width: 4n, expected: 2n });
  });

  it('refuses checks that name what the program does not have', () => {
    const bad = (c: NonNullable<Program['checks']>[number]) => () => encodeProgram({ ...p, checks: [c] });
    expect(bad({ kind: 'value', name: 'x', at: { thread: 2, record: 0, field: 'rax' }, expected: 0n })).toThrow(/no thread 2/);
    expect(bad({ kind: 'value', name: 'x', at: { thread: 0, record: 3, field: 'rax' }, expected: 0n })).toThrow(/no record 3/);
    expect(bad({ kind: 'value', name: 'x', at: { thread: 0, record: 0, field: 'seen' }, expected: 0n })).toThrow(/no field 'seen'/);
    expect(bad({ kind: 'status', name: 'x', thread: 0, field: 'nope', expected: 0n })).toThrow(/thread_status has no field/);
    expect(bad({ kind: 'diff', name: 'x', at: { thread: 0, record: 0, field: 'rax' }, minus: { thread: 1, record: 0, field: 'rax' }, expected: 0n })).toThrow(/one thread/);
  });
});
