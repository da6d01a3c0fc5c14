"""The explorer: one test image routed three ways, live (ipywidgets) and on the site (precomputed grid)."""
from __future__ import annotations

import base64

import altair as alt
import numpy as np
import pandas as pd
import torch

from mpnn.runtime import plots
from mpnn.switch import LearnedSwitch
from mpnn.tagnet import TagNet, TwoExpertMoE


class DigitExplorer:
    """One test image routed three ways through the first seed's networks: the true label's tag
    (the document), the parity router's tag, and the MoE gate's expert."""

    def __init__(self, XT, YT, faithful: TagNet, router: LearnedSwitch, moe: TwoExpertMoE):
        self.XT, self.YT, self.net, self.router, self.moe = XT, YT, faithful, router, moe

    @torch.no_grad()
    def describe(self, i: int) -> dict:
        x, label = self.XT[i:i + 1], int(self.YT[i])
        rtag = int(self.router.scores(x).argmax(-1))
        tag = lambda t: torch.tensor([t], device=x.device)
        return {"test index": i, "label": label, "true tag": label % 2, "router tag": rtag,
                "prediction (true tag)": int(self.net(x, tags=tag(label % 2)).argmax()),
                "prediction (router)": int(self.net(x, tags=tag(rtag)).argmax()),
                "prediction (all active)": int(self.net(x).argmax()),
                "MoE expert": int(self.moe.expert(x)), "prediction (MoE)": int(self.moe(x).argmax())}

    def image_of(self, index: int, digit: int) -> int:
        """Test index of the ``index``-th image of ``digit`` (-1: of any digit)."""
        pool = torch.arange(len(self.YT)) if digit < 0 else (self.YT.cpu() == digit).nonzero().flatten()
        return int(pool[index % len(pool)])

    @torch.no_grad()
    def activation_chart(self, i: int, tag: int) -> alt.Chart:
        a = self.net.activations(self.XT[i:i + 1])[0] * self.net.switch.table[tag]
        h = np.arange(len(a))
        grid = int(round(len(a) ** 0.5))
        df = pd.DataFrame({"x": h % grid, "y": h // grid, "activation": a.cpu().numpy()})
        return plots.heatmap(df, "x", "y", "activation", scheme="inferno", annotate=False, width=160, height=160,
                             title=f"hidden activations, tag {tag}")

    def render(self, index: int, digit: int, hidden_map: str) -> str:
        """HTML: the image, the routing table, and the hidden map under the true or the router's tag."""
        import vl_convert as vlc
        i = self.image_of(index, digit)
        info = self.describe(i)
        tag = info["true tag"] if hidden_map == "true" else info["router tag"]
        png = base64.b64encode(plots.image_grid(self.XT[i].view(1, 28, 28).cpu().numpy(), columns=1, scale=3))
        svg = vlc.vegalite_to_svg(self.activation_chart(i, tag).to_dict())
        table = pd.DataFrame([info]).T.rename(columns={0: "value"}).to_html()
        return f"<img src='data:image/png;base64,{png.decode()}'/>{table}{svg}"

    @torch.no_grad()
    def site_grid(self) -> pd.DataFrame:
        """Every setting of the site explorer, precomputed: the first test image of each digit, its
        hidden activation map (16x16 grid) under the true label's tag and under the router's tag,
        and (in the first cell of each map) a summary of how it was routed and predicted."""
        frames = []
        for d in range(10):
            i = self.image_of(0, d)
            info = self.describe(i)
            hidden = self.net.activations(self.XT[i:i + 1])[0]
            for name, tag in (("true tag", info["true tag"]), ("router", info["router tag"])):
                mask = self.net.switch.table[tag].cpu().numpy() > 0
                a = (hidden.cpu().numpy() * mask).round(3)
                h = np.arange(len(a))
                grid = int(round(len(a) ** 0.5))
                keep = mask | (h == 0)      # the inactive half is left blank (and keeps the rows < 5,000)
                summary = (f"digit {d} (test image {i}): tag {tag} ({name}); prediction {info['prediction (true tag)']} "
                           f"with the true tag, {info['prediction (router)']} with the router's, MoE expert "
                           f"{info['MoE expert']} predicts {info['prediction (MoE)']}")
                frames.append(pd.DataFrame({"digit": d, "hidden map": name, "x": h % grid, "y": h // grid,
                                            "activation": a, "summary": np.where(h == 0, summary, "")})[keep])
        return pd.concat(frames, ignore_index=True)

    def site_view(self) -> alt.TopLevelMixin:
        """The site explorer: a dropdown picks the digit, radio buttons the tag whose half is active."""
        grid = self.site_grid()
        side = list(range(int(grid["x"].max()) + 1))
        heat = alt.Chart(grid).mark_rect().encode(
            x=alt.X("x:O", scale=alt.Scale(domain=side), title="hidden unit (column)"),
            y=alt.Y("y:O", scale=alt.Scale(domain=side), title="hidden unit (row)"),
            color=alt.Color("activation:Q", scale=alt.Scale(scheme="inferno",
                                                            domain=[0.0, float(grid["activation"].max()) or 1.0])),
            tooltip=["x", "y", alt.Tooltip("activation:Q", format=".3f")]).properties(width=260, height=260)
        summary = alt.Chart(grid).transform_filter("datum.summary != ''").mark_text(
            align="left", baseline="bottom", fontWeight="bold").encode(x=alt.value(0), y=alt.value(-8), text="summary:N")
        chart = alt.layer(heat, summary).properties(title=alt.TitleParams("Hidden activations of the routed image",
                                                                          offset=24))
        return plots.bound(chart, grid, {"digit": "dropdown", "hidden map": {"kind": "radio", "value": "true tag"}})

    def first_of_each_digit(self) -> str:
        """Static view: the routing table of the first test image of each digit."""
        rows = [self.describe(self.image_of(0, d)) for d in range(10)]
        return "<p>The first test image of each digit:</p>" + pd.DataFrame(rows).to_html(index=False)


def explorer_controls(n_test: int) -> dict:
    """The explorer's controls: digit, n-th image of it, which tag's hidden map."""
    import ipywidgets as W
    return {"digit": W.Dropdown(options=[("any", -1)] + [(str(d), d) for d in range(10)], value=-1,
                                description="digit"),
            "index": W.IntSlider(value=0, min=0, max=n_test - 1, description="n-th image"),
            "hidden_map": W.ToggleButtons(options=[("true tag", "true"), ("router", "router")],
                                          description="hidden map")}
