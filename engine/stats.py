"""Statistics over seeds that stay honest at n = 3-5.

- `t_interval`: Student-t CI of a mean (one value per seed).
- `paired_t`: CI of the mean per-seed difference of two arms that share seeds; with
  `log_ratio=True` the CI of the geometric-mean ratio (t on per-seed log ratios).
- `geometric_t`: the same on the logs of positive ratios (a geometric mean and its CI).
- `bca`: bias-corrected and accelerated bootstrap (scipy) of any statistic of per-seed arrays,
  resampling seeds jointly across arms (paired), for statistics that are not a plain mean.

Percentile-bootstrap intervals are too narrow at these n, and a two-value "CI" is just a range;
none is used for a verdict. Every interval says which method made it (`Interval.method`).
Bootstrap resampling is seeded, so a claim row is a pure function of the CSVs it reads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

LEVEL = 0.95  # confidence level of every interval a verdict uses
N_RESAMPLES = 4000  # bootstrap resamples (BCa)
BOOT_SEED = 0  # the bootstrap's own seed: intervals are reproducible


ALPHA = (1 - LEVEL) / 2  # one-sided level of every verdict: a 95% interval clearing a threshold


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # e.g. "t", "paired t", "paired t on log ratio", "BCa bootstrap, paired by seed"
    log: bool = False  # a t interval on logs, mapped back (symmetric in log space)
    # the one-sided p-value this interval's own method gives against a bound: p_of(bound, side) with
    # side +1 testing "above the bound" (null: at or below it) and -1 "below"; None for t intervals,
    # whose p-value follows from the interval and n alone (p_value below)
    p_of: Optional[Callable[[float, int], float]] = field(default=None, compare=False, repr=False)

    @staticmethod
    def none(method: str = "none") -> "Interval":
        return Interval(float("nan"), float("nan"), method)


def clean(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def mean(values: Sequence[float]) -> float:
    """np.mean, but NaN without a warning when there is nothing to average (missing data is NaN,
    and analyses report it as missing; a warning printed to the user would say nothing more)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()) if a.size else float("nan")


