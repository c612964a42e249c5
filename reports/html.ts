/**
 * `kvmprop report RESULTS… --out DIR`: one self-contained HTML page (DIR/index.html) for people,
 * from one or more results files (each a configuration: machine, accelerator, irqchip; a merged
 * file contributes each of its hosts). No script, no external resource: the styles are inline and
 * the plots are SVG rendered here, in Node, with vega-lite → vega (renderer 'none', toSVG).
 *
 * The page, top to bottom:
 *  - the verdict (fail when a property or host check failed or the run itself had errors; known
 *    deviations do not fail it), with the totals;
 *  - the matrix: family × configuration (machine · accel · irqchip), each cell the count of
 *    pass / fail / known-deviation / skip, then every property × configuration with its reason;
 *  - the plots (`measurements`): timer lateness per timer and mode (lateness.<source>), the RTC's
 *    interrupt count per window against the model's [min, max] over one case while the rate
 *    changes (rtc.windowCount with atMs), migration downtime and bytes against the dirty rate QEMU
 *    measured and the stream parameters (migration.downtimeMs, migration.transferredBytes; QEMU
 *    measures a dirty rate once a second of bitmap syncs, so a migration done sooner has 0, and
 *    without any measured rate the x axis is the workload's working set);
 *  - each counterexample: the rule, the summary, the replay command, the shrunk workload, expected
 *    vs observed, and the evidence (QEMU's words, the guest's serial output...);
 *  - host findings and run errors; each host's fingerprint.
 *
 * Everything taken from a results or counterexample file (names, reasons, guest and QEMU output)
 * is cleaned (reports/ktap.ts cleanText: control characters and ANSI sequences go) and escaped
 * for HTML; vega escapes the text it puts in its SVG (a unit test checks both).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { TopLevelSpec } from 'vega-lite';
import { commandFailure } from './commandFailure.js';
import { CounterexampleError, readCounterexample, type Counterexample } from './counterexample.js';
import { cleanLine, cleanText } from './ktap.js';
import { hostIdOf, hostsOf, MergeError, readResultsFile, type MergedHost } from './merge.js';
import type { HostFinding, MeasurementSample, PropertyResult, PropertyStatus, ResultsFile } from './schema.js';

export const REPORT_USAGE = 'usage: kvmprop report RESULTS... --out DIR';
/** Marks a page as ours: `kvmprop report` overwrites an index.html only when it carries this. */
export const GENERATOR = 'kvmprop report';
const STATUSES: readonly PropertyStatus[] = ['pass', 'fail', 'known-deviation', 'skip'];
/** A JSON block longer than this is cut (the file keeps all of it). */
const MAX_JSON_CHARS = 20_000;

// ---------------------------------------------------------------------------------------------
// Escaping

