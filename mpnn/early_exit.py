"""Depth sparsity: early-exit networks (BranchyNet, Teerapittayanon et al. 2016).

A backbone of stages ``f_1 .. f_L`` carries an exit head ``g_i`` after each stage. Training minimises the
weighted sum of the exits' losses (BranchyNet, eq. 1 there)::

    L(x, y) = sum_i w_i * CE(g_i(f_i(...f_1(x))), y)

At inference a sample leaves at the first exit whose prediction is confident enough: with
``p = softmax(g_i(h_i))`` and the normalised entropy ``H(p) = -sum_c p_c log p_c / log C`` (in [0, 1]),
the sample exits at ``i`` when ``H(p) < T`` (the last exit takes everything left). In the mask language of
Scardapane et al. (2024) this is depth sparsity: a per-sample binary mask over the remaining layers.

:func:`early_exit_predict` really skips work: after every exit the samples that left are removed from
the batch, so the later stages run on fewer rows. :func:`exit_costs` counts the FLOPs a sample pays
when it leaves at each exit (2 FLOPs per multiply-add of every ``Conv2d`` and ``Linear``; ReLU, pooling and
the entropy are not counted), from which :func:`predicted_speedup` gives the FLOP-predicted speed-up.
:func:`exit_loss` is the training objective above; the chapter trains it with :func:`mpnn.train.fit`
(``mpnn.experiments.early_exits``), which also measures the wall time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EarlyExitConfig", "EarlyExitNet", "ExitResult", "normalised_entropy", "early_exit_predict",
    "exit_decisions", "exit_fractions", "count_flops", "exit_costs", "full_cost", "predicted_speedup",
    "exit_loss", "exit_logits", "sweep_metrics", "choose_threshold",
]


@dataclass(frozen=True)
class EarlyExitConfig:
    """LeNet-like backbone on 1x28x28 images with a first exit after the first conv block.

    stage 1: conv5x5(1 -> c1, pad 2) + ReLU + maxpool2            -> (c1, 14, 14)
    exit 1 : maxpool2 + flatten + linear(c1*7*7 -> classes)
    stage 2: conv5x5(c1 -> c2) + ReLU + maxpool2 + flatten + linear(c2*5*5 -> hidden) + ReLU
    exit 2 : linear(hidden -> classes)
    """

    c1: int = 16
    c2: int = 32
    hidden: int = 128
    classes: int = 10

    def __post_init__(self):
        for name in ("c1", "c2", "hidden", "classes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EarlyExitConfig.{name} must be a positive integer, got {getattr(self, name)}")


class EarlyExitNet(nn.Module):
    """Backbone stages with one exit head after each (``stages[i]`` feeds ``exits[i]``)."""

    def __init__(self, config: EarlyExitConfig | None = None):
        super().__init__()
        c = config or EarlyExitConfig()
        self.config = c
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(1, c.c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(c.c1, c.c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(c.c2 * 5 * 5, c.hidden), nn.ReLU()),
        ])
        self.exits = nn.ModuleList([
            nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c.c1 * 7 * 7, c.classes)),
            nn.Linear(c.hidden, c.classes),
        ])

    @property
    def n_exits(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every sample: x (B, 1, 28, 28) -> [ (B, C) ] * n_exits."""
        _check_images(x)
        out = []
        h = x
        for stage, head in zip(self.stages, self.exits):
            h = stage(h)
            out.append(head(h))
        return out

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network without early exits: all stages, only the last head. (B, C)."""
        _check_images(x)
        h = x
        for stage in self.stages:
            h = stage(h)
        return self.exits[-1](h)


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected images of shape (batch, 1, 28, 28), got {tuple(x.shape)}; "
                         "convert uint8 MNIST with mpnn.data.mnist.to_tensor(images, shape=\"image\")")


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``-sum_c p_c log p_c / log C`` of ``p = softmax(logits)``: (..., C) -> (...), in [0, 1]."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


@dataclass
class ExitResult:
    logits: torch.Tensor      # (B, C) logits of the exit each sample left at
    exit_index: torch.Tensor  # (B,) int64, 0-based exit
    rows_per_stage: list[int]  # how many samples each stage actually processed

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(-1)


@torch.no_grad()
def early_exit_predict(model: EarlyExitNet, x: torch.Tensor, threshold: float) -> ExitResult:
    """Entropy-thresholded inference that drops exited samples from the batch.

    Stage ``i`` runs on the ``n_i`` samples still present; those with normalised entropy below
    ``threshold`` leave (their logits are written to the output rows they came from), the rest are
    gathered into a smaller batch for stage ``i + 1``.
    """
    _check_images(x)
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0 (normalised entropy), got {threshold}")
    B = x.shape[0]
    C = model.config.classes
    logits_out = torch.empty(B, C, device=x.device, dtype=x.dtype)
    exit_out = torch.empty(B, dtype=torch.long, device=x.device)
    rows = []
    idx = torch.arange(B, device=x.device)  # (n_i,) original row of each remaining sample
    h = x
    last = model.n_exits - 1
    for i, (stage, head) in enumerate(zip(model.stages, model.exits)):
        rows.append(int(idx.numel()))
        h = stage(h)
        logits = head(h)  # (n_i, C)
        if i == last:
            logits_out[idx] = logits
            exit_out[idx] = i
            break
        leave = normalised_entropy(logits) < threshold  # (n_i,)
        out_rows = idx[leave]
        logits_out[out_rows] = logits[leave]
        exit_out[out_rows] = i
        stay = ~leave
        idx, h = idx[stay], h[stay]
        if idx.numel() == 0:
            rows += [0] * (last - i)
            break
    return ExitResult(logits_out, exit_out, rows)


def exit_decisions(exit_logits: Sequence[torch.Tensor], threshold: float | torch.Tensor) -> torch.Tensor:
    """Exit index of every sample for one or many thresholds, from precomputed logits of all exits.

    ``exit_logits``: list of (B, C); ``threshold``: scalar or (T,) -> (B,) or (T, B). Equals the exit
    chosen by :func:`early_exit_predict` (used to sweep thresholds without re-running the network).
    """
    t = torch.as_tensor(threshold, dtype=exit_logits[0].dtype, device=exit_logits[0].device)
    scalar = t.dim() == 0
    H = torch.stack([normalised_entropy(l) for l in exit_logits[:-1]])  # (L-1, B)
    confident = H.unsqueeze(0) < t.reshape(-1, 1, 1)  # (T, L-1, B)
    L = len(exit_logits)
    last = torch.ones_like(confident[:, :1])  # (T, 1, B) the last exit takes everything
    confident = torch.cat([confident, last], dim=1)  # (T, L, B)
    first = confident.float().argmax(dim=1)  # (T, B) argmax returns the first maximum
    return first[0] if scalar else first


def exit_fractions(model: EarlyExitNet, x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``q_i``: the fraction of ``x`` that :func:`early_exit_predict` sends out at exit ``i``. (L,) float64"""
    idx = early_exit_predict(model, x, threshold).exit_index
    return torch.bincount(idx, minlength=model.n_exits).double() / len(idx)


