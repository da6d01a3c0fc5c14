"""What every rank computes, whoever dispatches it: the shared data, the batch of a step, the
models of a set of plans, and one timed training step with its traffic.

:mod:`mpnn.deploy.worker` (the book's engine), :mod:`mpnn.deploy.peers` (the PyTorch engines) and
:mod:`mpnn.deploy.netns` (ranks in network namespaces) all build on these, so that the three
measure the same computation on the same data.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .engine import ShardedMLP, init_params
from .plan import Plan

__all__ = ["DTYPES", "make_data", "batch", "io_written", "timed_step", "plan_models"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------------- data (the shared store)

def make_data(spec: dict, n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank builds the same data set: ``{"kind": "mnist", "n", "root"}`` or ``{"kind": "synthetic", "n", "seed"}``."""
    if spec["kind"] == "mnist":
        from mpnn.data import load_mnist
        from mpnn.data.mnist import to_tensor
        images, labels = load_mnist("train", root=spec.get("root"))
        n = int(spec["n"])
        return to_tensor(images[:n], scale="unit", shape="flat"), labels[:n]
    if spec["kind"] == "synthetic":
        g = torch.Generator().manual_seed(int(spec["seed"]))
        x = torch.randn(int(spec["n"]), n_in, generator=g, dtype=torch.float64)
        w = torch.randn(n_in, n_out, generator=g, dtype=torch.float64)
        return x.float(), (x @ w).argmax(1)
    raise ValueError(f"unknown data kind {spec['kind']!r}; use 'mnist' or 'synthetic'")


def batch(x: torch.Tensor, y: torch.Tensor, step: int, size: int, seed: int):
    """Batch of step ``step``: a function of (seed, step) only, so a restarted run sees the same batches."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    idx = torch.randperm(x.shape[0], generator=g)[:size]
    return x[idx], y[idx]


def io_written() -> int | None:
    """Bytes this process passed to write()/writev() (gloo's TCP pairs use writev): /proc/self/io wchar."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def timed_step(model: ShardedMLP, xb, yb, lr: float, device) -> dict:
    """One training step of a sharded model after a barrier: start, head's forward end, end, traffic."""
    model.stats.reset()
    io0, t0 = io_written(), time.perf_counter()
    model.zero_grad()
    logits = model.forward(xb)
    t_fwd = time.perf_counter()
    grad = None
    if logits is not None:
        logits.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, yb.to(device)), logits)
    model.backward(grad)
    model.sgd_step(lr)
    t1, io1 = time.perf_counter(), io_written()
    return {"t0": t0, "t_fwd": t_fwd if logits is not None else None, "t1": t1,
            "wire_bytes": None if io0 is None else io1 - io0, **model.stats.as_dict()}


def plan_models(job: dict, rank: int, device) -> tuple:
    """The set-up every interleaved timing job shares: ``job["plans"]``, the data, the initial parameters
    and this rank's :class:`ShardedMLP` of each plan (None where the plan has fewer ranks).
    Returns ``(plans, x, y, params, models)``."""
    dtype = DTYPES[job.get("dtype", "float32")]
    plans = [Plan.from_dict(pd) for pd in job["plans"]]
    sizes = plans[0].sizes
    x, y = make_data(job["data"], sizes[0], sizes[-1])
    params = init_params(sizes, job["seed"], dtype)
    models = [ShardedMLP(p, rank, params=params, device=device, dtype=dtype, timeout_s=job["op_timeout_s"])
              if rank < p.world_size else None for p in plans]
    return plans, x, y, params, models
