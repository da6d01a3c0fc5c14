"""Tag partitioning (the note on tag-partitioned training): the chapter's data, variants, routers, tables and figures.

The mechanisms are :mod:`mpnn.tagnet` (the tag-partitioned network, eq. (1)-(2)),
:mod:`mpnn.tagnet.stacked_nets` (many networks stacked; batched routed inference) and
:mod:`mpnn.tagnet.stacked_sgd` (their per-sample SGD in lock-step). Here: the document's data split, the
variants the chapter trains, the learned parity routers (trained with :func:`mpnn.infra.train.fit`), the
result tables, the figures and the explorer of ``book/tag_partitioning.ipynb``.
"""
from __future__ import annotations

import base64
import time
from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mpnn.data import load_mnist
from mpnn.data.mnist import to_tensor
from mpnn.infra import train
from mpnn.runtime import plots, stats, verdicts
from mpnn.switch import LearnedSwitch
from mpnn.tagnet import PARITY, TagNet, TwoExpertMoE, make_schedule, partition_groups
from mpnn.tagnet.local import LocallyConnected
from mpnn.tagnet.stacked_nets import StackedNets
from mpnn.tagnet.stacked_sgd import StackedSGD

DOCUMENT = {"train": 83.65, "validation": 82.55, "test": 83.69}     # the original code: one Go run, true-label routing
ORACLE = "true-label tag (document)"
FAITHFUL = "tag partition, blocked"
CENTRED = "grid centred on the image (offset 6), tag partition, blocked"
FULLY_CONNECTED = "fully connected, tag partition, blocked"
MOE = "two-expert MoE, learned gate"
VARIANTS = {   # name: (TagNet arguments, sample order)
    FAITHFUL: ({}, "blocked"),
    "tag partition, interleaved": ({}, "interleaved"),
    "no partition, blocked": ({"partitioned": False}, "blocked"),
    "no partition, interleaved": ({"partitioned": False}, "interleaved"),
    "tag partition, blocked, hidden fan-in 784": ({"hidden_fan_in": 784}, "blocked"),
    CENTRED: ({"offset": 6}, "blocked"),
}
CURVE_VARIANTS = list(VARIANTS)[:5]          # the variants of the forgetting curve


# ------------------------------------------------------------------ data

def load_data(n_test: int, device) -> tuple[torch.Tensor, ...]:
    """MNIST scaled to [0, 1]: X (60000, 784), Y, and the first ``n_test`` test images XT, YT."""
    train_images, train_labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    X = to_tensor(train_images, scale="unit", device=device)
    XT = to_tensor(test_images[:n_test], scale="unit", device=device)
    return X, train_labels.to(device), XT, test_labels[:n_test].to(device)


