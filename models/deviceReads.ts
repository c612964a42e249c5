/**
 * Reference model for device reads (port I/O and MMIO): which bytes of a read's destination the
 * instruction defines, what unclaimed address space returns, and which reads must repeat exactly.
 *
 * Architectural rules (Intel SDM Vol. 1 §3.4.1.1 "General-Purpose Registers in 64-Bit Mode"):
 *   "32-bit operands generate a 32-bit result, zero-extended to a 64-bit result in the destination
 *    general-purpose register. 8-bit and 16-bit operands generate an 8-bit or 16-bit result. The
 *    upper 56 bits or 48 bits (respectively) of the destination general-purpose register are not
 *    modified by the operation."
 * So IN AL/AX and MOV AL/AX,[m] leave RAX[63:8]/[63:16] holding the canary, IN EAX and MOV EAX,[m]
 * zero RAX[63:32], and MOV RAX,[m] defines all 64 bits.
 * String forms (SDM Vol. 2 INS/MOVS, with DF=0 and a REP prefix): RCX counts down to 0, RDI (and RSI)
 * advance by count*width, and exactly count*width bytes at the destination are written; the guard
 * bytes around them keep the canary.
 *
 * An access is dispatched as a unit: KVM's in-kernel devices (PIC, PIT, IOAPIC, LAPIC) and QEMU's
 * MemoryRegion dispatch both hand the whole access to the device that claims it, and the device
 * decides what the bytes beyond its registers read (KVM's i8259 answers every non-byte access with
 * zeros, arch/x86/kvm/i8259.c picdev_read). So only an access lying entirely in unclaimed space has
 * a platform-defined value; an access that touches a device is the device's to answer.
 *
 * What unclaimed space returns is not architectural: it is the platform's choice, so it is a switch.
 * QEMU (softmmu/ioport.c unassigned_io_read: `return -1ULL`; softmmu/memory.c unassigned_mem_read:
 * `return 0`) answers all-ones for ports and zeros for memory. On PC hardware a read nobody claims
 * ends in a PCI master abort, which the PCI Local Bus Specification 3.0 §6.6 ("Master-Abort ...
 * returns all 1s") makes all-ones for both.
 */
import { regionAt, type DeviceMap, type Region } from '../ir/deviceMap.js';

export type UnclaimedRead = 'zeros' | 'ones';

export interface DeviceReadSwitches {
  /** What an MMIO read of unclaimed guest-physical space returns. QEMU: 'zeros'; PCI master abort: 'ones'. */
  readonly unclaimedMmio: UnclaimedRead;
  /** What a port read nobody claims returns. QEMU and ISA/PCI hardware: 'ones'. */
  readonly unclaimedPio: UnclaimedRead;
}

export const QEMU_DEVICE_READS: DeviceReadSwitches = { unclaimedMmio: 'zeros', unclaimedPio: 'ones' };

/**
 * Regions whose reads may legitimately differ between two runs of the same program: they count time
 * or reflect host-side timing. Every name here is a QEMU MemoryRegion name as `info mtree` prints it.
 */
export const VOLATILE_REGIONS: Readonly<Record<string, string>> = {
  pit: '8254 counters count down at 1.193182 MHz from when the VM started',
  rtc: 'MC146818 time-of-day registers and the update-in-progress bit follow the host clock',
  'rtc-index': 'shares its ports with the RTC data register',
  hpet: 'HPET main counter runs at 100 MHz',
  'acpi-tmr': 'ACPI PM timer counts at 3.579545 MHz',
  'acpi-pm-tmr': 'ACPI PM timer counts at 3.579545 MHz',
  'kvm-pit': 'in-kernel 8254 counters',
  serial: 'line/modem status reflect when the host side drained the transmit buffer',
  // QEMU hw/audio/pcspk.c pcspk_io_read(): bit 5 is PIT channel 2's output (it counts in time), bit 4
  // a refresh toggle that flips on every read.
  pcspk: 'port 0x61: bit 5 is PIT channel 2 output, which follows the 8254 counter in time',
  // 8259A datasheet, OCW3: a read of port 0x20/0xa0 returns the IRR unless the ISR was selected;
  // the IRR latches requests even while masked, and IRQ0 is the PIT's output, which ticks in time.
  pic: '8259A IRR: latches interrupt requests (IRQ0 is the PIT, ticking in time) even while masked',
  'kvm-pic': "KVM's in-kernel 8259A: the same IRR, following the in-kernel PIT",
};

/**
 * Ports whose device answers every IN through all of EAX, whatever the instruction's width: the
 * VMware backdoor (QEMU hw/i386/vmport.c, on pc and q35 at port 0x5658). Its protocol returns the
 * reply in EAX (and EBX/ECX/EDX for a command with the magic in EAX); QEMU's vmport_ioport_read()
 * syncs the vCPU's registers and writes the reply into EAX itself, so an `inb` from it leaves
 * RAX = zero-extended 32-bit reply (0x00000000ffffffff for a non-magic EAX, measured under KVM at
 * CPL 0 and 3 and under TCG). A documented device exception to the SDM's operand-size rule, not a
 * leak: the model treats such a read as a 32-bit one (EAX the device's, RAX[63:32] zero).
 */
export const FULL_EAX_PORT_REGIONS: Readonly<Record<string, string>> = {
  vmport: 'VMware backdoor: QEMU hw/i386/vmport.c vmport_ioport_read() answers in all of EAX',
};

/** Region kinds that are memory (RAM/ROM) rather than device registers. */
const MEMORY_KINDS = new Set(['ram', 'rom', 'romd', 'ramd']);

export type ByteClass =
  | { readonly kind: 'unclaimed'; readonly value: number }
  | { readonly kind: 'device'; readonly region: Region; readonly stable: boolean }
  | { readonly kind: 'memory'; readonly region: Region; readonly stable: boolean };

/** What the model knows about the byte at one address of a read. */
export function classifyByte(space: 'pio' | 'mmio', map: DeviceMap, addr: bigint, sw: DeviceReadSwitches): ByteClass {
  const regions = space === 'pio' ? map.io : map.memory;
  const r = regionAt(regions, addr);
  if (!r) {
    const which = space === 'pio' ? sw.unclaimedPio : sw.unclaimedMmio;
    return { kind: 'unclaimed', value: which === 'ones' ? 0xff : 0x00 };
  }
  if (MEMORY_KINDS.has(r.kind)) {
    // ROM never changes; RAM is the guest's own memory and changes as it runs.
    return { kind: 'memory', region: r, stable: r.kind === 'rom' || r.kind === 'romd' };
  }
  return { kind: 'device', region: r, stable: !(r.name in VOLATILE_REGIONS) };
}

/** A prediction for some bytes: `mask` bit set = the model asserts that bit of `value`. */
export interface MaskedBytes {
  readonly value: Uint8Array;
  readonly mask: Uint8Array;
}

export interface ReadPrediction {
  /** No read here may fault: every port is accessible at CPL 0 and every address is mapped. */
  readonly fault: null;
  /** For register reads: the full 64-bit RAX afterwards, as bytes (little-endian). */
  readonly rax?: MaskedBytes;
  /** For string reads: RCX afterwards and how far RSI/RDI moved. */
  readonly rcx?: bigint;
  readonly rdiDelta?: bigint;
  readonly rsiDelta?: bigint;
  /** For string reads: the whole record buffer, guards included. */
  readonly buffer?: MaskedBytes;
  /** Per data byte: whether it must repeat exactly in another run of the same program. */
  readonly stableBytes: readonly boolean[];
  /** Offsets (in rax or buffer) of the data bytes the read defines, in order. */
  readonly dataOffsets: readonly number[];
  /** Regions the data bytes come from, for explanations. */
  readonly regions: readonly string[];
}

export type DeviceRead =
  | { readonly op: 'pioIn'; readonly port: number; readonly width: number }
  | { readonly op: 'mmioRead'; readonly addr: bigint; readonly width: number }
  | { readonly op: 'pioIns'; readonly port: number; readonly width: number; readonly count: number }
  | { readonly op: 'mmioMovs'; readonly addr: bigint; readonly width: number; readonly count: number };

function canaryByte(canary: bigint, i: number): number {
  return Number((canary >> BigInt(8 * (i & 7))) & 0xffn);
}

/** One access unit: a register read, or one element of a string read. */
interface Access {
  readonly space: 'pio' | 'mmio';
  readonly addr: bigint;
  readonly width: number;
}

function accessesOf(read: DeviceRead): Access[] {
  if (read.op === 'pioIn') return [{ space: 'pio', addr: BigInt(read.port), width: read.width }];
  // REP INS repeats the same port; REP MOVS walks memory element by element.
  if (read.op === 'pioIns') return Array.from({ length: read.count }, () => ({ space: 'pio' as const, addr: BigInt(read.port), width: read.width }));
  if (read.op === 'mmioRead') return [{ space: 'mmio', addr: read.addr, width: read.width }];
  return Array.from({ length: read.count }, (_, i) => ({ space: 'mmio' as const, addr: read.addr + BigInt(i * read.width), width: read.width }));
}

/** What the model knows about one access: its bytes' classes and what that means for all of them. */
function classifyAccess(a: Access, map: DeviceMap, sw: DeviceReadSwitches): { classes: ByteClass[]; fixed: number | null; stable: boolean } {
  const classes = Array.from({ length: a.width }, (_, i) => classifyByte(a.space, map, a.space === 'pio' ? (a.addr + BigInt(i)) & 0xffffn : a.addr + BigInt(i), sw));
  const first = classes[0]!;
  if (classes.every((c) => c.kind === 'unclaimed')) return { classes, fixed: first.kind === 'unclaimed' ? first.value : null, stable: true };
  return { classes, fixed: null, stable: classes.every((c) => c.kind === 'unclaimed' || c.stable) };
}

function regionNames(classes: readonly ByteClass[]): string[] {
  const names = classes.map((c) => (c.kind === 'unclaimed' ? '(unclaimed)' : c.region.name));
  return [...new Set(names)];
}

/** Bytes the string ops leave before and after their destination (STRING_GUARD_BYTES in ops.ts). */
export function predictRead(
  read: DeviceRead,
  ctx: { map: DeviceMap; canary: bigint; guardBytes: number; bufferBytes?: number },
  sw: DeviceReadSwitches = QEMU_DEVICE_READS,
): ReadPrediction {
  // Per data byte, in destination order: the fixed value (or null) and stability of its access.
  const fixed: (number | null)[] = [];
  const stableBytes: boolean[] = [];
  const allClasses: ByteClass[] = [];
  for (const a of accessesOf(read)) {
    const c = classifyAccess(a, ctx.map, sw);
    allClasses.push(...c.classes);
    for (let i = 0; i < a.width; i++) {
      fixed.push(c.fixed);
      stableBytes.push(c.stable);
    }
  }
  const regions = regionNames(allClasses);
  if (read.op === 'pioIn' || read.op === 'mmioRead') {
    const value = new Uint8Array(8);
    const mask = new Uint8Array(8);
    const fullEax =
      read.op === 'pioIn' && allClasses.some((c) => c.kind === 'device' && c.region.name in FULL_EAX_PORT_REGIONS);
    if (fullEax) {
      // EAX is the device's reply (asserted nothing), RAX[63:32] zero as after any 32-bit write.
      for (let i = 4; i < 8; i++) mask[i] = 0xff;
      return { fault: null, rax: { value, mask }, stableBytes: [...stableBytes, ...Array(4 - read.width).fill(stableBytes[0] ?? true)].slice(0, 4), dataOffsets: [0, 1, 2, 3], regions };
    }
    for (let i = 0; i < 8; i++) {
      if (i < read.width) {
        const f = fixed[i];
        if (f !== null && f !== undefined) {
          value[i] = f;
          mask[i] = 0xff;
        }
      } else if (read.width === 4) {
        // 32-bit destination: zero-extended.
        value[i] = 0;
        mask[i] = 0xff;
      } else if (read.width < 4) {
        // 8/16-bit destination: the rest of RAX is untouched, so it still holds the canary.
        value[i] = canaryByte(ctx.canary, i);
        mask[i] = 0xff;
      }
    }
    return { fault: null, rax: { value, mask }, stableBytes, dataOffsets: Array.from({ length: read.width }, (_, i) => i), regions };
  }
  const dataBytes = read.width * read.count;
  const total = ctx.bufferBytes ?? ((2 * ctx.guardBytes + dataBytes + 7) & ~7);
  const value = new Uint8Array(total);
  const mask = new Uint8Array(total).fill(0xff);
  for (let i = 0; i < total; i++) value[i] = canaryByte(ctx.canary, i);
  const dataOffsets: number[] = [];
  for (let i = 0; i < dataBytes; i++) {
    const at = ctx.guardBytes + i;
    dataOffsets.push(at);
    const f = fixed[i];
    if (f !== null && f !== undefined) value[at] = f;
    else mask[at] = 0;
  }
  const moved = BigInt(dataBytes);
  return {
    fault: null,
    rcx: 0n,
    rdiDelta: moved,
    ...(read.op === 'mmioMovs' ? { rsiDelta: moved } : {}),
    buffer: { value, mask },
    stableBytes,
    dataOffsets,
    regions,
  };
}

/** First byte (among those `keep` selects, default all) where observed differs from a masked prediction, or -1. */
export function firstMaskedMismatch(observed: Uint8Array, expected: MaskedBytes, keep?: (i: number) => boolean): number {
  for (let i = 0; i < expected.value.length; i++) {
    const m = expected.mask[i]!;
    if (m !== 0 && ((observed[i] ?? 0) & m) !== (expected.value[i]! & m) && (!keep || keep(i))) return i;
  }
  return -1;
}
