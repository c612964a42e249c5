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

struct steal_time;

struct cpu {
	u32 index;
	u32 apic_id;
	u32 x2apic;			/* LAPIC mode: every apic_read/apic_write follows it */
	u32 irq_on;			/* the thread's IF: at native CPL 3 PUSHF shows the host's flags */
	struct catch_frame *catch_op;	/* armed while one op runs: its fault is recorded, the thread goes on */
	struct catch_frame *catch_thread;	/* armed while a thread runs: a fault ends the thread */
	struct catch_frame *catch_exit;	/* where a ring-3 thread's VEC_THREAD_EXIT lands */
	struct fault fault;		/* the last caught fault */
	u64 exceptions;			/* exceptions (vectors 0-31 but NMI) that reached isr_dispatch's catch path */
	struct thread_status *status;
	u8 *irq_log;
	volatile struct steal_time *steal;	/* this vCPU's steal time area, when enabled (PROGRAM_FLAGS.stealTime) */
	u8 isr_action[256];		/* per vector: ISR_ACTION_* (the isrAction op) */
	u32 stack_armed;		/* an execStack set-up is in place (stack_setup) */
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

/*
 * The local APIC, in whichever mode it is in: the one way the guest touches it (SVR, ID, EOI, ICR,
 * and the apicRead/apicWrite ops). `reg` is the xAPIC offset (APIC_REG_*, from abi.ts APIC_REGS).
 *  - xAPIC: 32-bit MMIO at APIC_MMIO_BASE + reg. The ICR is two registers: apic_write(APIC_REG_ICR)
 *    writes bits 63:32 to ICR2 (0x310) first, then the low half to 0x300, which sends; apic_read
 *    returns both halves.
 *  - x2APIC: MSR X2APIC_MSR_BASE + reg/16 with all 64 bits; the ICR is one MSR (destination in bits
 *    63:32). A register x2APIC lacks (0x310, reserved ones) or reserved bits raise #GP.
 * At CPL 3 the RDMSR/WRMSR trap to ring 0, which performs them (main.c emulate_for_user), and MMIO
 * runs natively. The mode is c->x2apic, kept in step with IA32_APIC_BASE by every write the guest
 * makes to it (lapic_x2apic_on, the wrmsr op): reading the MSR here would cost ring-3 callers a trap.
 */
#define MSR_APIC_BASE 0x1b
static inline u64 apic_read(struct cpu *c, u32 reg)
{
	if (c->x2apic)
		return rdmsr(X2APIC_MSR_BASE + (reg >> 4));
	u64 v = mmio_read32(APIC_MMIO_BASE + reg);
	if (reg == APIC_REG_ICR)
		v |= (u64)mmio_read32(APIC_MMIO_BASE + APIC_REG_ICR2) << 32;
	return v;
}
static inline void apic_write(struct cpu *c, u32 reg, u64 v)
{
	if (c->x2apic) {
		wrmsr(X2APIC_MSR_BASE + (reg >> 4), v);
		return;
	}
	if (reg == APIC_REG_ICR)
		mmio_write32(APIC_MMIO_BASE + APIC_REG_ICR2, (u32)(v >> 32));
	mmio_write32(APIC_MMIO_BASE + reg, (u32)v);
}
/* This CPU's APIC ID: bits 31:24 of the ID register in xAPIC mode, all 32 bits in x2APIC mode. */
static inline u32 apic_id(struct cpu *c)
{
	u32 v = (u32)apic_read(c, APIC_REG_ID);
	return c->x2apic ? v : v >> 24;
}
/* An IPI to one APIC ID: the destination goes where the mode puts it (ICR bits 63:56 or 63:32). */
static inline void apic_send_ipi(struct cpu *c, u32 dest, u32 icr_low)
{
	apic_write(c, APIC_REG_ICR, ((u64)dest << (c->x2apic ? 32 : 56)) | icr_low);
}

/* lib.c */
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);
void serial_putc(char c);
void serial_puts(const char *s);
void serial_hex(u64 v);
void serial_dec(u64 v);
void lapic_eoi(struct cpu *c);
/* Leave through isa-debug-exit with an EXIT_VALUE_* (after the holdExit handshake). */
NORETURN void guest_exit(u8 value);

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
/* execStack: bit 0, RSP0 = LAYOUT_NOT_PRESENT_STACK; bit 1, the #PF gate on IST 1. Undo puts both back (idempotent). */
void stack_setup(struct cpu *c, u32 stack);
void stack_setup_undo(struct cpu *c);
