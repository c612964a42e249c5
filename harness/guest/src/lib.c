/* Freestanding helpers: memory, serial console, LAPIC EOI (through apic_write), exit. */
#include "runtime.h"

void *memset(void *d, int c, u64 n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, u64 n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

/* COM1 without polling LSR: QEMU's UART takes a byte per OUT, and every extra exit costs ~7 us. */
#define COM1 0x3f8
void serial_putc(char c) { outb(COM1, (u8)c); }

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}

void serial_hex(u64 v)
{
	char buf[19];
	int i = 18;
	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	serial_puts(&buf[i]);
}

void serial_dec(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	serial_puts(&buf[i]);
}

void lapic_eoi(struct cpu *c) { apic_write(c, APIC_REG_EOI, 0); }

/* isa-debug-exit at 0xf4: QEMU exits with (value << 1) | 1 (abi.ts EXIT_VALUE): 33 done, 35 the
 * guest failed, 37 a self-check failed. Without that device the harness sees MAILBOX_DONE and quits
 * QEMU itself. */
#define DEBUG_EXIT_PORT 0xf4
NORETURN void guest_exit(u8 value)
{
	/* The exit handshake (abi.ts PROGRAM_FLAGS.holdExit): QEMU stays up until the host has read
	 * what only a live QEMU can tell, or until EXIT_HOLD_TSC has passed without an answer. */
	const struct prog_header *p = PROGRAM;
	if (p->magic == PROGRAM_MAGIC && p->abi == KVMPROP_ABI_VERSION && (p->flags & PROGRAM_FLAG_HOLD_EXIT)) {
		u64 from = rdtsc();
		while (!MAILBOX->exit_ack && rdtsc() - from < EXIT_HOLD_TSC)
			cpu_relax();
	}
	outb(DEBUG_EXIT_PORT, value);
	for (;;)
		asm volatile("cli; hlt");
}
