/*
 * Boot, per-CPU set-up, SMP bring-up, interrupt dispatch and the verdict.
 *
 * The host talks to the guest through one narrow channel: it loads a program (header + bytecode per
 * thread) at LAYOUT_PROGRAM; each vCPU runs one thread and appends records to its observation
 * region. The verdict is the mailbox: its state, why the guest gave up (bail_reason and its
 * arguments) and every thread's status; the host judges that alone (harness/workload.ts
 * guestProblems). The same verdict goes to COM1 as TAP 13, for people.
 */
#include "runtime.h"

extern char ap_tramp_start[], ap_tramp_end[];
extern u64 boot_stack_ptr;
extern u32 booting_index;
extern u64 gdt[];
extern char isr_stubs[];
extern u64 pdpt[];

u8 cpu_blocks[LAYOUT_MAX_CPUS][CPU_BLOCK_BYTES] __attribute__((aligned(CPU_BLOCK_BYTES)));
static u64 idt[256 * 2] __attribute__((aligned(16)));
/* Page directories for 4-64 GiB when 1 GiB pages are missing (placed by guest.ld). */
extern u64 high_pd[60][512];

volatile u32 nthreads;
static volatile u32 go;
static volatile u32 cpus_online;

static void set_idt_entry(int vec, u64 handler, int ist)
{
	u64 type = 0x8e; /* interrupt gate, DPL 0 */
	u64 lo = (handler & 0xffff) | ((u64)SEL_KCODE << 16) | ((u64)(ist & 7) << 32) | (type << 40) |
		 ((handler >> 16 & 0xffff) << 48);
	idt[vec * 2] = lo;
	idt[vec * 2 + 1] = handler >> 32;
}

static void load_idt(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) p = { sizeof(idt) - 1, (u64)idt };
	asm volatile("lidt %0" ::"m"(p));
}

extern char ud_entry[];

static void setup_idt(void)
{
	for (int v = 0; v < 256; v++) {
		/* NMI, #DF and #MC run on the IST stack so a broken RSP still reports. */
		int ist = (v == 2 || v == 8 || v == 18) ? 1 : 0;
		set_idt_entry(v, (u64)isr_stubs + 16 * v, ist);
	}
	/* #UD first checks for the CPL-0 CPUID service (entry.S ud_entry). */
	set_idt_entry(6, (u64)ud_entry, 0);
}

/* The execStack op's set-ups. Ring 3 may call these: the TSS and the IDT lie in user pages. */
void stack_setup(struct cpu *c, u32 stack)
{
	c->stack_armed = stack;
	if (stack & 1)
		c->tss.rsp[0] = LAYOUT_NOT_PRESENT_STACK;
	if (stack & 2)
		idt[14 * 2] |= 1ull << 32; /* IST 1 */
	barrier();
}

void stack_setup_undo(struct cpu *c)
{
	if (!c->stack_armed)
		return;
	c->tss.rsp[0] = (u64)c + CPU_RSP0_TOP;
	idt[14 * 2] &= ~(7ull << 32);
	barrier();
	c->stack_armed = 0;
}

static void setup_tss(struct cpu *c)
{
	u64 base = (u64)&c->tss;
	u64 limit = sizeof(struct tss) - 1;
	c->tss.ist[0] = (u64)c + CPU_IST_TOP;
	c->tss.rsp[0] = (u64)c + CPU_RSP0_TOP;
	c->tss.iomap_base = __builtin_offsetof(struct tss, iomap);
	c->tss.iomap[8192] = 0xff;
	int slot = SEL_TSS0 / 8 + 2 * c->index;
	gdt[slot] = (limit & 0xffff) | ((base & 0xffffff) << 16) | ((u64)0x89 << 40) | (((limit >> 16) & 0xf) << 48) |
		    (((base >> 24) & 0xff) << 56);
	gdt[slot + 1] = base >> 32;
	u16 sel = (u16)(slot * 8);
	asm volatile("ltr %0" ::"r"(sel));
}

