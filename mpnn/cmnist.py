"""Dense and split convolutional networks on CMNIST (Jarvis et al. 2023, section 6).

Tower (valid padding, ReLU after every convolution), for a 1 x 28 x 84 image::

    conv c x (9, 27) -> (c, 20, 58)   conv c x (7, 21) -> (c, 14, 38)   conv c x (5, 15) -> (c, 10, 24)
    flatten (c * 240) -> linear

* ``dense``: one tower with ``c = 32`` and a linear layer to all 1030 outputs (30 compositional,
  1000 non-compositional);
* ``split``: two towers with ``c = 16``, one ending in the 30 compositional outputs, the other in the
  1000 non-compositional ones; no parameter is shared, so each tower learns only from its own targets.
  Both towers run in one pass: the convolutions are grouped (``groups=2``, tower = group), the
  read-outs are two linear maps on the two halves of the features.

Training: plain SGD, loss = per-image sum of squared errors over all outputs, averaged over the
mini-batch. All weights and biases start from N(0, init_std^2) (paper: 0.01). Metrics (paper):
normalised errors ``SSE_comp / 3`` and ``SSE_noncomp / 100`` (both 1 for an all-zero output); added
here: per-digit accuracy (argmax of each 10-slot of the compositional output), whole-number accuracy
read from the compositional outputs (all three digits right) and from the non-compositional one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .data.cmnist import CMNIST, N_COMPOSITIONAL, N_NONCOMPOSITIONAL, NONCOMP_SCALE

__all__ = ["ConvTowers", "make_model", "init_normal", "evaluate", "train_cmnist", "CMNISTHistory",
           "KERNELS", "FEATURE_HW"]

KERNELS = ((9, 27), (7, 21), (5, 15))
FEATURE_HW = (10, 24)           # spatial size after the three valid convolutions on 28 x 84


class ConvTowers(nn.Module):
    """``towers`` independent conv towers of ``channels`` each, computed as grouped convolutions.

    ``outputs[i]`` is the read-out size of tower ``i``; the outputs are concatenated in tower order.
    ``x`` (B, 1, 28, 84) -> (B, sum(outputs)).
    """

    def __init__(self, *, channels: int, outputs: tuple[int, ...]):
        super().__init__()
        g = len(outputs)
        c = channels * g
        self.channels, self.outputs = channels, tuple(outputs)
        self.conv1 = nn.Conv2d(1, c, KERNELS[0])                 # every tower sees the image
        self.conv2 = nn.Conv2d(c, c, KERNELS[1], groups=g)       # tower i: channels i*ch..(i+1)*ch
        self.conv3 = nn.Conv2d(c, c, KERNELS[2], groups=g)
        feat = channels * FEATURE_HW[0] * FEATURE_HW[1]
        self.heads = nn.ModuleList(nn.Linear(feat, o) for o in outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))   # (B, g*ch, 10, 24)
        h = h.unflatten(1, (len(self.outputs), self.channels)).flatten(2)   # (B, g, ch*240)
        return torch.cat([head(h[:, i]) for i, head in enumerate(self.heads)], 1)

    def tower_parameters(self, i: int) -> list[tuple[torch.Tensor, slice]]:
        """``(parameter, slice of its first axis)`` pairs that belong to tower ``i``."""
        ch = slice(i * self.channels, (i + 1) * self.channels)
        out = []
        for conv in (self.conv1, self.conv2, self.conv3):
            out += [(conv.weight, ch), (conv.bias, ch)]
        head = self.heads[i]
        return out + [(head.weight, slice(None)), (head.bias, slice(None))]


def make_model(kind: str, *, dense_channels: int = 32, split_channels: int = 16) -> ConvTowers:
    """``"dense"``: one 32-channel tower -> 1030; ``"split"``: 16-channel towers -> 30 and -> 1000."""
    if kind == "dense":
        return ConvTowers(channels=dense_channels, outputs=(N_COMPOSITIONAL + N_NONCOMPOSITIONAL,))
    if kind == "split":
        return ConvTowers(channels=split_channels, outputs=(N_COMPOSITIONAL, N_NONCOMPOSITIONAL))
    raise ValueError(f"unknown CMNIST model {kind!r}; choose 'dense' or 'split'")


@torch.no_grad()
def init_normal(model: ConvTowers, seeds: list[int], init_std: float = 0.01) -> None:
    """Every weight and bias ~ N(0, init_std^2); tower ``i`` drawn from its own generator ``seeds[i]``."""
    if len(seeds) != len(model.outputs):
        raise ValueError(f"need one seed per tower ({len(model.outputs)}), got {len(seeds)}")
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        for p, sl in model.tower_parameters(i):
            block = p[sl]
            block.copy_(torch.randn(block.shape, generator=g) * init_std)


def _metrics(out: torch.Tensor, comp: torch.Tensor, noncomp: torch.Tensor, digits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image metric sums over a batch (summed; divide by n afterwards)."""
    oc, on = out[:, :N_COMPOSITIONAL], out[:, N_COMPOSITIONAL:]
    pred_digits = oc.unflatten(1, (3, 10)).argmax(-1)                       # (B, 3)
    right = pred_digits == digits
    number = digits @ torch.tensor([100, 10, 1], device=digits.device)
    return {"comp_error": (oc - comp).pow(2).sum(1).sum() / 3,
            "noncomp_error": (on - noncomp).pow(2).sum(1).sum() / NONCOMP_SCALE ** 2,
            "digit_acc": right.float().mean(1).sum(),
            "number_acc_comp": right.all(1).float().sum(),
            "number_acc_noncomp": (on.argmax(1) == number).float().sum()}


