/**
 * A reader for QEMU's migration stream (the bytes `migrate` sends, or a file a VM was saved to),
 * written from the format as QEMU 7.2 produces it (migration/savevm.c, migration/ram.c,
 * migration/vmstate.c; scripts/analyze-migration.py reads the same): enough of it to split a
 * stream into its sections, walk the RAM section's records, and lay every device section out field
 * by field, so that two streams' device state can be compared and a difference named by section
 * and field. Pure: bytes in, data out.
 *
 * The layout:
 *   be32 'QEVM' magic, be32 version (3)
 *   [0x07 CONFIGURATION: be32 length + machine name, then subsections (0x05 ...) if any]
 *   sections, each a byte type then:
 *     0x01 START / 0x04 FULL: be32 section id, u8 length + idstr, be32 instance id, be32 version id
 *     0x02 PART  / 0x03 END:  be32 section id
 *     then the section's data, then the footer 0x7e + be32 section id
 *     0x08 COMMAND: be16 command, be16 length, data (no footer)
 *   0x00 EOF, then 0x06 VMDESCRIPTION: be32 length + JSON (every FULL section's fields and sizes)
 * The RAM section (idstr "ram"; START, PARTs, END) is a sequence of be64 (offset | flags) records
 * ending in EOS: MEM_SIZE (START: the total, then per block u8 length + idstr + be64 size), ZERO
 * (u8 fill), PAGE (4096 bytes), XBZRLE (u8 encoding, be16 length, data), COMPRESS_PAGE (be32
 * length, data); without CONTINUE a u8 length + block idstr comes after the header. A device
 * section (FULL) has no length of its own: the VMDESCRIPTION's sizes give it, and its footer
 * confirms it.
 */

export const QEVM_MAGIC = 0x5145564d;
export const QEMU_VM_FILE_VERSION = 3;

export const SECTION = { eof: 0x00, start: 0x01, part: 0x02, end: 0x03, full: 0x04, subsection: 0x05, vmdescription: 0x06, configuration: 0x07, command: 0x08, footer: 0x7e } as const;

export const RAM_FLAG = { full: 0x01, zero: 0x02, memSize: 0x04, page: 0x08, eos: 0x10, continue: 0x20, xbzrle: 0x40, hook: 0x80, compressPage: 0x100 } as const;
const RAM_FLAGS_MASK = 0xfffn;
const TARGET_PAGE = 4096;

export type SectionKind = 'start' | 'part' | 'end' | 'full';

export interface StreamSection {
  readonly kind: SectionKind;
  readonly sectionId: number;
  readonly idstr: string;
  readonly instanceId: number;
  readonly versionId: number;
  /** Offset of the section's type byte, and [dataStart, dataEnd) of its data (footer excluded). */
  readonly offset: number;
  readonly dataStart: number;
  readonly dataEnd: number;
}

/** A field entry of the VMDESCRIPTION (QEMU's vmsd_desc_field_start/end). */
export interface VmdescField {
  readonly name: string;
  readonly type: string;
  readonly size: number;
  readonly array_len?: number;
  readonly index?: number;
  readonly struct?: VmdescVmsd;
  /** VMSTATE_WITH_TMP: its own fields inline. */
  readonly fields?: readonly VmdescField[];
}

export interface VmdescVmsd {
  readonly vmsd_name: string;
  readonly version: number;
  readonly fields?: readonly VmdescField[];
  readonly subsections?: readonly VmdescVmsd[];
}

export interface VmdescDevice extends Partial<VmdescVmsd> {
  readonly name: string;
  readonly instance_id: number;
}

export interface Vmdesc {
  readonly page_size: number;
  readonly devices: readonly VmdescDevice[];
}

/** One leaf of a device section: where its bytes are (relative to the section's data). */
export interface FieldRange {
  readonly path: string;
  readonly offset: number;
  readonly size: number;
  readonly type: string;
}