# ---------------------------------------------------------------- FLOPs

def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs per sample of ``module(x)``: 2 * multiply-adds of every Conv2d and Linear (bias ignored).

    Conv2d: ``2 * H_out * W_out * C_out * (C_in / groups) * k_h * k_w``; Linear: ``2 * in * out``
    per output row. Counted with forward hooks on a one-sample input.
    """
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            per = out[0].numel() * (mod.in_channels // mod.groups) * kh * kw
            total[0] += 2 * per
        elif isinstance(mod, nn.Linear):
            rows = out[0].numel() // mod.out_features
            total[0] += 2 * rows * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(x[:1])
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _stage_and_head_flops(model: EarlyExitNet) -> tuple[list[int], list[int]]:
    p = next(model.parameters())
    h = torch.zeros(1, 1, 28, 28, device=p.device, dtype=p.dtype)
    stages, heads = [], []
    with torch.no_grad():
        for stage, head in zip(model.stages, model.exits):
            stages.append(count_flops(stage, h))
            h = stage(h)
            heads.append(count_flops(head, h))
    return stages, heads


def exit_costs(model: EarlyExitNet) -> torch.Tensor:
    """FLOPs paid by a sample that leaves at exit ``i``: ``sum_{j<=i} (stage_j + head_j)``. (L,)"""
    stages, heads = _stage_and_head_flops(model)
    return torch.tensor([s + h for s, h in zip(stages, heads)], dtype=torch.float64).cumsum(0)


def full_cost(model: EarlyExitNet) -> float:
    """FLOPs of the plain network (all stages, last head only) per sample."""
    stages, heads = _stage_and_head_flops(model)
    return float(sum(stages) + heads[-1])


def predicted_speedup(model: EarlyExitNet, exit_fractions: torch.Tensor) -> torch.Tensor:
    """FLOP-predicted speed-up ``full_cost / sum_i q_i cost_i`` for exit fractions ``q`` (..., L)."""
    q = torch.as_tensor(exit_fractions, dtype=torch.float64)
    return full_cost(model) / (q * exit_costs(model)).sum(-1)


# ---------------------------------------------------------------- training objective

def exit_loss(logits_per_exit: Sequence[torch.Tensor], labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """BranchyNet's joint objective ``sum_i w_i CE(logits_i, y)`` (eq. 1 there) over the model's output."""
    if len(weights) != len(logits_per_exit):
        raise ValueError(f"exit weights need one weight per exit ({len(logits_per_exit)}), got {list(weights)}")
    return sum(w * F.cross_entropy(logits, labels) for w, logits in zip(weights, logits_per_exit))


# ---------------------------------------------------------------- evaluation over thresholds

@torch.no_grad()
def exit_logits(model: EarlyExitNet, x: torch.Tensor, batch_size: int = 2500) -> list[torch.Tensor]:
    """Every exit's logits for every sample, computed once in large batches: (N, 1, 28, 28) -> [(N, C)] * L."""
    was_training = model.training
    model.eval()
    try:
        return [torch.cat(o) for o in zip(*[model(xb) for xb in x.split(batch_size)])]
    finally:
        model.train(was_training)


