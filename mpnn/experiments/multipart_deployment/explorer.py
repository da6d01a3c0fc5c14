"""The explorer's traffic tables: bytes per rank for every plan, precomputed for the site."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from mpnn.deploy.cost import volume
from mpnn.deploy.plan import PlanError, make_plan
from mpnn.runtime import plots

from .plans import plans_for


def volume_table(sizes, strategies, batch_size: int, P_max: int = 8) -> pd.DataFrame:
    """The volume model's kB per training step (forward + backward, float32) per strategy, P = 2..P_max."""
    plans = [p for s in strategies for p in plans_for(sizes, range(2, P_max + 1), [s])]
    return pd.DataFrame([{"strategy": p.strategy, "ranks": p.world_size,
                          "kB per step": (sum(v["fwd_bytes"]) + sum(v["bwd_bytes"])) / 1e3}
                         for p in plans for v in [volume(p, batch_size, 4)]])


def figure_volume(table: pd.DataFrame) -> alt.Chart:
    return alt.Chart(table).mark_line(point=True).encode(
        x=alt.X("ranks:Q", title="ranks P"), y="kB per step:Q", color="strategy:N",
        tooltip=["strategy", "ranks", alt.Tooltip("kB per step:Q", format=".1f")],
    ).properties(title="Volume model: bytes per training step against P", width=420, height=260)


def rank_traffic(strategy: str, ranks: int, *, sizes, batch_size: int):
    """One plan, built without processes: neurons, parameters, kB sent and messages per rank and step
    (raises :class:`~mpnn.deploy.plan.PlanError`, a ``ValueError``, when the plan cannot be made)."""
    plan = make_plan(strategy, sizes, ranks)
    v = volume(plan, batch_size, 4)
    return pd.DataFrame({"rank": range(plan.world_size), "neurons": plan.neurons_per_rank(),
                         "parameters": plan.params_per_rank(),
                         "kB sent forward": np.array(v["fwd_bytes"]) / 1e3,
                         "kB sent backward": np.array(v["bwd_bytes"]) / 1e3,
                         "messages": np.array(v["fwd_msgs"]) + np.array(v["bwd_msgs"])}).style.hide(axis="index")


def traffic_grid(sizes, strategies, batch_size: int, P_max: int = 8) -> pd.DataFrame:
    """:func:`rank_traffic` of every strategy and P = 2..P_max as one tidy table (the site explorer's grid):
    one row per (strategy, ranks, rank, direction) with the kB that rank sends per training step."""
    rows = []
    for strategy in strategies:
        for P in range(2, P_max + 1):
            try:
                t = rank_traffic(strategy, P, sizes=sizes, batch_size=batch_size).data
            except PlanError:
                continue
            for _, r in t.iterrows():
                for direction in ("forward", "backward"):
                    rows.append({"strategy": strategy, "ranks": P, "rank": int(r["rank"]), "direction": direction,
                                 "kB sent": float(r[f"kB sent {direction}"]), "messages": int(r["messages"])})
    return pd.DataFrame(rows)


def figure_traffic_site(grid: pd.DataFrame) -> alt.TopLevelMixin:
    """The traffic explorer for the static site: a strategy dropdown and a rank-count slider choose the
    plan; bars show the kB each rank sends per step, forward and backward stacked."""
    chart = alt.Chart(grid).mark_bar().encode(
        x=alt.X("rank:O", title="rank"), y=alt.Y("kB sent:Q", title="kB sent per training step", stack=True),
        color=alt.Color("direction:N", title="direction"),
        tooltip=["strategy", "ranks", "rank", "direction", alt.Tooltip("kB sent:Q", format=".1f"), "messages"],
    ).properties(title="Bytes each rank sends per training step", width=420, height=260)
    return plots.bound(chart, grid, {"strategy": {"kind": "dropdown", "name": "strategy", "value": "count"},
                                     "ranks": {"kind": "slider", "name": "ranks", "value": 3}})
