"""Which patches are kept: the kept patches drawn on the digits, the merged tokens' sizes, and how often each
patch position is kept."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
import torch

from mpnn.runtime import plots
from mpnn.tokens import TokenViT


def patch_map(values: torch.Tensor, patch: int) -> torch.Tensor:
    """One value per patch (B, G*G) -> a (B, 28, 28) image holding each patch's value on its pixels."""
    g = 28 // patch
    return values.reshape(-1, g, g).repeat_interleave(patch, 1).repeat_interleave(patch, 2)


def kept_mask(kept: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Indices of the kept patches (B, k) -> 0/1 per patch (B, n_tokens), on the CPU."""
    return torch.zeros(len(kept), n_tokens).scatter_(1, kept.cpu(), 1.0)


@torch.no_grad()
def kept_patch_rows(model: TokenViT, x: torch.Tensor, digits: torch.Tensor, rhos: Sequence[float]) -> torch.Tensor:
    """The digits (uint8) in a first row, then one row per keep ratio with the dropped patches faded
    (kept patches: full ink on a grey tint, clipped at full ink). (len(digits) * (1 + len(rhos)), 28, 28) in [0, 1]
    (:func:`mpnn.runtime.plots.image_grid` reads values above 1 as 0-255 pixels: unclipped, the tint on full ink
    turned the whole figure white)."""
    c = model.config
    images = digits.float() / 255
    rows = [images]
    for rho in rhos:
        _, info = model(x, rho=rho, return_info=True)
        keep = patch_map(kept_mask(info.kept, c.n_tokens), c.patch)
        rows.append((images * (0.15 + 0.85 * keep) + 0.12 * keep).clamp(max=1.0))
    return torch.cat(rows)


@torch.no_grad()
def merged_size_map(model: TokenViT, x: torch.Tensor, r: int) -> torch.Tensor:
    """Per pixel, the size of the merged token its patch ends up in after the last block (ToMe with ``r``),
    divided by the largest: (B, 28, 28) in [0, 1]."""
    _, info = model(x, r=r, return_info=True)
    src = info.source.cpu()                                   # (B, tokens, N)
    size_of_patch = (src * src.sum(-1, keepdim=True)).sum(1)  # size of the token each patch belongs to
    return patch_map(size_of_patch / size_of_patch.max(), model.config.patch)


@torch.no_grad()
def keep_frequency(model: TokenViT, x: torch.Tensor, rho: float, batch_size: int = 1000) -> pd.DataFrame:
    """How often each patch position (row, column of the grid) is kept at ``rho`` over the images ``x``."""
    n = model.config.n_tokens
    counts = torch.zeros(n)
    for xb in x.split(batch_size):
        _, info = model(xb, rho=rho, return_info=True)
        counts += kept_mask(info.kept, n).sum(0)
    g = 28 // model.config.patch
    return pd.DataFrame({"row": np.repeat(np.arange(g), g), "column": np.tile(np.arange(g), g),
                         "kept": (counts / len(x)).numpy()})


def figure_keep_frequency(freq: pd.DataFrame, rho: float) -> alt.TopLevelMixin:
    """:func:`keep_frequency`'s share of images keeping each patch position, as a map of the patch grid."""
    shown = freq.rename(columns={"row": "patch row", "column": "patch column", "kept": "share of images keeping it"})
    return plots.heatmap(shown, "patch column", "patch row", "share of images keeping it", width=260, height=260,
                         annotate=False, title=f"How often each patch is kept (keep ratio ρ = {rho:g})")
