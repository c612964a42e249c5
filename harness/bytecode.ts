/**
 * Encoder (IR → guest program image) and record decoder (observation bytes → records), both driven
 * by the op table in ir/ops.ts.
 */
import {
  FIELD_BYTES,
  NO_FAULT,
  OPS,
  OPS_HASH,
  OP_BY_CODE,
  RECORD_HEADER_BYTES,
  recordBytes,
  stringBufferBytes,
  type Field,
  type Op,
  type OpDef,
  type OpRecord,
} from '../ir/ops.js';
import type { Program } from '../ir/program.js';
import { GUEST_ABI_VERSION, LAYOUT, PROGRAM_FLAGS, PROGRAM_MAGIC, structBytes } from './guest/abi.js';

function writeField(view: DataView, at: number, type: Field[1], value: bigint | number): void {
  switch (type) {
    case 'u8':
      view.setUint8(at, Number(value));
      return;
    case 'u16':
      view.setUint16(at, Number(value), true);
      return;
    case 'u32':
      view.setUint32(at, Number(value) >>> 0, true);
      return;
    case 'u64':
      view.setBigUint64(at, BigInt.asUintN(64, BigInt(value)), true);
  }
}

function checkOperand(op: string, name: string, type: Field[1], v: unknown): bigint | number {
  if (type === 'u64') {
    if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) throw new RangeError(`${op}.${name}: expected a u64 bigint, got ${String(v)}`);
    return v;
  }
  const max = 2 ** (8 * FIELD_BYTES[type]);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= max) {
    throw new RangeError(`${op}.${name}: expected a ${type}, got ${String(v)}`);
  }
  return v;
}

export function encodeOps(ops: readonly Op[]): Uint8Array {
  const size = ops.reduce((n, o) => n + 1 + fieldBytes(OPS[o.op].operands), 0);
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  let at = 0;
  for (const o of ops) {
    const def: OpDef = OPS[o.op];
    view.setUint8(at++, def.code);
    for (const [name, type] of def.operands) {
      writeField(view, at, type, checkOperand(o.op, name, type, (o as unknown as Record<string, unknown>)[name]));
      at += FIELD_BYTES[type];
    }
  }
  return bytes;
}

/** Index of the op that starts at byte offset `pc` of a thread's code (the guest reports pc). */
export function opIndexAtOffset(ops: readonly Op[], pc: number): number {
  let at = 0;
  for (let i = 0; i < ops.length; i++) {
    if (at === pc) return i;
    at += 1 + fieldBytes(OPS[ops[i]!.op].operands);
    if (at > pc) return i;
  }
  return -1;
}

function fieldBytes(fields: readonly Field[]): number {
  return fields.reduce((n, [, t]) => n + FIELD_BYTES[t], 0);
}

/** Record bytes a thread produces; loops multiply their bodies, open loops get the program's budget. */
export function threadRecordBytes(ops: readonly Op[], openLoopBytes: number): number {
  const stack: { count: number; bytes: number }[] = [{ count: 1, bytes: 0 }];
  for (const o of ops) {
    if (o.op === 'loopBegin') stack.push({ count: o.count, bytes: 0 });
    else if (o.op === 'loopEnd') {
      const body = stack.pop();
      if (!body || stack.length === 0) throw new Error('loopEnd without loopBegin');
      const top = stack[stack.length - 1]!;
      top.bytes += body.count === 0 ? (body.bytes > 0 ? openLoopBytes : 0) : body.bytes * body.count;
    } else stack[stack.length - 1]!.bytes += recordBytes(o);
  }
  if (stack.length !== 1) throw new Error('loopBegin without loopEnd');
  return stack[0]!.bytes;
}

export interface ProgramImage {
  readonly image: Uint8Array;
  /** Guest-physical address and length of each thread's observation region. */
  readonly regions: readonly { addr: number; len: number }[];
  /** Lowest RAM size (MiB) that holds every observation region. */
  readonly minRamMiB: number;
}

const THREAD_DESC_BYTES = structBytes('thread_desc');
const HEADER_BYTES = structBytes('prog_header');