static void lapic_enable(struct cpu *c)
{
	/* Software-enable the APIC (xAPIC mode after reset) with the spurious vector; read our APIC ID. */
	apic_write(c, APIC_REG_SVR, 0x100 | SPURIOUS_VECTOR);
	c->apic_id = apic_id(c);
}

static void lapic_x2apic_on(struct cpu *c)
{
	wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | (1u << 10) | (1u << 11));
	c->x2apic = 1;
	apic_write(c, APIC_REG_SVR, 0x100 | SPURIOUS_VECTOR);
}

/*
 * AVX state on request (PROGRAM_FLAG_AVX_STATE), where CPUID.1:ECX has XSAVE (26) and AVX (28):
 * CR4.OSXSAVE (bit 18), then XCR0 = x87|SSE|AVX (bits 0-2), plus opmask|ZMM_Hi256|Hi16_ZMM (5-7)
 * where CPUID.7.0:EBX has AVX512F (16) and CPUID.0xD.0:EAX (the XCR0 bits the processor supports)
 * has all three (SDM Vol. 1 13.3: XCR0 takes AVX only with SSE, and 5-7 only all together with AVX).
 * Without XSAVE or AVX nothing changes: an AVX writer then raises #UD, a fault the host sees.
 */
static void enable_avx_state(void)
{
	u32 a, b, cx, d;
	cpuid4(1, 0, &a, &b, &cx, &d);
	if (!(cx & (1u << 26)) || !(cx & (1u << 28)))
		return;
	u64 cr4;
	asm volatile("mov %%cr4, %0" : "=r"(cr4));
	cr4 |= 1ul << 18;
	asm volatile("mov %0, %%cr4" ::"r"(cr4));
	u32 max;
	cpuid4(0, 0, &max, &b, &cx, &d);
	u64 xcr0 = 0x7;
	if (max >= 0xd) {
		u32 sa, sb, sc, sd;
		cpuid4(0xd, 0, &sa, &sb, &sc, &sd);
		cpuid4(7, 0, &a, &b, &cx, &d);
		if ((b & (1u << 16)) && (sa & 0xe0) == 0xe0)
			xcr0 |= 0xe0;
	}
	asm volatile("xsetbv" ::"c"(0u), "a"((u32)xcr0), "d"((u32)(xcr0 >> 32)));
}

/* SSE on (CR0.MP, CR0.NE, CR4.OSFXSR|OSXMMEXCPT) so workload code may use XMM registers. The compiled C
 * never does (-mgeneral-regs-only). CR0.AM and CR0.TS as the program asks (PROGRAM_FLAG_ALIGNMENT_CHECK, _TASK_SWITCHED). */
static void enable_sse(void)
{
	u64 cr0, cr4;
	asm volatile("mov %%cr0, %0" : "=r"(cr0));
	/* MP, not EM; NE: an unmasked x87 exception is #MF, not the external FERR# line. */
	cr0 = (cr0 & ~(1ul << 2)) | (1ul << 1) | (1ul << 5);
	if (PROGRAM->flags & PROGRAM_FLAG_ALIGNMENT_CHECK)
		cr0 |= 1ul << 18; /* AM */
	else
		cr0 &= ~(1ul << 18);
	if (PROGRAM->flags & PROGRAM_FLAG_TASK_SWITCHED)
		cr0 |= 1ul << 3; /* TS */
	else
		cr0 &= ~(1ul << 3);
	asm volatile("mov %0, %%cr0" ::"r"(cr0));
	asm volatile("mov %%cr4, %0" : "=r"(cr4));
	cr4 |= (1ul << 9) | (1ul << 10);
	asm volatile("mov %0, %%cr4" ::"r"(cr4));
	if (PROGRAM->flags & PROGRAM_FLAG_AVX_STATE)
		enable_avx_state();
}

