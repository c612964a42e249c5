/**
 * The vCPU and device state of a stopped QEMU VM, read through its QMP monitor and put in a
 * normalized form (section, key, value), so that a migration property can assert that a source
 * (run state 'postmigrate' after a completed migration) and its destination ('paused': loaded, not
 * yet resumed) hold the same state, and name each item that differs.
 *
 * What is read (QEMU 7.2; every HMP command goes through `human-monitor-command`):
 *  - `query-cpus-fast`: each vCPU's identity (cpu-index, QOM path, topology props, target);
 *  - HMP `info registers -a`: every vCPU's general, segment, descriptor-table, control and debug
 *    registers, EFER, RIP/RFLAGS, CPL, the interrupt shadow (II), A20, SMM, halted (HLT), the x87
 *    state (FCW/FSW/FTW, FPR0-7), MXCSR and XMM0-15. Printing it calls cpu_synchronize_state, so it
 *    is KVM's state, fetched once after the stop (then QEMU's copy, which no longer changes);
 *  - HMP `info lapic`, once per vCPU with human-monitor-command's `cpu-index` (7.2's own argument,
 *    `info lapic [apic-id]`, is an APIC ID, not a CPU index; the implicit-CPU form syncs the vCPU
 *    like `info registers`): the LVTs, timer (TDCR, initial and current count), SPIV, ICR, ESR,
 *    ISR, IRR, APR/TPR/DFR/LDR/PPR of the in-kernel (or userspace) LAPIC;
 *  - HMP `info pic`: every interrupt controller that prints itself there: the i8259 pair
 *    (`pic0` master, `pic1` slave) and each IOAPIC (`ioapic[N]`, N its position in the output:
 *    7.2 labels every IOAPIC "ioapic0", and microvm has two). The order is QEMU's walk over its QOM
 *    tree, the same for the same command line, so a source and its destination pair up;
 *  - `query-kvm` (enabled, present).
 *
 * Not compared, and why (each seen on QEMU 7.2 with KVM):
 *  - decoded text next to a raw value (`[----A--]` after RFL, `[ST=0]` after FSW, `DPL=3 CS64
 *    [-R-]` after a segment's flags word, "active-hi edge masked ..." after an LVT, "cpu 0 (X2APIC
 *    ID)" after ICR2, an ioapic pin's "dest=0 vec=0 ..."): all of it is decoded from the raw value,
 *    which is compared;
 *  - query-cpus-fast's `thread-id`: the host thread id of the vCPU, a property of the process;
 *  - HMP `info irq` / QMP `x-query-irq`: per-IRQ delivery counts since the QEMU process started
 *    (InterruptStatsProvider irq_count[]); not in any vmstate, so a destination counts from 0
 *    (seen: source " 0: 29", destination nothing);
 *  - QMP `query-stats` (KVM binary stats: exits, halt polls, pf_fixed, ...): per-process counters;
 *  - HMP `info cpus`: the host thread id again (`* CPU #0: thread_id=32046`);
 *  - QMP `x-query-roms`: host file names of each VM's private directory; `x-query-ramblock`: the RAM
 *    layout, configuration that migration checks itself ("Length mismatch: ram0"); `x-query-numa`,
 *    `x-query-rdma`, `x-query-virtio`: configuration or nothing here; `x-query-jit`,
 *    `x-query-opcount` (TCG only), `x-query-profile` (not compiled in), `x-query-usb` (no USB):
 *    refused by 7.2; there is no `x-query-lapic`, and no `info ioapic` (the IOAPIC is in `info pic`);
 *  - `query-status`: the run state differs by design ('postmigrate' against 'paused'); it is read
 *    to refuse a running VM and kept in `raw` only.
 *
 * The LAPIC timer's `current_count` is kept: QEMU 7.2 does not print KVM's TMCCT but computes it
 * from QEMU_CLOCK_VIRTUAL and the time of the vCPU's last sync with KVM (kvm_get_apic_state resets
 * initial_count_load_time to "now"), and the virtual clock stands still while the VM is stopped, so
 * it reads the same on every capture of a stopped VM, and the same on a source and its destination
 * (seen: an armed periodic timer reads initial_count = current_count = 50000000 before and after a
 * 500 ms wait and on both sides of a migration). It therefore says nothing about KVM's count.
 *
 * Not visible through QMP in 7.2 at all: MSRs (IA32_APIC_BASE, TSC, kvmclock, TSC deadline...),
 * KVM's own LAPIC timer count, the PIT, RTC and HPET: a property that needs them reads them in the
 * guest. Guest RAM is compared elsewhere (harness/session.ts compareRam).
 */

