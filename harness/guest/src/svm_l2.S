/*
 * L2's side of the svmRun op (svm.c): VMRUN itself, and the handlers behind L2's IDT. A handler
 * logs its entry in l2_report and executes VMMCALL, which L1 intercepts. Whether the frame has an
 * error code is told from its size: every stack a delivery can use (L2's RSP at CPL 0, RSP0 and
 * IST1 of L2's TSS) starts at l2_stack_top (16-byte aligned), and L2's code never leaves anything
 * on the stack, so a frame is 40 bytes, or 48 with an error code (64-bit delivery aligns RSP to 16
 * and pushes SS:RSP at any CPL: SDM Vol. 3A §6.14.2, APM Vol. 2 §8.9.3). A CPL-3 L2 runs on
 * l2_user_stack_top.
 */
	.code64
	.text

	/* void svm_vmrun(u64 vmcb_pa, u64 l1_hidden_pa): VMRUN loads neither FS, GS, TR nor LDTR,
	 * so VMLOAD puts L2's in place first. #VMEXIT restores RAX, RSP, RIP (and segments, CRs,
	 * RFLAGS) from the host save area but no other GPR, so the callee-saved ones (and
	 * l1_hidden_pa) are kept on the stack; nor FS, GS, TR, LDTR: VMLOAD brings L1's back.
	 * #VMEXIT clears GIF; STGI sets it again. */
	.globl svm_vmrun
svm_vmrun:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	push %rsi
	mov %rdi, %rax
	vmload			/* L2's FS, GS, TR, LDTR: VMRUN does not load them (APM §15.5.2) */
	vmrun
	pop %rax
	vmload			/* L1's back */
	stgi
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret

	.align 16
	.globl l2_stubs
l2_stubs:
	.set vec, 0
	.rept 256
	.align 16
	pushq $vec
	jmp l2_common
	.set vec, vec + 1
	.endr

l2_common:
	mov (%rsp), %rax
	mov %rax, l2_report + 8(%rip)		/* vector */
	lea 8(%rsp), %rbx			/* the frame the CPU pushed */
	lea l2_stack_top(%rip), %rcx
	sub %rbx, %rcx
	movq $0, l2_report + 24(%rip)
	cmp $48, %rcx
	jne 1f
	mov (%rbx), %rax
	mov %rax, l2_report + 16(%rip)		/* error code */
	movq $1, l2_report + 24(%rip)
	add $8, %rbx
1:	mov (%rbx), %rax
	mov %rax, l2_report + 32(%rip)		/* RIP */
	mov %cr2, %rax
	mov %rax, l2_report + 40(%rip)
	incq l2_report(%rip)			/* entries */
	vmmcall
2:	hlt
	jmp 2b

	.section .bss
	.align 16
	.globl l2_report
l2_report:
	.fill 6, 8, 0
	.align 4096
l2_stack:
	.fill 8192, 1, 0
	.globl l2_stack_top
l2_stack_top:
	.fill 4096, 1, 0
	.globl l2_user_stack_top
l2_user_stack_top:
