/**
 * The guest's device map as a host fact: claimed regions of the memory and I/O address spaces, as
 * QEMU's flat views show them (harness/mtree.ts reads them from `info mtree -f`). Generators aim
 * reads at it; models use it to say what each byte of a read should be.
 */

export interface Region {
  /** First address (inclusive). */
  readonly start: bigint;
  /** Last address (inclusive), as QEMU prints it. */
  readonly end: bigint;
  readonly name: string;
  /** QEMU's region kind: 'ram', 'rom', 'romd', 'i/o', 'ramd', ... */
  readonly kind: string;
  readonly priority: number;
  /** Offset into the named region when the view shows an alias or a piece ("@0x..."). */
  readonly offset?: bigint;
  /** Marked "KVM": backed by a KVM memory slot (guest accesses never exit). */
  readonly kvmSlot: boolean;
}

export interface DeviceMap {
  /** Claimed regions of the CPU's memory address space, sorted by start. */
  readonly memory: readonly Region[];
  /** Claimed regions of the I/O port space (0..0xffff), sorted by start. */
  readonly io: readonly Region[];
}

/** The region containing addr, if any. */
export function regionAt(regions: readonly Region[], addr: bigint): Region | undefined {
  let lo = 0;
  let hi = regions.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = regions[mid]!;
    if (addr < r.start) hi = mid - 1;
    else if (addr > r.end) lo = mid + 1;
    else return r;
  }
  return undefined;
}

/** Unclaimed ranges (inclusive bounds) between from and to. */
export function gaps(regions: readonly Region[], from: bigint, to: bigint): { start: bigint; end: bigint }[] {
  const out: { start: bigint; end: bigint }[] = [];
  let at = from;
  for (const r of regions) {
    if (r.end < at) continue;
    if (r.start > to) break;
    if (r.start > at) out.push({ start: at, end: r.start - 1n });
    at = r.end + 1n;
    if (at > to) return out;
  }
  if (at <= to) out.push({ start: at, end: to });
  return out;
}

/** Every region (claimed or not) an access of `width` bytes at addr touches, in order. */
export function regionsTouched(regions: readonly Region[], addr: bigint, width: number): (Region | undefined)[] {
  const out: (Region | undefined)[] = [];
  let at = addr;
  const last = addr + BigInt(width) - 1n;
  while (at <= last) {
    const r = regionAt(regions, at);
    if (!out.includes(r)) out.push(r);
    if (r) at = r.end + 1n;
    else {
      const next = regions.find((x) => x.start > at);
      at = next ? next.start : last + 1n;
    }
  }
  return out;
}
