"""Tag-partitioned network of NeuralArena's "MNIST Neural Network Partitioning" (the tag-partitioning document).

Model (PARAGON ``NewNetwork`` + ``ForwardTagged``/``BackwardTagged``): input ``x`` (784 pixels
scaled to [0, 1]), a 16x16 hidden grid of leaky-ReLU neurons (slope 0.01), each locally connected
to a 5x5 input window (:mod:`mpnn.tagnet.local`), and 10 softmax outputs fully connected to all 256
hidden neurons and shared by both tags. A tag ``t`` (label parity) switches on hidden columns
``[16 t / 2, 16 (t + 1) / 2)`` through :class:`mpnn.switch.TagSwitch`; the other neurons output 0:

    a = m_t * leaky(W1 x + b1),      p = softmax(W2 a + b2)                             (1)

Training is per-sample gradient ascent on ``log p_y`` with every per-weight gradient clipped:

    e   = onehot(y) - p                                (output error, CE gradient)
    W2 += lr * clip(e a^T),          b2 += lr * e
    d   = m_t * leaky'(W1 x + b1) * (W2^T e)          (W2 before its update)
    W1 += lr * clip(d x^T) on the window taps,        b1 += lr * d                      (2)

with ``clip`` to [-5, 5] and biases unclipped, exactly as ``BackwardTagged``. Neurons with
``m_t = 0`` get ``d = 0``: no update. :func:`reference_sgd` is (2) as a plain autograd loop;
:class:`mpnn.tagnet.stacked_sgd.StackedSGD` runs (2) for many networks in lock-step, hand-derived, and is
tested against it. The document's order of the samples (every even digit, then every odd one, each
epoch) is :func:`epoch_order`; :func:`make_schedule` lays out the orders of several networks.

The two-expert mixture of experts (:class:`TwoExpertMoE`) replaces the tag by a learned gate
``s = Wg x + bg`` (:class:`mpnn.switch.LearnedSwitch`, hard top-1 with a straight-through
softmax gradient): ``m = onehot(argmax s) + softmax(s) - sg(softmax(s))`` selects the expert's
hidden columns; the gate's gradient is ``ds = q * (g - <q, g>)`` with ``q = softmax(s)`` and
``g_e = sum_{h in e} (W2^T e)_h * leaky(W1 x + b1)_h``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .local import LocallyConnected
from ..switch import LearnedSwitch, TagSwitch

__all__ = ["PARITY", "partition_groups", "parity_switch", "TagNet", "TwoExpertMoE", "reference_sgd",
           "epoch_order", "make_schedule"]

PARITY = torch.arange(10) % 2          # tag of each digit label: 0 even, 1 odd


def partition_groups(grid: int = 16, n_tags: int = 2) -> dict[int, list[int]]:
    """Hidden units of each tag: tag ``t`` owns columns ``[grid*t//T, grid*(t+1)//T)`` of the grid.

    Units are numbered row-major, ``h = y * grid + x`` (PARAGON's ``startX``/``endX``).
    """
    if not 1 <= n_tags <= grid:
        raise ValueError(f"n_tags must be between 1 and grid={grid}, got {n_tags}")
    cols = torch.arange(grid * grid) % grid
    return {t: torch.nonzero((cols >= grid * t // n_tags) & (cols < grid * (t + 1) // n_tags))
            .flatten().tolist() for t in range(n_tags)}


def parity_switch(partitioned: bool = True, grid: int = 16) -> TagSwitch:
    """Tag switch of the document (two column halves) or, unpartitioned, every unit for every tag."""
    groups = partition_groups(grid, 2) if partitioned else {t: range(grid * grid) for t in (0, 1)}
    return TagSwitch(groups, grid * grid)


def _he_linear(n_in: int, n_out: int, fan_in: int | None, generator) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=generator)
                           * math.sqrt(2.0 / (fan_in or n_in)))
        layer.bias.zero_()
    return layer


class TagNet(nn.Module):
    """Eq. (1): hidden grid (local 5x5 windows or fully connected), tag switch, shared softmax output.

    ``connectivity``: ``"local"`` (the document) or ``"full"`` (every hidden neuron sees all 784
    pixels). ``hidden_fan_in``: He fan-in of the hidden weights (default: 25 local, 784 full).
    ``forward(x, tags=None, mask=None)``: x (B, 784) -> logits (B, 10); the hidden mask comes from
    ``mask`` (B, H), else from ``switch(tags)``, else every neuron is active.
    """

    def __init__(self, *, grid: int = 16, image: int = 28, window: int = 5, n_classes: int = 10,
                 connectivity: str = "local", partitioned: bool = True,
                 hidden_fan_in: int | None = None, offset: int = 0, slope: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        if connectivity not in ("local", "full"):
            raise ValueError(f"connectivity must be 'local' or 'full', got {connectivity!r}")
        self.connectivity, self.slope, self.grid = connectivity, float(slope), grid
        self.n_inputs, self.n_hidden = image * image, grid * grid
        if connectivity == "local":
            self.hidden = LocallyConnected(grid, image, window, offset=offset,
                                           fan_in=hidden_fan_in, generator=generator)
        else:
            self.hidden = _he_linear(self.n_inputs, self.n_hidden, hidden_fan_in, generator)
        self.out = _he_linear(self.n_hidden, n_classes, None, generator)
        self.switch = parity_switch(partitioned, grid)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Unmasked hidden activations leaky(W1 x + b1): (B, 784) -> (B, H)."""
        return F.leaky_relu(self.hidden(x), self.slope)

    def forward(self, x: torch.Tensor, tags: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.activations(x)
        if mask is None and tags is not None:
            mask = self.switch(tags)
        return self.out(a if mask is None else a * mask)


class TwoExpertMoE(nn.Module):
    """Two experts (the two column halves of the hidden grid) chosen per input by a learned gate.

    ``gate`` is a :class:`mpnn.switch.LearnedSwitch` over the 784 pixels (hard top-1 forward,
    softmax gradient); ``groups`` (E, H) maps experts to hidden units. ``forward(x)`` -> logits.
    """

    def __init__(self, *, grid: int = 16, image: int = 28, window: int = 5, n_classes: int = 10,
                 n_experts: int = 2, connectivity: str = "local", slope: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        base = TagNet(grid=grid, image=image, window=window, n_classes=n_classes,
                      connectivity=connectivity, slope=slope, generator=generator)
        self.connectivity, self.slope, self.grid = connectivity, base.slope, grid
        self.n_inputs, self.n_hidden = base.n_inputs, base.n_hidden
        self.hidden, self.out = base.hidden, base.out
        self.gate = LearnedSwitch(self.n_inputs, n_experts, mode="topk", k=1)
        with torch.no_grad():
            self.gate.gate.weight.copy_(torch.randn(n_experts, self.n_inputs, generator=generator)
                                        * math.sqrt(1.0 / self.n_inputs))
            self.gate.gate.bias.zero_()
        table = torch.zeros(n_experts, self.n_hidden)
        for e, units in partition_groups(grid, n_experts).items():
            table[e, units] = 1.0
        self.register_buffer("groups", table)     # (E, H)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.hidden(x), self.slope)

    def expert(self, x: torch.Tensor) -> torch.Tensor:
        """Chosen expert per input, (B,)."""
        return self.gate.scores(x).argmax(-1)

    def forward(self, x: torch.Tensor, tags=None, mask=None) -> torch.Tensor:
        if mask is None:
            mask = self.gate(x) @ self.groups      # (B, H), straight-through
        return self.out(self.activations(x) * mask)


# ------------------------------------------------------------------ reference loop (autograd)

def reference_sgd(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, lr: float = 0.01,
                  clip: float = 5.0, tags: torch.Tensor | None = None) -> None:
    """Plain per-sample loop, eq. (2), with autograd: one forward/backward/step per sample.

    X (N, 784) in [0, 1], y (N,) labels, processed in order; tags default to the label parity.
    Weight gradients are clamped to [-clip, clip]; biases are not (as PARAGON).
    """
    tags = PARITY.to(y.device)[y] if tags is None else tags
    params = list(model.parameters())
    for i in range(len(X)):
        logits = model(X[i:i + 1], tags=tags[i:i + 1])
        loss = F.cross_entropy(logits, y[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                p.sub_(lr * (g.clamp(-clip, clip) if p.dim() > 1 else g))


# ------------------------------------------------------------------ training order

def epoch_order(labels: torch.Tensor, train_idx: torch.Tensor, order: str = "blocked") -> torch.Tensor:
    """Sample order of one epoch. ``"blocked"``: every even-labelled sample, then every odd one
    (each in ``train_idx`` order), as ``trainSingleTag(0)`` then ``trainSingleTag(1)``;
    ``"interleaved"``: ``train_idx`` as it is, tags mixed."""
    if order == "interleaved":
        return train_idx
    if order != "blocked":
        raise ValueError(f"order must be 'blocked' or 'interleaved', got {order!r}")
    tag = PARITY.to(labels.device)[labels[train_idx]]
    return torch.cat([train_idx[tag == 0], train_idx[tag == 1]])


def make_schedule(labels: torch.Tensor, train_idxs: Sequence[torch.Tensor],
                  orders: Sequence[str], epochs: int) -> torch.Tensor:
    """(T, M) sample indices: column ``m`` is model ``m``'s ``epochs`` passes (same order each epoch,
    as the Go code never reshuffles)."""
    if len(train_idxs) != len(orders):
        raise ValueError("need one train index set per order")
    cols = [epoch_order(labels, idx, o).repeat(epochs) for idx, o in zip(train_idxs, orders)]
    if len({len(c) for c in cols}) != 1:
        raise ValueError("every model needs the same number of training samples")
    return torch.stack(cols, dim=1).contiguous()