def sweep_metrics(outs: Sequence[torch.Tensor], y: torch.Tensor, thresholds: Sequence[float]) -> dict[str, torch.Tensor]:
    """Accuracy and exit fractions at every threshold from precomputed exit logits (``exit_logits``).

    Returns ``accuracy`` (T,), ``exit_fractions`` (T, L) (fraction of samples leaving at each exit),
    ``exit_accuracy`` (L,) (each exit alone on every sample) and ``decisions`` (T, B).
    """
    dec = exit_decisions(outs, torch.as_tensor(list(thresholds)))          # (T, B)
    pred = torch.stack(list(outs)).argmax(-1)                              # (L, B)
    chosen = pred.gather(0, dec)                                           # (T, B)
    L = len(outs)
    fractions = torch.stack([(dec == i).float().mean(1) for i in range(L)], dim=-1)  # (T, L)
    return {"accuracy": (chosen == y).float().mean(1), "exit_fractions": fractions,
            "exit_accuracy": (pred == y).float().mean(1), "decisions": dec}


def choose_threshold(accuracy: torch.Tensor, last_exit_accuracy: float, tolerance: float) -> int:
    """Index of the largest threshold whose accuracy is at least ``last_exit_accuracy - tolerance``
    (thresholds sorted increasingly); 0 when none is."""
    ok = (accuracy >= last_exit_accuracy - tolerance).nonzero().flatten()
    return int(ok.max()) if len(ok) else 0
