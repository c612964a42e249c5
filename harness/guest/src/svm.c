/*
 * The guest as an SVM hypervisor (L1) for the svmRun op: one VMCB, one L2 at CPL 0 or 3 on the
 * guest's own page tables, with an IDT, a TSS and stacks of its own (AMD APM Vol. 2 ch. 15). The L2 handlers
 * (svm_l2.S) log their entry in l2_report and leave with VMMCALL, which L1 always intercepts, so
 * every VMRUN ends in exactly one #VMEXIT whose fields the op records.
 */
#include "runtime.h"

#define MSR_EFER 0xc0000080u
#define EFER_SVME (1ull << 12)
#define MSR_VM_HSAVE_PA 0xc0010117u
#define MSR_PAT 0x277u

/* VMCB offsets (APM Vol. 2 Appendix B, tables B-1 and B-2). */
enum {
	VMCB_INTERCEPT_EXCEPTIONS = 0x008,
	VMCB_INTERCEPT_MISC1 = 0x00c,	/* bit 21 INTn, bit 31 SHUTDOWN */
	VMCB_INTERCEPT_MISC2 = 0x010,	/* bit 0 VMRUN, bit 1 VMMCALL */
	VMCB_ASID = 0x058,
	VMCB_TLB_CONTROL = 0x05c,
	VMCB_EXITCODE = 0x070,
	VMCB_EXITINFO1 = 0x078,
	VMCB_EXITINFO2 = 0x080,
	VMCB_EXITINTINFO = 0x088,
	VMCB_NP_ENABLE = 0x090,
	VMCB_EVENTINJ = 0x0a8,
	VMCB_N_CR3 = 0x0b0,
	VMCB_NEXT_RIP = 0x0c8,
	VMCB_ES = 0x400, VMCB_CS = 0x410, VMCB_SS = 0x420, VMCB_DS = 0x430,
	VMCB_GDTR = 0x460, VMCB_IDTR = 0x480, VMCB_TR = 0x490,
	VMCB_CPL = 0x4cb,
	VMCB_EFER = 0x4d0,
	VMCB_CR4 = 0x548, VMCB_CR3 = 0x550, VMCB_CR0 = 0x558,
	VMCB_DR7 = 0x560, VMCB_DR6 = 0x568,
	VMCB_RFLAGS = 0x570, VMCB_RIP = 0x578, VMCB_RSP = 0x5d8, VMCB_RAX = 0x5f8,
	VMCB_CR2 = 0x640, VMCB_G_PAT = 0x668,
};
#define MISC1_INTN (1u << 21)
#define MISC1_SHUTDOWN (1u << 31)
#define MISC2_VMRUN (1u << 0)
#define MISC2_VMMCALL (1u << 1)

static u8 vmcb[4096] __attribute__((aligned(4096)));
static u8 hsave[4096] __attribute__((aligned(4096)));
/* L1's own FS, GS, TR, LDTR and syscall MSRs, VMSAVEd before VMRUN and VMLOADed after #VMEXIT,
 * which does not restore them: L2 runs with a TR of its own. */
static u8 l1_hidden[4096] __attribute__((aligned(4096)));
static struct tss l2_tss __attribute__((aligned(16)));
#define L2_TR_SELECTOR 0x40	/* only its value matters (the #TS error code): TR's hidden part comes from the VMCB */
#define NON_CANONICAL_STACK 0x8000000000001000ull
static u64 l2_idt[512] __attribute__((aligned(16)));	/* 256 16-byte gates */
static u8 l2_code_buf[32] __attribute__((aligned(32)));

extern u8 l2_stubs[];		/* svm_l2.S: 256 entry stubs, 16 bytes apart */
extern u8 l2_stack_top[];
extern u8 l2_user_stack_top[];
extern volatile struct l2_report { u64 entries, vector, error_code, has_error_code, rip, cr2; } l2_report;
void svm_vmrun(u64 vmcb_pa, u64 l1_hidden_pa);	/* svm_l2.S: VMRUN, VMLOAD of L1's state, STGI */

#define V64(off) (*(volatile u64 *)(vmcb + (off)))
#define V32(off) (*(volatile u32 *)(vmcb + (off)))
#define V16(off) (*(volatile u16 *)(vmcb + (off)))
#define V8(off) (*(volatile u8 *)(vmcb + (off)))