@torch.no_grad()
def evaluate(model: nn.Module, data: CMNIST, *, batch_size: int = 500, device="cpu") -> dict[str, float]:
    """Normalised errors and accuracies of ``model`` on ``data`` (means over images)."""
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(data), batch_size):
        idx = slice(start, start + batch_size)
        comp, noncomp = data.targets(idx)
        m = _metrics(model(data.inputs(idx).to(device)), comp.to(device), noncomp.to(device),
                     data.digits[idx].to(device))
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    model.train()
    return {k: v / len(data) for k, v in totals.items()}


@dataclass
class CMNISTHistory:
    """Per-epoch evaluations: ``rows`` of dicts with epoch, split and the metrics of :func:`evaluate`."""
    rows: list[dict] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)


def train_cmnist(kind: str, train: CMNIST, test: CMNIST, *, seeds: list[int], epochs: int,
                 lr: float = 2e-3, batch_size: int = 16, init_std: float = 0.01,
                 eval_train: CMNIST | None = None, device="cpu",
                 progress: Callable | None = None) -> tuple[ConvTowers, CMNISTHistory]:
    """Train one model; ``seeds[0]`` orders the mini-batches, ``seeds[1:]`` initialise the towers.

    Evaluates at epoch 0 and after every epoch on ``eval_train`` (default: ``train``) and ``test``.
    """
    import time
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0, lr > 0, batch_size >= 1; got {epochs}, {lr}, {batch_size}")
    model = make_model(kind)
    if len(seeds) != 1 + len(model.outputs):
        raise ValueError(f"{kind}: need {1 + len(model.outputs)} seeds (data order + one per tower), got {len(seeds)}")
    init_normal(model, seeds[1:], init_std)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(int(seeds[0]))
    eval_train = train if eval_train is None else eval_train
    hist = CMNISTHistory()

    def log(epoch):
        for split, data in (("train", eval_train), ("test", test)):
            hist.rows.append({"model": kind, "epoch": epoch, "split": split} | evaluate(model, data, device=device))

    log(0)
    comp_all, noncomp_all = train.targets()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(train), generator=order)
        for start in range(0, len(train), batch_size):
            idx = perm[start:start + batch_size]
            x = train.inputs(idx).to(device)
            y = torch.cat([comp_all[idx], noncomp_all[idx]], 1).to(device)   # (B, 1030)
            loss = (model(x) - y).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        hist.seconds_per_epoch.append(time.perf_counter() - t0)
        log(epoch)
        if progress is not None:
            progress(1)
    return model, hist
