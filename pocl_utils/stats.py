"""Statistics over training seeds: means with t confidence intervals, paired differences, paired t-test p-values and
Holm's adjustment for a family of comparisons."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student-t quantile: t with P(T <= t) = q for T ~ Student-t(df), q in (0, 1)."""
    return float(stats.t.ppf(q, df))


def mean_ci(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width t_{(1+level)/2, n-1} * sd / sqrt(n) of its t confidence interval, n) of n samples (e.g. one
    score per training seed); the half-width is NaN for a single value."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, len(x)
    half = t_quantile(len(x) - 1, 0.5 + level / 2) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, half, len(x)


def paired_diff(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean of b[s] - a[s], its t CI half-width, number of shared seeds) over the seeds both have (seed -> score);
    (NaN, NaN, 0) when none is shared."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return math.nan, math.nan, 0
    d = [b[s] - a[s] for s in seeds]
    m, half, n = mean_ci(d, level)
    return m, half, n


def p_value(diff: float, half: float, n: int, level: float = 0.95) -> float:
    """Two-sided p-value of the paired t-test whose mean difference is `diff` and CI half-width at `level` is `half`
    (n pairs): t = diff / (half / t_q), n - 1 degrees of freedom. NaN for n < 2 or NaN input; 0 (1 for diff = 0) when
    half = 0.
    """
    if n < 2 or np.isnan(diff) or np.isnan(half):
        return np.nan
    if half == 0:
        return 0.0 if diff != 0 else 1.0
    t = diff / (half / stats.t.ppf(0.5 + level / 2, n - 1))
    return float(2 * stats.t.sf(abs(t), n - 1))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order (family-wise error control): sorted ascending, p_(i)
    is multiplied by (m - i + 1) for i = 1..m, made monotone, capped at 1. NaN stays NaN and is not counted.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out
