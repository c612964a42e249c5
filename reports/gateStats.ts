/**
 * The statistics behind `kvmprop gate`'s measurement comparison: the Mann–Whitney U test (two
 * independent samples, no distributional assumption: timer lateness is zero-inflated and
 * heavy-tailed, migration downtime skewed), sample quantiles, and two effect sizes (Cliff's delta,
 * the Hodges–Lehmann shift). Pure functions over plain number arrays.
 *
 * Mann–Whitney U, as in Mann & Whitney (1947) and every textbook since:
 *   rank the pooled samples (ties get the mean of the ranks they span), R = the rank sum of the
 *   candidate sample, U = R − n_c(n_c + 1)/2: the number of (baseline, candidate) pairs with the
 *   candidate larger, ties counting ½. Under H0 (same distribution) E[U] = n_b·n_c/2 and, with the
 *   tie correction, Var[U] = n_b·n_c/12 · ((N + 1) − Σ(t³ − t)/(N(N − 1))) over the tie groups t.
 *   One-sided p for "candidate larger": exact (the permutation distribution of U, counted) when
 *   there are no ties and N ≤ EXACT_MAX_N; otherwise the normal approximation with a continuity
 *   correction, z = (U − E[U] − ½)/√Var[U]. These are scipy.stats.mannwhitneyu's 'exact' and
 *   'asymptotic' (use_continuity=True) methods; the tests hold both to values scipy gives.
 */

/** Above this pooled size the exact distribution is not counted (C(50, 25) < 2^53 keeps it exact in doubles). */
export const EXACT_MAX_N = 50;
/** The Hodges–Lehmann shift is computed from every pair up to this many pairs, from evenly spaced order statistics beyond. */
export const HL_MAX_PAIRS = 1_000_000;

export const ascending = (xs: readonly number[]): number[] => [...xs].sort((a, b) => a - b);

/** Sample quantile of sorted values, linear interpolation between order statistics (R's type 7, numpy's default). */
export function quantile(sorted: readonly number[], q: number): number {
  if (!sorted.length) return NaN;
  const h = (sorted.length - 1) * q;
  const lo = Math.floor(h);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo]! + (h - lo) * (sorted[hi]! - sorted[lo]!);
}

export function median(sorted: readonly number[]): number {
  return quantile(sorted, 0.5);
}

/**
 * erfc(x), from Numerical Recipes' Chebyshev fit (fractional error below 1.2e-7 everywhere), so
 * that a one-sided p of 1e-30 is still a number with seven good digits rather than 0.
 */
export function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r =
    t *
    Math.exp(
      -z * z - 1.26551223 +
        t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? r : 2 - r;
}

/** P(Z > z) for a standard normal Z. */
export const normalUpperTail = (z: number): number => 0.5 * erfc(z / Math.SQRT2);

export interface MannWhitneyResult {
  readonly nBaseline: number;
  readonly nCandidate: number;
  /** U of the candidate sample: pairs with the candidate larger, ties counting ½. */
  readonly u: number;
  /** Rank sum of the candidate sample (mid-ranks for ties). */
  readonly rankSum: number;
  readonly method: 'exact' | 'normal';
  /** z of the normal approximation for "candidate larger" (continuity-corrected); absent for the exact method. */
  readonly z?: number;
  /** One-sided p: the candidate tends to be larger. */
  readonly pGreater: number;
  /** One-sided p: the candidate tends to be smaller. */
  readonly pLess: number;
  /** Σ(t³ − t) over the tie groups of the pooled sample (0: no ties). */
  readonly ties: number;
  /** Cliff's delta, P(C > B) − P(C < B) = 2U/(n_b·n_c) − 1, in [−1, 1]. */
  readonly cliffsDelta: number;
}

/** Counts of U = 0..m·n over all C(m+n, m) arrangements without ties: ∏_{i=1..m} (1 − q^{n+i})/(1 − q^i). */
export function exactUCounts(m: number, n: number): number[] {
  const size = m * n + 1;
  let a = new Array<number>(size).fill(0);
  a[0] = 1;
  for (let i = 1; i <= m; i++) {
    const b = a.slice();
    // × (1 − q^{n+i})
    for (let k = size - 1; k >= n + i; k--) b[k]! -= a[k - (n + i)]!;
    // ÷ (1 − q^i): running sum with stride i
    for (let k = i; k < size; k++) b[k]! += b[k - i]!;
    a = b;
  }
  return a;
}

