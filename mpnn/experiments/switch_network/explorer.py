"""Explorer: edit the switch and the subset sizes (live, precomputed for the site), and its timing claim."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd
import torch

from mpnn import partition as P
from mpnn.data import demographics as D
from mpnn.infra import clock, determinism
from mpnn.runtime import plots

from .data import GROUP_ORDER, N_UNITS, NEURON_NAMES, SIZES, TRAIN, Recipe, route_of, rule_switch
from .figures import figure_heatmap, heat_chart, heat_frame
from .stacked import Stacked, accuracy, group_accuracy, replica_acts, routed, stack, test_people, train_switch_net


def explorer_update(neuron_of_group: Sequence[int], sizes: Sequence[int], sample_seed: int,
                    test: Stacked, recipe: Recipe) -> dict:
    """One explorer update: draw the subsets, train five neurons behind the user's table, evaluate.

    Returns the accuracy heatmap (neurons, cells), the in-distribution accuracy and the SI.
    """
    switch = rule_switch(neuron_of_group)
    train = stack([D.sample(recipe.world(), dict(zip(TRAIN, sizes)), sample_seed)], recipe.device, switch)
    acts = replica_acts(train_switch_net(train.X, train.Y, train.A, recipe), test.X)
    A = switch.assign_columns(band_columns(test.G[0]))[None].to(recipe.device)
    M = group_accuracy(acts, test.Y, test.G)[0].cpu()
    return {"accuracy": M, "si": float(P.specialization_index(M, route_of(neuron_of_group))),
            "accuracy_in_distribution": float(accuracy(routed(acts, A), test.Y, test.in_distribution)[0])}


def band_columns(cells: torch.Tensor) -> dict:
    """The band columns the switch reads, of people given by their cells (N,)."""
    bands = D.standard_world().groups
    cells = cells.cpu().numpy()
    return {"age_band": bands["age_band"].to_numpy()[cells], "income_band": bands["income_band"].to_numpy()[cells]}


def explorer_view(neuron_of_group: Sequence[int], sizes: Sequence[int], sample_seed: int,
                  test: Stacked, recipe: Recipe) -> alt.TopLevelMixin:
    """The explorer's chart: the accuracy heatmap of one update, titled with accuracy and SI."""
    res = explorer_update(neuron_of_group, sizes, sample_seed, test, recipe)
    return figure_heatmap(res["accuracy"], "accuracy",
                          f"accuracy {res['accuracy_in_distribution']:.3f}, SI {res['si']:.2f}",
                          scheme="redyellowgreen", domain=(0.3, 0.9), neuron_of_group=neuron_of_group)


def explorer_controls(sizes: Sequence[int] = SIZES) -> dict:
    """The explorer's ipywidgets: for each training group the neuron it trains, and its subset size."""
    import ipywidgets as W
    style = {"description_width": "160px"}
    pick = {f"neuron_{j}": W.Dropdown(options=[(n, i) for i, n in enumerate(NEURON_NAMES)], value=j,
                                      description=g[:22], style=style) for j, g in enumerate(TRAIN)}
    size = {f"size_{j}": W.IntSlider(value=s, min=0, max=200, step=5, description=f"size {j + 1}")
            for j, s in enumerate(sizes)}
    return pick | size


def explorer_renderer(sample_seed: int, test: Stacked, recipe: Recipe):
    """``render(neuron_0=.., .., size_4=..)`` for :func:`mpnn.runtime.widgets.controls_view`."""
    def render(**values):
        table = [values[f"neuron_{j}"] for j in range(N_UNITS)]
        return explorer_view(table, [values[f"size_{j}"] for j in range(N_UNITS)], sample_seed, test, recipe)
    return render


EXPLORER_TABLES = {"the document's": [0, 1, 2, 3, 4], "shifted by one": [1, 2, 3, 4, 0],
                   "neurons 1 and 2 swapped": [1, 0, 2, 3, 4], "reversed": [4, 3, 2, 1, 0]}
EXPLORER_SCALES = [0.25, 0.5, 1.0, 2.0, 4.0]


def explorer_grid(sample_seed: int, test: Stacked, recipe: Recipe, tables: dict = EXPLORER_TABLES,
                  scales: Sequence[float] = EXPLORER_SCALES) -> pd.DataFrame:
    """Every setting of the site explorer, precomputed: for each switch table and each factor on
    the document's subset sizes, one :func:`explorer_update` as a :func:`heat_frame` (with the
    setting's columns and a ``summary`` in words)."""
    frames = []
    for name, table in tables.items():
        for scale in scales:
            sizes = [max(1, round(n * scale)) for n in SIZES]
            res = explorer_update(table, sizes, sample_seed, test, recipe)
            frame = heat_frame(res["accuracy"], "accuracy", table)
            frames.append(frame.assign(**{"switch table": name, "subset sizes x": float(scale),
                                          "summary": f"{name} table, subset sizes {sizes}: accuracy "
                                                     f"{res['accuracy_in_distribution']:.3f}, SI {res['si']:.2f}"}))
    return pd.concat(frames, ignore_index=True)


def figure_explorer_site(grid: pd.DataFrame) -> alt.TopLevelMixin:
    """The site explorer: one dropdown picks the switch table, another the factor on the subset
    sizes; the precomputed heatmap of that setting is drawn (:func:`mpnn.runtime.plots.bound`).
    Both controls offer exactly the grid's values (a slider would offer factors in between that
    were never computed)."""
    chart = heat_chart(grid, "accuracy", "", scheme="redyellowgreen", domain=(0.3, 0.9))
    first = f"datum.neuron == {NEURON_NAMES[0]!r} && datum.group == {GROUP_ORDER[0]!r}"
    summary = alt.Chart(grid).transform_filter(first).mark_text(
        align="left", baseline="bottom", fontWeight="bold").encode(x=alt.value(0), y=alt.value(-8), text="summary:N")
    layered = alt.layer(chart, summary).properties(title=alt.TitleParams("Accuracy per neuron and group", offset=24))
    return plots.bound(layered, grid, {"switch table": {"kind": "dropdown", "value": "the document's"},
                                       "subset sizes x": {"kind": "dropdown", "name": "factor on the subset sizes",
                                                          "value": 1.0}})


def explorer_retrain_claim(*, sample_seed: int, test_seed: int, steps: int, lr: float, l2: float,
                           heterogeneity: float, test_per_group: int, repeats: int = 5,
                           limit_s: float = 1.0, device: str = "cpu") -> dict:
    """Timing claim "edit the switch, retrain in under a second", on one CPU thread.

    Times :func:`explorer_update` with the document's table and subset sizes (draw the subsets,
    train five neurons, evaluate on the test people of run ``test_seed``): the median of
    ``repeats`` calls after one warm-up. Passed when the median is below ``limit_s``.
    """
    recipe = Recipe(steps=steps, lr=lr, l2=l2, heterogeneity=heterogeneity, test_per_group=test_per_group,
                    device=device)
    test = stack([test_people(test_seed, recipe)], device)
    update = lambda: explorer_update(range(N_UNITS), SIZES, sample_seed, test, recipe)
    with determinism.cpu_threads(1, device):
        seconds = clock.median(clock.interleaved_samples({"update": update}, repeats=repeats)["update"])
    return {"passed": seconds < limit_s, "seconds": seconds,
            "measured": f"one explorer update (sample, train 5 neurons, evaluate) took {seconds * 1000:.0f} ms "
                        f"(median of {repeats})"}
