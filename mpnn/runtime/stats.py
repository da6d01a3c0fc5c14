"""Summary statistics over independently seeded runs: mean and Student-t confidence intervals.

For n runs with mean m and sample standard deviation s, the two-sided interval is
``m +- t_{(1+c)/2, n-1} * s / sqrt(n)``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``; with a single value the interval collapses to the value."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m = float(x.mean())
    if x.size == 1:
        return m, m, m
    half = float(_st.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return m, m - half, m + half


def summarise(df: pd.DataFrame, by: str | Sequence[str], value: str,
              confidence: float = 0.95) -> pd.DataFrame:
    """Group ``df`` by ``by`` and give ``mean, low, high, n`` of ``value`` per group."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, group in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = mean_ci(group[value], confidence)
        rows.append(dict(zip(by, key)) | {"mean": m, "low": lo, "high": hi, "n": len(group)})
    return pd.DataFrame(rows)


def fmt_ci(values: Iterable[float], digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """``"0.912 (95% CI 0.905-0.919, n=5)"`` for prose and claim tables."""
    x = [v * scale for v in values]
    m, lo, hi = mean_ci(x)
    return f"{m:.{digits}f}{unit} (95% CI {lo:.{digits}f}-{hi:.{digits}f}{unit}, n={len(x)})"