export function mannWhitney(baseline: readonly number[], candidate: readonly number[]): MannWhitneyResult {
  const nb = baseline.length;
  const nc = candidate.length;
  if (!nb || !nc) throw new RangeError('Mann–Whitney U needs at least one value on each side');
  const pooled = [...baseline.map((v) => ({ v, c: false })), ...candidate.map((v) => ({ v, c: true }))].sort((x, y) => x.v - y.v);
  const n = pooled.length;
  let rankSum = 0;
  let ties = 0;
  for (let i = 0; i < n; ) {
    let j = i;
    while (j + 1 < n && pooled[j + 1]!.v === pooled[i]!.v) j++;
    const t = j - i + 1;
    const rank = (i + j + 2) / 2;
    for (let k = i; k <= j; k++) if (pooled[k]!.c) rankSum += rank;
    if (t > 1) ties += t * t * t - t;
    i = j + 1;
  }
  const u = rankSum - (nc * (nc + 1)) / 2;
  const cliffsDelta = (2 * u) / (nb * nc) - 1;
  const base = { nBaseline: nb, nCandidate: nc, u, rankSum, ties, cliffsDelta };
  if (ties === 0 && n <= EXACT_MAX_N) {
    const counts = exactUCounts(nc, nb);
    const total = counts.reduce((s, x) => s + x, 0);
    // U is an integer without ties.
    let ge = 0;
    let le = 0;
    counts.forEach((c, k) => {
      if (k >= u) ge += c;
      if (k <= u) le += c;
    });
    return { ...base, method: 'exact', pGreater: ge / total, pLess: le / total };
  }
  const mean = (nb * nc) / 2;
  const variance = ((nb * nc) / 12) * (n + 1 - ties / (n * (n - 1)));
  if (!(variance > 0)) return { ...base, method: 'normal', z: 0, pGreater: 1, pLess: 1 };
  const sd = Math.sqrt(variance);
  const z = (u - mean - 0.5) / sd;
  const zLess = (u - mean + 0.5) / sd;
  return { ...base, method: 'normal', z, pGreater: Math.min(1, normalUpperTail(z)), pLess: Math.min(1, 1 - normalUpperTail(zLess)) };
}

/** Evenly spaced order statistics of a sorted sample: k of them, the sample's shape kept. */
function thin(sorted: readonly number[], k: number): number[] {
  if (sorted.length <= k) return [...sorted];
  return Array.from({ length: k }, (_, i) => sorted[Math.round(((i + 0.5) * sorted.length) / k - 0.5)]!);
}

/**
 * Hodges–Lehmann shift: the median of all candidate − baseline differences, the shift the rank
 * test estimates. `approximate` when computed from HL_MAX_PAIRS evenly spaced order statistics.
 */
export function hodgesLehmann(baseline: readonly number[], candidate: readonly number[]): { shift: number; approximate: boolean } {
  let b = ascending(baseline);
  let c = ascending(candidate);
  if (!b.length || !c.length) return { shift: NaN, approximate: false };
  const approximate = b.length * c.length > HL_MAX_PAIRS;
  if (approximate) {
    const k = Math.floor(Math.sqrt(HL_MAX_PAIRS));
    b = thin(b, k);
    c = thin(c, k);
  }
  const d = new Float64Array(b.length * c.length);
  let i = 0;
  for (const y of c) for (const x of b) d[i++] = y - x;
  d.sort();
  return { shift: median(Array.from(d)), approximate };
}

/**
 * Holm's step-down adjustment (family-wise error ≤ alpha over all the tests, any dependence):
 * p_(i) · (m − i + 1), made monotone, capped at 1. Returned in the input's order.
 */
export function holm(ps: readonly number[]): number[] {
  const m = ps.length;
  const order = ps.map((p, i) => ({ p, i })).sort((a, b) => a.p - b.p);
  const out = new Array<number>(m);
  let running = 0;
  order.forEach(({ p, i }, k) => {
    running = Math.max(running, Math.min(1, p * (m - k)));
    out[i] = running;
  });
  return out;
}
