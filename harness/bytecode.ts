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
  fieldsBytes,
  recordBytes,
  stringBufferBytes,
  type Field,
  type Op,
  type OpDef,
  type OpRecord,
} from '../ir/ops.js';
import type { Program } from '../ir/program.js';
import { HEADER_FIELDS, MAX_CHECKS, sanitizeCheckName, type Check, type FieldRef } from '../ir/checks.js';
import { execution, layoutOps, opIndexAt, placeOps, totalOver } from '../ir/layout.js';
import { CHECK_KIND, GUEST_ABI_VERSION, LAYOUT, PROGRAM_FLAGS, PROGRAM_MAGIC, STRUCTS, fieldOffset, structBytes } from './guest/abi.js';

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
  // Bytes only: a fragment with unbalanced loops encodes as it is (the guest refuses it as a bad op).
  const layout = placeOps(ops);
  const bytes = new Uint8Array(layout.codeBytes);
  const view = new DataView(bytes.buffer);
  for (const { op: o, offset } of layout.placed) {
    const def: OpDef = OPS[o.op];
    view.setUint8(offset, def.code);
    let at = offset + 1;
    for (const [name, type] of def.operands) {
      writeField(view, at, type, checkOperand(o.op, name, type, (o as unknown as Record<string, unknown>)[name]));
      at += FIELD_BYTES[type];
    }
  }
  return bytes;
}

/** Index of the op that starts at byte offset `pc` of a thread's code (the guest reports pc). */
export function opIndexAtOffset(ops: readonly Op[], pc: number): number {
  return opIndexAt(placeOps(ops), pc);
}