def split_indices(n: int = 60000, n_train: int = 48000, *, seed: int = 0,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train/validation split of ``range(n)`` (PARAGON ``SplitDataset``: a permutation,
    the first ``n_train`` for training, in that permuted order)."""
    if not 0 < n_train <= n:
        raise ValueError(f"n_train must be in 1..{n}, got {n_train}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train].to(device), perm[n_train:].to(device)


def seed_splits(seeds: Sequence[int], n_train: int, n_val: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each seed's 48,000/12,000 split, cut to its first ``n_train`` / ``n_val`` samples."""
    splits = [split_indices(60000, 48000, seed=s, device=device) for s in seeds]
    return [(tr[:n_train], va[:n_val]) for tr, va in splits]


# ------------------------------------------------------------------ what the grid sees

def field_of_view(X: torch.Tensor) -> tuple[pd.DataFrame, int, float]:
    """Per partition and input pixel: how many hidden neurons see it, and the mean ink of the first
    5,000 training digits there; also the number of pixels any neuron sees and their share of the ink."""
    conn = LocallyConnected().connectivity().float()                        # (256, 784)
    mean_digit = X[:5000].mean(0).cpu()
    frames = [pd.DataFrame({"partition": part, "row": np.arange(784) // 28, "col": np.arange(784) % 28,
                            "neurons seeing the pixel": conn[units].sum(0).numpy().astype(float),
                            "mean ink": mean_digit.numpy().astype(float)})
              for part, units in zip(("tag 0 (even) partition", "tag 1 (odd) partition"),
                                     partition_groups().values())]
    seen = conn.any(0)
    return pd.concat(frames, ignore_index=True), int(seen.sum()), float((mean_digit * seen).sum() / mean_digit.sum())


def figure_field_of_view(view: pd.DataFrame) -> alt.FacetChart:
    """Receptive field of each partition (orange) over the average digit (grey)."""
    base = alt.Chart(view).encode(x=alt.X("col:O", axis=None), y=alt.Y("row:O", axis=None))
    ink = base.mark_rect().encode(color=alt.Color("mean ink:Q", scale=alt.Scale(scheme="greys"), legend=None))
    seen = base.transform_filter("datum['neurons seeing the pixel'] > 0").mark_rect(opacity=0.45).encode(
        color=alt.Color("neurons seeing the pixel:Q", scale=alt.Scale(scheme="oranges")))
    return (ink + seen).properties(width=200, height=200).facet(
        column=alt.Column("partition:N", title=None)).properties(
        title="Receptive field of each partition (orange) over the average training digit (grey)")


# ------------------------------------------------------------------ the networks

def local_networks(seeds: Sequence[int], n_seeds: int, variant_seeds: int) -> tuple[list[TagNet], list[dict]]:
    """Every locally connected network of :data:`VARIANTS` (``n_seeds`` faithful, ``variant_seeds``
    of each control) and its ``{"variant", "seed", "order"}``."""
    models, meta = [], []
    for name, (kwargs, order) in VARIANTS.items():
        for sd in range(n_seeds if name == FAITHFUL else variant_seeds):
            models.append(TagNet(**kwargs, generator=torch.Generator().manual_seed(seeds[sd])))
            meta.append({"variant": name, "seed": sd, "order": order})
    return models, meta


def models_of(meta: Sequence[dict], variant: str) -> list[int]:
    """Indices of the networks of ``variant``."""
    return [m for m, info in enumerate(meta) if info["variant"] == variant]


def local_schedule(Y: torch.Tensor, splits, meta: Sequence[dict], epochs: int) -> torch.Tensor:
    """(T, M): every network's ``epochs`` passes over its seed's training split, in its order."""
    return make_schedule(Y, [splits[m["seed"]][0] for m in meta], [m["order"] for m in meta], epochs)


class EvenDigitCurve:
    """Callback of :meth:`StackedSGD.fit`: the accuracy on the even digits among the first ``n_curve``
    validation images of each seed, for that seed's networks of :data:`CURVE_VARIANTS`."""

    def __init__(self, nets: StackedNets, X, Y, splits, meta, *, n_curve: int, n_train: int):
        self.nets, self.meta, self.n_train, self.rows, self.sets = nets, meta, n_train, [], {}
        for sd, (_, va) in enumerate(splits):
            idx = va[:n_curve]
            idx = idx[Y[idx] % 2 == 0]
            own = [m for m, info in enumerate(meta) if info["seed"] == sd and info["variant"] in CURVE_VARIANTS]
            if own:
                self.sets[sd] = (X[idx], Y[idx], own)

    def __call__(self, step: int) -> None:
        for xs, ys, own in self.sets.values():
            for m, a in zip(own, self.nets.accuracy(xs, ys, models=own)):
                self.rows.append(self.meta[m] | {"step": step, "epoch": step / self.n_train, "digits": "even",
                                                 "accuracy": float(a)})


def train_local(engine: StackedSGD, schedule: torch.Tensor, curve: EvenDigitCurve, every: int) -> float:
    """Train the local networks, recording the curve at step 0 and every ``every`` steps; seconds."""
    start = time.perf_counter()
    curve(0)
    engine.fit(schedule, every=every, callback=curve, progress="local networks")
    return time.perf_counter() - start


def control_engines(X, Y, seeds, splits, *, variant_seeds: int, epochs: int, fully_connected: bool,
                    lr: float, clip: float, device) -> dict[str, tuple[StackedSGD, torch.Tensor]]:
    """The fully connected networks (document's partition and order; if ``fully_connected``) and the
    two-expert MoE (interleaved order: it does not use the tag), with their schedules."""
    train_sets = [tr for tr, _ in splits[:variant_seeds]]
    gen = lambda s: torch.Generator().manual_seed(s)
    builds = {MOE: ([TwoExpertMoE(generator=gen(s)) for s in seeds[:variant_seeds]], "interleaved")}
    if fully_connected:
        builds = {FULLY_CONNECTED: ([TagNet(connectivity="full", generator=gen(s)) for s in seeds[:variant_seeds]],
                                    "blocked")} | builds
    return {name: (StackedSGD(models, X, Y, lr=lr, clip=clip, device=device),
                   make_schedule(Y, train_sets, [order] * variant_seeds, epochs))
            for name, (models, order) in builds.items()}


def train_engines(engines: dict[str, tuple[StackedSGD, torch.Tensor]]) -> dict[str, float]:
    """Train each engine on its schedule; seconds per engine."""
    seconds = {}
    for name, (engine, schedule) in engines.items():
        start = time.perf_counter()
        engine.fit(schedule, progress=name)
        seconds[name] = time.perf_counter() - start
    return seconds


# ------------------------------------------------------------------ learned parity routers

class StackedGates(nn.Module):
    """R linear gates ``s_r = W_r x + b_r`` side by side: W (R, T, P) drawn N(0, 0.01^2) from a
    generator seeded with ``seeds[r]``, b (R, T) zero. ``forward``: x (R, B, P) -> (R, B, T)."""

    def __init__(self, n_inputs: int, n_tags: int, seeds: Sequence[int]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([torch.randn(n_tags, n_inputs, generator=torch.Generator().manual_seed(s))
                                                * 0.01 for s in seeds]))
        self.bias = nn.Parameter(torch.zeros(len(seeds), n_tags))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias[:, None, :], x, self.weight.transpose(1, 2))

    def switches(self) -> list[LearnedSwitch]:
        """One :class:`mpnn.switch.LearnedSwitch` (hard top-1) per gate, holding its weights."""
        out = []
        for W, b in zip(self.weight.detach(), self.bias.detach()):
            sw = LearnedSwitch(W.shape[1], W.shape[0], mode="topk", k=1).to(W.device)
            with torch.no_grad():
                sw.gate.weight.copy_(W)
                sw.gate.bias.copy_(b)
            out.append(sw.eval())
        return out


