#!/usr/bin/env node
/**
 * Regenerates the regression gate's fixtures (reports/fixtures/gate/) from real runs on this host:
 * two normal timers runs and one with a deliberate slowdown, QEMU started through a wrapper that
 * runs CPU hogs beside it. Then gates them against each other:
 *
 *   node scripts/gate-demo.mjs [--out DIR] [--runs 200] [--seed 1] [--hogs 2] [--pin 0]
 *                              [--property timers.lapic.schedule] [--qemu qemu-system-x86_64]
 *   node scripts/gate-demo.mjs --retrim [--out DIR]     # trim the fixtures there again, run nothing
 *
 * The runs go in the order normal-1, hog, normal-2, so that a drift of the (shared) host over the
 * few minutes they take shows up as a difference between the two normal runs, not as the hog's.
 * The wrapper is a shell script in a private temporary directory (removed at the end): it starts
 * --hogs busy loops, each of which ends as soon as QEMU (the wrapper's pid, after exec) is gone, so
 * a QEMU that dies takes its hogs with it; with --pin CPU (default 0; '' for none) QEMU and the hogs
 * run on that one CPU (taskset), so that the slowdown does not depend on how busy the rest of a
 * shared host is. Each run's directory is temporary too; what is kept is a
 * trimmed copy of its results.json (counterexample paths dropped: the files are not kept), written
 * compactly. Every command is an argument array.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execa } from 'execa';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'bin', 'kvmprop.mjs');

const { values } = parseArgs({
  options: {
    out: { type: 'string', default: join(root, 'reports', 'fixtures', 'gate') },
    runs: { type: 'string', default: '200' },
    seed: { type: 'string', default: '1' },
    hogs: { type: 'string', default: '2' },
    pin: { type: 'string', default: '0' },
    property: { type: 'string', default: 'timers.lapic.schedule' },
    qemu: { type: 'string', default: 'qemu-system-x86_64' },
    // Re-trim the fixtures already in --out (after a change to trim()), running nothing.
    retrim: { type: 'boolean', default: false },
    // Which runs, in order; a name starting with 'hog' runs through the wrapper.
    sequence: { type: 'string', default: 'normal-1,hog,normal-2,normal-3' },
  },
});
const hogs = Number(values.hogs);
if (!Number.isInteger(hogs) || hogs < 1) throw new Error('--hogs must be a positive integer');
const out = resolve(values.out);

const pin = values.pin === '' ? null : Number(values.pin);
if (pin !== null && !(Number.isInteger(pin) && pin >= 0)) throw new Error('--pin must be a CPU number, or empty for no pinning');

/** The wrapper: hogs, each ending once QEMU (the wrapper's pid, after exec) is gone; QEMU and hogs on one CPU with --pin. */
const HOG_WRAPPER = (n, qemu, cpu) => {
  const on = cpu === null ? '' : `taskset -c ${cpu} `;
  return `#!/bin/sh
# kvmprop gate demo: QEMU with ${n} competing CPU hog(s)${cpu === null ? '' : `, all pinned to CPU ${cpu}`}; each hog ends once QEMU (this pid after exec) is gone.
q=$$
i=0
while [ "$i" -lt ${n} ]; do
  ${on}sh -c 'while kill -0 "$1" 2>/dev/null; do :; done' hog "$q" </dev/null >/dev/null 2>&1 &
  i=$((i + 1))
done
exec ${on}${JSON.stringify(qemu)} "$@"
`;
};

/** Labels of the lateness samples the fixtures keep: what the default policy groups by (reports/gate-policy.json). */
const KEEP_LABELS = ['timer', 'mode'];

/**
 * What the gate reads, without what only the run's directory gives a meaning to (counterexample
 * paths) or what would make the file large: a lateness sample keeps only the labels in KEEP_LABELS
 * (a quiet 200-case run records several thousand samples, and divide/apic/accel/irqchip on each
 * would triple the file). Idempotent.
 */
