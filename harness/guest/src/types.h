/* Fixed-width types for the freestanding guest (no libc headers). */
#pragma once
#ifndef __ASSEMBLER__
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long s64;
typedef signed char s8;
#define NULL ((void *)0)
#endif
