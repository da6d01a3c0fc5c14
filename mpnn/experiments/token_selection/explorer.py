"""The explorer: per setting, the means over seeds and the measured speed-up, its live summary lines, its static
view and the site's setting dropdown."""
from __future__ import annotations

import altair as alt
import pandas as pd

from mpnn.runtime import plots

from .data import MERGING, RANDOM, REDUCTION, SELECTION


def setting_table(sweep: pd.DataFrame, speed: pd.DataFrame) -> pd.DataFrame:
    """Per setting: the means over seeds and the measured speed-up (first seed's model; none for random)."""
    table = sweep.groupby(["method", "rho", "r"]).mean(numeric_only=True).reset_index()
    return table.merge(speed[["method", "rho", "r", "measured speed-up"]], on=["method", "rho", "r"], how="left")


def _setting_line(row: pd.Series, name: str) -> str:
    sp = row["measured speed-up"]
    sp = "" if pd.isna(sp) else f", measured speed-up {sp:.2f}x"
    return (f"{name}: accuracy {row['accuracy']:.4f}, FLOPs {row['relative FLOPs']:.3f} "
            f"(predicted {row['predicted speed-up']:.2f}x){sp}")


def setting_summary(table: pd.DataFrame, rho: float, r: int) -> str:
    """HTML lines of :func:`setting_table` for both selections at ``rho`` and ToMe at ``r`` (the explorer's view)."""
    lines = []
    for method in (SELECTION, RANDOM):
        match = table[(table.method == method) & (table.rho == rho)]
        if len(match):
            lines.append(_setting_line(match.iloc[0], f"{method}, rho={rho}"))
    match = table[(table.method == MERGING) & (table.r == r)]
    if len(match):
        lines.append(_setting_line(match.iloc[0], f"ToMe, r={r}"))
    return "<br>".join(lines)


def setting_means(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`setting_table` averaged per method and relative FLOPs (the explorer's static view)."""
    return table.groupby(["method", "relative FLOPs"]).mean(numeric_only=True).reset_index()


def figure_setting_static(table: pd.DataFrame) -> alt.LayerChart:
    """The explorer's static view: accuracy against FLOPs of every setting (means over seeds), per method."""
    return plots.accuracy_vs_compute(setting_means(table).rename(columns={"method": REDUCTION}), "relative FLOPs",
                                     y="accuracy", low=None, high=None, color=REDUCTION,
                                     x_title="FLOPs relative to all tokens", y_title="test accuracy (mean over seeds)",
                                     width=420, height=260, title="Every setting: accuracy against FLOPs")


def setting_grid(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`setting_table` with one label per setting (``setting``) and its summary line (``summary``),
    sorted by method and FLOPs: the site explorer's grid."""
    grid = table.sort_values(["method", "relative FLOPs"]).reset_index(drop=True)
    grid["setting"] = [f"ToMe, r={int(r.r)}" if r.method == MERGING else f"{r.method}, rho={r.rho:g}"
                       for r in grid.itertuples()]
    grid["summary"] = [_setting_line(row, row["setting"]) for _, row in grid.iterrows()]
    return grid[["setting", "method", "rho", "r", "accuracy", "relative FLOPs", "summary"]]


def figure_setting_site(table: pd.DataFrame):
    """The token explorer for the static site: a setting dropdown moves the highlighted point along the
    accuracy/FLOPs curves of learned selection, random selection and ToMe."""
    grid = setting_grid(table)
    default = grid[(grid.method == SELECTION) & (grid.rho == 0.5)]
    first = default["setting"].iloc[0] if len(default) else grid["setting"].iloc[0]
    return plots.operating_point(grid.rename(columns={"method": REDUCTION}), "relative FLOPs", "accuracy",
                                 {"setting": {"kind": "dropdown", "name": "setting", "value": first}},
                                 color=REDUCTION, label="summary", x_title="FLOPs relative to all tokens",
                                 y_title="test accuracy (mean over seeds)", width=440, height=260,
                                 title="Accuracy against FLOPs: the chosen setting")