export interface VmStateItem {
  readonly section: string;
  readonly key: string;
  readonly value: string;
}

export interface VmState {
  readonly items: readonly VmStateItem[];
  /** The text of each command as QEMU gave it (HMP text, or JSON for QMP queries), for evidence. */
  readonly raw: Readonly<Record<string, string>>;
}

/** What captureVmState needs of a QMP connection (harness/qmp.ts QmpClient, a Vm's `.qmp`). */
export interface QmpLike {
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
}

export interface VmStateDifference {
  readonly section: string;
  readonly key: string;
  /** null: the item exists on the other side only. */
  readonly a: string | null;
  readonly b: string | null;
}

/** Raised when QEMU's text is not what the parsers know: a new QEMU, or the wrong VM. */
export class VmStateError extends Error {
  override name = 'VmStateError';
}

interface CpuInfoFast {
  readonly 'cpu-index': number;
  readonly 'qom-path'?: string;
  readonly 'thread-id'?: number;
  readonly target?: string;
  readonly props?: Readonly<Record<string, unknown>>;
}

/**
 * Capture the state of a stopped VM with `cpus` vCPUs. Refuses a running VM (its registers would
 * be a moving picture) and a VM whose vCPU count is not `cpus`.
 */
export async function captureVmState(qmp: QmpLike, cpus: number): Promise<VmState> {
  const raw: Record<string, string> = {};
  const items: VmStateItem[] = [];

  // QMP answers in order and each reply carries its id: every question goes out at once (they
  // only read; the status is checked before anything is used).
  const statusQ = qmp.execute<{ status: string; running: boolean }>('query-status');
  const cpuListQ = qmp.execute<CpuInfoFast[]>('query-cpus-fast');
  const registersQ = hmp(qmp, 'info registers -a');
  const lapicQ = Array.from({ length: cpus }, (_, i) => hmp(qmp, 'info lapic', i));
  const picQ = hmp(qmp, 'info pic');
  const kvmQ = qmp.execute<{ enabled: boolean; present: boolean }>('query-kvm');
  const all = Promise.allSettled([statusQ, cpuListQ, registersQ, ...lapicQ, picQ, kvmQ]);
  const status = await statusQ.catch(async (e: unknown) => {
    await all;
    throw e;
  });
  raw['query-status'] = JSON.stringify(status);
  if (status.running) {
    await all;
    throw new VmStateError(`the VM is running (status '${status.status}'): stop it before capturing its state`);
  }
  // Every question settles before an error leaves: none answers into a capture that gave up.
  const settled = await all;
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;

  const cpuList = await cpuListQ;
  raw['query-cpus-fast'] = JSON.stringify(cpuList);
  const indexes = cpuList.map((c) => c['cpu-index']).sort((x, y) => x - y);
  if (indexes.length !== cpus) throw new VmStateError(`the VM has ${indexes.length} vCPUs (${indexes.join(', ')}), expected ${cpus}`);
  const identity = new Map<number, VmStateItem[]>();
  for (const c of cpuList) {
    const section = `cpu${c['cpu-index']}.identity`;
    const own: VmStateItem[] = [];
    // 'thread-id' (the host thread) is left out: see the module comment.
    if (c['qom-path'] !== undefined) own.push({ section, key: 'qom-path', value: c['qom-path'] });
    if (c.target !== undefined) own.push({ section, key: 'target', value: c.target });
    for (const [k, v] of Object.entries(c.props ?? {}).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0))) {
      own.push({ section, key: `props.${k}`, value: String(v) });
    }
    identity.set(c['cpu-index'], own);
  }

  const registersText = await registersQ;
  raw['info registers -a'] = registersText;
  const registers = parseRegisters(registersText);
  const seen = [...new Set(registers.map((i) => cpuOfSection(i.section)))].sort((x, y) => x - y);
  if (seen.join(',') !== indexes.join(',')) {
    throw new VmStateError(`info registers -a printed CPUs ${seen.join(', ') || 'none'}, query-cpus-fast lists ${indexes.join(', ')}`);
  }

  for (const i of indexes) {
    items.push(...identity.get(i)!);
    items.push(...registers.filter((r) => r.section === `cpu${i}.registers`));
    const name = `info lapic (cpu-index ${i})`;
    const asked = lapicQ[i];
    if (!asked) throw new VmStateError(`query-cpus-fast lists cpu-index ${i}; a VM of ${cpus} vCPUs numbers them from 0`);
    const text = await asked;
    raw[name] = text;
    items.push(...parseLapic(text, i));
  }

  const picText = await picQ;
  raw['info pic'] = picText;
  items.push(...parsePic(picText));

  const kvm = await kvmQ;
  raw['query-kvm'] = JSON.stringify(kvm);
  items.push({ section: 'kvm', key: 'enabled', value: String(kvm.enabled) }, { section: 'kvm', key: 'present', value: String(kvm.present) });

  checkUnique(items, 'the capture');
  return { items, raw };
}

