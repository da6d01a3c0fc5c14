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
:func:`exit_loss` is the training objective above; the chapter trains it with :func:`mpnn.infra.train.fit`
(``mpnn.experiments.early_exits``), which also measures the wall time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import stage1_kernel

__all__ = [
    "EarlyExitConfig", "EarlyExitNet", "ExitResult", "normalised_entropy", "early_exit_predict",
    "fused_stage1", "fused_exit1", "phase_weights", "exit_decisions", "exit_fractions", "count_flops", "exit_costs", "full_cost", "predicted_speedup",
    "exit_loss", "exit_logits", "sweep_metrics", "choose_threshold", "compiled_stage1_wins",
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
        """The plain network without early exits: all stages, only the last head. (B, C).

        Inference only (no autograd): stage 1 runs as the fused kernel :func:`fused_stage1` (equal to
        ``stages[0](x)`` within float rounding), the later stages as modules on its channels-last output."""
        _check_images(x)
        with torch.no_grad():
            h, _ = fused_stage1(self, x, with_exit=False)
            for stage in self.stages[1:]:
                h = stage(h)
            return self.exits[-1](h)


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected images of shape (batch, 1, 28, 28), got {tuple(x.shape)}; "
                         "convert uint8 MNIST with mpnn.data.mnist.to_tensor(images, shape=\"image\")")


# ---------------------------------------------------------------- the fused stage-1 kernel (inference)

FUSED_CHUNK = 32  # images per chunk of :func:`fused_stage1`: its intermediates (~2 MB) stay in the cache


def phase_weights(conv: nn.Conv2d) -> torch.Tensor:
    """The 5x5 single-channel kernel rearranged for a conv whose output is max-pooled 2x2 at once. (36, 4 C_out)

    Pooled output ``(h, w)`` is the max over the four phases ``(d_i, d_j) in {0,1}^2`` of
    ``conv(x)[2h + d_i, 2w + d_j] = sum_{r,c < 6} x_pad[2h + r, 2w + c] W'_{d_i d_j}[r, c]`` with
    ``W'_{d_i d_j}[r, c] = W[r - d_i, c - d_j]`` (zero outside the 5x5 kernel): the four phases share one
    6x6 input window, so one GEMM with K = 36 and N = 4 C_out computes all of them. Rows are ordered
    ``(r mod 2, r div 2, c mod 2, c div 2)`` as :func:`fused_stage1` lays out the window; columns ``(d_i, d_j, c_out)``.
    """
    c_out = conv.out_channels
    w = conv.weight[:, 0]                                               # (C_out, 5, 5)
    big = w.new_zeros(2, 2, c_out, 6, 6)
    for di in (0, 1):
        for dj in (0, 1):
            big[di, dj, :, di:di + 5, dj:dj + 5] = w
    return big.view(2, 2, c_out, 3, 2, 3, 2).permute(4, 3, 6, 5, 0, 1, 2).reshape(36, 4 * c_out)


def _check_fusable(model: "EarlyExitNet") -> None:
    conv = model.stages[0][0]
    if (conv.in_channels, conv.kernel_size, conv.padding, conv.stride, conv.groups) != (1, (5, 5), (2, 2), (1, 1), 1):
        raise ValueError("fused_stage1 needs stage 1 = conv5x5(1 -> C, pad 2) + ReLU + maxpool2 (EarlyExitNet's layout)")