function trim(results) {
  const keep = (labels) => Object.fromEntries(Object.entries(labels ?? {}).filter(([k]) => KEEP_LABELS.includes(k)));
  return {
    ...results,
    properties: results.properties.map(({ counterexample: _c, ...p }) => ({
      ...p,
      ...(p.measurements
        ? { measurements: Object.fromEntries(Object.entries(p.measurements).map(([series, xs]) => [series, series.startsWith('lateness.') ? xs.map((x) => ({ value: x.value, labels: keep(x.labels) })) : xs])) }
        : {}),
    })),
  };
}

async function run(name, qemu, tmp) {
  const dir = join(tmp, name);
  const args = ['run', '--family', values.property.split('.')[0], '--property', values.property, '--runs', values.runs, '--seed', values.seed, '--qemu', qemu, '--out', dir];
  process.stderr.write(`gate-demo: ${name}: kvmprop ${args.join(' ')}\n`);
  const before = loadavg()[0];
  const startedAt = new Date().toISOString();
  const r = await execa(process.execPath, [cli, ...args], { cwd: root, reject: false, stdout: 'inherit', stderr: 'inherit' });
  // The host is shared: its load over the run is part of what the fixture says.
  made.push({ name, command: ['kvmprop', ...args.slice(0, -1), '<tmp>/' + name], startedAt, loadavg1Before: before, loadavg1After: loadavg()[0] });
  // 1: a property failed, which is a result like any other (the hog may make one fail).
  if (r.exitCode !== 0 && r.exitCode !== 1) throw new Error(`${name}: kvmprop run exited with ${r.exitCode ?? r.signal}`);
  const results = JSON.parse(readFileSync(join(dir, 'results.json'), 'utf8'));
  const file = join(out, `${name}.json`);
  writeFileSync(file, JSON.stringify(trim(results)) + '\n');
  process.stderr.write(`gate-demo: ${name} → ${file}\n`);
  return file;
}

if (values.retrim) {
  for (const name of values.sequence.split(',')) {
    const file = join(out, `${name}.json`);
    writeFileSync(file, JSON.stringify(trim(JSON.parse(readFileSync(file, 'utf8')))) + '\n');
    process.stderr.write(`gate-demo: re-trimmed ${file}\n`);
  }
  process.exit(0);
}

const made = [];
const tmp = mkdtempSync(join(tmpdir(), 'kvmprop-gate-demo-'));
try {
  mkdirSync(out, { recursive: true });
  const wrapper = join(tmp, 'qemu-hog');
  writeFileSync(wrapper, HOG_WRAPPER(hogs, values.qemu, pin));
  chmodSync(wrapper, 0o700);
  const files = {};
  for (const name of values.sequence.split(',')) files[name] = await run(name, name.startsWith('hog') ? wrapper : values.qemu, tmp);
  // made.json: how each fixture was made; runs made earlier (another --sequence) are kept.
  const madeFile = join(out, 'made.json');
  let earlier = [];
  try {
    earlier = JSON.parse(readFileSync(madeFile, 'utf8')).runs.filter((r) => !(r.name in files));
  } catch {
    // none yet
  }
  writeFileSync(madeFile, JSON.stringify({ host: hostname(), hogs, pin, wrapper: HOG_WRAPPER(hogs, values.qemu, pin), runs: [...earlier, ...made] }, null, 2) + '\n');
  const names = Object.keys(files);
  const normals = names.filter((n) => !n.startsWith('hog'));
  const pairs = [[normals[0], normals[1]], [normals[0], names.find((n) => n.startsWith('hog'))]].filter(([a, b]) => a && b);
  for (const [a, b] of pairs) {
    const [baseline, candidate] = [files[a], files[b]];
    process.stderr.write(`\ngate-demo: kvmprop gate --baseline ${baseline} --candidate ${candidate}\n`);
    const g = await execa(process.execPath, [cli, 'gate', '--baseline', baseline, '--candidate', candidate], { cwd: root, reject: false, stdout: 'inherit', stderr: 'inherit' });
    process.stderr.write(`gate-demo: exit status ${g.exitCode}\n`);
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
