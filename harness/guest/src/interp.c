/*
 * The workload interpreter: one loop over a thread's bytecode. Ops and their record layouts come
 * from the generated header, and so does the dispatch of every op but the control ops (end,
 * loopBegin, loopEnd): decode, operand checks, record, result pre-fill and the op-level catch
 * (kvmprop_gen.h dispatch_op, rendered by harness/guest/header.ts from ir/ops.ts). This file says
 * how each op touches the machine (exec_<op>) and walks loops.
 *
 * Every recording op whose faults go to its record runs under an op-level catch: an exception it
 * raises is written into its record header (the models decide whether that was expected) and the
 * thread goes on.
 */
#define KVMPROP_INTERP 1
#include "runtime.h"

struct loop {
	u32 start;		/* offset of the first op of the body */
	u32 remaining;		/* iterations left after this one; unused when forever */
	u32 forever;
};

struct barrier_state {
	volatile u32 count;
	volatile u32 generation;
};
static struct barrier_state barriers[64];

struct ctx {
	struct cpu *cpu;
	struct thread_status *st;
	u8 *out, *out_end;
	u64 canary;
};

static u8 canary_byte(u64 canary, u64 i) { return (u8)(canary >> (8 * (i & 7))); }

/* Start a record of `payload` bytes (header excluded); NULL when the region is full. */
static u8 *record_begin(struct ctx *x, u8 opcode, u64 payload)
{
	u64 need = RECORD_HEADER_BYTES + payload;
	if (x->out + need > x->out_end)
		return NULL;
	struct record_header *h = (struct record_header *)x->out;
	h->opcode = opcode;
	h->fault_vector = NO_FAULT;
	h->flags = 0;
	h->error_code = 0;
	u8 *p = x->out + RECORD_HEADER_BYTES;
	x->out += need;
	x->st->obs_used += need;
	return p;
}

static void record_fault(u8 *payload, struct cpu *c)
{
	struct record_header *h = (struct record_header *)(payload - RECORD_HEADER_BYTES);
	h->fault_vector = (u8)c->fault.vector;
	h->error_code = (u32)c->fault.error;
	if (h->opcode == OP_EXEC || h->opcode == OP_EXEC_STACK) { /* exec also records where the fault was, CR2 and the handler count */
		struct res_exec *r = (struct res_exec *)payload;
		r->fault_rip = c->fault.rip;
		r->cr2 = c->fault.cr2;
		r->exceptions_after = c->exceptions;
	}
}

/* Run one exec function under an op-level catch, so the interpreter's own state never lives across
 * a longjmp; a fault lands in the record header. (The generated dispatch calls it.) */
static inline void clear_ac(void)
{
	asm volatile("pushfq; andq $~0x40000, (%%rsp); popfq" ::: "memory", "cc");
}

static __attribute__((noinline)) int run_caught(struct ctx *x, exec_fn fn, const void *op, u8 *res)
{
	struct catch_frame cf;
	if (catch_set(&cf)) {
		clear_ac(); /* an exec op's code may have set RFLAGS.AC: the interpreter runs without it */
		stack_setup_undo(x->cpu); /* an execStack op's RSP0 and #PF gate */
		if (x->cpu->fault.vector == 16) /* #MF: the code's x87 exception stays pending; FNINIT (x87 ran at this CPL) */
			asm volatile("fninit");
		record_fault(res, x->cpu);
		return 0;
	}
	x->cpu->catch_op = &cf;
	fn(x, op, res);
	clear_ac();
	x->cpu->catch_op = NULL;
	return 1;
}

static void fill_canary(struct ctx *x, u8 *buf, u64 n)
{
	for (u64 i = 0; i < n; i++)
		buf[i] = canary_byte(x->canary, i);
}

/* ---- exec functions: signatures from kvmprop_gen.h; result fields arrive pre-filled ---- */

