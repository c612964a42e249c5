/**
 * KTAP v1 output of a results file (Documentation/dev-tools/ktap.rst), readable by kselftest and
 * KUnit tooling, and the text clean-up every writer shares (guest output is untrusted).
 *
 * Layout: one top-level test per family (and 'host' for the host findings, 'run' for errors of the
 * run itself), each with its properties as a nested KTAP document indented by 2 spaces:
 *
 *   KTAP version 1
 *   # kvmprop 0.1.0: host 8eda49a4ab27, seed 1, pass 5, fail 1, known-deviation 1, skip 0
 *   1..2
 *     KTAP version 1
 *     # Subtest: leaks
 *     1..3
 *     ok 1 cpuid.rules
 *     # reason: CPUID(0x1, 0x0).ECX is 0xf7f83203, the model says 0x81202000
 *     # rule: host features are hidden
 *     # counterexample: counterexamples/leaks.cpuid.bits.json
 *     # replay: npx kvmprop replay results/counterexamples/leaks.cpuid.bits.json
 *     # seed: 1, path: 4:1:3
 *     not ok 2 cpuid.bits
 *     # deviation: pvm-cpuid-exposes-host-features (citation)
 *     ok 3 cpuid.cpl-invariant # XFAIL <reason>
 *     # Totals: pass:1 fail:1 xfail:1 xpass:0 skip:0 error:0
 *   not ok 1 leaks
 *   ...
 *
 * Status mapping: pass → `ok`; fail → `not ok`, its reason, rule, counterexample, replay, seed and
 * path as "# " diagnostics before the line (KTAP: a test's diagnostics precede its result), with
 * `# TIMEOUT` for rule 'timeout' and `# ERROR` for 'error'/'aborted'/'terminated'/'bail-out' (the
 * test did not complete: imported timeouts stay visible); skip → `ok N name # SKIP reason`;
 * known-deviation → `ok N name # XFAIL reason`: the property ran and found exactly the difference a
 * known-deviation record predicts, an expected failure, which is XFAIL's meaning (kselftest counts it
 * apart and it does not fail the parent); SKIP would claim it did not run, and it checked everything
 * else. A family is `not ok` when one of its properties failed, `ok … # SKIP` when all were skipped.
 * A merged file with several hosts gets one more level: a top-level test per host.
 *
 * Names: a property is named by its id without the family prefix ("cpuid.rules" under "leaks"), so
 * KTAP tools that join parent and child names get the id back; no seed in names. '#' and '\' in
 * names are escaped ("\#", "\\"), control characters stripped.
 */
import type { TapDirective, TapDocument, TapResult } from './tapImport.js';
import { hostIdOf, hostsOf } from './merge.js';
import type { HostFinding, PropertyResult, ResultsFile } from './schema.js';

/** Rules of a failure that did not complete (a timeout, a crash): ERROR in KCIDB and JUnit, TIMEOUT/ERROR in KTAP. */
export const INCOMPLETE_RULES: ReadonlySet<string> = new Set(['timeout', 'error', 'aborted', 'terminated', 'bail-out']);

/**
 * Text from an untrusted source made safe to print: ANSI escape sequences removed, CR/LF
 * normalised to LF, other C0/C1 control characters, U+FFFE/U+FFFF and unpaired surrogates removed
 * (none of them is allowed in XML 1.0). Tabs and newlines stay.
 */
export function cleanText(s: string): string {
  return String(s)
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, '')
    .replace(/\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?/g, '')
    .replace(/\x1b[@-_]?/g, '')
    .replace(/\r\n?/g, '\n')
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]/g, '')
    .replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '');
}