/*
 * Memory types: nothing programs the MTRRs on a PVH boot, and with MTRRs disabled every access is
 * uncacheable (SDM Vol. 3A 12.11.2.1: "When the MTRRs are disabled, the UC memory type is applied
 * to all of physical memory"). A hypervisor that honours guest memory types then runs the guest
 * ~100x slower. Enable them with write-back as the default type; MMIO is mapped UC in the page
 * tables (PCD|PWT above 3 GiB), which wins over WB.
 */
#define MSR_MTRR_DEF_TYPE 0x2ff
static void enable_mtrrs(void)
{
	u32 a, b, cx, d;
	cpuid4(1, 0, &a, &b, &cx, &d);
	if (d & (1u << 12))
		wrmsr(MSR_MTRR_DEF_TYPE, (1u << 11) | 6);
}

static void cpu_init(struct cpu *c, u32 index)
{
	c->index = index;
	memset(c->isr_action, 0, sizeof(c->isr_action));
	enable_mtrrs();
	enable_sse();
	setup_tss(c);
	load_idt();
	lapic_enable(c);
	c->status = thread_status_of(index);
	c->irq_log = (u8 *)(LAYOUT_IRQ_LOG + (u64)index * LAYOUT_IRQ_LOG_STRIDE);
	c->status->apic_id = c->apic_id;
}

/* ---- faults and interrupts ---- */

