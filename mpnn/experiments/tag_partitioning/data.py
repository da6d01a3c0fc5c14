"""Data: the document's train/validation split per seed, and what the hidden grid can see."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
import torch

from mpnn.data import load_mnist
from mpnn.data.mnist import to_tensor
from mpnn.tagnet import partition_groups
from mpnn.tagnet.local import LocallyConnected


def load_data(n_test: int, device) -> tuple[torch.Tensor, ...]:
    """MNIST scaled to [0, 1]: X (60000, 784), Y, and the first ``n_test`` test images XT, YT."""
    train_images, train_labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    X = to_tensor(train_images, scale="unit", device=device)
    XT = to_tensor(test_images[:n_test], scale="unit", device=device)
    return X, train_labels.to(device), XT, test_labels[:n_test].to(device)


def split_indices(n: int = 60000, n_train: int = 48000, *, seed: int = 0,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train/validation split of ``range(n)`` (PARAGON ``SplitDataset``: a permutation,
    the first ``n_train`` for training, in that permuted order)."""
    if not 0 < n_train <= n:
        raise ValueError(f"n_train must be in 1..{n}, got {n_train}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train].to(device), perm[n_train:].to(device)


def seed_splits(seeds: Sequence[int], n_train: int, n_val: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each seed's 48,000/12,000 split, cut to its first ``n_train`` / ``n_val`` samples."""
    splits = [split_indices(60000, 48000, seed=s, device=device) for s in seeds]
    return [(tr[:n_train], va[:n_val]) for tr, va in splits]


# ------------------------------------------------------------------ what the grid sees

def field_of_view(X: torch.Tensor) -> tuple[pd.DataFrame, int, float]:
    """Per partition and input pixel: how many hidden neurons see it, and the mean ink of the first
    5,000 training digits there; also the number of pixels any neuron sees and their share of the ink."""
    conn = LocallyConnected().connectivity().float()                        # (256, 784)
    mean_digit = X[:5000].mean(0).cpu()
    frames = [pd.DataFrame({"partition": part, "row": np.arange(784) // 28, "col": np.arange(784) % 28,
                            "neurons seeing the pixel": conn[units].sum(0).numpy().astype(float),
                            "mean ink": mean_digit.numpy().astype(float)})
              for part, units in zip(("tag 0 (even) partition", "tag 1 (odd) partition"),
                                     partition_groups().values())]
    seen = conn.any(0)
    return pd.concat(frames, ignore_index=True), int(seen.sum()), float((mean_digit * seen).sum() / mean_digit.sum())


def figure_field_of_view(view: pd.DataFrame) -> alt.FacetChart:
    """Receptive field of each partition (orange) over the average digit (grey)."""
    base = alt.Chart(view).encode(x=alt.X("col:O", axis=None), y=alt.Y("row:O", axis=None))
    ink = base.mark_rect().encode(color=alt.Color("mean ink:Q", scale=alt.Scale(scheme="greys"), legend=None))
    seen = base.transform_filter("datum['neurons seeing the pixel'] > 0").mark_rect(opacity=0.45).encode(
        color=alt.Color("neurons seeing the pixel:Q", scale=alt.Scale(scheme="oranges")))
    return (ink + seen).properties(width=200, height=200).facet(
        column=alt.Column("partition:N", title=None)).properties(
        title="Receptive field of each partition (orange) over the average training digit (grey)")
