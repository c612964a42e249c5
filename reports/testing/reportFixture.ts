/**
 * The HTML report's test inputs: the real results in reports/fixtures/report/ (README there), and
 * a hostile copy of one whose every text field tries to break out of the page.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Counterexample } from '../counterexample.js';
import type { ResultsFile } from '../schema.js';

const DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'report');

/** One results file per configuration and family set, as `kvmprop run` wrote them (trimmed). */
export const REPORT_FIXTURES: readonly string[] = ['timers', 'migration', 'leaks', 'nested', 'nested-mutant'].map((d) => join(DIR, d, 'results.json'));

const MUTANT = join(DIR, 'nested-mutant');

/** Write the hostile results (and its counterexample) under `dir`; returns the results file. */
export function hostileFixture(dir: string): string {
  const r = JSON.parse(readFileSync(join(MUTANT, 'results.json'), 'utf8')) as ResultsFile;
  const failed = r.properties.find((p) => p.status === 'fail')!;
  const c = JSON.parse(readFileSync(join(MUTANT, failed.counterexample!), 'utf8')) as Counterexample;
  const hostile: ResultsFile = {
    ...r,
    properties: [
      ...r.properties.map((p) =>
        p === failed
          ? {
              ...p,
              id: 'nested.<img src=x onerror=alert(1)>',
              reason: '</style><script>alert("reason")</script>',
              replay: `npx kvmprop replay '"><script>alert(3)</script>`,
              measurements: { 'lateness.lapic': [{ value: 5, labels: { timer: 'lapic', mode: '<script>mode</script>', divide: '"1"' } }] },
            }
          : p,
      ),
    ],
    findings: [{ check: 'host.<b>x</b>', status: 'fail', summary: "it's </pre><b>bold</b>", qemuMessage: 'qemu: </style></head><script>alert(4)</script>', commandLine: ['qemu', '--', '<script>'] }],
    errors: ['vitest: <script>alert(5)</script>'],
  };
  const cx: Counterexample = {
    ...c,
    summary: '<script>alert("summary")</script>',
    workload: { ...(c.workload as object), note: '<script>alert("workload")</script>' },
    expected: { vector: '</pre></div><script>x</script>' },
    observed: { vector: `</pre><script>alert('observed')</script>` },
    evidence: { serial: 'guest serial <script>alert(2)</script>\n\x1b[31mred\x1b[0m\u0007 and more', qemuStderr: { a0: 'line 1\n</pre><script>y</script>' } },
  };
  mkdirSync(join(dir, 'counterexamples'), { recursive: true });
  writeFileSync(join(dir, failed.counterexample!), JSON.stringify(cx, null, 2));
  writeFileSync(join(dir, 'results.json'), JSON.stringify(hostile, null, 2));
  return join(dir, 'results.json');
}
