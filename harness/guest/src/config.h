/* Guest constants shared by C and assembly (macros only). */
#pragma once
/* Per-CPU block: struct cpu at the base, IST stack, then the main stack up to the top. The block is
 * aligned to its size, so RSP & ~(CPU_BLOCK_BYTES - 1) finds the current CPU, even in handlers. */
#define CPU_BLOCK_BYTES 32768
/* Inside the block: struct cpu (with its TSS and I/O bitmap) [0, 12K), IST stack [12K, 16K),
 * user stack [16K, 22K), ring-3 -> ring-0 entry stack (TSS.RSP0) [22K, 28K), boot/kernel stack
 * [28K, 32K). */
#define CPU_IST_TOP 16384
#define CPU_USER_STACK_TOP 22528
#define CPU_RSP0_TOP 28672

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_CODE32 0x18
#define SEL_UDATA 0x23
#define SEL_UCODE 0x2b
#define SEL_TSS0 0x30
#define SPURIOUS_VECTOR 0xff