const HTML_ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text for element content or an attribute value: cleaned, then every markup character escaped. */
export function esc(s: unknown): string {
  return cleanText(String(s ?? '')).replace(/[&<>"']/g, (c) => HTML_ESC[c]!);
}

/** JSON of a counterexample's value for people: bigints in hex, bytes as hex pairs, cut when long. */
export function showJson(v: unknown, max = MAX_JSON_CHARS): string {
  let s: string;
  try {
    s = JSON.stringify(
      v,
      (_k, x: unknown) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : x instanceof Uint8Array ? Buffer.from(x).toString('hex').replace(/(..)(?!$)/g, '$1 ') : x),
      2,
    ) ?? String(v);
  } catch (e) {
    s = `(not showable: ${(e as Error).message})`;
  }
  return s.length > max ? `${s.slice(0, max)}\n… (${s.length - max} more characters in the counterexample file)` : s;
}

// ---------------------------------------------------------------------------------------------
// The runs a report covers

export interface ReportInput {
  readonly file: string;
  readonly results: ResultsFile;
}

/** One configuration on one host (a column of the matrix), from one or more files. */
export interface ReportRun {
  /** The files it came from, comma-separated. */
  readonly file: string;
  readonly host: MergedHost;
  /** machine · accel · irqchip, as the matrix's columns name it. */
  readonly config: string;
  readonly properties: readonly PropertyResult[];
  /** The results file each property came from (its counterexample path is relative to it). */
  readonly sources: ReadonlyMap<PropertyResult, string>;
  readonly findings: readonly HostFinding[];
  readonly errors: readonly string[];
}

export function configName(o: MergedHost['options'] | undefined): string {
  // A mutant run tests a deliberately broken system: never the same column as the real one.
  return `${o?.machine ?? '?'} · ${o?.accel ?? '?'} · irqchip ${o?.kernelIrqchip ?? 'on'}${o?.mutant ? ` · mutant ${o.mutant}` : ''}`;
}

export function runsOf(inputs: readonly ReportInput[]): ReportRun[] {
  const columns = new Map<string, { file: string[]; host: MergedHost; config: string; properties: PropertyResult[]; sources: Map<PropertyResult, string>; findings: HostFinding[]; errors: string[] }>();
  for (const { file, results: r } of inputs) {
    hostsOf(r).forEach((host, i) => {
      // One column per configuration and host: the families of one configuration often come from
      // several files (one run per family), and their host findings are the same findings.
      const config = configName(host.options);
      const key = `${config}\u0000${host.hostId}`;
      const col = columns.get(key) ?? { file: [] as string[], host, config, properties: [] as PropertyResult[], sources: new Map<PropertyResult, string>(), findings: [] as HostFinding[], errors: [] as string[] };
      columns.set(key, col);
      col.file.push(file);
      for (const p of r.properties.filter((x) => hostIdOf(x, r) === host.hostId)) {
        col.properties.push(p);
        col.sources.set(p, file);
      }
      for (const f of r.findings.filter((x) => hostIdOf(x, r) === host.hostId)) {
        if (!col.findings.some((g) => g.check === f.check && g.status === f.status && g.summary === f.summary)) col.findings.push(f);
      }
      if (i === 0) col.errors.push(...(r.errors ?? []).map((e) => `${file}: ${e}`));
    });
  }
  const runs = [...columns.values()].map((c) => ({ ...c, file: c.file.join(', ') }));
  // One configuration on several hosts: told apart by host.
  const hosts = new Map<string, number>();
  for (const run of runs) hosts.set(run.config, (hosts.get(run.config) ?? 0) + 1);
  return runs.map((run) => (hosts.get(run.config)! > 1 ? { ...run, config: `${run.config} @ ${run.host.hostId}` } : run));
}

export interface Verdict {
  readonly status: 'pass' | 'fail' | 'empty';
  readonly totals: Record<PropertyStatus, number>;
  readonly failedFindings: number;
  readonly errors: number;
}

export function verdictOf(runs: readonly ReportRun[]): Verdict {
  const totals: Record<PropertyStatus, number> = { pass: 0, fail: 0, 'known-deviation': 0, skip: 0 };
  for (const r of runs) for (const p of r.properties) totals[p.status]++;
  const failedFindings = runs.reduce((n, r) => n + r.findings.filter((f) => f.status === 'fail').length, 0);
  const errors = runs.reduce((n, r) => n + r.errors.length, 0);
  const any = Object.values(totals).some((n) => n > 0);
  const status = totals.fail || failedFindings || errors ? 'fail' : any ? 'pass' : 'empty';
  return { status, totals, failedFindings, errors };
}

// ---------------------------------------------------------------------------------------------
// Plots

export interface Plot {
  readonly id: string;
  readonly title: string;
  /** What it shows and from which series, for the caption. */
  readonly caption: string;
  readonly spec: TopLevelSpec;
}

interface Sample extends MeasurementSample {
  readonly property: string;
  readonly config: string;
}

function samplesOf(runs: readonly ReportRun[], series: string): Sample[] {
  const out: Sample[] = [];
  for (const r of runs) for (const p of r.properties) for (const s of p.measurements?.[series] ?? []) out.push({ ...s, property: p.id, config: r.config });
  return out;
}

function seriesNames(runs: readonly ReportRun[]): string[] {
  const names = new Set<string>();
  for (const r of runs) for (const p of r.properties) for (const k of Object.keys(p.measurements ?? {})) names.add(k);
  return [...names].sort();
}

const label = (s: MeasurementSample, k: string): string | number | undefined => s.labels?.[k];
const num = (x: unknown): number | null => (typeof x === 'number' && Number.isFinite(x) ? x : typeof x === 'string' && x.trim() !== '' && Number.isFinite(Number(x)) ? Number(x) : null);

const CONFIG = {
  font: 'sans-serif',
  background: 'white',
  view: { stroke: '#ccc' },
  axis: { labelFontSize: 11, titleFontSize: 12, labelLimit: 220 },
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 220 },
  title: { fontSize: 14, anchor: 'start' },
} as const;

/** The labels that tell a timer's modes apart, in the order a reader groups by. */
const MODE_LABELS = ['kind', 'mode', 'divide', 'impl', 'slew', 'hz'] as const;

function modeOf(s: MeasurementSample): string {
  const parts = MODE_LABELS.filter((k) => label(s, k) !== undefined).map((k) => (k === 'hz' ? `${label(s, k)} Hz` : k === 'divide' ? `÷${label(s, k)}` : k === 'slew' ? (label(s, k) === 'slew' ? 'driftfix=slew' : 'no driftfix') : `${k === 'mode' || k === 'kind' ? '' : `${k} `}${label(s, k)}`));
  return parts.join(' ') || 'all';
}