def train_routers(X: torch.Tensor, tags: torch.Tensor, train_idxs: Sequence[torch.Tensor], *,
                  seeds: Sequence[int], epochs: int = 5, batch: int = 128, lr: float = 0.1,
                  n_tags: int = 2, progress: str | None = None) -> list[LearnedSwitch]:
    """One linear router per training set, trained to predict the tag, all in one :func:`mpnn.infra.train.fit`.

    Router ``r`` sees ``X[train_idxs[r]]`` in the order of seed ``seeds[r]`` (momentum SGD 0.9 on
    the mean cross-entropy of ``softmax(s)`` against ``tags``); route with ``scores(x).argmax(-1)``.
    """
    if len(train_idxs) != len(seeds) or not len(seeds):
        raise ValueError("need one seed per training set")
    n = len(train_idxs[0])
    if any(len(i) != n for i in train_idxs):
        raise ValueError("every training set must have the same number of samples")
    gates = StackedGates(X.shape[1], n_tags, seeds).to(X.device)
    idxs = torch.stack([torch.as_tensor(i, device=X.device) for i in train_idxs])       # (R, n)

    def loss(batch, step):
        rows = torch.gather(idxs, 1, batch[0])                                        # (R, B)
        ce = F.cross_entropy(gates(X[rows]).flatten(0, 1), tags[rows].flatten(), reduction="none")
        return ce.view(len(seeds), -1).mean(1)

    train.fit(gates, loss, (torch.arange(n, device=X.device),),
              torch.optim.SGD(gates.parameters(), lr=lr, momentum=0.9), epochs=epochs,
              batch_size=batch, seed=list(seeds), progress=progress)
    return gates.switches()


