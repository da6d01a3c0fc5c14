"""Input sparsity: token selection and token merging in a small vision transformer on MNIST patches.

The image is cut into ``(28/p)^2`` patches of ``p x p`` pixels, each a token. Two ways to shrink the set:

* **Learned selection** (DynamicViT-style, Rao et al. 2021; the subsampling of Scardapane et al. 2024,
  eq. 1). After ``select_after`` blocks a scorer gives every token a score ``s_j``; the ``k = round(rho * n)``
  highest are kept. While training, the mask is a straight-through Gumbel top-k:
  ``m = topk(softmax((s + sigma g) / tau)) + soft - sg(soft)`` (hard forward value, Gumbel-softmax gradient;
  the noise scale ``sigma`` is annealed during training),
  built from :mod:`mpnn.switch` primitives. Dropped tokens are removed from attention by renormalising the
  attention rows over kept keys, ``A_ij = m_j exp(a_ij) / sum_l m_l exp(a_il)``, and from the mean pooling,
  so the masked forward equals the forward on the gathered tokens, and ``d L / d m_j`` is non-zero for
  dropped tokens too. At inference the kept tokens are gathered: later blocks really run on ``k`` tokens.
* **Token merging** (ToMe, Bolya et al. 2023): in every block, between attention and MLP, tokens are split
  alternately into sets A and B; each A token finds its most similar B token (cosine similarity of the
  attention keys averaged over heads), the ``r`` most similar pairs are merged by a size-weighted average
  and the sizes ``s`` add up. Attention uses proportional attention ``softmax(q k^T / sqrt(d) + log s)``.

:func:`vit_flops` counts FLOPs per sample (2 per multiply-add in linear layers and attention matmuls,
the ToMe similarity matrix and the scorer; LayerNorm, softmax and GELU are not counted).
:func:`evaluate_settings` gives the accuracy of many inference settings in one pass. The chapter's training
recipe (:func:`mpnn.infra.train.fit`) and its latency measurements live in ``mpnn.experiments.token_selection``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from mpnn.switch import gumbel_softmax, straight_through, topk_mask

__all__ = [
    "ViTConfig", "TokenViT", "patchify", "keep_count", "select_mask", "bipartite_soft_matching",
    "merge_wavg", "token_schedule", "vit_flops", "parse_setting", "evaluate_settings",
]


@dataclass(frozen=True)
class ViTConfig:
    patch: int = 4            # patch side in pixels (28 must be divisible by it)
    dim: int = 64             # token width d
    depth: int = 4            # transformer blocks
    heads: int = 4
    mlp_ratio: float = 2.0    # MLP hidden = mlp_ratio * d
    classes: int = 10
    select_after: int = 1     # learned selection happens after this many blocks (0 = on the patch embeddings)
    scorer_hidden: int = 32   # hidden width of the token scorer MLP
    pos_init: float = 0.5     # std of the learned position embeddings at initialisation

    def __post_init__(self):
        if self.patch < 1 or 28 % self.patch:
            raise ValueError(f"patch must divide 28 (e.g. 4 or 7), got {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not 0 <= self.select_after < self.depth:
            raise ValueError(f"select_after must be in 0..depth-1 = 0..{self.depth - 1}, got {self.select_after}")

    @property
    def n_tokens(self) -> int:
        return (28 // self.patch) ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_ratio * self.dim))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Images (B, 1, 28, 28) or (B, 28, 28) -> tokens (B, G*G, patch*patch), row-major over the G x G grid."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3 or x.shape[-1] != x.shape[-2] or x.shape[-1] % patch:
        raise ValueError(f"expected square images whose side is divisible by {patch}, got {tuple(x.shape)}")
    B, S, _ = x.shape
    G = S // patch
    return x.reshape(B, G, patch, G, patch).permute(0, 1, 3, 2, 4).reshape(B, G * G, patch * patch)


def keep_count(n: int, rho: float) -> int:
    """Tokens kept out of ``n`` at keep ratio ``rho``: ``max(1, floor(rho * n + 1/2))``."""
    if not 0 < rho <= 1:
        raise ValueError(f"keep ratio rho must be in (0, 1], got {rho}")
    return max(1, int(math.floor(rho * n + 0.5)))


def select_mask(scores: torch.Tensor, k: int, *, tau: float = 1.0, gumbel: bool = True,
                noise: float = 1.0) -> torch.Tensor:
    """Straight-through top-k token mask (B, n) from scores (B, n).

    Forward value: the hard top-k of ``soft = softmax((s + noise * g) / tau)``, ``g`` Gumbel(0, 1) noise when
    ``gumbel`` (else none); gradient: that of ``soft`` (:func:`mpnn.switch.gumbel_softmax`,
    :func:`mpnn.switch.straight_through`). ``noise`` scales the Gumbel noise: ``softmax((s/sigma + g) / (tau/sigma))
    = softmax((s + sigma g) / tau)``, so ``noise -> 0`` moves from exploring token subsets to the plain top-k.
    """
    if noise < 0:
        raise ValueError(f"noise (scale of the Gumbel noise) must be >= 0, got {noise}")
    if gumbel and noise > 0:
        soft = gumbel_softmax(scores / noise, tau / noise)
    else:
        soft = torch.softmax(scores / tau, dim=-1)
    return straight_through(topk_mask(soft.detach(), k), soft)


# ---------------------------------------------------------------- token merging (ToMe)

def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """ToMe's bipartite soft matching on ``metric`` (B, n, c): returns ``merge(x, mode)``: ``(B, n, *) -> (B, n-r, *)``.

    Set A = even positions, B = odd positions. Each A token's best B match by cosine similarity; the ``r``
    A tokens with the highest best-similarity are reduced (``mode``: "sum", "mean", ...) into their match.
    Output order: the unmerged A tokens (by decreasing best similarity), then all B tokens.

    The matching is computed once as flat row indices (:func:`_match_order`); ``merge(x, "sum")`` then costs
    two row gathers (``index_select``) and one row scatter-add (``index_add_``, :func:`_merge_sum`); other
    modes reduce with ``scatter_reduce_`` (:func:`_merge_reduce`).
    """
    n = metric.shape[1]
    r = min(int(r), n // 2)
    if r <= 0:
        return lambda x, mode="sum": x
    with torch.no_grad():
        keep, src, dst = _match_order(metric, r)

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        if mode == "sum":
            return _merge_sum(x, keep, src, dst)
        return _merge_reduce(x, keep, src, dst, mode)

    merge.rows = (keep, src, dst)  # read by merge_wavg's direct path
    return merge


def _match_order(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToMe's matching as row indices into the flattened (B n, *) input and (B (n-r), *) output:
    ``keep`` (B (n-r),) the rows of the output, ``[unmerged A, all B]`` per sample; ``src`` (B r,) the merged
    A rows; ``dst`` (B r,) the output row (``nA - r + j`` for B token j) each of them is added to.
    A's rows are ranked by their best cosine similarity ``max_j cos(a_i, b_j)``, decreasing, ties in position
    order (a stable sort: the order of the unmerged A tokens is part of the output)."""
    B, n, _ = metric.shape
    nA, nB = (n + 1) // 2, n // 2
    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)  # (B, nA, nB)
    best = _row_max(sim)  # (B, nA)
    order = best.argsort(dim=-1, descending=True, stable=True)  # (B, nA)
    # the best match's index is needed for the r merged A rows only: argmax over their rows of ``sim``
    best_idx = sim.gather(1, order[:, :r].unsqueeze(-1).expand(B, r, nB)).argmax(dim=-1)  # (B, r)
    base = torch.arange(B, device=metric.device).unsqueeze(1)  # (B, 1)
    odd = torch.arange(1, n, 2, device=metric.device).expand(B, nB)
    keep = torch.cat([2 * order[:, r:], odd], dim=1) + n * base  # (B, n-r)
    dst = best_idx + (nA - r) + (n - r) * base  # (B, r)
    return keep.reshape(-1), (2 * order[:, :r] + n * base).reshape(-1), dst.reshape(-1)


