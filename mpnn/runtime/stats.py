"""Summary statistics over independently seeded runs: means and confidence intervals.

For n runs with mean m and sample standard deviation s, the two-sided Student-t interval is
``m +- t_{(1+c)/2, n-1} * s / sqrt(n)``.

A quantity with a range (an accuracy or share in [0, 1], an entropy in [0, log E], an NMI) gets an
interval inside that range (``bounds=(lo, hi)``): the t interval of the per-seed values on the
logit scale of ``(x - lo) / (hi - lo)``, mapped back (values on a bound are first pulled in by half
of the smallest gap to the bound seen, or 1e-3 of the range). Differences of bounded quantities are
not bounded this way (their range is symmetric around 0 and the t interval is the usual one).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st


def _t_interval(x: np.ndarray, confidence: float) -> tuple[float, float, float]:
    m = float(x.mean())
    if x.size == 1:
        return m, m, m
    half = float(_st.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return m, m - half, m + half


def mean_ci(values: Iterable[float], confidence: float = 0.95,
            bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """``(mean, low, high)``; with a single value the interval collapses to the value.

    ``bounds=(lo, hi)``: the quantity's range; the interval is the logit-scale t interval mapped
    back (module docstring), so it never leaves the range."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if bounds is None:
        return _t_interval(x, confidence)
    lo_b, hi_b = map(float, bounds)
    if not hi_b > lo_b:
        raise ValueError(f"bounds must be (low, high) with high > low, got {bounds}")
    if x.min() < lo_b - 1e-9 * (hi_b - lo_b) or x.max() > hi_b + 1e-9 * (hi_b - lo_b):
        raise ValueError(f"values outside their stated range {bounds}: {x.min()}..{x.max()}")
    m = float(x.mean())
    u = np.clip((x - lo_b) / (hi_b - lo_b), 0.0, 1.0)
    inner = u[(u > 0) & (u < 1)]
    gap = min([1e-3, *(0.5 * inner.min(),), *(0.5 * (1 - inner.max()),)] if inner.size else [1e-3])
    u = np.clip(u, gap, 1 - gap)
    _, a, b = _t_interval(np.log(u / (1 - u)), confidence)
    back = lambda z: lo_b + (hi_b - lo_b) / (1 + np.exp(-z))
    low, high = float(back(a)), float(back(b))
    return m, min(low, m), max(high, m)


def seeds_to_decide(values: Iterable[float], threshold: float, confidence: float = 0.95) -> int | None:
    """How many seeds would put the t interval of ``values`` wholly on one side of ``threshold``,
    if the mean and spread stayed as measured (None when the mean sits on the threshold)."""
    x = np.asarray(list(values), dtype=float)
    if x.size < 2:
        raise ValueError("seeds_to_decide needs at least two values")
    gap, s = abs(float(x.mean()) - threshold), float(x.std(ddof=1))
    if gap == 0:
        return None
    if s == 0:
        return int(x.size)
    n = max(int(x.size), 2)
    while n < 100_000:
        if _st.t.ppf((1 + confidence) / 2, n - 1) * s / np.sqrt(n) < gap:
            return n
        n += 1
    return None


def summarise(df: pd.DataFrame, by: str | Sequence[str], value: str,
              confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> pd.DataFrame:
    """Group ``df`` by ``by`` and give ``mean, low, high, n`` of ``value`` per group (``bounds``:
    the value's range, see :func:`mean_ci`)."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, group in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = mean_ci(group[value], confidence, bounds)
        rows.append(dict(zip(by, key)) | {"mean": m, "low": lo, "high": hi, "n": len(group)})
    return pd.DataFrame(rows)


def fmt_ci(values: Iterable[float], digits: int = 3, scale: float = 1.0, unit: str = "",
           bounds: tuple[float, float] | None = None) -> str:
    """``"0.912 (95% CI 0.905-0.919, n=5)"`` for prose and claim tables (``bounds``: the range of the
    unscaled quantity, see :func:`mean_ci`)."""
    x = [v * scale for v in values]
    m, lo, hi = mean_ci(x, bounds=None if bounds is None else (bounds[0] * scale, bounds[1] * scale))
    sep = " to " if lo < 0 or hi < 0 else "-"          # "-6.85 to -1.98", never "-6.85--1.98"
    return f"{m:.{digits}f}{unit} (95% CI {lo:.{digits}f}{sep}{hi:.{digits}f}{unit}, n={len(x)})"
