"""Plans: which rank owns which neurons, the metadata each server keeps, and the plans a reader may try."""
from __future__ import annotations

import altair as alt
import pandas as pd

from mpnn.deploy.plan import Plan, PlanError, make_plan


def plans_for(sizes, world_sizes, strategies) -> list[Plan]:
    """Every (P, strategy) plan; a layer-wise plan needs a layer per rank, so larger P are skipped."""
    return [make_plan(s, sizes, P) for P in world_sizes for s in strategies
            if not (s == "layer" and P > len(sizes) - 1)]


def parameters_per_rank(plans: list[Plan]) -> pd.DataFrame:
    """Parameters (weights + biases) each rank stores, one row per strategy, one column per rank."""
    rows = [{"strategy": p.strategy, "rank": r, "parameters": n}
            for p in plans for r, n in enumerate(p.params_per_rank())]
    return (pd.DataFrame(rows).pivot(index="strategy", columns="rank", values="parameters")
            .rename(columns=lambda r: f"params on rank {r}"))


def _short_ranges(ranges: list[list[int]], shown: int = 4) -> str:
    """``[[0, 3], [7, 8]]`` -> ``"0-2, 7"`` (the first ``shown`` ranges, then the neuron count)."""
    text = ", ".join(f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in ranges[:shown])
    return text + (f", ... ({sum(b - a for a, b in ranges)} neurons)" if len(ranges) > shown else "")


def metadata_lines(plan: Plan, rank: int) -> list[str]:
    """:meth:`Plan.metadata` of ``rank`` as one line per layer: local IDs, remote IDs by owner, receivers."""
    meta = plan.metadata(rank)
    lines = []
    for l in range(1, plan.n_layers + 1):
        line = f"  layer {l}: local {_short_ranges(meta['local'].get(l, []))}"
        for p, ranges in meta["remote"].get(l, {}).items():
            line += f" | reads from rank {p}: {_short_ranges(ranges)}"
        lines.append(line + f" | sends to ranks {meta['send_to'].get(l, [])}")
    return lines


def figure_ownership(plans: list[Plan]) -> alt.FacetChart:
    """One band per layer, one panel per strategy: the owner rank of every neuron (binned)."""
    own = pd.DataFrame([{"strategy": p.strategy, "layer": l, "neuron": j, "rank": r}
                        for p in plans for l in range(1, p.n_layers + 1)
                        for j, r in enumerate(p.owner[l - 1].tolist())])
    return alt.Chart(own).mark_rect().encode(
        x=alt.X("neuron:Q", bin=alt.Bin(maxbins=128), title="neuron index within the layer"),
        y=alt.Y("layer:O"), color=alt.Color("rank:N", title="owner rank"),
    ).properties(width=520, height=90).facet(row=alt.Row("strategy:N", title=None)).properties(
        title=f"Which rank owns each neuron ({plans[0].world_size} ranks)")


def try_plans(makers: dict) -> pd.DataFrame:
    """Build every plan of ``{description: zero-arg maker}``; the error each one raised (all should)."""
    rows = []
    for what, make in makers.items():
        try:
            make()
            error = "ACCEPTED (bug)"
        except PlanError as err:
            error = str(err)
        rows.append({"invalid plan": what, "error": error})
    return pd.DataFrame(rows)
