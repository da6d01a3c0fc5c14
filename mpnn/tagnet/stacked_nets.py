"""Many tag-partitioned networks held as one stacked model: parameters, batched inference, export.

``M`` networks of :mod:`mpnn.tagnet` (:class:`~mpnn.tagnet.TagNet` modules, or
:class:`~mpnn.tagnet.TwoExpertMoE` ones, all of one class, connectivity and grid size) are stored
block by block: every network's hidden layer is cut into its two column halves (the tag
partitions, also the MoE's experts), ``2 M`` blocks of ``Hb = H / 2`` units each,

    W1b (2M, K, Hb) local or (2M, Hb, P) full,   b1b (2M, Hb),   W2b (2M, C, Hb),   b2 (M, C)

with ``own[j]`` the network of block ``j`` and ``half[j]`` its half; MoE gates ``Wg`` (M, 2, P),
``bg`` (M, 2). A trainer may reorder the blocks (:meth:`StackedNets.order_blocks`) so that the
halves one step needs form one slice (see :mod:`mpnn.tagnet.stacked_sgd`); :meth:`StackedNets.dense`
gives the weights back in the modules' unit order, whatever the block order.

Inference computes the hidden layer of every chosen network once and reads the logits of several
routings from it, eq. (1) of :mod:`mpnn.tagnet`: ``z = (W2 * m_t) leaky(W1 x + b1) + b2`` with the
mask ``m_t`` of the tag (``"tag"``), of the MoE gate's expert (``"gate"``) or all ones (``"all"``).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .network import PARITY, TwoExpertMoE, partition_groups

__all__ = ["StackedNets"]

ROUTES = ("tag", "all", "gate")


def _check_alike(models: Sequence[nn.Module]) -> None:
    if not models:
        raise ValueError("need at least one model")
    kinds = {(type(m).__name__, m.connectivity, m.n_hidden) for m in models}
    if len(kinds) != 1:
        raise ValueError(f"models must share class, connectivity and size, got {sorted(kinds)}")
    if len({m.slope for m in models}) != 1:
        raise ValueError("models must share the leaky-ReLU slope")


def _half_masks(halves: dict[int, list[int]], H: int) -> torch.Tensor:
    """(2, H): row ``t`` is 1 on the units of column half ``t``."""
    masks = torch.zeros(2, H)
    for t in (0, 1):
        masks[t, halves[t]] = 1.0
    return masks


def _tag_tables(models, half_masks: torch.Tensor) -> tuple[list[bool], torch.Tensor]:
    """Which TagNets are partitioned (tag table = the two column halves; else every unit on),
    and their tables (M, 2, H)."""
    partitioned = []
    for m in models:
        tab = m.switch.table.float()
        if tab.shape[0] != 2:
            raise ValueError("TagNet models need two tags")
        if torch.equal(tab, half_masks):
            partitioned.append(True)
        elif bool((tab == 1).all()):
            partitioned.append(False)
        else:
            raise ValueError("tag tables must be the two column halves or every unit")
    return partitioned, torch.stack([m.switch.table.float() for m in models])


def _window_layouts(models) -> tuple[list[torch.Tensor], list[int]]:
    """The distinct window layouts (``hidden.index``) of local models, and each model's layout id."""
    layouts, lay = [], []
    for m in models:
        for i, idx in enumerate(layouts):
            if torch.equal(idx, m.hidden.index):
                lay.append(i)
                break
        else:
            if layouts and layouts[0].shape != m.hidden.index.shape:
                raise ValueError("local models must share the window size")
            lay.append(len(layouts))
            layouts.append(m.hidden.index.clone())
    return layouts, lay


def _stack(tensors, device) -> torch.Tensor:
    return torch.stack([t.detach().float() for t in tensors]).to(device).contiguous()