void cpuid_canary(u64 rax_in, u64 rcx_in, u64 canary, u64 out[15]);
void cpuid_canary_cpl0(u64 rax_in, u64 rcx_in, u64 canary, u64 out[15]);

static inline int check_cpuid(struct ctx *x, const struct op_cpuid *o)
{
	/* A ring-0 thread cannot run CPUID at CPL 3. */
	return !(o->cpl == 3 && cpl() == 0);
}

static inline void exec_cpuid(struct ctx *x, const struct op_cpuid *o, struct res_cpuid *r)
{
	u64 regs[15];
	u64 hi = x->canary & 0xffffffff00000000ul;
	/* A CPL-0 query from a ring-3 thread goes through ring 0's #UD service; otherwise CPUID runs
	 * right here (check_cpuid refused a CPL-3 query in a ring-0 thread). */
	if (o->cpl == 0 && cpl() == 3)
		cpuid_canary_cpl0(hi | o->leaf, hi | o->subleaf, x->canary, regs);
	else
		cpuid_canary(hi | o->leaf, hi | o->subleaf, x->canary, regs);
	r->rax = regs[0];
	r->rbx = regs[1];
	r->rcx = regs[2];
	r->rdx = regs[3];
	/* regs[4..14] = rsi rdi rbp r8..r15; report them in x86 GPR numbering. */
	static const u8 gpr_no[15] = { 0, 3, 1, 2, 6, 7, 5, 8, 9, 10, 11, 12, 13, 14, 15 };
	u32 clobbered = 0;
	for (int i = 4; i < 15; i++)
		if (regs[i] != x->canary)
			clobbered |= 1u << gpr_no[i];
	r->clobbered = clobbered;
}

static inline void exec_pio_in(struct ctx *x, const struct op_pio_in *o, struct res_pio_in *r)
{
	u64 v = r->rax; /* the canary */
	switch (o->width) {
	case 1: asm volatile("inb %%dx, %%al" : "+a"(v) : "d"(o->port) : "memory"); break;
	case 2: asm volatile("inw %%dx, %%ax" : "+a"(v) : "d"(o->port) : "memory"); break;
	default: asm volatile("inl %%dx, %%eax" : "+a"(v) : "d"(o->port) : "memory"); break;
	}
	r->rax = v;
}

static inline void exec_mmio_read(struct ctx *x, const struct op_mmio_read *o, struct res_mmio_read *r)
{
	u64 v = r->rax; /* the canary */
	switch (o->width) {
	case 1: asm volatile("movb (%1), %%al" : "+a"(v) : "r"(o->addr) : "memory"); break;
	case 2: asm volatile("movw (%1), %%ax" : "+a"(v) : "r"(o->addr) : "memory"); break;
	case 4: asm volatile("movl (%1), %%eax" : "+a"(v) : "r"(o->addr) : "memory"); break;
	default: asm volatile("movq (%1), %%rax" : "+a"(v) : "r"(o->addr) : "memory"); break;
	}
	r->rax = v;
}

static inline void exec_pio_ins(struct ctx *x, const struct op_pio_ins *o, struct res_pio_ins *r, u8 *dst)
{
	u64 rcx = o->count, rdi = (u64)dst;
	switch (o->width) {
	case 1: asm volatile("rep insb" : "+c"(rcx), "+D"(rdi) : "d"(o->port) : "memory"); break;
	case 2: asm volatile("rep insw" : "+c"(rcx), "+D"(rdi) : "d"(o->port) : "memory"); break;
	default: asm volatile("rep insl" : "+c"(rcx), "+D"(rdi) : "d"(o->port) : "memory"); break;
	}
	r->rcx = rcx;
	r->rdi_delta = rdi - (u64)dst;
}

