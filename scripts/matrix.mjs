#!/usr/bin/env node
/**
 * The configuration matrix: one `kvmprop run` per configuration, then a table of what each
 * property ended as (pass / fail / known-deviation / skip), with the first line of every failure.
 *
 *   node scripts/matrix.mjs [--family leaks] [--runs 10] [--seed 1] [--out results/matrix] [--only kvm|tcg]
 *
 * KVM × {microvm, pc, q35} × kernel-irqchip {on, split}, and TCG × {microvm, q35} × an Intel and an
 * AMD CPU model, where QEMU's own CPUID is the reference: how both vendors are exercised on any
 * machine. Each configuration writes its own results directory; the table goes to stdout and to
 * OUT/matrix.md. Plain Node, argument arrays only.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    family: { type: 'string', default: 'leaks' },
    runs: { type: 'string', default: '10' },
    seed: { type: 'string', default: '1' },
    out: { type: 'string', default: join(root, 'results', 'matrix') },
    only: { type: 'string' },
  },
});

const CONFIGS = [
  ...['microvm', 'pc', 'q35'].flatMap((machine) =>
    ['on', 'split'].map((irqchip) => ({ name: `kvm ${machine} irqchip=${irqchip}`, accel: 'kvm', args: ['--machine', machine, '--kernel-irqchip', irqchip] })),
  ),
  ...['microvm', 'q35'].flatMap((machine) =>
    ['Skylake-Client-v3', 'EPYC-v3'].map((cpu) => ({ name: `tcg ${machine} ${cpu}`, accel: 'tcg', args: ['--machine', machine, '--accel', 'tcg', '--cpu', cpu] })),
  ),
].filter((c) => !values.only || c.accel === values.only);

mkdirSync(values.out, { recursive: true });
const rows = [];
for (const c of CONFIGS) {
  const out = join(values.out, c.name.replace(/[^a-zA-Z0-9]+/g, '-'));
  const t0 = Date.now();
  const r = spawnSync(
    process.execPath,
    [join(root, 'bin', 'kvmprop.mjs'), 'run', '--family', values.family, '--runs', values.runs, '--seed', values.seed, '--out', out, ...c.args],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  const seconds = Math.round((Date.now() - t0) / 1000);
  let results = null;
  try {
    results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
  } catch {
    // no results: the row says so
  }
  rows.push({ config: c, exit: r.status, seconds, results, stderr: (r.stderr ?? '').trim().split('\n').slice(-1)[0] ?? '' });
  process.stderr.write(`matrix: ${c.name}: exit ${r.status} in ${seconds} s\n`);
}

const ids = [...new Set(rows.flatMap((r) => (r.results?.properties ?? []).map((p) => p.id)))];
const short = (id) => id.replace(/^[a-z]+\./, '');
const mark = { pass: 'pass', fail: '**FAIL**', 'known-deviation': 'known-dev', skip: 'skip' };
const lines = [
  `| configuration | exit | s | ${ids.map(short).join(' | ')} |`,
  `|---|---|---|${ids.map(() => '---').join('|')}|`,
];
const notes = [];
for (const r of rows) {
  const byId = new Map((r.results?.properties ?? []).map((p) => [p.id, p]));
  lines.push(`| ${r.config.name} | ${r.exit} | ${r.seconds} | ${ids.map((id) => mark[byId.get(id)?.status] ?? '—').join(' | ')} |`);
  for (const f of r.results?.findings ?? []) notes.push(`- ${r.config.name}: host finding ${f.check} (${f.status}): ${f.summary}`);
  for (const p of byId.values()) {
    if (p.status === 'fail' || p.status === 'known-deviation') {
      notes.push(`- ${r.config.name}: ${p.id} ${p.status}${p.deviation ? ` (${p.deviation.id})` : ''}: ${(p.reason ?? '').split('\n')[0].slice(0, 300)}`);
    }
  }
  if (!r.results) notes.push(`- ${r.config.name}: no results.json (${r.stderr})`);
}
const table = [...lines, '', ...notes].join('\n') + '\n';
writeFileSync(join(values.out, 'matrix.md'), table);
process.stdout.write(table);
process.exitCode = rows.some((r) => r.exit !== 0) ? 1 : 0;
