"""Two specialised pathways? The confusion per tag, the hidden activation maps per digit, and what the
learned gate of the two-expert mixture of experts splits."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
import torch

from mpnn.runtime import plots
from mpnn.tagnet.stacked_nets import StackedNets


def confusion_per_tag(nets: StackedNets, models: Sequence[int], XT, YT):
    """Row-normalised confusion of each parity's test digits routed by their true tag (seeds pooled),
    and the accuracy per seed routed to the own and to the other partition."""
    logits = nets.logits(XT, YT % 2, models=models)                                  # (S, n_test, 10)
    swapped = nets.logits(XT, 1 - YT % 2, models=models)
    pred, yt = logits.argmax(-1).cpu(), YT.cpu()
    conf = []
    for tag in (0, 1):
        sel = (yt % 2) == tag
        cm = sum(torch.bincount(yt[sel] * 10 + p[sel], minlength=100).view(10, 10).float() for p in pred)
        cm = cm / cm.sum(1, keepdim=True).clamp_min(1)
        conf += [{"tag": f"tag {tag} ({['even', 'odd'][tag]} digits)", "true digit": t, "predicted digit": p,
                  "share": float(cm[t, p])} for t in range(tag, 10, 2) for p in range(10)]
    own = (pred == yt).float().mean(1)
    cross = (swapped.argmax(-1).cpu() == yt).float().mean(1)
    return pd.DataFrame(conf), own, cross


def figure_confusion_per_tag(conf: pd.DataFrame) -> alt.TopLevelMixin:
    """:func:`confusion_per_tag`'s matrices, one panel per tag."""
    shown = conf.rename(columns={"tag": "test images routed by the tag of their true label",
                                 "share": "share of the true digit"})
    return plots.heatmap(shown, "predicted digit", "true digit", "share of the true digit",
                         facet="test images routed by the tag of their true label", scheme="blues", annotate=False,
                         fmt=".3f", width=220, height=140,
                         title="Confusion per tag (test, routed by the true label)").resolve_scale(y="independent")


def activation_maps(nets: StackedNets, model: int, XT, YT) -> pd.DataFrame:
    """Mean hidden activation (tag mask of the true label) per digit and grid position (x, y)."""
    act = nets.hidden(XT, models=[model])[0] * nets.masks[model][YT % 2]             # (n_test, 256)
    h = np.arange(nets.H)
    grid = int(round(nets.H ** 0.5))
    return pd.concat([pd.DataFrame({"digit": d, "x": h % grid, "y": h // grid,
                                    "activation": act[YT == d].mean(0).cpu().numpy().astype(float)})
                      for d in range(10)], ignore_index=True)


def figure_activation_maps(maps: pd.DataFrame) -> alt.TopLevelMixin:
    """:func:`activation_maps` drawn: one 16x16 map of the hidden grid per digit."""
    side = int(maps["x"].max()) + 1
    ticks = [0, side // 2, side - 1]                               # the odd half starts at side // 2
    axis = lambda title: alt.Axis(title=title, values=ticks, labelAngle=0)
    return alt.Chart(maps).mark_rect().encode(
        x=alt.X("x:O", axis=axis("hidden column")), y=alt.Y("y:O", axis=axis("hidden row")),
        color=alt.Color("activation:Q", title="mean activation", scale=alt.Scale(scheme="inferno")),
        tooltip=["digit", "x", "y", alt.Tooltip("activation:Q", format=".3f")]).properties(width=88, height=88).facet(
        facet=alt.Facet("digit:N", title="digit"), columns=5).properties(
        title=f"Mean hidden activation per digit ({side}x{side} grid; columns 0-{side // 2 - 1} = tag 0)")


def gate_split(moe: StackedNets, XT, YT):
    """Share of each digit sent to expert 1 per seed, and per seed: the agreement of the gate's split
    with parity (best labelling) and the share of images sent to expert 1."""
    choice, yt = moe.gate_choice(XT).cpu(), YT.cpu()                                # (S, n_test)
    share = pd.DataFrame([{"seed": s, "digit": d, "share to expert 1": float((choice[s][yt == d] == 1).float().mean())}
                          for s in range(moe.M) for d in range(10)])
    agree = [max(float((c == yt % 2).float().mean()), float((c != yt % 2).float().mean())) for c in choice]
    load = [float((c == 1).float().mean()) for c in choice]
    return share, agree, load