/**
 * Items that differ (or exist on one side only), in a stable order: `a`'s item order, then the
 * items only `b` has, in `b`'s order.
 */
export function diffVmState(a: VmState, b: VmState): VmStateDifference[] {
  const bMap = indexItems(b.items, 'b');
  const aMap = indexItems(a.items, 'a');
  const out: VmStateDifference[] = [];
  for (const [id, item] of aMap) {
    const other = bMap.get(id);
    if (!other) out.push({ section: item.section, key: item.key, a: item.value, b: null });
    else if (other.value !== item.value) out.push({ section: item.section, key: item.key, a: item.value, b: other.value });
  }
  for (const [id, item] of bMap) if (!aMap.has(id)) out.push({ section: item.section, key: item.key, a: null, b: item.value });
  return out;
}

/** One line per difference, for assertion messages: `cpu0.registers RIP: 0000... ≠ 0000...`. */
export function formatVmStateDiff(diff: readonly VmStateDifference[], names: readonly [string, string] = ['a', 'b']): string {
  return diff
    .map((d) => `${d.section} ${d.key}: ${names[0]} ${d.a ?? '(absent)'}, ${names[1]} ${d.b ?? '(absent)'}`)
    .join('\n');
}

// --- parsers (pure) ------------------------------------------------------------------------------

