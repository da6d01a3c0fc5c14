"""Stacked micro-models: many neurons trained in isolation in one vectorised pass.

The switch-based multi-part network document trains each neuron ``i`` only on its own subset ``S_i`` ("no gradient crosses
neurons"). With the neurons' parameters stacked, ``W`` (n, d) and ``b`` (n,), neuron ``i`` computes
``z_i(x) = w_i . x + b_i`` and minimises its own masked loss::

    L_i = (1 / |S_i|) * sum_{k in S_i} l(z_i(x_k), y_k) + (l2 / 2) ||w_i||^2            (1)

with ``l`` the logistic loss ``softplus(z) - y z`` (a sigmoid neuron) or the squared loss
``(z - y)^2 / 2`` (a linear neuron). Because ``L_i`` depends on ``(w_i, b_i)`` only, gradient
descent on ``sum_i L_i`` *is* independent gradient descent on every ``L_i``::

    grad_{w_i} = (1/|S_i|) sum_{k in S_i} (l'(z_ik) ) x_k + l2 w_i,   l' = sigmoid(z) - y  or  z - y   (2)

:func:`train_isolated` evaluates (2) for all neurons at once. A *disjoint* assignment
``a`` (N,) costs O(N d) per step (each sample meets only its neuron); an overlapping 0/1 mask
``m`` (N, n) costs O(N n d). :func:`train_loop` is the naive reference (one ``nn.Linear`` and
``torch.optim.SGD`` per neuron, autograd) used by the tests and the benchmark. Independent
replicas (seeds) stack the same way: give replica ``s`` the units ``s*n .. s*n + n - 1``.

:func:`group_means` and :func:`specialization_index` read the trained neurons: a score of every
neuron on every group, and how much better the routed neuron is on its group than the others.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Neurons", "train_isolated", "train_loop", "group_means", "specialization_index"]

_LOSSES = ("logistic", "squared")


@dataclass
class Neurons:
    """Stacked single-unit micro-models: weights ``W`` (n, d), biases ``b`` (n,)."""

    W: torch.Tensor
    b: torch.Tensor
    loss: str = "logistic"
    n_samples: torch.Tensor | None = None  # (n,) training samples per neuron
    final_loss: torch.Tensor | None = None  # (n,) L_i of eq. (1) after training

    @property
    def n_units(self) -> int:
        return self.W.shape[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every neuron on every input: (N, d) -> (N, n)."""
        return x @ self.W.T + self.b

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Neuron outputs (N, n): ``sigmoid(z)`` for logistic neurons, ``z`` for linear ones."""
        z = self.logits(x)
        return torch.sigmoid(z) if self.loss == "logistic" else z

    def routed(self, x: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
        """Output of the neuron each sample is routed to: x (N, d), assign (N,) -> (N,).

        Computes only the routed neuron per sample (O(N d)), as a switch would.
        """
        a = _check_assign(assign, x.shape[0], self.n_units, allow_unrouted=False)
        z = (x * self.W[a]).sum(-1) + self.b[a]
        return torch.sigmoid(z) if self.loss == "logistic" else z

    def mixed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mask-weighted mean of neuron outputs (a soft or multi-unit switch): (N, n) mask -> (N,)."""
        w = mask / mask.sum(-1, keepdim=True).clamp_min(1e-12)
        return (self.activations(x) * w).sum(-1)

    def select(self, units: torch.Tensor | slice) -> "Neurons":
        """A sub-stack (e.g. one replica's neurons)."""
        pick = lambda t: None if t is None else t[units]
        return Neurons(self.W[units], self.b[units], self.loss, pick(self.n_samples), pick(self.final_loss))


