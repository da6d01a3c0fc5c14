"""Collective evaluation over seeds, against centralised training: the centralised baselines
(full-batch Adam), the switch network and both baselines on every seed's 100 people, and the
specialisation read from the activation and accuracy heatmaps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from mpnn import partition as P
from mpnn.data import demographics as D

from .data import GROUPS, MID, N_UNITS, NEURON_NAMES, ROUTE, TRAIN, Recipe
from .stacked import (Stacked, accuracy, bayes_accuracy, group_accuracy, make_runs, pooled_probs, replica_acts,
                      routed, stack, train_pooled, train_switch_net)


def mlp_hidden_for(n_params: int, d: int) -> int:
    """Largest hidden width ``H`` with ``H (d + 2) + 1 <= n_params`` (a d-H-1 MLP's parameter count)."""
    h = (n_params - 1) // (d + 2)
    if h < 1:
        raise ValueError(f"{n_params} parameters cannot hold a {d}-H-1 MLP (needs at least {d + 3})")
    return h


class MLPStack(nn.Module):
    """``R`` independent d-H-1 tanh MLPs evaluated in one batched pass: x (R, N, d) -> logits (R, N)."""

    def __init__(self, replicas: int, d: int, hidden: int, seeds: Sequence[int] | None = None):
        super().__init__()
        seeds = list(range(replicas)) if seeds is None else list(seeds)
        if len(seeds) != replicas:
            raise ValueError(f"need one seed per replica ({replicas}), got {len(seeds)}")
        W1, W2 = [], []
        for s in seeds:                                        # PyTorch-default-like uniform init
            g = torch.Generator().manual_seed(int(s))
            W1.append((torch.rand(d, hidden, generator=g) * 2 - 1) / d ** 0.5)
            W2.append((torch.rand(hidden, generator=g) * 2 - 1) / hidden ** 0.5)
        self.W1 = nn.Parameter(torch.stack(W1))                # (R, d, H)
        self.b1 = nn.Parameter(torch.zeros(replicas, hidden))  # (R, H)
        self.W2 = nn.Parameter(torch.stack(W2))                # (R, H)
        self.b2 = nn.Parameter(torch.zeros(replicas))          # (R,)

    def n_params_each(self) -> int:
        return sum(p[0].numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.bmm(x, self.W1) + self.b1[:, None])   # (R, N, H)
        return (h * self.W2[:, None]).sum(-1) + self.b2[:, None]   # (R, N)


def train_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int, *, seeds: Sequence[int], steps: int = 500,
              lr: float = 0.05, l2: float = 1e-3) -> MLPStack:
    """One MLP per replica on its own data, x (R, N, d), y (R, N): full-batch Adam on the mean BCE.

    Full batch, not :func:`mpnn.infra.train.fit`'s shuffled mini-batches: every step sees all N rows in
    their order. The objective sums the replicas' losses; Adam is element-wise, so the stacked step
    equals R separate ones.
    """
    if x.dim() != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"need x (R, N, d) and y (R, N), got {tuple(x.shape)} and {tuple(y.shape)}")
    model = MLPStack(x.shape[0], x.shape[2], hidden, seeds).to(device=x.device, dtype=x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    y = y.to(x)
    for _ in range(steps):
        opt.zero_grad()
        z = model(x)
        obj = nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none").mean(1).sum()
        obj = obj + 0.5 * l2 * ((model.W1 ** 2).sum() + (model.W2 ** 2).sum())
        obj.backward()
        opt.step()
    return model


def budget_mlp_hidden(n_units: int, d: int = len(D.FEATURES)) -> int:
    """Hidden width of the MLP with the parameter budget of ``n_units`` neurons (``n (d + 1)``)."""
    return mlp_hidden_for(n_units * (d + 1), d)


@dataclass
class Collective:
    """The switch network and its baselines over seeds at the document's sizes (100 observations)."""

    runs: list
    train: Stacked
    test: Stacked
    net: P.Neurons
    acts: torch.Tensor            # (S, M, n): every neuron on its replica's test people
    p_pool: torch.Tensor          # (S, M)
    p_mlp: torch.Tensor           # (S, M)
    mlp_params: int
    table: pd.DataFrame           # method, split, seed, accuracy
    world: D.World                # the law the people were drawn from

    @property
    def keep(self) -> torch.Tensor:
        return self.test.in_distribution

    def accuracy_of(self, method: str, split: str = "unseen, same groups") -> np.ndarray:
        """Per-seed accuracies of the method whose name starts with ``method``, on ``split``."""
        rows = self.table[self.table.method.str.startswith(method) & (self.table.split == split)]
        if rows.empty:
            raise KeyError(f"no accuracies for {method!r} on {split!r}; methods: {sorted(set(self.table.method))}")
        return rows["accuracy"].to_numpy()


def _rows(method: str, split: str, values) -> list[dict]:
    return [{"method": method, "split": split, "seed": i, "accuracy": float(v)} for i, v in enumerate(values)]


def collective(seeds: Sequence[int], recipe: Recipe) -> Collective:
    """Train the switch network, the pooled neuron and the budget MLP on every seed's 100 people."""
    runs = make_runs(seeds, recipe)
    tr, te = stack([r[0] for r in runs], recipe.device), stack([r[1] for r in runs], recipe.device)
    net = train_switch_net(tr.X, tr.Y, tr.A, recipe)
    acts, keep = replica_acts(net, te.X), te.in_distribution
    p_pool = pooled_probs(train_pooled(tr.X, tr.Y, recipe), te.X)
    mlp = train_mlp(tr.X, tr.Y, budget_mlp_hidden(N_UNITS), seeds=seeds, steps=recipe.mlp_steps,
                    lr=recipe.mlp_lr, l2=recipe.l2)
    with torch.no_grad():
        p_mlp = torch.sigmoid(mlp(te.X))
    unseen = "unseen, same groups"
    rows = (_rows("switch network", "seen (overlapping)", accuracy(routed(replica_acts(net, tr.X), tr.A), tr.Y))
            + _rows("switch network", unseen, accuracy(routed(acts, te.A), te.Y, keep))
            + _rows("pooled neuron", unseen, accuracy(p_pool, te.Y, keep))
            + _rows(f"centralised MLP ({mlp.n_params_each()} params)", unseen, accuracy(p_mlp, te.Y, keep))
            + _rows("Bayes (true law)", unseen,
                    bayes_accuracy([r[1][r[1]["group"].isin(TRAIN)] for r in runs], recipe.world())))
    return Collective(runs, tr, te, net, acts, p_pool, p_mlp, mlp.n_params_each(), pd.DataFrame(rows),
                      recipe.world())


def own_group_margin(M: torch.Tensor, neuron: int = 3, group: str = MID) -> np.ndarray:
    """Per seed, how far ``neuron``'s score on ``group`` exceeds its best score on the other four
    training groups: ``M[s, neuron, group] - max_{g' != group} M[s, neuron, g']`` (a row of the
    heatmap; > 0: the neuron scores highest on ``group``). M (S, neurons, cells) -> (S,)."""
    cols = D.standard_world().index(TRAIN)
    g = GROUPS.index(group)
    others = [c for c in cols if c != g]
    return (M[:, neuron, g] - M[:, neuron, others].max(-1).values).double().cpu().numpy()


def own_neuron_top_share(M: torch.Tensor, route: torch.Tensor = ROUTE) -> np.ndarray:
    """Per seed, the share of routed groups on which the group's own neuron scores highest of all
    neurons (a column of the heatmap: ``argmax_i M[s, i, g] == route(g)``). M (S, neurons, cells) -> (S,)."""
    cells = (route >= 0).nonzero().flatten()
    top = M[:, :, cells].argmax(1).cpu()                              # (S, routed groups)
    return (top == route[cells]).double().mean(1).numpy()


def specialisation(c: Collective) -> dict:
    """Accuracy and activation heatmaps per seed, and the measures read from them.

    ``accuracy`` / ``activation``: (S, neurons, cells); ``si`` / ``si_activation``: (S,) the
    specialisation index of the accuracy / activation heatmap (:func:`mpnn.partition.specialization_index`);
    ``n4_act_margin`` / ``n4_acc_margin``: (S,) :func:`own_group_margin` of neuron 4 on the "Mid-age -
    Mild Income" group; ``n4_acc_hits`` / ``n4_act_hits``: in how many seeds that margin is positive;
    ``top_share_activation`` / ``top_share_accuracy``: (S,) :func:`own_neuron_top_share`;
    ``most_active_on_mid``: per seed, the neuron most active on that group.
    """
    acc = group_accuracy(c.acts, c.test.Y, c.test.G).cpu()
    act = P.group_means(c.acts, c.test.G, len(GROUPS)).cpu()
    mid = GROUPS.index(MID)
    n4_act, n4_acc = own_group_margin(act), own_group_margin(acc)
    return {"accuracy": acc, "activation": act, "si": P.specialization_index(acc, ROUTE).numpy(),
            "si_activation": P.specialization_index(act, ROUTE).double().numpy(),
            "n4_act_margin": n4_act, "n4_acc_margin": n4_acc,
            "n4_acc_hits": int((n4_acc > 0).sum()), "n4_act_hits": int((n4_act > 0).sum()),
            "top_share_activation": own_neuron_top_share(act), "top_share_accuracy": own_neuron_top_share(acc),
            "most_active_on_mid": [NEURON_NAMES[int(k)] for k in act[:, :, mid].argmax(-1)]}
