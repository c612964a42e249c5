/*
 * Guest entry points, mode switches and the low-level pieces C cannot express:
 *  - the PVH ELF note and 32-bit entry (PVH boot protocol: protected mode, paging off, EBX = start info)
 *  - identity page tables (0-4 GiB in 2 MiB pages; C maps more when a program asks)
 *  - the real-mode trampoline application processors start in after INIT-SIPI-SIPI
 *  - 256 interrupt stubs funnelling into isr_dispatch() with a full register frame
 *  - catch_set(): setjmp for faults; isr_dispatch() resumes there when a catch is armed
 *  - cpuid_canary(): CPUID with every GPR but RSP holding a canary, all GPRs saved afterwards
 */
#include "config.h"
#include "kvmprop_gen.h"

#define SEL_CODE64 SEL_KCODE
#define SEL_DATA   SEL_KDATA

/* ---- PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18) ---- */
	.section .note.pvh, "a"
	.align 4
	.long 4
	.long 4
	.long 18
	.asciz "Xen"
	.long pvh_start32

/* ---- 32-bit entry (BSP) ---- */
	.section .text.boot, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	movl %ebx, pvh_start_info
	/* Zero .bss (per-CPU blocks, the IDT) and the page-table area. */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl
	movl $LAYOUT_PAGE_TABLES, %edi
	movl $(LAYOUT_PAGE_TABLES_BYTES / 4), %ecx
	rep stosl
	lgdt gdt_ptr
	ljmp $SEL_CODE32, $1f
1:	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movl boot_stack_ptr, %esp
	call build_page_tables
	jmp enter_long_mode

/* Identity map 0-4 GiB with 2 MiB pages, user-accessible (threads run in ring 3); 3-4 GiB (MMIO)
 * uncached. */
build_page_tables:
	movl $pdpt, %eax
	orl $7, %eax
	movl %eax, pml4
	movl $pd, %eax
	orl $7, %eax
	movl $pdpt, %edi
	movl $4, %ecx
1:	movl %eax, (%edi)
	movl $0, 4(%edi)
	addl $4096, %eax
	addl $8, %edi
	loop 1b
	movl $pd, %edi
	xorl %ebx, %ebx
2:	movl %ebx, %eax
	shll $21, %eax
	orl $0x87, %eax
	cmpl $1536, %ebx
	jb 3f
	orl $0x18, %eax
3:	movl %eax, (%edi)
	movl $0, 4(%edi)
	addl $8, %edi
	incl %ebx
	cmpl $2048, %ebx
	jb 2b
	ret

/* Application processors arrive here from the trampoline, in flat 32-bit protected mode. */
	.globl ap_start32
ap_start32:
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movl boot_stack_ptr, %esp
	/* fall through */

enter_long_mode:
	movl %cr4, %eax
	orl $0x20, %eax			/* PAE */
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx		/* EFER.LME */
	rdmsr
	orl $0x100, %eax
	wrmsr
	movl %cr0, %eax
	andl $0x9fffffff, %eax		/* caches on: clear CD, NW */
	orl $0x80010001, %eax		/* PG | WP | PE */
	movl %eax, %cr0
	ljmp $SEL_CODE64, $long_entry

	.code64
long_entry:
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movq boot_stack_ptr(%rip), %rsp
	movl booting_index(%rip), %edi
	xorl %ebp, %ebp
	call cpu_entry
1:	cli
	hlt
	jmp 1b

/* ---- Real-mode trampoline, copied to LAYOUT_AP_TRAMPOLINE by the BSP ---- */
	.section .rodata.trampoline, "a"
	.code16
	.globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
	cli
	cld
	xorw %ax, %ax
	movw %ax, %ds
	lgdtl LAYOUT_AP_TRAMPOLINE + (tramp_gdt_ptr - ap_tramp_start)
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $SEL_CODE32, $ap_start32
	.align 8
tramp_gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt
ap_tramp_end:
	.code64

/* ---- Interrupt stubs: 16 bytes each, vector n at isr_stubs + 16*n ---- */
	.section .text
	.macro ISR vec
	.align 16
	.if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	.else
	pushq $0
	.endif
	pushq $\vec
	jmp isr_common
	.endm

	.align 16
	.globl isr_stubs
isr_stubs:
	.altmacro
	.set i, 0
	.rept 256
	ISR %i
	.set i, i+1
	.endr
	.noaltmacro

/* Frame layout (struct frame in runtime.h): r15 ... rax, vector, error, then the CPU's iret frame. */
isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	cld
	call isr_dispatch
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

/* int catch_set(struct catch_frame *cf): returns 0; returns 1 when a caught fault resumes here. */
	.globl catch_set