export interface DeviceSection {
  readonly section: StreamSection;
  /** Its VMDESCRIPTION entry (null: the stream had none for it). */
  readonly desc: VmdescDevice | null;
  /** Its fields laid out (empty when the desc has none: an old-style section). */
  readonly fields: readonly FieldRange[];
}

export interface RamSummary {
  /** MEM_SIZE's total, and each block's idstr and size. */
  readonly total: number;
  readonly blocks: readonly { readonly idstr: string; readonly bytes: number }[];
  readonly pages: number;
  readonly zeroPages: number;
  readonly xbzrlePages: number;
  readonly compressedPages: number;
  /** Records per page offset of block `ram0`... by block: how often each page was sent. */
  readonly sends: ReadonlyMap<string, ReadonlyMap<number, number>>;
}

export interface MigrationStream {
  readonly version: number;
  readonly machine: string | null;
  readonly sections: readonly StreamSection[];
  readonly devices: readonly DeviceSection[];
  readonly ram: RamSummary;
  readonly vmdesc: Vmdesc | null;
  /** Offset of the EOF byte. */
  readonly eof: number;
}

export class StreamFormatError extends Error {
  override name = 'StreamFormatError';
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(`${message} (at byte ${offset})`);
  }
}

class Reader {
  constructor(
    readonly b: Buffer,
    public at = 0,
  ) {}
  need(n: number, what: string): void {
    if (this.at + n > this.b.length) throw new StreamFormatError(`the stream ends inside ${what}`, this.at);
  }
  u8(what = 'a byte'): number {
    this.need(1, what);
    return this.b[this.at++]!;
  }
  u16(what = 'a be16'): number {
    this.need(2, what);
    const v = this.b.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  u32(what = 'a be32'): number {
    this.need(4, what);
    const v = this.b.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  u64(what = 'a be64'): bigint {
    this.need(8, what);
    const v = this.b.readBigUInt64BE(this.at);
    this.at += 8;
    return v;
  }
  str(what: string): string {
    const n = this.u8(what);
    this.need(n, what);
    const s = this.b.toString('latin1', this.at, this.at + n);
    this.at += n;
    return s;
  }
  skip(n: number, what: string): void {
    this.need(n, what);
    this.at += n;
  }
}

/** The VMDESCRIPTION at the stream's end: 0x00 EOF, 0x06, be32 length, then exactly that much JSON up to the last byte. */
function findVmdesc(b: Buffer): { eof: number; vmdesc: Vmdesc } | null {
  const floor = Math.max(1, b.length - (16 << 20));
  for (let p = b.length - 6; p >= floor; p--) {
    if (b[p] !== SECTION.vmdescription || b[p - 1] !== SECTION.eof || b[b.length - 1] !== 0x7d /* } */) continue;
    if (b.readUInt32BE(p + 1) !== b.length - p - 5) continue;
    try {
      return { eof: p - 1, vmdesc: JSON.parse(b.toString('utf8', p + 5)) as Vmdesc };
    } catch {
      continue;
    }
  }
  return null;
}

/**
 * Lay out the fields of one vmsd (fields, then its subsections each after its 0x05 header), from
 * `offset`; returns the leaves and where the vmsd ends. Every entry's `size` is what one element
 * wrote (QEMU measures it), so a struct's size is known without its insides; its insides only name
 * the leaves.
 */
export function layoutVmsd(v: VmdescVmsd, offset = 0, prefix = ''): { fields: FieldRange[]; end: number } {
  const out: FieldRange[] = [];
  let at = offset;
  for (const f of v.fields ?? []) {
    const n = f.array_len ?? 1;
    for (let i = 0; i < n; i++) {
      const name = `${prefix}${f.name}${n > 1 ? `[${i}]` : ''}${f.index !== undefined ? `[${f.index}]` : ''}`;
      const inner = f.struct ?? (f.fields ? { vmsd_name: f.name, version: 0, fields: f.fields } : null);
      if (inner) {
        const sub = layoutVmsd(inner, at, `${name}.`);
        // A struct whose insides do not add up to its size is named as a whole.
        if (sub.end === at + f.size) out.push(...sub.fields);
        else out.push({ path: name, offset: at, size: f.size, type: f.type });
      } else {
        out.push({ path: name, offset: at, size: f.size, type: f.type });
      }
      at += f.size;
    }
  }
  for (const s of v.subsections ?? []) {
    const header = 1 + 1 + Buffer.byteLength(s.vmsd_name, 'latin1') + 4;
    out.push({ path: `${prefix}${s.vmsd_name} (subsection header)`, offset: at, size: header, type: 'subsection' });
    const sub = layoutVmsd(s, at + header, `${prefix}${s.vmsd_name}/`);
    out.push(...sub.fields);
    at = sub.end;
  }
  return { fields: out, end: at };
}

function emptyRam(): { total: number; blocks: { idstr: string; bytes: number }[]; pages: number; zeroPages: number; xbzrlePages: number; compressedPages: number; sends: Map<string, Map<number, number>> } {
  return { total: 0, blocks: [], pages: 0, zeroPages: 0, xbzrlePages: 0, compressedPages: 0, sends: new Map() };
}

/** Walk one RAM section's records up to its EOS. */
function readRam(r: Reader, ram: ReturnType<typeof emptyRam>, block: { name: string | null }): void {
  for (;;) {
    const at = r.at;
    const header = r.u64('a RAM record header');
    const flags = Number(header & RAM_FLAGS_MASK);
    const addr = Number(header & ~RAM_FLAGS_MASK);
    if (flags & RAM_FLAG.eos) return;
    if (flags & RAM_FLAG.memSize) {
      ram.total = addr;
      for (let left = addr; left > 0; ) {
        const idstr = r.str('a RAM block name');
        const bytes = Number(r.u64('a RAM block size'));
        ram.blocks.push({ idstr, bytes });
        left -= bytes;
      }
      continue;
    }
    if (flags & RAM_FLAG.hook) throw new StreamFormatError('a RAM hook record (RDMA) is not supported', at);
    if (!(flags & RAM_FLAG.continue)) block.name = r.str('a RAM block name');
    else if (block.name === null) throw new StreamFormatError('a RAM record CONTINUEs with no block before it', at);
    const count = () => {
      let m = ram.sends.get(block.name!);
      if (!m) ram.sends.set(block.name!, (m = new Map()));
      m.set(addr, (m.get(addr) ?? 0) + 1);
    };
    switch (flags & ~RAM_FLAG.continue) {
      case RAM_FLAG.zero:
        r.u8('a zero page fill byte');
        ram.zeroPages++;
        break;
      case RAM_FLAG.page:
        r.skip(TARGET_PAGE, 'a page');
        ram.pages++;
        break;
      case RAM_FLAG.xbzrle: {
        r.u8('an XBZRLE encoding byte');
        r.skip(r.u16('an XBZRLE length'), 'an XBZRLE page');
        ram.xbzrlePages++;
        break;
      }
      case RAM_FLAG.compressPage:
        r.skip(r.u32('a compressed page length'), 'a compressed page');
        ram.compressedPages++;
        break;
      default:
        throw new StreamFormatError(`a RAM record with flags 0x${flags.toString(16)}`, at);
    }
    count();
  }
}

function footer(r: Reader, id: number): void {
  const at = r.at;
  const t = r.u8('a section footer');
  const fid = r.u32('a section footer');
  if (t !== SECTION.footer || fid !== id) throw new StreamFormatError(`section ${id} does not end in its footer (found 0x${t.toString(16)} id ${fid})`, at);
}

/** Parse a whole migration stream (a saved file, or what one migration sent). */
export function parseMigrationStream(bytes: Uint8Array): MigrationStream {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const r = new Reader(b);
  if (r.u32('the magic') !== QEVM_MAGIC) throw new StreamFormatError("not a migration stream (no 'QEVM' magic)", 0);
  const version = r.u32('the version');
  if (version !== QEMU_VM_FILE_VERSION) throw new StreamFormatError(`stream version ${version}, this reader knows ${QEMU_VM_FILE_VERSION}`, 4);
  const tail = findVmdesc(b);
  const descs = [...(tail?.vmdesc.devices ?? [])];
  const sections: StreamSection[] = [];
  const devices: DeviceSection[] = [];
  const ram = emptyRam();
  const block = { name: null as string | null };
  const byId = new Map<number, StreamSection>();
  let machine: string | null = null;
  for (;;) {
    const offset = r.at;
    const type = r.u8('a section type');
    if (type === SECTION.eof) {
      return { version, machine, sections, devices, ram, vmdesc: tail?.vmdesc ?? null, eof: offset };
    }
    if (type === SECTION.configuration) {
      const n = r.u32('the configuration');
      r.need(n, 'the machine name');
      machine = b.toString('latin1', r.at, r.at + n);
      r.at += n;
      // Its subsections (none for the machines here): each a 0x05 header and fields we cannot size.
      if (b[r.at] === SECTION.subsection) throw new StreamFormatError('configuration subsections are not supported', r.at);
      continue;
    }
    if (type === SECTION.command) {
      r.u16('a command');
      r.skip(r.u16('a command length'), 'a command');
      continue;
    }
    let s: StreamSection;
    if (type === SECTION.start || type === SECTION.full) {
      const sectionId = r.u32('a section id');
      const idstr = r.str('a section idstr');
      const instanceId = r.u32('an instance id');
      const versionId = r.u32('a version id');
      s = { kind: type === SECTION.start ? 'start' : 'full', sectionId, idstr, instanceId, versionId, offset, dataStart: r.at, dataEnd: r.at };
      byId.set(sectionId, s);
    } else if (type === SECTION.part || type === SECTION.end) {
      const sectionId = r.u32('a section id');
      const first = byId.get(sectionId);
      if (!first) throw new StreamFormatError(`a section part for id ${sectionId}, never started`, offset);
      s = { ...first, kind: type === SECTION.part ? 'part' : 'end', offset, dataStart: r.at, dataEnd: r.at };
    } else {
      throw new StreamFormatError(`unknown section type 0x${type.toString(16)}`, offset);
    }
    if (s.kind !== 'full') {
      if (s.idstr !== 'ram') throw new StreamFormatError(`iterative section '${s.idstr}' is not supported`, offset);
      readRam(r, ram, block);
    } else {
      const di = descs.findIndex((d) => d.name === s.idstr && d.instance_id === s.instanceId);
      const desc = di >= 0 ? descs.splice(di, 1)[0]! : null;
      const lay = desc?.fields ? layoutVmsd(desc as VmdescVmsd) : null;
      if (lay) r.at = s.dataStart + lay.end;
      else r.at = scanFooter(b, s);
      s = { ...s, dataEnd: r.at };
      devices.push({ section: s, desc, fields: lay?.fields ?? [] });
    }
    if (s.kind !== 'full') s = { ...s, dataEnd: r.at };
    footer(r, s.sectionId);
    sections.push(s);
  }
}

/** For a section without a description: the first footer of its id that a section header or the EOF follows. */
function scanFooter(b: Buffer, s: StreamSection): number {
  for (let q = b.indexOf(SECTION.footer, s.dataStart); q >= 0 && q + 5 < b.length; q = b.indexOf(SECTION.footer, q + 1)) {
    if (b.readUInt32BE(q + 1) !== s.sectionId) continue;
    const next = q + 5;
    // The EOF: the stream's last byte, or the VMDESCRIPTION's type after it.
    if (b[next] === SECTION.eof && (next + 1 === b.length || b[next + 1] === SECTION.vmdescription)) return q;
    if (b[next] === SECTION.full && next + 6 <= b.length) {
      const n = b[next + 5]!;
      const name = b.subarray(next + 6, next + 6 + n);
      if (n > 0 && name.length === n && [...name].every((c) => c >= 0x20 && c < 0x7f)) return q;
    }
  }
  throw new StreamFormatError(`no footer found for section '${s.idstr}'`, s.dataStart);
}

/** A device section's data bytes. */
export function sectionBytes(bytes: Uint8Array, d: DeviceSection): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset + d.section.dataStart, d.section.dataEnd - d.section.dataStart);
}

