"""Deterministic execution: seeds, independent child seeds, the device and the CPU thread count.

Used by mechanisms, experiments and the book's runtime alike (it imports nothing of the package).
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device); optionally force determinism."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def spawn_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent child seeds of ``seed`` (``numpy.random.SeedSequence.spawn``).

    Use one per repeated run so runs are independent yet reproducible.
    """
    if n < 1:
        raise ValueError(f"need at least one seed, got n={n}")
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else Apple's MPS, else CPU; otherwise the named device, checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda[:N]' or 'mps'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if dev.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} requested but Apple's MPS is not available; use 'auto' or 'cpu'")
    return dev


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@contextmanager
def cpu_threads(n: int | None = 1, device: torch.device | str = "cpu"):
    """Run the block with ``n`` intra-op CPU threads, restoring the previous count afterwards.

    The book's models are small: splitting their matrices over threads costs more in
    synchronisation than it saves (many times more on a busy machine), and one thread also fixes
    the reduction order. ``n=None`` or a non-CPU ``device`` leaves torch's setting alone.
    """
    if n is None or torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