@torch.no_grad()
def route_by(routers: Sequence[LearnedSwitch], X: torch.Tensor) -> torch.Tensor:
    """Tag each router picks for each image, (R, B)."""
    return torch.stack([r.scores(X).argmax(-1) for r in routers])


# ------------------------------------------------------------------ mini-batch SGD (benchmark)

def minibatch_sgd(model: TagNet, X: torch.Tensor, y: torch.Tensor, *, epochs: int = 1, batch: int = 64,
                  lr: float = 0.01, clip: float = 5.0, seed: int = 0) -> train.History:
    """Mini-batch SGD on the summed cross-entropy, weight gradients clamped to [-clip, clip] per
    batch, tag = label parity. Not the document's setting: the per-sample trainer's speed reference."""
    tags = PARITY.to(y.device)[y]
    hooks = [p.register_hook(lambda g: g.clamp(-clip, clip)) for p in model.parameters() if p.dim() > 1]
    loss = lambda b, step: F.cross_entropy(model(b[0], tags=b[2]), b[1], reduction="sum")
    try:
        return train.fit(model, loss, (X, y, tags), torch.optim.SGD(model.parameters(), lr=lr),
                         epochs=epochs, batch_size=batch, seed=seed)
    finally:
        for h in hooks:
            h.remove()


# ------------------------------------------------------------------ results

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


def within(values, target: float, tol: float) -> str:
    """Verdict on "the mean equals ``target`` within +-``tol``" from the 95% interval of ``values``
    (accuracies in %, bounded by 0 and 100): ``supported`` when the interval lies inside
    ``target +- tol``, ``not supported`` when it lies wholly outside, ``inconclusive`` otherwise."""
    _, lo, hi = stats.mean_ci(values, bounds=(0, 100))
    if target - tol <= lo and hi <= target + tol:
        return "supported"
    if hi < target - tol or lo > target + tol:
        return "not supported"
    return "inconclusive"


def gain(values_a, values_b, *, above: float, refuted_below: float | None = None) -> tuple[str, str, np.ndarray]:
    """Paired per-seed difference ``a - b`` (pp): its verdict against ``above`` (see
    :func:`mpnn.runtime.verdicts.from_interval`), its text and the differences."""
    n = min(len(values_a), len(values_b))
    d = np.asarray(values_a[:n], dtype=float) - np.asarray(values_b[:n], dtype=float)
    _, lo, hi = stats.mean_ci(d)
    txt = stats.fmt_ci(d, 2, unit=" pp") + ("" if len(values_a) == len(values_b) else f", the first {n} seeds paired")
    return verdicts.from_interval(lo, hi, above=above, refuted_below=refuted_below), txt, d


def decide_note(d, threshold: float) -> str:
    """", n seeds would decide it" for an inconclusive paired difference (empty otherwise)."""
    if len(d) < 2:
        return ""
    n = stats.seeds_to_decide(d, threshold)
    return f"; about {n} seeds would decide it" if n else "; the mean sits on the threshold"


# ------------------------------------------------------------------ the forgetting curve

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


# ------------------------------------------------------------------ pathways, activations, gate

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


# ------------------------------------------------------------------ explorer

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


# ------------------------------------------------------------------ findings

