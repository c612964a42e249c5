/**
 * Exports of a results file for CI systems: JUnit XML (Jenkins, GitLab, GitHub test reporters) and a
 * KCIDB-shaped JSON (KernelCI's common report database, I/O schema v4.5); `kvmprop export` also
 * writes KTAP (reports/ktap.ts). A tiny XML well-formedness checker (parseXml) sits here too, for
 * the tests and for anyone who wants to check a report before uploading it.
 *
 * JUnit mapping:
 *   <testsuites name="kvmprop"> with one <testsuite> per family (per host and family in a merged
 *   file with several hosts: name "family@hostId"), hostname = hostId, the run's options as
 *   <properties>; a <testcase> per property: name = the property id ("<family>.<property>", stable:
 *   no seed in it), classname = the family, time = its duration in seconds, and its seed, runs,
 *   statement and metrics as testcase <properties>.
 *   - pass: an empty testcase;
 *   - fail: <failure message="one-line reason" type="rule"> whose text gives the reason, the rule,
 *     the replay command, the counterexample path, the seed and the path; a failure that did not
 *     complete (rule timeout/error/aborted/terminated/bail-out, from imported suites) is <error>;
 *   - known-deviation: a passing testcase with property `known-deviation` = the deviation's id (and
 *     `citation`) and <system-out> explaining what was waived. Not <skipped>: the property ran, all
 *     its other rules were checked, and a run with only known deviations passes; skipped would tell
 *     a dashboard it never ran and hide a property that did its work.
 *   - skip: <skipped message="reason"/>.
 *   Host findings are their own <testsuite name="host">, a testcase per check (fail: <failure> with
 *   QEMU's message and command line; known-deviation: passing, as above). Errors of the run itself
 *   are one testcase "kvmprop.run" with an <error>.
 * All text is passed through cleanText (guest and QEMU output is untrusted: control characters and
 * ANSI sequences go, nothing outside XML 1.0's characters stays) and escaped.
 *
 * KCIDB mapping (v4.5: checkouts, builds, tests; origin 'kvmprop'):
 *   - a checkout per kernel release tested (id "kvmprop:linux-<release>", comment and misc with the
 *     kernel version string): KVM is the code under test;
 *   - a build per host (id "kvmprop:host-<hostId>": the kernel, KVM modules, QEMU and CPU that
 *     hostId fingerprints; architecture x86_64; misc with QEMU, the vCPU model, machine, accel,
 *     modules and their parameters);
 *   - a test per property (id "kvmprop:<hostId>:<startedAt>:<property id>", path
 *     "kvmprop.<family>.<property>" with each component reduced to [A-Za-z0-9_-], status:
 *     pass → PASS; fail → FAIL, or ERROR when it did not complete (rules above); known-deviation →
 *     FAIL with waived: true (a real difference from the spec that must not alert anyone: KCIDB's
 *     meaning of waived); skip → SKIP), comment = the statement, log_excerpt = the reason, duration
 *     in seconds, misc with kvmprop_status, seed, path, numRuns, rule, replay, counterexample,
 *     deviation and metrics; host findings as tests "kvmprop.host.<check>"; errors of the run as one
 *     test "kvmprop.run" with status ERROR.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { cleanLine, cleanText, INCOMPLETE_RULES, toKtap } from './ktap.js';
import { hostIdOf, hostsOf, MergeError, readResultsFile, type MergedHost } from './merge.js';
import type { HostFinding, PropertyResult, ResultsFile } from './schema.js';
import { commandFailure } from './commandFailure.js';

// ---------------------------------------------------------------------------------------------
// XML

const XML_ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };

/** Element text: cleaned and escaped. */
export function xmlText(s: string): string {
  return cleanText(s).replace(/[&<>]/g, (c) => XML_ESC[c]!);
}