function latenessPlots(runs: readonly ReportRun[]): Plot[] {
  const plots: Plot[] = [];
  for (const series of seriesNames(runs).filter((n) => n.startsWith('lateness.'))) {
    const source = series.slice('lateness.'.length);
    const samples = samplesOf(runs, series);
    if (!samples.length) continue;
    const groups = new Map<string, number>();
    const configs = new Set(samples.map((s) => s.config)).size;
    const rows = samples.map((s) => {
      const mode = `${modeOf(s)}${configs > 1 ? ` · ${s.config}` : ''}`;
      groups.set(mode, (groups.get(mode) ?? 0) + 1);
      return { us: s.value, mode };
    });
    const data = rows.map((r) => ({ us: r.us, group: `${r.mode} (n=${groups.get(r.mode)})` }));
    plots.push({
      id: `lateness-${source}`,
      title: `${source} timer: lateness by mode`,
      caption: `How late each required ${source} interrupt came after it was due (µs, symmetric log scale; net of the steal time before it), per mode: box = quartiles, whiskers = min–max, ticks = the samples. Series ${series}, ${samples.length} samples.`,
      spec: {
        $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
        config: CONFIG,
        width: 520,
        // At least 140 px however few the modes: scaled to a phone's width, a plot stays readable.
        height: Math.max(140, 26 * groups.size),
        data: { values: data },
        encoding: {
          y: { field: 'group', type: 'nominal', title: null, sort: 'ascending', axis: { labelLimit: 260 } },
          x: { field: 'us', type: 'quantitative', title: 'lateness (µs)', scale: { type: 'symlog', constant: 1 } },
        },
        layer: [
          { mark: { type: 'boxplot', extent: 'min-max', size: 16, opacity: 0.6 }, encoding: { color: { field: 'group', type: 'nominal', legend: null } } },
          { mark: { type: 'tick', color: 'black', opacity: 0.5, thickness: 1, size: 14 } },
        ],
      },
    });
  }
  return plots;
}

/** The RTC count per window, for one case of each RTC property: the case with the most windows. */
function rtcPlots(runs: readonly ReportRun[]): Plot[] {
  const plots: Plot[] = [];
  const byProperty = new Map<string, Sample[]>();
  for (const s of samplesOf(runs, 'rtc.windowCount')) {
    if (label(s, 'span') !== 'between' || num(label(s, 'atMs')) === null) continue;
    const k = `${s.property}\u0000${s.config}`;
    byProperty.set(k, [...(byProperty.get(k) ?? []), s]);
  }
  for (const [k, samples] of byProperty) {
    const [property, config] = k.split('\u0000') as [string, string];
    const cases = new Map<string, Sample[]>();
    for (const s of samples) {
      const c = String(label(s, 'case') ?? '?');
      cases.set(c, [...(cases.get(c) ?? []), s]);
    }
    // The case the guest took the most interrupts in (a case that kept interrupts disabled shows
    // the model's ticks and none taken), then the one with the most windows.
    const score = (w: readonly Sample[]) => w.reduce((n, s) => n + s.value, 0) * 1e6 + w.length;
    const [caseId, windows] = [...cases].reduce((a, b) => (score(b[1]) > score(a[1]) ? b : a));
    const data = windows.map((s) => {
      const at = num(label(s, 'atMs'))!;
      return { at, end: at + (num(label(s, 'ms')) ?? 0), min: num(label(s, 'min')) ?? 0, max: num(label(s, 'max')) ?? 0, observed: s.value, rate: `${label(s, 'hz') ?? '?'} Hz` };
    });
    const rates = [...new Set(data.map((d) => d.rate))].sort((a, b) => parseFloat(a) - parseFloat(b));
    plots.push({
      id: `rtc-${property.replace(/[^A-Za-z0-9]+/g, '-')}${[...byProperty.keys()].filter((x) => x.startsWith(`${property}\u0000`)).length > 1 ? `-${plots.length}` : ''}`,
      title: `${property}: interrupts per window against the model`,
      caption: `One case (case ${caseId} of ${cases.size}, the one in which the guest took the most interrupts; ${config}): each window between two register writes or marks, over time from the case's first event. Band: the ticks the model predicts for the window [min, max], coloured by the rate in force; black line: the interrupts the guest took in it. Ticks while the guest had interrupts disabled merge into one delivery, which the rule allows and the band does not show. Count on a symmetric log scale. Series rtc.windowCount (labels atMs, ms, min, max, hz).`,
      spec: {
        $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
        config: CONFIG,
        width: 520,
        height: 240,
        data: { values: data },
        encoding: { x: { field: 'at', type: 'quantitative', title: 'time in the case (ms)' } },
        layer: [
          {
            mark: { type: 'rect', opacity: 0.45 },
            encoding: {
              x2: { field: 'end' },
              y: { field: 'min', type: 'quantitative', title: 'interrupts in the window', scale: { type: 'symlog' } },
              y2: { field: 'max' },
              color: { field: 'rate', type: 'ordinal', title: 'rate', sort: rates, scale: { scheme: 'viridis' } },
            },
          },
          // A band of zero height (min = max) still shows as a line of its colour.
          { mark: { type: 'rule', strokeWidth: 1.5, opacity: 0.8 }, encoding: { x2: { field: 'end' }, y: { field: 'max', type: 'quantitative' }, color: { field: 'rate', type: 'ordinal', sort: rates } } },
          { mark: { type: 'rule', strokeWidth: 2.5, color: 'black' }, encoding: { x2: { field: 'end' }, y: { field: 'observed', type: 'quantitative' } } },
        ],
      },
    });
  }
  return plots;
}

