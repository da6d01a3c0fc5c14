"""The early-exit network's always-run part as one C++ loop per image: block 1, exit 1, its entropy,
the exit decision and the gather of the rows that stay (:func:`mpnn.early_exit.fused_exit1`).

Per image, in registers and the L1 cache (C channels, K classes, GCC vector extensions, 8 or 16 floats per
vector, built by :mod:`mpnn.infra.native`):

* block 1, ``conv5x5(1 -> C, pad 2) + ReLU + maxpool2`` channels last: pooled ``(h, w)`` is
  ``relu(b + max_{di, dj in {0,1}} sum_{r, c < 5} x_pad[2h + di + r][2w + dj + c] W[r][c])`` (bias and
  ReLU commute with the max), the four phases accumulated together over the 25 taps;
* exit 1, ``maxpool2 + linear`` on the (14, 14, C) features: ``z_k = b_k + <V_k, pool(F)>`` with the
  head's weight in channels-last (7, 7, C) order;
* its normalised entropy ``H = -sum_k p_k log p_k / log K`` (``p = softmax(z)``, in double), and the
  decision: the image stays when ``not H < threshold`` (as :func:`mpnn.early_exit.normalised_entropy`
  decides it); only staying images' features are written, packed in order.

Each image is computed alone in a fixed order, so a result does not depend on the batch it came in.
:func:`stage1` returns None where the kernel cannot serve (no compiler, ``MPNN_FUSED=0``, a channel
count other than 8, 16 or 32, more than 64 classes, not float32 on the CPU); callers then run the
torch path.
"""
from __future__ import annotations

import ctypes

import torch

from ..infra import native

SOURCE = native.source("stage1.cpp")      # mpnn/kernels/stage1.cpp

CHANNELS = (8, 16, 32)
MAX_CLASSES = 64


def kernel():
    """The compiled ``mpnn_stage1`` (see :data:`SOURCE`), or None (no compiler, ``MPNN_FUSED=0``)."""
    P, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    return native.load("stage1", SOURCE, "mpnn_stage1", [i64, i32, P, P, P, i32, P, P, f32, i32, P, P, P], i64)


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def usable(x: torch.Tensor, conv: torch.nn.Conv2d, head: torch.nn.Linear) -> bool:
    """Can the kernel compute this model on ``x`` (float32 on the CPU, supported sizes, a compiler)?"""
    params = (x, conv.weight, conv.bias, head.weight, head.bias)
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in params)
            and conv.out_channels in CHANNELS and head.out_features <= MAX_CLASSES and kernel() is not None)


@torch.no_grad()
def stage1(x: torch.Tensor, conv: torch.nn.Conv2d, head: torch.nn.Linear | None, threshold: float | None = None):
    """Block 1 (and exit 1's logits unless ``head`` is None) of images ``x`` (B, 1, 28, 28).

    ``threshold`` None: returns ``(features (B, 14, 14, C), logits (B, K) or None)``. A threshold:
    ``(logits (B, K), features of the n staying rows (n, 14, 14, C), their row numbers (n,))``.
    Callers check :func:`usable` first.
    """
    B, C = x.shape[0], conv.out_channels
    x = x.reshape(B, 784).contiguous()
    w = conv.weight.reshape(C, 25).t().contiguous()                      # (25, C) tap-major
    hw = None if head is None else _channels_last_head(head, C)
    K = 0 if head is None else head.out_features
    logits = None if head is None else x.new_empty(B, K)
    feats = x.new_empty(B, 14, 14, C)                                     # pages touched only where written
    rows = torch.empty(B if threshold is not None else 0, dtype=torch.long)
    n = kernel()(B, C, x.data_ptr(), w.data_ptr(), conv.bias.contiguous().data_ptr(), K, _ptr(hw),
                 None if head is None else head.bias.contiguous().data_ptr(),
                 0.0 if threshold is None else float(threshold), int(threshold is None),
                 feats.data_ptr(), _ptr(logits), rows.data_ptr())
    if n < 0:
        raise ValueError(f"the stage-1 kernel supports {CHANNELS} channels and up to {MAX_CLASSES} classes")
    if threshold is None:
        return feats, logits
    return logits, feats[:n], rows[:n]


def _channels_last_head(head: torch.nn.Linear, channels: int) -> torch.Tensor:
    """Exit 1's weight (K, C*7*7) reordered to the kernel's channels-last (K, 7*7*C)."""
    K = head.out_features
    return head.weight.view(K, channels, 7, 7).permute(0, 2, 3, 1).reshape(K, -1).contiguous()
