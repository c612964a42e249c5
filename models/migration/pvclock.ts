/**
 * kvmclock areas at the switchover. Linux Documentation/virt/kvm/x86/msr.rst,
 * MSR_KVM_SYSTEM_TIME_NEW: the structure "will be filled in by the hypervisor periodically ... The
 * hypervisor may update this structure at any time it sees fit until anything with bit0 == 0 is
 * written to it". So a destination's KVM may rewrite an enabled vCPU's pvclock_vcpu_time_info
 * after loading it and before the vCPU first runs (measured on kvm_pvm: one update, version
 * 4 → 6, tsc_timestamp unchanged, system_time moved). RAM equivalence therefore allows, inside an
 * enabled structure and nowhere else, exactly what an update is: a later, complete version (even,
 * greater than the source's). A stale copy (an older version: an update the stream lost) or a
 * torn one (odd) is still a difference; whether the clock it describes goes back is the clock
 * watches' rule (time.ts).
 */
export const PVCLOCK_BYTES = 32;

export interface PvclockUpdate {
  readonly addr: number;
  readonly source: { readonly version: number; readonly systemTime: bigint; readonly tscTimestamp: bigint };
  readonly destination: { readonly version: number; readonly systemTime: bigint; readonly tscTimestamp: bigint };
}

function fields(b: Buffer, at: number) {
  return { version: b.readUInt32LE(at), tscTimestamp: b.readBigUInt64LE(at + 8), systemTime: b.readBigUInt64LE(at + 16) };
}

/**
 * Judge one differing page that holds enabled pvclock structures (`structs`: their guest-physical
 * addresses inside `page`): explained when every difference lies inside a structure and each is a
 * later complete update.
 */
export function explainPvclockPage(page: number, source: Buffer, destination: Buffer, structs: readonly number[]): { explained: true; updates: PvclockUpdate[] } | { explained: false; why: string } {
  const inside = (off: number) => structs.some((s) => off >= s - page && off < s - page + PVCLOCK_BYTES);
  for (let i = 0; i < source.length; i++) {
    if (source[i] !== destination[i] && !inside(i)) return { explained: false, why: `byte 0x${(page + i).toString(16)} differs outside every enabled kvmclock area` };
  }
  const updates: PvclockUpdate[] = [];
  for (const s of structs) {
    const at = s - page;
    if (source.subarray(at, at + PVCLOCK_BYTES).equals(destination.subarray(at, at + PVCLOCK_BYTES))) continue;
    const a = fields(source, at);
    const b = fields(destination, at);
    if (b.version % 2 !== 0) return { explained: false, why: `the destination's kvmclock area at 0x${s.toString(16)} is mid-update (version ${b.version})` };
    if (b.version <= a.version) return { explained: false, why: `the destination's kvmclock area at 0x${s.toString(16)} is not a later update (version ${b.version}, the source's ${a.version})` };
    updates.push({ addr: s, source: a, destination: b });
  }
  return { explained: true, updates };
}