@torch.no_grad()
def fused_stage1(model: "EarlyExitNet", x: torch.Tensor, with_exit: bool = True,
                 chunk: int = FUSED_CHUNK) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stage 1 (and optionally exit 1's logits) of ``model`` on ``x`` (B, 1, 28, 28), chunk by chunk.

    Same function as ``stages[0](x)`` and ``exits[0](...)`` up to float rounding, computed as
    ``relu(max_{phases}(window @ phase_weights) + bias)`` (:func:`phase_weights`; bias and ReLU commute with
    the max, so they run on the pooled values only), the exit head ``maxpool2 + linear`` on the chunk while it
    is in the cache (:func:`_exit1_logits`). Returns the stage-1
    features as a channels-last (B, C, 14, 14) view of a contiguous (B, 14, 14, C) tensor, and the (B, classes)
    exit-1 logits (None unless ``with_exit``). No autograd (inference only; training uses ``model.forward``).
    Where it can (float32 on the CPU, a C++ compiler) the compiled per-image loop of
    :mod:`mpnn.early_exit.stage1_kernel` computes the same equations (direct convolution, no zero taps); else this
    torch path.
    """
    _check_fusable(model)
    conv, head = model.stages[0][0], model.exits[0][-1]
    if compiled_stage1_wins(model, x, chunk):
        feats, logits = stage1_kernel.stage1(x, conv, head if with_exit else None)
        return feats.permute(0, 3, 1, 2), logits
    return _torch_stage1(model, x, with_exit, chunk)


def compiled_stage1_wins(model: "EarlyExitNet", x: torch.Tensor, chunk: int = FUSED_CHUNK) -> bool:
    """Does the compiled stage-1 loop serve ``x`` here: it can (:func:`mpnn.early_exit.stage1_kernel.usable`) and,
    measured once per channel count and batch-size class on this machine on (up to 512 of) these
    images, it runs faster than the chunked torch path (:func:`mpnn.infra.native.choose`)?"""
    conv, head = model.stages[0][0], model.exits[0][-1]
    if not stage1_kernel.usable(x, conv, head):
        return False
    from ..infra import native
    key = {"channels": conv.out_channels, "classes": head.out_features,
           "rows": 1 << max(0, (x.shape[0] - 1).bit_length())}

    def candidates():
        sample = x[:512].contiguous()
        return {"compiled": lambda: stage1_kernel.stage1(sample, conv, head),
                "torch": lambda: _torch_stage1(model, sample, True, chunk)}
    with torch.no_grad():
        return native.choose("early_exit.stage1", key, candidates, names=["compiled", "torch"]) == "compiled"


def _torch_stage1(model: "EarlyExitNet", x: torch.Tensor, with_exit: bool, chunk: int):
    """The torch path of :func:`fused_stage1`."""
    conv, head = model.stages[0][0], model.exits[0][-1]
    out = x.new_empty(x.shape[0], 14, 14, conv.out_channels)
    C = out.shape[-1]
    logits = x.new_empty(x.shape[0], head.out_features) if with_exit else None
    weight, pooled = _exit1_weight(head, C), x.new_empty(max(1, min(chunk, x.shape[0])), 7, 7, C)
    for s, feats in _stage1_chunks(model, x, chunk, out):
        if with_exit:
            _exit1_logits(head, weight, feats, pooled[:len(feats)], logits[s:s + len(feats)])
    return out.permute(0, 3, 1, 2), logits


@torch.no_grad()
def fused_exit1(model: "EarlyExitNet", x: torch.Tensor, threshold: float,
                chunk: int = FUSED_CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage 1, exit 1 and the exit decision ``H(p) < threshold`` fused chunk by chunk (:func:`fused_stage1`).

    Only the rows that stay are written out (gathered once, while the chunk is in the cache). Returns the
    exit-1 logits of all B rows, the staying rows' stage-1 features (n, C, 14, 14) channels-last, and
    their row numbers (n,) int64 in increasing order. Block 1, exit 1, the entropy and the gather run in
    one compiled loop per image where :mod:`mpnn.early_exit.stage1_kernel` can serve, else chunk by chunk in torch.
    """
    _check_fusable(model)
    conv, head = model.stages[0][0], model.exits[0][-1]
    if compiled_stage1_wins(model, x, chunk):
        logits, kept, stay_rows = stage1_kernel.stage1(x, conv, head, threshold)
        return logits, kept.permute(0, 3, 1, 2), stay_rows
    B, C = x.shape[0], conv.out_channels
    logits = x.new_empty(B, head.out_features)
    kept = x.new_empty(B, 14, 14, C)     # pages are touched only for the rows that stay
    rows, n_kept = [], 0
    weight, pooled = _exit1_weight(head, C), x.new_empty(max(1, min(chunk, B)), 7, 7, C)
    for s, feats in _stage1_chunks(model, x, chunk):
        chunk_logits = logits[s:s + len(feats)]
        _exit1_logits(head, weight, feats, pooled[:len(feats)], chunk_logits)
        stay = (~(normalised_entropy(chunk_logits) < threshold)).nonzero().flatten()
        torch.index_select(feats, 0, stay, out=kept[n_kept:n_kept + len(stay)])
        rows.append(stay + s)
        n_kept += len(stay)
    stay_rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=x.device)
    return logits, kept[:n_kept].permute(0, 3, 1, 2), stay_rows


def _stage1_chunks(model: "EarlyExitNet", x: torch.Tensor, chunk: int, out: torch.Tensor | None = None):
    """Yield ``(first row, stage-1 features (n, 14, 14, C))`` chunk by chunk; into ``out`` (B, 14, 14, C) if
    given, else into one reused chunk buffer."""
    _check_fusable(model)
    conv, B = model.stages[0][0], x.shape[0]
    C = conv.out_channels
    weights, bias = phase_weights(conv), conv.bias
    k = max(1, min(chunk, B))
    pad, window = x.new_zeros(k, 32, 32), x.new_empty(36, k * 196)
    phases, other = x.new_empty(k * 196, 4 * C), x.new_empty(k * 196, C)
    scratch = x.new_empty(k, 14, 14, C) if out is None else None
    for s in range(0, B, k):
        n = min(k, B - s)
        feats = out[s:s + n] if out is not None else scratch[:n]
        _stage1_chunk(x[s:s + n, 0], pad[:n], window[:, :n * 196], phases[:n * 196], other[:n * 196], weights, bias,
                      feats.view(n * 196, C))
        yield s, feats


