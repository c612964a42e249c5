/* The guest runtime's small library: port/MMIO/MSR access, per-CPU state, serial, faults. */
#pragma once
#include "config.h"
#include "kvmprop_gen.h"

#define barrier() asm volatile("" ::: "memory")
#define NORETURN __attribute__((noreturn))

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { asm volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	asm volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi)::"memory");
	return ((u64)hi << 32) | lo;
}
static inline u64 cpl(void)
{
	u64 cs;
	asm volatile("mov %%cs, %0" : "=r"(cs));
	return cs & 3;
}

static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
	return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
	asm volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline void cpuid4(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	asm volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void cpu_relax(void) { asm volatile("pause" ::: "memory"); }
static inline u64 read_cr2(void) { u64 v; asm volatile("mov %%cr2, %0" : "=r"(v)); return v; }

/* Saved callee-saved state for catch_set(); layout fixed by entry.S. */
struct catch_frame {
	u64 rbx, rbp, r12, r13, r14, r15, rsp, rip, cs, ss;
};
int catch_set(struct catch_frame *cf) __attribute__((returns_twice));

/* What a caught fault looked like. */
struct fault {
	u64 vector, error, rip, cr2;
};

/* Register frame built by isr_common (entry.S), lowest address first. */
struct frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss;
};

struct tss {
	u32 reserved0;
	u64 rsp[3];
	u64 reserved1;
	u64 ist[7];
	u64 reserved2;
	u16 reserved3;
	u16 iomap_base;
	/* I/O permission bitmap: every port allowed (0 bits), then the required all-ones byte. */
	u8 iomap[8192 + 1];
} __attribute__((packed));

struct cpu {
	u32 index;
	u32 apic_id;
	u32 x2apic;			/* LAPIC mode, for EOIs */
	u32 irq_on;			/* the thread's IF: at native CPL 3 PUSHF shows the host's flags */
	struct catch_frame *catch_op;	/* armed while one op runs: its fault is recorded, the thread goes on */
	struct catch_frame *catch_thread;	/* armed while a thread runs: a fault ends the thread */
	struct catch_frame *catch_exit;	/* where a ring-3 thread's VEC_THREAD_EXIT lands */
	struct fault fault;		/* the last caught fault */
	struct thread_status *status;
	u8 *irq_log;
	struct tss tss;
};

static inline struct cpu *this_cpu(void)
{
	u64 rsp;
	asm volatile("mov %%rsp, %0" : "=r"(rsp));
	return (struct cpu *)(rsp & ~(u64)(CPU_BLOCK_BYTES - 1));
}

/* Program and mailbox, at fixed guest-physical addresses. */
#define PROGRAM ((const struct prog_header *)LAYOUT_PROGRAM)
#define MAILBOX ((volatile struct mailbox *)LAYOUT_MAILBOX)
static inline struct thread_status *thread_status_of(u32 i)
{
	return (struct thread_status *)(LAYOUT_MAILBOX + MAILBOX_THREADS_OFFSET + i * sizeof(struct thread_status));
}
static inline const struct thread_desc *thread_desc_of(u32 i)
{
	return (const struct thread_desc *)(LAYOUT_PROGRAM + sizeof(struct prog_header) + i * sizeof(struct thread_desc));
}

/* lib.c */
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);
void serial_putc(char c);
void serial_puts(const char *s);
void serial_hex(u64 v);
void serial_dec(u64 v);
void lapic_eoi(struct cpu *c);
NORETURN void guest_exit(int failed);

/* Privileged instructions work in either ring: at CPL 3 they trap to ring 0, which performs them
 * (main.c emulate_for_user). */
static inline u64 priv_rdmsr(u32 msr) { return rdmsr(msr); }
static inline void priv_wrmsr(u32 msr, u64 v) { wrmsr(msr, v); }
static inline void irq_enable(struct cpu *c)
{
	asm volatile("sti" ::: "memory");
	c->irq_on = 1;
}
static inline void irq_disable(struct cpu *c)
{
	asm volatile("cli" ::: "memory");
	c->irq_on = 0;
}

/* interp.c */
void run_thread(struct cpu *c, u32 index);

/* main.c */
extern volatile u32 nthreads;