function streamOf(s: MeasurementSample): string {
  const parts: string[] = [];
  const multifd = num(label(s, 'multifd')) ?? 0;
  if (multifd > 0) parts.push(`multifd ${multifd}`);
  if (label(s, 'xbzrle') === 'on') parts.push('xbzrle');
  if (label(s, 'autoConverge') === 'on') parts.push('auto-converge');
  const postcopy = label(s, 'postcopy');
  if (postcopy && postcopy !== 'off') parts.push(postcopy === 'preempt' ? 'postcopy-preempt' : 'postcopy');
  return parts.join(' + ') || 'precopy';
}

/** 0, 1, 10, 100... up to the first power of ten at or above `max`. */
export function decades(max: number): number[] {
  const out = [0, 1];
  while (out[out.length - 1]! < max && out.length < 20) out.push(out[out.length - 1]! * 10);
  return out;
}

function migrationPlots(runs: readonly ReportRun[]): Plot[] {
  const plots: Plot[] = [];
  const figures: [string, string, string][] = [
    ['migration.downtimeMs', 'downtime (ms)', 'downtime'],
    ['migration.transferredBytes', 'bytes transferred', 'bytes'],
  ];
  for (const [series, axis, what] of figures) {
    const samples = samplesOf(runs, series);
    if (!samples.length) continue;
    const measured = samples.some((s) => (num(label(s, 'dirtyRateBps')) ?? 0) > 0);
    const byRate = samples.some((s) => num(label(s, 'dirtyRateBps')) !== null);
    const xField = byRate && measured ? 'dirty' : 'ws';
    const data = samples.map((s) => ({
      y: s.value,
      dirty: (num(label(s, 'dirtyRateBps')) ?? 0) / 1e6,
      ws: num(label(s, 'workingSetPages')) ?? num(label(s, 'ramMiB')) ?? 0,
      stream: streamOf(s),
      tracking: String(label(s, 'tracking') ?? '?'),
    }));
    const xTitle = xField === 'dirty' ? 'dirty rate QEMU measured (MB/s; 0: none measured)' : samples.some((s) => label(s, 'workingSetPages') !== undefined) ? 'working set (pages the workload keeps dirtying)' : 'guest RAM (MiB)';
    plots.push({
      id: `migration-${what}`,
      title: `Migration ${what} against dirty rate and parameters`,
      caption: `Every completed migration: ${axis} against ${xField === 'dirty' ? 'the highest dirty rate QEMU measured while it ran (label dirtyRateBps)' : `${xTitle} (no migration here had a dirty rate QEMU measured)`}; colour: the stream (multifd, xbzrle, auto-converge, postcopy), shape: dirty tracking. Series ${series}, ${samples.length} samples.`,
      spec: {
        $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
        config: CONFIG,
        width: 520,
        height: 260,
        data: { values: data },
        mark: { type: 'point', filled: true, size: 70, opacity: 0.8 },
        encoding: {
          x: { field: xField, type: 'quantitative', title: xTitle, scale: { zero: true } },
          // Powers of ten as ticks: vega's own for a symlog scale are few and linear.
          y: { field: 'y', type: 'quantitative', title: `${axis}, symmetric log scale`, scale: { type: 'symlog' }, axis: { values: decades(Math.max(...data.map((d) => d.y))), format: '~s' } },
          color: { field: 'stream', type: 'nominal', title: 'stream' },
          shape: { field: 'tracking', type: 'nominal', title: 'dirty tracking' },
        },
      },
    });
  }
  return plots;
}

/** Every plot a report of these runs has, in page order. */
export function plotsOf(runs: readonly ReportRun[]): Plot[] {
  return [...latenessPlots(runs), ...rtcPlots(runs), ...migrationPlots(runs)];
}

