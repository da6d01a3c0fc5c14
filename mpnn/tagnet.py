"""Tag-partitioned network of NeuralArena's "MNIST Neural Network Partitioning" (document 001).

Model (PARAGON ``NewNetwork`` + ``ForwardTagged``/``BackwardTagged``): input ``x`` (784 pixels
scaled to [0, 1]), a 16x16 hidden grid of leaky-ReLU neurons (slope 0.01), each locally connected
to a 5x5 input window (:mod:`mpnn.local`), and 10 softmax outputs fully connected to all 256
hidden neurons and shared by both tags. A tag ``t`` (label parity) switches on hidden columns
``[16 t / 2, 16 (t + 1) / 2)`` through :class:`mpnn.switch.TagSwitch`; the other neurons output 0:

    a = m_t * leaky(W1 x + b1),      p = softmax(W2 a + b2)                             (1)

Training is per-sample gradient ascent on ``log p_y`` with every per-weight gradient clipped:

    e   = onehot(y) - p                                (output error, CE gradient)
    W2 += lr * clip(e a^T),          b2 += lr * e
    d   = m_t * leaky'(W1 x + b1) * (W2^T e)          (W2 before its update)
    W1 += lr * clip(d x^T) on the window taps,        b1 += lr * d                      (2)

with ``clip`` to [-5, 5] and biases unclipped, exactly as ``BackwardTagged``. Neurons with
``m_t = 0`` get ``d = 0``: no update. :class:`StackedSGD` runs (2) for ``M`` models in lock-step
(one sample per model per step), with hand-written forward/backward: a step is about 25 tensor
operations whatever ``M`` is, run by TorchScript without Python in between (:func:`_sgd_steps`),
and each model is stored as its two column halves so that the idle half of a partitioned model
costs nothing. :func:`reference_sgd` is the plain autograd loop it is tested against.

The two-expert mixture of experts (:class:`TwoExpertMoE`) replaces the tag by a learned gate
``s = Wg x + bg`` (:class:`mpnn.switch.LearnedSwitch`, hard top-1 with a straight-through
softmax gradient): ``m = onehot(argmax s) + softmax(s) - sg(softmax(s))`` selects the expert's
hidden columns; the gate's gradient is ``ds = q * (g - <q, g>)`` with ``q = softmax(s)`` and
``g_e = sum_{h in e} (W2^T e)_h * leaky(W1 x + b1)_h``.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import determinism
from .local import LocallyConnected
from .switch import LearnedSwitch, TagSwitch

__all__ = [
    "partition_groups", "parity_switch", "TagNet", "TwoExpertMoE", "reference_sgd",
    "split_indices", "epoch_order", "make_schedule", "StackedSGD", "train_router",
    "train_routers", "minibatch_epoch", "PARITY",
]

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


def minibatch_epoch(model: TagNet, X: torch.Tensor, y: torch.Tensor, *, batch: int = 64,
                    lr: float = 0.01, clip: float = 5.0, order: torch.Tensor | None = None) -> None:
    """One epoch of mini-batch SGD (summed per-sample gradients, batch-level clip) with autograd.

    Not the document's setting; the speed comparison point for the per-sample trainer.
    """
    tags = PARITY.to(y.device)[y]
    order = torch.arange(len(X), device=X.device) if order is None else order
    params = list(model.parameters())
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        loss = F.cross_entropy(model(X[idx], tags=tags[idx]), y[idx], reduction="sum")
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * (g.clamp(-clip, clip) if p.dim() > 1 else g))


# ------------------------------------------------------------------ data order

def split_indices(n: int = 60000, n_train: int = 48000, *, seed: int = 0,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train/validation split of ``range(n)`` (PARAGON ``SplitDataset``: a permutation,
    the first ``n_train`` for training, in that permuted order)."""
    if not 0 < n_train <= n:
        raise ValueError(f"n_train must be in 1..{n}, got {n_train}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train].to(device), perm[n_train:].to(device)


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


# ------------------------------------------------------------------ the per-sample step loop

def _sgd_steps(code: List[int], lo_of: List[int], hi_of: List[int], masked: List[bool],
               patches: torch.Tensor, pidx: torch.Tensor, X: torch.Tensor, xrow: torch.Tensor,
               rows: torch.Tensor, onehot: torch.Tensor, mask_all: torch.Tensor,
               W1b: torch.Tensor, b1b: torch.Tensor, W2b: torch.Tensor, b2: torch.Tensor,
               own: torch.Tensor, Wg: torch.Tensor, bg: torch.Tensor,
               lr: float, clip: float, slope: float, local: bool, moe: bool) -> int:
    """Eq. (2) for the steps of one planned chunk (see :meth:`StackedSGD.fit`); returns how many
    steps had a hidden error ``|d|`` beyond the clip (input-side gradients clamped). Step ``i``
    uses the blocks ``lo_of[code[i]]:hi_of[code[i]]``."""
    clipped = 0
    experts = torch.arange(2, device=b2.device)
    for i in range(len(code)):
        c = code[i]
        lo = lo_of[c]
        hi = hi_of[c]
        W1 = W1b[lo:hi]
        b1 = b1b[lo:hi]
        W2 = W2b[lo:hi]
        if local:                                            # x*255 in window-tap layout
            xin = patches.index_select(0, pidx[i, lo:hi]).float()             # (n, K, Hb)
            pre = torch.add(b1, (xin * W1).sum(1), alpha=1.0 / 255)          # (n, Hb)
        else:
            xin = X.index_select(0, xrow[i, lo:hi])                           # (n, P)
            pre = torch.add(b1, (W1 * xin.unsqueeze(1)).sum(2))             # (n, Hb)
        act = F.leaky_relu(pre, slope)
        s = bg
        xg = bg
        if moe:                                              # gate: hard top-1 expert per model
            xg = X.index_select(0, rows[i])                                   # (M, P)
            s = torch.add(bg, (Wg * xg.unsqueeze(1)).sum(2))                  # (M, 2)
            mask = (s.argmax(1).unsqueeze(1) == experts).float().view(-1, 1)  # (2M, 1)
        else:
            mask = mask_all[i, lo:hi].unsqueeze(1)                            # (n, 1)
        a = act * mask if (moe or masked[c]) else act
        zb = (W2 * a.unsqueeze(1)).sum(2)                                     # (n, C)
        z = torch.index_add(b2, 0, own[lo:hi], zb)        # (M, C), blocks added in block order
        err = onehot[i] - torch.softmax(z, 1)                                 # (M, C)
        eb = err.index_select(0, own[lo:hi])                                  # (n, C)
        back = torch.bmm(eb.unsqueeze(1), W2).squeeze(1)                      # (n, Hb), old W2
        d = torch.ops.aten.leaky_relu_backward(back, pre, slope, False)
        if moe or masked[c]:
            d = d * mask
        ds = bg
        if moe:
            q = torch.softmax(s, 1)
            g = (back * act).sum(1).view(-1, 2)                               # d log p / d m_e
            ds = q * (g - (q * g).sum(1, keepdim=True))
            big = float(torch.cat([d.view(-1), ds.view(-1)]).abs_().amax())
        else:
            big = float(d.abs().amax())
        W2.add_((eb.unsqueeze(2) * a.unsqueeze(1)).clamp_(-clip, clip), alpha=lr)
        if big <= clip:                      # x in [0, 1]: no input-side gradient reaches the clip
            if local:
                W1.addcmul_(xin, d.unsqueeze(1), value=lr / 255)
            else:
                W1.addcmul_(d.unsqueeze(2), xin.unsqueeze(1), value=lr)
            if moe:
                Wg.addcmul_(ds.unsqueeze(2), xg.unsqueeze(1), value=lr)
        else:
            clipped += 1
            if local:
                g1 = xin.mul_((d * (1.0 / 255)).unsqueeze(1))
            else:
                g1 = d.unsqueeze(2) * xin.unsqueeze(1)
            W1.add_(g1.clamp_(-clip, clip), alpha=lr)
            if moe:
                Wg.add_((ds.unsqueeze(2) * xg.unsqueeze(1)).clamp_(-clip, clip), alpha=lr)
        b2.add_(err, alpha=lr)
        b1.add_(d, alpha=lr)
        if moe:
            bg.add_(ds, alpha=lr)
    return clipped


_SCRIPTED: list = []


def _steps_kernel(eager: bool = False):
    """The step loop compiled by TorchScript (no Python between the ~25 tensor operations of a
    step: about half the time of a step at the chapter's sizes), or the same function run eagerly
    when ``eager`` or when scripting is unavailable; both run the same operations in the same order."""
    if eager:
        return _sgd_steps
    if not _SCRIPTED:
        import warnings
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")               # torch.jit.script is deprecated
                _SCRIPTED.append(torch.jit.script(_sgd_steps))
        except Exception:                                     # pragma: no cover - torch without TorchScript
            _SCRIPTED.append(_sgd_steps)
    return _SCRIPTED[0]


# ------------------------------------------------------------------ fast stacked trainer

class StackedSGD:
    """Eq. (2) for ``M`` models at once, in lock-step (one sample per model per step).

    Built from :class:`TagNet` modules (tag routing by label parity; partitioned or not; local
    models may use different window layouts, e.g. ``offset``) or from :class:`TwoExpertMoE`
    modules (learned gate), all of one class, connectivity and grid size. ``X`` (N, 784) in [0, 1]
    and ``y`` (N,) are held on the device.

    *Blocks.* Every model's hidden layer is stored as its two column halves (the tag partitions,
    also the MoE's experts), ``2 M`` blocks of ``H / 2`` units each: ``W1`` (2M, K, H/2) local or
    (2M, H/2, P) full, ``b1`` (2M, H/2), ``W2`` (2M, C, H/2); ``b2`` (M, C) per model. A step only
    computes the blocks that can be active: in :meth:`fit` the blocks are ordered

        [tag-0 halves of blocked partitioned models | both halves of every other model |
         tag-1 halves of blocked partitioned models]

    so that while every blocked partitioned model has the same tag (all but the few hundred steps
    per epoch where the seeds' even blocks end at different places) the active blocks are one
    contiguous slice, and the idle halves cost nothing. Other blocks are computed with a 0/1 mask
    (tag of a partitioned model in mixed order, the gate's choice for a MoE); a masked block has
    ``a = 0`` and ``d = 0``, so neither its weights nor the shared output columns change, as in (2).

    For local models the 5x5 windows of every image the schedule visits are gathered once per
    (layout, half) (uint8 when ``X`` holds k/255 values, as MNIST does), so that a step reads its
    inputs with one contiguous row copy. ``clip`` is one bound for every model (``float("inf")``
    switches clipping off). The output gradients ``e a^T`` are always clamped; the hidden ones
    ``d x^T`` only when some ``|d|`` exceeds the bound (as ``x`` is in [0, 1], none can otherwise),
    so that their update is usually one fused ``addcmul``.
    """

    def __init__(self, models: Sequence[nn.Module], X: torch.Tensor, y: torch.Tensor, *,
                 lr: float = 0.01, clip: float = 5.0, device=None):
        if not models:
            raise ValueError("need at least one model")
        kinds = {(type(m).__name__, m.connectivity, m.n_hidden) for m in models}
        if len(kinds) != 1:
            raise ValueError(f"models must share class, connectivity and size, got {sorted(kinds)}")
        m0 = models[0]
        if X.dim() != 2 or X.shape[1] != m0.n_inputs or len(X) != len(y):
            raise ValueError(f"X must be (N, {m0.n_inputs}) with one label per row; "
                             f"got X {tuple(X.shape)}, y {tuple(y.shape)}")
        if float(X.min()) < 0 or float(X.max()) > 1:
            raise ValueError("X must be scaled to [0, 1] (divide the uint8 images by 255)")
        if not clip > 0:
            raise ValueError(f"clip must be positive (float('inf') for no clipping), got {clip}")
        if len({m.slope for m in models}) != 1:
            raise ValueError("models must share the leaky-ReLU slope")
        device = torch.device(device) if device is not None else X.device
        self.device, self.lr, self.clip, self.M = device, float(lr), float(clip), len(models)
        self.slope = m0.slope
        self.local = m0.connectivity == "local"
        self.moe = isinstance(m0, TwoExpertMoE)
        self.P, self.H = m0.n_inputs, m0.n_hidden
        halves = partition_groups(m0.grid, 2)
        if len(halves[0]) != len(halves[1]):
            raise ValueError(f"the grid must split into two equal halves, got grid={m0.grid}")
        self.Hb = self.H // 2
        self.perm = torch.tensor(halves[0] + halves[1], device=device)     # block order -> unit
        self.inv = torch.argsort(self.perm)
        self.X = X.to(device, torch.float32).contiguous()                    # (N, P)
        self.y = y.to(device)
        self._models = list(models)
        half_masks = torch.zeros(2, self.H)
        for t in (0, 1):
            half_masks[t, halves[t]] = 1.0
        if self.moe:
            if m0.groups.shape[0] != 2:
                raise ValueError("StackedSGD supports two experts (the two column halves)")
            self.partitioned = [True] * self.M
            self.masks = half_masks.to(device).expand(self.M, 2, self.H)     # expert -> units
        else:
            self.partitioned = []
            for m in models:
                tab = m.switch.table.float()
                if tab.shape[0] != 2:
                    raise ValueError("TagNet models need two tags")
                if torch.equal(tab, half_masks):
                    self.partitioned.append(True)
                elif bool((tab == 1).all()):
                    self.partitioned.append(False)
                else:
                    raise ValueError("tag tables must be the two column halves or every unit")
            self.masks = torch.stack([m.switch.table.float() for m in models]).to(device)  # (M, 2, H)
        if self.local:                                    # window layouts, one id per model
            self.layouts, lay = [], []
            for m in models:
                for i, idx in enumerate(self.layouts):
                    if torch.equal(idx, m.hidden.index):
                        lay.append(i)
                        break
                else:
                    if self.layouts and self.layouts[0].shape != m.hidden.index.shape:
                        raise ValueError("local models must share the window size")
                    lay.append(len(self.layouts))
                    self.layouts.append(m.hidden.index.clone())
            self.layouts = [i.to(device) for i in self.layouts]
            self.lay = torch.tensor(lay, device=device)
            self.K = self.layouts[0].shape[1]
        # blocks, model-major (block 2 m + t) until fit() orders them
        p = self.perm.cpu()
        st = lambda ts: torch.stack([t.detach().float() for t in ts]).to(device).contiguous()
        if self.local:     # (H, K) -> (2, K, Hb)
            self.W1b = st([m.hidden.weight[p].view(2, self.Hb, -1).transpose(1, 2) for m in models])
        else:              # (H, P) -> (2, Hb, P)
            self.W1b = st([m.hidden.weight[p].view(2, self.Hb, -1) for m in models])
        self.W1b = self.W1b.flatten(0, 1).contiguous()
        self.b1b = st([m.hidden.bias[p].view(2, self.Hb) for m in models]).flatten(0, 1).contiguous()
        self.W2b = st([m.out.weight[:, p].view(-1, 2, self.Hb).transpose(0, 1) for m in models]) \
            .flatten(0, 1).contiguous()                                      # (2M, C, Hb)
        self.b2 = st([m.out.bias for m in models])                           # (M, C)
        self.C = self.b2.shape[1]
        self.eye = torch.eye(self.C, device=device)
        if self.moe:
            self.Wg = st([m.gate.gate.weight for m in models])               # (M, 2, P)
            self.bg = st([m.gate.gate.bias for m in models])                 # (M, 2)
        self.own = torch.arange(self.M, device=device).repeat_interleave(2)  # block -> model
        self.half = torch.arange(2, device=device).repeat(self.M)            # block -> half
        self.n_p = 0                                                         # blocked partitioned

    # ---------------------------------------------------------------- block bookkeeping
    def _order_blocks(self, blocked: list[bool]) -> None:
        """Reorder the blocks: tag-0 halves of the ``blocked`` models first, their tag-1 halves
        last, every other model's two halves in between (model order kept inside each part)."""
        pos = self.pos
        first = [int(pos[m, 0]) for m in range(self.M) if blocked[m]]
        middle = [int(pos[m, t]) for m in range(self.M) if not blocked[m] for t in (0, 1)]
        last = [int(pos[m, 1]) for m in range(self.M) if blocked[m]]
        order = torch.tensor(first + middle + last, device=self.device)
        for name in ("W1b", "b1b", "W2b", "own", "half"):
            setattr(self, name, getattr(self, name).index_select(0, order).contiguous())
        self.n_p = len(first)

    @property
    def pos(self) -> torch.Tensor:
        """(M, 2) block index of each model's two halves."""
        pos = torch.empty(self.M, 2, dtype=torch.long, device=self.device)
        pos[self.own, self.half] = torch.arange(2 * self.M, device=self.device)
        return pos

    def _dense(self, sel: torch.Tensor):
        """Weights of models ``sel`` in the modules' unit order: W1 (S, H, K|P), b1 (S, H), W2 (S, C, H)."""
        blocks = self.pos[sel]                                               # (S, 2)
        S = len(sel)
        if self.local:
            W1 = self.W1b[blocks].transpose(2, 3).reshape(S, self.H, self.K)
        else:
            W1 = self.W1b[blocks].reshape(S, self.H, self.P)
        b1 = self.b1b[blocks].reshape(S, self.H)
        W2 = self.W2b[blocks].permute(0, 2, 1, 3).reshape(S, self.C, self.H)
        return W1[:, self.inv], b1[:, self.inv], W2[:, :, self.inv]

    @property
    def W1(self) -> torch.Tensor:
        """Hidden weights of every model (a copy): (M, K, H) local, (M, H, P) full."""
        W1 = self._dense(torch.arange(self.M, device=self.device))[0]
        return W1.transpose(1, 2).contiguous() if self.local else W1

    @property
    def b1(self) -> torch.Tensor:
        return self._dense(torch.arange(self.M, device=self.device))[1]

    @property
    def W2(self) -> torch.Tensor:
        return self._dense(torch.arange(self.M, device=self.device))[2]

    def _gather_windows(self, rows: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Window taps of images ``rows`` for every (layout, half): (L * 2 * R, K, Hb), layout-major,
        in units of 1/255 (uint8 when X holds k/255 values, else float32)."""
        X = F.pad(self.X.index_select(0, rows), (0, 1))                     # skipped taps -> 0
        X255 = (X * 255).round()
        exact = bool(torch.equal(X255 / 255, X))
        X = X255.to(torch.uint8) if exact else X * 255
        R, K, Hb = len(rows), self.K, self.Hb
        out = torch.empty(len(self.layouts) * 2 * R, K, Hb, device=X.device, dtype=X.dtype)
        p = self.perm.to(X.device)
        for l, index in enumerate(self.layouts):
            for t in (0, 1):
                flat = index[p[t * Hb:(t + 1) * Hb]].T.flatten()            # (K*Hb,) tap-major
                base = (l * 2 + t) * R
                for s in range(0, R, chunk):
                    xs = X[s:s + chunk].index_select(1, flat)
                    out[base + s:base + s + len(xs)] = xs.view(-1, K, Hb)
        return out

    # ---------------------------------------------------------------- training, eq. (2)
    def step(self, rows: torch.Tensor) -> None:
        """One per-sample SGD step for every model; ``rows`` (M,) are the samples' indices."""
        self.fit(torch.as_tensor(rows, device=self.device).view(1, self.M), progress=False)

    def fit(self, schedule: torch.Tensor, *, every: int = 0,
            callback: Callable[[int], None] | None = None, progress: bool = True,
            desc: str = "per-sample SGD", plan_chunk: int = 2048, eager: bool = False) -> int:
        """Run ``schedule`` (T, M) of sample indices; ``callback(t)`` after every ``every`` steps.

        A partitioned model whose tag changes at most once per 50 steps counts as blocked (see the
        class docstring). The steps run in chunks of at most ``plan_chunk``: the chunk's inputs,
        labels, masks and block slices are looked up with a few batched operations, then
        :func:`_sgd_steps` runs its steps (TorchScript unless ``eager``; same result either way).
        On the CPU the steps run on one thread: each operation is tiny, and thread hand-offs would
        cost more than they save. Returns the number of steps whose hidden-layer (or gate) gradients
        had to be clamped (also added to ``self.clipped_steps``).
        """
        if schedule.dim() != 2 or schedule.shape[1] != self.M:
            raise ValueError(f"schedule must be (T, {self.M}), got {tuple(schedule.shape)}")
        from tqdm.auto import tqdm
        schedule = schedule.to(self.device)
        T = schedule.shape[0]
        parity = PARITY.to(self.device)
        if self.moe:
            blocked = [False] * self.M
        else:
            tags = parity[self.y[schedule]]                                  # (T, M)
            switches = (tags[1:] != tags[:-1]).sum(0).tolist() if T > 1 else [0] * self.M
            blocked = [self.partitioned[m] and switches[m] * 50 <= T for m in range(self.M)]
        self._order_blocks(blocked)
        nb, n_p = 2 * self.M, self.n_p
        mixed = any(self.partitioned[m] and not blocked[m] for m in range(self.M))
        # the three slices a step can use: every blocked model on tag 0, on tag 1, or mixed (all)
        lo_of, hi_of = [0, n_p, 0], [nb - n_p, nb, nb]
        masked = [mixed, mixed, mixed or n_p > 0]
        unit = torch.tensor([not p for p in self.partitioned], device=self.device)[self.own]
        blocked_idx = torch.tensor([m for m in range(self.M) if blocked[m]], dtype=torch.long,
                                   device=self.device)
        empty = torch.empty(0, device=self.device)
        empty_long = torch.empty(0, 0, dtype=torch.long, device=self.device)
        if self.local:
            needed = schedule.unique()                                       # sorted rows
            patches = self._gather_windows(needed)
            gbase = (self.lay[self.own] * 2 + self.half) * len(needed)      # (nb,)
        else:
            patches = empty
        Wg, bg = (self.Wg, self.bg) if self.moe else (empty, empty)
        kernel = _steps_kernel(eager)
        cuts = sorted(set(range(0, T, plan_chunk)) | (set(range(0, T, every)) if every else set()) | {T})
        clipped = 0
        with determinism.cpu_threads(1, self.device), torch.no_grad(), \
                tqdm(total=T, desc=desc, disable=not progress, mininterval=1.0) as bar:
            for p0, p1 in zip(cuts[:-1], cuts[1:]):
                rows = schedule[p0:p1].contiguous()                          # (Tc, M)
                yc = self.y[rows]
                onehot = self.eye[yc]                                        # (Tc, M, C)
                if self.moe:
                    code, mask_all = [2] * len(rows), empty
                else:
                    tb = parity[yc][:, self.own]                             # (Tc, nb) tag per block
                    mask_all = ((tb == self.half) | unit).float()
                    if n_p:
                        tp = parity[yc].index_select(1, blocked_idx)
                        code = torch.where((tp == 0).all(1), 0,
                                           torch.where((tp == 1).all(1), 1, 2)).tolist()
                    else:
                        code = [2] * len(rows)
                if self.local:
                    pidx = gbase + torch.searchsorted(needed, rows)[:, self.own]   # (Tc, nb)
                    xrow = empty_long
                else:
                    pidx, xrow = empty_long, rows[:, self.own].contiguous()
                with torch.jit.optimized_execution(False):   # same arithmetic as eager
                    clipped += kernel(code, lo_of, hi_of, masked, patches, pidx, self.X, xrow, rows,
                                      onehot, mask_all, self.W1b, self.b1b, self.W2b, self.b2,
                                      self.own, Wg, bg, self.lr, self.clip, self.slope,
                                      self.local, self.moe)
                bar.update(p1 - p0)
                if every and callback is not None and (p1 % every == 0 or p1 == T):
                    callback(p1)
        self.clipped_steps = getattr(self, "clipped_steps", 0) + clipped
        return clipped

    # ---------------------------------------------------------------- batched inference
    def _pick(self, models) -> torch.Tensor:
        """Model indices (S,) of a ``models`` argument: None = all ``M``."""
        if models is None:
            return torch.arange(self.M, device=self.device)
        idx = torch.as_tensor(models, dtype=torch.long, device=self.device).flatten()
        if len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.M:
            raise ValueError(f"models must be indices in 0..{self.M - 1}, got {models!r}")
        return idx

    @torch.no_grad()
    def hidden(self, X: torch.Tensor, models=None) -> torch.Tensor:
        """Unmasked activations: X (B, P) -> (S, B, H) for the models ``models`` (default all M)."""
        sel = self._pick(models)
        W1, b1, _ = self._dense(sel)
        x = X.to(self.device, torch.float32)
        if not self.local:
            pre = torch.einsum("bp,mhp->mbh", x, W1)
        else:
            x = F.pad(x, (0, 1))
            lays = self.lay[sel]
            if bool((lays == lays[0]).all()):
                pre = torch.einsum("bhk,mhk->mbh", x[:, self.layouts[int(lays[0])]], W1)
            else:
                pre = torch.empty(len(sel), len(x), self.H, device=self.device)
                for l, index in enumerate(self.layouts):
                    which = (lays == l).nonzero().flatten()
                    if len(which):
                        pre[which] = torch.einsum("bhk,mhk->mbh", x[:, index], W1[which])
        return F.leaky_relu_(pre.add_(b1[:, None]), self.slope)

    @torch.no_grad()
    def gate_choice(self, X: torch.Tensor) -> torch.Tensor:
        """MoE only: chosen expert per model and input, (M, B)."""
        s = torch.einsum("bp,mep->mbe", X.to(self.device, torch.float32), self.Wg) + self.bg[:, None]
        return s.argmax(-1)

    def _check_route(self, route: str, tags) -> None:
        if route not in ("tag", "all", "gate"):
            raise ValueError(f"route must be 'tag', 'all' or 'gate', got {route!r}")
        if route == "gate" and not self.moe:
            raise ValueError("route='gate' needs TwoExpertMoE models")
        if route == "tag" and (tags is None or self.moe):
            raise ValueError("route='tag' needs tags and TagNet models")

    @torch.no_grad()
    def _routed_logits(self, xb: torch.Tensor, sel: torch.Tensor, W2m: torch.Tensor,
                       b2: torch.Tensor, routes) -> list[torch.Tensor]:
        """Logits (S, b, C) of the images ``xb`` under each ``(route, tags)`` in ``routes``, from one
        hidden pass: ``W2m`` (S, 3, C, H) holds W2 masked to tag 0, tag 1 and unmasked."""
        z = torch.einsum("mbh,mrch->mrbc", self.hidden(xb, sel), W2m) + b2[:, None, None]   # (S, 3, b, C)
        out = []
        for route, tags in routes:
            if route == "all":
                out.append(z[:, 2])
                continue
            t = self.gate_choice(xb)[sel] if route == "gate" else \
                tags.to(self.device).expand(len(sel), len(xb))           # (S, b)
            out.append(torch.where(t[..., None] == 0, z[:, 0], z[:, 1]))
        return out

    def _masked_W2(self, sel: torch.Tensor) -> torch.Tensor:
        _, _, W2 = self._dense(sel)
        m = self.masks[sel]                                                  # (S, 2, H)
        return torch.stack([W2 * m[:, :1], W2 * m[:, 1:], W2], 1)            # (S, 3, C, H)

    @torch.no_grad()
    def logits(self, X: torch.Tensor, tags: torch.Tensor | None = None, *, route: str = "tag",
               chunk: int = 2048, models=None) -> torch.Tensor:
        """Logits (S, B, C) of the models ``models`` (default all M). ``route``: ``"tag"`` (hidden
        mask of tag ``tags`` (B,) or (S, B)), ``"all"`` (every hidden neuron active) or ``"gate"``
        (MoE: the gate's expert)."""
        self._check_route(route, tags)
        sel = self._pick(models)
        W2m, b2 = self._masked_W2(sel), self.b2[sel]
        return torch.cat([self._routed_logits(X[s:s + chunk], sel, W2m, b2,
                                              [(route, None if tags is None else tags[..., s:s + chunk])])[0]
                          for s in range(0, len(X), chunk)], 1)

    @torch.no_grad()
    def correct(self, X, y, routes: dict, *, models=None, chunk: int = 2048) -> dict:
        """Per-image hits (S, B) bool under several routings, from one hidden pass per chunk.

        ``routes`` maps a name to ``"all"``, ``"gate"``, ``"tag"`` (the label parity: the document's
        oracle routing) or a tag tensor (B,) or (S, B). Returns ``{name: (S, B) bool}``.
        """
        sel = self._pick(models)
        parsed = {}
        for name, r in routes.items():
            if isinstance(r, str) and r == "tag":
                parsed[name] = ("tag", PARITY.to(y.device)[y])
            elif isinstance(r, str):
                parsed[name] = (r, None)
            else:
                parsed[name] = ("tag", r)
            self._check_route(*parsed[name])
        W2m, b2 = self._masked_W2(sel), self.b2[sel]
        y = y.to(self.device)
        hits = {name: torch.zeros(len(sel), len(X), dtype=torch.bool, device=self.device) for name in parsed}
        for s in range(0, len(X), chunk):
            rs = [(r, None if t is None else t[..., s:s + chunk]) for r, t in parsed.values()]
            for name, z in zip(parsed, self._routed_logits(X[s:s + chunk], sel, W2m, b2, rs)):
                hits[name][:, s:s + chunk] = z.argmax(-1) == y[s:s + chunk]
        return hits

    def accuracies(self, X, y, routes: dict, *, models=None, chunk: int = 2048) -> dict:
        """Accuracy (S,) under several routings (see :meth:`correct`): ``{name: (S,) accuracy}``."""
        hits = self.correct(X, y, routes, models=models, chunk=chunk)
        return {name: h.float().mean(1).cpu() for name, h in hits.items()}

    def accuracy(self, X, y, tags=None, *, route: str = "tag", models=None) -> torch.Tensor:
        """(S,) accuracy of the models ``models`` (default all M); ``route="tag"`` with
        ``tags=None`` uses the label parity (the document's oracle routing)."""
        r = route if (route != "tag" or tags is None) else tags
        return self.accuracies(X, y, {"a": r}, models=models)["a"]

    def export(self, models=None) -> list[nn.Module]:
        """Copies of the original modules (those of ``models``, default all) holding the trained weights."""
        import copy
        sel = self._pick(models)
        W1, b1, W2 = self._dense(sel)
        out = []
        for i, k in enumerate(sel.tolist()):
            m = copy.deepcopy(self._models[k])
            with torch.no_grad():
                m.hidden.weight.copy_(W1[i])
                m.hidden.bias.copy_(b1[i])
                m.out.weight.copy_(W2[i]); m.out.bias.copy_(self.b2[k])
                if self.moe:
                    m.gate.gate.weight.copy_(self.Wg[k]); m.gate.gate.bias.copy_(self.bg[k])
            out.append(m)
        return out


# ------------------------------------------------------------------ learned parity router

def train_router(X: torch.Tensor, tags: torch.Tensor, *, epochs: int = 5, batch: int = 128,
                 lr: float = 0.1, seed: int = 0, n_tags: int = 2) -> LearnedSwitch:
    """A :class:`LearnedSwitch` (linear gate on the pixels, hard top-1) trained to predict the tag.

    Mini-batch SGD on the cross-entropy of ``softmax(s)`` against ``tags``; route with
    ``switch.scores(x).argmax(-1)``. X (N, 784) in [0, 1], tags (N,).
    """
    g = torch.Generator().manual_seed(seed)
    switch = LearnedSwitch(X.shape[1], n_tags, mode="topk", k=1).to(X.device)
    with torch.no_grad():
        switch.gate.weight.copy_(torch.randn(switch.gate.weight.shape, generator=g) * 0.01)
        switch.gate.bias.zero_()
    opt = torch.optim.SGD(switch.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g).to(X.device)
        for s in range(0, len(X), batch):
            idx = perm[s:s + batch]
            loss = F.cross_entropy(switch.scores(X[idx]), tags[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return switch.eval()


def train_routers(X: torch.Tensor, tags: torch.Tensor, train_idxs: Sequence[torch.Tensor], *,
                  seeds: Sequence[int], epochs: int = 5, batch: int = 128, lr: float = 0.1,
                  n_tags: int = 2) -> list[LearnedSwitch]:
    """:func:`train_router` for several training sets in one vectorised pass.

    Router ``s`` is trained on ``X[train_idxs[s]]`` against ``tags[train_idxs[s]]`` with seed
    ``seeds[s]``: the same initial weights, batches and momentum-SGD updates as
    ``train_router(X[train_idxs[s]], tags[train_idxs[s]], seed=seeds[s])`` (up to float rounding;
    the gates are stacked and the summed per-router mean losses differentiated at once). Every
    training set must have the same size.
    """
    if len(train_idxs) != len(seeds) or not len(seeds):
        raise ValueError("need one seed per training set")
    n = len(train_idxs[0])
    if any(len(i) != n for i in train_idxs):
        raise ValueError("every training set must have the same number of samples")
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    W = torch.stack([torch.randn(n_tags, X.shape[1], generator=g) * 0.01 for g in gens]).to(X.device)
    W.requires_grad_()
    b = torch.zeros(len(seeds), n_tags, device=X.device, requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=lr, momentum=0.9)
    idxs = torch.stack([torch.as_tensor(i, device=X.device) for i in train_idxs])   # (S, n)
    for _ in range(epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(X.device)
        order = torch.gather(idxs, 1, perms)                                        # (S, n)
        for s in range(0, n, batch):
            rows = order[:, s:s + batch]                                            # (S, B)
            logits = torch.baddbmm(b[:, None, :], X[rows], W.transpose(1, 2))      # (S, B, T)
            loss = F.cross_entropy(logits.flatten(0, 1), tags[rows].flatten(), reduction="none")
            loss = loss.view(len(seeds), -1).mean(1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = []
    for i in range(len(seeds)):
        sw = LearnedSwitch(X.shape[1], n_tags, mode="topk", k=1).to(X.device)
        with torch.no_grad():
            sw.gate.weight.copy_(W[i]); sw.gate.bias.copy_(b[i])
        out.append(sw.eval())
    return out