def findings(summary, table: pd.DataFrame, faithful_test, router_acc, *, agree, load, seconds: dict,
             n_networks: int, steps: int, n_train: int, epochs: int, extra_epochs: int,
             fully_connected: bool, at_scale: bool, n_seen: int, ink_share: float, end_even) -> str:
    """The 'What we found' bullets (markdown), from the chapter's tables."""
    t = table.set_index("split")
    fm, flo, fhi = stats.mean_ci(faithful_test, bounds=(0, 100))
    p = lambda *a: pct(summary, *a)
    mean = lambda *a: summary[(summary.variant == a[0]) & (summary.routing == (a[1] if len(a) > 1 else ORACLE))
                              & (summary.split == "test")]["mean"].iloc[0]
    differences = "; ".join(
        f"{split} {t.loc[split, 'difference (pp)']:+.2f} pp (the reported value lies "
        f"{'inside' if t.loc[split, 'document inside the CI'] else 'outside'} the interval {t.loc[split, '95% CI']})"
        for split in ("test", "train", "validation"))
    spread = (f"; a single run's spread is about +-{2 * t.loc['test', 'seed std (pp)']:.1f} pp (two seed standard "
              f"deviations), so one Go run can land outside the interval of the mean." if at_scale
              else f", at this profile's reduced scale ({n_train} samples, {epochs} epochs) - not comparable.")
    fewer = "." if extra_epochs == epochs else f" (fewer epochs than the local networks' {epochs}; `full` runs 10)."
    end = {v: stats.fmt_ci(100 * np.asarray(end_even[v]), 1, unit="%", bounds=(0, 100))
           for v in (FAITHFUL, "no partition, blocked")}
    label_worth = mean(FAITHFUL) - max(mean(FAITHFUL, "learned parity router"), mean(FAITHFUL, "all neurons active"))
    lines = [
        f"* **Faithful replication.** Test {p(FAITHFUL)} over {len(faithful_test)} seeds (95% CI half-width "
        f"{(fhi - flo) / 2:.2f} pp; seed-to-seed standard deviation {t.loc['test', 'seed std (pp)']:.2f} pp) against "
        f"the original code's reported {DOCUMENT['test']:.2f}% of one Go run. This book's mean minus the reported "
        f"value: {differences}{spread}",
        f"* **Label leak.** Those accuracies route every image, test images included, by the parity of its true "
        f"label. The same networks without the label: learned parity router {p(FAITHFUL, 'learned parity router')} "
        f"(the router's parity accuracy {100 * float(router_acc.mean()):.1f}%), all neurons on "
        f"{p(FAITHFUL, 'all neurons active')}: the label is worth {label_worth:.1f} pp over the better of the two.",
        f"* **An 18x18 window.** The 16x16 grid of 5x5 windows starts at the top-left pixel, so the network reads "
        f"{n_seen} of the 784 pixels, {100 * ink_share:.1f}% of the average digit's ink. Centred on the image: "
        f"{p(CENTRED)}, against {p(FAITHFUL)} for the grid as written.",
        f"* **Blocked order.** Even-digit validation accuracy after the last odd block: partitioned "
        f"{end[FAITHFUL]}, unpartitioned {end['no partition, blocked']}"
        + (": through the shared output layer the last odd block costs the unpartitioned network more of its even "
           "classes." if np.mean(end_even[FAITHFUL]) > np.mean(end_even["no partition, blocked"]) else
           ": partitioning does not protect the even classes from the last odd block here."),
        f"* **Partitioning itself.** No partition, interleaved (no label needed at test time): "
        f"{p('no partition, interleaved')}, "
        f"{'higher' if mean('no partition, interleaved') > mean(FAITHFUL) else 'not higher'} than the document's "
        f"network routed by the true label; no partition, blocked: {p('no partition, blocked')}; tag partition, "
        f"interleaved: {p('tag partition, interleaved')}.",
        f"* **Connectivity.** Fully connected hidden layer with the document's partition, {extra_epochs} epochs: "
        + (p(FULLY_CONNECTED) if fully_connected else "not run at this profile")
        + ("." if extra_epochs == epochs else f" (fewer epochs than the local networks' {epochs}: the `full` "
                                              f"profile runs both at 10)."),
        f"* **Learned gate.** Two-expert MoE, {extra_epochs} epochs: {p(MOE, 'learned gate')}; share of images to "
        f"expert 1 {np.mean(load):.2f}, agreement of its split with parity {np.mean(agree):.2f}" + fewer,
        f"* **Initialisation.** Hidden He fan-in 784 instead of 25: {p('tag partition, blocked, hidden fan-in 784')}.",
        f"* **Runtime.** All {n_networks} local networks in one lock-step pass: {seconds['local']:.0f} s for "
        f"{steps:,} steps; " + "; ".join(f"{k}: {v:.0f} s" for k, v in seconds.items() if k != "local")
        + f"; the whole notebook so far used {time.process_time():.0f} s of CPU time "
          f"({torch.get_num_threads()} thread).",
    ]
    return "\n".join(lines)