struct dtr {
	u16 limit;
	u64 base;
} __attribute__((packed));

/* A segment register's VMCB image from its GDT descriptor (attrib: access byte, then flags nibble). */
static void put_segment(u32 off, u16 sel, const struct dtr *gdtr)
{
	V16(off) = sel;
	if ((sel & ~7u) == 0 || (sel | 7u) > gdtr->limit) {
		V16(off + 2) = 0;
		V32(off + 4) = 0;
		V64(off + 8) = 0;
		return;
	}
	u64 d = *(const u64 *)(gdtr->base + (sel & ~7u));
	u32 limit = (u32)((d & 0xffff) | ((d >> 32) & 0xf0000));
	if (d & (1ull << 55))
		limit = (limit << 12) | 0xfff;
	V16(off + 2) = (u16)(((d >> 40) & 0xff) | (((d >> 52) & 0xf) << 8));
	V32(off + 4) = limit;
	V64(off + 8) = (u64)(((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24));
}

static void put_dtr(u32 off, u16 limit, u64 base)
{
	V32(off + 4) = limit;
	V64(off + 8) = base;
}

static u16 read_sel(int which)
{
	u16 s = 0;
	switch (which) {
	case 0: asm volatile("mov %%es, %0" : "=r"(s)); break;
	case 1: asm volatile("mov %%cs, %0" : "=r"(s)); break;
	case 2: asm volatile("mov %%ss, %0" : "=r"(s)); break;
	default: asm volatile("mov %%ds, %0" : "=r"(s)); break;
	}
	return s;
}

static u64 read_cr(int n)
{
	u64 v = 0;
	switch (n) {
	case 0: asm volatile("mov %%cr0, %0" : "=r"(v)); break;
	case 3: asm volatile("mov %%cr3, %0" : "=r"(v)); break;
	default: asm volatile("mov %%cr4, %0" : "=r"(v)); break;
	}
	return v;
}

void svm_run_l2(const struct op_svm_run *o, struct res_svm_run *r)
{
	/* Raises #GP where the vCPU has no SVM: the op's catch records it. */
	wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
	wrmsr(MSR_VM_HSAVE_PA, (u64)hsave);

	for (u32 v = 0; v < 256; v++) {
		u64 off = (u64)(l2_stubs + 16 * v);
		u32 present = v < 32 && ((o->idt_not_present >> v) & 1) ? 0 : 1;
		/* 64-bit interrupt gate: offset 15:0, selector 0x08, IST 0, type 0xE, DPL 0, P; offset 63:16. */
		u64 ist = v < 32 && ((o->ist_vectors >> v) & 1) ? 1 : 0;
		l2_idt[2 * v] = (off & 0xffff) | (0x08ull << 16) | (ist << 32) | (0xeull << 40) | ((u64)present << 47) | (((off >> 16) & 0xffff) << 48);
		l2_idt[2 * v + 1] = off >> 32;
	}
	memcpy(l2_code_buf, &o->lo, 8);
	memcpy(l2_code_buf + 8, &o->hi, 8);
	const u8 tail[] = { 0x0f, 0x01, 0xd9, 0xeb, 0xfe };	/* vmmcall; jmp . */
	memcpy(l2_code_buf + 16, tail, sizeof(tail));
	memset((void *)&l2_report, 0, sizeof(l2_report));

	memset(&l2_tss, 0, sizeof(l2_tss));
	/* Bits 3-5: canonical but not mapped, so the frame push faults (#PF during delivery). */
	l2_tss.rsp[0] = (o->stack & 1) ? NON_CANONICAL_STACK : (o->stack & 8) ? LAYOUT_NOT_PRESENT_STACK : (u64)l2_stack_top;
	l2_tss.ist[0] = (o->stack & 2) ? NON_CANONICAL_STACK : (o->stack & 16) ? LAYOUT_NOT_PRESENT_STACK : (u64)l2_stack_top;
	l2_tss.iomap_base = 104;

	memset(vmcb, 0, sizeof(vmcb));
	/* FS, GS, LDTR, KernelGSBase, STAR.., SYSENTER_*: L2 gets L1's; L1 gets its own back after #VMEXIT. */
	asm volatile("vmsave" : : "a"((u64)l1_hidden) : "memory");
	asm volatile("vmsave" : : "a"((u64)vmcb) : "memory");
	/* L2's TR: its own TSS, a busy 64-bit TSS (type 0xB, P), limit 0x67 or 3 (stack bit 2). */
	V16(VMCB_TR) = L2_TR_SELECTOR;
	V16(VMCB_TR + 2) = 0x8b;
	V32(VMCB_TR + 4) = (o->stack & 4) ? 3 : 0x67;
	V64(VMCB_TR + 8) = (u64)&l2_tss;

	V32(VMCB_INTERCEPT_EXCEPTIONS) = o->exceptions;
	V32(VMCB_INTERCEPT_MISC1) = ((o->flags & 1) ? MISC1_SHUTDOWN : 0) | ((o->flags & 2) ? MISC1_INTN : 0);
	V32(VMCB_INTERCEPT_MISC2) = MISC2_VMRUN | MISC2_VMMCALL;
	V32(VMCB_ASID) = 1;
	V8(VMCB_TLB_CONTROL) = 1;
	V64(VMCB_EVENTINJ) = o->event_inj;
	u64 cr3 = read_cr(3);
	if (o->flags & 4) {
		/* Nested paging over the guest's identity map: its entries are user, writable, executable. */
		V64(VMCB_NP_ENABLE) = 1;
		V64(VMCB_N_CR3) = cr3 & ~0xfffull;
	}

	struct dtr gdtr;
	asm volatile("sgdt %0" : "=m"(gdtr));
	if (o->l2_cpl == 3) {
		/* The guest's user segments (entry.S gdt: 0x28 64-bit code, 0x20 data, DPL 3). */
		put_segment(VMCB_ES, 0x23, &gdtr);
		put_segment(VMCB_CS, 0x2b, &gdtr);
		put_segment(VMCB_SS, 0x23, &gdtr);
		put_segment(VMCB_DS, 0x23, &gdtr);
	} else {
		put_segment(VMCB_ES, read_sel(0), &gdtr);
		put_segment(VMCB_CS, read_sel(1), &gdtr);
		put_segment(VMCB_SS, read_sel(2), &gdtr);
		put_segment(VMCB_DS, read_sel(3), &gdtr);
	}
	put_dtr(VMCB_GDTR, gdtr.limit, gdtr.base);
	put_dtr(VMCB_IDTR, o->idt_limit, (u64)l2_idt);
	V8(VMCB_CPL) = o->l2_cpl;
	V64(VMCB_EFER) = rdmsr(MSR_EFER);
	V64(VMCB_CR0) = read_cr(0);
	V64(VMCB_CR3) = cr3;
	V64(VMCB_CR4) = read_cr(4);
	V64(VMCB_DR7) = 0x400;
	V64(VMCB_DR6) = 0xffff0ff0;
	V64(VMCB_RFLAGS) = 2;
	V64(VMCB_RIP) = (u64)l2_code_buf;
	/* With NRIPS, an injected software interrupt (and INT3/INTO) pushes NextRIP, not RIP: make them one. */
	V64(VMCB_NEXT_RIP) = (u64)l2_code_buf;
	V64(VMCB_RSP) = o->l2_cpl == 3 ? (u64)l2_user_stack_top : (o->stack & 32) ? LAYOUT_NOT_PRESENT_STACK : (u64)l2_stack_top;
	V64(VMCB_RAX) = 0;
	V64(VMCB_CR2) = 0;
	V64(VMCB_G_PAT) = rdmsr(MSR_PAT);

	r->code_base = (u64)l2_code_buf;
	svm_vmrun((u64)vmcb, (u64)l1_hidden);

	r->exit_code = V64(VMCB_EXITCODE);
	r->exit_info1 = V64(VMCB_EXITINFO1);
	r->exit_info2 = V64(VMCB_EXITINFO2);
	r->exit_int_info = V64(VMCB_EXITINTINFO);
	r->exit_rip = V64(VMCB_RIP);
	r->entries = (u32)l2_report.entries;
	r->vector = (u32)l2_report.vector;
	r->error_code = (u32)l2_report.error_code;
	r->has_error_code = (u32)l2_report.has_error_code;
	r->handler_rip = l2_report.rip;
	r->handler_cr2 = l2_report.cr2;
}
