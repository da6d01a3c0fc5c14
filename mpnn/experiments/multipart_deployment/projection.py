"""The many-server projection from stated hardware assumptions (:mod:`mpnn.deploy.cost`)."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from mpnn.deploy.cost import Hardware, project


def projection(width: int, layers: int, batch: int, hw: Hardware = Hardware()) -> dict:
    """:func:`mpnn.deploy.cost.project` over P = 1..2048 servers (45 log-spaced points) and at the
    fewest servers whose memory holds the model; ``table`` holds the curves of the figure."""
    Ps = np.unique(np.logspace(0, 11, 45, base=2).round().astype(int))
    pr = project(width, layers, batch, Ps, hw)
    table = pd.concat([pd.DataFrame({"servers": Ps, "seconds per step": pr["neuron_wise_s"], "split": "neuron-wise"}),
                       pd.DataFrame({"servers": Ps, "seconds per step": pr["layer_wise_s"], "split": "layer-wise"}),
                       pd.DataFrame({"servers": Ps, "seconds per step": pr["single_s"] / Ps,
                                     "split": "compute only (ideal)"})])
    table = table[~((table.split == "layer-wise") & (table.servers > layers))]
    need = pr["min_servers"]
    return {"curves": pr, "table": table, "need": need, "at_need": project(width, layers, batch, np.array([need]), hw),
            "best": int(Ps[np.argmin(pr["neuron_wise_s"])]), "hw": hw}


def projection_summary(proj: dict) -> str:
    pr, at, need, best = proj["curves"], proj["at_need"], proj["need"], proj["best"]
    return (f"{pr['params'] / 1e9:.0f} B parameters need >= {need} servers of {proj['hw'].memory_B / 1e9:.0f} GB; "
            f"at P = {need}: neuron-wise {at['neuron_wise_s'][0]:.1f} s/step of which communication "
            f"{at['neuron_comm_s'][0]:.1f} s; layer-wise {at['layer_wise_s'][0]:.1f} s/step; the neuron-wise "
            f"optimum is P = {best} ({pr['neuron_wise_s'].min():.2f} s/step, ideal {pr['single_s'] / best:.2f} s)")


def figure_projection(proj: dict) -> alt.LayerChart:
    """Projected step time against servers (log-log), with a rule at the fewest servers that hold the model."""
    line = alt.Chart(proj["table"]).mark_line().encode(
        x=alt.X("servers:Q", scale=alt.Scale(type="log"), title="servers P"),
        y=alt.Y("seconds per step:Q", scale=alt.Scale(type="log"), title="seconds per step"),
        color=alt.Color("split:N", title="split"), strokeDash=alt.StrokeDash("split:N", title="split"))
    rule = alt.Chart(pd.DataFrame({"servers": [proj["need"]]})).mark_rule(color="red").encode(x="servers:Q")
    return (line + rule).properties(title=f"Projected step time, {proj['curves']['params'] / 1e9:.0f} B-parameter MLP "
                                          "(red: fewest servers whose memory holds it)", width=480, height=300)
