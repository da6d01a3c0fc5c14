"""A learned switch (open question 3): a gate and five neurons trained jointly as a mixture of experts."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .collective import Collective
from .data import GROUPS, N_UNITS, Recipe
from .stacked import accuracy


class GatedNeurons(nn.Module):
    """``R`` independent replicas of a learned switch over ``n`` logistic neurons.

    Gate ``s = x Wg + bg`` (as :class:`mpnn.switch.LearnedSwitch`), neurons ``z_i = w_i . x + b_i``.
    Trained as a mixture of experts on the likelihood ``p(y|x) = sum_i softmax(s)_i p_i(y|x)``
    (Jacobs et al. 1991); at inference the switch is hard: each input goes to ``argmax_i s_i`` only.
    x (R, N, d) -> gate scores (R, N, n) and neuron logits (R, N, n).
    """

    def __init__(self, replicas: int, d: int, n_units: int, seeds: Sequence[int]):
        super().__init__()
        if len(seeds) != replicas:
            raise ValueError(f"need one seed per replica ({replicas}), got {len(seeds)}")
        gW, W = [], []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            gW.append(torch.randn(d, n_units, generator=g))
            W.append(0.1 * torch.randn(n_units, d, generator=g))
        self.gate_W = nn.Parameter(torch.stack(gW))                # (R, d, n)
        self.gate_b = nn.Parameter(torch.zeros(replicas, n_units))  # (R, n)
        self.W = nn.Parameter(torch.stack(W))                       # (R, n, d)
        self.b = nn.Parameter(torch.zeros(replicas, n_units))       # (R, n)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.gate_W) + self.gate_b[:, None]    # (R, N, n)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.W.transpose(1, 2)) + self.b[:, None]  # (R, N, n)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Hard switch decision: the neuron each input goes to, (R, N) long."""
        return self.scores(x).argmax(-1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """P(y=1) from the routed neuron only (hard switch): (R, N)."""
        z = self.logits(x).gather(-1, self.route(x)[..., None])[..., 0]
        return torch.sigmoid(z)


def train_gated_neurons(x: torch.Tensor, y: torch.Tensor, n_units: int, *, seeds: Sequence[int],
                        steps: int = 800, lr: float = 0.05, l2: float = 1e-3,
                        balance: float = 0.1) -> GatedNeurons:
    """Learn switch and neurons jointly: minimise ``-mean log sum_i g_i p_i(y|x)`` per replica.

    ``balance`` adds ``sum_i gbar_i log(n gbar_i)`` (KL of the mean gate ``gbar`` from uniform) so
    that no neuron is left without inputs. x (R, N, d), y (R, N) in {0, 1}; full-batch Adam (every
    step sees all N rows in order, not :func:`mpnn.infra.train.fit`'s shuffled mini-batches).
    """
    if x.dim() != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"need x (R, N, d) and y (R, N), got {tuple(x.shape)} and {tuple(y.shape)}")
    model = GatedNeurons(x.shape[0], x.shape[2], n_units, seeds).to(device=x.device, dtype=x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    y = y.to(x)[..., None]                                          # (R, N, 1)
    for _ in range(steps):
        opt.zero_grad()
        log_g = torch.log_softmax(model.scores(x), -1)              # (R, N, n)
        z = model.logits(x)
        log_p = -(nn.functional.softplus(z) - y * z)                # log p_i(y|x), (R, N, n)
        nll = -torch.logsumexp(log_g + log_p, -1).mean(1).sum()     # replicas' losses summed
        gbar = log_g.exp().mean(1)                                  # (R, n)
        kl = (gbar * torch.log(gbar * n_units + 1e-12)).sum()
        obj = nll + balance * kl + 0.5 * l2 * (model.W ** 2).sum()
        obj.backward()
        opt.step()
    return model


def routing_purity(route: torch.Tensor, G: torch.Tensor, keep: torch.Tensor, n_units: int = N_UNITS):
    """Contingency (S, neurons, cells) of the kept people, and per seed the share of them whose
    neuron's majority cell is their own cell (purity, 1 for the manual switch)."""
    cont = torch.einsum("smn,smg->sng", nn.functional.one_hot(route, n_units).double() * keep[..., None],
                        nn.functional.one_hot(G, len(GROUPS)).double()).cpu()
    return cont, (cont.max(-1).values.sum(-1) / cont.sum((-1, -2))).numpy()


def learned_switch(c: Collective, seeds: Sequence[int], recipe: Recipe) -> dict:
    """A learned gate and five neurons on every seed's 100 people (no group labels), evaluated.

    ``accuracy`` / ``accuracy_ood``: per seed, in distribution / on the OOD cells; ``purity`` per
    seed; ``share``: (neurons, cells), the share of each cell routed to each neuron, mean over seeds.
    """
    gated = train_gated_neurons(c.train.X, c.train.Y, N_UNITS, seeds=seeds, steps=recipe.gate_steps, l2=recipe.l2)
    with torch.no_grad():
        p, route = gated.predict(c.test.X), gated.route(c.test.X)
    cont, purity = routing_purity(route, c.test.G, c.keep)
    return {"accuracy": accuracy(p, c.test.Y, c.keep), "accuracy_ood": accuracy(p, c.test.Y, ~c.keep),
            "purity": purity, "share": cont.mean(0) / cont.mean(0).sum(0, keepdim=True).clamp_min(1e-12)}