class StackedNets:
    """``M`` networks as column-half blocks (module docstring); built from the modules, which are
    kept (and copied with the trained weights by :meth:`export`)."""

    def __init__(self, models: Sequence[nn.Module], device=None):
        _check_alike(models)
        m0 = models[0]
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.M, self.slope = len(models), m0.slope
        self.local, self.moe = m0.connectivity == "local", isinstance(m0, TwoExpertMoE)
        self.P, self.H = m0.n_inputs, m0.n_hidden
        halves = partition_groups(m0.grid, 2)
        if len(halves[0]) != len(halves[1]):
            raise ValueError(f"the grid must split into two equal halves, got grid={m0.grid}")
        self.Hb = self.H // 2
        self.perm = torch.tensor(halves[0] + halves[1], device=self.device)   # block order -> unit
        self.inv = torch.argsort(self.perm)
        self._models = list(models)
        self._read_routing(models, _half_masks(halves, self.H))
        if self.local:
            layouts, lay = _window_layouts(models)
            self.layouts = [i.to(self.device) for i in layouts]
            self.lay = torch.tensor(lay, device=self.device)
            self.K = self.layouts[0].shape[1]
        self._stack_blocks(models)

    def _read_routing(self, models, half_masks: torch.Tensor) -> None:
        """``partitioned`` (M,) and ``masks`` (M, 2, H): the units of tag (or expert) 0 and 1."""
        if self.moe:
            if models[0].groups.shape[0] != 2:
                raise ValueError("StackedNets supports two experts (the two column halves)")
            self.partitioned = [True] * self.M
            self.masks = half_masks.to(self.device).expand(self.M, 2, self.H)
        else:
            self.partitioned, tables = _tag_tables(models, half_masks)
            self.masks = tables.to(self.device)

    def _stack_blocks(self, models) -> None:
        """The blocks, model-major (block ``2 m + t``) until :meth:`order_blocks` reorders them."""
        p, Hb, dev = self.perm.cpu(), self.Hb, self.device
        if self.local:     # (H, K) -> (2, K, Hb)
            W1 = _stack([m.hidden.weight[p].view(2, Hb, -1).transpose(1, 2) for m in models], dev)
        else:              # (H, P) -> (2, Hb, P)
            W1 = _stack([m.hidden.weight[p].view(2, Hb, -1) for m in models], dev)
        self.W1b = W1.flatten(0, 1).contiguous()
        self.b1b = _stack([m.hidden.bias[p].view(2, Hb) for m in models], dev).flatten(0, 1).contiguous()
        self.W2b = _stack([m.out.weight[:, p].view(-1, 2, Hb).transpose(0, 1) for m in models], dev) \
            .flatten(0, 1).contiguous()                                       # (2M, C, Hb)
        self.b2 = _stack([m.out.bias for m in models], dev)                   # (M, C)
        self.C = self.b2.shape[1]
        if self.moe:
            self.Wg = _stack([m.gate.gate.weight for m in models], dev)       # (M, 2, P)
            self.bg = _stack([m.gate.gate.bias for m in models], dev)         # (M, 2)
        self.own = torch.arange(self.M, device=dev).repeat_interleave(2)      # block -> model
        self.half = torch.arange(2, device=dev).repeat(self.M)                # block -> half
        self.n_p = 0                                # tag-0 (and tag-1) blocks set apart at the ends

    # ---------------------------------------------------------------- block order
    def order_blocks(self, blocked: Sequence[bool]) -> None:
        """Tag-0 halves of the ``blocked`` models first, their tag-1 halves last, both halves of
        every other model in between (model order kept inside each part); ``n_p`` = #blocked."""
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

    # ---------------------------------------------------------------- dense views
    def pick(self, models=None) -> torch.Tensor:
        """Model indices (S,) of a ``models`` argument: None = all ``M``."""
        if models is None:
            return torch.arange(self.M, device=self.device)
        idx = torch.as_tensor(models, dtype=torch.long, device=self.device).flatten()
        if len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.M:
            raise ValueError(f"models must be indices in 0..{self.M - 1}, got {models!r}")
        return idx

    def dense(self, sel: torch.Tensor):
        """Weights of models ``sel`` in the modules' unit order: W1 (S, H, K|P), b1 (S, H), W2 (S, C, H)."""
        blocks, S = self.pos[sel], len(sel)                                   # (S, 2)
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
        W1 = self.dense(self.pick())[0]
        return W1.transpose(1, 2).contiguous() if self.local else W1

    @property
    def b1(self) -> torch.Tensor:
        return self.dense(self.pick())[1]

    @property
    def W2(self) -> torch.Tensor:
        return self.dense(self.pick())[2]

    def export(self, models=None) -> list[nn.Module]:
        """Copies of the original modules (those of ``models``, default all) holding the current weights."""
        sel = self.pick(models)
        W1, b1, W2 = self.dense(sel)
        out = []
        for i, k in enumerate(sel.tolist()):
            m = copy.deepcopy(self._models[k])
            with torch.no_grad():
                m.hidden.weight.copy_(W1[i])
                m.hidden.bias.copy_(b1[i])
                m.out.weight.copy_(W2[i])
                m.out.bias.copy_(self.b2[k])
                if self.moe:
                    m.gate.gate.weight.copy_(self.Wg[k])
                    m.gate.gate.bias.copy_(self.bg[k])
            out.append(m)
        return out

    # ---------------------------------------------------------------- batched inference, eq. (1)
    @torch.no_grad()
    def hidden(self, X: torch.Tensor, models=None) -> torch.Tensor:
        """Unmasked activations: X (B, P) -> (S, B, H) for the models ``models`` (default all M)."""
        sel = self.pick(models)
        W1, b1, _ = self.dense(sel)
        x = X.to(self.device, torch.float32)
        pre = torch.einsum("bp,mhp->mbh", x, W1) if not self.local else self._window_pre(x, sel, W1)
        return F.leaky_relu_(pre.add_(b1[:, None]), self.slope)

    def _window_pre(self, x: torch.Tensor, sel: torch.Tensor, W1: torch.Tensor) -> torch.Tensor:
        """``W1 x`` of local models (S, B, H), one einsum per window layout among ``sel``."""
        x = F.pad(x, (0, 1))                                                  # skipped taps -> 0
        lays = self.lay[sel]
        if bool((lays == lays[0]).all()):
            return torch.einsum("bhk,mhk->mbh", x[:, self.layouts[int(lays[0])]], W1)
        pre = torch.empty(len(sel), len(x), self.H, device=self.device)
        for l, index in enumerate(self.layouts):
            which = (lays == l).nonzero().flatten()
            if len(which):
                pre[which] = torch.einsum("bhk,mhk->mbh", x[:, index], W1[which])
        return pre

    @torch.no_grad()
    def gate_choice(self, X: torch.Tensor) -> torch.Tensor:
        """MoE only: chosen expert per model and input, (M, B)."""
        s = torch.einsum("bp,mep->mbe", X.to(self.device, torch.float32), self.Wg) + self.bg[:, None]
        return s.argmax(-1)

    def _check_route(self, route: str, tags) -> None:
        if route not in ROUTES:
            raise ValueError(f"route must be 'tag', 'all' or 'gate', got {route!r}")
        if route == "gate" and not self.moe:
            raise ValueError("route='gate' needs TwoExpertMoE models")
        if route == "tag" and (tags is None or self.moe):
            raise ValueError("route='tag' needs tags and TagNet models")

    def _masked_W2(self, sel: torch.Tensor) -> torch.Tensor:
        """(S, 3, C, H): W2 masked to tag 0, to tag 1, and unmasked."""
        _, _, W2 = self.dense(sel)
        m = self.masks[sel]                                                   # (S, 2, H)
        return torch.stack([W2 * m[:, :1], W2 * m[:, 1:], W2], 1)

    @torch.no_grad()
    def _routed_logits(self, xb: torch.Tensor, sel: torch.Tensor, W2m: torch.Tensor,
                       b2: torch.Tensor, routes) -> list[torch.Tensor]:
        """Logits (S, b, C) of the images ``xb`` under each ``(route, tags)`` of ``routes``, from one
        hidden pass (``W2m`` from :meth:`_masked_W2`)."""
        z = torch.einsum("mbh,mrch->mrbc", self.hidden(xb, sel), W2m) + b2[:, None, None]   # (S, 3, b, C)
        out = []
        for route, tags in routes:
            if route == "all":
                out.append(z[:, 2])
                continue
            t = self.gate_choice(xb)[sel] if route == "gate" else \
                tags.to(self.device).expand(len(sel), len(xb))               # (S, b)
            out.append(torch.where(t[..., None] == 0, z[:, 0], z[:, 1]))
        return out

    @torch.no_grad()
    def logits(self, X: torch.Tensor, tags: torch.Tensor | None = None, *, route: str = "tag",
               chunk: int = 2048, models=None) -> torch.Tensor:
        """Logits (S, B, C) of the models ``models`` (default all M). ``route``: ``"tag"`` (hidden
        mask of tag ``tags`` (B,) or (S, B)), ``"all"`` (every hidden neuron active) or ``"gate"``
        (MoE: the gate's expert)."""
        self._check_route(route, tags)
        sel = self.pick(models)
        W2m, b2 = self._masked_W2(sel), self.b2[sel]
        return torch.cat([self._routed_logits(X[s:s + chunk], sel, W2m, b2,
                                              [(route, None if tags is None else tags[..., s:s + chunk])])[0]
                          for s in range(0, len(X), chunk)], 1)

    def _parse_routes(self, routes: dict, y: torch.Tensor) -> dict:
        """``{name: (route, tags)}`` of a :meth:`correct` ``routes`` argument."""
        parsed = {}
        for name, r in routes.items():
            if isinstance(r, str):
                parsed[name] = ("tag", PARITY.to(y.device)[y]) if r == "tag" else (r, None)
            else:
                parsed[name] = ("tag", r)
            self._check_route(*parsed[name])
        return parsed

    @torch.no_grad()
    def correct(self, X, y, routes: dict, *, models=None, chunk: int = 2048) -> dict:
        """Per-image hits (S, B) bool under several routings, from one hidden pass per chunk.

        ``routes`` maps a name to ``"all"``, ``"gate"``, ``"tag"`` (the label parity: the document's
        oracle routing) or a tag tensor (B,) or (S, B). Returns ``{name: (S, B) bool}``.
        """
        sel = self.pick(models)
        parsed = self._parse_routes(routes, y)
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
