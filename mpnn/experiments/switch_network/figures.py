"""The chapter's figures: neurons x groups heatmaps, bars and curves with 95% CIs."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd
import torch

from mpnn.runtime import plots

from .data import GROUP_ORDER, GROUPS, N_UNITS, NEURON_NAMES, OOD, TRAIN


def heat_frame(M: torch.Tensor, value: str, neuron_of_group: Sequence[int] = range(N_UNITS)) -> pd.DataFrame:
    """Long form of a (neurons, cells) matrix; ``trained on`` marks each group's neuron (and OOD cells)."""
    own = {g: int(u) for g, u in zip(TRAIN, neuron_of_group)}
    return pd.DataFrame([{"neuron": NEURON_NAMES[i], "group": g, value: float(M[i, GROUPS.index(g)]),
                          "trained on": "yes" if own.get(g) == i else ("OOD" if g in OOD else "")}
                         for i in range(M.shape[0]) for g in GROUP_ORDER])


def figure_heatmap(M: torch.Tensor, value: str, title: str, *, scheme: str = "viridis",
                   domain: tuple[float, float] | None = None,
                   neuron_of_group: Sequence[int] = range(N_UNITS)) -> alt.LayerChart:
    """Neurons x groups heatmap of ``M`` (neurons, cells), annotated, the neuron's own subset boxed red."""
    return heat_chart(heat_frame(M, value, neuron_of_group), value, title, scheme=scheme, domain=domain)


def heat_chart(df: pd.DataFrame, value: str, title: str, *, scheme: str = "viridis",
               domain: tuple[float, float] | None = None) -> alt.LayerChart:
    """The chart of :func:`figure_heatmap` from a :func:`heat_frame` (or several of them, stacked)."""
    base = alt.Chart(df).encode(
        x=alt.X("group:N", sort=GROUP_ORDER, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=220)),
        y=alt.Y("neuron:N", sort=NEURON_NAMES, title=None))
    scale = alt.Scale(scheme=scheme, domain=list(domain), clamp=True) if domain else alt.Scale(scheme=scheme)
    rect = base.mark_rect().encode(color=alt.Color(f"{value}:Q", scale=scale),
                                   tooltip=["neuron", "group", alt.Tooltip(f"{value}:Q", format=".2f"), "trained on"])
    lo, hi = domain if domain else (float(df[value].min()), float(df[value].max()))
    t = f"(datum[{value!r}] - {lo}) / {(hi - lo) or 1}"           # the value's place on the colour scale
    dark = {"redyellowgreen": f"{t} < 0.2 || {t} > 0.8", "viridis": f"{t} < 0.5", "blues": f"{t} > 0.6"}.get(scheme)
    ink = alt.condition(dark, alt.value("white"), alt.value("black")) if dark else alt.value("black")
    text = base.mark_text(fontSize=10).encode(text=alt.Text(f"{value}:Q", format=".2f"), color=ink)
    box = base.transform_filter("datum['trained on'] == 'yes'").mark_rect(fill=None, stroke="red", strokeWidth=2)
    return (rect + text + box).properties(title=title, width=430, height=200)


def figure_bars(summary: pd.DataFrame, label: str, *, title: str = "", value_title: str = "accuracy",
                color: str | None = None, color_title: str | None = None, labels: bool = True,
                width: int = 320) -> alt.LayerChart:
    """Horizontal bars of the mean with 95% CI error bars (a :func:`mpnn.runtime.stats.summarise`
    frame), one row per ``label`` in the frame's order, so long labels read without rotation."""
    y = alt.Y(f"{label}:N", sort=None, title=None,
              axis=alt.Axis(labelLimit=260) if labels else alt.Axis(labels=False, ticks=False))
    tooltip = [label, alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
               alt.Tooltip("high:Q", format=".3f")]
    enc = {"color": alt.Color(f"{color}:N", title=color_title or color, sort=None)} if color else {}
    bars = alt.Chart(summary).mark_bar(opacity=0.8).encode(
        y=y, x=alt.X("mean:Q", title=value_title), tooltip=tooltip, **enc)
    err = alt.Chart(summary).mark_errorbar(color="black").encode(y=y, x=alt.X("low:Q", title=value_title), x2="high:Q")
    return (bars + err).properties(title=title, width=width, height=alt.Step(24))


def figure_collective(summary: pd.DataFrame) -> alt.LayerChart:
    """Accuracy of every method (mean, 95% CI over seeds) on unseen people of the training groups,
    and of the switch network on its own training samples, coloured by the test people."""
    seen = summary.split.str.startswith("seen")
    df = summary.assign(method=summary.method.where(~seen, summary.method + ", own training samples"))
    return figure_bars(df, "method", title="Collective accuracy, mean and 95% CI over seeds",
                       color="split", color_title="test people")


def figure_misalignment(summary: pd.DataFrame) -> alt.HConcatChart:
    """Accuracy and specialisation index (mean, 95% CI) of every switch, side by side (the rows of
    the two panels are the same switches, labelled once)."""
    return alt.hconcat(*[figure_bars(summary[summary.metric == m], "switch", title=m, value_title=m,
                                     labels=i == 0, width=230)
                         for i, m in enumerate(["accuracy", "specialisation index"])])


def figure_curve(summary: pd.DataFrame, x: str, color: str | None = None, *, log_x: bool = True,
                 **kwargs) -> alt.LayerChart:
    """:func:`mpnn.runtime.plots.line_ci` with one x tick at every value the run measured (a log
    axis would otherwise crowd its labels or label values that were never run); ``kwargs`` go to
    ``line_ci`` (x_title, y_title, title)."""
    chart = plots.line_ci(summary, x, color, log_x=log_x, **kwargs)
    ticks = sorted(summary[x].unique().tolist())
    lo, hi = ticks[0], ticks[-1]
    margin = (hi - lo) * 0.04 or 1
    domain = [lo / 1.2, hi * 1.2] if log_x else [lo - margin, hi + margin]     # the end points off the frame
    for layer in chart.layer:
        layer.encoding.x.axis = alt.Axis(values=ticks, format=",", grid=True)
        layer.encoding.x.scale = alt.Scale(type="log" if log_x else "linear", domain=domain, nice=False)
    return chart
