"""Training: the locally connected networks of every variant in one lock-step pass, the even-digit
curve recorded meanwhile, the controls (fully connected, two-expert MoE), and the mini-batch SGD
recipe the benchmark times against them."""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F

from mpnn.infra import train
from mpnn.tagnet import PARITY, TagNet, TwoExpertMoE, make_schedule
from mpnn.tagnet.stacked_nets import StackedNets
from mpnn.tagnet.stacked_sgd import StackedSGD

from .variants import CURVE_VARIANTS, FAITHFUL, FULLY_CONNECTED, MOE, VARIANTS


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