static inline void exec_mmio_movs(struct ctx *x, const struct op_mmio_movs *o, struct res_mmio_movs *r, u8 *dst)
{
	u64 rcx = o->count, rdi = (u64)dst, rsi = o->addr;
	switch (o->width) {
	case 1: asm volatile("rep movsb" : "+c"(rcx), "+D"(rdi), "+S"(rsi) : : "memory"); break;
	case 2: asm volatile("rep movsw" : "+c"(rcx), "+D"(rdi), "+S"(rsi) : : "memory"); break;
	case 4: asm volatile("rep movsl" : "+c"(rcx), "+D"(rdi), "+S"(rsi) : : "memory"); break;
	default: asm volatile("rep movsq" : "+c"(rcx), "+D"(rdi), "+S"(rsi) : : "memory"); break;
	}
	r->rcx = rcx;
	r->rsi_delta = rsi - o->addr;
	r->rdi_delta = rdi - (u64)dst;
}

static inline void exec_pio_out(struct ctx *x, const struct op_pio_out *o)
{
	switch (o->width) {
	case 1: outb(o->port, (u8)o->value); break;
	case 2: outw(o->port, (u16)o->value); break;
	default: outl(o->port, o->value); break;
	}
}

static inline void exec_mmio_write(struct ctx *x, const struct op_mmio_write *o)
{
	switch (o->width) {
	case 1: *(volatile u8 *)o->addr = (u8)o->value; break;
	case 2: *(volatile u16 *)o->addr = (u16)o->value; break;
	case 4: *(volatile u32 *)o->addr = (u32)o->value; break;
	default: *(volatile u64 *)o->addr = o->value; break;
	}
}

static u8 snippets[LAYOUT_MAX_CPUS][32] __attribute__((aligned(32)));