const SEGMENT = /^(ES|CS|SS|DS|FS|GS|LDT|TR) ?=([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)/;
const TABLE = /^(GDT|IDT)= *([0-9a-f]+) ([0-9a-f]+)/;
/** NAME=value, the value one or more lowercase hex words (QEMU prints hex in lowercase, names in capitals). */
const ASSIGNMENT = /([A-Z][A-Z0-9]*) *= *([0-9a-f]+(?: [0-9a-f]+)*)(?![0-9A-Za-z])/g;

/**
 * Parse HMP `info registers` text (one or more CPUs: `-a` heads each with "CPU#N"; text without a
 * header is CPU 0) into items of section `cpuN.registers`. Segment lines give `ES.sel`, `ES.base`,
 * `ES.limit`, `ES.flags` (the DPL and type after them are decoded from the flags); GDT/IDT give
 * `.base` and `.limit`; every other NAME=value is one item (FPRn: "mantissa exponent", XMMnn:
 * "high low"). Bracketed decodings (`[----A--]`, `[ST=0]`) are dropped. A line it cannot read at
 * all becomes an item `line N` holding the whole line, so nothing QEMU prints goes uncompared.
 */
export function parseRegisters(text: string): VmStateItem[] {
  const items: VmStateItem[] = [];
  let cpu: number | null = null;
  let lineInCpu = 0;
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.trimEnd();
    const header = /^CPU#(\d+)$/.exec(line.trim());
    if (header) {
      cpu = Number(header[1]);
      lineInCpu = 0;
      continue;
    }
    if (!line.trim()) continue;
    cpu ??= 0;
    lineInCpu++;
    const section = `cpu${cpu}.registers`;
    const seg = SEGMENT.exec(line);
    if (seg) {
      const [, name, sel, base, limit, flags] = seg;
      items.push(
        { section, key: `${name}.sel`, value: sel! },
        { section, key: `${name}.base`, value: base! },
        { section, key: `${name}.limit`, value: limit! },
        { section, key: `${name}.flags`, value: flags! },
      );
      continue;
    }
    const table = TABLE.exec(line);
    if (table) {
      items.push({ section, key: `${table[1]}.base`, value: table[2]! }, { section, key: `${table[1]}.limit`, value: table[3]! });
      continue;
    }
    const bare = line.replace(/\[[^\]]*\]/g, ' ');
    let found = 0;
    for (const m of bare.matchAll(ASSIGNMENT)) {
      items.push({ section, key: m[1]!, value: m[2]! });
      found++;
    }
    const rest = bare.replace(ASSIGNMENT, '').trim();
    if (!found || rest) items.push({ section, key: `line ${lineInCpu}`, value: line.trim() });
  }
  checkUnique(items, 'info registers');
  return items;
}

/**
 * Parse HMP `info lapic` text for vCPU `cpu` into items of section `cpuN.lapic`: each register
 * line's raw value (LVT0, LVT1, LVTPC, LVTERR, LVTTHMR, LVTT, SPIV, ICR, ICR2, ESR: the hex word;
 * the decoding after it is dropped), ISR and IRR (their vector lists, "(none)" when empty), the
 * timer's `Timer.DCR`, `Timer.initial_count`, `Timer.current_count` (kept: see the module comment),
 * and APR, TPR, DFR, LDR, PPR. Checks the header names vCPU `cpu`.
 */
export function parseLapic(text: string, cpu: number): VmStateItem[] {
  const section = `cpu${cpu}.lapic`;
  const items: VmStateItem[] = [];
  let header = false;
  let n = 0;
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.trimEnd();
    if (!line.trim()) continue;
    n++;
    const h = /^dumping local APIC state for CPU (\d+)/.exec(line);
    if (h) {
      if (Number(h[1]) !== cpu) throw new VmStateError(`info lapic printed CPU ${h[1]}, expected CPU ${cpu}`);
      header = true;
      continue;
    }
    const reg = /^(\w+)\t\s*(.*)$/.exec(line);
    if (reg) {
      const [, name, rest] = reg;
      if (name === 'Timer') {
        const dcr = /DCR=(0x[0-9a-f]+)/.exec(rest!);
        const initial = /initial_count = (\d+)/.exec(rest!);
        const current = /current_count = (\d+)/.exec(rest!);
        if (dcr && initial && current) {
          items.push(
            { section, key: 'Timer.DCR', value: dcr[1]! },
            { section, key: 'Timer.initial_count', value: initial[1]! },
            { section, key: 'Timer.current_count', value: current[1]! },
          );
          continue;
        }
      } else {
        const hex = /^(0x[0-9a-f]+)\b/.exec(rest!);
        items.push({ section, key: name!, value: hex ? hex[1]! : rest!.trim().replace(/\s+/g, ' ') });
        continue;
      }
    }
    const pairs = [...line.matchAll(/\b([A-Z]{3}) (0x[0-9a-f]+)/g)];
    if (pairs.length && !line.replace(/\b([A-Z]{3}) (0x[0-9a-f]+)/g, '').trim()) {
      for (const m of pairs) items.push({ section, key: m[1]!, value: m[2]! });
      continue;
    }
    items.push({ section, key: `line ${n}`, value: line.trim() });
  }
  if (!header) throw new VmStateError(`info lapic for CPU ${cpu} printed no APIC state: ${JSON.stringify(text.trim().slice(0, 200))}`);
  checkUnique(items, `info lapic (CPU ${cpu})`);
  return items;
}

