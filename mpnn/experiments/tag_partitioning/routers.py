"""The learned parity routers: one linear gate per seed, trained side by side with :func:`mpnn.infra.train.fit`."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mpnn.infra import train
from mpnn.switch import LearnedSwitch


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
