"""Data and settings: the chapter's MNIST splits, the inference settings it sweeps (learned and random
selection, ToMe merging) and their FLOPs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from mpnn.data.mnist import load_mnist, to_tensor
from mpnn.tokens import ViTConfig, parse_setting, token_schedule, vit_flops


SELECTION, RANDOM, MERGING = "selection (learned)", "selection (random)", "merging (ToMe)"
REDUCTION = "token reduction"          # the legend title of the figures that tell the methods apart


@dataclass
class Splits:
    """Standardised images (N, 1, 28, 28) and labels for training and test; ``test_images``: raw uint8 digits."""

    X: torch.Tensor
    Y: torch.Tensor
    XT: torch.Tensor
    YT: torch.Tensor
    test_images: torch.Tensor


def load_splits(n_train: int, n_test: int, device) -> Splits:
    """The chapter's MNIST splits on ``device`` (:func:`mpnn.data.mnist.to_tensor`, standard scale)."""
    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    image = lambda images: to_tensor(images, scale="standard", shape="image", device=device)
    return Splits(image(train_x[:n_train]), train_y[:n_train].to(device), image(test_x[:n_test]),
                  test_y[:n_test].to(device), test_x[:n_test])


def inference_settings(rhos: Sequence[float], merge_rs: Sequence[int], rho_claim: float) -> list[tuple[str, dict]]:
    """(method, setting) pairs: learned selection at every rho, random selection at every rho < 1 (the
    control), ToMe at every r > 0."""
    if rho_claim not in rhos or 1.0 not in rhos or 0 not in merge_rs:
        raise ValueError("rhos must contain 1.0 and rho_claim, and merge_rs must contain 0")
    return ([(SELECTION, dict(rho=r)) for r in rhos] + [(RANDOM, dict(rho=r, selector="random")) for r in rhos if r < 1]
            + [(MERGING, dict(r=r)) for r in merge_rs if r > 0])


def relative_flops(config: ViTConfig, setting: dict) -> float:
    """FLOPs of ``setting`` relative to all tokens (:func:`mpnn.tokens.vit_flops`)."""
    rho, r, _ = parse_setting(setting)
    return vit_flops(config, rho=rho, r=r) / vit_flops(config)


def flops_table(config: ViTConfig, settings: Sequence[tuple[str, dict]]) -> pd.DataFrame:
    """Tokens entering each block and relative FLOPs of every setting (random selection costs as learned)."""
    return pd.DataFrame([{"method": m, "setting": str(kw),
                          "tokens per block": token_schedule(config, rho=kw.get("rho", 1.0), r=kw.get("r", 0)),
                          "relative FLOPs": relative_flops(config, kw)} for m, kw in settings if m != RANDOM])
