/* Guest constants shared by C and assembly (macros only). */
#pragma once
/* Per-CPU block: struct cpu at the base, IST stack, then the main stack up to the top. The block is
 * aligned to its size, so RSP & ~(CPU_BLOCK_BYTES - 1) finds the current CPU, even in handlers. */
#define CPU_BLOCK_BYTES 32768
#define CPU_IST_TOP 12288
#define SPURIOUS_VECTOR 0xff
