"""Predicted against measured speed-up, and where the time goes: each part's share of the FLOPs and of the
wall time, and a time model built from the measured parts."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd
import torch

from mpnn.early_exit import EarlyExitNet, count_flops
from mpnn.runtime import plots


def speedup_table(speed: pd.DataFrame) -> pd.DataFrame:
    """Predicted (FLOPs) and measured (wall time, 95% CI) speed-up per threshold, long form (``kind``)."""
    predicted = speed[["threshold", "predicted speed-up"]].rename(columns={"predicted speed-up": "mean"})
    measured = speed[["threshold", "measured speed-up", "low", "high"]].rename(columns={"measured speed-up": "mean"})
    return pd.concat([predicted.assign(low=predicted["mean"], high=predicted["mean"], kind="predicted (FLOPs)"),
                      measured.assign(kind="measured (wall time)")])


def figure_speedup(speed: pd.DataFrame) -> alt.LayerChart:
    """Predicted (FLOPs) and measured (wall time, 95% CI) speed-up against the threshold, a rule at no speed-up."""
    chart = plots.line_ci(speedup_table(speed).rename(columns={"kind": "speed-up"}), "threshold", "speed-up",
                          y_title="speed-up over the plain network (x)", x_title="entropy threshold T",
                          title="Speed-up over the plain network (first seed's model)")
    return plots.with_rules(chart, y={"no speed-up": 1.0})


def part_flops(model: EarlyExitNet) -> list[int]:
    """FLOPs per sample of the parts :func:`time_breakdown` times (the entropy and gather count 0)."""
    p = next(model.parameters())
    x = torch.zeros(1, 1, 28, 28, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        h1 = model.stages[0](x)
        block2 = count_flops(model.stages[1], h1) + count_flops(model.exits[1], model.stages[1](h1))
    return [count_flops(model.stages[0], x), count_flops(model.exits[0], h1), 0, block2]


def breakdown_table(parts: dict, model: EarlyExitNet, batch: int) -> pd.DataFrame:
    """Each timed part's median time, FLOPs, share of the time and of the FLOPs, and FLOP rate on ``batch`` rows."""
    t = parts["parts"]
    table = pd.DataFrame({"part": list(t), "time (ms)": [1e3 * v for v in t.values()],
                          "MFLOPs / sample": [f / 1e6 for f in part_flops(model)]})
    table["share of time"] = table["time (ms)"] / table["time (ms)"].sum()
    table["share of FLOPs"] = table["MFLOPs / sample"] / table["MFLOPs / sample"].sum()
    table["GFLOP/s"] = table["MFLOPs / sample"] * batch / table["time (ms)"]
    return table


def time_model_table(parts: dict, speed: pd.DataFrame, rows: Sequence[int]) -> pd.DataFrame:
    """A time model from the measured parts against the measured and FLOP-predicted speed-up per threshold.

    The plain network pays block 1 + block 2; early exit pays block 1, the exit-1 head and the entropy for
    every sample, and block 2 either scaled by ``1 - q`` (what a FLOP count assumes) or timed on exactly
    the rows left at that threshold."""
    t = parts["parts"]
    block2_rows = dict(parts["block2_rows"]) | {0: 0.0}
    block2 = t["block 2 + exit-2 head"]
    fixed = t["block 1"] + t["exit-1 head"] + t["entropy + gather half the rows"]
    plain = t["block 1"] + block2
    table = speed[["threshold", "exit 1 fraction"]].rename(columns={"exit 1 fraction": "q"})
    table["rows left"] = list(rows)
    table["block 2 time on those rows / on all rows"] = [block2_rows[n] / block2 for n in rows]
    table["speed-up, block 2 time x (1 - q)"] = plain / (fixed + (1 - table["q"]) * block2)
    table["speed-up, block 2 timed on the rows left"] = plain / (fixed + table["rows left"].map(block2_rows))
    table["measured speed-up"] = speed["measured speed-up"].values
    table["predicted speed-up (FLOPs)"] = speed["predicted speed-up"].values
    return table


def figure_time_breakdown(breakdown: pd.DataFrame) -> alt.Chart:
    """Two stacked bars: each part's share of the FLOPs and of the wall time."""
    long = breakdown.melt(id_vars="part", value_vars=["share of time", "share of FLOPs"], var_name="measure",
                          value_name="share").replace({"measure": {"share of time": "wall time",
                                                                   "share of FLOPs": "FLOPs"}})
    parts = list(breakdown["part"])
    long["position"] = long["part"].map(parts.index)            # stacked in the network's order
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("measure:N", title=None),
        x=alt.X("share:Q", stack="normalize", title="share of the network's FLOPs / of its wall time"),
        color=alt.Color("part:N", title="part of the network", sort=parts,
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=0)),
        order=alt.Order("position:Q"),
        tooltip=["part", alt.Tooltip("share:Q", format=".3f")]).properties(
        title="Share of FLOPs vs share of wall time per part", width=440, height=90)


def rate_sentence(breakdown: pd.DataFrame, compiled: bool) -> str:
    """Which block ran at the higher FLOP rate in :func:`breakdown_table`, in words."""
    rate = dict(zip(breakdown["part"], breakdown["GFLOP/s"]))
    b1, b2 = rate["block 1"], rate["block 2 + exit-2 head"]
    how = "the compiled kernel" if compiled else "the torch path"
    if b1 < b2:
        return (f"block 1 (as {how}) ran at {b1:.0f} GFLOP/s of useful FLOPs against {b2:.0f} for block 2: the part "
                f"that early exits remove was the more efficient one, {b2 / b1:.1f} times block 1's rate")
    return (f"block 1 (as {how}) ran at {b1:.0f} GFLOP/s of useful FLOPs against {b2:.0f} for block 2: the "
            f"always-run part was at least as efficient as the part that is skipped")
