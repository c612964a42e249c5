/**
 * Renders the C header the guest is compiled with (kvmprop_gen.h) from the TypeScript definitions
 * of the op table and the guest ABI. It is generated at build time, never edited or committed, so
 * the C interpreter cannot disagree with the encoder and the models.
 */
import { OPS, OPS_HASH, NO_FAULT, RECORD_HEADER_BYTES, STRING_GUARD_BYTES, fieldsBytes, type Field, type OpDef, type OpName } from '../../ir/ops.js';
import {
  APIC_MMIO_BASE,
  APIC_REGS,
  BAD_OP_REASON,
  BAIL_REASON,
  CHECK_KIND,
  EXIT_VALUE,
  GUEST_ABI_VERSION,
  IRQ_LOG_RING_OFFSET,
  X2APIC_MSR_BASE,
  IRQ_LOG_COUNTS_BYTES,
  IRQ_LOG_ENTRY_BYTES,
  IRQ_LOG_RING_ENTRIES,
  LAYOUT,
  MAILBOX_MAGIC,
  MAILBOX_STATE,
  MAILBOX_THREADS_OFFSET,
  EXIT_HOLD_TSC,
  PROGRAM_FLAGS,
  PROGRAM_MAGIC,
  STRUCTS,
  THREAD_STATE,
  structBytes,
} from './abi.js';

const C_TYPE = { u8: 'u8', u16: 'u16', u32: 'u32', u64: 'u64' } as const;

function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

function cStruct(tag: string, fields: readonly Field[], lead: readonly Field[] = []): string {
  const all = [...lead, ...fields];
  if (all.length === 0) return `struct ${tag} { u8 _empty[0]; } __attribute__((packed));`;
  const body = all.map(([n, t]) => `  ${C_TYPE[t]} ${snake(n)};`).join('\n');
  return `struct ${tag} {\n${body}\n} __attribute__((packed));`;
}

export function renderGuestHeader(): string {
  const out: string[] = [];
  out.push('/* Generated from ir/ops.ts and harness/guest/abi.ts by harness/guest/header.ts.');
  out.push(' * Do not edit: change the TypeScript definitions instead. */');
  out.push('#pragma once');
  out.push('#include "types.h"');
  out.push('');
  out.push(`#define KVMPROP_ABI_VERSION ${GUEST_ABI_VERSION}u`);
  out.push(`#define KVMPROP_OPS_HASH ${hex(OPS_HASH)}u`);
  out.push(`#define PROGRAM_MAGIC ${hex(PROGRAM_MAGIC)}u`);
  out.push(`#define MAILBOX_MAGIC ${hex(MAILBOX_MAGIC)}u`);
  out.push(`#define RECORD_HEADER_BYTES ${RECORD_HEADER_BYTES}`);
  out.push(`#define STRING_GUARD_BYTES ${STRING_GUARD_BYTES}`);
  out.push(`#define NO_FAULT ${hex(NO_FAULT)}`);
  for (const [k, v] of Object.entries(LAYOUT)) out.push(`#define LAYOUT_${snake(k).toUpperCase()} ${hex(v)}ul`);
  for (const [k, v] of Object.entries(PROGRAM_FLAGS)) out.push(`#define PROGRAM_FLAG_${snake(k).toUpperCase()} ${hex(v)}ul`);
  out.push(`#define EXIT_HOLD_TSC ${hex(EXIT_HOLD_TSC)}ul`);
  for (const [k, v] of Object.entries(EXIT_VALUE)) out.push(`#define EXIT_VALUE_${snake(k).toUpperCase()} ${hex(v)}`);
  for (const [k, v] of Object.entries(CHECK_KIND)) out.push(`#define CHECK_KIND_${snake(k).toUpperCase()} ${v}`);
  for (const [k, v] of Object.entries(MAILBOX_STATE)) out.push(`#define MAILBOX_${snake(k).toUpperCase()} ${v}`);
  for (const [k, v] of Object.entries(THREAD_STATE)) out.push(`#define THREAD_${snake(k).toUpperCase()} ${v}`);
  out.push(`#define MAILBOX_THREADS_OFFSET ${MAILBOX_THREADS_OFFSET}`);
  out.push(`#define IRQ_LOG_COUNTS_BYTES ${IRQ_LOG_COUNTS_BYTES}`);
  out.push(`#define IRQ_LOG_ENTRY_BYTES ${IRQ_LOG_ENTRY_BYTES}`);
  out.push(`#define IRQ_LOG_RING_ENTRIES ${IRQ_LOG_RING_ENTRIES}`);
  out.push(`#define IRQ_LOG_RING_OFFSET ${IRQ_LOG_RING_OFFSET}`);
  for (const [k, v] of Object.entries(BAIL_REASON)) out.push(`#define BAIL_${snake(k).toUpperCase()} ${v}`);
  for (const [k, v] of Object.entries(BAD_OP_REASON)) out.push(`#define BAD_OP_${snake(k).toUpperCase()} ${v}`);
  out.push(`#define APIC_MMIO_BASE ${hex(APIC_MMIO_BASE)}ul`);
  out.push(`#define X2APIC_MSR_BASE ${hex(X2APIC_MSR_BASE)}u`);
  for (const [k, v] of Object.entries(APIC_REGS)) out.push(`#define APIC_REG_${snake(k).toUpperCase()} ${hex(v)}u`);
  out.push('');
  out.push('#ifndef __ASSEMBLER__');
  for (const [name, fields] of Object.entries(STRUCTS)) {
    out.push(cStruct(name, fields));
    out.push(`_Static_assert(sizeof(struct ${name}) == ${structBytes(name as keyof typeof STRUCTS)}, "${name} size");`);
  }
  out.push(`_Static_assert(sizeof(struct mailbox) <= MAILBOX_THREADS_OFFSET, "mailbox overlaps the thread statuses");`);
  out.push(`_Static_assert(IRQ_LOG_RING_OFFSET == IRQ_LOG_COUNTS_BYTES + sizeof(struct irq_log_head), "irq log ring offset");`);
  out.push('');
  out.push(cStruct('record_header', [['opcode', 'u8'], ['fault_vector', 'u8'], ['flags', 'u16'], ['error_code', 'u32']]));
  out.push('');
  for (const [name, d] of Object.entries(OPS)) {
    const def: OpDef = d;
    const tag = snake(name);
    out.push(`/* ${name}: ${def.doc} */`);
    out.push(`#define OP_${tag.toUpperCase()} ${hex(def.code)}`);
    out.push(cStruct(`op_${tag}`, def.operands, [['code', 'u8']]));
    if (def.record) {
      out.push(`#define OP_${tag.toUpperCase()}_RECORDS 1`);
      out.push(cStruct(`res_${tag}`, def.result));
    }
    if (def.stringBuffer) out.push(`#define OP_${tag.toUpperCase()}_STRING 1`);
    if (def.record) out.push(`#define OP_${tag.toUpperCase()}_PAYLOAD ${payloadBytes(def)}`);
    out.push('');
  }
  out.push(...renderDispatch());
  out.push('#endif /* __ASSEMBLER__ */');
  return out.join('\n') + '\n';
}

