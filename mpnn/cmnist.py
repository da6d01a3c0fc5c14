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

from .data.cmnist import (CMNIST, N_COMPOSITIONAL, N_NONCOMPOSITIONAL, NONCOMP_SCALE, compositional_targets,
                          noncompositional_targets)

__all__ = ["ConvTowers", "make_model", "init_normal", "evaluate", "train_cmnist", "CMNISTHistory",
           "mlp_towers", "pooled_inputs", "TowerMLP", "init_tower_mlp", "evaluate_runs", "train_tower_mlp",
           "seconds_per_step",
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


# ------------------------------------------------------------------- CPU scale: MLP towers
#
# The paper's convolutional towers need about 0.6 GFLOP per image and SGD step: its 300 epochs of
# 20,000 images are GPU-hours. The CPU-scale experiment keeps the task (three MNIST digits, 30
# compositional + 1000 non-compositional targets, per-image summed squared error, plain SGD) and the
# architectural contrast (one shared trunk vs one tower per target, same total width), but uses
# 2x2-average-pooled images (14 x 42), one hidden ReLU layer, a few hundred to a few thousand
# images and every seed of a model in one batched pass (``torch.baddbmm`` over runs, hand-written
# backward pass; about 1000x fewer FLOPs per image than the conv towers).

def mlp_towers(kind: str, hidden: int) -> tuple[tuple[int, slice], ...]:
    """``((hidden units, output slice), ...)`` per tower: ``dense`` one tower of ``hidden`` units to
    all 1030 outputs; ``split`` two towers of ``hidden // 2`` units, to the 30 and to the 1000 outputs."""
    n_out = N_COMPOSITIONAL + N_NONCOMPOSITIONAL
    if kind == "dense":
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        return ((hidden, slice(0, n_out)),)
    if kind == "split":
        if hidden < 2 or hidden % 2:
            raise ValueError(f"split needs an even hidden width >= 2 (two equal towers), got {hidden}")
        return ((hidden // 2, slice(0, N_COMPOSITIONAL)), (hidden // 2, slice(N_COMPOSITIONAL, n_out)))
    raise ValueError(f"unknown CMNIST model {kind!r}; choose 'dense' or 'split'")


def pooled_inputs(train: CMNIST, test: CMNIST, factor: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool both splits by ``factor`` and flatten: (n, 28/f * 84/f) float32, standardised
    with the training set's per-pixel mean and overall standard deviation."""
    if factor < 1 or 28 % factor:
        raise ValueError(f"factor must divide 28, got {factor}")
    pool = lambda cm: F.avg_pool2d(cm.inputs(), factor).flatten(1)
    xtr, xte = pool(train), pool(test)
    mu, sd = xtr.mean(0), xtr.std()
    return (xtr - mu) / sd, (xte - mu) / sd


@dataclass
class TowerMLP:
    """``R`` independent runs of one model kind: ``W1`` (R, H, D), ``b1`` (R, H), per tower
    ``W2[t]`` (R, o_t, h_t), ``b2`` (R, 1030). Tower ``t`` owns hidden units ``hidden_slices[t]``."""
    kind: str
    W1: torch.Tensor
    b1: torch.Tensor
    W2: list[torch.Tensor]
    b2: torch.Tensor
    towers: tuple[tuple[int, slice], ...]

    @property
    def hidden_slices(self) -> list[slice]:
        out, start = [], 0
        for h, _ in self.towers:
            out.append(slice(start, start + h))
            start += h
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (R, B, D) or shared (B, D) -> (pre-activations (R, B, H), outputs (R, B, 1030))."""
        R = self.W1.shape[0]
        z = torch.baddbmm(self.b1[:, None], x.expand(R, *x.shape[-2:]), self.W1.transpose(1, 2))
        a = torch.relu(z)
        out = torch.empty(R, x.shape[-2], self.b2.shape[-1], dtype=z.dtype, device=z.device)
        for (_, osl), hsl, W2 in zip(self.towers, self.hidden_slices, self.W2):
            out[..., osl] = torch.baddbmm(self.b2[:, None, osl], a[..., hsl], W2.transpose(1, 2))
        return z, out

    @torch.no_grad()
    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        """One SGD step on ``mean_b sum_j (out - y)^2`` for every run; returns the losses (R,).

        Backward by hand: ``dO = 2 (O - Y) / B``; per tower ``dW2 = dO^T A``, ``dA = dO W2``;
        ``dZ = dA * [Z > 0]``, ``dW1 = dZ^T X``. No parameter is shared between towers.
        """
        z, out = self.forward(x)
        a = torch.relu(z)
        err = out.sub_(y)                                                  # (R, B, 1030)
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


def init_tower_mlp(kind: str, d_in: int, hidden: int, seeds: list[int], *, out_std: float = 0.1,
                   dtype: torch.dtype = torch.float32, device="cpu") -> TowerMLP:
    """One generator per run: ``W1 ~ N(0, 2 / D)`` (He), ``W2[t] ~ N(0, out_std^2 / h_t)``, zero biases."""
    towers = mlp_towers(kind, hidden)
    H = sum(h for h, _ in towers)
    n_out = N_COMPOSITIONAL + N_NONCOMPOSITIONAL
    W1, W2 = [], [[] for _ in towers]
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        W1.append(torch.randn(H, d_in, generator=g) * (2.0 / d_in) ** 0.5)
        for t, (h, osl) in enumerate(towers):
            W2[t].append(torch.randn(osl.stop - osl.start, h, generator=g) * out_std / h ** 0.5)
    R = len(seeds)
    to = lambda t: t.to(device, dtype).contiguous()
    return TowerMLP(kind, to(torch.stack(W1)), torch.zeros(R, H, device=device, dtype=dtype),
                    [to(torch.stack(w)) for w in W2], torch.zeros(R, n_out, device=device, dtype=dtype), towers)


@torch.no_grad()
def evaluate_runs(model: TowerMLP, x: torch.Tensor, digits: torch.Tensor, *, batch_size: int = 2000
                  ) -> dict[str, torch.Tensor]:
    """The metrics of :func:`evaluate` for every run at once: ``{name: (R,)}`` means over images."""
    comp_all, non_all = compositional_targets(digits), noncompositional_targets(digits)
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        _, out = model.forward(x[sl])
        for r in range(out.shape[0]):
            m = _metrics(out[r], comp_all[sl].to(out), non_all[sl].to(out), digits[sl].to(out.device))
            for k, v in m.items():
                totals.setdefault(k, torch.zeros(out.shape[0], dtype=torch.float64))[r] += float(v)
    return {k: v / x.shape[0] for k, v in totals.items()}


def train_tower_mlp(kind: str, x_train: torch.Tensor, digits_train: torch.Tensor, *, init_seeds: list[int],
                    order_seeds: list[int], epochs: int, lr: float, batch_size: int = 32, hidden: int = 128,
                    out_std: float = 0.1, evals: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                    eval_every: int = 1, device="cpu") -> tuple[TowerMLP, list[dict]]:
    """Train ``len(init_seeds)`` runs of ``kind`` together by plain SGD.

    Run ``r`` starts from ``init_seeds[r]`` and visits the training images in the order drawn from
    ``order_seeds[r]`` (a fresh permutation every epoch; pass the same order seeds to both kinds for
    paired runs). ``evals`` maps a split name to ``(x, digits)``; they are evaluated at epoch 0, every
    ``eval_every`` epochs and at the end. Returns the model and rows
    ``{model, run, epoch, split, metrics...}``.
    """
    if len(init_seeds) != len(order_seeds) or not init_seeds:
        raise ValueError(f"need one init and one order seed per run, got {len(init_seeds)} and {len(order_seeds)}")
    if epochs < 0 or lr <= 0 or batch_size < 1 or eval_every < 1:
        raise ValueError(f"need epochs >= 0, lr > 0, batch_size >= 1, eval_every >= 1; "
                         f"got {epochs}, {lr}, {batch_size}, {eval_every}")
    dev = torch.device(device)
    model = init_tower_mlp(kind, x_train.shape[1], hidden, init_seeds, out_std=out_std, device=dev)
    x_train = x_train.to(dev, torch.float32)
    y_train = torch.cat([compositional_targets(digits_train), noncompositional_targets(digits_train)], 1).to(dev)
    gens = [torch.Generator().manual_seed(int(s)) for s in order_seeds]
    evals = {k: (x.to(dev, torch.float32), d) for k, (x, d) in (evals or {}).items()}
    rows: list[dict] = []

    def log(epoch):
        for split, (x, d) in evals.items():
            m = evaluate_runs(model, x, d)
            rows.extend({"model": kind, "run": r, "epoch": epoch, "split": split}
                        | {k: float(v[r]) for k, v in m.items()} for r in range(len(init_seeds)))

    log(0)
    n = x_train.shape[0]
    for epoch in range(1, epochs + 1):
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(dev)   # (R, n)
        for start in range(0, n, batch_size):
            idx = perm[:, start:start + batch_size]
            model.sgd_step(x_train[idx], y_train[idx], lr)
        if epoch % eval_every == 0 or epoch == epochs:
            log(epoch)
    return model, rows


def seconds_per_step(kind: str, *, steps: int = 3, batch_size: int = 16, lr: float = 2e-3,
                     init_std: float = 0.01, device="cpu") -> float:
    """Median wall time of one SGD step of the paper's ``kind`` model on random 28 x 84 images
    (after one untimed warm-up step): what an epoch of the paper costs on ``device``."""
    import time
    if steps < 1 or batch_size < 1:
        raise ValueError(f"need steps >= 1 and batch_size >= 1, got {steps}, {batch_size}")
    model = make_model(kind)
    init_normal(model, list(range(len(model.outputs))), init_std)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 1, 28, 84, generator=g).to(device)
    d = torch.randint(0, 10, (batch_size, 3), generator=g)
    y = torch.cat([compositional_targets(d), noncompositional_targets(d)], 1).to(device)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = (model(x) - y).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
