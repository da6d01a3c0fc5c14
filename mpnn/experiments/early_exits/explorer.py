"""The explorer: per threshold, the sweep's means over seeds and the measured speed-up, its live summary line,
its static view and the site's operating point on the accuracy/FLOPs curve."""
from __future__ import annotations

import altair as alt
import pandas as pd

from mpnn.runtime import plots


def threshold_table(sweep: pd.DataFrame, speed: pd.DataFrame) -> pd.DataFrame:
    """Per threshold: the sweep's means over seeds and the measured speed-up (first seed's model)."""
    table = sweep.groupby("threshold").mean(numeric_only=True).reset_index().drop(columns="seed")
    table["measured speed-up"] = speed["measured speed-up"].values
    return table


def threshold_summary(table: pd.DataFrame, threshold: float) -> str:
    """One HTML line of :func:`threshold_table` at ``threshold`` (the explorer's view)."""
    match = table[table["threshold"] == threshold]
    if match.empty:
        raise KeyError(f"threshold {threshold} was not swept; choose one of {table['threshold'].tolist()}")
    row = match.iloc[0]
    return (f"<b>T = {threshold}</b>: accuracy {row['accuracy']:.4f}, "
            f"exit 1 takes {row['exit 1 fraction']:.1%}, relative FLOPs {row['relative FLOPs']:.3f}, "
            f"predicted speed-up {row['predicted speed-up']:.2f}x, measured {row['measured speed-up']:.2f}x")


def threshold_long(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`threshold_table` in long form (``quantity``, ``value``), one panel per quantity in the static view."""
    return table.melt(id_vars="threshold", value_vars=["accuracy", "exit 1 fraction", "relative FLOPs",
                                                       "measured speed-up"], var_name="quantity")


def figure_threshold_static(table: pd.DataFrame) -> alt.FacetChart:
    """The explorer's static view: one panel per quantity of :func:`threshold_long` against the threshold."""
    panel = alt.Chart(threshold_long(table)).mark_line(point=True).encode(
        x=alt.X("threshold:Q", title="entropy threshold T"),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        tooltip=["quantity", "threshold", alt.Tooltip("value:Q", format=".4f")]).properties(width=240, height=140)
    return panel.facet(facet=alt.Facet("quantity:N", title=None, sort=None), columns=2).resolve_scale(
        y="independent").properties(
        title="Accuracy, exit-1 fraction, FLOPs and measured speed-up against the threshold")


def threshold_grid(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`threshold_table` with a ``setting`` column (the row in words) for the site explorer."""
    grid = table.copy()
    grid["setting"] = [f"T = {r['threshold']}: accuracy {r['accuracy']:.4f}, exit 1 takes {r['exit 1 fraction']:.0%}, "
                       f"{r['relative FLOPs']:.3f} of the FLOPs, measured {r['measured speed-up']:.2f}x"
                       for _, r in grid.iterrows()]
    return grid


def figure_threshold_explorer(table: pd.DataFrame):
    """The site explorer: the threshold slider moves the operating point along the accuracy/FLOPs curve."""
    grid = threshold_grid(table)
    return plots.operating_point(grid, "relative FLOPs", "accuracy",
                                 {"threshold": {"kind": "slider", "name": "entropy threshold T"}},
                                 label="setting", x_title="FLOPs relative to the plain network",
                                 y_title="test accuracy (mean over seeds)", width=520,
                                 title="Operating point at the chosen threshold")
