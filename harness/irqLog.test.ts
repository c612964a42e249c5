import { describe, expect, it } from 'vitest';
import { IRQ_LOG_COUNTS_BYTES, IRQ_LOG_ENTRY_BYTES, IRQ_LOG_RING_ENTRIES, IRQ_LOG_RING_OFFSET, LAYOUT } from './guest/abi.js';
import { IRQ_LOG_BYTES_PER_VCPU, decodeIrqLog } from './irqLog.js';

/** A log as the guest's irq_record would leave it after taking `irqs` in order. */
function synthetic(irqs: readonly { tsc: bigint; vector: number; stealUs?: number }[]): Uint8Array {
  const bytes = new Uint8Array(IRQ_LOG_BYTES_PER_VCPU);
  const view = new DataView(bytes.buffer);
  irqs.forEach(({ tsc, vector, stealUs }, n) => {
    const at = IRQ_LOG_RING_OFFSET + (n % IRQ_LOG_RING_ENTRIES) * IRQ_LOG_ENTRY_BYTES;
    view.setBigUint64(at, tsc, true);
    view.setUint32(at + 8, vector, true);
    view.setUint32(at + 12, stealUs ?? 0, true);
    view.setUint32(vector * 4, view.getUint32(vector * 4, true) + 1, true);
  });
  view.setBigUint64(IRQ_LOG_COUNTS_BYTES, BigInt(irqs.length), true); // total
  view.setBigUint64(IRQ_LOG_COUNTS_BYTES + 8, BigInt(irqs.length), true); // next
  return bytes;
}

describe('decodeIrqLog', () => {
  it('is one LAYOUT.irqLogStride per vCPU, its ring filling the rest of the stride', () => {
    expect(IRQ_LOG_BYTES_PER_VCPU).toBe(LAYOUT.irqLogStride);
    expect(IRQ_LOG_RING_OFFSET + IRQ_LOG_RING_ENTRIES * IRQ_LOG_ENTRY_BYTES).toBeLessThanOrEqual(IRQ_LOG_BYTES_PER_VCPU);
    expect(IRQ_LOG_RING_OFFSET + (IRQ_LOG_RING_ENTRIES + 1) * IRQ_LOG_ENTRY_BYTES).toBeGreaterThan(IRQ_LOG_BYTES_PER_VCPU);
  });

  it('reads an empty log', () => {
    expect(decodeIrqLog(new Uint8Array(IRQ_LOG_BYTES_PER_VCPU))).toEqual({ total: 0n, counts: new Map(), entries: [], lost: 0 });
  });

  it('reads counts per vector and the entries in order', () => {
    const irqs = [
      { tsc: 1000n, vector: 0x40, stealUs: 0 },
      { tsc: 2000n, vector: 0xff, stealUs: 7 },
      { tsc: 3000n, vector: 0x40, stealUs: 7 },
      { tsc: 0xffff_ffff_0000_0001n, vector: 2, stealUs: 0xffff_ffff },
    ];
    const log = decodeIrqLog(synthetic(irqs));
    expect(log.total).toBe(4n);
    expect(log.counts).toEqual(new Map([[2, 1], [0x40, 2], [0xff, 1]]));
    expect(log.entries).toEqual(irqs);
    expect(log.lost).toBe(0);
  });

  it('a full ring holds every entry and loses none', () => {
    const irqs = Array.from({ length: IRQ_LOG_RING_ENTRIES }, (_, n) => ({ tsc: BigInt(n + 1), vector: 0x30 }));
    const log = decodeIrqLog(synthetic(irqs));
    expect(log.entries).toHaveLength(IRQ_LOG_RING_ENTRIES);
    expect(log.entries[0]).toEqual({ tsc: 1n, vector: 0x30, stealUs: 0 });
    expect(log.lost).toBe(0);
  });

  it('a wrapped ring keeps the newest entries, oldest first, and counts the overwritten ones as lost', () => {
    const extra = 5;
    const irqs = Array.from({ length: IRQ_LOG_RING_ENTRIES + extra }, (_, n) => ({ tsc: BigInt(10 * n), vector: 0x20 + (n % 3) }));
    const log = decodeIrqLog(synthetic(irqs));
    expect(log.total).toBe(BigInt(irqs.length));
    expect(log.lost).toBe(extra);
    expect(log.entries).toHaveLength(IRQ_LOG_RING_ENTRIES);
    expect(log.entries[0]).toEqual({ ...irqs[extra], stealUs: 0 });
    expect(log.entries.at(-1)).toEqual({ ...irqs.at(-1), stealUs: 0 });
    expect(log.entries.map((e) => e.tsc)).toEqual(irqs.slice(extra).map((e) => e.tsc));
    // The counts are the guest's, for every interrupt taken (lost entries included).
    expect([...log.counts.values()].reduce((a, b) => a + b, 0)).toBe(irqs.length);
  });

  it('reads a log inside a larger buffer (a subarray of several vCPUs)', () => {
    const two = new Uint8Array(2 * IRQ_LOG_BYTES_PER_VCPU);
    two.set(synthetic([{ tsc: 7n, vector: 0x41 }]), IRQ_LOG_BYTES_PER_VCPU);
    const log = decodeIrqLog(two.subarray(IRQ_LOG_BYTES_PER_VCPU));
    expect(log.entries).toEqual([{ tsc: 7n, vector: 0x41, stealUs: 0 }]);
    expect(decodeIrqLog(two.subarray(0, IRQ_LOG_BYTES_PER_VCPU)).total).toBe(0n);
  });

  it('refuses a buffer shorter than one log', () => {
    expect(() => decodeIrqLog(new Uint8Array(IRQ_LOG_BYTES_PER_VCPU - 1))).toThrow(RangeError);
  });
});
