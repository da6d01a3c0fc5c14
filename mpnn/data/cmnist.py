"""CMNIST: three MNIST digits side by side, with compositional and non-compositional targets.

Construction (Jarvis et al. 2023): split the MNIST images of a split into three equal consecutive
thirds and glue image ``i`` of each third side by side, giving ``n = N // 3`` images of 28 x 84:

    train: [0:20000] | [20000:40000] | [40000:60000]   -> 20,000 images
    test:  [0:3333]  | [3333:6666]   | [6666:9999]     ->  3,333 images

Targets for digits ``(d1, d2, d3)``:

* compositional (30 values): the three one-hot codes of the digits, concatenated;
* non-compositional (1000 values): ``10 * onehot(100 d1 + 10 d2 + d3)``. The squared norms of the
  two targets are 3 and 100, the normalisers of the paper's errors (predicting zero scores 1).

Everything is built with tensor indexing (no Python loop over images) and kept in an in-process
cache, so repeated calls (several models, several seeds) share one copy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .mnist import load_mnist, to_tensor

__all__ = ["CMNIST", "compose", "compositional_targets", "noncompositional_targets", "compositional_share", "load_cmnist",
           "N_COMPOSITIONAL", "N_NONCOMPOSITIONAL", "NONCOMP_SCALE"]

N_COMPOSITIONAL = 30
N_NONCOMPOSITIONAL = 1000
NONCOMP_SCALE = 10.0


@dataclass(frozen=True)
class CMNIST:
    """``images`` uint8 (n, 28, 84); ``digits`` int64 (n, 3), left to right."""
    images: torch.Tensor
    digits: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def numbers(self) -> torch.Tensor:
        """The three-digit number ``100 d1 + 10 d2 + d3``: (n,)."""
        return self.digits @ torch.tensor([100, 10, 1])

    def inputs(self, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Float images in [0, 1] with a channel axis: (n, 1, 28, 84) (:func:`mpnn.data.mnist.to_tensor`)."""
        return to_tensor(self.images[idx], scale="unit", shape="image")

    def targets(self, idx: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(compositional (n, 30), non-compositional (n, 1000))`` float targets."""
        d = self.digits[idx]
        return compositional_targets(d), noncompositional_targets(d)

    def subset(self, n: int) -> "CMNIST":
        """The first ``n`` images (for CPU-sized profiles)."""
        if not 1 <= n <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)}, got {n}")
        return CMNIST(self.images[:n], self.digits[:n])


def compose(images: torch.Tensor, labels: torch.Tensor, n: int | None = None) -> CMNIST:
    """Glue thirds ``[0:n], [n:2n], [2n:3n]`` index by index: (N, 28, 28) -> (n, 28, 84).

    ``n`` defaults to ``N // 3`` (20,000 for MNIST train, 3,333 for test).
    """
    if images.dim() != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"need images (N, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
    n = images.shape[0] // 3 if n is None else n
    if not 1 <= n <= images.shape[0] // 3:
        raise ValueError(f"n must be between 1 and N // 3 = {images.shape[0] // 3}, got {n}")
    thirds = images[: 3 * n].reshape(3, n, *images.shape[1:])          # (3, n, 28, 28)
    glued = thirds.permute(1, 2, 0, 3).reshape(n, images.shape[1], 3 * images.shape[2])  # (n, 28, 84)
    digits = labels[: 3 * n].reshape(3, n).T.contiguous()               # (n, 3)
    return CMNIST(glued.contiguous(), digits)


def compositional_targets(digits: torch.Tensor) -> torch.Tensor:
    """Three concatenated one-hot codes: (n, 3) -> (n, 30)."""
    return torch.nn.functional.one_hot(digits, 10).flatten(1).float()


def noncompositional_targets(digits: torch.Tensor, scale: float = NONCOMP_SCALE) -> torch.Tensor:
    """``scale * onehot(100 d1 + 10 d2 + d3)`` (the paper's ``scale`` is 10): (n, 3) -> (n, 1000)."""
    if scale < 0:
        raise ValueError(f"scale must be >= 0 (the norm of the non-compositional target), got {scale}")
    number = digits @ torch.tensor([100, 10, 1], device=digits.device)
    return torch.nn.functional.one_hot(number, N_NONCOMPOSITIONAL).float() * scale


def compositional_share(scale: float = NONCOMP_SCALE) -> float:
    """The compositional part's share of the target's squared norm, ``3 / (3 + scale^2)``: how much
    of the target is compositional (1 without a non-compositional target, 3/103 in the paper)."""
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    return 3 / (3 + scale ** 2)


@functools.lru_cache(maxsize=4)
def _cached(split: str, root: str | None) -> CMNIST:
    images, labels = load_mnist(split, root=root)
    return compose(images, labels)


def load_cmnist(split: str = "train", root: str | None = None) -> CMNIST:
    """CMNIST for ``"train"`` (20,000 images) or ``"test"`` (3,333) from :func:`mpnn.data.mnist.load_mnist`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _cached(split, None if root is None else str(root))