def _row_max(s: torch.Tensor) -> torch.Tensor:
    """``s.amax(dim=-1)`` as a halving tree of elementwise maxima (exact, NaN propagating like ``amax``): on
    ToMe's (1000, 25, 24) similarities 0.22 ms against 0.70 ms for ``amax`` and 0.96 ms for ``max`` with indices
    (torch's CPU reductions over short contiguous rows, one thread)."""
    while s.shape[-1] > 1:
        h = s.shape[-1] // 2
        t = torch.maximum(s[..., :h], s[..., h:2 * h])
        if s.shape[-1] % 2:
            t[..., :1] = torch.maximum(t[..., :1], s[..., 2 * h:])
        s = t
    return s[..., 0]


def _merge_sum(x: torch.Tensor, keep: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``[unmerged A, B + sum of the A rows merged into them]``: two row gathers, one row scatter-add."""
    Bsz, n, c = x.shape
    flat = x.reshape(Bsz * n, c)
    out = flat.index_select(0, keep)  # (B (n-r), c)
    out.index_add_(0, dst, flat.index_select(0, src))
    return out.view(Bsz, -1, c)


def _merge_reduce(x: torch.Tensor, keep: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                  mode: str) -> torch.Tensor:
    """ToMe's other modes: each B row reduced (``scatter_reduce_``, self included) with the A rows merged into it."""
    if mode not in ("prod", "mean", "amax", "amin"):
        raise ValueError(f"merge mode must be 'sum', 'prod', 'mean', 'amax' or 'amin', got {mode!r}")
    Bsz, n, c = x.shape
    flat = x.reshape(Bsz * n, c)
    out = flat.index_select(0, keep)
    out.scatter_reduce_(0, dst.unsqueeze(-1).expand(-1, c), flat.index_select(0, src), reduce=mode)
    return out.view(Bsz, -1, c)


def merge_wavg(merge: Callable, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: x (B, n, d), size (B, n, 1) -> (B, n-r, d), (B, n-r, 1).

    ``x' = merge(s x) / merge(s)``, ``s' = merge(s)`` (ToMe's weighted average; ``size=None`` means all
    sizes 1). For a merge of :func:`bipartite_soft_matching` this runs :func:`_wavg_rows` on its row indices
    (no packing copy, no ``s x`` when all sizes are 1); for any other ``merge`` callable ``s x`` and ``s``
    travel through one merge as the columns of one (B, n, d+1) tensor."""
    rows = getattr(merge, "rows", None)
    if rows is not None:
        return _wavg_rows(x, size, *rows)
    d = x.shape[-1]
    xs = x.new_empty(*x.shape[:-1], d + 1)  # written in place: a cat along the last dim copies row by row
    if size is None:
        xs[..., :d] = x
        xs[..., d:] = 1.0
    else:
        xs[..., :d] = x * size
        xs[..., d:] = size
    out = merge(xs, "sum")
    size = out[..., d:]
    return out[..., :d] / size, size


def _wavg_rows(x: torch.Tensor, size: torch.Tensor | None, keep: torch.Tensor, src: torch.Tensor,
               dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`merge_wavg` from :func:`_match_order`'s rows: ``s x`` (skipped when all sizes are 1) merged with
    two row gathers and a row scatter-add, the sizes likewise as a (B n,) vector, then one in-place division.
    Same sums in the same order as merging the packed (B, n, d+1) tensor."""
    Bsz, n, d = x.shape
    flat = (x if size is None else x * size).reshape(Bsz * n, d)
    out = flat.index_select(0, keep)
    out.index_add_(0, dst, flat.index_select(0, src))
    if size is None:
        s = x.new_ones(keep.shape[0]).index_add_(0, dst, x.new_ones(src.shape[0]))
    else:
        sflat = size.reshape(Bsz * n)
        s = sflat.index_select(0, keep).index_add_(0, dst, sflat.index_select(0, src))
    s = s.view(Bsz, -1, 1)
    return out.view(Bsz, -1, d).div_(s), s


def _gather_st(h: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-time gather: tokens (B, n, d) and a straight-through top-k mask (B, n) -> the ``k`` kept tokens
    (B, k, d), the mask's values on them (B, k; forward 1, gradient of the soft mask) and their sorted indices.

    The later blocks run on ``k`` tokens with the gathered mask as attention key mask and pooling weights, so
    the forward is the inference gather's and ``d L / d m_j`` of every kept token is the masked path's; the
    dropped tokens get no ``d L / d m_j`` (they are not computed), their scores learn only through the
    softmax normaliser of the kept tokens' soft mask."""
    B, _, d = h.shape
    kept = mask.detach().topk(k, dim=-1).indices.sort(dim=-1).values  # (B, k): the ones of the hard mask
    return h.gather(1, kept.unsqueeze(-1).expand(B, k, d)), mask.gather(1, kept), kept


# ---------------------------------------------------------------- model

# Rows shorter than one SIMD vector of floats take a scalar path in torch's CPU softmax: measured on AVX512
# (torch 2.14, one thread), softmax over (1000, n, n) costs 1.74 ms at n = 12 and 0.21 ms at n = 16, five
# times the max/exp/sum written out below; from n = 16 on torch's kernel is 1.3-2x faster than that.
_SHORT_ROWS = {"AVX512": 16, "AVX2": 8}.get(torch.backends.cpu.get_cpu_capability(), 0)


def _softmax_(a: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of a temporary ``a`` (overwritten when its rows are short, see ``_SHORT_ROWS``)."""
    if a.shape[-1] >= _SHORT_ROWS:
        return torch.softmax(a, dim=-1)
    a.sub_(a.amax(dim=-1, keepdim=True)).exp_()
    return a.div_(a.sum(dim=-1, keepdim=True))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None, size=None, need_keys=True):
        """x (B, n, d); mask (B, n) keys to keep; size (B, n, 1) token sizes -> (B, n, d), keys (B, n, d/h).

        ``A = softmax(q k^T / sqrt(d_h) + log s)`` (proportional attention), rows renormalised over the kept
        keys under ``mask``. In eval mode without a mask it runs :meth:`_fused` (same maths, other rounding);
        training and masks keep the explicit softmax :meth:`_explicit`.
        The keys (averaged over heads, ToMe's metric) are None unless ``need_keys``."""
        B, n, d = x.shape
        bias = None if size is None else size.log().reshape(B, 1, 1, n)
        if mask is None and not self.training:
            return self._fused(self.qkv(x), bias, need_keys)
        q, k, v = self.qkv(x).reshape(B, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, n, dh)
        out = self._explicit(q, k, v, mask, bias)
        keys = k.mean(dim=1) if need_keys else None
        return self.proj(out.transpose(1, 2).reshape(B, n, d)), keys

    def _fused(self, qkv, bias, need_keys):
        """Inference path from ``qkv`` (B, n, 3d): per head ``softmax(q k^T scale + bias) v`` on column slices
        of ``qkv`` (strided views that ``bmm`` reads in place: no head-major copy), the scale and the
        proportional-attention bias ``log s`` applied inside the product (``baddbmm``); keys = mean of the
        heads' keys."""
        B, n, d3 = qkv.shape
        d, h = d3 // 3, self.heads
        dh = d // h
        outs, keys = [], None
        for j in range(h):
            q, k, v = (qkv[:, :, i * d + j * dh:i * d + (j + 1) * dh] for i in range(3))  # (B, n, dh) views
            if bias is None:
                a = torch.bmm(q, k.transpose(1, 2)).mul_(self.scale)
            else:
                a = torch.baddbmm(bias.reshape(B, 1, n), q, k.transpose(1, 2), alpha=self.scale)
            outs.append(torch.bmm(_softmax_(a), v))
            if need_keys:
                keys = k if keys is None else keys + k
        out = self.proj(torch.cat(outs, dim=-1) if h > 1 else outs[0])
        return out, (keys / h if need_keys else None)

    def _explicit(self, q, k, v, mask, bias):
        """``softmax(q k^T scale + bias)``, times ``mask`` over keys and renormalised, applied to ``v``."""
        B, n = q.shape[0], q.shape[2]
        a = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, n, n)
        if bias is not None:
            a = a + bias
        attn = a.softmax(dim=-1)
        if mask is not None:
            attn = attn * mask.reshape(B, 1, 1, n)
            attn = attn / attn.sum(dim=-1, keepdim=True)
        return attn @ v


class Block(nn.Module):
    def __init__(self, c: ViTConfig, mlp: nn.Module | None = None):
        """``mlp``: a module (B, n, d) -> (B, n, d) replacing the block's MLP (e.g. an MoE layer); None: the MLP."""
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.dim), nn.LayerNorm(c.dim)
        self.attn = Attention(c.dim, c.heads)
        self.mlp = mlp if mlp is not None else nn.Sequential(nn.Linear(c.dim, c.mlp_hidden), nn.GELU(),
                                                             nn.Linear(c.mlp_hidden, c.dim))

    def forward(self, x, mask=None, size=None, r=0, source=None):
        y, keys = self.attn(self.norm1(x), mask, size, need_keys=r > 0)
        x = x + y
        if r > 0:
            merge = bipartite_soft_matching(keys, r)
            x, size = merge_wavg(merge, x, size)
            if source is not None:
                source = merge(source, "sum")
        x = x + self.mlp(self.norm2(x))
        return x, size, source


@dataclass
class TokenInfo:
    kept: torch.Tensor | None    # (B, k) indices of the kept patches (selection), sorted
    source: torch.Tensor | None  # (B, n_final, N) which original patches each final token holds (ToMe)
    tokens: list[int]            # tokens entering each block


class TokenViT(nn.Module):
    """Pre-norm ViT (no class token, mean pooling) with learned token selection and ToMe merging."""

    def __init__(self, config: ViTConfig | None = None, mlp_factory: Callable[[int], nn.Module | None] | None = None):
        """``mlp_factory(i)``: the MLP module of block i (None keeps the block's own MLP), e.g. an MoE layer."""
        super().__init__()
        c = config or ViTConfig()
        self.config = c
        self.embed = nn.Linear(c.patch * c.patch, c.dim)
        # mean pooling makes the model blind to patch positions except through ``pos``: a 0.02 init (the usual
        # ViT value) leaves it a bag of patches for hundreds of steps, 0.5 lets it use positions from the start
        self.pos = nn.Parameter(c.pos_init * torch.randn(1, c.n_tokens, c.dim))
        self.blocks = nn.ModuleList([Block(c, mlp_factory(i) if mlp_factory is not None else None)
                                     for i in range(c.depth)])
        self.scorer = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.scorer_hidden), nn.GELU(),
                                    nn.Linear(c.scorer_hidden, 1))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.classes)

    def forward(self, x: torch.Tensor, *, rho: float = 1.0, r: int = 0, selector: str = "learned",
                how: str = "auto", tau: float = 1.0, noise: float = 1.0, return_info: bool = False,
                generator: torch.Generator | None = None):
        """Logits (B, classes) of images (B, 1, 28, 28).

        rho: keep ratio of the selection after ``select_after`` blocks (1 = no selection); r: tokens merged
        per block (0 = no merging); selector: "learned" scorer or "random" scores (a control, drawn from
        ``generator`` when given); how: "mask" (straight-through Gumbel mask, the training path), "gather"
        (drop tokens, the inference path), "gather_st" (gather the kept tokens of the straight-through mask and
        carry its values on them: the training path that saves compute, :func:`_gather_st`) or "auto" (mask
        while training, gather otherwise); tau, noise:
        temperature and Gumbel noise scale of the training mask (:func:`select_mask`).
        """
        h = self.embed(patchify(x, self.config.patch)) + self.pos  # (B, N, d)
        return self._run(h, 0, rho=rho, r=r, selector=selector, how=how, tau=tau, noise=noise,
                         return_info=return_info, generator=generator)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Token states entering block ``select_after`` without merging: (B, 1, 28, 28) -> (B, N, d).

        They do not depend on ``rho`` or the selector, so an evaluation of many keep ratios computes them
        once and continues with :meth:`from_prefix`."""
        h = self.embed(patchify(x, self.config.patch)) + self.pos
        for block in self.blocks[:self.config.select_after]:
            h = block(h)[0]
        return h

    def from_prefix(self, h: torch.Tensor, *, rho: float = 1.0, selector: str = "learned",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits from :meth:`prefix`'s output: equals ``forward(x, rho=rho, selector=selector, how="gather")``."""
        return self._run(h, self.config.select_after, rho=rho, r=0, selector=selector, how="gather",
                         generator=generator)

    def _run(self, h, start, *, rho=1.0, r=0, selector="learned", how="auto", tau=1.0, noise=1.0,
             return_info=False, generator=None):
        c = self.config
        if selector not in ("learned", "random"):
            raise ValueError(f"selector must be 'learned' or 'random', got {selector!r}")
        if how not in ("auto", "mask", "gather", "gather_st"):
            raise ValueError(f"how must be 'auto', 'mask', 'gather' or 'gather_st', got {how!r}")
        if r < 0:
            raise ValueError(f"r (tokens merged per block) must be >= 0, got {r}")
        if how == "auto":
            how = "mask" if self.training else "gather"
        k = keep_count(c.n_tokens, rho)
        B, N, _ = h.shape
        mask = size = kept = None
        source = torch.eye(N, device=h.device, dtype=h.dtype).expand(B, N, N) if (return_info and r > 0) else None
        tokens = [N] * start
        for i, block in enumerate(self.blocks):
            if i < start:
                continue
            if i == c.select_after and k < h.shape[1]:
                if how in ("mask", "gather_st") and r > 0:
                    raise ValueError(f"how={how!r} (a training path) cannot be combined with merging (r > 0); "
                                     "use how='gather' or r=0")
                if selector == "learned":
                    scores = self.scorer(h).squeeze(-1)  # (B, n)
                else:
                    scores = torch.rand(B, h.shape[1], generator=generator, dtype=h.dtype).to(h.device)
                if how == "mask":
                    mask = select_mask(scores, k, tau=tau, gumbel=self.training, noise=noise)  # (B, n)
                    if return_info:
                        kept = mask.detach().nonzero()[:, 1].reshape(B, k)
                elif how == "gather_st":
                    h, mask, kept = _gather_st(h, select_mask(scores, k, tau=tau, gumbel=self.training, noise=noise), k)
                else:
                    kept = scores.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, k)
                    h = h.gather(1, kept.unsqueeze(-1).expand(B, k, h.shape[-1]))  # (B, k, d)
                    if size is not None:
                        size = size.gather(1, kept.unsqueeze(-1))  # (B, k, 1)
                    if source is not None:
                        source = source.gather(1, kept.unsqueeze(-1).expand(B, k, N))  # (B, k, N)
            tokens.append(h.shape[1] if mask is None else k)
            h, size, source = block(h, mask, size, r, source)
        h = self.norm(h)
        if mask is not None:
            pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        elif size is not None:
            pooled = (h * size).sum(1) / size.sum(1)
        else:
            pooled = h.mean(1)
        logits = self.head(pooled)
        if return_info:
            return logits, TokenInfo(kept, source, tokens)
        return logits


