import { readFileSync } from 'node:fs';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPS, OPS_HASH, fieldsBytes, operandBytes, opsTableText, type OpDef, type OpName } from '../../ir/ops.js';
import { encodeOps } from '../bytecode.js';
import { BAD_OP_REASON, LAYOUT, STRUCTS } from './abi.js';
import { dispatchedOps, execSignature, renderGuestHeader } from './header.js';

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

describe('the generated dispatch', () => {
  const header = renderGuestHeader();
  const interp = readFileSync(join(import.meta.dirname, 'src', 'interp.c'), 'utf8');
  const dispatched = dispatchedOps();
  const control = NAMES.filter((n) => !dispatched.includes(n));
  const catches = (n: OpName) => OPS[n].record && ((OPS[n] as OpDef).faults ?? 'record') === 'record';

  it('generates a case for every op but the control ops, which interp.c decodes by hand', () => {
    expect(control.sort()).toEqual(['end', 'loopBegin', 'loopEnd']);
    const dispatch = header.slice(header.indexOf('int dispatch_op('));
    for (const n of dispatched) expect(dispatch, n).toContain(`\tcase OP_${upperSnake(n)}: {\n`);
    for (const n of control) {
      expect(dispatch, n).not.toContain(`case OP_${upperSnake(n)}:`);
      expect(interp, n).toContain(`case OP_${upperSnake(n)}:`);
    }
    // interp.c writes no case of its own for a dispatched op: adding an op is a table entry and an exec_<op>.
    for (const n of dispatched) expect(interp, n).not.toMatch(new RegExp(`case OP_${upperSnake(n)}\\b`));
  });

  it('declares exec_<op> (and check_<op> where the table names a guest check) for interp.c to define', () => {
    for (const n of dispatched) {
      expect(header, n).toContain(`${execSignature(n)};`);
      expect(interp, n).toContain(`static inline void exec_${lowerSnake(n)}(struct ctx *x, const struct op_${lowerSnake(n)} *o`);
      const check = `static inline int check_${lowerSnake(n)}(struct ctx *x, const struct op_${lowerSnake(n)} *o)`;
      if ((OPS[n] as OpDef).guestCheck) {
        expect(header, n).toContain(`${check};`);
        expect(interp, n).toContain(check);
      } else expect(header, n).not.toContain(check);
    }
    expect(execSignature('pioIns')).toBe('static inline void exec_pio_ins(struct ctx *x, const struct op_pio_ins *o, struct res_pio_ins *r, u8 *buf)');
    expect(execSignature('mark')).toBe('static inline void exec_mark(struct ctx *x, const struct op_mark *o)');
  });

  it('checks allowed operand values, pre-fills results and catches faults as the table says', () => {
    const body = (n: OpName) => {
      const d = header.slice(header.indexOf('int dispatch_op('));
      const at = d.indexOf(`\tcase OP_${upperSnake(n)}: {\n`);
      return d.slice(at, d.indexOf('\n\t}\n', at));
    };
    expect(body('pioIn')).toContain('if (o.width != 1 && o.width != 2 && o.width != 4)\n\t\t\treturn BAD_OP_BAD_OPERAND;');
    expect(body('mmioRead')).toContain('o.width != 8');
    expect(body('pioIn')).toContain('r->rax = (u64)canary;');
    expect(body('rdmsr')).toContain('r->value = 0;');
    expect(body('cpuid')).toContain('if (o.cpl != 0 && o.cpl != 3)');
    expect(body('cpuid')).toContain('if (!check_cpuid(x, &o))');
    expect(body('pioIns')).toContain('fill_canary(x, res + OP_PIO_INS_PAYLOAD, buf_bytes);');
    for (const n of dispatched) {
      if (catches(n)) expect(body(n), n).toContain(`run_caught(x, caught_${lowerSnake(n)}, &o, res);`);
      else expect(body(n), n).not.toContain('run_caught');
      if (!OPS[n].record) expect(body(n), n).not.toContain('record_begin');
    }
    expect(catches('rdtsc')).toBe(false);
    expect(catches('apicRead')).toBe(true);
  });

  it('has the APIC ops the timer work builds on', () => {
    expect(OPS.apicRead).toMatchObject({ operands: [['reg', 'u16']], result: [['value', 'u64']], record: true });
    expect(OPS.apicWrite).toMatchObject({ operands: [['reg', 'u16'], ['value', 'u64']], result: [['tscBefore', 'u64'], ['tscAfter', 'u64']], record: true });
    expect(header).toContain('#define APIC_REG_TIMER_DIVIDE 0x3e0u');
    expect(header).toContain('#define X2APIC_MSR_BASE 0x800u');
  });

  it('puts how the guest runs an op into OPS_HASH (a guest with other checks refuses the program)', () => {
    expect(opsTableText()).toContain('pioIn=16;port:u16,width:u8;rax:u64;;width=1|2|4/canary//');
    expect(opsTableText()).toContain('loopEnd=65;;-;;////k');
  });

  describe('runs as generated (hosted gcc, stub exec functions)', () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'kvmprop-dispatch-'));
      await writeFile(join(dir, 'kvmprop_gen.h'), header);
      await copyFile(join(import.meta.dirname, 'src', 'types.h'), join(dir, 'types.h'));
    });
    afterAll(async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    const CANARY = 0xc3a596e15a7de8b4n;
    /** Run dispatch_op once over `code` with `room` bytes of record space; returns what happened. */
    async function dispatch(code: Uint8Array, opts: { room?: number; check?: 0 | 1 } = {}) {
      const stubs = dispatched.map((n) => {
        const sig = execSignature(n);
        const out = [`${sig} { (void)x; (void)o; ${OPS[n].record ? '(void)r; ' : ''}${(OPS[n] as OpDef).stringBuffer ? 'buf_at = buf; ' : ''}note("exec_${n}"); }`];
        if ((OPS[n] as OpDef).guestCheck) {
          out.push(`static inline int check_${lowerSnake(n)}(struct ctx *x, const struct op_${lowerSnake(n)} *o) { (void)x; (void)o; note("check_${n}"); return check_answer; }`);
        }
        return out.join('\n');
      });
      const src = [
        '#include <stdio.h>',
        '#define KVMPROP_INTERP 1',
        '#include "kvmprop_gen.h"',
        'struct ctx { u8 *out, *out_end; };',
        'static char notes[512]; static int check_answer; static u8 *buf_at; static u8 region[256];',
        'static void note(const char *s) { snprintf(notes + __builtin_strlen(notes), sizeof(notes) - __builtin_strlen(notes), "%s ", s); }',
        'static u8 *record_begin(struct ctx *x, u8 opcode, u64 payload) {',
        '  if (x->out + RECORD_HEADER_BYTES + payload > x->out_end) return NULL;',
        '  x->out[0] = opcode; u8 *p = x->out + RECORD_HEADER_BYTES; x->out += RECORD_HEADER_BYTES + payload; return p; }',
        'static int run_caught(struct ctx *x, exec_fn fn, const void *op, u8 *res) { note("caught"); fn(x, op, res); return 1; }',
        'static void fill_canary(struct ctx *x, u8 *buf, u64 n) { (void)x; for (u64 i = 0; i < n; i++) buf[i] = 0xcc; }',
        ...stubs,
        `static const u8 code[] = { ${[...code].join(', ') || '0'} };`,
        'int main(void) {',
        '  __builtin_memset(region, 0xee, sizeof(region));',
        `  struct ctx x = { region, region + ${opts.room ?? 256} }; u32 pc = 0; check_answer = ${opts.check ?? 1};`,
        `  int r = dispatch_op(&x, ${CANARY}ul, code, ${code.length}u, &pc);`,
        '  printf("%d\\n%u\\n%s\\n%ld\\n%ld\\n", r, pc, notes, (long)(x.out - region), buf_at ? (long)(buf_at - region) : -1l);',
        '  for (unsigned i = 0; i < sizeof(region); i++) printf("%02x", region[i]);',
        '  printf("\\n"); return 0; }',
      ].join('\n');
      const file = join(dir, `d${Math.random().toString(36).slice(2)}.c`);
      await writeFile(file, src);
      const exe = file.replace(/\.c$/, '');
      const cc = await execa('gcc', ['-m64', '-std=gnu11', '-Wall', '-Wextra', '-Werror', '-Wno-unused-function', '-I', dir, file, '-o', exe], { reject: false });
      expect(cc.stderr).toBe('');
      const run = await execa(exe);
      const [ret, pc, notes, used, bufAt, region] = run.stdout.split('\n');
      const bytes = Uint8Array.from(region!.match(/../g)!.map((h) => parseInt(h, 16)));
      return { ret: Number(ret), pc: Number(pc), notes: notes!.trim(), used: Number(used), bufAt: Number(bufAt), region: bytes };
    }
    const le64 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getBigUint64(at, true);
    const C = { overflow: -1, unknownOp: BAD_OP_REASON.unknownOp, badOperand: BAD_OP_REASON.badOperand, truncated: BAD_OP_REASON.truncated };

    it('a recording op: decoded, record started, result pre-filled with the canary, run under the catch', async () => {
      const d = await dispatch(encodeOps([{ op: 'pioIn', port: 0x3f8, width: 2 }]));
      expect(d).toMatchObject({ ret: 0, pc: operandBytes('pioIn'), notes: 'caught exec_pioIn', used: 16, bufAt: -1 });
      expect(d.region[0]).toBe(OPS.pioIn.code);
      expect(le64(d.region, 8)).toBe(CANARY);
    });

    it('zero pre-fill, and ops whose faults end the thread run without the catch', async () => {
      const rd = await dispatch(encodeOps([{ op: 'rdmsr', msr: 0x10 }]));
      expect(rd).toMatchObject({ ret: 0, notes: 'caught exec_rdmsr', used: 16 });
      expect(le64(rd.region, 8)).toBe(0n);
      const ts = await dispatch(encodeOps([{ op: 'rdtsc' }]));
      expect(ts).toMatchObject({ ret: 0, pc: 1, notes: 'exec_rdtsc', used: 16 });
    });

    it('a string op: its buffer canary-filled after the result, exec handed the data after the guard', async () => {
      const d = await dispatch(encodeOps([{ op: 'pioIns', port: 0x60, width: 2, count: 3 }]));
      const payload = 16; // rcx, rdiDelta
      const buf = (2 * 16 + 6 + 7) & ~7;
      expect(d).toMatchObject({ ret: 0, notes: 'caught exec_pioIns', used: 8 + payload + buf, bufAt: 8 + payload + 16 });
      expect([...d.region.subarray(8 + payload, 8 + payload + buf)].every((b) => b === 0xcc)).toBe(true);
      expect(le64(d.region, 8)).toBe(0n);
      expect(d.region[8 + payload + buf]).toBe(0xee); // nothing past the record
    });

    it('a non-recording op runs without a record', async () => {
      expect(await dispatch(encodeOps([{ op: 'mark', value: 5n }]))).toMatchObject({ ret: 0, pc: 9, notes: 'exec_mark', used: 0 });
    });

    it('refuses a width the table does not allow, before any record', async () => {
      for (const o of [
        { op: 'pioIn', port: 0x80, width: 3 },
        { op: 'mmioRead', addr: 0n, width: 16 },
        { op: 'pioOut', port: 0x80, width: 8, value: 0 },
        { op: 'cpuid', leaf: 0, subleaf: 0, cpl: 1 },
      ] as const) {
        expect(await dispatch(encodeOps([o])), o.op).toMatchObject({ ret: C.badOperand, notes: '', used: 0 });
      }
    });

    it("refuses what the op's guest check refuses", async () => {
      const d = await dispatch(encodeOps([{ op: 'apicRead', reg: 0x30 }]), { check: 0 });
      expect(d).toMatchObject({ ret: C.badOperand, notes: 'check_apicRead', used: 0 });
      const ok = await dispatch(encodeOps([{ op: 'apicWrite', reg: 0x3e0, value: 0xbn }]));
      expect(ok).toMatchObject({ ret: 0, notes: 'check_apicWrite caught exec_apicWrite', used: 24 });
      expect([le64(ok.region, 8), le64(ok.region, 16)]).toEqual([0n, 0n]);
    });

    it('reports a full region, truncated operands and unknown opcodes (control ops included)', async () => {
      expect(await dispatch(encodeOps([{ op: 'rdmsr', msr: 0x10 }]), { room: 15 })).toMatchObject({ ret: C.overflow, used: 0, notes: '' });
      expect(await dispatch(encodeOps([{ op: 'mmioRead', addr: 0n, width: 4 }]).subarray(0, 5))).toMatchObject({ ret: C.truncated, used: 0 });
      expect(await dispatch(Uint8Array.of(0xee))).toMatchObject({ ret: C.unknownOp, pc: 0 });
      expect(await dispatch(encodeOps([{ op: 'loopBegin', count: 2 }]))).toMatchObject({ ret: C.unknownOp, pc: 0 });
    });
  });
});
