"""Data per seed, stacked training, evaluation.

Seeds ("replicas") are stacked: replica ``s`` owns units ``s n .. s n + n - 1`` of one stack of
neurons, so an experiment over every seed is one ``train_isolated`` call (eq. 1 of
:mod:`mpnn.partition`). Tensors are X (S, N, 5) standardised features, Y (S, N) targets, A (S, N)
the switch's unit (-1: no rule matches) and G (S, N) the person's cell of the world.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mpnn import partition as P
from mpnn.data import demographics as D
from mpnn.infra import determinism
from mpnn.switch import RuleSwitch

from .data import GROUPS, N_UNITS, ROUTE, SIZES, TRAIN, Recipe, columns, rule_switch


def test_people(seed: int, recipe: Recipe) -> pd.DataFrame:
    """A run's shared test set: ``test_per_group`` fresh people of every cell (seed's second child)."""
    world = recipe.world()
    return D.sample(world, [recipe.test_per_group] * len(world.names), determinism.spawn_seeds(seed, 2)[1])


def make_runs(seeds: Sequence[int], recipe: Recipe, sizes: Sequence[int] = SIZES,
              heterogeneity: float | None = None) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Per seed: its training people (``sizes`` of the five groups) and its test people (every cell)."""
    world = recipe.world(heterogeneity)
    out = []
    for s in seeds:
        s_train, s_test = determinism.spawn_seeds(s, 2)
        out.append((D.sample(world, dict(zip(TRAIN, sizes)), s_train),
                    D.sample(world, [recipe.test_per_group] * len(world.names), s_test)))
    return out


@dataclass
class Stacked:
    """Equally long frames stacked: X (S, N, d), Y (S, N), A (S, N) switch unit or -1, G (S, N) cell."""

    X: torch.Tensor
    Y: torch.Tensor
    A: torch.Tensor
    G: torch.Tensor

    @property
    def in_distribution(self) -> torch.Tensor:
        """(S, N) bool: the person belongs to a cell the document's switch routes somewhere."""
        return ROUTE.to(self.G.device)[self.G] >= 0


def stack(frames: Sequence[pd.DataFrame], device, switch: RuleSwitch | None = None) -> Stacked:
    """Features, targets, the switch's assignment and the cell index of every frame, stacked."""
    switch = rule_switch() if switch is None else switch
    world = D.standard_world()
    return Stacked(torch.stack([D.features(d) for d in frames]).to(device),
                   torch.stack([D.targets(d) for d in frames]).to(device),
                   torch.stack([switch.assign_columns(columns(d)) for d in frames]).to(device),
                   torch.stack([torch.tensor(world.index(list(d["group"]))) for d in frames]).to(device))


def bayes_accuracy(frames: Sequence[pd.DataFrame], world: D.World) -> np.ndarray:
    """Accuracy of the true law's prediction ``sigmoid(b_g + z . w_g) > 1/2`` (the ceiling), (S,)."""
    out = []
    for d in frames:
        z = D.features(d).double().numpy()
        g = np.asarray(world.index(list(d["group"])))
        p = 1 / (1 + np.exp(-(world.coef[g, 0] + (z * world.coef[g, 1:]).sum(1))))
        out.append(float(((p > 0.5) == d["responded"].to_numpy()).mean()))
    return np.array(out)


def train_switch_net(X: torch.Tensor, Y: torch.Tensor, A: torch.Tensor, recipe: Recipe,
                     n_units: int = N_UNITS) -> P.Neurons:
    """Isolated training (eq. 1 of :mod:`mpnn.partition`) of ``n_units`` neurons per replica, one pass.

    Replica ``s``'s unit ``a`` becomes unit ``s n_units + a`` of one stack; unrouted rows stay -1.
    """
    S, N, d = X.shape
    off = torch.arange(S, device=X.device)[:, None] * n_units
    flat = torch.where(A >= 0, A + off, torch.full_like(A, -1)).reshape(-1)
    return P.train_isolated(X.reshape(S * N, d), Y.reshape(-1), flat, S * n_units,
                            steps=recipe.steps, lr=recipe.lr, l2=recipe.l2)


def train_pooled(X: torch.Tensor, Y: torch.Tensor, recipe: Recipe) -> P.Neurons:
    """The pooled baseline: one neuron per replica trained on all of its rows (a one-unit switch)."""
    return train_switch_net(X, Y, torch.zeros(X.shape[:2], dtype=torch.long, device=X.device), recipe, n_units=1)


def pooled_probs(pooled: P.Neurons, X: torch.Tensor) -> torch.Tensor:
    """P(y=1) of each replica's pooled neuron on that replica's inputs: X (S, M, d) -> (S, M)."""
    return torch.sigmoid(torch.einsum("smd,sd->sm", X, pooled.W) + pooled.b[:, None])


def replica_acts(net: P.Neurons, X: torch.Tensor, n_units: int = N_UNITS) -> torch.Tensor:
    """Every neuron of replica s on replica s's inputs: X (S, M, d) -> activations (S, M, n)."""
    S = X.shape[0]
    W, b = net.W.view(S, n_units, -1), net.b.view(S, n_units)
    return torch.sigmoid(torch.einsum("smd,snd->smn", X, W) + b[:, None])


def routed(acts: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Output of the routed neuron, (S, M); NaN where the switch routes nowhere."""
    p = acts.gather(-1, A.clamp_min(0)[..., None])[..., 0]
    return torch.where(A >= 0, p, torch.full_like(p, float("nan")))


def accuracy(p: torch.Tensor, Y: torch.Tensor, keep: torch.Tensor | None = None) -> np.ndarray:
    """Per-replica accuracy of P(y=1) thresholded at 1/2 over the kept samples: (S,) numpy."""
    keep = torch.ones_like(Y, dtype=torch.bool) if keep is None else keep
    hit = (((p > 0.5).to(Y.dtype) == Y) & keep).sum(1).double()
    return (hit / keep.sum(1).double()).cpu().numpy()


def group_accuracy(acts: torch.Tensor, Y: torch.Tensor, G: torch.Tensor, n_groups: int = len(GROUPS)) -> torch.Tensor:
    """Accuracy of every neuron on every cell: acts (S, M, n) -> (S, n, n_groups)."""
    correct = ((acts > 0.5).to(Y.dtype) == Y[..., None]).double()
    return P.group_means(correct, G, n_groups)