def _check_assign(assign: torch.Tensor, n_rows: int, n_units: int, allow_unrouted: bool) -> torch.Tensor:
    if assign.dim() != 1 or assign.shape[0] != n_rows:
        raise ValueError(f"assign must have shape ({n_rows},) (one unit index per sample), got {tuple(assign.shape)}")
    a = assign.long()
    lo = -1 if allow_unrouted else 0
    if a.numel() and (a.min() < lo or a.max() >= n_units):
        raise ValueError(f"assign holds unit indices outside {lo}..{n_units - 1} "
                         f"(min {int(a.min())}, max {int(a.max())}); -1 marks an unrouted sample"
                         if allow_unrouted else f"assign must index units 0..{n_units - 1}")
    return a


def _dloss(z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    return torch.sigmoid(z) - y if loss == "logistic" else z - y


def _loss(z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    return nn.functional.softplus(z) - y * z if loss == "logistic" else 0.5 * (z - y) ** 2


def train_isolated(x: torch.Tensor, y: torch.Tensor, assign: torch.Tensor, n_units: int, *,
                   steps: int = 500, lr: float = 0.5, l2: float = 1e-3, loss: str = "logistic",
                   W0: torch.Tensor | None = None, b0: torch.Tensor | None = None) -> Neurons:
    """Full-batch gradient descent on eq. (1) for ``n_units`` neurons at once.

    x (N, d), y (N,) in {0,1} (logistic) or real (squared). ``assign`` is either (N,) unit
    indices (disjoint subsets; -1 = sample used by no neuron) or an (N, n_units) 0/1 mask
    (overlapping subsets allowed). Neurons without data only decay (``l2``). Initial weights
    default to zero (each neuron's problem is convex, eq. (1) with ``l2 > 0`` strictly so).
    """
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if x.dim() != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"need x (N, d) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if steps < 0 or lr <= 0:
        raise ValueError(f"need steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
    n, d = int(n_units), x.shape[1]
    W = torch.zeros(n, d, dtype=x.dtype, device=x.device) if W0 is None else W0.to(x).clone()
    b = torch.zeros(n, dtype=x.dtype, device=x.device) if b0 is None else b0.to(x).clone()
    if W.shape != (n, d) or b.shape != (n,):
        raise ValueError(f"W0 must be ({n}, {d}) and b0 ({n},), got {tuple(W.shape)}, {tuple(b.shape)}")
    y = y.to(x)
    if assign.dim() == 2:                                     # overlapping mask path, O(N n d)
        if assign.shape != (x.shape[0], n):
            raise ValueError(f"mask must be (N, n_units) = ({x.shape[0]}, {n}), got {tuple(assign.shape)}")
        m = assign.to(x)                                      # (N, n)
        count = m.sum(0)                                      # (n,)
        inv = 1.0 / count.clamp_min(1.0)
        for _ in range(steps):
            r = m * _dloss(x @ W.T + b, y[:, None], loss) * inv   # (N, n) dL_i/dz_ki
            gW, gb = r.T @ x + l2 * W, r.sum(0)
            W, b = W - lr * gW, b - lr * gb
        final = ((m * _loss(x @ W.T + b, y[:, None], loss)).sum(0) * inv
                 + 0.5 * l2 * (W * W).sum(1))
        return Neurons(W, b, loss, count, final)
    a = _check_assign(assign, x.shape[0], n, allow_unrouted=True)
    used = a >= 0
    xs, ys, a = x[used], y[used], a[used]                    # (M, d), (M,), (M,)
    count = torch.bincount(a, minlength=n).to(x)               # (n,)
    inv = (1.0 / count.clamp_min(1.0))[a]                    # (M,) 1/|S_i| per sample
    for _ in range(steps):
        z = (xs * W[a]).sum(-1) + b[a]                       # (M,) only the routed neuron
        r = _dloss(z, ys, loss) * inv                        # (M,)
        gW = torch.zeros_like(W).index_add_(0, a, r[:, None] * xs) + l2 * W
        gb = torch.zeros_like(b).index_add_(0, a, r)
        W, b = W - lr * gW, b - lr * gb
    z = (xs * W[a]).sum(-1) + b[a]
    final = torch.zeros_like(b).index_add_(0, a, _loss(z, ys, loss) * inv) + 0.5 * l2 * (W * W).sum(1)
    return Neurons(W, b, loss, count, final)


def train_loop(x: torch.Tensor, y: torch.Tensor, assign: torch.Tensor, n_units: int, *,
               steps: int = 500, lr: float = 0.5, l2: float = 1e-3, loss: str = "logistic",
               W0: torch.Tensor | None = None, b0: torch.Tensor | None = None) -> Neurons:
    """Naive reference for :func:`train_isolated`: a Python loop, one ``nn.Linear`` + SGD per neuron.

    Same maths (eq. 1, full batch), written independently with autograd and ``torch.optim``.
    """
    n, d = int(n_units), x.shape[1]
    Ws, bs = [], []
    crit = nn.BCEWithLogitsLoss() if loss == "logistic" else (lambda z, t: 0.5 * ((z - t) ** 2).mean())
    for i in range(n):
        rows = (assign[:, i] > 0) if assign.dim() == 2 else (assign == i)
        xi, yi = x[rows], y[rows].to(x)
        lin = nn.Linear(d, 1).to(dtype=x.dtype, device=x.device)
        with torch.no_grad():
            lin.weight.copy_(torch.zeros(1, d) if W0 is None else W0[i:i + 1])
            lin.bias.copy_(torch.zeros(1) if b0 is None else b0[i:i + 1])
        opt = torch.optim.SGD(lin.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            obj = 0.5 * l2 * (lin.weight ** 2).sum()
            if len(yi):
                obj = obj + crit(lin(xi).squeeze(-1), yi)
            obj.backward()
            opt.step()
        Ws.append(lin.weight.detach()[0])
        bs.append(lin.bias.detach()[0])
    return Neurons(torch.stack(Ws), torch.stack(bs), loss)


# ---------------------------------------------------------------- analysis

def group_means(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of per-unit values over each group's samples: ``M[..., i, g] = mean_{k: G_k = g} v_{k i}``.

    values (..., N, n), groups (..., N) integers in 0..n_groups-1 -> (..., n, n_groups); leading
    dimensions (e.g. stacked replicas) are kept. NaN where a group has no sample.
    """
    if values.shape[:-1] != groups.shape:
        raise ValueError(f"values (..., N, n) and groups (..., N) disagree: {tuple(values.shape)} vs {tuple(groups.shape)}")
    onehot = nn.functional.one_hot(groups.long(), n_groups).to(values)          # (..., N, G)
    total = torch.einsum("...kn,...kg->...ng", values, onehot)                  # (..., n, G)
    return total / onehot.sum(-2)[..., None, :]                                 # 0 / 0 = NaN when empty


def specialization_index(A: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
    """How much better the routed neuron is on its group than the other neurons are.

    ``A`` (..., n, G): a score of neuron i on group g (e.g. accuracy); ``route`` (G,): the neuron
    the switch sends group g to (-1: nowhere, left out). ``SI = mean_g [A[route(g), g] - mean_{i != route(g)} A[i, g]]``,
    in [-1, 1] for accuracies: > 0 the routed neurons are specialists, 0 no specialisation,
    < 0 the switch sends groups to the wrong neurons.
    """
    n = A.shape[-2]
    if n < 2:
        raise ValueError("the specialization index needs at least two neurons")
    if route.shape != (A.shape[-1],):
        raise ValueError(f"route needs one entry per group ({A.shape[-1]}), got {tuple(route.shape)}; "
                         "use -1 for groups the switch sends nowhere")
    cols = (route >= 0).nonzero().flatten()                    # (G',) routed groups
    r = route[cols].long()
    own = A[..., r, cols]                                      # (..., G')
    others = (A[..., :, cols].sum(-2) - own) / (n - 1)
    return (own - others).mean(-1)