def nanmean(values: Sequence[float]) -> float:
    """np.nanmean, but NaN without a warning when every value is NaN."""
    a = np.asarray(values, dtype=float)
    return float(np.nanmean(a)) if (~np.isnan(a)).any() else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = clean(values)
    if not len(a):
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Student-t CI of the mean of finite `values` (NaN interval below 2 values)."""
    from scipy import stats

    a = clean(values)
    if len(a) < 2:
        return Interval.none("t")
    half = stats.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
    return Interval(float(a.mean() - half), float(a.mean() + half), "t")


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The seeds (positions) where both arms have a finite value."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired arms need one value per shared seed, got {len(x)} and {len(y)}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def geometric_t(
    ratios: Sequence[float], level: float = LEVEL, method: str = "t on log ratio"
) -> tuple[float, Interval, int]:
    """(geometric mean, CI, n) of positive ratios: a Student-t interval on their logs, mapped back."""
    r = clean(ratios)
    logs = np.log(r[r > 0])
    ci = t_interval(logs, level)
    est = float(np.exp(logs.mean())) if len(logs) else float("nan")
    return est, Interval(float(np.exp(ci.low)), float(np.exp(ci.high)), method, log=True), len(logs)


def paired_t(
    a: Sequence[float], b: Sequence[float], log_ratio: bool = False, level: float = LEVEL
) -> tuple[float, Interval, int]:
    """(estimate, CI, n pairs) of mean(a - b), or of the geometric-mean ratio a/b (log_ratio)."""
    x, y = paired(a, b)
    if log_ratio:
        ok = (x > 0) & (y > 0)
        return geometric_t(x[ok] / y[ok], level, "paired t on log ratio")
    d = x - y
    ci = t_interval(d, level)
    return (float(d.mean()) if len(d) else float("nan")), Interval(ci.low, ci.high, "paired t"), len(d)


def bca(
    arrays: Sequence[Sequence[float]],
    statistic: Callable[..., float],
    level: float = LEVEL,
    paired_by_seed: bool = True,
) -> Interval:
    """BCa bootstrap CI of statistic(*arrays). Paired: the arrays are aligned by seed and
    resampled together (one seed index drawn for all); otherwise each array on its own."""
    from scipy import stats

    arrays = [np.asarray(a, dtype=float) for a in arrays]
    if paired_by_seed:
        keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
        arrays = [a[keep] for a in arrays]
    else:
        arrays = [a[np.isfinite(a)] for a in arrays]
    if min(len(a) for a in arrays) < 3:
        return Interval.none("BCa bootstrap")

    def stat(*xs, axis=-1):
        xs = [np.moveaxis(np.asarray(x), axis, -1) for x in xs]
        shape = xs[0].shape[:-1]
        out = np.empty(shape)
        for idx in np.ndindex(shape):
            out[idx] = statistic(*(x[idx] for x in xs))
        return out

    method = "BCa bootstrap, paired by seed" if paired_by_seed else "BCa bootstrap"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate distributions give NaN, reported as such
        try:
            res = stats.bootstrap(
                arrays,
                stat,
                paired=paired_by_seed,
                vectorized=True,
                method="BCa",
                confidence_level=level,
                n_resamples=N_RESAMPLES,
                rng=np.random.default_rng(BOOT_SEED),
            )
        except (ValueError, FloatingPointError):
            return Interval.none(method)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    p_of = _bca_p(arrays, statistic, np.asarray(res.bootstrap_distribution, dtype=float), paired_by_seed)
    return Interval(lo, hi, method, p_of=p_of)


def _bca_p(arrays, statistic, boot: np.ndarray, paired_by_seed: bool) -> Callable[[float, int], float]:
    """The BCa interval inverted: the one-sided level at which an endpoint of the same interval (same
    resamples, same bias correction z0 and jackknife acceleration a) falls on the bound. Its p-value
    is below ALPHA exactly when the 95% BCa interval clears the bound."""
    from scipy.special import ndtr, ndtri

    theta = float(statistic(*arrays))
    boot = boot[np.isfinite(boot)]
    z0 = float(ndtri(np.mean(boot < theta))) if len(boot) else float("nan")
    if paired_by_seed:  # leave one seed out of every arm at once
        n = len(arrays[0])
        jack = np.array([statistic(*(np.delete(a, i) for a in arrays)) for i in range(n)], dtype=float)
    else:
        jack = np.array(
            [statistic(*(np.delete(a, i) if j == k else a for j, a in enumerate(arrays)))
             for k, arr in enumerate(arrays) for i in range(len(arr))],
            dtype=float,
        )  # fmt: skip
    jack = jack[np.isfinite(jack)]
    d = jack.mean() - jack if len(jack) else jack
    den = 6.0 * np.sum(d**2) ** 1.5
    acc = float(np.sum(d**3) / den) if den > 0 else 0.0

    def p_of(bound: float, side: int) -> float:
        if not (len(boot) and np.isfinite(z0) and np.isfinite(bound)):
            return float("nan")
        frac = np.clip(np.mean(boot < bound), 0.5 / len(boot), 1 - 0.5 / len(boot))  # the resamples' resolution
        w = float(ndtri(frac)) - z0
        level = float(ndtr(w / (1 + acc * w) - z0))  # the bound is the BCa endpoint at this percentile
        return level if side > 0 else 1.0 - level

    return p_of


def t_p(value: float, ci: Interval, n: int, bound: float, side: int) -> float:
    """One-sided p-value of a t interval's own test against a bound (side +1: the claim is 'above',
    null 'at or below'; -1: the reverse). The interval gives the mean (its centre) and the standard
    error (its half-width over t's quantile), in log space for a log interval, so p < ALPHA exactly
    when the 95% interval clears the bound."""
    from scipy import stats

    lo, hi, b = ci.low, ci.high, bound
    if ci.log:
        if min(lo, hi, b) <= 0:
            return float("nan")
        lo, hi, b = np.log(lo), np.log(hi), np.log(b)
    if n < 2 or not np.all(np.isfinite([lo, hi, b])) or hi <= lo:
        return float("nan")
    centre, se = (lo + hi) / 2, (hi - lo) / 2 / stats.t.ppf(0.5 + LEVEL / 2, n - 1)
    t = (centre - b) / se
    return float(stats.t.sf(t, n - 1) if side > 0 else stats.t.cdf(t, n - 1))


def folded_t(value: float, ci: Interval, n: int) -> tuple[float, Interval]:
    """|mean| and its t interval folded at 0, for a two-sided claim 'the mean differs from 0 by more than b'
    judged as `|mean| > b`: the folded interval lies above b exactly when the t interval clears -b or b on
    one side. Its p against a bound b is the nearer side's one-sided t test (claim 'above': the smaller of
    p(mean > b) and p(mean < -b); claim 'below', |mean| < b: the larger of the two one-sided tests)."""
    lo, hi = ci.low, ci.high
    if not np.all(np.isfinite([value, lo, hi])):
        return abs(value), Interval(float("nan"), float("nan"), f"{ci.method}, folded at 0")
    f_lo = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
    f_hi = max(abs(lo), abs(hi))

    def p_of(bound: float, side: int) -> float:
        up, down = t_p(value, ci, n, bound, +1), t_p(value, ci, n, -bound, -1)
        if side > 0:
            return min(up, down)
        return max(t_p(value, ci, n, bound, -1), t_p(value, ci, n, -bound, +1))

    return abs(value), Interval(f_lo, f_hi, f"{ci.method}, folded at 0", p_of=p_of)


def sign_test_p(agree: int, n: int) -> float:
    """Exact one-sided sign test: P(at least `agree` of n seeds on the claim's side | each side 1/2).
    For rows whose seeds all give one value, where a t interval has zero width and p = 0."""
    from scipy import stats

    return float(stats.binom.sf(agree - 1, n, 0.5)) if n > 0 else float("nan")


def seeds_for_sign_test(alpha: float = ALPHA) -> int:
    """The fewest seeds that, all agreeing, give an exact sign test p <= alpha (6 at 0.025)."""
    return int(np.ceil(np.log(alpha) / np.log(0.5)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control under any dependence: the rows
    share runs and point in mixed directions). NaN p-values stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.where(np.isfinite(p))[0]
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def inverse_normal(pvalues: Sequence[float], sizes: Sequence[int]) -> float:
    """Stages' one-sided p-values combined by the inverse normal method, weights sqrt(n_i / N) fixed by
    the stages' sizes: valid when a later stage's size was chosen after looking at the earlier ones
    (each stage's p is uniform under the null whatever its size), which pooling all seeds is not."""
    from scipy.special import ndtr, ndtri

    p, n = np.asarray(pvalues, dtype=float), np.asarray(sizes, dtype=float)
    if not len(p) or not np.all(np.isfinite(p)) or np.any(n <= 0):
        return float("nan")
    w = np.sqrt(n / n.sum())
    z = ndtri(1 - np.clip(p, 1e-300, 1 - 1e-16))
    return float(ndtr(-(w * z).sum()))


def stages_of(values: Sequence[float], looks: Sequence[int]) -> list[list[float]] | None:
    """Per-seed values (in seed order) cut at the seed counts where the row was looked at before more
    seeds were added: [values[:l1], values[l1:l2], ..., values[lk:]]; None without looks. A look at or
    past the number of values is ignored (those seeds were never added)."""
    cuts = [k for k in sorted(set(looks)) if 0 < k < len(values)]
    if not cuts:
        return None
    edges = [0, *cuts, len(values)]
    return [list(values[a:b]) for a, b in zip(edges, edges[1:])]


def t_test_p(values: Sequence[float], bound: float, side: int) -> float:
    """One-sided one-sample t test of the mean against a bound (side +1: the mean is above it)."""
    from scipy import stats

    a = clean(values)
    if len(a) < 2:
        return float("nan")
    sd = a.std(ddof=1)
    if sd == 0:
        return 0.0 if (a[0] - bound) * side > 0 else 1.0
    t = (a.mean() - bound) / (sd / np.sqrt(len(a)))
    return float(stats.t.sf(t, len(a) - 1) if side > 0 else stats.t.cdf(t, len(a) - 1))


def percentile_band(samples: np.ndarray, level: float = 0.9, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A descriptive band for figures (never used for a verdict)."""
    q = (1 - level) / 2
    lo, hi = np.percentile(samples, [100 * q, 100 * (1 - q)], axis=axis)
    return lo, hi


MOST_SEEDS = 10_000  # beyond this, "no n decides it" in practice


def interval_scale(n_from: int, n_to: int, level: float = LEVEL) -> float:
    """How a t interval's half-width changes from n_from to n_to values at a fixed spread:
    [t(n_to - 1) / sqrt(n_to)] / [t(n_from - 1) / sqrt(n_from)]."""
    from scipy import stats

    q = lambda n: stats.t.ppf(0.5 + level / 2, n - 1) / np.sqrt(n)  # noqa: E731
    return float(q(n_to) / q(n_from))


def distance_in_half_widths(value: float, low: float, high: float, bounds: Sequence[float]) -> float:
    """How far the estimate sits from its nearest threshold, in units of the interval's half-width on
    that side: above 1 the interval clears every threshold (the row is decided), below 1 one lies
    inside it. +inf when no finite threshold; NaN without an interval."""
    if not all(np.isfinite([value, low, high])):
        return float("nan")
    out = float("inf")
    for b in bounds:
        if not np.isfinite(b):
            continue
        half = (high - value) if b >= value else (value - low)
        gap = abs(b - value)
        out = min(out, gap / half if half > 0 else (float("inf") if gap > 0 else 0.0))
    return out


def seeds_to_decide(
    value: float, low: float, high: float, n: int, bounds: Sequence[float], min_n: int = 3, log: bool = False
) -> tuple[float, str]:
    """(n, why) for a row the interval leaves undecided: the seeds at which an interval of today's
    spread around today's estimate would clear every threshold (the t half-width shrinking as
    t(n-1)/sqrt(n)). `log`: the interval is a t interval on logs (a ratio), scaled in log space.
    inf with the reason when no n can decide it (the estimate sits on a threshold); NaN when there is
    no interval to extrapolate from."""
    if log:
        if min([value, low, high, *[b for b in bounds if np.isfinite(b)]], default=1.0) <= 0:
            return float("nan"), "a log-scale interval around a non-positive value"
        value, low, high = np.log(value), np.log(low), np.log(high)
        bounds = [np.log(b) if np.isfinite(b) else b for b in bounds]
    if n < 2 or not all(np.isfinite([value, low, high])):
        return float("nan"), "no interval to extrapolate from"
    d = distance_in_half_widths(value, low, high, bounds)
    if d == 0.0:
        return float("inf"), "the estimate sits on the threshold: no number of seeds decides it"
    if d > 1.0:  # already clear; decided once there are min_n seeds
        return float(max(n, min_n)), ""
    lo, hi = max(n, min_n), MOST_SEEDS
    if interval_scale(n, hi) >= d:
        return float("inf"), f"more than {MOST_SEEDS} seeds at today's spread"
    while lo < hi:  # the scale falls with n: the first n where it drops below d
        mid = (lo + hi) // 2
        if interval_scale(n, mid) < d:
            hi = mid
        else:
            lo = mid + 1
    return float(lo), ""
