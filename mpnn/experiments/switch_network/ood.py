"""Out-of-distribution groups: the four cells no neuron was trained on, and two fall-backs."""
from __future__ import annotations

import numpy as np
import torch

from .collective import Collective
from .data import N_UNITS, OOD
from .stacked import accuracy, bayes_accuracy, routed


def ood_accuracy(c: Collective) -> dict[str, np.ndarray]:
    """Per-seed accuracy on the four OOD cells of two fall-backs, the baselines and the Bayes ceiling.

    ``switch + average``: the mean output of all five neurons; ``switch + nearest``: the neuron
    whose training subset has the nearest (age, income) centroid.
    """
    S, ood = c.train.X.shape[0], ~c.keep
    X, A = c.train.X, c.train.A
    cent = torch.stack([torch.stack([X[s][A[s] == i][:, :2].mean(0) for i in range(N_UNITS)]) for s in range(S)])
    nearest = torch.cdist(c.test.X[..., :2], cent).argmin(-1)                   # (S, M)
    return {"switch + average": accuracy(c.acts.mean(-1), c.test.Y, ood),
            "switch + nearest": accuracy(routed(c.acts, nearest), c.test.Y, ood),
            "pooled neuron": accuracy(c.p_pool, c.test.Y, ood),
            "centralised MLP": accuracy(c.p_mlp, c.test.Y, ood),
            "Bayes (true law)": bayes_accuracy([r[1][r[1]["group"].isin(OOD)] for r in c.runs], c.world)}