static inline void exec_exec(struct ctx *x, const struct op_exec *o, struct res_exec *r)
{
	u8 *code = snippets[x->cpu->index];
	memcpy(code, &o->lo, 8);
	memcpy(code + 8, &o->hi, 8);
	code[16] = 0xc3; /* ret */
	u64 rax = x->canary, rdx = x->canary, flags;
	r->code_base = (u64)code;
	r->exceptions_before = x->cpu->exceptions;
	r->exceptions_after = x->cpu->exceptions; /* until the code has run: a fault overwrites it */
	asm volatile("call *%3; pushfq; popq %2"
		     : "+a"(rax), "+d"(rdx), "=r"(flags)
		     : "r"(code)
		     : "rcx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
	r->rax = rax;
	r->rdx = rdx;
	r->rflags = flags;
	r->exceptions_after = x->cpu->exceptions;
}

_Static_assert(sizeof(struct res_exec_stack) == sizeof(struct res_exec), "execStack records what exec records");

static inline void exec_exec_stack(struct ctx *x, const struct op_exec_stack *o, struct res_exec_stack *r)
{
	const struct op_exec plain = { .lo = o->lo, .hi = o->hi };
	stack_setup(x->cpu, o->stack);
	exec_exec(x, &plain, (struct res_exec *)r);
	stack_setup_undo(x->cpu);
}

static inline void exec_rdmsr(struct ctx *x, const struct op_rdmsr *o, struct res_rdmsr *r)
{
	r->value = priv_rdmsr(o->msr);
}

/* WRMSR; only a write that did not fault returns here, so the LAPIC mode every APIC access uses follows it. */
static void wrmsr_tracked(struct cpu *c, u32 msr, u64 value)
{
	priv_wrmsr(msr, value);
	if (msr == MSR_APIC_BASE)
		c->x2apic = (value >> 10) & 1;
}

static inline void exec_wrmsr(struct ctx *x, const struct op_wrmsr *o, struct res_wrmsr *r)
{
	wrmsr_tracked(x->cpu, o->msr, o->value);
}

static inline void exec_rdtsc(struct ctx *x, const struct op_rdtsc *o, struct res_rdtsc *r)
{
	r->tsc = rdtsc();
}

static inline void exec_delay_tsc(struct ctx *x, const struct op_delay_tsc *o)
{
	u64 until = rdtsc() + o->cycles;
	while (rdtsc() < until) {
		x->st->heartbeat++;
		cpu_relax();
	}
}

static inline void exec_sti(struct ctx *x, const struct op_sti *o) { irq_enable(x->cpu); }
static inline void exec_cli(struct ctx *x, const struct op_cli *o) { irq_disable(x->cpu); }

static u32 irq_count(struct cpu *c, u8 vector) { return ((volatile u32 *)c->irq_log)[vector]; }

static inline void exec_wait_irq(struct ctx *x, const struct op_wait_irq *o, struct res_wait_irq *r)
{
	struct cpu *c = x->cpu;
	u32 start = irq_count(c, o->vector);
	u64 t0 = rdtsc(), deadline = t0 + o->timeout_cycles;
	int was_enabled = c->irq_on;
	if (!was_enabled)
		irq_enable(c);
	while (irq_count(c, o->vector) - start < o->count && rdtsc() < deadline) {
		x->st->heartbeat++;
		cpu_relax();
	}
	if (!was_enabled)
		irq_disable(c);
	r->seen = irq_count(c, o->vector) - start;
	r->tsc_start = t0;
	r->tsc_end = rdtsc();
}

static inline void exec_irq_counts(struct ctx *x, const struct op_irq_counts *o, struct res_irq_counts *r)
{
	struct irq_log_head *h = (struct irq_log_head *)(x->cpu->irq_log + IRQ_LOG_COUNTS_BYTES);
	r->total = h->total;
	r->logged = h->next;
}

/* APIC registers are 16-byte aligned in a 4 KiB page (x2APIC: MSRs 0x800-0x8ff). */
static inline int apic_reg_ok(u16 reg) { return (reg & 0xf) == 0 && reg < 0x1000; }
static inline int check_apic_read(struct ctx *x, const struct op_apic_read *o) { return apic_reg_ok(o->reg); }
static inline int check_apic_write(struct ctx *x, const struct op_apic_write *o) { return apic_reg_ok(o->reg); }

static inline void exec_apic_read(struct ctx *x, const struct op_apic_read *o, struct res_apic_read *r)
{
	r->value = apic_read(x->cpu, o->reg);
}

static inline void exec_apic_write(struct ctx *x, const struct op_apic_write *o, struct res_apic_write *r)
{
	r->tsc_before = rdtsc();
	apic_write(x->cpu, o->reg, o->value);
	r->tsc_after = rdtsc();
}

static inline void exec_wrmsr_at(struct ctx *x, const struct op_wrmsr_at *o, struct res_wrmsr_at *r)
{
	u64 before = rdtsc();
	u64 v = o->relative ? before + o->value : o->value;
	r->tsc_before = before;
	r->written = v;
	wrmsr_tracked(x->cpu, o->msr, v);
	r->tsc_after = rdtsc();
}

static inline void exec_isr_action(struct ctx *x, const struct op_isr_action *o)
{
	x->cpu->isr_action[o->vector] = o->action;
}

/* pvclock_vcpu_time_info (Linux arch/x86/include/asm/pvclock-abi.h). */
struct pvclock_info {
	u32 version, pad0;
	u64 tsc_timestamp, system_time;
	u32 mul;
	s8 shift;
	u8 flags, pad[2];
};

/* One consistent read of a pvclock area (version even and unchanged, at most 1000 tries) and the ABI's ns. */
struct pvclock_sample {
	u64 ns, tsc, ts, st;
	u32 mul, v0, v1;
	s8 shift;
	u8 flags;
};

static inline void pvclock_sample(volatile struct pvclock_info *p, struct pvclock_sample *s)
{
	for (int tries = 0;; tries++) {
		s->v0 = p->version;
		barrier();
		s->ts = p->tsc_timestamp;
		s->st = p->system_time;
		s->mul = p->mul;
		s->shift = p->shift;
		s->flags = p->flags;
		s->tsc = rdtsc();
		barrier();
		s->v1 = p->version;
		if (((s->v0 & 1) == 0 && s->v0 == s->v1) || tries >= 1000)
			break;
	}
	u64 delta = s->tsc - s->ts;
	if (s->shift < 0)
		delta >>= -s->shift;
	else
		delta <<= s->shift;
	s->ns = s->st + (u64)(((unsigned __int128)delta * s->mul) >> 32);
}

static inline void exec_kvmclock_read(struct ctx *x, const struct op_kvmclock_read *o, struct res_kvmclock_read *r)
{
	struct pvclock_sample s;
	(void)x;
	pvclock_sample((volatile struct pvclock_info *)o->addr, &s);
	r->ns = s.ns;
	r->tsc = s.tsc;
	r->tsc_timestamp = s.ts;
	r->system_time = s.st;
	r->mul = s.mul;
	r->version = s.v0;
	r->version_after = s.v1;
	r->shift_flags = (u8)s.shift | ((u32)s.flags << 8);
}

/* One CMOS register read, with interrupts off between selecting it and reading it. */
static u8 cmos_read(struct ctx *x, u8 index)
{
	int was_enabled = x->cpu->irq_on;
	if (was_enabled)
		irq_disable(x->cpu);
	outb(0x70, index);
	u8 v = inb(0x71);
	if (was_enabled)
		irq_enable(x->cpu);
	return v;
}

static inline void exec_rtc_seconds_edge(struct ctx *x, const struct op_rtc_seconds_edge *o, struct res_rtc_seconds_edge *r)
{
	u64 prev = rdtsc();
	u8 old = cmos_read(x, 0);
	/* The old value held at least from here: the timeout counts from the first read, not from the
	 * op's start (a vCPU descheduled before that read would shorten the wait). */
	u64 first = rdtsc();
	u32 polls = 1;
	for (;;) {
		u64 t0 = rdtsc();
		u8 v = cmos_read(x, 0);
		u64 t1 = rdtsc();
		polls++;
		x->st->heartbeat++;
		if (v != old) {
			r->tsc_before = prev;
			r->tsc_after = t1;
			r->seconds = v;
			r->minutes = cmos_read(x, 2);
			r->hours = cmos_read(x, 4);
			r->reg_b = cmos_read(x, 0x0b);
			break;
		}
		prev = t0;
		if (t0 - first > o->timeout_cycles) {
			/* Unchanged from before `first` to after t0: at least t0 - first. */
			r->tsc_before = first;
			r->tsc_after = t0;
			r->seconds = v;
			r->timed_out = 1;
			break;
		}
	}
	r->polls = polls;
}

static inline void exec_fill_xmm(struct ctx *x, const struct op_fill_xmm *o)
{
	u64 v[32];
	(void)x;
	for (int i = 0; i < 16; i++) {
		v[2 * i] = o->seed + (u64)i;
		v[2 * i + 1] = ~(o->seed + (u64)i);
	}
	__asm__ volatile("movdqu 0(%0), %%xmm0\n\tmovdqu 16(%0), %%xmm1\n\tmovdqu 32(%0), %%xmm2\n\tmovdqu 48(%0), %%xmm3\n\t"
			 "movdqu 64(%0), %%xmm4\n\tmovdqu 80(%0), %%xmm5\n\tmovdqu 96(%0), %%xmm6\n\tmovdqu 112(%0), %%xmm7\n\t"
			 "movdqu 128(%0), %%xmm8\n\tmovdqu 144(%0), %%xmm9\n\tmovdqu 160(%0), %%xmm10\n\tmovdqu 176(%0), %%xmm11\n\t"
			 "movdqu 192(%0), %%xmm12\n\tmovdqu 208(%0), %%xmm13\n\tmovdqu 224(%0), %%xmm14\n\tmovdqu 240(%0), %%xmm15"
			 : : "r"(v) : "memory");
}

/* svm.c */
void svm_run_l2(const struct op_svm_run *o, struct res_svm_run *r);

static inline int check_svm_run(struct ctx *x, const struct op_svm_run *o)
{
	/* svm.c has one VMCB and one L2 report: vCPU 0 only, and VMRUN needs CPL 0. */
	return cpl() == 0 && x->cpu->index == 0;
}

static inline void exec_svm_run(struct ctx *x, const struct op_svm_run *o, struct res_svm_run *r)
{
	svm_run_l2(o, r);
}

/* A clock watch in guest RAM: it migrates with the guest, so a step back across a switchover is counted. */
struct clock_watch {
	u64 last, backwards, worst_back, samples;
};

static inline void exec_clock_watch(struct ctx *x, const struct op_clock_watch *o)
{
	volatile struct clock_watch *w = (volatile struct clock_watch *)o->slot;
	u64 now;
	(void)x;
	if (o->kind == 1) {
		struct pvclock_sample s;
		pvclock_sample((volatile struct pvclock_info *)o->clock, &s);
		now = s.ns;
	} else if (o->kind == 2) {
		/* kvm_steal_time: steal (u64) then version (u32), odd while KVM writes it. */
		volatile u64 *steal = (volatile u64 *)o->clock;
		volatile u32 *version = (volatile u32 *)(o->clock + 8);
		u32 v;
		do {
			v = *version;
			barrier();
			now = *steal;
			barrier();
		} while ((v & 1) || v != *version);
	} else {
		now = rdtsc();
	}
	if (w->samples && now < w->last) {
		w->backwards++;
		if (w->last - now > w->worst_back)
			w->worst_back = w->last - now;
	}
	w->last = now;
	w->samples++;
}

static void barrier_wait(struct thread_status *st, u32 id)
{
	struct barrier_state *b = &barriers[id & 63];
	u32 gen = b->generation;
	if (__atomic_add_fetch(&b->count, 1, __ATOMIC_SEQ_CST) == nthreads) {
		b->count = 0;
		__atomic_add_fetch(&b->generation, 1, __ATOMIC_SEQ_CST);
	} else {
		while (b->generation == gen) {
			st->heartbeat++;
			cpu_relax();
		}
	}
}

static inline void exec_barrier(struct ctx *x, const struct op_barrier *o) { barrier_wait(x->st, o->id); }
static inline void exec_mark(struct ctx *x, const struct op_mark *o) { x->st->marker = o->value; }

static inline void exec_dirty_pages(struct ctx *x, const struct op_dirty_pages *o)
{
	for (u64 i = 0; i < o->pages; i++) {
		(*(volatile u8 *)(o->base + i * (u64)o->stride))++;
		if ((i & 4095) == 4095)
			x->st->heartbeat++;
	}
}

static inline void exec_dirty_write(struct ctx *x, const struct op_dirty_write *o)
{
	/* The vector writers' addend (1 in the low qword only) and where they keep YMM0/ZMM0 meanwhile. */
	static const u64 one[8] = { 1 };
	u8 save[64];
	u64 j = 0; /* (i * step) mod pages, stepped without a division */
	for (u64 i = 0; i < o->pages; i++) {
		volatile u64 *p = (volatile u64 *)(o->base + j * (u64)o->stride);
		j += o->step;
		if (j >= o->pages)
			j -= o->pages;
		u64 next = *p + 1;
		switch (o->writer) {
		case 0:
			*p = next;
			break;
		case 1:
			__asm__ volatile("lock addq $1, %0" : "+m"(*p) : : "memory");
			break;
		case 2:
			__asm__ volatile("movnti %1, %0" : "=m"(*p) : "r"(next) : "memory");
			break;
		case 3: {
			u64 *dst = (u64 *)p;
			u64 n = 1;
			__asm__ volatile("rep stosq" : "+D"(dst), "+c"(n) : "a"(next) : "memory");
			break;
		}
		case 5:
			/* VMOVDQU ymm: the 32 bytes at p read, 1 added to the low qword (the counter), all 32
			 * written back: the other 24 bytes get their own values again (nobody else writes them:
			 * generators/migration.ts layoutWorkload keeps every region's whole access span apart).
			 * YMM0 is put back, so the registers fillXmm loaded keep their pattern. */
			__asm__ volatile("vmovdqu %%ymm0, %[save]\n\t"
					 "vmovdqu %[m], %%ymm0\n\t"
					 "vpaddq %[one], %%ymm0, %%ymm0\n\t"
					 "vmovdqu %%ymm0, %[m]\n\t"
					 "vmovdqu %[save], %%ymm0"
					 : [m] "+m"(*(u8(*)[32])p), [save] "=m"(save)
					 : [one] "m"(one)
					 : "memory");
			break;
		case 6:
			/* The same with ZMM0 and VMOVDQU64: 64 bytes. */
			__asm__ volatile("vmovdqu64 %%zmm0, %[save]\n\t"
					 "vmovdqu64 %[m], %%zmm0\n\t"
					 "vpaddq %[one], %%zmm0, %%zmm0\n\t"
					 "vmovdqu64 %%zmm0, %[m]\n\t"
					 "vmovdqu64 %[save], %%zmm0"
					 : [m] "+m"(*(u8(*)[64])p), [save] "=m"(save)
					 : [one] "m"(one)
					 : "memory");
			break;
		default: {
			u64 src[1] = { next };
			const u64 *s = src;
			u64 *dst = (u64 *)p;
			u64 n = 1;
			__asm__ volatile("rep movsq" : "+D"(dst), "+S"(s), "+c"(n) : : "memory");
			break;
		}
		}
		if ((i & 4095) == 4095)
			x->st->heartbeat++;
	}
	if (o->writer == 2)
		__asm__ volatile("sfence" : : : "memory");
}

/* ---- the loop: control ops by hand, every other op through the generated dispatch ---- */

void run_thread(struct cpu *c, u32 index)
{
	const struct thread_desc *td = thread_desc_of(index);
	const u8 *code = (const u8 *)(LAYOUT_PROGRAM + td->code_off);
	u32 len = td->code_len;
	struct ctx x = {
		.cpu = c,
		.st = c->status,
		.out = (u8 *)td->obs_addr,
		.out_end = (u8 *)(td->obs_addr + td->obs_len),
		.canary = PROGRAM->canary,
	};
	struct thread_status *st = c->status;
	struct loop loops[8];
	int depth = 0;
	u32 pc = 0;
	int why;

	st->state = THREAD_RUNNING;
	while (pc < len) {
		u8 opcode = code[pc];
		st->pc = pc;
		switch (opcode) {
		case OP_END:
			pc = len;
			continue;
		case OP_LOOP_BEGIN: {
			struct op_loop_begin o;
			if (len - pc < sizeof(o)) {
				why = BAD_OP_TRUNCATED;
				goto bad_op;
			}
			__builtin_memcpy(&o, code + pc, sizeof(o));
			pc += sizeof(o);
			if (depth == 8) {
				why = BAD_OP_LOOP_TOO_DEEP;
				goto bad_op;
			}
			loops[depth].start = pc;
			loops[depth].forever = o.count == 0;
			loops[depth].remaining = o.count ? o.count - 1 : 0;
			depth++;
			break;
		}
		case OP_LOOP_END: {
			pc++;
			if (depth == 0) {
				why = BAD_OP_LOOP_UNMATCHED;
				goto bad_op;
			}
			struct loop *l = &loops[depth - 1];
			if (l->forever || l->remaining) {
				if (!l->forever)
					l->remaining--;
				pc = l->start;
			} else {
				depth--;
			}
			break;
		}
		default:
			why = dispatch_op(&x, x.canary, code, len, &pc);
			if (why < 0)
				goto overflow;
			if (why > 0)
				goto bad_op;
			break;
		}
		st->ops_done++;
	}
	st->state = THREAD_DONE;
	return;
overflow:
	st->state = THREAD_OVERFLOW;
	return;
bad_op:
	st->bad_opcode = code[st->pc];
	st->bad_reason = (u32)why;
	st->state = THREAD_BAD_OP;
}