/** Bytes of a record's result fields, rounded up to 8 (the string buffer follows them). */
function payloadBytes(def: OpDef): number {
  return (fieldsBytes(def.result) + 7) & ~7;
}

/** What interp.c writes for an op: its exec function's signature. */
export function execSignature(name: OpName): string {
  const def: OpDef = OPS[name];
  const tag = snake(name);
  const args = [`struct ctx *x`, `const struct op_${tag} *o`];
  if (def.record) args.push(`struct res_${tag} *r`);
  if (def.stringBuffer) args.push('u8 *buf');
  return `static inline void exec_${tag}(${args.join(', ')})`;
}

/** The ops whose dispatch is generated: all but the control ops, which move the interpreter itself. */
export function dispatchedOps(): OpName[] {
  return (Object.keys(OPS) as OpName[]).filter((n) => !(OPS[n] as OpDef).control);
}

/**
 * The interpreter's dispatch, generated from the op table: for every op but the control ops, one
 * case that decodes the operands, refuses values the table does not allow (and what the op's guest
 * check refuses), starts the record, pre-fills its result fields (and a string op's buffer with the
 * canary) and runs exec_<op>, under an op-level catch where the op's faults go to its record.
 *
 * It is a switch inlined into interp.c's own (which handles the control ops), so a ring-0 thread,
 * whose every instruction the host may emulate, pays no more than the hand-written cases did.
 * Only interp.c defines KVMPROP_INTERP; it supplies the contract declared here: struct ctx,
 * record_begin, run_caught, fill_canary, exec_<op> for every dispatched op and check_<op> where the
 * table names a guest check. A missing one fails the build.
 *
 * dispatch_op returns 0 when the op ran, DISPATCH_OVERFLOW when its record did not fit, and a
 * BAD_OP_* reason when the guest refuses it.
 */