/** cleanText on one line: whitespace (newlines included) collapsed to one space, at most `max` characters. */
export function cleanLine(s: string, max = 2000): string {
  const t = cleanText(s).replace(/\s+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

/** A KTAP description: one clean line, '\' and '#' escaped. */
export function ktapName(s: string): string {
  return cleanLine(s).replace(/[\\#]/g, (c) => `\\${c}`);
}

/** A name under its family: the id without "family." in front. */
export function nameInFamily(id: string, family: string): string {
  return id.startsWith(`${family}.`) && id.length > family.length + 1 ? id.slice(family.length + 1) : id;
}

/** Text lines for "# " diagnostics; lines that a reader would take for TAP structure get a "> " prefix. */
function diagLines(label: string, text: string): string[] {
  return cleanText(text)
    .split('\n')
    .map((l) => l.replace(/\s+$/, ''))
    .filter((l) => l !== '')
    .map((l, i) => (i === 0 && label ? `${label}: ${l}` : l))
    .map((l) => (/^\s*(K?TAP version\b|Subtest:|Totals:)/i.test(l) ? `> ${l}` : l));
}

/** The KTAP directive for a property's status (see the module comment). */
export function directiveFor(status: PropertyResult['status'], rule: string | undefined, reason: string | undefined): TapDirective | undefined {
  const text = cleanLine(reason ?? '', 500);
  if (status === 'skip') return { kind: 'SKIP', text };
  if (status === 'known-deviation') return { kind: 'XFAIL', text };
  if (status === 'fail' && rule === 'timeout') return { kind: 'TIMEOUT', text };
  if (status === 'fail' && rule && INCOMPLETE_RULES.has(rule)) return { kind: 'ERROR', text };
  return undefined;
}

function propertyNode(p: PropertyResult, n: number): TapResult {
  const d: string[] = [];
  if (p.status === 'fail') {
    if (p.reason) d.push(...diagLines('reason', p.reason));
    if (p.rule) d.push(...diagLines('rule', p.rule));
    if (p.counterexample) d.push(...diagLines('counterexample', p.counterexample));
    if (p.replay) d.push(...diagLines('replay', p.replay));
    if (p.path !== undefined) d.push(`seed: ${p.seed}, path: ${cleanLine(p.path)}`);
  }
  if (p.deviation) d.push(...diagLines('deviation', `${p.deviation.id} (${p.deviation.citation})`));
  const directive = directiveFor(p.status, p.rule, p.reason);
  return { ok: p.status !== 'fail', number: n, description: nameInFamily(p.id, p.family), ...(directive ? { directive } : {}), diagnostics: d, line: 0 };
}

function findingNode(f: HostFinding, n: number): TapResult {
  const d = [...diagLines('summary', f.summary), ...diagLines('qemu', f.qemuMessage), ...diagLines('command line', f.commandLine.join(' '))];
  if (f.deviation) d.push(...diagLines('deviation', `${f.deviation.id} (${f.deviation.citation})`));
  const directive = f.status === 'known-deviation' ? { kind: 'XFAIL' as const, text: cleanLine(f.summary, 500) } : undefined;
  return { ok: f.status !== 'fail', number: n, description: nameInFamily(f.check, 'host'), ...(directive ? { directive } : {}), diagnostics: d, line: 0 };
}

function totalsLine(results: readonly TapResult[]): string {
  const c = { pass: 0, fail: 0, xfail: 0, xpass: 0, skip: 0, error: 0 };
  for (const r of results) {
    const k = r.directive?.kind;
    if (k === 'SKIP') c.skip++;
    else if (k === 'XFAIL') c.xfail++;
    else if (k === 'ERROR') c.error++;
    else if (r.ok) c.pass++;
    else c.fail++;
  }
  return `Totals: ${Object.entries(c).map(([k, v]) => `${k}:${v}`).join(' ')}`;
}

function doc(name: string | undefined, results: TapResult[], header: string[] = []): TapDocument {
  const rs = header.length && results[0] ? [{ ...results[0], diagnostics: [...header, ...results[0].diagnostics] }, ...results.slice(1)] : results;
  return {
    version: 'KTAP version 1',
    plan: { count: results.length, line: 0 },
    results: rs,
    footer: results.length ? [totalsLine(results)] : header,
    ...(name !== undefined ? { name } : {}),
    bailOut: null,
    totals: null,
    unknown: [],
    problems: [],
    line: 0,
  };
}

/** A parent over children: not ok if one failed, SKIP if all were skipped. */
function parentNode(name: string, children: TapResult[], n: number): TapResult {
  const failed = children.some((c) => !c.ok);
  const allSkipped = children.length > 0 && children.every((c) => c.directive?.kind === 'SKIP');
  return {
    ok: !failed,
    number: n,
    description: name,
    ...(allSkipped && !failed ? { directive: { kind: 'SKIP' as const, text: `all ${children.length} skipped` } } : {}),
    diagnostics: [],
    subtests: doc(name, children),
    line: 0,
  };
}

/** The results of one host as top-level-style nodes: families, then 'host' for its findings. */
function hostNodes(r: ResultsFile, hostId: string | null): TapResult[] {
  const props = r.properties.filter((p) => hostId === null || hostIdOf(p, r) === hostId);
  const findings = r.findings.filter((f) => hostId === null || hostIdOf(f, r) === hostId);
  const families: string[] = [];
  for (const p of props) if (!families.includes(p.family)) families.push(p.family);
  const nodes = families.map((fam, i) =>
    parentNode(
      fam,
      props.filter((p) => p.family === fam).map((p, j) => propertyNode(p, j + 1)),
      i + 1,
    ),
  );
  if (findings.length) nodes.push(parentNode('host', findings.map((f, j) => findingNode(f, j + 1)), nodes.length + 1));
  return nodes;
}

/** The KTAP document of a results file (see formatTapDocument for the text). */
export function ktapDocument(r: ResultsFile): TapDocument {
  const hosts = hostsOf(r);
  const t = r.totals;
  const header = [
    cleanLine(`kvmprop ${r.tool.version}: host ${r.hostId}, seed ${r.options.seed}, started ${r.startedAt}, ` + `pass ${t.pass}, fail ${t.fail}, known-deviation ${t['known-deviation']}, skip ${t.skip}`),
  ];
  let nodes: TapResult[];
  if (hosts.length > 1) {
    nodes = hosts.map((h, i) => {
      const children = hostNodes(r, h.hostId);
      return { ...parentNode(h.hostId, children, i + 1), diagnostics: diagLines('kernel', `${h.host.kernel?.release ?? 'unknown'}, QEMU ${h.host.qemu?.version ?? 'unknown'}, -cpu ${h.options.cpu}`) };
    });
  } else nodes = hostNodes(r, null);
  if (r.errors.length) {
    nodes.push({
      ok: false,
      number: nodes.length + 1,
      description: 'run',
      directive: { kind: 'ERROR', text: `${r.errors.length} error${r.errors.length === 1 ? '' : 's'} of the run itself` },
      diagnostics: r.errors.flatMap((e) => diagLines('error', e)),
      line: 0,
    });
  }
  return doc(undefined, nodes, header);
}

/** KTAP v1 text of a results file. */
export function toKtap(r: ResultsFile): string {
  return formatTapDocument(ktapDocument(r));
}

const diagText = (d: string): string => (d === '' ? '#' : `# ${cleanText(d).replace(/\n/g, ' ')}`);

function resultLine(r: TapResult): string {
  const name = ktapName(r.description);
  const dir = r.directive ? ` # ${r.directive.kind}${r.directive.text ? ` ${cleanLine(r.directive.text)}` : ''}` : r.comment ? ` # ${cleanLine(r.comment)}` : '';
  // A name that starts with '-' gets TAP 13's " - " in front, which readers take off.
  return `${r.ok ? 'ok' : 'not ok'} ${r.number}${name ? (name.startsWith('-') ? ` - ${name}` : ` ${name}`) : ''}${dir}`;
}

/**
 * A TAP document as KTAP v1 text: version line, "# Subtest:", plan, then per result its
 * diagnostics, its subtests (indented by 2 more spaces) and its line; YAML blocks, a Bail out and
 * the footer diagnostics where they were. parseTap(formatTapDocument(d)) gives d's tree back.
 */
export function formatTapDocument(d: TapDocument, indent = ''): string {
  const out: string[] = [];
  const put = (s: string) => out.push(`${indent}${s}`);
  put(d.version?.startsWith('KTAP') || d.version === null ? 'KTAP version 1' : d.version);
  if (d.name !== undefined) put(`# Subtest: ${cleanLine(d.name)}`);
  if (d.plan) put(`1..${d.plan.count}${d.plan.skip !== undefined ? ` # SKIP${d.plan.skip ? ` ${cleanLine(d.plan.skip)}` : ''}` : ''}`);
  for (const r of d.results) {
    for (const x of r.diagnostics) put(diagText(x));
    if (r.subtests) out.push(formatTapDocument(r.subtests, `${indent}  `).replace(/\n$/, ''));
    put(resultLine(r));
    if (r.yaml) {
      put('  ---');
      for (const y of r.yaml) put(`  ${cleanText(y).replace(/\n/g, ' ')}`);
      put('  ...');
    }
  }
  for (const x of d.footer) put(diagText(x));
  if (d.bailOut) put(`Bail out!${d.bailOut.reason ? ` ${cleanLine(d.bailOut.reason)}` : ''}`);
  return `${out.join('\n')}\n`;
}

/**
 * KTAP v1 streamed as a run goes (`kvmprop run --ktap`): flat, one result per property in the order
 * properties finish, named by full id (no family level: the stream cannot wait for a family), the
 * plan first from the number of selected properties. A property that never reports is `not ok ...
 * # ERROR` at the end. `kvmprop export --format ktap` writes the nested layout from results.json.
 */
export class KtapStream {
  #n = 0;
  readonly #seen = new Set<string>();
  constructor(private readonly write: (s: string) => void) {}

  begin(count: number, header: string): void {
    this.write(`KTAP version 1\n${diagText(header)}\n1..${count}\n`);
  }

  property(p: PropertyResult): void {
    if (this.#seen.has(p.id)) return;
    this.#seen.add(p.id);
    const node = { ...propertyNode(p, ++this.#n), description: p.id };
    this.write([...node.diagnostics.map(diagText), resultLine(node)].join('\n') + '\n');
  }

  /** Properties that never reported, then the totals. */
  end(expected: readonly string[], totals: string): void {
    for (const id of expected) {
      if (this.#seen.has(id)) continue;
      this.#seen.add(id);
      this.write(`not ok ${++this.#n} ${ktapName(id)} # ERROR no result (its worker did not report)\n`);
    }
    this.write(`${diagText(totals)}\n`);
  }
}
