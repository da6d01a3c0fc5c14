"""Modules as towers: networks whose hidden units are partitioned into towers sharing no parameter.

A *dense* network is one tower that feeds every output; a *split* network has one tower per group
of outputs (Jarvis et al. 2023, section 6), so each tower learns only from its own targets. Two forms:

* :class:`ConvTowers` -- towers of valid convolutions with ReLU, computed for all towers at once as
  grouped convolutions (tower ``i`` = group ``i``; the first convolution sees the whole image), each
  tower flattened into its own linear read-out. Trained with autograd.
* :class:`TowerMLP` -- ``R`` independent runs (stacked weights) of a one-hidden-layer ReLU network
  whose hidden units are split into towers; tower ``t`` owns hidden units ``h_t`` and output slice
  ``o_t``. Plain SGD on the per-sample summed squared error with a hand-written backward pass::

      Z = X W1^T + b1,  A = relu(Z),  O[:, o_t] = A[:, h_t] W2_t^T + b2[o_t]
      dO = 2 (O - Y) / B,  dW2_t = dO_t^T A_t,  dA_t = dO_t W2_t,  dZ = dA * [Z > 0],  dW1 = dZ^T X
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvTowers", "init_normal", "TowerMLP", "init_tower_mlp", "tower_slices"]


class ConvTowers(nn.Module):
    """``len(outputs)`` independent conv towers of ``channels`` each, as grouped convolutions.

    ``kernels`` gives one ``(kh, kw)`` per convolution (valid padding, ReLU after each) and
    ``input_hw`` the image size; ``outputs[i]`` is the read-out size of tower ``i``. ``x`` (B, 1, H, W)
    -> (B, sum(outputs)), the towers' outputs concatenated in tower order.
    """

    def __init__(self, *, channels: int, outputs: Sequence[int], kernels: Sequence[tuple[int, int]],
                 input_hw: tuple[int, int]):
        super().__init__()
        if channels < 1 or not outputs or not kernels:
            raise ValueError(f"need channels >= 1, outputs and kernels; got {channels}, {outputs}, {kernels}")
        g = len(outputs)
        c = channels * g
        self.channels, self.outputs = channels, tuple(outputs)
        self.feature_hw = (input_hw[0] - sum(k[0] - 1 for k in kernels), input_hw[1] - sum(k[1] - 1 for k in kernels))
        if min(self.feature_hw) < 1:
            raise ValueError(f"kernels {kernels} do not fit an image of {input_hw}")
        self.convs = nn.ModuleList([nn.Conv2d(1, c, kernels[0])]                     # every tower sees the image
                                   + [nn.Conv2d(c, c, k, groups=g) for k in kernels[1:]])
        feat = channels * self.feature_hw[0] * self.feature_hw[1]
        self.heads = nn.ModuleList(nn.Linear(feat, o) for o in outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))                                              # (B, g*ch, h, w)
        h = h.unflatten(1, (len(self.outputs), self.channels)).flatten(2)   # (B, g, ch*h*w)
        return torch.cat([head(h[:, i]) for i, head in enumerate(self.heads)], 1)

    def tower_parameters(self, i: int) -> list[tuple[torch.Tensor, slice]]:
        """``(parameter, slice of its first axis)`` pairs that belong to tower ``i``."""
        ch = slice(i * self.channels, (i + 1) * self.channels)
        out = []
        for conv in self.convs:
            out += [(conv.weight, ch), (conv.bias, ch)]
        head = self.heads[i]
        return out + [(head.weight, slice(None)), (head.bias, slice(None))]


@torch.no_grad()
def init_normal(model: ConvTowers, seeds: Sequence[int], init_std: float = 0.01) -> None:
    """Every weight and bias ~ N(0, init_std^2); tower ``i`` drawn from its own generator ``seeds[i]``."""
    if len(seeds) != len(model.outputs):
        raise ValueError(f"need one seed per tower ({len(model.outputs)}), got {len(seeds)}")
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        for p, sl in model.tower_parameters(i):
            block = p[sl]
            block.copy_(torch.randn(block.shape, generator=g) * init_std)


def tower_slices(towers: Sequence[tuple[int, slice]]) -> list[slice]:
    """The hidden units of every tower ``((h_t, o_t), ...)``: consecutive blocks of ``h_t`` units."""
    out, start = [], 0
    for h, _ in towers:
        out.append(slice(start, start + h))
        start += h
    return out


@dataclass
class TowerMLP:
    """``R`` independent runs: ``W1`` (R, H, D), ``b1`` (R, H), per tower ``W2[t]`` ``(R, |o_t|, h_t)``,
    ``b2`` (R, n_out). ``towers`` holds ``(h_t, o_t)``: hidden units and output slice of tower ``t``."""
    W1: torch.Tensor
    b1: torch.Tensor
    W2: list[torch.Tensor]
    b2: torch.Tensor
    towers: tuple[tuple[int, slice], ...]

    @property
    def hidden_slices(self) -> list[slice]:
        return tower_slices(self.towers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (R, B, D) or shared (B, D) -> (pre-activations (R, B, H), outputs (R, B, n_out))."""
        R = self.W1.shape[0]
        z = torch.baddbmm(self.b1[:, None], x.expand(R, *x.shape[-2:]), self.W1.transpose(1, 2))
        a = torch.relu(z)
        out = torch.empty(R, x.shape[-2], self.b2.shape[-1], dtype=z.dtype, device=z.device)
        for (_, osl), hsl, W2 in zip(self.towers, self.hidden_slices, self.W2):
            out[..., osl] = torch.baddbmm(self.b2[:, None, osl], a[..., hsl], W2.transpose(1, 2))
        return z, out

    @torch.no_grad()
    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        """One SGD step on ``mean_b sum_j (out - y)^2`` for every run (module docstring); returns the losses (R,)."""
        z, out = self.forward(x)
        a = torch.relu(z)
        err = out.sub_(y)                                                  # (R, B, n_out)
        loss = err.pow(2).sum(-1).mean(-1)
        d_out = err.mul_(2.0 / x.shape[-2])
        d_a = torch.empty_like(a)
        for t, ((_, osl), hsl) in enumerate(zip(self.towers, self.hidden_slices)):
            do = d_out[..., osl]
            d_a[..., hsl] = torch.bmm(do, self.W2[t])
            self.W2[t].sub_(torch.bmm(do.transpose(1, 2), a[..., hsl]), alpha=lr)
        self.b2.sub_(d_out.sum(1), alpha=lr)
        d_z = d_a.mul_(z > 0)
        self.W1.sub_(torch.bmm(d_z.transpose(1, 2), x.expand(z.shape[0], *x.shape[-2:])), alpha=lr)
        self.b1.sub_(d_z.sum(1), alpha=lr)
        return loss