/* The guest gives up: the mailbox says why (the first reason wins), TAP says it for people. */
static int bail(u32 reason, u64 arg0, u64 arg1)
{
	u32 none = BAIL_NONE;
	if (!__atomic_compare_exchange_n(&MAILBOX->bail_reason, &none, reason, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
		return 0;
	MAILBOX->bail_arg0 = arg0;
	MAILBOX->bail_arg1 = arg1;
	return 1;
}

static NORETURN void bail_exit(void)
{
	barrier();
	MAILBOX->state = MAILBOX_FAILED;
	guest_exit(EXIT_VALUE_FAILED);
}

static void report_fatal(struct cpu *c, struct frame *f)
{
	if (bail(BAIL_EXCEPTION, 0, 0)) {
		MAILBOX->fatal_cpu = c->index;
		MAILBOX->fatal_vector = f->vector;
		MAILBOX->fatal_error = f->error;
		MAILBOX->fatal_rip = f->rip;
		MAILBOX->fatal_cr2 = read_cr2();
	}
	barrier();
	MAILBOX->state = MAILBOX_FAILED;
	if (c->index != 0) {
		/* Only the BSP prints; an AP parks and the host reads the mailbox. */
		for (;;)
			asm volatile("cli; hlt");
	}
	serial_puts("Bail out! unexpected exception vector ");
	serial_dec(f->vector);
	serial_puts(" error ");
	serial_hex(f->error);
	serial_puts(" rip ");
	serial_hex(f->rip);
	serial_puts(" cr2 ");
	serial_hex(MAILBOX->fatal_cr2);
	serial_puts(" outside any workload op\n");
	guest_exit(EXIT_VALUE_FAILED);
}

/* kvm_steal_time (Linux arch/x86/include/uapi/asm/kvm_para.h): KVM adds the vCPU task's run_delay
 * to `steal` at each entry after the vCPU waited to run, with `version` odd while it writes. */
struct steal_time {
	u64 steal;
	u32 version;
	u32 flags;
	u8 preempted;
	u8 pad8[3];
	u32 pad[11];
};
#define MSR_KVM_STEAL_TIME 0x4b564d03
#define KVM_FEATURE_STEAL_TIME 5

static void steal_time_on(struct cpu *c)
{
	u32 a, b, cc, d;
	cpuid4(0x40000000, 0, &a, &b, &cc, &d);
	if (b != 0x4b4d564b || a < 0x40000001) /* "KVMK": KVM's leaves */
		return;
	cpuid4(0x40000001, 0, &a, &b, &cc, &d);
	if (!(a & (1u << KVM_FEATURE_STEAL_TIME)))
		return;
	volatile struct steal_time *st = (volatile struct steal_time *)(LAYOUT_STEAL_TIME + c->index * LAYOUT_STEAL_TIME_STRIDE);
	memset((void *)st, 0, sizeof(*st));
	c->steal = st;
	wrmsr(MSR_KVM_STEAL_TIME, (u64)st | 1);
}

/* The steal so far, µs (0 without steal time): one consistent read (version even and unchanged). */
static u32 steal_us(struct cpu *c)
{
	volatile struct steal_time *st = c->steal;
	if (!st)
		return 0;
	for (int tries = 0; tries < 100; tries++) {
		u32 v = st->version;
		barrier();
		u64 ns = st->steal;
		barrier();
		if (!(v & 1) && v == st->version)
			return (u32)(ns / 1000);
	}
	return 0;
}

static void irq_record(struct cpu *c, u64 vector, u64 tsc)
{
	u8 *log = c->irq_log;
	u32 *counts = (u32 *)log;
	struct irq_log_head *h = (struct irq_log_head *)(log + IRQ_LOG_COUNTS_BYTES);
	u8 *ring = log + IRQ_LOG_RING_OFFSET;
	u64 n = h->next;
	u8 *e = ring + (n % IRQ_LOG_RING_ENTRIES) * IRQ_LOG_ENTRY_BYTES;
	*(u64 *)e = tsc;
	*(u32 *)(e + 8) = (u32)vector;
	*(u32 *)(e + 12) = steal_us(c);
	counts[vector]++;
	h->next = n + 1;
	h->total++;
	c->status->irq_total = h->total;
}

/* Resume at a catch frame: a longjmp through the iret frame, into whichever ring set it. */
static void resume_at(struct frame *f, struct catch_frame *cf, u64 rax)
{
	f->rbx = cf->rbx;
	f->rbp = cf->rbp;
	f->r12 = cf->r12;
	f->r13 = cf->r13;
	f->r14 = cf->r14;
	f->r15 = cf->r15;
	f->rsp = cf->rsp;
	f->rip = cf->rip;
	f->cs = cf->cs;
	f->ss = cf->ss;
	f->rax = rax;
	/* Resume with single-stepping off: a trap from RFLAGS.TF (an exec op that set it) must not
	 * follow the thread into the interpreter. */
	f->rflags &= ~0x100ul;
}

/*
 * Ring-3 threads execute privileged instructions themselves; the #GP they raise lands here and
 * ring 0 performs the instruction for them (trap and emulate). kvm_pvm neither honours IOPL for
 * CLI/STI nor enters ring 0 on SYSCALL from an unmodified guest, but it does deliver exceptions to
 * ring 0. Returns 1 when the instruction was performed and skipped.
 */
extern const char user_thread_exit_hlt[];

static int emulate_for_user(struct cpu *c, struct frame *f)
{
	const u8 *ip = (const u8 *)f->rip;
	if (ip[0] == 0x0f && ip[1] == 0x32) { /* rdmsr */
		u64 v = rdmsr((u32)f->rcx);
		f->rax = (u32)v;
		f->rdx = v >> 32;
		f->rip += 2;
		return 1;
	}
	if (ip[0] == 0x0f && ip[1] == 0x30) { /* wrmsr */
		wrmsr((u32)f->rcx, (f->rdx << 32) | (u32)f->rax);
		f->rip += 2;
		return 1;
	}
	if (ip[0] == 0xfa || ip[0] == 0xfb) { /* cli / sti: the caller's IF lives in the iret frame */
		c->irq_on = ip[0] == 0xfb;
		if (ip[0] == 0xfa)
			f->rflags &= ~0x200ul;
		else
			f->rflags |= 0x200;
		f->rip += 1;
		return 1;
	}
	if (ip == (const u8 *)user_thread_exit_hlt && c->catch_exit) { /* the thread's last HLT */
		struct catch_frame *cf = c->catch_exit;
		c->catch_exit = NULL;
		resume_at(f, cf, 2);
		return 1;
	}
	if (ip[0] == 0xf4) { /* hlt: wait for an interrupt with the thread's IF; with IF=0 forever */
		if (c->irq_on)
			asm volatile("sti; hlt; cli" ::: "memory");
		else
			for (;;)
				asm volatile("hlt");
		f->rip += 1;
		return 1;
	}
	return 0;
}

void isr_dispatch(struct frame *f)
{
	u64 tsc = rdtsc();
	struct cpu *c = this_cpu();
	if (f->vector == 13 && (f->cs & 3) == 3 && emulate_for_user(c, f))
		return;
	if (f->vector < 32 && f->vector != 2) {
		struct catch_frame *cf = c->catch_op ? c->catch_op : c->catch_thread;
		if (!cf)
			report_fatal(c, f);
		c->exceptions++;
		c->fault.vector = f->vector;
		c->fault.error = f->error;
		c->fault.rip = f->rip;
		c->fault.cr2 = read_cr2();
		if (c->catch_op)
			c->catch_op = NULL;
		else
			c->catch_thread = NULL;
		/* longjmp through the iret frame: resume in catch_set's caller with RAX = 1. */
		resume_at(f, cf, 1);
		return;
	}
	irq_record(c, f->vector, tsc);
	if (c->isr_action[f->vector & 0xff] == 1) { /* acknowledge the RTC: reading register C lowers IRQ8 */
		outb(0x70, 0x0c);
		(void)inb(0x71);
	}
	if (f->vector >= 32 && f->vector != SPURIOUS_VECTOR)
		lapic_eoi(c);
}

/* ---- memory above 4 GiB ---- */

static void map_high(u64 limit)
{
	u64 gib = (limit + (1ul << 30) - 1) >> 30;
	if (gib > 512)
		gib = 512;
	if (gib <= 4)
		return;
	u32 a, b, cx, d;
	cpuid4(0x80000000, 0, &a, &b, &cx, &d);
	int gbpages = 0;
	if (a >= 0x80000001) {
		cpuid4(0x80000001, 0, &a, &b, &cx, &d);
		gbpages = (d >> 26) & 1;
	}
	for (u64 g = 4; g < gib; g++) {
		if (gbpages) {
			pdpt[g] = (g << 30) | 0x87 | 0x18;
		} else if (g - 4 < 60) {
			for (u64 j = 0; j < 512; j++)
				high_pd[g - 4][j] = (g << 30) | (j << 21) | 0x87 | 0x18;
			pdpt[g] = (u64)high_pd[g - 4] | 7;
		}
	}
	u64 cr3;
	asm volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");
}

/* ---- SMP ---- */

static int start_ap(struct cpu *c, u32 index, u32 dest)
{
	boot_stack_ptr = (u64)cpu_blocks[index] + CPU_BLOCK_BYTES;
	booting_index = index;
	barrier();
	u32 before = cpus_online;
	apic_send_ipi(c, dest, 0x00004500); /* INIT, assert */
	for (int sipi = 0; sipi < 2; sipi++) {
		apic_send_ipi(c, dest, 0x00004600 | (LAYOUT_AP_TRAMPOLINE >> 12)); /* STARTUP */
		/* ~1.6 s at 2.4 GHz: on a loaded host the AP's vCPU thread may wait that long to run (seed 314
		 * bailed after 80 ms with two runs on two cores); the watchdog's boot-hang limit is longer. */
		u64 until = rdtsc() + 4000000000ul;
		while (cpus_online == before && rdtsc() < until)
			cpu_relax();
		if (cpus_online != before)
			return 1;
	}
	return 0;
}

void enter_user(u64 entry, u64 arg, u64 user_rsp, u64 rflags);
/* Ring 3 starts here. */
static void user_thread_main(u64 index)
{
	run_thread(this_cpu(), (u32)index);
	/* #GP at CPL 3: ring 0 recognises this HLT and takes the thread back (emulate_for_user). */
	asm volatile(".globl user_thread_exit_hlt\nuser_thread_exit_hlt: hlt");
	for (;;)
		;
}

static void run_own_thread(struct cpu *c)
{
	struct catch_frame cf, exit_cf;
	struct thread_status *st = c->status;
	if (PROGRAM->flags & PROGRAM_FLAG_X2APIC)
		lapic_x2apic_on(c);
	if (PROGRAM->flags & PROGRAM_FLAG_STEAL_TIME)
		steal_time_on(c);
	if (catch_set(&cf) == 0) {
		c->catch_thread = &cf;
		if (PROGRAM->flags & PROGRAM_FLAG_RING0) {
			run_thread(c, c->index);
		} else if (catch_set(&exit_cf) == 0) {
			c->catch_exit = &exit_cf;
			/* IOPL 3: ring-3 threads do port I/O, CLI and STI themselves. */
			enter_user((u64)user_thread_main, c->index, (u64)c + CPU_USER_STACK_TOP, 0x3002);
		}
		c->catch_thread = NULL;
	} else {
		st->fault_vector = c->fault.vector;
		st->fault_error = c->fault.error;
		st->fault_rip = c->fault.rip;
		st->fault_cr2 = c->fault.cr2;
		st->state = THREAD_FAULTED;
	}
	asm volatile("cli");
}

void cpu_entry(u32 index);
static NORETURN void bsp_main(struct cpu *c);

void cpu_entry(u32 index)
{
	struct cpu *c = this_cpu();
	cpu_init(c, index);
	if (index == 0)
		bsp_main(c);
	__atomic_fetch_add(&cpus_online, 1, __ATOMIC_SEQ_CST);
	while (!go)
		cpu_relax();
	run_own_thread(c);
	for (;;)
		asm volatile("cli; hlt");
}

static const char *thread_state_name(u32 s)
{
	switch (s) {
	case THREAD_DONE: return "done";
	case THREAD_FAULTED: return "unexpected exception";
	case THREAD_OVERFLOW: return "observation region full";
	case THREAD_BAD_OP: return "bad op";
	case THREAD_RUNNING: return "still running";
	default: return "never started";
	}
}

static const char *bad_op_reason_name(u32 r)
{
	switch (r) {
	case BAD_OP_UNKNOWN_OP: return "unknown opcode";
	case BAD_OP_BAD_OPERAND: return "operand out of range";
	case BAD_OP_TRUNCATED: return "operands past the end of the code";
	case BAD_OP_LOOP_TOO_DEEP: return "loops nested too deep";
	case BAD_OP_LOOP_UNMATCHED: return "loopEnd without loopBegin";
	default: return "?";
	}
}

/* One thread's TAP line; in a program with self-checks, where the checks are the tests, a comment. */
static void tap_thread_line(u32 i, int comment)
{
	struct thread_status *st = thread_status_of(i);
	int ok = st->state == THREAD_DONE;
	if (comment) {
		serial_puts("# vcpu ");
	} else {
		serial_puts(ok ? "ok " : "not ok ");
		serial_dec(i + 1);
		serial_puts(" - vcpu ");
	}
	serial_dec(i);
	serial_puts(": ");
	serial_puts(thread_state_name(st->state));
	serial_puts(", ");
	serial_dec(st->ops_done);
	serial_puts(" ops, ");
	serial_dec(st->obs_used);
	serial_puts(" record bytes");
	if (st->state == THREAD_FAULTED) {
		serial_puts(", vector ");
		serial_dec(st->fault_vector);
		serial_puts(" error ");
		serial_hex(st->fault_error);
		serial_puts(" rip ");
		serial_hex(st->fault_rip);
		serial_puts(" cr2 ");
		serial_hex(st->fault_cr2);
	}
	if (st->state == THREAD_BAD_OP) {
		serial_puts(", opcode ");
		serial_hex(st->bad_opcode);
		serial_puts(" (");
		serial_puts(bad_op_reason_name(st->bad_reason));
		serial_puts(")");
	}
	if (!ok) {
		serial_puts(" at op offset ");
		serial_dec(st->pc);
	}
	serial_putc('\n');
}

/* ---- self-checks (ir/checks.ts): the program judges itself ---- */

static const struct check_desc *check_desc_of(const struct prog_header *p, u32 i)
{
	return (const struct check_desc *)(LAYOUT_PROGRAM + p->checks_off + (u64)i * sizeof(struct check_desc));
}

static u64 read_le(const u8 *p, u32 width)
{
	u64 v = 0;
	for (u32 i = 0; i < width && i < 8; i++)
		v |= (u64)p[i] << (8 * i);
	return v;
}

/* A record field of a thread that ended: 0 when the record was never written (or is not the op
 * the host placed there). */
static int record_field(u32 thread, u32 rec, u32 off, u32 width, u8 opcode, u64 *out)
{
	if (thread >= nthreads)
		return 0;
	const struct thread_status *st = thread_status_of(thread);
	if ((u64)rec + RECORD_HEADER_BYTES > st->obs_used || (u64)off + width > st->obs_used)
		return 0;
	const u8 *base = (const u8 *)thread_desc_of(thread)->obs_addr;
	if (base[rec] != opcode)
		return 0;
	*out = read_le(base + off, width);
	return 1;
}

static void put_masked(const struct check_desc *d, u64 v)
{
	serial_hex((v & d->mask) >> d->shift);
}

static void no_record(u32 thread)
{
	serial_puts(": no record (vcpu ");
	serial_dec(thread);
	serial_puts(" ended: ");
	serial_puts(thread < nthreads ? thread_state_name(thread_status_of(thread)->state) : "no such vcpu");
	serial_puts(")\n");
}

/* Evaluate every check and print its TAP line; the number that failed. */
static u32 run_checks(const struct prog_header *p)
{
	u32 failed = 0;
	for (u32 i = 0; i < p->nchecks; i++) {
		const struct check_desc *d = check_desc_of(p, i);
		const char *name = (const char *)(LAYOUT_PROGRAM + d->name_off);
		u64 a = 0, b = 0, want = d->expected;
		int have = 1, have2 = 1;
		if (d->kind == CHECK_KIND_STATUS) {
			if (d->thread < nthreads)
				a = read_le((const u8 *)thread_status_of(d->thread) + d->off, d->width);
			else
				have = 0;
		} else {
			have = record_field(d->thread, d->rec, d->off, d->width, d->opcode, &a);
			if (d->kind == CHECK_KIND_DIFF || d->kind == CHECK_KIND_SAME)
				have2 = record_field(d->thread2, d->rec2, d->off2, d->width2, d->opcode2, &b);
			if (d->kind == CHECK_KIND_DIFF)
				a -= b;
			if (d->kind == CHECK_KIND_SAME)
				want = b;
		}
		int ok = have && have2 && ((a ^ want) & d->mask) == 0;
		failed += !ok;
		serial_puts(ok ? "ok " : "not ok ");
		serial_dec(i + 1);
		serial_puts(" - ");
		serial_puts(name);
		if (ok) {
			serial_putc('\n');
		} else if (!have || !have2) {
			no_record(!have ? d->thread : d->thread2);
		} else {
			serial_puts(" expected ");
			put_masked(d, want);
			serial_puts(" got ");
			put_masked(d, a);
			serial_putc('\n');
		}
	}
	return failed;
}

static NORETURN void bsp_main(struct cpu *c)
{
	setup_idt();
	outb(0x21, 0xff); /* mask the legacy PICs: interrupts come through the (IO)APIC */
	outb(0xa1, 0xff);
	MAILBOX->magic = MAILBOX_MAGIC;
	MAILBOX->abi = KVMPROP_ABI_VERSION;
	MAILBOX->ops_hash = KVMPROP_OPS_HASH;
	MAILBOX->boot_tsc = rdtsc();
	MAILBOX->state = MAILBOX_BOOTING;
	serial_puts("TAP version 13\n");

	const struct prog_header *p = PROGRAM;
	if (p->magic != PROGRAM_MAGIC || p->abi != KVMPROP_ABI_VERSION) {
		bail(BAIL_BAD_PROGRAM, p->magic, p->abi);
		serial_puts("Bail out! no kvmprop program at ");
		serial_hex(LAYOUT_PROGRAM);
		serial_puts(" (magic ");
		serial_hex(p->magic);
		serial_puts(", ABI ");
		serial_dec(p->abi);
		serial_puts(")\n");
		bail_exit();
	}
	if (p->ops_hash != KVMPROP_OPS_HASH) {
		bail(BAIL_OPS_HASH, p->ops_hash, KVMPROP_OPS_HASH);
		serial_puts("Bail out! program encoded for op table ");
		serial_hex(p->ops_hash);
		serial_puts(" but this guest was built for ");
		serial_hex(KVMPROP_OPS_HASH);
		serial_putc('\n');
		bail_exit();
	}
	if (p->nthreads == 0 || p->nthreads > LAYOUT_MAX_CPUS) {
		bail(BAIL_THREAD_COUNT, p->nthreads, 0);
		serial_puts("Bail out! bad thread count ");
		serial_dec(p->nthreads);
		serial_putc('\n');
		bail_exit();
	}
	nthreads = p->nthreads;
	MAILBOX->nthreads = nthreads;
	map_high(p->map_limit);
	cpus_online = 1;

	memcpy((void *)LAYOUT_AP_TRAMPOLINE, ap_tramp_start, (u64)(ap_tramp_end - ap_tramp_start));
	for (u32 i = 1; i < nthreads; i++) {
		if (!start_ap(c, i, i)) {
			bail(BAIL_AP_START, i, i);
			serial_puts("Bail out! vcpu ");
			serial_dec(i);
			serial_puts(" did not start (INIT-SIPI-SIPI to APIC ID ");
			serial_dec(i);
			serial_puts(")\n");
			bail_exit();
		}
	}
	MAILBOX->cpus_online = cpus_online;
	/* With self-checks the checks are the tests; the threads' lines become comments. */
	serial_puts("1..");
	serial_dec(p->nchecks ? p->nchecks : nthreads);
	serial_putc('\n');

	MAILBOX->state = MAILBOX_RUNNING;
	barrier();
	go = 1;
	run_own_thread(c);
	for (u32 i = 1; i < nthreads; i++) {
		struct thread_status *st = thread_status_of(i);
		/* An AP that took an exception outside any op parks with the mailbox marked failed. */
		while ((st->state == THREAD_RUNNING || st->state == THREAD_IDLE) && MAILBOX->state != MAILBOX_FAILED)
			cpu_relax();
	}
	int failed = 0;
	for (u32 i = 0; i < nthreads; i++) {
		failed |= thread_status_of(i)->state != THREAD_DONE;
		tap_thread_line(i, p->nchecks != 0);
	}
	MAILBOX->done_tsc = rdtsc();
	u32 bad = p->nchecks ? run_checks(p) : 0;
	MAILBOX->checks_failed = bad;
	barrier();
	/* An AP that gave up (report_fatal) leaves the mailbox failed; the verdict stays so. */
	if (MAILBOX->state != MAILBOX_FAILED)
		MAILBOX->state = MAILBOX_DONE;
	if (MAILBOX->state == MAILBOX_FAILED)
		guest_exit(EXIT_VALUE_FAILED);
	guest_exit(bad ? EXIT_VALUE_CHECKS_FAILED : failed ? EXIT_VALUE_FAILED : EXIT_VALUE_DONE);
}