function renderDispatch(): string[] {
  const out: string[] = [];
  const ops = dispatchedOps();
  out.push('#ifdef KVMPROP_INTERP');
  out.push('/* ---- the interpreter dispatch (see header.ts renderDispatch) ---- */');
  out.push('struct ctx;');
  out.push('typedef void (*exec_fn)(struct ctx *x, const void *op, u8 *res);');
  out.push('static u8 *record_begin(struct ctx *x, u8 opcode, u64 payload);');
  out.push('static int run_caught(struct ctx *x, exec_fn fn, const void *op, u8 *res);');
  out.push('static void fill_canary(struct ctx *x, u8 *buf, u64 n);');
  out.push('#define DISPATCH_OVERFLOW (-1)');
  out.push('');
  for (const name of ops) {
    const def: OpDef = OPS[name];
    const tag = snake(name);
    out.push(`${execSignature(name)};`);
    if (def.guestCheck) out.push(`/* ${def.guestCheck} */\nstatic inline int check_${tag}(struct ctx *x, const struct op_${tag} *o);`);
    if (def.record && (def.faults ?? 'record') === 'record') {
      const buf = def.stringBuffer ? `, res + OP_${tag.toUpperCase()}_PAYLOAD + STRING_GUARD_BYTES` : '';
      out.push(
        `static void caught_${tag}(struct ctx *x, const void *o, u8 *res) { exec_${tag}(x, (const struct op_${tag} *)o, (struct res_${tag} *)res${buf}); }`,
      );
    }
  }
  out.push('');
  out.push('static inline __attribute__((always_inline)) int dispatch_op(struct ctx *x, u64 canary, const u8 *code, u32 len, u32 *pc)');
  out.push('{');
  out.push('\t(void)canary;');
  out.push('\tswitch (code[*pc]) {');
  for (const name of ops) out.push(...renderCase(name).map((l) => `\t${l}`));
  out.push('\tdefault:');
  out.push('\t\treturn BAD_OP_UNKNOWN_OP;');
  out.push('\t}');
  out.push('}');
  out.push('#endif /* KVMPROP_INTERP */');
  return out;
}

function renderCase(name: OpName): string[] {
  const def: OpDef = OPS[name];
  const tag = snake(name);
  const TAG = tag.toUpperCase();
  const c: string[] = [];
  c.push(`case OP_${TAG}: {`);
  c.push(`\tstruct op_${tag} o;`);
  c.push(`\tif (len - *pc < sizeof(o))`);
  c.push(`\t\treturn BAD_OP_TRUNCATED;`);
  c.push(`\t__builtin_memcpy(&o, code + *pc, sizeof(o));`);
  c.push(`\t*pc += sizeof(o);`);
  for (const [operand, values] of Object.entries(def.allowed ?? {})) {
    if (!def.operands.some(([n]) => n === operand)) throw new Error(`op ${name}: allowed names ${operand}, which is not one of its operands`);
    const field = snake(operand);
    c.push(`\tif (${values.map((v) => `o.${field} != ${v}`).join(' && ')})`);
    c.push(`\t\treturn BAD_OP_BAD_OPERAND;`);
  }
  if (def.guestCheck) {
    c.push(`\tif (!check_${tag}(x, &o))`);
    c.push(`\t\treturn BAD_OP_BAD_OPERAND;`);
  }
  if (!def.record) {
    c.push(`\texec_${tag}(x, &o);`);
    c.push(`\treturn 0;`);
    c.push(`}`);
    return c;
  }
  let size = `OP_${TAG}_PAYLOAD`;
  if (def.stringBuffer) {
    c.push(`\tu64 buf_bytes = (2 * STRING_GUARD_BYTES + (u64)o.width * o.count + 7) & ~7ul;`);
    size += ' + buf_bytes';
  }
  c.push(`\tu8 *res = record_begin(x, OP_${TAG}, ${size});`);
  c.push(`\tif (!res)`);
  c.push(`\t\treturn DISPATCH_OVERFLOW;`);
  if (def.result.length) {
    c.push(`\tstruct res_${tag} *r = (struct res_${tag} *)res;`);
    for (const [field, type] of def.result) {
      c.push(`\tr->${snake(field)} = ${def.prefill === 'canary' ? `(${C_TYPE[type]})canary` : '0'};`);
    }
  }
  if (def.stringBuffer) c.push(`\tfill_canary(x, res + OP_${TAG}_PAYLOAD, buf_bytes);`);
  if ((def.faults ?? 'record') === 'record') c.push(`\trun_caught(x, caught_${tag}, &o, res);`);
  else c.push(`\texec_${tag}(x, &o, (struct res_${tag} *)res${def.stringBuffer ? `, res + OP_${TAG}_PAYLOAD + STRING_GUARD_BYTES` : ''});`);
  c.push(`\treturn 0;`);
  c.push(`}`);
  return c;
}
