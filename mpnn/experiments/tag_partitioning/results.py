"""The faithful replication against the reported numbers: every network's accuracy under each routing,
the summaries, the table against the document and the test-accuracy figure."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import torch

from mpnn.runtime import plots, stats
from mpnn.tagnet.stacked_nets import StackedNets

from .training import models_of
from .variants import DOCUMENT, FAITHFUL, ORACLE


def _rows(variant, routing, split, accs, seeds_of) -> list[dict]:
    return [{"variant": variant, "routing": routing, "split": split, "seed": sd, "accuracy": float(a)}
            for a, sd in zip(accs, seeds_of)]


def local_results(nets: StackedNets, meta, XT, YT, router_tags: torch.Tensor) -> list[dict]:
    """Test accuracy of every local network routed three ways (one hidden pass)."""
    seed_of = torch.tensor([m["seed"] for m in meta])
    routings = {ORACLE: "tag", "all neurons active": "all", "learned parity router": router_tags[seed_of]}
    return [row for routing, accs in nets.accuracies(XT, YT, routings).items()
            for m, a in enumerate(accs) for row in _rows(meta[m]["variant"], routing, "test", [a], [meta[m]["seed"]])]


def faithful_split_results(nets: StackedNets, meta, X, Y, splits) -> list[dict]:
    """Train and validation accuracy of the faithful networks, each on its own seed's split."""
    faithful = models_of(meta, FAITHFUL)
    hits = nets.correct(X, Y, {"tag": "tag"}, models=faithful)["tag"]            # (n_seeds, 60000)
    rows = []
    for i, m in enumerate(faithful):
        sd = meta[m]["seed"]
        for split, idx in zip(("train", "validation"), splits[sd]):
            rows += _rows(FAITHFUL, ORACLE, split, [hits[i, idx].float().mean()], [sd])
    return rows


def control_results(others: dict[str, StackedNets], XT, YT, router_tags: torch.Tensor) -> list[dict]:
    """Test accuracy of the fully connected networks (three routings) and the MoE (its gate)."""
    rows = []
    for name, nets in others.items():
        if nets.moe:
            rows += _rows(name, "learned gate", "test", nets.accuracy(XT, YT, route="gate"), range(nets.M))
            continue
        accs = nets.accuracies(XT, YT, {ORACLE: "tag", "learned parity router": router_tags[:nets.M],
                                        "all neurons active": "all"})
        for routing, a in accs.items():
            rows += _rows(name, routing, "test", a, range(nets.M))
    return rows


def summary_pp(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% CI per (variant, routing, split), in percent."""
    summary = stats.summarise(results, ["variant", "routing", "split"], "accuracy", bounds=(0, 1))
    for c in ("mean", "low", "high"):
        summary[c] = 100 * summary[c]
    return summary


def faithful_table(results: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The faithful network against the document per split (mean, CI, seed spread, difference),
    and its test accuracies (%) per seed."""
    faith = results[(results.variant == FAITHFUL) & (results.routing == ORACLE)]
    table = []
    for split, reported in DOCUMENT.items():
        vals = 100 * faith[faith.split == split].accuracy.to_numpy()
        m, lo, hi = stats.mean_ci(vals, bounds=(0, 100))
        table.append({"split": split, "document (one Go run)": reported, "this book, mean": round(m, 2),
                      "95% CI": f"{lo:.2f}-{hi:.2f}", "CI half-width (pp)": round((hi - lo) / 2, 2),
                      "seed std (pp)": round(float(np.std(vals, ddof=1)), 2) if len(vals) > 1 else float("nan"),
                      "difference (pp)": round(m - reported, 2), "document inside the CI": bool(lo <= reported <= hi),
                      "seeds": len(vals)})
    return pd.DataFrame(table), 100 * faith[faith.split == "test"].accuracy.to_numpy()


def pct(summary: pd.DataFrame, variant: str, routing: str = ORACLE, split: str = "test") -> str:
    """``"83.78% (95% CI 83.46-84.10, n=10)"`` of one summary row."""
    r = summary[(summary.variant == variant) & (summary.routing == routing) & (summary.split == split)].iloc[0]
    return f"{r['mean']:.2f}% (95% CI {r['low']:.2f}-{r['high']:.2f}, n={int(r['n'])})"


def figure_test_accuracy(summary: pd.DataFrame) -> alt.LayerChart:
    """Test accuracy (mean, 95% CI over seeds) of every network under each routing, grouped by network, with
    the original code's reported value as a rule."""
    test = summary[summary.split == "test"].copy()
    test["network"] = test.variant + " (n=" + test.n.astype(str) + ")"
    order = list(dict.fromkeys(test["network"]))
    base = alt.Chart(test).encode(
        y=alt.Y("network:N", sort=order, title=None, axis=alt.Axis(labelLimit=0)),
        yOffset=alt.YOffset("routing:N"),
        color=alt.Color("routing:N", title="test images routed by",
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=0)))
    scale = alt.Scale(zero=False)
    bars = base.mark_bar(opacity=0.8).encode(
        x=alt.X("mean:Q", title="test accuracy (%)", scale=scale),
        tooltip=["variant", "routing", "n", alt.Tooltip("mean:Q", format=".2f"), alt.Tooltip("low:Q", format=".2f"),
                 alt.Tooltip("high:Q", format=".2f")])
    err = base.mark_errorbar(color="black").encode(x=alt.X("low:Q", title="test accuracy (%)", scale=scale),
                                                   x2="high:Q")
    chart = (bars + err).properties(width=280, height=alt.Step(9),
                                    title="Test accuracy, mean and 95% CI over seeds")
    return plots.with_rules(chart, x={f"document: {DOCUMENT['test']:.2f}%": DOCUMENT["test"]}, color="red")


def per_seed(results: pd.DataFrame, variant: str, routing: str = ORACLE, split: str = "test") -> np.ndarray:
    """Accuracies (%) of one (variant, routing, split), ordered by seed (paired across variants)."""
    r = results[(results.variant == variant) & (results.routing == routing) & (results.split == split)]
    return 100 * r.sort_values("seed").accuracy.to_numpy()