catch_set:
	movq %rbx, 0(%rdi)
	movq %rbp, 8(%rdi)
	movq %r12, 16(%rdi)
	movq %r13, 24(%rdi)
	movq %r14, 32(%rdi)
	movq %r15, 40(%rdi)
	leaq 8(%rsp), %rax
	movq %rax, 48(%rdi)
	movq (%rsp), %rax
	movq %rax, 56(%rdi)
	/* Only the privilege level of CS is trusted: a hypervisor that runs ring 3 natively (kvm_pvm)
	 * shows the host's own selectors there, so the guest's selectors are chosen, not read. */
	movq %cs, %rax
	testb $3, %al
	jz 1f
	movq $SEL_UCODE, 64(%rdi)
	movq $SEL_UDATA, 72(%rdi)
	xorl %eax, %eax
	ret
1:	movq $SEL_KCODE, 64(%rdi)
	movq $SEL_KDATA, 72(%rdi)
	xorl %eax, %eax
	ret

/* void enter_user(u64 entry, u64 arg, u64 user_rsp, u64 rflags): iret to ring 3; never returns
 * (the thread comes back through a HLT that ring 0 turns into a jump to a catch frame). */
	.globl enter_user
enter_user:
	pushq $SEL_UDATA
	pushq %rdx
	pushq %rcx
	pushq $SEL_UCODE
	pushq %rdi
	movq %rsi, %rdi
	iretq

/*
 * void cpuid_canary(u64 rax_in, u64 rcx_in, u64 canary, u64 out[15])
 * out: rax rbx rcx rdx rsi rdi rbp r8 r9 r10 r11 r12 r13 r14 r15 after CPUID.
 * cpuid_canary_cpl0 is the same from ring 3, except that CPUID runs in ring 0: in its place stands
 * a ud2 at cpl0_cpuid_ud2, and the #UD entry (ud_entry) executes CPUID on the trapped registers and
 * returns past the ud2. Nothing but RFLAGS is touched on the way, so the canary survives.
 */
	.macro CPUID_CANARY name, cpl0
	.globl \name
\name:
	pushq %rbx
	pushq %rbp
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	pushq %rcx			/* out */
	movq %rdi, %rax
	movq %rsi, %rcx
	movq %rdx, %rbx
	movq %rdx, %rbp
	movq %rdx, %rsi
	movq %rdx, %rdi
	movq %rdx, %r8
	movq %rdx, %r9
	movq %rdx, %r10
	movq %rdx, %r11
	movq %rdx, %r12
	movq %rdx, %r13
	movq %rdx, %r14
	movq %rdx, %r15
	.if \cpl0
	.globl cpl0_cpuid_ud2
cpl0_cpuid_ud2:
	ud2
	.else
	cpuid
	.endif
	pushq %rax
	movq 8(%rsp), %rax		/* out */
	movq %rbx, 8(%rax)
	movq %rcx, 16(%rax)
	movq %rdx, 24(%rax)
	movq %rsi, 32(%rax)
	movq %rdi, 40(%rax)
	movq %rbp, 48(%rax)
	movq %r8, 56(%rax)
	movq %r9, 64(%rax)
	movq %r10, 72(%rax)
	movq %r11, 80(%rax)
	movq %r12, 88(%rax)
	movq %r13, 96(%rax)
	movq %r14, 104(%rax)
	movq %r15, 112(%rax)
	popq %rbx
	movq %rbx, 0(%rax)
	addq $8, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbp
	popq %rbx
	ret
	.endm

	CPUID_CANARY cpuid_canary, 0
	CPUID_CANARY cpuid_canary_cpl0, 1

/* #UD entry: the CPL-0 CPUID service for ring-3 threads, else the ordinary stub for vector 6. */
	.globl ud_entry
ud_entry:
	cmpq $cpl0_cpuid_ud2, (%rsp)	/* the faulting RIP (no error code for #UD) */
	jne 1f
	cpuid
	addq $2, (%rsp)			/* past the ud2 */
	iretq
1:	jmp isr_stubs + 16 * 6

/* ---- Data: GDT (TSS descriptors filled per CPU), boot variables, page tables ---- */
	.section .data
	.align 16
	.globl gdt, gdt_end
gdt:
	.quad 0
	.quad 0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad 0x00cf92000000ffff	/* 0x10: data */
	.quad 0x00cf9a000000ffff	/* 0x18: 32-bit code */
	.quad 0x00cff2000000ffff	/* 0x20: user data (DPL 3) */
	.quad 0x00affa000000ffff	/* 0x28: user 64-bit code (DPL 3) */
	.fill LAYOUT_MAX_CPUS * 2, 8, 0	/* 0x30 + 16*cpu: TSS descriptors */
gdt_end:
	.align 8
gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt
	.long 0

	.globl pvh_start_info, boot_stack_ptr, booting_index
pvh_start_info:
	.quad 0
boot_stack_ptr:
	.quad cpu_blocks + CPU_BLOCK_BYTES
booting_index:
	.long 0