/** A vega-lite spec as an SVG element, scaled by its viewBox (CSS sizes it). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none', logLevel: vega.Error });
  try {
    const svg = await view.toSVG();
    // Drop the fixed size: the page's CSS fits the viewBox to the column.
    return svg.replace(/^<svg([^>]*?) width="[\d.]+" height="[\d.]+"/, '<svg$1');
  } finally {
    view.finalize();
  }
}

// ---------------------------------------------------------------------------------------------
// HTML

const CSS = `
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#f6f6f8}
main{max-width:1500px;margin:0 auto;padding:12px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.25em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:1.05em;margin:.4em 0;overflow-wrap:anywhere}
section,header,nav{min-width:0}
nav{display:flex;flex-wrap:wrap;gap:.3em 1em;margin:.5em 0}nav a{color:#0b57d0}
.verdict{border-radius:8px;padding:12px 16px;color:#fff}
.verdict.pass{background:#1e7a3a}.verdict.fail{background:#b3261e}.verdict.empty{background:#666}
.verdict p{margin:.2em 0}
.scroll{overflow-x:auto;max-width:100%;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;background:#fff;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#eef0f3}
.reason{font-size:.88em;color:#444;min-width:14em;max-width:60ch;overflow-wrap:anywhere}
table.props td{min-width:16em}
.st{display:inline-block;border-radius:4px;padding:0 6px;font-size:.85em;font-weight:600;white-space:nowrap;margin:1px 2px 1px 0}
.st.pass{background:#d5f0dc;color:#145c2b}.st.fail{background:#fbd5d2;color:#8c1d18}.st.known-deviation{background:#ffe8b3;color:#6b4a00}.st.skip{background:#e3e3e3;color:#444}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,560px),1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px;min-width:0}
figure svg{display:block;width:100%;height:auto;max-width:100%}
figcaption{font-size:.88em;color:#444;margin-top:6px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px 12px;margin:12px 0;min-width:0}
.cmp{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,320px),1fr));gap:10px}
.cmp>div{min-width:0}
pre{background:#f3f3f5;border:1px solid #e2e2e6;border-radius:6px;padding:8px;overflow:auto;max-width:100%;max-height:32em;font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;margin:.3em 0;white-space:pre}
pre.wrap{white-space:pre-wrap;overflow-wrap:anywhere}
dl.kv{display:grid;grid-template-columns:minmax(8em,max-content) minmax(0,1fr);gap:2px 12px;margin:.3em 0}
dl.kv dt{font-weight:600;color:#333}dl.kv dd{margin:0;overflow-wrap:anywhere;min-width:0}
details{margin:.4em 0}summary{cursor:pointer;font-weight:600}
.muted{color:#666}
/* File paths and ids are long unbreakable words: let them break rather than widen the page. */
p,li{overflow-wrap:anywhere}
@media (max-width:600px){body{font-size:14px}main{padding:8px}dl.kv{grid-template-columns:minmax(0,1fr)}dl.kv dd{margin-left:.8em}}
`;

const badge = (s: PropertyStatus | string, text = s): string => `<span class="st ${esc(s)}">${esc(text)}</span>`;

function kv(rows: readonly [string, unknown][]): string {
  const shown = rows.filter(([, v]) => v !== undefined && v !== null && v !== '');
  return `<dl class="kv">${shown.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${typeof v === 'object' ? `<pre class="wrap">${esc(showJson(v))}</pre>` : esc(v)}</dd>`).join('')}</dl>`;
}

function verdictHtml(v: Verdict, runs: readonly ReportRun[]): string {
  const words = { pass: 'pass', fail: 'FAIL', empty: 'no results' }[v.status];
  const t = v.totals;
  const extra = [
    v.failedFindings ? `${v.failedFindings} host check(s) failed` : '',
    v.errors ? `${v.errors} run error(s)` : '',
  ].filter(Boolean);
  const why =
    v.status === 'fail'
      ? 'A property or a host check failed, or the run itself had errors.'
      : v.status === 'pass'
        ? t['known-deviation']
          ? 'No property failed; the known deviations are documented differences and do not fail a run.'
          : 'No property failed.'
        : 'The results hold no property.';
  return `<header class="verdict ${v.status}"><h1>kvmprop: ${esc(words)}</h1>
<p>${t.pass} pass · ${t.fail} fail · ${t['known-deviation']} known deviation · ${t.skip} skip${extra.length ? ` · ${esc(extra.join(' · '))}` : ''} — ${runs.length} configuration${runs.length === 1 ? '' : 's'}</p>
<p>${esc(why)}</p></header>`;
}