/** Record bytes a thread produces; loops multiply their bodies, open loops get the program's budget. */
export function threadRecordBytes(ops: readonly Op[], openLoopBytes: number): number {
  return totalOver(layoutOps(ops), recordBytes, (body) => (body > 0 ? openLoopBytes : 0));
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
const CHECK_DESC_BYTES = structBytes('check_desc');

/** Where a check's field lies in its thread's observation region. */
export interface ResolvedField {
  readonly thread: number;
  /** Offset of the record (its header) and of the field. */
  readonly rec: number;
  readonly off: number;
  readonly width: number;
  readonly opcode: number;
}

/** Resolve a field reference against the program's threads (the k-th record in execution order). */
export function resolveField(p: Program, ref: FieldRef): ResolvedField {
  const ops = p.threads[ref.thread];
  if (!ops) throw new RangeError(`check field: no thread ${ref.thread}`);
  if (!Number.isInteger(ref.record) || ref.record < 0) throw new RangeError(`check field: bad record index ${ref.record}`);
  let at = 0;
  let k = 0;
  for (const { op: o } of execution(layoutOps(ops))) {
    const def: OpDef = OPS[o.op];
    if (!def.record) continue;
    if (k === ref.record) {
      const header = HEADER_FIELDS.indexOf(ref.field as (typeof HEADER_FIELDS)[number]);
      if (header >= 0) return { thread: ref.thread, rec: at, off: at + [1, 4, 2][header]!, width: [1, 4, 2][header]!, opcode: def.code };
      let f = at + RECORD_HEADER_BYTES;
      for (const [name, type] of def.result) {
        if (name === ref.field) return { thread: ref.thread, rec: at, off: f, width: FIELD_BYTES[type], opcode: def.code };
        f += FIELD_BYTES[type];
      }
      throw new RangeError(`check field: ${o.op} records have no field '${ref.field}'`);
    }
    at += recordBytes(o);
    k++;
    // A thread's region is at most a few MiB: a forever loop without records would never get here.
    if (k > 1 << 24) break;
  }
  throw new RangeError(`check field: thread ${ref.thread} has no record ${ref.record}`);
}

const ctz = (m: bigint): number => {
  if (m === 0n) return 0;
  let n = 0;
  while (((m >> BigInt(n)) & 1n) === 0n) n++;
  return n;
};

/** The check table and its names, ready to place at `at` in the image (8-aligned). */
function encodeChecks(p: Program, checks: readonly Check[], at: number): Uint8Array {
  if (checks.length > MAX_CHECKS) throw new RangeError(`a program carries at most ${MAX_CHECKS} checks, got ${checks.length}`);
  const names = checks.map((c) => new TextEncoder().encode(sanitizeCheckName(c.name) + '\0'));
  const tableBytes = CHECK_DESC_BYTES * checks.length;
  const out = new Uint8Array(tableBytes + names.reduce((n, b) => n + b.length, 0));
  const view = new DataView(out.buffer);
  let nameAt = tableBytes;
  checks.forEach((c, i) => {
    const d: Record<string, bigint | number> = Object.fromEntries(STRUCTS.check_desc.map(([n]) => [n, 0]));
    const mask = BigInt.asUintN(64, c.mask ?? (1n << 64n) - 1n);
    d.kind = CHECK_KIND[c.kind];
    d.mask = mask;
    d.shift = ctz(mask);
    const one = (r: ResolvedField, n: '' | '2') => {
      d[`thread${n}`] = r.thread;
      d[`rec${n}`] = r.rec;
      d[`off${n}`] = r.off;
      d[`width${n}`] = r.width;
      d[`opcode${n}`] = r.opcode;
    };
    switch (c.kind) {
      case 'value':
        one(resolveField(p, c.at), '');
        d.expected = BigInt.asUintN(64, c.expected);
        break;
      case 'diff': {
        const a = resolveField(p, c.at);
        const b = resolveField(p, c.minus);
        if (a.thread !== b.thread) throw new RangeError(`check '${c.name}': a diff compares two fields of one thread`);
        one(a, '');
        one(b, '2');
        d.expected = BigInt.asUintN(64, c.expected);
        break;
      }
      case 'same':
        one(resolveField(p, c.at), '');
        one(resolveField(p, c.as), '2');
        break;
      case 'status': {
        if (!p.threads[c.thread]) throw new RangeError(`check '${c.name}': no thread ${c.thread}`);
        const type = STRUCTS.thread_status.find(([n]) => n === c.field)?.[1];
        if (!type) throw new RangeError(`check '${c.name}': thread_status has no field '${c.field}'`);
        d.thread = c.thread;
        d.off = fieldOffset('thread_status', c.field);
        d.width = FIELD_BYTES[type];
        d.expected = BigInt.asUintN(64, c.expected);
        break;
      }
    }
    d.name_off = at + nameAt;
    let f = i * CHECK_DESC_BYTES;
    for (const [n, t] of STRUCTS.check_desc) {
      writeField(view, f, t, t === 'u64' ? BigInt(d[n]!) : Number(d[n]!));
      f += FIELD_BYTES[t];
    }
    out.set(names[i]!, nameAt);
    nameAt += names[i]!.length;
  });
  return out;
}

export function encodeProgram(p: Program): ProgramImage {
  if (p.threads.length === 0 || p.threads.length > LAYOUT.maxCpus) {
    throw new RangeError(`a program needs 1..${LAYOUT.maxCpus} threads, got ${p.threads.length}`);
  }
  const codes = p.threads.map(encodeOps);
  const codeStart = HEADER_BYTES + THREAD_DESC_BYTES * codes.length;
  const codeEnd = codeStart + codes.reduce((n, c) => n + c.length, 0);
  const checksOff = p.checks?.length ? (codeEnd + 7) & ~7 : 0;
  const checks = p.checks?.length ? encodeChecks(p, p.checks, checksOff) : new Uint8Array();
  const size = p.checks?.length ? checksOff + checks.length : codeEnd;
  if (size > LAYOUT.programMax) throw new RangeError(`program is ${size} bytes; the guest takes at most ${LAYOUT.programMax}`);
  const image = new Uint8Array(size);
  const view = new DataView(image.buffer);
  const openLoop = p.openLoopRecordBytes ?? 1 << 20;
  let flags = 0n;
  if (p.x2apic) flags |= PROGRAM_FLAGS.x2apic;
  if (p.ring0) flags |= PROGRAM_FLAGS.ring0;
  if (p.holdExit ?? true) flags |= PROGRAM_FLAGS.holdExit;
  if (p.stealTime) flags |= PROGRAM_FLAGS.stealTime;
  if (p.alignmentCheck) flags |= PROGRAM_FLAGS.alignmentCheck;
  if (p.taskSwitched) flags |= PROGRAM_FLAGS.taskSwitched;
  if (p.avxState) flags |= PROGRAM_FLAGS.avxState;
  // prog_header, in abi.ts order.
  view.setUint32(0, PROGRAM_MAGIC, true);
  view.setUint32(4, GUEST_ABI_VERSION, true);
  view.setUint32(8, OPS_HASH, true);
  view.setUint32(12, codes.length, true);
  view.setBigUint64(16, BigInt.asUintN(64, p.canary), true);
  view.setBigUint64(24, flags, true);
  view.setBigUint64(32, p.mapLimit ?? 0n, true);
  view.setUint32(40, checksOff, true);
  view.setUint32(44, p.checks?.length ?? 0, true);
  image.set(checks, checksOff);
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
 * Decode a thread's records by walking its ops in the order the interpreter executes them (ir/layout.ts)
 * and reading one record per recording op. Stops at `used` bytes.
 */
export function decodeRecords(ops: readonly Op[], bytes: Uint8Array, used: number): OpRecord[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: OpRecord[] = [];
  let at = 0;
  let index = 0;
  for (const { op: o, opIndex } of execution(layoutOps(ops))) {
    if (at >= used) break;
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
        const start = at + RECORD_HEADER_BYTES + ((fieldsBytes(def.result) + 7) & ~7);
        buffer = bytes.slice(start, start + stringBufferBytes(s.width, s.count));
      }
      // The shape is the table's: decoded from the op's own result fields.
      out.push({
        index,
        opIndex,
        op: o,
        faultVector: faultVector === NO_FAULT ? null : faultVector,
        errorCode,
        flags,
        fields,
        ...(buffer ? { buffer } : {}),
      } as OpRecord);
      at += size;
    }
    index++;
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
