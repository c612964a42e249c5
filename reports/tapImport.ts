/**
 * TAP 13/14 and KTAP v1 parsing, and the import of other suites' logs into kvmprop results, so
 * that one regression gate covers kvmprop and the suites teams already run.
 *
 * The parser keeps what tap-parser drops: nested subtests (KTAP indents them by 2 spaces, TAP 14 by
 * 4; kselftest's runner instead prefixes a program's whole output with "# "), directives (SKIP,
 * TODO, XFAIL, XPASS, TIMEOUT, ERROR), diagnostics, a Bail out and the kselftest "# Totals:" line.
 * It never throws: problems of the stream are listed on the document, and `assertWellFormed` turns
 * the fatal ones (not TAP at all, no plan, a plan the results do not reach) into one TapParseError.
 *
 * Imports (see importKutTap and importKselftest for the exact mappings):
 *   kvm-unit-tests `run_tests.sh -t` TAP 13   → family 'kvm-unit-tests', ids kvm-unit-tests.<test>.<check>
 *   kselftest KTAP (nested subtests)          → family 'kselftest', ids kselftest.<suite>.<subtest>...
 * The result is a ResultsFile (schema kvmprop-results v2) that validateResults accepts, with an
 * `imported` record and a host fingerprint whose facts are 'unknown' unless one is supplied.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { kvmBeforeProbe, type HostFingerprint } from '../harness/fingerprint.js';
import { RESULTS_SCHEMA, RESULTS_VERSION, sumMetrics, tally, validateResults, type PropertyResult, type ResultsFile } from './schema.js';
import { cleanLine } from './ktap.js';
import { commandFailure } from './commandFailure.js';

// ---------------------------------------------------------------------------------------------
// The document model

export type TapDirectiveKind = 'SKIP' | 'TODO' | 'XFAIL' | 'XPASS' | 'TIMEOUT' | 'ERROR';
const DIRECTIVES: readonly TapDirectiveKind[] = ['SKIP', 'TODO', 'XFAIL', 'XPASS', 'TIMEOUT', 'ERROR'];

export interface TapDirective {
  readonly kind: TapDirectiveKind;
  /** What follows the directive word (a skip reason, a timeout, an error message); may be ''. */
  readonly text: string;
}

export interface TapResult {
  readonly ok: boolean;
  readonly number: number;
  /** The description, `\#` and `\\` unescaped, a TAP 13 leading "- " removed. */
  readonly description: string;
  readonly directive?: TapDirective;
  /** Text after an unescaped " # " that is not a directive (kselftest's "# exit=1"). */
  readonly comment?: string;
  /**
   * Diagnostic ("# ") lines at this level since the previous result line: in KTAP they belong to
   * this test (it prints them while it runs). TAP 13 attaches them to the test before instead; see
   * diagnosticsAfter.
   */
  readonly diagnostics: readonly string[];
  /** A TAP 13 YAML block ("  ---" … "  ..."), its lines without the indentation. */
  readonly yaml?: readonly string[];
  /** The subtest document that precedes this result line (indented, or "# "-prefixed). */
  readonly subtests?: TapDocument;
  /** 1-based line in the input. */
  readonly line: number;
}

export interface TapDocument {
  /** 'KTAP version 1', 'TAP version 13', ...; null when the stream has none (TAP 12 style). */
  readonly version: string | null;
  readonly plan: { readonly count: number; readonly skip?: string; readonly line: number } | null;
  readonly results: readonly TapResult[];
  /** Diagnostic lines after the last result line (or all of them, in a document without results). */
  readonly footer: readonly string[];
  /** KTAP's "# Subtest: NAME" line, where there is one. */
  readonly name?: string;
  readonly bailOut: { readonly reason: string; readonly line: number } | null;
  /** kselftest's "# Totals: pass:N fail:N xfail:N xpass:N skip:N error:N". */
  readonly totals: Readonly<Record<string, number>> | null;
  /** Lines that are none of the above (KTAP allows and ignores them). */
  readonly unknown: readonly { readonly line: number; readonly text: string }[];
  /** What is wrong with the stream at this level (nested documents keep their own). */
  readonly problems: readonly string[];
  /** First line of the document, 1-based. */
  readonly line: number;
}

/** A stream that cannot be read as TAP; the message is one line. */
export class TapParseError extends Error {
  override name = 'TapParseError';
}