function matrixHtml(runs: readonly ReportRun[]): string {
  const families = [...new Set(runs.flatMap((r) => r.properties.map((p) => p.family)))].sort();
  const head = `<tr><th>family</th>${runs.map((r) => `<th>${esc(r.config)}</th>`).join('')}</tr>`;
  const cell = (props: readonly PropertyResult[]) =>
    props.length ? STATUSES.filter((s) => props.some((p) => p.status === s)).map((s) => badge(s, `${props.filter((p) => p.status === s).length} ${s}`)).join(' ') : '<span class="muted">—</span>';
  const body = families.map((f) => `<tr><th>${esc(f)}</th>${runs.map((r) => `<td>${cell(r.properties.filter((p) => p.family === f))}</td>`).join('')}</tr>`).join('\n');
  const ids = [...new Set(runs.flatMap((r) => r.properties.map((p) => p.id)))].sort();
  const propRows = ids
    .map((id) => {
      const cells = runs.map((r) => {
        const p = r.properties.find((x) => x.id === id);
        if (!p) return '<td><span class="muted">not run</span></td>';
        const why = p.deviation && !(p.reason ?? '').includes(p.deviation.id) ? `${p.reason ?? ''} (known deviation ${p.deviation.id})` : (p.reason ?? '');
        return `<td>${badge(p.status)} <span class="muted">${p.numRuns} cases</span>${why ? `<div class="reason">${esc(cleanLine(why, 600))}</div>` : ''}</td>`;
      });
      return `<tr><th>${esc(id)}</th>${cells.join('')}</tr>`;
    })
    .join('\n');
  const configs = runs
    .map((r) => {
      const o = r.host.options;
      return `<li>${esc(r.config)}: -M ${esc(o?.machine)} -accel ${esc(o?.accel)} -cpu ${esc(o?.cpu)}${o?.cpuRequested ? ` (asked for ${esc(o.cpuRequested)})` : ''}, kernel irqchip ${esc(o?.kernelIrqchip ?? 'on (default)')}, ${esc(o?.runs)} runs, seed ${esc(o?.seed)}${o?.mutant ? `, mutant ${esc(o.mutant)}` : ''}; host ${esc(r.host.hostId)}; ${esc(r.file)}</li>`;
    })
    .join('\n');
  return `<section id="matrix"><h2>Results by family and configuration</h2>
<p class="muted">Configuration: machine · accelerator · kernel irqchip.</p>
<div class="scroll"><table><thead>${head}</thead><tbody>${body}</tbody></table></div>
<details><summary>Configurations</summary><ul>${configs}</ul></details>
<h3>Every property</h3>
<div class="scroll"><table class="props"><thead><tr><th>property</th>${runs.map((r) => `<th>${esc(r.config)}</th>`).join('')}</tr></thead><tbody>${propRows}</tbody></table></div>
</section>`;
}

async function plotsHtml(runs: readonly ReportRun[]): Promise<string> {
  const plots = plotsOf(runs);
  const figures: string[] = [];
  for (const p of plots) figures.push(`<figure id="${esc(p.id)}" class="plot">${await renderSvg(p.spec)}<figcaption><strong>${esc(p.title)}.</strong> ${esc(p.caption)}</figcaption></figure>`);
  const names = seriesNames(runs);
  const missing = [
    !names.some((n) => n.startsWith('lateness.')) && 'timer lateness (no lateness.* series)',
    !plots.some((p) => p.id.startsWith('rtc-')) && 'RTC count over time (no rtc.windowCount samples with atMs)',
    !names.some((n) => n.startsWith('migration.')) && 'migration figures (no migration.* series)',
  ].filter(Boolean) as string[];
  return `<section id="plots"><h2>Measurements</h2>
${figures.length ? `<div class="plots">${figures.join('\n')}</div>` : ''}
${missing.length ? `<p class="muted">Not in these results: ${esc(missing.join('; '))}.</p>` : ''}
<details><summary>Series in these results</summary><p>${names.map((n) => `<code>${esc(n)}</code> (${samplesOf(runs, n).length})`).join(', ') || 'none'}</p></details>
</section>`;
}

interface LoadedCounterexample {
  readonly run: ReportRun;
  readonly p: PropertyResult;
  readonly c: Counterexample | null;
  readonly error: string | null;
}

function loadCounterexamples(runs: readonly ReportRun[]): LoadedCounterexample[] {
  const out: LoadedCounterexample[] = [];
  for (const run of runs) {
    for (const p of run.properties) {
      if (p.status !== 'fail' && !p.counterexample) continue;
      if (!p.counterexample) {
        out.push({ run, p, c: null, error: null });
        continue;
      }
      const file = isAbsolute(p.counterexample) ? p.counterexample : resolve(dirname(run.sources.get(p) ?? run.file), p.counterexample);
      try {
        out.push({ run, p, c: readCounterexample(file), error: null });
      } catch (e) {
        if (!(e instanceof CounterexampleError)) throw e;
        out.push({ run, p, c: null, error: e.message });
      }
    }
  }
  return out;
}