def _exit1_weight(head: nn.Linear, channels: int) -> torch.Tensor:
    """Exit 1's linear weight for features flattened in channels-last (7, 7, C) order, transposed. (49 C, classes)"""
    return head.weight.view(-1, channels, 7, 7).permute(2, 3, 1, 0).reshape(-1, head.out_features)


def _exit1_logits(head: nn.Linear, weight: torch.Tensor, feats: torch.Tensor, pooled: torch.Tensor,
                  out: torch.Tensor) -> None:
    """Exit 1 (maxpool2 + linear) on channels-last features (n, 14, 14, C) into ``out`` (n, classes).

    The 2x2 max runs on the four strided phases of ``feats`` into ``pooled`` (n, 7, 7, C); the linear takes
    them flattened channels-last with the weight of :func:`_exit1_weight` (same sum, another order)."""
    f = feats.view(len(feats), 7, 2, 7, 2, feats.shape[-1])
    torch.maximum(f[:, :, 0, :, 0], f[:, :, 0, :, 1], out=pooled)
    pooled.copy_(torch.maximum(pooled, torch.maximum(f[:, :, 1, :, 0], f[:, :, 1, :, 1])))
    torch.addmm(head.bias, pooled.view(len(feats), -1), weight, out=out)


def _stage1_chunk(x, pad, window, phases, other, weights, bias, out) -> None:
    """One chunk of :func:`fused_stage1` into ``out`` (n*196, C): pad, 6x6 windows, one GEMM, max, bias, ReLU."""
    n, C = x.shape[0], out.shape[1]
    pad[:, 2:30, 2:30] = x
    # window[(r%2, r//2, c%2, c//2), (i, h, w)] = pad[i, 2h + r, 2w + c]
    window.view(2, 3, 2, 3, n, 14, 14).copy_(pad.as_strided((2, 3, 2, 3, n, 14, 14), (32, 64, 1, 2, 1024, 64, 2)))
    torch.mm(window.t(), weights, out=phases)                            # (n*196, 4C): the four phases
    torch.maximum(phases[:, :C], phases[:, C:2 * C], out=out)
    torch.maximum(phases[:, 2 * C:3 * C], phases[:, 3 * C:], out=other)
    torch.maximum(out, other, out=out)
    out.add_(bias).relu_()


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
    logits_out, h, idx = fused_exit1(model, x, threshold)  # exit-1 logits of all rows; the staying rows of stage 1
    exit_out = torch.zeros(B, dtype=torch.long, device=x.device)
    rows = [B]
    last = model.n_exits - 1
    for i in range(1, model.n_exits):
        rows.append(int(idx.numel()))
        if idx.numel() == 0:
            rows += [0] * (last - i)
            break
        h = model.stages[i](h)
        logits = model.exits[i](h)  # (n_i, C)
        if i == last:
            logits_out[idx] = logits
            exit_out[idx] = i
            break
        leave = normalised_entropy(logits) < threshold  # (n_i,)
        out_rows = idx[leave]
        logits_out[out_rows] = logits[leave]
        exit_out[out_rows] = i
        stay = (~leave).nonzero().flatten()
        idx, h = idx[stay], _take_rows(h, stay)
    return ExitResult(logits_out, exit_out, rows)


def _take_rows(h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``h[rows]`` keeping a channels-last 4-d ``h`` channels-last (one contiguous copy of the rows)."""
    if h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous():
        return h.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return h.index_select(0, rows)


def exit_decisions(exit_logits: Sequence[torch.Tensor], threshold: float | torch.Tensor) -> torch.Tensor:
    """Exit index of every sample for one or many thresholds, from precomputed logits of all exits.

    ``exit_logits``: list of (B, C); ``threshold``: scalar or (T,) -> (B,) or (T, B). Equals the exit
    chosen by :func:`early_exit_predict` (used to sweep thresholds without re-running the network).
    """
    t = torch.as_tensor(threshold, dtype=exit_logits[0].dtype, device=exit_logits[0].device)
    scalar = t.dim() == 0
    H = torch.stack([normalised_entropy(l) for l in exit_logits[:-1]])  # (L-1, B)
    confident = H.unsqueeze(0) < t.reshape(-1, 1, 1)  # (T, L-1, B)
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
