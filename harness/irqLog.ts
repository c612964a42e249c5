/**
 * One vCPU's interrupt log, decoded. The guest keeps it at LAYOUT.irqLog + vcpu * LAYOUT.irqLogStride
 * (harness/guest/abi.ts): u32 counts[256] (interrupts taken per vector), then irq_log_head { u64 total;
 * u64 next } (next: entries ever written), then a ring of IRQ_LOG_RING_ENTRIES entries
 * { u64 tsc; u32 vector; u32 steal_us }, entry n at slot n % IRQ_LOG_RING_ENTRIES (steal_us: the
 * vCPU's KVM steal time so far in µs, wrapping, with PROGRAM_FLAGS.stealTime; else 0). The guest's interrupt
 * handler (main.c irq_record) writes the entry, then the count, then next, in ring 0, for every
 * vector but the exceptions (NMI, vector 2, included); read it with the VM stopped or finished.
 */
import {
  IRQ_LOG_COUNTS_BYTES,
  IRQ_LOG_ENTRY_BYTES,
  IRQ_LOG_RING_ENTRIES,
  IRQ_LOG_RING_OFFSET,
  LAYOUT,
  readStruct,
} from './guest/abi.js';

/** Bytes of one vCPU's log (read this many at LAYOUT.irqLog + vcpu * IRQ_LOG_BYTES_PER_VCPU). */
export const IRQ_LOG_BYTES_PER_VCPU = LAYOUT.irqLogStride;

export interface IrqLog {
  /** Interrupts this vCPU took. */
  total: bigint;
  /** Interrupts taken per vector; vectors never taken are absent. */
  counts: Map<number, number>;
  /** The entries the ring still holds, oldest first. */
  entries: { tsc: bigint; vector: number; stealUs: number }[];
  /** Entries the ring overwrote (written, no longer held). */
  lost: number;
}

/** Decode one vCPU's LAYOUT.irqLogStride bytes. */
export function decodeIrqLog(bytes: Uint8Array): IrqLog {
  if (bytes.byteLength < IRQ_LOG_BYTES_PER_VCPU) {
    throw new RangeError(`an interrupt log is ${IRQ_LOG_BYTES_PER_VCPU} bytes; got ${bytes.byteLength}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const counts = new Map<number, number>();
  for (let v = 0; v < IRQ_LOG_COUNTS_BYTES / 4; v++) {
    const n = view.getUint32(v * 4, true);
    if (n) counts.set(v, n);
  }
  const head = readStruct('irq_log_head', bytes, IRQ_LOG_COUNTS_BYTES);
  const written = head.next!;
  const ring = BigInt(IRQ_LOG_RING_ENTRIES);
  const held = written < ring ? written : ring;
  const first = written - held;
  const entries: { tsc: bigint; vector: number; stealUs: number }[] = [];
  for (let n = first; n < written; n++) {
    const at = IRQ_LOG_RING_OFFSET + Number(n % ring) * IRQ_LOG_ENTRY_BYTES;
    entries.push({ tsc: view.getBigUint64(at, true), vector: view.getUint32(at + 8, true), stealUs: view.getUint32(at + 12, true) });
  }
  return { total: head.total!, counts, entries, lost: Number(first) };
}
