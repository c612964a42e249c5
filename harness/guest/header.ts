/**
 * Renders the C header the guest is compiled with (kvmprop_gen.h) from the TypeScript definitions
 * of the op table and the guest ABI. It is generated at build time, never edited or committed, so
 * the C interpreter cannot disagree with the encoder and the models.
 */
import { OPS, OPS_HASH, NO_FAULT, RECORD_HEADER_BYTES, STRING_GUARD_BYTES, type Field, type OpDef } from '../../ir/ops.js';
import {
  GUEST_ABI_VERSION,
  IRQ_LOG_COUNTS_BYTES,
  IRQ_LOG_ENTRY_BYTES,
  IRQ_LOG_RING_ENTRIES,
  LAYOUT,
  MAILBOX_MAGIC,
  MAILBOX_STATE,
  MAILBOX_THREADS_OFFSET,
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
  for (const [k, v] of Object.entries(MAILBOX_STATE)) out.push(`#define MAILBOX_${snake(k).toUpperCase()} ${v}`);
  for (const [k, v] of Object.entries(THREAD_STATE)) out.push(`#define THREAD_${snake(k).toUpperCase()} ${v}`);
  out.push(`#define MAILBOX_THREADS_OFFSET ${MAILBOX_THREADS_OFFSET}`);
  out.push(`#define IRQ_LOG_COUNTS_BYTES ${IRQ_LOG_COUNTS_BYTES}`);
  out.push(`#define IRQ_LOG_ENTRY_BYTES ${IRQ_LOG_ENTRY_BYTES}`);
  out.push(`#define IRQ_LOG_RING_ENTRIES ${IRQ_LOG_RING_ENTRIES}`);
  out.push('');
  out.push('#ifndef __ASSEMBLER__');
  for (const [name, fields] of Object.entries(STRUCTS)) {
    out.push(cStruct(name, fields));
    out.push(`_Static_assert(sizeof(struct ${name}) == ${structBytes(name as keyof typeof STRUCTS)}, "${name} size");`);
  }
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
    out.push('');
  }
  out.push('#endif /* __ASSEMBLER__ */');
  return out.join('\n') + '\n';
}
