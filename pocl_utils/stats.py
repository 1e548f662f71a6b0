"""Statistics over training seeds: means with t confidence intervals and paired differences."""
from __future__ import annotations

import math

import numpy as np


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student-t quantile (scipy when available)."""
    from scipy import stats
    return float(stats.t.ppf(q, df))


def mean_ci(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the half-width of its t confidence interval (NaN half-width for a single value)."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, len(x)
    half = t_quantile(len(x) - 1, 0.5 + level / 2) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, half, len(x)


def paired_diff(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> tuple[float, float, int]:
    """Mean and CI half-width of b - a over the seeds both have (paired by training seed)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return math.nan, math.nan, 0
    d = [b[s] - a[s] for s in seeds]
    m, half, n = mean_ci(d, level)
    return m, half, n
