/**
 * gate.html: the regression gate's diff report as one self-contained page — inline CSS, no script,
 * no external resource (a Content-Security-Policy forbids any), readable on a phone (tables scroll
 * sideways inside their own box). Every piece of text that came from a results file (property ids,
 * reasons with guest or QEMU output, labels, host strings) is cleaned of control characters and
 * HTML-escaped; nothing is inserted unescaped but the page's own markup.
 */
import { cleanText } from './ktap.js';
import { fmt, fmtP, type GateResult, type HostSummary, type SeriesComparison } from './gate.js';

const HTML_ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

/** Text for an element or a quoted attribute: cleaned (no control characters, no ANSI) and escaped. */
export function esc(s: unknown): string {
  return cleanText(String(s ?? '')).replace(/[&<>"'`]/g, (c) => HTML_ESC[c]!);
}

const CSS = `
:root{color-scheme:light dark;--bad:#c62828;--ok:#2e7d32;--warn:#b26a00;--mute:#777}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:1rem;max-width:80rem}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.4rem 0 .4rem}
.verdict{display:inline-block;padding:.1rem .6rem;border-radius:.3rem;color:#fff;font-weight:600}
.pass{background:var(--ok)}.fail{background:var(--bad)}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;min-width:36rem}
th,td{border-bottom:1px solid #8884;padding:.3rem .45rem;text-align:left;vertical-align:top}
th{font-weight:600;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.k-regressed td,tr.v-regression td{background:#c628281a}tr.k-fixed td,tr.v-improvement td{background:#2e7d321a}
tr.k-waived td,tr.w td{background:#b26a001a}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.92em;overflow-wrap:anywhere}
.mute{color:var(--mute)}ul{padding-left:1.2rem}li{margin:.15rem 0}
details summary{cursor:pointer}
td.detail{min-width:26rem}td.series{white-space:nowrap}td.labels{min-width:9rem}
@media (max-width:40rem){body{padding:.5rem;font-size:13px}}
`;

function hostRow(side: string, h: HostSummary): string {
  return `<tr><th>${esc(side)}</th><td class="mono">${esc(h.hostId)}</td><td>${esc(h.cpu)}</td><td class="mono">${esc(h.kernel)}</td><td>${esc(h.qemu)}</td><td class="mono">${esc(h.vcpuModel)}</td><td>${esc(h.run)}</td></tr>`;
}

const num = (x: number | undefined, d = 3) => (x === undefined ? '' : esc(fmt(x, d)));

function measurementRow(m: SeriesComparison): string {
  const q = m.quantiles;
  const t = m.test;
  const cls = `v-${m.verdict}${m.effect === 'warn' ? ' w' : ''}`;
  const unit = m.unit ? ` ${m.unit}` : '';
  return (
    `<tr class="${esc(cls)}"><td class="mono series">${esc(m.series)}</td><td class="mono labels">${esc(m.group)}</td><td>${esc(m.verdict)}${m.effect === 'warn' ? ' (warn)' : ''}</td>` +
    `<td class="num">${m.n.baseline} / ${m.n.candidate}</td>` +
    `<td class="num">${num(q.baseline.p50)} / ${num(q.baseline.p90)} / ${num(q.baseline.p99)}${esc(unit)}</td>` +
    `<td class="num">${num(q.candidate.p50)} / ${num(q.candidate.p90)} / ${num(q.candidate.p99)}${esc(unit)}</td>` +
    `<td class="num">${t ? esc(fmtP(t.pWorse)) : ''}</td><td class="num">${t ? esc(fmtP(t.pWorseAdjusted)) : ''}</td>` +
    `<td class="num">${num(m.cliffsDelta)}</td><td class="num">${m.hodgesLehmann ? `${num(m.hodgesLehmann.shift)}${m.hodgesLehmann.approximate ? '≈' : ''}` : ''}</td>` +
    `<td class="num">${m.quantile ? esc(fmt(m.quantile.ratio)) : ''}</td>` +
    `<td>${m.thresholds ? esc(`α ${m.thresholds.alpha}; p${Math.round(m.thresholds.quantile * 100)} +${m.thresholds.minRelativeIncrease * 100}% & +${m.thresholds.minAbsoluteIncrease}${unit}; δ ≥ ${m.thresholds.minCliffsDelta}; n ≥ ${m.thresholds.minSamples}`) : ''}</td>` +
    `<td class="detail">${esc(m.detail)}</td></tr>`
  );
}

export function gateHtml(g: GateResult): string {
  const changed = g.properties.filter((t) => t.kind !== 'unchanged' && t.kind !== 'still-waived');
  const same = g.properties.length - changed.length;
  const propRows = (rows: typeof g.properties) =>
    rows
      .map((t) => `<tr class="k-${esc(t.kind)}"><td class="mono">${esc(t.id)}</td><td class="mono">${esc(t.hosts)}</td><td>${esc(t.baseline ?? 'absent')}</td><td>${esc(t.candidate ?? 'absent')}</td><td>${esc(t.kind)}${t.effect !== 'none' ? ` (${esc(t.effect)})` : ''}</td><td>${esc(t.detail)}</td></tr>`)
      .join('\n');
  const propHead = '<tr><th>property</th><th>hosts</th><th>baseline</th><th>candidate</th><th>change</th><th>detail</th></tr>';
  const list = (xs: readonly string[]) => (xs.length ? `<ul>${xs.map((x) => `<li>${esc(x)}</li>`).join('')}</ul>` : '<p class="mute">none</p>');
  const tested = g.measurements.filter((m) => m.test).length;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>kvmprop gate: ${esc(g.verdict)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>kvmprop regression gate <span class="verdict ${g.verdict === 'pass' ? 'pass' : 'fail'}">${esc(g.verdict.toUpperCase())}</span></h1>
<p>baseline <code>${esc(g.inputs.baseline)}</code> · candidate <code>${esc(g.inputs.candidate)}</code> · policy <code>${esc(g.policy.source)}</code> · deviations <code>${esc(g.deviationsSource)}</code></p>
<h2>Why it ${g.verdict === 'pass' ? 'passes' : 'fails'}</h2>
${g.failures.length ? list(g.failures) : '<p>No property regressed and no gated measurement got significantly and materially worse.</p>'}
<h2>Hosts compared</h2>
<div class="scroll"><table>
<tr><th></th><th>hostId</th><th>CPU</th><th>kernel</th><th>QEMU</th><th>vCPU model</th><th>run</th></tr>
${g.hosts.pairs.map((p) => `${hostRow('baseline', p.baseline)}\n${hostRow('candidate', p.candidate)}\n<tr><td></td><td colspan="6">paired by ${esc(p.pairedBy)}${list([...p.notes.map((n) => `note: ${n}`), ...p.warnings.map((w) => `warning: ${w}`)])}</td></tr>`).join('\n')}
</table></div>
<h2>Warnings</h2>
${list(g.warnings)}
<h2>Properties (${g.properties.length}; ${changed.length} changed)</h2>
${changed.length ? `<div class="scroll"><table>\n${propHead}\n${propRows(changed)}\n</table></div>` : '<p>No property changed.</p>'}
${same ? `<details><summary>${same} unchanged</summary><div class="scroll"><table>${propHead}${propRows(g.properties.filter((t) => !changed.includes(t)))}</table></div></details>` : ''}
<h2>Measurements (${tested} tested${g.policy.multipleComparisons === 'holm' ? ', p Holm-adjusted over them' : ''})</h2>
<p class="mute">One-sided Mann–Whitney U for “candidate worse”; a regression needs the adjusted p below α and the effect at least the policy's: the quantile's relative and absolute worsening and Cliff's delta δ. HL: Hodges–Lehmann shift (candidate − baseline).</p>
<div class="scroll"><table>
<tr><th>series</th><th>labels</th><th>verdict</th><th>n base / cand</th><th>baseline p50 / p90 / p99</th><th>candidate p50 / p90 / p99</th><th>p</th><th>p adj.</th><th>δ</th><th>HL</th><th>q ratio</th><th>thresholds</th><th>detail</th></tr>
${g.measurements.map(measurementRow).join('\n')}
</table></div>
${g.smallGroups.length ? `<p class="mute">${g.smallGroups.map((s) => `${esc(s.series)}: ${s.groups} label set(s) below the minimum samples (in “all” only)`).join('; ')}</p>` : ''}
${g.notGated.length ? `<p class="mute">Not gated (no policy rule): ${g.notGated.map((x) => `${esc(x.series)} (${x.n.baseline}/${x.n.candidate})`).join(', ')}</p>` : ''}
</body>
</html>
`;
}
