import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPS, OPS_HASH, fieldsBytes, operandBytes, type OpDef, type OpName } from '../../ir/ops.js';
import { LAYOUT, STRUCTS } from './abi.js';
import { renderGuestHeader } from './header.js';

/** camelCase → SNAKE_CASE, the way the header names things. */
const upperSnake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();
const lowerSnake = (name: string) => upperSnake(name).toLowerCase();
const NAMES = Object.keys(OPS) as OpName[];

describe('renderGuestHeader', () => {
  const header = renderGuestHeader();
  const lines = header.split('\n');

  it('defines OP_<NAME> for every op with its code', () => {
    for (const n of NAMES) expect(lines, n).toContain(`#define OP_${upperSnake(n)} 0x${OPS[n].code.toString(16)}`);
    expect(lines).toContain('#define OP_PIO_INS 0x11');
    expect(lines).toContain('#define OP_LOOP_BEGIN 0x40');
  });

  it('declares an operand struct per op, and a result struct per recording op', () => {
    for (const n of NAMES) {
      const def: OpDef = OPS[n];
      expect(header, n).toContain(`struct op_${lowerSnake(n)} {\n  u8 code;\n`);
      if (def.record) expect(header, n).toContain(`struct res_${lowerSnake(n)} `);
      else expect(header, n).not.toContain(`struct res_${lowerSnake(n)} `);
      expect(lines.includes(`#define OP_${upperSnake(n)}_STRING 1`), n).toBe(def.stringBuffer === true);
    }
    expect(header).toContain('struct op_wait_irq {\n  u8 code;\n  u8 vector;\n  u32 count;\n  u64 timeout_cycles;\n} __attribute__((packed));');
  });

  it('carries OPS_HASH', () => {
    expect(lines).toContain(`#define KVMPROP_OPS_HASH 0x${OPS_HASH.toString(16)}u`);
  });

  it('defines LAYOUT_* for every LAYOUT key', () => {
    for (const [k, v] of Object.entries(LAYOUT)) expect(lines, k).toContain(`#define LAYOUT_${upperSnake(k)} 0x${v.toString(16)}ul`);
    expect(lines).toContain('#define LAYOUT_MAX_CPUS 0x10ul');
    expect(lines).toContain('#define LAYOUT_PROGRAM 0x800000ul');
  });

  it('asserts the size of every ABI struct', () => {
    for (const name of Object.keys(STRUCTS)) expect(header).toContain(`_Static_assert(sizeof(struct ${name}) == `);
  });
});

describe('the generated header compiles', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kvmprop-header-'));
    await writeFile(join(dir, 'kvmprop_gen.h'), renderGuestHeader());
    await copyFile(join(import.meta.dirname, 'src', 'types.h'), join(dir, 'types.h'));
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function compile(source: string) {
    const file = join(dir, `t${Math.random().toString(36).slice(2)}.c`);
    await writeFile(file, source);
    return execa('gcc', ['-m64', '-std=gnu11', '-Wall', '-Wextra', '-Werror', '-fsyntax-only', '-I', dir, file], { reject: false });
  }

  it('with gcc -m64, its _Static_asserts and the op struct sizes hold', async () => {
    const checks = NAMES.flatMap((n) => {
      const def: OpDef = OPS[n];
      const tag = lowerSnake(n);
      const out = [`_Static_assert(sizeof(struct op_${tag}) == ${operandBytes(n)}, "op_${tag}");`];
      if (def.record) out.push(`_Static_assert(sizeof(struct res_${tag}) == ${fieldsBytes(def.result)}, "res_${tag}");`);
      out.push(`_Static_assert(OP_${tag.toUpperCase()} == ${OPS[n].code}, "OP_${tag.toUpperCase()}");`);
      return out;
    });
    const r = await compile(
      ['#include "kvmprop_gen.h"', '_Static_assert(sizeof(struct record_header) == 8, "record_header");', ...checks, 'int main(void) { return 0; }', ''].join('\n'),
    );
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
  });

  it('(a wrong size assertion does fail, so the check above means something)', async () => {
    const r = await compile('#include "kvmprop_gen.h"\n_Static_assert(sizeof(struct op_cpuid) == 9, "op_cpuid");\n');
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/op_cpuid/);
  });
});