/** Evidence: its text fields (QEMU's words, the guest's serial output) as text, the rest as JSON. */
function evidenceHtml(ev: unknown): string {
  if (ev === undefined || ev === null) return '';
  if (typeof ev !== 'object' || Array.isArray(ev)) return `<h4>Evidence</h4><pre>${esc(showJson(ev))}</pre>`;
  const texts: string[] = [];
  const rest: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(ev as Record<string, unknown>)) {
    if (typeof v === 'string' && (v.includes('\n') || v.length > 100)) texts.push(`<h4>${esc(k)}</h4><pre class="wrap">${esc(v)}</pre>`);
    else if (v && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string') && Object.values(v).some((x) => (x as string).includes('\n'))) {
      for (const [k2, v2] of Object.entries(v as Record<string, string>)) texts.push(`<h4>${esc(k)}: ${esc(k2)}</h4><pre class="wrap">${esc(v2)}</pre>`);
    } else rest[k] = v;
  }
  return `<h4>Evidence</h4>${Object.keys(rest).length ? `<pre>${esc(showJson(rest))}</pre>` : ''}${texts.join('')}`;
}

function counterexampleHtml(x: LoadedCounterexample): string {
  const { p, c, run } = x;
  const replay = c?.replay ?? p.replay;
  const head = `<h3>${esc(p.id)} ${badge(p.status)}</h3>
${kv([
  ['configuration', run.config],
  ['rule', c?.rule ?? p.rule],
  ['summary', c?.summary ?? p.reason],
  ['known deviation', p.deviation ? `${p.deviation.id} — ${p.deviation.citation}` : undefined],
  ['seed', p.seed],
  ['path', c?.path ?? p.path],
  ['replayPath', c?.replayPath ?? p.replayPath],
  ['counterexample file', p.counterexample],
])}
${replay ? `<h4>Replay</h4><pre class="wrap"><code>${esc(replay)}</code></pre>` : ''}`;
  if (!c) return `<article class="card">${head}${x.error ? `<p><strong>The counterexample could not be read:</strong> ${esc(x.error)}</p>` : p.counterexample ? '' : '<p class="muted">No counterexample was saved (the failure has only its reason).</p>'}</article>`;
  return `<article class="card">${head}
<h4>Shrunk workload</h4><pre>${esc(showJson(c.workload))}</pre>
${c.fastCheckCounterexample !== undefined ? `<details><summary>fast-check's shrunk case</summary><pre>${esc(showJson(c.fastCheckCounterexample))}</pre></details>` : ''}
<div class="cmp"><div><h4>Expected (model)</h4><pre>${esc(showJson(c.expected))}</pre></div><div><h4>Observed (guest)</h4><pre>${esc(showJson(c.observed))}</pre></div></div>
${evidenceHtml(c.evidence)}
</article>`;
}

function findingsHtml(runs: readonly ReportRun[]): string {
  const findings = runs.flatMap((r) => r.findings.map((f) => ({ r, f })));
  const errors = runs.flatMap((r) => r.errors.map((e) => ({ r, e })));
  if (!findings.length && !errors.length) return '';
  return `<section id="findings"><h2>Host findings and run errors</h2>
${findings
  .map(
    ({ r, f }) => `<article class="card"><h3>${esc(f.check)} ${badge(f.status)}</h3>${kv([
      ['configuration', r.config],
      ['summary', f.summary],
      ['known deviation', f.deviation ? `${f.deviation.id} — ${f.deviation.citation}` : undefined],
    ])}<h4>QEMU said</h4><pre class="wrap">${esc(f.qemuMessage)}</pre><h4>Command line</h4><pre class="wrap">${esc(f.commandLine.join(' '))}</pre></article>`,
  )
  .join('\n')}
${errors.length ? `<div class="card"><h3>Errors of the run itself</h3><ul>${errors.map(({ r, e }) => `<li>${esc(r.config)}: <pre class="wrap">${esc(e)}</pre></li>`).join('')}</ul></div>` : ''}
</section>`;
}

function hostHtml(runs: readonly ReportRun[]): string {
  const hosts = new Map<string, { h: MergedHost; configs: string[] }>();
  for (const r of runs) {
    const had = hosts.get(r.host.hostId);
    if (had) had.configs.push(r.config);
    else hosts.set(r.host.hostId, { h: r.host, configs: [r.config] });
  }
  const cards = [...hosts.values()].map(({ h, configs }) => {
    const f = h.host;
    const k = f?.kvm;
    const modules = (k?.modules ?? []).map((m) => `<details><summary>module ${esc(m.name)} (${Object.keys(m.parameters ?? {}).length} parameters)</summary>${kv(Object.entries(m.parameters ?? {}))}</details>`).join('');
    return `<article class="card"><h3>host ${esc(h.hostId)}</h3>${kv([
      ['configurations', configs.join('; ')],
      ['kernel', f?.kernel?.release],
      ['kernel version', f?.kernel?.version],
      ['CPU', f?.cpu ? `${f.cpu.model} (${f.cpu.vendor}${f.cpu.family != null ? `, family ${f.cpu.family} model ${f.cpu.modelNumber} stepping ${f.cpu.stepping}` : ''})` : undefined],
      ['CPU flags', f?.cpu?.flags?.join(' ')],
      ['QEMU', f?.qemu ? `${f.qemu.version ?? 'not found'} (${f.qemu.path})` : undefined],
      ['vCPU model', f?.qemuCpu ? `${f.qemuCpu.used}${f.qemuCpu.requested !== f.qemuCpu.used ? ` (asked for ${f.qemuCpu.requested})` : ''}${f.qemuCpu.fallback ? `: ${f.qemuCpu.fallback.reason}` : ''}` : undefined],
      ['/dev/kvm', k ? `${k.device}, API ${k.apiVersion ?? '?'}` : undefined],
      ['vendor modules', k?.vendorModules?.join(', ')],
      ['KVM features', k ? `nested ${k.nested}, dirty ring ${k.dirtyRing}, manual dirty-log protect ${k.manualDirtyLogProtect}, TSC scaling ${k.tscScaling}, x2APIC ${k.x2apic}, TSC deadline ${k.tscDeadline}${k.vcpuTscKhz ? `, vCPU TSC ${k.vcpuTscKhz} kHz` : ''}` : undefined],
      ['probe error', k?.probeError],
      ['tools', f?.tools ? `${f.tools.gcc ?? 'no gcc'}; ${f.tools.ld ?? 'no ld'}` : undefined],
      ['kvmprop', h.tool ? `${h.tool.name} ${h.tool.version}` : undefined],
      ['run', `${h.startedAt} → ${h.finishedAt}`],
      ['fingerprint collected', f?.collectedAt],
    ])}${modules}${k?.caps ? `<details><summary>KVM capabilities</summary>${kv(Object.entries(k.caps))}</details>` : ''}</article>`;
  });
  return `<section id="hosts"><h2>Host fingerprint</h2>${cards.join('\n')}</section>`;
}

/** The whole page. `generatedAt` is a parameter so that tests get the same page twice. */
export async function renderReport(inputs: readonly ReportInput[], opts: { generatedAt?: string } = {}): Promise<string> {
  const runs = runsOf(inputs);
  const v = verdictOf(runs);
  const cx = loadCounterexamples(runs);
  const findings = findingsHtml(runs);
  const sections = [
    ['matrix', 'Matrix'],
    ['plots', 'Plots'],
    ['counterexamples', `Counterexamples (${cx.length})`],
    ...(findings ? [['findings', 'Host findings']] : []),
    ['hosts', 'Host'],
  ];
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="${GENERATOR}">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>kvmprop report: ${esc(v.status)}</title>
<style>${CSS}</style></head>
<body><main>
${verdictHtml(v, runs)}
<nav>${sections.map(([id, t]) => `<a href="#${id}">${esc(t)}</a>`).join('')}</nav>
<p class="muted">Generated ${esc(opts.generatedAt ?? new Date().toISOString())} by kvmprop from ${inputs.map((i) => esc(i.file)).join(', ')}.</p>
${matrixHtml(runs)}
${await plotsHtml(runs)}
<section id="counterexamples"><h2>Counterexamples</h2>${cx.length ? cx.map(counterexampleHtml).join('\n') : '<p class="muted">None: no property failed with a saved case.</p>'}</section>
${findings}
${hostHtml(runs)}
</main></body></html>
`;
}