def _check_layout(towers: Sequence[tuple[int, slice]]) -> int:
    """The number of outputs of a tower layout whose output slices tile ``0..n_out`` in order."""
    stop = 0
    for h, osl in towers:
        if h < 1 or osl.start != stop or osl.stop <= osl.start:
            raise ValueError(f"towers must have >= 1 hidden unit and consecutive output slices, got {towers}")
        stop = osl.stop
    if not towers:
        raise ValueError("need at least one tower")
    return stop


def init_tower_mlp(towers: Sequence[tuple[int, slice]], d_in: int, seeds: Sequence[int], *,
                   out_std: float = 0.1, dtype: torch.dtype = torch.float32, device="cpu") -> TowerMLP:
    """One generator per run: ``W1 ~ N(0, 2 / D)`` (He), ``W2[t] ~ N(0, out_std^2 / h_t)``, zero biases."""
    n_out = _check_layout(towers)
    H = sum(h for h, _ in towers)
    W1, W2 = [], [[] for _ in towers]
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        W1.append(torch.randn(H, d_in, generator=g) * (2.0 / d_in) ** 0.5)
        for t, (h, osl) in enumerate(towers):
            W2[t].append(torch.randn(osl.stop - osl.start, h, generator=g) * out_std / h ** 0.5)
    R = len(seeds)
    to = lambda t: t.to(device, dtype).contiguous()
    return TowerMLP(to(torch.stack(W1)), torch.zeros(R, H, device=device, dtype=dtype),
                    [to(torch.stack(w)) for w in W2], torch.zeros(R, n_out, device=device, dtype=dtype),
                    tuple(towers))
