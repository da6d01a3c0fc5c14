"""Accuracy against compute: the threshold sweep's accuracy, FLOPs and exit fractions over seeds, and their figures."""
from __future__ import annotations

import altair as alt
import pandas as pd

from mpnn.runtime import plots, stats


def _summary(sweep: pd.DataFrame, column: str, bounds: tuple[float, float] | None = None) -> pd.DataFrame:
    return stats.summarise(sweep, "threshold", column, bounds=bounds)


def pareto_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per threshold: mean test accuracy with its 95% CI over seeds (``low``, ``high``, inside [0, 1]), mean relative FLOPs
    and mean exit-1 fraction."""
    acc = _summary(sweep, "accuracy", (0, 1))[["threshold", "mean", "low", "high"]].rename(columns={"mean": "accuracy"})
    for column in ("relative FLOPs", "exit 1 fraction"):
        acc = acc.merge(_summary(sweep, column)[["threshold", "mean"]].rename(columns={"mean": column}), on="threshold")
    return acc


def exit_fraction_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Fraction of test samples leaving at each exit per threshold (mean, 95% CI), long form (``exit``)."""
    frac = _summary(sweep, "exit 1 fraction", (0, 1))
    exit2 = frac.assign(mean=1 - frac["mean"], low=1 - frac["high"], high=1 - frac["low"])
    return pd.concat([frac.assign(exit="exit 1"), exit2.assign(exit="exit 2")])


def figure_pareto(pareto: pd.DataFrame) -> alt.LayerChart:
    """:func:`pareto_table` drawn: test accuracy (mean, 95% CI over seeds) against relative FLOPs, one point
    per threshold."""
    return plots.accuracy_vs_compute(pareto, "relative FLOPs", y="accuracy",
                                     x_title="FLOPs relative to the plain network", y_title="test accuracy",
                                     width=440, height=280,
                                     title="Early exits: accuracy against FLOPs (mean, 95% CI over seeds)")


def figure_exit_fractions(sweep: pd.DataFrame) -> alt.TopLevelMixin:
    """Fraction of test samples leaving at each exit against the threshold (mean, 95% CI over seeds)."""
    return plots.line_ci(exit_fraction_table(sweep).rename(columns={"exit": "leaves at"}), "threshold", "leaves at",
                         title="Fraction of test samples leaving at each exit", y_title="fraction of test samples",
                         x_title="entropy threshold T")