export class ReportError extends Error {
  override name = 'ReportError';
}

export async function cmdReport(argv: readonly string[]): Promise<number> {
  try {
    const { values, positionals } = parseArgs({ args: [...argv], strict: true, allowPositionals: true, options: { out: { type: 'string' } } });
    if (!positionals.length || !values.out) throw new ReportError(REPORT_USAGE);
    const inputs = positionals.map((p) => readResultsFile(p));
    const dir = resolve(values.out);
    const file = join(dir, 'index.html');
    if (existsSync(file) && !readFileSync(file, 'utf8').slice(0, 2000).includes(`<meta name="generator" content="${GENERATOR}">`)) {
      throw new ReportError(`--out ${values.out}: ${file} exists and is not a kvmprop report; choose another directory`);
    }
    const html = await renderReport(inputs);
    try {
      mkdirSync(dir, { recursive: true });
      writeFileSync(file, html);
    } catch (e) {
      throw new ReportError(`--out ${values.out}: cannot write ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const props = inputs.reduce((n, i) => n + i.results.properties.length, 0);
    process.stderr.write(`kvmprop: HTML report of ${props} results from ${inputs.length} file(s) → ${file}\n`);
    return 0;
  } catch (e) {
    return commandFailure(e, [MergeError, ReportError]);
  }
}
