"""Data and network: the chapter's MNIST splits and the FLOPs a sample pays at each exit."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from mpnn.data.mnist import load_mnist, to_tensor
from mpnn.early_exit import EarlyExitNet, exit_costs, full_cost


MNIST_TRAIN = 60000


@dataclass
class Splits:
    """Standardised images (N, 1, 28, 28) and labels: training, validation (the last ``n_val`` training
    images, used only to pick the threshold) and test; ``test_images`` are the raw uint8 test digits."""

    X: torch.Tensor
    Y: torch.Tensor
    XV: torch.Tensor
    YV: torch.Tensor
    XT: torch.Tensor
    YT: torch.Tensor
    test_images: torch.Tensor


def load_splits(n_train: int, n_val: int, n_test: int, device) -> Splits:
    """The chapter's MNIST splits on ``device`` (:func:`mpnn.data.mnist.to_tensor`, standard scale)."""
    if not 0 < n_val < MNIST_TRAIN - 1 or n_train + n_val > MNIST_TRAIN:
        raise ValueError(f"need n_train + n_val <= {MNIST_TRAIN} training images, got {n_train} + {n_val}")
    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    image = lambda images: to_tensor(images, scale="standard", shape="image", device=device)
    return Splits(image(train_x[:n_train]), train_y[:n_train].to(device),
                  image(train_x[-n_val:]), train_y[-n_val:].to(device),
                  image(test_x[:n_test]), test_y[:n_test].to(device), test_x[:n_test])


def cost_table(model: EarlyExitNet) -> pd.DataFrame:
    """FLOPs a sample pays when it leaves at each exit, and the plain network's, absolute and relative."""
    costs, full = exit_costs(model), full_cost(model)
    return pd.DataFrame({"a sample leaving at": ["exit 1 (after block 1)", "exit 2 (end)", "plain network, no exits"],
                         "FLOPs": [int(costs[0]), int(costs[1]), int(full)],
                         "relative to the plain network": [costs[0].item() / full, costs[1].item() / full, 1.0]})
