"""Accuracy against tokens and FLOPs: learned against random selection per keep ratio, and selection against
merging on one FLOP axis."""
from __future__ import annotations

import altair as alt
import pandas as pd

from mpnn.runtime import plots, stats

from .data import RANDOM, REDUCTION


def selection_accuracy(sweep: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean, 95% CI over seeds) of learned and random selection per keep ratio."""
    return stats.summarise(sweep[sweep.method.str.startswith("selection")], ["method", "rho"], "accuracy")


def pareto_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean, 95% CI over seeds) against relative FLOPs, learned selection and merging."""
    return stats.summarise(sweep[sweep.method != RANDOM], ["method", "relative FLOPs"], "accuracy")


def figure_selection_accuracy(sweep: pd.DataFrame) -> alt.TopLevelMixin:
    """Test accuracy (mean, 95% CI over seeds) of learned and random selection against the keep ratio."""
    return plots.line_ci(selection_accuracy(sweep).rename(columns={"method": "tokens kept by"}), "rho",
                         "tokens kept by", y_title="test accuracy", x_title="keep ratio ρ (share of tokens kept)",
                         title="Token selection: test accuracy against keep ratio (mean, 95% CI)")


def figure_pareto(sweep: pd.DataFrame) -> alt.LayerChart:
    """Test accuracy (mean, 95% CI over seeds) against relative FLOPs, learned selection and merging."""
    return plots.accuracy_vs_compute(pareto_table(sweep).rename(columns={"method": REDUCTION}), "relative FLOPs",
                                     color=REDUCTION, y_title="test accuracy", x_title="FLOPs relative to all tokens",
                                     width=420, height=280,
                                     title="Selection vs merging: accuracy against FLOPs (mean, 95% CI)")
