/*
 * The workload interpreter: one loop over a thread's bytecode. Ops and their record layouts come
 * from the generated header, so this file only says how each op touches the machine.
 *
 * Every recording op runs under an op-level catch: an exception it raises is written into its
 * record header (the models decide whether that was expected) and the thread goes on.
 */
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

static u64 round8(u64 n) { return (n + 7) & ~7ul; }

#define PAYLOAD(tag) round8(sizeof(struct res_##tag))

static void record_fault(u8 *payload, struct cpu *c)
{
	struct record_header *h = (struct record_header *)(payload - RECORD_HEADER_BYTES);
	h->fault_vector = (u8)c->fault.vector;
	h->error_code = (u32)c->fault.error;
}

/*
 * Exec functions: one per recording op that touches the machine, each writing its result fields.
 * run_caught() runs one under an op-level catch, so the interpreter's own state never lives across
 * a longjmp.
 */
typedef void (*exec_fn)(struct ctx *x, const void *op, u8 *res);

static __attribute__((noinline)) int run_caught(struct ctx *x, exec_fn fn, const void *op, u8 *res)
{
	struct catch_frame cf;
	if (catch_set(&cf)) {
		record_fault(res, x->cpu);
		return 0;
	}
	x->cpu->catch_op = &cf;
	fn(x, op, res);
	x->cpu->catch_op = NULL;
	return 1;
}

void cpuid_canary(u64 rax_in, u64 rcx_in, u64 canary, u64 out[15]);
void cpuid_canary_cpl0(u64 rax_in, u64 rcx_in, u64 canary, u64 out[15]);

static void exec_cpuid(struct ctx *x, const void *op, u8 *res)
{
	const struct op_cpuid *o = op;
	struct res_cpuid *r = (struct res_cpuid *)res;
	u64 regs[15];
	u64 hi = x->canary & 0xffffffff00000000ul;
	/* A CPL-0 query from a ring-3 thread goes through ring 0's #UD service; otherwise CPUID runs
	 * right here (the interpreter refused a CPL-3 query in a ring-0 thread). */
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
	r->pad = 0;
}

static void exec_pio_in(struct ctx *x, const void *op, u8 *res)
{
	const struct op_pio_in *o = op;
	struct res_pio_in *r = (struct res_pio_in *)res;
	u64 v = x->canary;
	switch (o->width) {
	case 1: asm volatile("inb %%dx, %%al" : "+a"(v) : "d"(o->port) : "memory"); break;
	case 2: asm volatile("inw %%dx, %%ax" : "+a"(v) : "d"(o->port) : "memory"); break;
	default: asm volatile("inl %%dx, %%eax" : "+a"(v) : "d"(o->port) : "memory"); break;
	}
	r->rax = v;
}

static void exec_mmio_read(struct ctx *x, const void *op, u8 *res)
{
	const struct op_mmio_read *o = op;
	struct res_mmio_read *r = (struct res_mmio_read *)res;
	u64 v = x->canary;
	switch (o->width) {
	case 1: asm volatile("movb (%1), %%al" : "+a"(v) : "r"(o->addr) : "memory"); break;
	case 2: asm volatile("movw (%1), %%ax" : "+a"(v) : "r"(o->addr) : "memory"); break;
	case 4: asm volatile("movl (%1), %%eax" : "+a"(v) : "r"(o->addr) : "memory"); break;
	default: asm volatile("movq (%1), %%rax" : "+a"(v) : "r"(o->addr) : "memory"); break;
	}
	r->rax = v;
}

static void fill_canary(struct ctx *x, u8 *buf, u64 n)
{
	for (u64 i = 0; i < n; i++)
		buf[i] = canary_byte(x->canary, i);
}

static void exec_pio_ins(struct ctx *x, const void *op, u8 *res)
{
	const struct op_pio_ins *o = op;
	struct res_pio_ins *r = (struct res_pio_ins *)res;
	u8 *dst = res + PAYLOAD(pio_ins) + STRING_GUARD_BYTES;
	u64 rcx = o->count, rdi = (u64)dst;
	switch (o->width) {
	case 1: asm volatile("rep insb" : "+c"(rcx), "+D"(rdi) : "d"(o->port) : "memory"); break;
	case 2: asm volatile("rep insw" : "+c"(rcx), "+D"(rdi) : "d"(o->port) : "memory"); break;
	default: asm volatile("rep insl" : "+c"(rcx), "+D"(rdi) : "d"(o->port) : "memory"); break;
	}
	r->rcx = rcx;
	r->rdi_delta = rdi - (u64)dst;
}