export function encodeProgram(p: Program): ProgramImage {
  if (p.threads.length === 0 || p.threads.length > LAYOUT.maxCpus) {
    throw new RangeError(`a program needs 1..${LAYOUT.maxCpus} threads, got ${p.threads.length}`);
  }
  const codes = p.threads.map(encodeOps);
  const codeStart = HEADER_BYTES + THREAD_DESC_BYTES * codes.length;
  const size = codeStart + codes.reduce((n, c) => n + c.length, 0);
  if (size > LAYOUT.programMax) throw new RangeError(`program is ${size} bytes; the guest takes at most ${LAYOUT.programMax}`);
  const image = new Uint8Array(size);
  const view = new DataView(image.buffer);
  const openLoop = p.openLoopRecordBytes ?? 1 << 20;
  let flags = 0n;
  if (p.x2apic) flags |= PROGRAM_FLAGS.x2apic;
  if (p.ring0) flags |= PROGRAM_FLAGS.ring0;
  // prog_header, in abi.ts order.
  view.setUint32(0, PROGRAM_MAGIC, true);
  view.setUint32(4, GUEST_ABI_VERSION, true);
  view.setUint32(8, OPS_HASH, true);
  view.setUint32(12, codes.length, true);
  view.setBigUint64(16, BigInt.asUintN(64, p.canary), true);
  view.setBigUint64(24, flags, true);
  view.setBigUint64(32, p.mapLimit ?? 0n, true);
  const regions: { addr: number; len: number }[] = [];
  let obs = LAYOUT.observations;
  let codeOff = codeStart;
  codes.forEach((code, i) => {
    const len = threadRecordBytes(p.threads[i]!, openLoop);
    const d = HEADER_BYTES + i * THREAD_DESC_BYTES;
    view.setUint32(d, codeOff, true);
    view.setUint32(d + 4, code.length, true);
    view.setBigUint64(d + 8, BigInt(obs), true);
    view.setBigUint64(d + 16, BigInt(len), true);
    image.set(code, codeOff);
    regions.push({ addr: obs, len });
    codeOff += code.length;
    obs += (len + 4095) & ~4095;
  });
  const minRamMiB = Math.max(LAYOUT.minRamMiB, Math.ceil(obs / (1 << 20)) + 1);
  return { image, regions, minRamMiB };
}

/**
 * Decode a thread's records by replaying its op list the way the interpreter walks it (loops
 * included) and reading one record per recording op. Stops at `used` bytes.
 */
export function decodeRecords(ops: readonly Op[], bytes: Uint8Array, used: number): OpRecord[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: OpRecord[] = [];
  let at = 0;
  let index = 0;
  const loops: { start: number; remaining: number; forever: boolean }[] = [];
  let pc = 0;
  while (pc < ops.length && at < used) {
    const o = ops[pc]!;
    if (o.op === 'end') break;
    if (o.op === 'loopBegin') {
      loops.push({ start: pc + 1, remaining: o.count ? o.count - 1 : 0, forever: o.count === 0 });
      pc++;
      continue;
    }
    if (o.op === 'loopEnd') {
      const l = loops[loops.length - 1];
      if (!l) throw new Error('loopEnd without loopBegin');
      if (l.forever || l.remaining > 0) {
        if (!l.forever) l.remaining--;
        pc = l.start;
      } else {
        loops.pop();
        pc++;
      }
      continue;
    }
    const def: OpDef = OPS[o.op];
    if (def.record) {
      const size = recordBytes(o);
      if (at + size > used) throw new Error(`record of op ${index} (${o.op}) is cut short at byte ${at} of ${used}`);
      const code = view.getUint8(at);
      if (code !== def.code) {
        throw new Error(`record at byte ${at} has opcode 0x${code.toString(16)} (${OP_BY_CODE.get(code) ?? '?'}), expected ${o.op}`);
      }
      const faultVector = view.getUint8(at + 1);
      const flags = view.getUint16(at + 2, true);
      const errorCode = view.getUint32(at + 4, true);
      const fields: Record<string, bigint> = {};
      let f = at + RECORD_HEADER_BYTES;
      for (const [name, type] of def.result) {
        fields[name] = readLE(view, f, FIELD_BYTES[type]);
        f += FIELD_BYTES[type];
      }
      let buffer: Uint8Array | undefined;
      if (def.stringBuffer) {
        const s = o as unknown as { width: number; count: number };
        const start = at + RECORD_HEADER_BYTES + ((fieldBytes(def.result) + 7) & ~7);
        buffer = bytes.slice(start, start + stringBufferBytes(s.width, s.count));
      }
      out.push({
        index,
        opIndex: pc,
        op: o.op,
        faultVector: faultVector === NO_FAULT ? null : faultVector,
        errorCode,
        flags,
        fields,
        ...(buffer ? { buffer } : {}),
      });
      at += size;
    }
    index++;
    pc++;
  }
  return out;
}

function readLE(view: DataView, at: number, n: number): bigint {
  switch (n) {
    case 1:
      return BigInt(view.getUint8(at));
    case 2:
      return BigInt(view.getUint16(at, true));
    case 4:
      return BigInt(view.getUint32(at, true));
    default:
      return view.getBigUint64(at, true);
  }
}
