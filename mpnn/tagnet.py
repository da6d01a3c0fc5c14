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
(one sample per model per step, stacked weights), with hand-written forward/backward so that a
step costs about twenty tensor operations whatever ``M`` is. :func:`reference_sgd` is the plain
autograd loop it is tested against.

The two-expert mixture of experts (:class:`TwoExpertMoE`) replaces the tag by a learned gate
``s = Wg x + bg`` (:class:`mpnn.switch.LearnedSwitch`, hard top-1 with a straight-through
softmax gradient): ``m = onehot(argmax s) + softmax(s) - sg(softmax(s))`` selects the expert's
hidden columns; the gate's gradient is ``ds = q * (g - <q, g>)`` with ``q = softmax(s)`` and
``g_e = sum_{h in e} (W2^T e)_h * leaky(W1 x + b1)_h``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import repro
from .local import LocallyConnected
from .switch import LearnedSwitch, TagSwitch

__all__ = [
    "partition_groups", "parity_switch", "TagNet", "TwoExpertMoE", "reference_sgd",
    "split_indices", "epoch_order", "make_schedule", "StackedSGD", "train_router",
    "minibatch_epoch", "PARITY",
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


# ------------------------------------------------------------------ fast stacked trainer

class StackedSGD:
    """Eq. (2) for ``M`` models at once: weights stacked along a leading model axis.

    Built from :class:`TagNet` modules (tag routing by label parity; partitioned or not) or from
    :class:`TwoExpertMoE` modules (learned gate), all with the same connectivity. ``X`` (N, 784)
    in [0, 1] and ``y`` (N,) are held on the device; for local models the 5x5 windows of every
    image are gathered once (uint8 when ``X`` holds k/255 values, as MNIST does), so that a step
    reads its inputs with one contiguous row copy instead of a scattered gather.
    ``clip`` is one bound for every model (``float("inf")`` switches clipping off).
    """

    def __init__(self, models: Sequence[nn.Module], X: torch.Tensor, y: torch.Tensor, *,
                 lr: float = 0.01, clip: float = 5.0, device=None):
        if not models:
            raise ValueError("need at least one model")
        kinds = {(type(m).__name__, m.connectivity, m.n_hidden) for m in models}
        if len(kinds) != 1:
            raise ValueError(f"models must share class, connectivity and size, got {sorted(kinds)}")
        if models[0].connectivity == "local" and any(
                not torch.equal(m.hidden.index, models[0].hidden.index) for m in models):
            raise ValueError("local models must share one window layout (grid, window, stride, "
                             "offset); train different layouts in separate StackedSGD instances")
        if X.dim() != 2 or X.shape[1] != models[0].n_inputs or len(X) != len(y):
            raise ValueError(f"X must be (N, {models[0].n_inputs}) with one label per row; "
                             f"got X {tuple(X.shape)}, y {tuple(y.shape)}")
        if float(X.min()) < 0 or float(X.max()) > 1:
            raise ValueError("X must be scaled to [0, 1] (divide the uint8 images by 255)")
        device = torch.device(device) if device is not None else X.device
        self.device, self.lr, self.M = device, float(lr), len(models)
        self.slope = models[0].slope
        self.local = models[0].connectivity == "local"
        self.moe = isinstance(models[0], TwoExpertMoE)
        self.P = models[0].n_inputs
        self.X = F.pad(X.to(device, torch.float32), (0, 1))             # (N, P+1), last = 0
        self.y = y.to(device)
        if not clip > 0:
            raise ValueError(f"clip must be positive (float('inf') for no clipping), got {clip}")
        self.clip = float(clip)
        st = lambda ts: torch.stack([t.detach().float() for t in ts]).to(device).contiguous()
        self.W1 = st([m.hidden.weight.T if self.local else m.hidden.weight
                      for m in models])                                 # (M, K, H) local, (M, H, P) full
        self.b1 = st([m.hidden.bias for m in models])                   # (M, H)
        self.W2 = st([m.out.weight for m in models])                    # (M, C, H)
        self.b2 = st([m.out.bias for m in models])                      # (M, C)
        self.C = self.W2.shape[1]
        self.eye = torch.eye(self.C, device=device)
        if self.local:
            self.index = models[0].hidden.index.to(device)              # (H, K)
        if self.moe:
            self.Wg = st([m.gate.gate.weight for m in models])          # (M, E, P)
            self.bg = st([m.gate.gate.bias for m in models])            # (M, E)
            self.groups = models[0].groups.to(device)                   # (E, H)
        else:                                                           # label -> hidden mask
            tables = st([m.switch.table[PARITY] for m in models])       # (M, 10, H)
            self.tables = tables.view(-1, tables.shape[-1])             # (M*10, H)
            self.table_offset = torch.arange(self.M, device=device) * 10
        self._models = list(models)

    def _gather_windows(self, X: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(N, P+1) in [0, 1] -> (N, K, H) window taps of every image, in units of 1/255.

        uint8 when X holds k/255 values (MNIST), else float32; the step multiplies by 1/255.
        """
        exact = bool(torch.equal((X * 255).round() / 255, X))
        K, H = self.index.shape[1], self.index.shape[0]
        out = torch.empty(len(X), K, H, device=X.device,
                          dtype=torch.uint8 if exact else torch.float32)
        flat = self.index.T.flatten()                                   # (K*H,) tap-major
        for s in range(0, len(X), chunk):
            xs = (X[s:s + chunk].index_select(1, flat) * 255).view(-1, K, H)
            out[s:s + chunk] = xs.round() if exact else xs
        return out

    # ---------------------------------------------------------------- one step, eq. (2)
    def step(self, rows: torch.Tensor, patch_rows: torch.Tensor | None = None) -> None:
        """One per-sample SGD step for every model; ``rows`` (M,) are the samples' indices
        (``patch_rows``: their positions in the gathered windows, see :meth:`fit`)."""
        lr, clip = self.lr, self.clip
        y = self.y.index_select(0, rows)                                # (M,)
        if self.moe or not self.local:
            x = self.X.index_select(0, rows)                            # (M, P+1)
        if self.local:
            if patch_rows is None:                                      # direct call: gather now
                patch_rows, self.patches, self._rows = torch.arange(len(rows), device=rows.device), \
                    self._gather_windows(self.X.index_select(0, rows)), rows
            xin = self.patches.index_select(0, patch_rows).to(torch.float32)  # (M, K, H), x*255
            pre = (xin * self.W1).sum(1).mul_(1 / 255).add_(self.b1)    # (M, H)
        else:
            xin = x[:, None, :self.P]                                   # (M, 1, P)
            pre = torch.baddbmm(self.b1[..., None], self.W1, xin.transpose(1, 2))[..., 0]
        act = F.leaky_relu(pre, self.slope)                             # (M, H)
        if self.moe:
            s = torch.baddbmm(self.bg[..., None], self.Wg, x[:, :self.P, None])[..., 0]  # (M, E)
            mask = self.groups.index_select(0, s.argmax(-1))            # (M, H)
        else:
            mask = self.tables.index_select(0, y + self.table_offset)   # (M, H)
        a = act * mask
        z = torch.baddbmm(self.b2[..., None], self.W2, a[..., None])[..., 0]   # (M, C)
        err = self.eye.index_select(0, y) - torch.softmax(z, -1)        # (M, C)
        back = torch.bmm(err[:, None, :], self.W2)[:, 0]                # (M, H), old W2
        g2 = torch.bmm(err[..., None], a[:, None, :])                   # (M, C, H)
        self.W2.add_(g2.clamp_(-clip, clip), alpha=lr)
        self.b2.add_(err, alpha=lr)
        d = torch.ops.aten.leaky_relu_backward(back, pre, self.slope, False) * mask  # (M, H)
        if self.local:
            g1 = xin.mul_((d * (1 / 255))[:, None, :])                  # (M, K, H), reuses xin
            self.W1.add_(g1.clamp_(-clip, clip), alpha=lr)
        elif float(d.abs().max()) <= clip:                              # x in [0,1]: no clip needed
            self.W1.baddbmm_(d[..., None], xin, alpha=lr)
        else:
            self.W1.add_((d[..., None] * xin).clamp_(-clip, clip), alpha=lr)
        self.b1.add_(d, alpha=lr)
        if self.moe:
            q = torch.softmax(s, -1)                                    # (M, E)
            g = (back * act) @ self.groups.T                            # (M, E) d logp / d m_e
            ds = q * (g - (q * g).sum(-1, keepdim=True))
            self.Wg.add_((ds[..., None] * x[:, None, :self.P]).clamp_(-clip, clip), alpha=lr)
            self.bg.add_(ds, alpha=lr)

    def fit(self, schedule: torch.Tensor, *, every: int = 0,
            callback: Callable[[int], None] | None = None, progress: bool = True,
            desc: str = "per-sample SGD") -> None:
        """Run ``schedule`` (T, M) of sample indices; ``callback(t)`` after every ``every`` steps.

        Only the rows the schedule visits get their windows gathered. On the CPU the steps run on
        one thread: each operation is tiny, and thread hand-offs would cost more than they save.
        """
        if schedule.dim() != 2 or schedule.shape[1] != self.M:
            raise ValueError(f"schedule must be (T, {self.M}), got {tuple(schedule.shape)}")
        from tqdm.auto import tqdm
        schedule = schedule.to(self.device)
        if self.local:
            needed = schedule.unique()                                      # sorted rows
            self.patches = self._gather_windows(self.X[needed])             # (R, K, H)
            self._rows = needed
        T = schedule.shape[0]
        chunk = every if every else max(1, T // 100)
        # the callbacks run on the same single thread: switching the thread count back and forth
        # made each evaluation several times slower on a busy machine (oversubscribed cores)
        with repro.cpu_threads(1, self.device), torch.no_grad(), \
                tqdm(total=T, desc=desc, disable=not progress, mininterval=1.0) as bar:
            for t0 in range(0, T, chunk):
                block = schedule[t0:t0 + chunk]
                local_block = torch.searchsorted(self._rows, block) if self.local else block
                for t in range(len(block)):
                    self.step(block[t], local_block[t])
                bar.update(len(block))
                if every and callback is not None:
                    callback(t0 + len(block))

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
        x = F.pad(X.to(self.device, torch.float32), (0, 1))
        if self.local:
            pre = torch.einsum("bhk,mkh->mbh", x[:, self.index], self.W1[sel])
        else:
            pre = torch.einsum("bp,mhp->mbh", x[:, :self.P], self.W1[sel])
        return F.leaky_relu(pre + self.b1[sel, None], self.slope)

    @torch.no_grad()
    def gate_choice(self, X: torch.Tensor) -> torch.Tensor:
        """MoE only: chosen expert per model and input, (M, B)."""
        s = torch.einsum("bp,mep->mbe", X.to(self.device, torch.float32), self.Wg) + self.bg[:, None]
        return s.argmax(-1)

    @torch.no_grad()
    def logits(self, X: torch.Tensor, tags: torch.Tensor | None = None, *, route: str = "tag",
               chunk: int = 2048, models=None) -> torch.Tensor:
        """Logits (S, B, C) of the models ``models`` (default all M). ``route``: ``"tag"`` (hidden
        mask of tag ``tags`` (B,) or (S, B)), ``"all"`` (every hidden neuron active) or ``"gate"``
        (MoE: the gate's expert)."""
        if route not in ("tag", "all", "gate"):
            raise ValueError(f"route must be 'tag', 'all' or 'gate', got {route!r}")
        if route == "gate" and not self.moe:
            raise ValueError("route='gate' needs TwoExpertMoE models")
        if route == "tag" and (tags is None or self.moe):
            raise ValueError("route='tag' needs tags and TagNet models")
        sel = self._pick(models)
        outs = []
        for s in range(0, len(X), chunk):
            xb = X[s:s + chunk]
            a = self.hidden(xb, sel)                                     # (S, b, H)
            if route == "tag":
                t = tags[..., s:s + chunk].to(self.device).expand(len(sel), len(xb))
                tab = self.tables.view(self.M, 10, -1)[sel, :2]              # tag 0/1 rows: (S,2,H)
                a = a * torch.gather(tab, 1, t[..., None].expand(-1, -1, a.shape[-1]))
            elif route == "gate":
                a = a * self.groups[self.gate_choice(xb)[sel]]
            outs.append(torch.einsum("mbh,mch->mbc", a, self.W2[sel]) + self.b2[sel, None])
        return torch.cat(outs, 1)

    def accuracy(self, X, y, tags=None, *, route: str = "tag", models=None) -> torch.Tensor:
        """(S,) accuracy of the models ``models`` (default all M); ``route="tag"`` with
        ``tags=None`` uses the label parity (the document's oracle routing)."""
        if route == "tag" and tags is None:
            tags = PARITY.to(y.device)[y]
        pred = self.logits(X, tags, route=route, models=models).argmax(-1)
        return (pred == y.to(self.device)).float().mean(-1).cpu()

    def export(self) -> list[nn.Module]:
        """Copies of the original modules holding the trained weights."""
        import copy
        out = []
        for i, m in enumerate(self._models):
            m = copy.deepcopy(m)
            with torch.no_grad():
                m.hidden.weight.copy_(self.W1[i].T if self.local else self.W1[i])
                m.hidden.bias.copy_(self.b1[i])
                m.out.weight.copy_(self.W2[i]); m.out.bias.copy_(self.b2[i])
                if self.moe:
                    m.gate.gate.weight.copy_(self.Wg[i]); m.gate.gate.bias.copy_(self.bg[i])
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