/** A field that may differ between two streams of one guest, and why. */
export interface StreamExclusion {
  /** Section idstr (exact) and field path (regular expression over FieldRange.path). */
  readonly section: string;
  readonly field: RegExp;
  readonly why: string;
}

export interface FieldDifference {
  /** "idstr/instance", e.g. "cpu/1". */
  readonly section: string;
  readonly field: string;
  readonly a: string;
  readonly b: string;
  /** Set where an exclusion allows it: its reason. */
  readonly excluded?: string;
}

export interface StreamComparison {
  /** The device sections found in both and compared ("idstr/instance"). */
  readonly compared: readonly string[];
  /** Sections one stream has and the other lacks. */
  readonly onlyIn: { readonly a: readonly string[]; readonly b: readonly string[] };
  /** Every differing field, allowed ones marked `excluded`. */
  readonly differences: readonly FieldDifference[];
}

const key = (d: DeviceSection) => `${d.section.idstr}/${d.section.instanceId}`;

/**
 * Compare two streams' device sections (FULL; RAM is compared elsewhere, page by page) field by
 * field: each section of one found in the other by idstr and instance, its data compared byte for
 * byte, and where it differs, the fields that differ named (a section whose two layouts differ, or
 * that has none, is one difference as a whole).
 */
export function compareDeviceState(aBytes: Uint8Array, a: MigrationStream, bBytes: Uint8Array, b: MigrationStream, exclusions: readonly StreamExclusion[] = []): StreamComparison {
  const bByKey = new Map(b.devices.map((d) => [key(d), d]));
  const aKeys = new Set(a.devices.map(key));
  const compared: string[] = [];
  const differences: FieldDifference[] = [];
  const allowed = (section: string, field: string) => exclusions.find((e) => e.section === section && e.field.test(field))?.why;
  for (const da of a.devices) {
    const k = key(da);
    const db = bByKey.get(k);
    if (!db) continue;
    compared.push(k);
    const xa = sectionBytes(aBytes, da);
    const xb = sectionBytes(bBytes, db);
    if (xa.equals(xb)) continue;
    const sameLayout = da.fields.length > 0 && da.fields.length === db.fields.length && da.fields.every((f, i) => f.path === db.fields[i]!.path && f.offset === db.fields[i]!.offset && f.size === db.fields[i]!.size);
    if (!sameLayout) {
      const why = allowed(da.section.idstr, '(whole section)');
      differences.push({ section: k, field: '(whole section)', a: `${xa.length} bytes`, b: `${xb.length} bytes`, ...(why ? { excluded: why } : {}) });
      continue;
    }
    for (const f of da.fields) {
      const fa = xa.subarray(f.offset, f.offset + f.size);
      const fb = xb.subarray(f.offset, f.offset + f.size);
      if (fa.equals(fb)) continue;
      const why = allowed(da.section.idstr, f.path);
      differences.push({ section: k, field: f.path, a: fa.toString('hex'), b: fb.toString('hex'), ...(why ? { excluded: why } : {}) });
    }
  }
  return { compared, onlyIn: { a: a.devices.map(key).filter((k) => !bByKey.has(k)), b: b.devices.map(key).filter((k) => !aKeys.has(k)) }, differences };
}
