/**
 * Known deviations, applied by the runner: a difference that a documented deviation of this host
 * (and configuration) covers exactly is counted, not failed, and checking goes on, so any other
 * difference in the same run still fails. A property with waived differences ends as
 * 'known-deviation', never 'pass'.
 */
import type { HostFingerprint } from '../../harness/fingerprint.js';
import { matchDeviation, type DeviationsFile, type KnownDeviation, type RunConfigMatch } from '../../reports/deviations.js';
import type { Difference } from './property.js';

interface Waived {
  readonly deviation: KnownDeviation;
  count: number;
  readonly example: string;
}

export class Waiver {
  readonly #waived = new Map<string, Waived>();

  constructor(
    private readonly known: DeviationsFile,
    private readonly property: string,
    private readonly host: HostFingerprint,
    private readonly config: RunConfigMatch,
  ) {}

  /** A waiver that waives nothing (replay shows the first difference as it is). */
  static none(property: string, host: HostFingerprint): Waiver {
    return new Waiver({ version: 1, deviations: [] }, property, host, {});
  }

  /** The deviation covering this difference, if any. */
  deviationFor(d: Difference): KnownDeviation | undefined {
    return matchDeviation(this.known, this.property, d.summary, this.host, this.config);
  }

  /** True (and counted) when a known deviation covers the difference. */
  waive(d: Difference): boolean {
    const dev = this.deviationFor(d);
    if (!dev) return false;
    const w = this.#waived.get(dev.id);
    if (w) w.count++;
    else this.#waived.set(dev.id, { deviation: dev, count: 1, example: d.summary });
    return true;
  }

  get first(): KnownDeviation | undefined {
    return [...this.#waived.values()][0]?.deviation;
  }

  get any(): boolean {
    return this.#waived.size > 0;
  }

  /** One line per deviation: how many differences it covered, and the first. */
  summary(): string {
    return [...this.#waived.values()].map((w) => `${w.count} difference(s) covered by known deviation ${w.deviation.id} (first: ${w.example})`).join('; ');
  }
}
