/**
 * The device map, taken from QEMU itself: `info mtree -f` (flattened views) through QMP's
 * human-monitor-command, parsed into sorted, non-overlapping regions for the "memory" and "I/O"
 * address spaces. A flat view already resolves priorities and aliases, so each address belongs to
 * at most one region, which is exactly what a guest access hits.
 *
 * QEMU prints an I/O view's unclaimed ports as pieces of the root container ("io @0x..."); the
 * memory view simply leaves holes. Both become `unassigned` here, so the rest of kvmprop never
 * needs to know that quirk.
 */
import type { DeviceMap, Region } from '../ir/deviceMap.js';

export type { DeviceMap, Region } from '../ir/deviceMap.js';
export { gaps, regionAt, regionsTouched } from '../ir/deviceMap.js';


export interface FlatView {
  readonly addressSpaces: readonly string[];
  readonly root: string;
  readonly regions: readonly Region[];
}

const REGION_LINE =
  /^\s+([0-9a-f]+)-([0-9a-f]+) \(prio (-?\d+), ([a-z/]+)\): (.+?)(?: @([0-9a-f]+))?( KVM)?\s*$/;

export class MtreeParseError extends Error {
  override name = 'MtreeParseError';
}

/** Parse the text of `info mtree -f` into its flat views. */
export function parseFlatViews(text: string): FlatView[] {
  const views: FlatView[] = [];
  let current: { addressSpaces: string[]; root: string; regions: Region[] } | null = null;
  const lines = text.replace(/\r/g, '').split('\n');
  lines.forEach((line, i) => {
    if (/^FlatView #\d+/.test(line)) {
      if (current) views.push(current);
      current = { addressSpaces: [], root: '', regions: [] };
      return;
    }
    if (!current) return;
    const as = /^ AS "(.+)", root: /.exec(line);
    if (as) {
      current.addressSpaces.push(as[1]!);
      return;
    }
    const root = /^ Root memory region: (.+)$/.exec(line);
    if (root) {
      current.root = root[1]!.trim();
      return;
    }
    if (/^\s+No rendered FlatView/.test(line) || line.trim() === '') return;
    const m = REGION_LINE.exec(line);
    if (!m) {
      if (/^  \S/.test(line)) throw new MtreeParseError(`line ${i + 1}: cannot parse region: ${line}`);
      return;
    }
    current.regions.push({
      start: BigInt(`0x${m[1]}`),
      end: BigInt(`0x${m[2]}`),
      priority: Number(m[3]),
      kind: m[4]!,
      name: m[5]!,
      ...(m[6] ? { offset: BigInt(`0x${m[6]}`) } : {}),
      kvmSlot: m[7] !== undefined,
    });
  });
  if (current) views.push(current);
  return views;
}

function viewFor(views: readonly FlatView[], addressSpace: string): FlatView {
  const v = views.find((f) => f.addressSpaces.includes(addressSpace));
  if (!v) throw new MtreeParseError(`no flat view for address space "${addressSpace}" in info mtree -f output`);
  return v;
}

/** Regions a guest access can hit, without the root container's unclaimed pieces. */
function claimed(view: FlatView): Region[] {
  return view.regions.filter((r) => r.name !== view.root).sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
}

export function deviceMapFromMtree(text: string): DeviceMap {
  const views = parseFlatViews(text);
  return { memory: claimed(viewFor(views, 'memory')), io: claimed(viewFor(views, 'I/O')) };
}