interface Line {
  readonly no: number;
  readonly text: string;
}

const VERSION_RE = /^(KTAP version \d+|TAP version \d+)\s*$/;
const PLAN_RE = /^1\.\.(\d+)\s*(?:#\s*(.*))?$/;
const RESULT_RE = /^(ok|not ok)(?=\s|$)(.*)$/;
const BAIL_RE = /^Bail out!\s*(.*)$/i;
const TOTALS_RE = /^Totals:\s*((?:[a-z]+:\d+\s*)+)$/i;

const lineCount = (text: string): number => (text === '' ? 0 : text.split('\n').length - (text.endsWith('\n') ? 1 : 0));
const indentOf = (s: string): number => s.length - s.trimStart().length;
const blank = (s: string): boolean => s.trim() === '';

/** Parse TAP 13/14 or KTAP v1 text; never throws (see assertWellFormed). */
export function parseTap(text: string): TapDocument {
  const lines = text
    .replace(/^\uFEFF/, '')
    .split(/\r?\n/)
    .map((t, i) => ({ no: i + 1, text: t.replace(/^[ \t]+/, (ws) => ws.replace(/\t/g, '    ')).replace(/\s+$/, '') }));
  if (lines.length && lines[lines.length - 1]!.text === '') lines.pop();
  return parseBlock(lines);
}

/** Does a (de-indented) block hold TAP structure, rather than arbitrary indented output? */
function structural(lines: readonly Line[]): boolean {
  return lines.some((l) => {
    const t = l.text.trim();
    return VERSION_RE.test(t) || PLAN_RE.test(t) || RESULT_RE.test(t);
  });
}

function parseBlock(lines: readonly Line[]): TapDocument {
  const nonBlank = lines.filter((l) => !blank(l.text));
  const base = nonBlank.reduce((m, l) => Math.min(m, indentOf(l.text)), nonBlank.length ? Infinity : 0);
  let version: string | null = null;
  let plan: TapDocument['plan'] = null;
  let name: string | undefined;
  let bailOut: TapDocument['bailOut'] = null;
  let totals: Record<string, number> | null = null;
  const results: TapResult[] = [];
  const unknown: { line: number; text: string }[] = [];
  const problems: string[] = [];
  let diags: string[] = [];
  let pending: TapDocument | undefined;

  const addSubtests = (doc: TapDocument, at: number) => {
    if (pending) problems.push(`line ${pending.line}: a subtest block with no result line of its own (line ${at} starts another)`);
    pending = doc;
  };

  let i = 0;
  while (i < lines.length) {
    const l = lines[i]!;
    if (blank(l.text)) {
      i++;
      continue;
    }
    if (indentOf(l.text) > base) {
      // An indented block: a YAML block of the result before it, a subtest, or unknown output.
      let j = i;
      while (j < lines.length && (blank(lines[j]!.text) || indentOf(lines[j]!.text) > base)) j++;
      const block = lines.slice(i, j);
      const prev = results[results.length - 1];
      if (l.text.trim() === '---' && prev && !pending && diags.length === 0 && prev.line === l.no - 1) {
        const end = block.findIndex((b) => b.text.trim() === '...');
        const yaml = block.slice(1, end < 0 ? block.length : end).map((b) => b.text.slice(indentOf(l.text)));
        results[results.length - 1] = { ...prev, yaml };
        if (end < 0) problems.push(`line ${l.no}: YAML block without its closing "..."`);
        else if (end + 1 < block.length) {
          // Lines after the YAML block at the deeper indent: treat them as their own block.
          i = i + end + 1;
          continue;
        }
      } else if (structural(block)) addSubtests(parseBlock(block), l.no);
      else for (const b of block) if (!blank(b.text)) unknown.push({ line: b.no, text: b.text.trim() });
      i = j;
      continue;
    }
    const t = l.text.slice(base);
    let m: RegExpMatchArray | null;
    if ((m = t.match(VERSION_RE))) {
      if (version === null && results.length === 0 && plan === null) version = m[1]!;
      else problems.push(`line ${l.no}: a second version line ("${m[1]}") in one document`);
    } else if ((m = t.match(PLAN_RE))) {
      if (plan) problems.push(`line ${l.no}: a second plan line`);
      else {
        const skip = m[2] !== undefined && /^skip\b/i.test(m[2].trim()) ? m[2].trim().replace(/^skip\b\s*/i, '') : undefined;
        plan = { count: Number(m[1]), line: l.no, ...(skip !== undefined ? { skip } : {}) };
      }
    } else if ((m = t.match(RESULT_RE))) {
      const r = parseResultLine(m[1] === 'ok', m[2]!, results.length + 1, l.no);
      if (r.number !== results.length + 1) problems.push(`line ${l.no}: test number ${r.number}, expected ${results.length + 1}`);
      results.push({ ...r, diagnostics: diags, ...(pending ? { subtests: pending } : {}) });
      diags = [];
      pending = undefined;
    } else if ((m = t.match(BAIL_RE))) {
      bailOut = { reason: m[1]!.trim(), line: l.no };
      // Nothing after a Bail out belongs to this document.
      break;
    } else if (t.startsWith('#')) {
      const d = t.replace(/^# ?/, '');
      if (/^(KTAP|TAP) version \d+\s*$/.test(d.trim())) {
        // kselftest's runner: a program's own TAP, every line prefixed with "# ".
        let j = i;
        while (j < lines.length && !blank(lines[j]!.text) && indentOf(lines[j]!.text) === base && lines[j]!.text.slice(base).startsWith('#')) j++;
        const inner = lines.slice(i, j).map((x) => ({ no: x.no, text: x.text.slice(base).replace(/^# ?/, '') }));
        addSubtests(parseBlock(inner), l.no);
        i = j;
        continue;
      }
      const sub = d.match(/^Subtest:\s*(.*)$/);
      // "# Subtest: NAME" names this document when it comes before its plan (KTAP, TAP 14).
      const naming = sub !== null && plan === null && results.length === 0 && name === undefined;
      if (naming) name = sub[1]!.trim();
      const tot = d.trim().match(TOTALS_RE);
      if (tot) totals = Object.fromEntries([...tot[1]!.matchAll(/([a-z]+):(\d+)/gi)].map((x) => [x[1]!.toLowerCase(), Number(x[2])]));
      if (!naming) diags.push(d);
    } else unknown.push({ line: l.no, text: t });
    i++;
  }
  if (pending) problems.push(`line ${(pending as TapDocument).line}: a subtest block with no result line of its own`);
  if (plan) {
    if (!bailOut && plan.count !== results.length) problems.push(`plan 1..${plan.count} but ${results.length} result${results.length === 1 ? '' : 's'}`);
  } else if (results.length) problems.push(`no plan line (${results.length} results)`);
  if (totals) {
    const c = countOutcomes(results);
    const diff = Object.entries(totals).filter(([k, v]) => k in c && c[k as keyof typeof c] !== v);
    if (diff.length) problems.push(`"# Totals:" says ${diff.map(([k, v]) => `${k}:${v}`).join(' ')}, the results give ${diff.map(([k]) => `${k}:${c[k as keyof typeof c]}`).join(' ')}`);
  }
  return {
    version,
    plan,
    results,
    footer: diags,
    ...(name !== undefined ? { name } : {}),
    bailOut,
    totals,
    unknown,
    problems,
    line: lines.find((x) => !blank(x.text))?.no ?? 1,
  };
}

/** "ok 3 - name # SKIP why" (after the ok/not ok word) → number, description, directive. */
function parseResultLine(ok: boolean, rest: string, next: number, line: number): Omit<TapResult, 'diagnostics'> {
  let s = rest;
  let number = next;
  const n = s.match(/^\s+(\d+)(?=\s|$)/);
  if (n) {
    number = Number(n[1]);
    s = s.slice(n[0].length);
  }
  // TAP 13's "ok 1 - name": one dash and one space go (a name of its own may start with '-').
  const dash = s.match(/^\s*-(?: |$)/);
  s = dash ? s.slice(dash[0].length) : s.replace(/^\s+/, '');
  // The directive starts at the first unescaped '#' that starts a word and is followed by a space
  // (or ends the line), or by a directive word: "Expected #GP on ..." keeps its '#'.
  let cut = -1;
  for (let k = 0; k < s.length; k++) {
    if (s[k] === '\\') {
      k++;
      continue;
    }
    if (s[k] !== '#' || (k > 0 && !/\s/.test(s[k - 1]!))) continue;
    const after = s.slice(k + 1);
    if (after === '' || /^\s/.test(after) || directiveOf(after)) {
      cut = k;
      break;
    }
  }
  const description = unescape((cut < 0 ? s : s.slice(0, cut)).trim());
  const tail = cut < 0 ? undefined : s.slice(cut + 1).trim();
  const directive = tail === undefined ? undefined : directiveOf(tail);
  return {
    ok,
    number,
    description,
    ...(directive ? { directive } : {}),
    ...(tail !== undefined && !directive && tail !== '' ? { comment: tail } : {}),
    line,
  };
}

function directiveOf(text: string): TapDirective | undefined {
  const m = text.trim().match(/^([A-Za-z]+)\b\s*(.*)$/);
  if (!m) return undefined;
  const word = m[1]!.toUpperCase();
  // TAP 13 allows any word starting with SKIP ("skipped"); KTAP's words are exact.
  const kind = DIRECTIVES.find((d) => d === word) ?? (/^SKIP/.test(word) ? 'SKIP' : undefined);
  return kind ? { kind, text: m[2]!.trim() } : undefined;
}

const unescape = (s: string): string => s.replace(/\\([\\#])/g, '$1');

/** The diagnostics that follow result i (TAP 13 attaches them to it): the next result's, or the footer. */
export function diagnosticsAfter(doc: TapDocument, i: number): readonly string[] {
  return doc.results[i + 1]?.diagnostics ?? doc.footer;
}

export type TapOutcome = 'pass' | 'fail' | 'skip' | 'xfail' | 'xpass' | 'error' | 'timeout';

/**
 * What one result line says, in kselftest's words: SKIP → skip (ok or not ok); XFAIL, and a TAP
 * `not ok # TODO` → xfail; XPASS → xpass; ERROR → error; TIMEOUT → timeout; otherwise ok → pass,
 * not ok → fail (an `ok # TODO` is a pass).
 */
export function outcomeOf(r: Pick<TapResult, 'ok' | 'directive'>): TapOutcome {
  switch (r.directive?.kind) {
    case 'SKIP':
      return 'skip';
    case 'XFAIL':
      return 'xfail';
    case 'XPASS':
      return 'xpass';
    case 'ERROR':
      return 'error';
    case 'TIMEOUT':
      return 'timeout';
    case 'TODO':
      return r.ok ? 'pass' : 'xfail';
    default:
      return r.ok ? 'pass' : 'fail';
  }
}

function countOutcomes(results: readonly TapResult[]): Record<'pass' | 'fail' | 'xfail' | 'xpass' | 'skip' | 'error', number> {
  const c = { pass: 0, fail: 0, xfail: 0, xpass: 0, skip: 0, error: 0 };
  for (const r of results) {
    const o = outcomeOf(r);
    c[o === 'timeout' ? 'fail' : o]++;
  }
  return c;
}

/**
 * Throws a TapParseError (one line) where the stream is not usable TAP: nothing TAP-like at all, no
 * plan (a log cut short before kvm-unit-tests' final plan line), or a plan the results do not reach
 * without a Bail out (a truncated log). Problems inside subtests are not fatal: a program killed by
 * its timeout leaves a short subtest list, which its parent's result line reports.
 */
export function assertWellFormed(doc: TapDocument, label: string, lineCount: number): void {
  if (doc.version === null && doc.plan === null && doc.results.length === 0 && !doc.bailOut) {
    throw new TapParseError(`${label}: not TAP: no version line, plan or test result in ${lineCount} line${lineCount === 1 ? '' : 's'}`);
  }
  if (doc.bailOut) return;
  if (!doc.plan) {
    const last = doc.results[doc.results.length - 1];
    throw new TapParseError(`${label}: truncated TAP: no plan line (${doc.results.length} results${last ? `, the last at line ${last.line}` : ''})`);
  }
  if (doc.plan.count !== doc.results.length) {
    throw new TapParseError(`${label}: truncated TAP: plan 1..${doc.plan.count} (line ${doc.plan.line}) but ${doc.results.length} result${doc.results.length === 1 ? '' : 's'}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Property ids

/**
 * One component of a property id: runs of anything but [A-Za-z0-9_-] become one '_' (so ids are
 * file names, KCIDB path components and KTAP names as they are), trimmed; 'unnamed' if nothing is left.
 */
export function idComponent(s: string): string {
  const c = s.replace(/[^A-Za-z0-9_-]+/g, '_').replace(/^_+|_+$/g, '');
  return c || 'unnamed';
}

/** Makes ids unique in order of appearance: the second "x" becomes "x--2", the third "x--3". */
function uniqueIds(): (id: string) => string {
  const seen = new Map<string, number>();
  return (id) => {
    const n = (seen.get(id) ?? 0) + 1;
    seen.set(id, n);
    if (n === 1) return id;
    let alt = `${id}--${n}`;
    while (seen.has(alt)) alt = `${alt}_`;
    seen.set(alt, 1);
    return alt;
  };
}

// ---------------------------------------------------------------------------------------------
// Imports

export type ImportFormat = 'kut-tap' | 'ktap';

/** The record of where imported results came from (an extension of ResultsFile). */
export interface ImportRecord {
  readonly format: ImportFormat;
  readonly suite: 'kvm-unit-tests' | 'kselftest';
  readonly source: string;
  readonly sha256: string;
  readonly lines: number;
  /** The TAP version line of the log, if any. */
  readonly tapVersion: string | null;
  /** Problems found in nested subtests (never fatal; see assertWellFormed). */
  readonly problems: readonly string[];
}

export type ImportedResultsFile = ResultsFile & { readonly imported: ImportRecord };

export interface ImportOptions {
  /** Name of the log for messages and the import record (a file name). */
  readonly source?: string;
  /** A real host fingerprint (host.json of a kvmprop run on the same host); else 'unknown' facts. */
  readonly host?: HostFingerprint;
  /** Overrides the host id (default: fingerprintId(host) given by the caller, else 'unknown'). */
  readonly hostId?: string;
  /** kselftest only: the suite name for a log that is one program's output (no nesting). */
  readonly suite?: string;
  readonly toolVersion?: string;
  readonly startedAt?: string;
}

/** Reason texts are one line: control characters stripped, whitespace collapsed. */
const oneLine = (s: string): string => cleanLine(s);

/**
 * A host fingerprint with nothing known about the host (what an imported log does not say), marked
 * `imported: true`. `kvm.device` is 'unknown', outside the type's three values: nobody looked.
 */
export function unknownHost(collectedAt: string, note: string): HostFingerprint & { readonly imported: true } {
  const host = {
    schema: 1,
    collectedAt,
    kernel: { release: 'unknown', version: 'unknown' },
    cpu: { model: 'unknown', vendor: 'unknown', family: null, modelNumber: null, stepping: null, flags: [] },
    kvm: { ...kvmBeforeProbe('unknown' as HostFingerprint['kvm']['device'], []), probeError: note },
    qemu: { path: 'unknown', found: false, version: null },
    tools: { gcc: null, ld: null },
    imported: true as const,
  };
  return host as HostFingerprint & { readonly imported: true };
}

function toolVersionOf(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

function assemble(family: 'kvm-unit-tests' | 'kselftest', format: ImportFormat, text: string, doc: TapDocument, properties: PropertyResult[], errors: string[], o: ImportOptions, problems: string[]): ImportedResultsFile {
  const now = o.startedAt ?? new Date().toISOString();
  const source = o.source ?? 'stdin';
  const totals = tally(properties);
  const r: ImportedResultsFile = {
    schema: RESULTS_SCHEMA,
    version: RESULTS_VERSION,
    tool: { name: 'kvmprop', version: o.toolVersion ?? toolVersionOf() },
    startedAt: now,
    finishedAt: now,
    options: { families: [family], runs: 1, seed: 0, machine: 'unknown', accel: 'unknown', cpu: 'unknown', qemu: 'unknown', qemuArgs: [] },
    host: o.host ?? unknownHost(now, `imported from ${family} output (${source}): the host was not fingerprinted`),
    hostId: o.hostId ?? 'unknown',
    findings: [],
    properties,
    totals,
    metrics: sumMetrics(properties),
    status: totals.fail > 0 || errors.length > 0 ? 'fail' : 'pass',
    errors,
    imported: {
      format,
      suite: family,
      source,
      sha256: createHash('sha256').update(text).digest('hex'),
      lines: lineCount(text),
      tapVersion: doc.version,
      problems,
    },
  };
  const bad = validateResults(r);
  if (bad.length) throw new Error(`internal error: the imported results are invalid: ${bad.join('; ')}`);
  return r;
}

/** Test-level verdicts kvm-unit-tests' runner prints instead of a check's result. */
const KUT_VERDICTS: readonly { re: RegExp; rule: string; reason: (m: RegExpMatchArray) => string; metrics?: (m: RegExpMatchArray) => Record<string, number>; durationMs?: (m: RegExpMatchArray) => number }[] = [
  {
    re: /^timeout; duration=(\d+(?:\.\d+)?)(s|m|h)?$/,
    rule: 'timeout',
    reason: (m) => `timeout: the test did not finish within ${m[1]}${m[2] ?? 's'}`,
    metrics: () => ({ timeouts: 1 }),
    durationMs: (m) => Number(m[1]) * ({ s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 's'] ?? 1000),
  },
  { re: /^aborted$/, rule: 'aborted', reason: () => 'aborted: QEMU or the test exited abnormally before reporting a result' },
  { re: /^terminated on (SIG\w+)$/, rule: 'terminated', reason: (m) => `terminated on ${m[1]}` },
];

/**
 * kvm-unit-tests `./run_tests.sh -t` (TAP 13) → results, one property per result line:
 *   "ok N - TEST: CHECK"             → pass,  id kvm-unit-tests.TEST.CHECK
 *   "not ok N - TEST: CHECK"         → fail,  reason: the diagnostics after the line, else the line itself
 *   "ok N - TEST: TEXT # skip"       → skip,  id kvm-unit-tests.TEST.TEXT, reason TEXT (and the directive's text)
 *   "not ok N - TEST: timeout; duration=30" → fail of the test itself: id kvm-unit-tests.TEST, rule
 *        'timeout', reason "timeout: …", metrics.timeouts 1, durationMs the limit; likewise
 *        "aborted" (rule 'aborted') and "terminated on SIGx" (rule 'terminated')
 *   XFAIL / not ok # TODO → known-deviation; XPASS → fail (rule 'xpass'); ERROR → fail (rule 'error').
 * CHECK is made an id component (idComponent); a repeated id gets "--2", "--3" in order (a test's own
 * output is sequential, so these are stable even where parallel tests interleave). The statement
 * keeps the line's own text.
 */
export function importKutTap(text: string, o: ImportOptions = {}): ImportedResultsFile {
  const doc = parseTap(text);
  const label = o.source ?? 'kvm-unit-tests log';
  assertWellFormed(doc, label, lineCount(text));
  const unique = uniqueIds();
  const properties: PropertyResult[] = doc.results.map((r, i) => {
    const colon = r.description.indexOf(': ');
    const test = colon < 0 ? r.description : r.description.slice(0, colon);
    const check = colon < 0 ? '' : r.description.slice(colon + 2);
    const verdict = !r.ok && !r.directive ? KUT_VERDICTS.map((v) => ({ v, m: check.match(v.re) })).find((x) => x.m) : undefined;
    const base = `kvm-unit-tests.${idComponent(test)}`;
    const id = unique(verdict || check === '' ? base : `${base}.${idComponent(check)}`);
    const after = diagnosticsAfter(doc, i).map(oneLine).filter(Boolean);
    const rawLine = `${r.ok ? 'ok' : 'not ok'} ${r.number} - ${r.description}${r.directive ? ` # ${r.directive.kind}${r.directive.text ? ` ${r.directive.text}` : ''}` : ''}`;
    const common = { id, family: 'kvm-unit-tests', statement: oneLine(`kvm-unit-tests ${r.description}`) || id, seed: 0, durationMs: 0, metrics: {} as Record<string, number> };
    if (verdict) {
      const m = verdict.m!;
      return {
        ...common,
        status: 'fail',
        rule: verdict.v.rule,
        reason: `${verdict.v.reason(m)} (${oneLine(rawLine)})`,
        numRuns: 1,
        durationMs: verdict.v.durationMs?.(m) ?? 0,
        metrics: verdict.v.metrics?.(m) ?? {},
      };
    }
    return fromOutcome(common, outcomeOf(r), {
      reason: check || r.description,
      directiveText: r.directive?.text ?? '',
      detail: after.join('; ') || oneLine(r.comment ?? '') || oneLine(rawLine),
    });
  });
  const errors = doc.bailOut ? [`kvm-unit-tests run bailed out at line ${doc.bailOut.line}: ${oneLine(doc.bailOut.reason) || 'no reason given'}`] : [];
  return assemble('kvm-unit-tests', 'kut-tap', text, doc, properties, errors, o, doc.problems.map((p) => `${label}: ${p}`));
}

/** One result's outcome as a PropertyResult status, with its reason. */
function fromOutcome(
  common: Pick<PropertyResult, 'id' | 'family' | 'statement' | 'seed' | 'durationMs' | 'metrics'>,
  outcome: TapOutcome,
  t: { reason: string; directiveText: string; detail: string },
): PropertyResult {
  const dt = oneLine(t.directiveText);
  const rs = oneLine(t.reason);
  switch (outcome) {
    case 'pass':
      return { ...common, status: 'pass', numRuns: 1 };
    case 'skip':
      return { ...common, status: 'skip', numRuns: 0, reason: [rs, dt].filter(Boolean).join(': ') || 'skipped' };
    case 'xfail':
      return { ...common, status: 'known-deviation', numRuns: 1, reason: `expected failure (XFAIL)${dt || rs ? `: ${dt || rs}` : ''}` };
    case 'xpass':
      return { ...common, status: 'fail', numRuns: 1, rule: 'xpass', reason: `unexpected pass (XPASS)${dt ? `: ${dt}` : ''}` };
    case 'error':
      return { ...common, status: 'fail', numRuns: 1, rule: 'error', reason: `error: ${dt || t.detail}` };
    case 'timeout':
      return { ...common, status: 'fail', numRuns: 1, rule: 'timeout', reason: `timeout${dt ? `: ${dt}` : ''}`, metrics: { ...common.metrics, timeouts: 1 } };
    case 'fail':
      return { ...common, status: 'fail', numRuns: 1, reason: t.detail || 'not ok' };
  }
}

/**
 * kselftest KTAP (or kselftest's runner output) → results. Every node of the tree is named by its
 * description (kselftest prints skip/xfail/error results without one, "ok 3 # SKIP name": then the
 * directive's text names it); a top-level "selftests: kvm: cpuid_test" becomes the suite
 * "kvm.cpuid_test". Ids are kselftest.<suite>.<subtest>[.<subsubtest>...]. Properties:
 *   - every leaf (a result without subtests), by outcomeOf: pass → pass, fail → fail (reason: the
 *     "# " diagnostics it printed before its result line), skip → skip, xfail → known-deviation,
 *     xpass → fail (rule 'xpass'), error → fail (rule 'error'), timeout → fail (rule 'timeout');
 *   - a node with subtests only where its own verdict says more than its leaves: it failed (exit
 *     code, TIMEOUT) while no leaf under it failed, its output ended in "Bail out!" (rule
 *     'bail-out'), or its plan was not reached; a skipped program with "1..0 # SKIP why" is a skip.
 * A top-level Bail out is an error of the run (results.errors).
 */
export function importKselftest(text: string, o: ImportOptions = {}): ImportedResultsFile {
  const doc = parseTap(text);
  const label = o.source ?? 'kselftest log';
  assertWellFormed(doc, label, lineCount(text));
  const properties: PropertyResult[] = [];
  const problems: string[] = [];
  const unique = uniqueIds();
  const top = o.suite ? [idComponent(o.suite)] : [];
  const failing = (x: TapOutcome) => x === 'fail' || x === 'error' || x === 'timeout' || x === 'xpass';
  const nameOf = (r: TapResult, depth: number): string[] => {
    const text = r.description || r.directive?.text || `test-${r.number}`;
    if (depth === 0 && !o.suite) return text.replace(/^selftests:\s*/, '').split(/:\s*/).filter(Boolean).map(idComponent);
    return [idComponent(text)];
  };
  /** Walks doc; returns whether a leaf under it failed. */
  const walk = (d: TapDocument, path: string[], depth: number): boolean => {
    let anyFailed = false;
    for (const p of d.problems) problems.push(`${depth ? ['kselftest', ...path].join('.') : label}: ${p}`);
    for (const r of d.results) {
      const parts = [...path, ...nameOf(r, depth)];
      const id = unique(['kselftest', ...parts].join('.'));
      const outcome = outcomeOf(r);
      const statement = oneLine(`kselftest ${[...(d.name ? [d.name] : []), r.description || r.directive?.text || `test ${r.number}`].join(': ')}`);
      const common = { id, family: 'kselftest', statement, seed: 0, durationMs: 0, metrics: {} as Record<string, number> };
      const diag = r.diagnostics.map(oneLine).filter(Boolean).join(' | ');
      const sub = r.subtests;
      if (!sub || (sub.results.length === 0 && !sub.bailOut)) {
        if (sub?.plan?.skip !== undefined && outcome !== 'fail') {
          properties.push({ ...common, status: 'skip', numRuns: 0, reason: oneLine(sub.plan.skip) || oneLine(r.directive?.text ?? '') || 'skipped (1..0)' });
        } else {
          properties.push(fromOutcome(common, outcome, { reason: r.description, directiveText: r.directive?.text ?? '', detail: [diag, oneLine(r.comment ?? '')].filter(Boolean).join(' | ') }));
        }
        if (failing(outcome)) anyFailed = true;
        continue;
      }
      const below = walk(sub, parts, depth + 1);
      anyFailed ||= below;
      const ran = `${sub.results.length} of ${sub.plan?.count ?? '?'} planned subtests ran`;
      const short = sub.plan !== null && sub.results.length < sub.plan.count;
      if (sub.bailOut) {
        const why = oneLine(sub.bailOut.reason);
        properties.push({ ...common, status: 'fail', numRuns: 1, rule: 'bail-out', reason: `Bail out!${why ? ` ${why}` : ''} (${ran})` });
        anyFailed = true;
      } else if ((failing(outcome) && !below) || short) {
        const p = fromOutcome(common, failing(outcome) ? outcome : 'fail', {
          reason: r.description,
          directiveText: r.directive?.text ?? '',
          detail: [oneLine(r.comment ?? ''), diag].filter(Boolean).join(' | ') || 'not ok',
        });
        properties.push({ ...p, reason: `${p.reason}${short ? ` (${ran})` : ''}` } as PropertyResult);
        anyFailed = true;
      }
    }
    return anyFailed;
  };
  walk(doc, top, 0);
  const errors = doc.bailOut ? [`kselftest run bailed out at line ${doc.bailOut.line} after ${doc.results.length}${doc.plan ? ` of ${doc.plan.count}` : ''} tests: ${oneLine(doc.bailOut.reason) || 'no reason given'}`] : [];
  return assemble('kselftest', 'ktap', text, doc, properties, errors, o, problems);
}

export function importLog(format: ImportFormat, text: string, o: ImportOptions = {}): ImportedResultsFile {
  return format === 'kut-tap' ? importKutTap(text, o) : importKselftest(text, o);
}

const IMPORT_USAGE = 'usage: kvmprop import --format kut-tap|ktap LOG [--out FILE] [--host HOST.json] [--host-id ID] [--suite NAME]';

/**
 * `kvmprop import --format kut-tap|ktap LOG --out FILE`: writes a results file (stdout without
 * --out). `--host` takes a host.json from a kvmprop run on the same host (its fingerprint and
 * host id then go with the imported results, so merge puts them with that host); `--host-id`
 * names the host otherwise. Exit 0 when written, 2 with one line on stderr for bad input.
 */
export async function cmdImport(argv: readonly string[]): Promise<number> {
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: true,
      options: { format: { type: 'string' }, out: { type: 'string' }, host: { type: 'string' }, 'host-id': { type: 'string' }, suite: { type: 'string' } },
    });
    if (positionals.length !== 1 || (values.format !== 'kut-tap' && values.format !== 'ktap')) throw new TapParseError(IMPORT_USAGE);
    const file = positionals[0]!;
    const text = readText(file);
    let host: HostFingerprint | undefined;
    let hostId = values['host-id'];
    if (values.host) {
      host = JSON.parse(readText(values.host)) as HostFingerprint;
      if (host?.schema !== 1 || typeof host.kernel?.release !== 'string') throw new TapParseError(`${values.host}: not a kvmprop host fingerprint (host.json)`);
      const { fingerprintId } = await import('../harness/fingerprint.js');
      hostId ??= fingerprintId(host);
    }
    const r = importLog(values.format, text, { source: basename(file), ...(host ? { host } : {}), ...(hostId ? { hostId } : {}), ...(values.suite ? { suite: values.suite } : {}) });
    const json = JSON.stringify(r, null, 2) + '\n';
    if (values.out) writeFileSync(values.out, json);
    else process.stdout.write(json);
    const t = r.totals;
    process.stderr.write(`kvmprop: imported ${r.properties.length} results from ${file} (pass ${t.pass}, fail ${t.fail}, known-deviation ${t['known-deviation']}, skip ${t.skip})${values.out ? ` into ${values.out}` : ''}\n`);
    return 0;
  } catch (e) {
    return commandFailure(e, [TapParseError, SyntaxError]);
  }
}

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new TapParseError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

