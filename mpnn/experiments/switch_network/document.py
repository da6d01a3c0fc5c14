"""The document's experiment on the shipped 100 observations, and its isolation, checked."""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from mpnn import partition as P

from .data import GROUPS, N_UNITS, Recipe
from .stacked import Stacked, accuracy, group_accuracy, replica_acts, routed, stack, test_people, train_switch_net


@dataclass
class DocumentRun:
    """Five neurons trained on the shipped CSV, evaluated on one test set of every cell."""

    train: Stacked
    test: Stacked
    net: P.Neurons
    seconds: float
    seen_accuracy: float
    unseen_accuracy: float
    activation: torch.Tensor      # (neurons, cells) mean output
    accuracy: torch.Tensor        # (neurons, cells)


def document_run(csv: pd.DataFrame, seed: int, recipe: Recipe) -> DocumentRun:
    """Train on the CSV's five subsets; the test people are those of run ``seed`` (:func:`test_people`)."""
    train, test = stack([csv], recipe.device), stack([test_people(seed, recipe)], recipe.device)
    t0 = time.perf_counter()
    net = train_switch_net(train.X, train.Y, train.A, recipe)
    seconds = time.perf_counter() - t0
    acts = replica_acts(net, test.X)
    return DocumentRun(train, test, net, seconds,
                       float(accuracy(routed(replica_acts(net, train.X), train.A), train.Y)[0]),
                       float(accuracy(routed(acts, test.A), test.Y, test.in_distribution)[0]),
                       P.group_means(acts, test.G, len(GROUPS))[0].cpu(),
                       group_accuracy(acts, test.Y, test.G)[0].cpu())


def isolation_check(train: Stacked, recipe: Recipe, scrambled: int = 2) -> dict:
    """Isolation, checked in float64 on replica 0.

    ``loop_gap``: max ``|vectorised - per-neuron loop|`` (``train_loop``: nn.Linear + SGD each);
    ``leak``: max change of the other neurons when neuron ``scrambled``'s features and labels are
    replaced (should be exactly 0); ``moved``: how far neuron ``scrambled`` itself moved.
    """
    x, y, a = train.X[0].double().cpu(), train.Y[0].double().cpu(), train.A[0].cpu()
    kw = dict(steps=recipe.steps, lr=recipe.lr, l2=recipe.l2)
    fast = P.train_isolated(x, y, a, N_UNITS, **kw)
    slow = P.train_loop(x, y, a, N_UNITS, **kw)
    x2, y2 = x.clone(), y.clone()
    rows = a == scrambled
    x2[rows] = torch.randn(int(rows.sum()), x.shape[1], dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    y2[rows] = 1 - y2[rows]
    pert = P.train_isolated(x2, y2, a, N_UNITS, **kw)
    others = torch.arange(N_UNITS) != scrambled
    return {"loop_gap": float(max((fast.W - slow.W).abs().max(), (fast.b - slow.b).abs().max())),
            "leak": float((pert.W[others] - fast.W[others]).abs().max()),
            "moved": float((pert.W[scrambled] - fast.W[scrambled]).abs().max()),
            "subset_sizes": torch.bincount(a, minlength=N_UNITS).tolist()}
