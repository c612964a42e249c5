/**
 * The host leak pattern: before VMs start, the harness fills and frees a large amount of host memory
 * with this 8-byte pattern (harness/hostPattern.ts). Memory the host hands to a guest, or data a
 * buggy hypervisor copies from stale host buffers, would then carry it. No guest-visible output may
 * ever contain it.
 *
 * The bytes are chosen to be unlike anything a guest legitimately sees: not ASCII, not a canonical
 * pointer, no 00/ff bytes, and no 4-byte window shared with the guest canary (ir/program.ts).
 */
export const HOST_PATTERN = Uint8Array.from([0xe7, 0x9a, 0xc3, 0x5d, 0xb1, 0x0f, 0x6e, 0xa4]);

/** Shortest run of pattern bytes that counts as a sighting (one 32-bit register's worth). */
export const MIN_SIGHTING_BYTES = 4;

export interface PatternSighting {
  /** Byte offset in the scanned data. */
  readonly offset: number;
  /** How many consecutive pattern bytes (in pattern order, any phase) start there. */
  readonly length: number;
}

/** Every maximal run of ≥ minBytes consecutive host-pattern bytes (at any phase) in data. */
export function findHostPattern(data: Uint8Array, minBytes = MIN_SIGHTING_BYTES): PatternSighting[] {
  const out: PatternSighting[] = [];
  const n = HOST_PATTERN.length;
  let i = 0;
  while (i < data.length) {
    let best = 0;
    for (let phase = 0; phase < n; phase++) {
      let len = 0;
      while (i + len < data.length && data[i + len] === HOST_PATTERN[(phase + len) % n]) len++;
      if (len > best) best = len;
    }
    if (best >= minBytes) {
      out.push({ offset: i, length: best });
      i += best;
    } else i++;
  }
  return out;
}

/** Little-endian bytes of a register value, limited to `width` bytes. */
export function valueBytes(value: bigint, width: number): Uint8Array {
  const b = new Uint8Array(width);
  for (let i = 0; i < width; i++) b[i] = Number((value >> BigInt(8 * i)) & 0xffn);
  return b;
}