/** Attribute value: cleaned, escaped, newlines and tabs as character references (kept by parsers). */
export function xmlAttr(s: string): string {
  return cleanText(s)
    .replace(/[&<>"']/g, (c) => XML_ESC[c]!)
    .replace(/\n/g, '&#10;')
    .replace(/\t/g, '&#9;');
}

class Xml {
  private readonly out: string[] = ['<?xml version="1.0" encoding="UTF-8"?>'];
  private depth = 0;
  open(name: string, attrs: Record<string, string | number | undefined>, empty = false): void {
    const a = Object.entries(attrs)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => ` ${k}="${xmlAttr(String(v))}"`)
      .join('');
    this.out.push(`${'  '.repeat(this.depth)}<${name}${a}${empty ? '/>' : '>'}`);
    if (!empty) this.depth++;
  }
  close(name: string): void {
    this.depth--;
    this.out.push(`${'  '.repeat(this.depth)}</${name}>`);
  }
  leaf(name: string, attrs: Record<string, string | number | undefined>, text: string): void {
    this.open(name, attrs, true);
    const last = this.out.pop()!;
    this.out.push(text === '' ? last : `${last.slice(0, -2)}>${xmlText(text)}</${name}>`);
  }
  toString(): string {
    return `${this.out.join('\n')}\n`;
  }
}

const seconds = (ms: number): string => (Math.max(0, ms || 0) / 1000).toFixed(3);

function properties(x: Xml, props: readonly [string, string | number | undefined][]): void {
  const present = props.filter(([, v]) => v !== undefined && v !== '');
  if (!present.length) return;
  x.open('properties', {});
  for (const [name, value] of present) x.open('property', { name, value }, true);
  x.close('properties');
}

function failureText(p: PropertyResult): string {
  return [
    p.reason && `reason: ${p.reason}`,
    p.rule && `rule: ${p.rule}`,
    p.replay && `replay: ${p.replay}`,
    p.counterexample && `counterexample: ${p.counterexample}`,
    `seed: ${p.seed}${p.path !== undefined ? `, path: ${p.path}` : ''}`,
  ]
    .filter(Boolean)
    .join('\n');
}

function testcase(x: Xml, p: PropertyResult): void {
  x.open('testcase', { name: cleanLine(p.id), classname: cleanLine(p.family), time: seconds(p.durationMs) });
  properties(x, [
    ['statement', cleanLine(p.statement)],
    ['seed', p.seed],
    ['numRuns', p.numRuns],
    ...(p.path !== undefined ? ([['path', p.path]] as [string, string][]) : []),
    ...(p.deviation ? ([['known-deviation', p.deviation.id], ['citation', p.deviation.citation]] as [string, string][]) : p.status === 'known-deviation' ? ([['known-deviation', 'yes']] as [string, string][]) : []),
    ...Object.entries(p.metrics ?? {}).map(([k, v]) => [`metric.${k}`, v] as [string, number]),
  ]);
  const message = cleanLine(p.reason ?? p.status, 1000);
  if (p.status === 'fail') x.leaf(p.rule && INCOMPLETE_RULES.has(p.rule) ? 'error' : 'failure', { message, type: p.rule ?? 'fail' }, failureText(p));
  else if (p.status === 'skip') x.open('skipped', { message }, true);
  else if (p.status === 'known-deviation') {
    x.leaf('system-out', {}, [
      `known deviation${p.deviation ? ` ${p.deviation.id}` : ''}: the difference below is documented, so it does not fail the run; every other rule of the property was checked`,
      p.deviation ? `citation: ${p.deviation.citation}` : '',
      p.reason ? `waived: ${p.reason}` : '',
    ].filter(Boolean).join('\n'));
  }
  x.close('testcase');
}

function findingCase(x: Xml, f: HostFinding): void {
  x.open('testcase', { name: cleanLine(f.check), classname: 'host', time: seconds(0) });
  if (f.deviation) properties(x, [['known-deviation', f.deviation.id], ['citation', f.deviation.citation]]);
  const text = [`summary: ${f.summary}`, `qemu: ${f.qemuMessage}`, `command line: ${f.commandLine.join(' ')}`].join('\n');
  if (f.status === 'fail') x.leaf('failure', { message: cleanLine(f.summary, 1000), type: f.check }, text);
  else x.leaf('system-out', {}, `known deviation${f.deviation ? ` ${f.deviation.id}` : ''}: ${text}`);
  x.close('testcase');
}

interface Suite {
  name: string;
  host: MergedHost;
  props: PropertyResult[];
  findings: HostFinding[];
}

function counts(props: readonly PropertyResult[], findings: readonly HostFinding[] = []) {
  const error = props.filter((p) => p.status === 'fail' && p.rule && INCOMPLETE_RULES.has(p.rule)).length;
  return {
    tests: props.length + findings.length,
    failures: props.filter((p) => p.status === 'fail').length - error + findings.filter((f) => f.status === 'fail').length,
    errors: error,
    skipped: props.filter((p) => p.status === 'skip').length,
    time: seconds(props.reduce((s, p) => s + (p.durationMs || 0), 0)),
  };
}

/** JUnit XML of a results file (see the module comment for the mapping). */
export function toJunit(r: ResultsFile): string {
  const hosts = hostsOf(r);
  const several = hosts.length > 1;
  const suites: Suite[] = [];
  for (const h of hosts) {
    const mine = r.properties.filter((p) => !several || hostIdOf(p, r) === h.hostId);
    const families: string[] = [];
    for (const p of mine) if (!families.includes(p.family)) families.push(p.family);
    for (const f of families) suites.push({ name: several ? `${f}@${h.hostId}` : f, host: h, props: mine.filter((p) => p.family === f), findings: [] });
    const findings = r.findings.filter((f) => !several || hostIdOf(f, r) === h.hostId);
    if (findings.length) suites.push({ name: several ? `host@${h.hostId}` : 'host', host: h, props: [], findings });
  }
  const x = new Xml();
  const all = counts(r.properties, r.findings);
  x.open('testsuites', { name: 'kvmprop', tests: all.tests + (r.errors.length ? 1 : 0), failures: all.failures, errors: all.errors + (r.errors.length ? 1 : 0), skipped: all.skipped, time: all.time, timestamp: r.startedAt });
  suites.forEach((s, i) => {
    const c = counts(s.props, s.findings);
    x.open('testsuite', { name: cleanLine(s.name), id: i, tests: c.tests, failures: c.failures, errors: c.errors, skipped: c.skipped, time: c.time, timestamp: s.host.startedAt, hostname: cleanLine(s.host.hostId) });
    const o = s.host.options;
    properties(x, [
      ['hostId', s.host.hostId],
      ['kernel', s.host.host?.kernel?.release],
      ['qemu', s.host.host?.qemu?.version ?? undefined],
      ['cpu', o?.cpu],
      ['cpuRequested', o?.cpuRequested],
      ['machine', o?.machine],
      ['accel', o?.accel],
      ['runs', o?.runs],
      ['seed', o?.seed],
      ['mutant', o?.mutant],
      ['kvmprop', s.host.tool?.version],
    ]);
    for (const p of s.props) testcase(x, p);
    for (const f of s.findings) findingCase(x, f);
    x.close('testsuite');
  });
  if (r.errors.length) {
    x.open('testsuite', { name: 'run', id: suites.length, tests: 1, failures: 0, errors: 1, skipped: 0, time: seconds(0), timestamp: r.startedAt, hostname: cleanLine(r.hostId) });
    x.open('testcase', { name: 'kvmprop.run', classname: 'run', time: seconds(0) });
    x.leaf('error', { message: cleanLine(`${r.errors.length} error${r.errors.length === 1 ? '' : 's'} of the run itself: ${r.errors[0]}`, 1000), type: 'run' }, r.errors.join('\n'));
    x.close('testcase');
    x.close('testsuite');
  }
  x.close('testsuites');
  return x.toString();
}

export interface XmlElement {
  readonly name: string;
  readonly attrs: Readonly<Record<string, string>>;
  readonly children: readonly XmlElement[];
  /** The element's own text (entities decoded), its children's excluded. */
  readonly text: string;
}

export class XmlError extends Error {
  override name = 'XmlError';
}

const NAME = /^[A-Za-z_:][-A-Za-z0-9_:.]*/;
const BAD_CHAR = /[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function decode(s: string, at: number): string {
  if (s.includes('<')) throw new XmlError(`offset ${at}: '<' in text or attribute value`);
  const m = BAD_CHAR.exec(s);
  if (m) throw new XmlError(`offset ${at + m.index}: character U+${m[0].charCodeAt(0).toString(16).padStart(4, '0')} is not allowed in XML 1.0`);
  return s.replace(/&([^;]*);?/g, (all, ref: string) => {
    if (!all.endsWith(';')) throw new XmlError(`offset ${at}: '&' that starts no entity reference`);
    const named: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
    if (ref in named) return named[ref]!;
    const num = ref.match(/^#(?:x([0-9a-fA-F]+)|([0-9]+))$/);
    if (!num) throw new XmlError(`offset ${at}: unknown entity &${ref};`);
    const cp = num[1] ? parseInt(num[1], 16) : Number(num[2]);
    if (!(cp === 9 || cp === 10 || cp === 13 || (cp >= 0x20 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd) || (cp >= 0x10000 && cp <= 0x10ffff))) {
      throw new XmlError(`offset ${at}: character reference &${ref}; is not an XML 1.0 character`);
    }
    return String.fromCodePoint(cp);
  });
}

/**
 * A small XML 1.0 well-formedness check that returns the element tree: one root element, tags
 * balanced and properly nested, attributes quoted and not repeated, no raw '<' or stray '&' in text
 * or values, only the five named entities and character references, only XML 1.0 characters.
 * Comments, an XML declaration and CDATA sections are accepted; DOCTYPEs are refused.
 */
export function parseXml(text: string): XmlElement {
  let i = 0;
  const stack: { name: string; attrs: Record<string, string>; children: XmlElement[]; text: string }[] = [];
  let root: XmlElement | undefined;
  const skipMisc = () => {
    for (;;) {
      const ws = text.slice(i).match(/^\s*/)![0].length;
      i += ws;
      if (text.startsWith('<!--', i)) {
        const end = text.indexOf('-->', i + 4);
        if (end < 0) throw new XmlError(`offset ${i}: unterminated comment`);
        i = end + 3;
      } else return;
    }
  };
  if (text.startsWith('<?xml')) {
    const end = text.indexOf('?>');
    if (end < 0) throw new XmlError('unterminated XML declaration');
    i = end + 2;
  }
  skipMisc();
  if (text.startsWith('<!DOCTYPE', i)) throw new XmlError(`offset ${i}: DOCTYPE not accepted`);
  while (i < text.length) {
    if (!stack.length) {
      if (root) {
        skipMisc();
        if (i < text.length) throw new XmlError(`offset ${i}: content after the root element`);
        break;
      }
      if (text[i] !== '<') throw new XmlError(`offset ${i}: text before the root element`);
    }
    if (text[i] !== '<') {
      const end = text.indexOf('<', i);
      const chunk = end < 0 ? text.slice(i) : text.slice(i, end);
      if (chunk.includes(']]>')) throw new XmlError(`offset ${i}: ']]>' in text`);
      stack[stack.length - 1]!.text += decode(chunk, i);
      i = end < 0 ? text.length : end;
      continue;
    }
    if (text.startsWith('<!--', i)) {
      const end = text.indexOf('-->', i + 4);
      if (end < 0) throw new XmlError(`offset ${i}: unterminated comment`);
      i = end + 3;
      continue;
    }
    if (text.startsWith('<![CDATA[', i)) {
      const end = text.indexOf(']]>', i);
      if (end < 0 || !stack.length) throw new XmlError(`offset ${i}: bad CDATA section`);
      stack[stack.length - 1]!.text += text.slice(i + 9, end);
      i = end + 3;
      continue;
    }
    if (text.startsWith('</', i)) {
      const m = text.slice(i + 2).match(NAME);
      const close = m && text.slice(i + 2 + m[0].length).match(/^\s*>/);
      if (!m || !close) throw new XmlError(`offset ${i}: malformed end tag`);
      const top = stack.pop();
      if (!top || top.name !== m[0]) throw new XmlError(`offset ${i}: </${m[0]}> closes ${top ? `<${top.name}>` : 'nothing'}`);
      const el: XmlElement = top;
      if (stack.length) stack[stack.length - 1]!.children.push(el);
      else root = el;
      i += 2 + m[0].length + close[0].length;
      continue;
    }
    const m = text.slice(i + 1).match(NAME);
    if (!m) throw new XmlError(`offset ${i}: '<' that starts no tag`);
    let j = i + 1 + m[0].length;
    const attrs: Record<string, string> = {};
    for (;;) {
      const ws = text.slice(j).match(/^\s*/)![0].length;
      j += ws;
      if (text.startsWith('/>', j) || text[j] === '>') break;
      if (!ws) throw new XmlError(`offset ${j}: attributes must be separated by white space`);
      const a = text.slice(j).match(/^([A-Za-z_:][-A-Za-z0-9_:.]*)\s*=\s*("([^"]*)"|'([^']*)')/);
      if (!a) throw new XmlError(`offset ${j}: malformed attribute in <${m[0]}>`);
      if (a[1]! in attrs) throw new XmlError(`offset ${j}: attribute ${a[1]} repeated in <${m[0]}>`);
      attrs[a[1]!] = decode(a[3] ?? a[4] ?? '', j);
      j += a[0].length;
    }
    const el = { name: m[0], attrs, children: [] as XmlElement[], text: '' };
    if (text.startsWith('/>', j)) {
      if (stack.length) stack[stack.length - 1]!.children.push(el);
      else root = el;
      i = j + 2;
    } else {
      stack.push(el);
      i = j + 1;
    }
  }
  if (stack.length) throw new XmlError(`unclosed <${stack[stack.length - 1]!.name}> at the end`);
  if (!root) throw new XmlError('no root element');
  return root;
}

// ---------------------------------------------------------------------------------------------
// KCIDB

export const KCIDB_VERSION = { major: 4, minor: 5 } as const;
const LOG_EXCERPT_MAX = 16384;

export interface KcidbReport {
  readonly version: typeof KCIDB_VERSION;
  readonly checkouts: readonly Record<string, unknown>[];
  readonly builds: readonly Record<string, unknown>[];
  readonly tests: readonly Record<string, unknown>[];
}

/** A KCIDB test path: dot-separated components of [A-Za-z0-9_-]. */
export function kcidbPath(parts: readonly string[]): string {
  return parts
    .flatMap((p) => p.split('.'))
    .map((c) => c.replace(/[^A-Za-z0-9_-]+/g, '_').replace(/^_+|_+$/g, '') || '_')
    .join('.');
}

function kcidbStatus(p: PropertyResult): 'PASS' | 'FAIL' | 'ERROR' | 'SKIP' {
  switch (p.status) {
    case 'pass':
      return 'PASS';
    case 'skip':
      return 'SKIP';
    case 'known-deviation':
      return 'FAIL';
    case 'fail':
      return p.rule && INCOMPLETE_RULES.has(p.rule) ? 'ERROR' : 'FAIL';
  }
}

const excerpt = (s: string) => {
  const t = cleanText(s);
  return t.length > LOG_EXCERPT_MAX ? `${t.slice(0, LOG_EXCERPT_MAX - 1)}…` : t;
};

function withoutNulls(o: Record<string, unknown>): Record<string, unknown> {
  return JSON.parse(JSON.stringify(o, (_k, v: unknown) => (v === null ? undefined : v))) as Record<string, unknown>;
}

/** KCIDB v4.5 JSON of a results file (see the module comment for the mapping). */
export function toKcidb(r: ResultsFile): KcidbReport {
  const hosts = hostsOf(r);
  const checkouts = new Map<string, Record<string, unknown>>();
  const builds: Record<string, unknown>[] = [];
  const buildOf = new Map<string, string>();
  for (const h of hosts) {
    const release = h.host?.kernel?.release ?? 'unknown';
    const checkoutId = `kvmprop:linux-${release}`;
    if (!checkouts.has(checkoutId)) {
      checkouts.set(checkoutId, {
        id: checkoutId,
        origin: 'kvmprop',
        comment: cleanLine(`Linux ${release} (KVM under test)`),
        start_time: h.startedAt,
        valid: true,
        misc: { kernel_release: release, kernel_version: h.host?.kernel?.version ?? 'unknown' },
      });
    }
    const id = `kvmprop:host-${h.hostId}`;
    buildOf.set(h.hostId, id);
    const o = h.options;
    builds.push({
      id,
      checkout_id: checkoutId,
      origin: 'kvmprop',
      architecture: 'x86_64',
      comment: cleanLine(`QEMU ${h.host?.qemu?.version ?? 'unknown'} with KVM on host ${h.hostId}: -M ${o?.machine ?? '?'} -accel ${o?.accel ?? '?'} -cpu ${o?.cpu ?? '?'}`),
      start_time: h.startedAt,
      valid: true,
      // KCIDB allows no nulls: unknown facts are left out.
      misc: withoutNulls({
        hostId: h.hostId,
        qemu: h.host?.qemu?.version,
        cpu_model: h.host?.cpu?.model,
        cpu_vendor: h.host?.cpu?.vendor,
        kvm_modules: (h.host?.kvm?.modules ?? []).map((m) => ({ name: m.name, parameters: m.parameters })),
        options: o,
        kvmprop: h.tool?.version,
      }),
    });
  }
  const base = (hostId: string) => ({ build_id: buildOf.get(hostId) ?? `kvmprop:host-${hostId}`, origin: 'kvmprop', start_time: r.startedAt, environment: { comment: cleanLine(`host ${hostId}`), misc: { hostId } } });
  const tests: Record<string, unknown>[] = r.properties.map((p) => {
    const hostId = hostIdOf(p, r);
    const status = kcidbStatus(p);
    return {
      ...base(hostId),
      id: `kvmprop:${hostId}:${r.startedAt}:${p.id}`,
      path: kcidbPath(['kvmprop', p.family, p.id.startsWith(`${p.family}.`) ? p.id.slice(p.family.length + 1) : p.id]),
      status,
      ...(p.status === 'known-deviation' ? { waived: true } : {}),
      comment: cleanLine(p.statement),
      ...(p.reason ? { log_excerpt: excerpt(p.reason) } : {}),
      duration: Math.max(0, p.durationMs || 0) / 1000,
      misc: {
        kvmprop_status: p.status,
        id: p.id,
        seed: p.seed,
        numRuns: p.numRuns,
        ...(p.path !== undefined ? { path: p.path } : {}),
        ...(p.rule ? { rule: p.rule } : {}),
        ...(p.replay ? { replay: p.replay } : {}),
        ...(p.counterexample ? { counterexample: p.counterexample } : {}),
        ...(p.deviation ? { deviation: p.deviation } : {}),
        metrics: p.metrics ?? {},
      },
    };
  });
  for (const f of r.findings) {
    const hostId = hostIdOf(f, r);
    tests.push({
      ...base(hostId),
      id: `kvmprop:${hostId}:${r.startedAt}:${f.check}`,
      path: kcidbPath(['kvmprop', f.check]),
      status: 'FAIL',
      ...(f.status === 'known-deviation' ? { waived: true } : {}),
      comment: cleanLine(f.summary),
      log_excerpt: excerpt(`${f.qemuMessage}\n${f.commandLine.join(' ')}`),
      misc: { kvmprop_status: f.status, check: f.check, ...(f.deviation ? { deviation: f.deviation } : {}), commandLine: f.commandLine },
    });
  }
  if (r.errors.length) {
    // Several hosts: the errors go with the first host's build (each error names its host).
    tests.push({ ...base(hosts[0]!.hostId), id: `kvmprop:${r.hostId}:${r.startedAt}:run`, path: 'kvmprop.run', status: 'ERROR', comment: 'errors of the run itself', log_excerpt: excerpt(r.errors.join('\n')), misc: { errors: r.errors } });
  }
  return { version: KCIDB_VERSION, checkouts: [...checkouts.values()], builds, tests };
}

// ---------------------------------------------------------------------------------------------
// kvmprop export

export type ExportFormat = 'junit' | 'ktap' | 'kcidb';

export function exportResults(r: ResultsFile, format: ExportFormat): string {
  if (format === 'junit') return toJunit(r);
  if (format === 'ktap') return toKtap(r);
  return `${JSON.stringify(toKcidb(r), null, 2)}\n`;
}

const EXPORT_USAGE = 'usage: kvmprop export --format junit|ktap|kcidb RESULTS [--out FILE]';

/**
 * `kvmprop export --format junit|ktap|kcidb RESULTS --out FILE` (RESULTS: a results.json or a run's
 * directory; stdout without --out). Exit 0 when written, 2 with one line for bad input.
 */
export function cmdExport(argv: readonly string[]): number {
  try {
    const { values, positionals } = parseArgs({ args: [...argv], strict: true, allowPositionals: true, options: { format: { type: 'string' }, out: { type: 'string' } } });
    const format = values.format;
    if (positionals.length !== 1 || (format !== 'junit' && format !== 'ktap' && format !== 'kcidb')) throw new MergeError(EXPORT_USAGE);
    const { results } = readResultsFile(positionals[0]!);
    const text = exportResults(results, format);
    if (values.out) writeFileSync(values.out, text);
    else process.stdout.write(text);
    if (values.out) process.stderr.write(`kvmprop: ${format} report of ${results.properties.length} results → ${values.out}\n`);
    return 0;
  } catch (e) {
    return commandFailure(e, [MergeError]);
  }
}
