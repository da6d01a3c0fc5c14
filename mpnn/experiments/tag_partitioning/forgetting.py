"""Blocked tags and the shared output layer: the forgetting curve of the even digits."""
from __future__ import annotations

import altair as alt
import pandas as pd
import torch

from mpnn.runtime import plots, stats

from .variants import CURVE_VARIANTS


def odd_blocks(Y, train_idx: torch.Tensor, epochs: int, n_train: int) -> pd.DataFrame:
    """Spans (in epochs) of the odd blocks of the blocked order of one split."""
    n_even = int((Y[train_idx] % 2 == 0).sum())
    return pd.DataFrame([{"start": e + n_even / n_train, "end": e + 1.0} for e in range(epochs)])


def figure_forgetting_curve(curves: pd.DataFrame, blocks: pd.DataFrame) -> alt.LayerChart:
    """Even-digit accuracy through training, mean and 95% CI, over shaded odd blocks."""
    summary = stats.summarise(curves, ["variant", "digits", "epoch"], "accuracy", bounds=(0, 1))
    shade = alt.Chart(blocks).mark_rect(opacity=0.15, color="grey").encode(x="start:Q", x2="end:Q")
    lines = plots.line_ci(summary.rename(columns={"variant": "network"}), "epoch", color="network",
                          y_title="accuracy on even validation digits", x_title="epoch", width=560, height=300,
                          title="Even-digit accuracy through training (grey: odd blocks of the blocked order)")
    return (shade + lines).configure_legend(orient="bottom", columns=2, labelLimit=0)


def forgetting(curves: pd.DataFrame, Y, train_idx, *, epochs: int, n_train: int):
    """Even-digit accuracy per variant at the end (lists over seeds), what the last odd block cost
    (accuracy at the last checkpoint before it minus at the end, per seed), and that checkpoint."""
    last = curves[curves.step == curves.step.max()]
    end_even = last.groupby("variant").accuracy.apply(list)
    start_step = (epochs - 1) * n_train + int((Y[train_idx] % 2 == 0).sum())
    before = curves[curves.step <= start_step]
    before = before[before.step == before.step.max()]
    per_seed = lambda df, v: df[df.variant == v].sort_values("seed").accuracy
    drop = {v: [float(a) - float(b) for a, b in zip(per_seed(before, v), per_seed(last, v))]
            for v in CURVE_VARIANTS}
    return end_even, drop, int(before.step.max())