static void exec_mmio_movs(struct ctx *x, const void *op, u8 *res)
{
	const struct op_mmio_movs *o = op;
	struct res_mmio_movs *r = (struct res_mmio_movs *)res;
	u8 *dst = res + PAYLOAD(mmio_movs) + STRING_GUARD_BYTES;
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

static u8 snippets[LAYOUT_MAX_CPUS][32] __attribute__((aligned(32)));

static void exec_exec(struct ctx *x, const void *op, u8 *res)
{
	const struct op_exec *o = op;
	struct res_exec *r = (struct res_exec *)res;
	u8 *code = snippets[x->cpu->index];
	memcpy(code, &o->lo, 8);
	memcpy(code + 8, &o->hi, 8);
	code[16] = 0xc3; /* ret */
	u64 rax = x->canary, rdx = x->canary, flags;
	asm volatile("call *%3; pushfq; popq %2"
		     : "+a"(rax), "+d"(rdx), "=r"(flags)
		     : "r"(code)
		     : "rcx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
	r->rax = rax;
	r->rdx = rdx;
	r->rflags = flags;
}

static void exec_rdmsr(struct ctx *x, const void *op, u8 *res)
{
	((struct res_rdmsr *)res)->value = priv_rdmsr(((const struct op_rdmsr *)op)->msr);
}

static void exec_wrmsr(struct ctx *x, const void *op, u8 *res)
{
	const struct op_wrmsr *o = op;
	priv_wrmsr(o->msr, o->value);
	if (o->msr == 0x1b)
		x->cpu->x2apic = (o->value >> 10) & 1;
}

static void pio_out(u16 port, u8 width, u32 v)
{
	switch (width) {
	case 1: outb(port, (u8)v); break;
	case 2: outw(port, (u16)v); break;
	default: outl(port, v); break;
	}
}

static void mmio_write(u64 addr, u8 width, u64 v)
{
	switch (width) {
	case 1: *(volatile u8 *)addr = (u8)v; break;
	case 2: *(volatile u16 *)addr = (u16)v; break;
	case 4: *(volatile u32 *)addr = (u32)v; break;
	default: *(volatile u64 *)addr = v; break;
	}
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

static u32 irq_count(struct cpu *c, u8 vector) { return ((volatile u32 *)c->irq_log)[vector]; }

#define DECODE(type, var)                     \
	struct type var;                      \
	memcpy(&var, code + pc, sizeof(var)); \
	pc += sizeof(var)

/* Run an op that records under an op-level catch; a fault lands in the record header. */
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

	st->state = THREAD_RUNNING;
	while (pc < len) {
		u8 opcode = code[pc];
		st->pc = pc;
		switch (opcode) {
		case OP_END:
			pc = len;
			continue;
		case OP_CPUID: {
			DECODE(op_cpuid, o);
			if (o.cpl != 0 && o.cpl != 3)
				goto bad_op;
			if (o.cpl == 3 && cpl() == 0)
				goto bad_op;
			u8 *r = record_begin(&x, opcode, PAYLOAD(cpuid));
			if (!r)
				goto overflow;
			run_caught(&x, exec_cpuid, &o, r);
			break;
		}
		case OP_PIO_IN: {
			DECODE(op_pio_in, o);
			if (o.width != 1 && o.width != 2 && o.width != 4)
				goto bad_op;
			u8 *r = record_begin(&x, opcode, PAYLOAD(pio_in));
			if (!r)
				goto overflow;
			((struct res_pio_in *)r)->rax = x.canary;
			run_caught(&x, exec_pio_in, &o, r);
			break;
		}
		case OP_MMIO_READ: {
			DECODE(op_mmio_read, o);
			if (o.width != 1 && o.width != 2 && o.width != 4 && o.width != 8)
				goto bad_op;
			u8 *r = record_begin(&x, opcode, PAYLOAD(mmio_read));
			if (!r)
				goto overflow;
			((struct res_mmio_read *)r)->rax = x.canary;
			run_caught(&x, exec_mmio_read, &o, r);
			break;
		}
		case OP_PIO_INS: {
			DECODE(op_pio_ins, o);
			if (o.width != 1 && o.width != 2 && o.width != 4)
				goto bad_op;
			u64 buf_bytes = round8(2 * STRING_GUARD_BYTES + (u64)o.width * o.count);
			u8 *r = record_begin(&x, opcode, PAYLOAD(pio_ins) + buf_bytes);
			if (!r)
				goto overflow;
			memset(r, 0, PAYLOAD(pio_ins));
			fill_canary(&x, r + PAYLOAD(pio_ins), buf_bytes);
			run_caught(&x, exec_pio_ins, &o, r);
			break;
		}
		case OP_MMIO_MOVS: {
			DECODE(op_mmio_movs, o);
			if (o.width != 1 && o.width != 2 && o.width != 4 && o.width != 8)
				goto bad_op;
			u64 buf_bytes = round8(2 * STRING_GUARD_BYTES + (u64)o.width * o.count);
			u8 *r = record_begin(&x, opcode, PAYLOAD(mmio_movs) + buf_bytes);
			if (!r)
				goto overflow;
			memset(r, 0, PAYLOAD(mmio_movs));
			fill_canary(&x, r + PAYLOAD(mmio_movs), buf_bytes);
			run_caught(&x, exec_mmio_movs, &o, r);
			break;
		}
		case OP_PIO_OUT: {
			DECODE(op_pio_out, o);
			pio_out(o.port, o.width, o.value);
			break;
		}
		case OP_MMIO_WRITE: {
			DECODE(op_mmio_write, o);
			mmio_write(o.addr, o.width, o.value);
			break;
		}
		case OP_EXEC: {
			DECODE(op_exec, o);
			u8 *r = record_begin(&x, opcode, PAYLOAD(exec));
			if (!r)
				goto overflow;
			memset(r, 0, PAYLOAD(exec));
			run_caught(&x, exec_exec, &o, r);
			break;
		}
		case OP_RDMSR: {
			DECODE(op_rdmsr, o);
			u8 *r = record_begin(&x, opcode, PAYLOAD(rdmsr));
			if (!r)
				goto overflow;
			((struct res_rdmsr *)r)->value = 0;
			run_caught(&x, exec_rdmsr, &o, r);
			break;
		}
		case OP_WRMSR: {
			DECODE(op_wrmsr, o);
			u8 *r = record_begin(&x, opcode, 0);
			if (!r)
				goto overflow;
			run_caught(&x, exec_wrmsr, &o, r);
			break;
		}
		case OP_RDTSC: {
			DECODE(op_rdtsc, o);
			(void)o;
			struct res_rdtsc *r = (struct res_rdtsc *)record_begin(&x, opcode, PAYLOAD(rdtsc));
			if (!r)
				goto overflow;
			r->tsc = rdtsc();
			break;
		}
		case OP_DELAY_TSC: {
			DECODE(op_delay_tsc, o);
			u64 until = rdtsc() + o.cycles;
			while (rdtsc() < until) {
				st->heartbeat++;
				cpu_relax();
			}
			break;
		}
		case OP_STI:
			pc++;
			irq_enable(c);
			break;
		case OP_CLI:
			pc++;
			irq_disable(c);
			break;
		case OP_WAIT_IRQ: {
			DECODE(op_wait_irq, o);
			struct res_wait_irq *r = (struct res_wait_irq *)record_begin(&x, opcode, PAYLOAD(wait_irq));
			if (!r)
				goto overflow;
			u32 start = irq_count(c, o.vector);
			u64 t0 = rdtsc(), deadline = t0 + o.timeout_cycles;
			int was_enabled = c->irq_on;
			if (!was_enabled)
				irq_enable(c);
			while (irq_count(c, o.vector) - start < o.count && rdtsc() < deadline) {
				st->heartbeat++;
				cpu_relax();
			}
			if (!was_enabled)
				irq_disable(c);
			r->seen = irq_count(c, o.vector) - start;
			r->pad = 0;
			r->tsc_start = t0;
			r->tsc_end = rdtsc();
			break;
		}
		case OP_IRQ_COUNTS: {
			pc++;
			struct res_irq_counts *r = (struct res_irq_counts *)record_begin(&x, opcode, PAYLOAD(irq_counts));
			if (!r)
				goto overflow;
			struct irq_log_head *h = (struct irq_log_head *)(c->irq_log + IRQ_LOG_COUNTS_BYTES);
			r->total = h->total;
			r->logged = h->next;
			break;
		}
		case OP_LOOP_BEGIN: {
			DECODE(op_loop_begin, o);
			if (depth == 8)
				goto bad_op;
			loops[depth].start = pc;
			loops[depth].forever = o.count == 0;
			loops[depth].remaining = o.count ? o.count - 1 : 0;
			depth++;
			break;
		}
		case OP_LOOP_END: {
			pc++;
			if (depth == 0)
				goto bad_op;
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
		case OP_BARRIER: {
			DECODE(op_barrier, o);
			barrier_wait(st, o.id);
			break;
		}
		case OP_MARK: {
			DECODE(op_mark, o);
			st->marker = o.value;
			break;
		}
		case OP_DIRTY_PAGES: {
			DECODE(op_dirty_pages, o);
			for (u64 i = 0; i < o.pages; i++) {
				(*(volatile u8 *)(o.base + i * (u64)o.stride))++;
				if ((i & 4095) == 4095)
					st->heartbeat++;
			}
			break;
		}
		default:
			goto bad_op;
		}
		st->ops_done++;
	}
	st->state = THREAD_DONE;
	return;
overflow:
	st->state = THREAD_OVERFLOW;
	return;
bad_op:
	st->state = THREAD_BAD_OP;
}
