"""Locally connected layer: every output neuron has its own weights over a small input window.

A hidden grid of ``grid x grid`` neurons reads an ``image x image`` input. Neuron ``(x, y)`` (column
``x``, row ``y``, flat index ``h = y * grid + x``) sees the ``window x window`` input pixels centred
on ``(x * stride + offset, y * stride + offset)``; positions that fall outside the image are
*skipped* (no connection), as in the PARAGON library's ``getLocalConnections``. With the
NeuralArena defaults (grid 16, image 28, window 5, stride 1, offset 0) only input rows and
columns 0-17 are ever seen.

The layer computes

    h_j = b_j + sum_{k < K} W[j, k] * x[index[j, k]]                                  (1)

with ``index`` (H, K) the flat input position of tap ``k`` of neuron ``j``. Skipped taps point at an
extra always-zero input slot ``P = image * image`` and their weight is held at zero, so they
neither contribute to (1) nor ever receive a gradient (d h_j / d W[j, k] = x[P] = 0).
Equivalently ``h = x @ D.T + b`` with the dense, masked weight ``D = dense_weight()`` (H, P).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["window_index", "LocallyConnected"]


def window_index(grid: int = 16, image: int = 28, window: int = 5, *, stride: int = 1,
                 offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tap positions of every neuron of a ``grid x grid`` locally connected layer.

    Returns ``index`` (H, K) long, the flat input position ``row * image + col`` of each tap (the
    pad slot ``image * image`` where the tap falls outside the image), and ``valid`` (H, K) bool.
    ``H = grid ** 2`` neurons in row-major order (``h = y * grid + x``), ``K = window ** 2`` taps in
    row-major order of the offsets ``(dy, dx)``.
    """
    for name, v in (("grid", grid), ("image", image), ("window", window), ("stride", stride)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if window % 2 != 1:
        raise ValueError(f"window must be odd so that it has a centre pixel, got {window}")
    half = window // 2
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")      # (G, G)
    dy, dx = torch.meshgrid(torch.arange(-half, half + 1), torch.arange(-half, half + 1),
                            indexing="ij")                                              # (w, w)
    rows = (ys.reshape(-1, 1) * stride + offset) + dy.reshape(1, -1)                    # (H, K)
    cols = (xs.reshape(-1, 1) * stride + offset) + dx.reshape(1, -1)                    # (H, K)
    valid = (rows >= 0) & (rows < image) & (cols >= 0) & (cols < image)
    index = torch.where(valid, rows * image + cols, torch.full_like(rows, image * image))
    if not valid.any(dim=1).all():
        raise ValueError("some neurons see no input pixel at all; reduce grid/stride/offset "
                         f"(grid={grid}, stride={stride}, offset={offset}, image={image})")
    return index, valid


class LocallyConnected(nn.Module):
    """Grid of neurons with private weights over a window of the input, eq. (1) of the module doc.

    ``forward(x)``: x (B, image*image) -> (B, grid*grid). Weights are He-normal,
    ``std = sqrt(2 / fan_in)`` with ``fan_in = window ** 2`` (the nominal window size, also at the
    image edges, as PARAGON does) unless ``fan_in`` is given; biases start at 0.
    """

    def __init__(self, grid: int = 16, image: int = 28, window: int = 5, *, stride: int = 1,
                 offset: int = 0, fan_in: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        index, valid = window_index(grid, image, window, stride=stride, offset=offset)
        self.grid, self.image, self.window = grid, image, window
        self.register_buffer("index", index)        # (H, K)
        self.register_buffer("valid", valid)        # (H, K)
        std = math.sqrt(2.0 / (fan_in or window * window))
        w = torch.randn(index.shape, generator=generator) * std
        self.weight = nn.Parameter(w * valid)       # (H, K), zero on skipped taps
        self.bias = nn.Parameter(torch.zeros(index.shape[0]))  # (H,)

    @property
    def n_inputs(self) -> int:
        return self.image * self.image

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, P + 1): append the always-zero slot that skipped taps read."""
        if x.shape[-1] != self.n_inputs:
            raise ValueError(f"expected inputs with {self.n_inputs} = {self.image}x{self.image} "
                             f"features (flatten the images), got {x.shape[-1]}")
        return torch.nn.functional.pad(x, (0, 1))

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, H, K): the input window of every neuron (zeros on skipped taps)."""
        return self.pad(x)[:, self.index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.patches(x) * self.weight).sum(-1) + self.bias   # (B, H)

    def connectivity(self) -> torch.Tensor:
        """(H, P) bool: ``True`` where neuron ``h`` is connected to input pixel ``p``."""
        mask = torch.zeros(self.index.shape[0], self.n_inputs + 1, dtype=torch.bool,
                           device=self.index.device)
        mask.scatter_(1, self.index, self.valid)
        return mask[:, :-1]

    def dense_weight(self) -> torch.Tensor:
        """(H, P) dense weight, zero outside each neuron's window: ``forward(x) == x @ D.T + b``."""
        dense = torch.zeros(self.index.shape[0], self.n_inputs + 1, dtype=self.weight.dtype,
                            device=self.weight.device)
        dense.scatter_add_(1, self.index, self.weight * self.valid)
        return dense[:, :-1]

    def extra_repr(self) -> str:
        return (f"grid={self.grid}x{self.grid}, image={self.image}x{self.image}, "
                f"window={self.window}x{self.window}, taps={int(self.valid.sum())}")