/**
 * Parse HMP `info pic` text into items: section `pic0` / `pic1` (the i8259 master and slave, as
 * QEMU names them) with irr, imr, isr, hprio, irq_base, rr_sel, elcr, fnm; section `ioapic[N]`, the
 * N-th IOAPIC printed, with ver, id, sel, `pin P` (the redirection entry, raw), IRR and Remote IRR.
 * Lines it cannot read become `line N` items of section `pic.text`.
 */
export function parsePic(text: string): VmStateItem[] {
  const items: VmStateItem[] = [];
  let ioapics = 0;
  let current: string | null = null;
  let n = 0;
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.trimEnd();
    if (!line.trim()) continue;
    n++;
    const pic = /^pic(\d+): (.*)$/.exec(line);
    if (pic) {
      const section = `pic${pic[1]}`;
      current = null;
      for (const m of pic[2]!.matchAll(/(\w+)=([0-9a-f]+)/g)) items.push({ section, key: m[1]!, value: m[2]! });
      continue;
    }
    const io = /^ioapic\d*: (.*)$/.exec(line);
    if (io) {
      current = `ioapic[${ioapics++}]`;
      for (const m of io[1]!.matchAll(/(\w+)=(0x[0-9a-f]+)/g)) items.push({ section: current, key: m[1]!, value: m[2]! });
      continue;
    }
    if (current) {
      const pin = /^\s+pin\s+(\d+)\s+(0x[0-9a-f]+)/.exec(line);
      if (pin) {
        items.push({ section: current, key: `pin ${pin[1]}`, value: pin[2]! });
        continue;
      }
      const irr = /^\s+(IRR|Remote IRR)\s+(.*)$/.exec(line);
      if (irr) {
        items.push({ section: current, key: irr[1]!, value: irr[2]!.trim().replace(/\s+/g, ' ') });
        continue;
      }
    }
    items.push({ section: 'pic.text', key: `line ${n}`, value: line.trim() });
  }
  checkUnique(items, 'info pic');
  return items;
}

// --- helpers -------------------------------------------------------------------------------------

async function hmp(qmp: QmpLike, commandLine: string, cpuIndex?: number): Promise<string> {
  const args: Record<string, unknown> = { 'command-line': commandLine };
  if (cpuIndex !== undefined) args['cpu-index'] = cpuIndex;
  const out = await qmp.execute<unknown>('human-monitor-command', args);
  if (typeof out !== 'string') throw new VmStateError(`human-monitor-command "${commandLine}" returned ${typeof out}, expected text`);
  return out;
}

function cpuOfSection(section: string): number {
  return Number(/^cpu(\d+)\./.exec(section)![1]);
}

function itemId(i: VmStateItem): string {
  return `${i.section}\u0000${i.key}`;
}

function indexItems(items: readonly VmStateItem[], side: string): Map<string, VmStateItem> {
  const map = new Map<string, VmStateItem>();
  for (const i of items) {
    if (map.has(itemId(i))) throw new VmStateError(`state ${side} holds ${i.section} ${i.key} twice`);
    map.set(itemId(i), i);
  }
  return map;
}

function checkUnique(items: readonly VmStateItem[], what: string): void {
  const seen = new Set<string>();
  for (const i of items) {
    const id = itemId(i);
    if (seen.has(id)) throw new VmStateError(`${what}: ${i.section} ${i.key} appears twice (QEMU printed something the parser does not know)`);
    seen.add(id);
  }
}