# ---------------------------------------------------------------- FLOPs

def token_schedule(config: ViTConfig, *, rho: float = 1.0, r: int = 0) -> list[int]:
    """Tokens entering each block: selection to ``keep_count(N, rho)`` before block ``select_after``,
    then ``n -> n - min(r, n // 2)`` after each block's attention (ToMe)."""
    n, out = config.n_tokens, []
    k = keep_count(n, rho)
    for i in range(config.depth):
        if i == config.select_after:
            n = min(n, k)
        out.append(n)
        n -= min(r, n // 2)
    return out


def vit_flops(config: ViTConfig, *, rho: float = 1.0, r: int = 0) -> float:
    """FLOPs per image. Block with n tokens in, n' = n - min(r, n//2) after merging, d, MLP hidden m:
    ``2n*d*3d + 4n^2 d + 2n d^2`` (attention) ``+ 2 ceil(n/2) floor(n/2) d/h`` (ToMe similarity, if r > 0)
    ``+ 4 n' d m`` (MLP); plus embedding ``2 N p^2 d``, scorer ``2n(d s + s)`` when selecting, head ``2 d C``."""
    c = config
    d, m, N = c.dim, c.mlp_hidden, c.n_tokens
    total = 2 * N * c.patch ** 2 * d + 2 * d * c.classes
    sched = token_schedule(c, rho=rho, r=r)
    before = N if c.select_after == 0 else sched[c.select_after - 1] - min(r, sched[c.select_after - 1] // 2)
    if keep_count(N, rho) < before:  # the scorer runs on the tokens present before selection
        total += 2 * before * (d * c.scorer_hidden + c.scorer_hidden)
    for n in sched:
        total += 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d
        rr = min(r, n // 2)
        if rr > 0:
            total += 2 * ((n + 1) // 2) * (n // 2) * (d // c.heads)
        total += 4 * (n - rr) * d * m
    return float(total)


# ---------------------------------------------------------------- evaluation

def parse_setting(kw: dict) -> tuple[float, int, str]:
    """An inference setting ``{"rho": .., "r": .., "selector": ..}`` (defaults 1.0, 0, "learned") as a tuple."""
    unknown = set(kw) - {"rho", "r", "selector"}
    if unknown:
        raise ValueError(f"a setting takes rho, r and selector, got {sorted(unknown)}")
    return float(kw.get("rho", 1.0)), int(kw.get("r", 0)), str(kw.get("selector", "learned"))


@torch.no_grad()
def evaluate_settings(model: TokenViT, x: torch.Tensor, y: torch.Tensor, settings: Sequence[dict], *,
                      batch_size: int = 1000, seed: int = 0) -> list[float]:
    """Test accuracy of every inference setting (``{"rho": .., "r": .., "selector": ..}``), one pass over ``x``.

    Settings without merging share the blocks before the selection (:meth:`TokenViT.prefix`), computed
    once per batch. The "random" selector of setting ``j`` draws from its own generator seeded ``seed + j``,
    so its tokens do not depend on the other settings or the batch order.
    """
    parsed = [parse_setting(kw) for kw in settings]
    model.eval()
    gens = {j: torch.Generator().manual_seed(seed + j) for j, (_, _, sel) in enumerate(parsed) if sel == "random"}
    correct = torch.zeros(len(parsed), device=x.device)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        h = model.prefix(xb) if any(r == 0 for _, r, _ in parsed) else None
        for j, (rho, r, sel) in enumerate(parsed):
            if r == 0:
                logits = model.from_prefix(h, rho=rho, selector=sel, generator=gens.get(j))
            else:
                logits = model(xb, rho=rho, r=r, selector=sel, how="gather", generator=gens.get(j))
            correct[j] += (logits.argmax(-1) == yb).sum()
    return (correct / len(x)).tolist()
