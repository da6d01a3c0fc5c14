"""The shared store: a sharded checkpoint (``torch.distributed.checkpoint``) in one directory.

The multi-part deployment document keeps the model on a shared network file system. Here a directory stands for it::

    root/
      LATEST                 the last complete step (written by rank 0 after every rank has saved)
      step-000003/           one DCP checkpoint: each rank writes its own rows in parallel
        .metadata  __0_0.distcp  __1_0.distcp  ...  plan.json

Each rank saves only the rows it owns, under keys ``rank{r}.L{l}.weight`` / ``rank{r}.L{l}.bias``.
``LATEST`` is replaced atomically (``os.replace``) after the save, so a crash during a save leaves
the previous checkpoint as the resume point: a restart loses no *completed* update.
:func:`consolidate` reassembles the full single-process parameters from the shards.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from .engine import assemble
from .plan import Plan, PlanError

__all__ = ["step_dir", "latest_step", "save_shards", "load_shards", "consolidate"]


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{int(step):06d}"


def latest_step(root: str | Path) -> int | None:
    """The last complete step in ``root``, or None when there is no checkpoint yet."""
    f = Path(root) / "LATEST"
    return int(f.read_text().strip()) if f.exists() else None


def save_shards(root: str | Path, step: int, plan: Plan, state: dict[str, torch.Tensor]) -> Path:
    """Collective: every rank saves its rows of step ``step``; rank 0 then moves ``LATEST``."""
    rank = dist.get_rank()
    path = step_dir(root, step)
    path.mkdir(parents=True, exist_ok=True)
    dcp.save({f"rank{rank}.{k}": v.detach().cpu() for k, v in state.items()}, checkpoint_id=path)
    if rank == 0:
        (path / "plan.json").write_text(plan.to_json(indent=1))
        tmp = Path(root) / ".LATEST.tmp"
        tmp.write_text(str(int(step)))
        os.replace(tmp, Path(root) / "LATEST")
    dist.barrier()
    return path


def _check_plan(path: Path, plan: Plan) -> None:
    saved = Plan.from_json((path / "plan.json").read_text())
    if saved != plan:
        raise PlanError(f"the checkpoint {path} was written with a different plan "
                        f"({saved.strategy}, {saved.world_size} ranks); resume with that plan, or "
                        f"consolidate() it and start a new run from the full parameters")


def load_shards(root: str | Path, step: int, plan: Plan, rank: int, *, device="cpu",
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Collective: rank ``rank`` reads back its own rows of step ``step``."""
    path = step_dir(root, step)
    _check_plan(path, plan)
    sd = {}
    for l in range(1, plan.n_layers + 1):
        n = plan.local(l, rank).numel()
        if n:
            sd[f"rank{rank}.L{l}.weight"] = torch.empty(n, plan.sizes[l - 1], dtype=dtype)
            sd[f"rank{rank}.L{l}.bias"] = torch.empty(n, dtype=dtype)
    dcp.load(sd, checkpoint_id=path)
    prefix = f"rank{rank}."
    return {k[len(prefix):]: v.to(device) for k, v in sd.items()}


def consolidate(root: str | Path, step: int | None = None) -> tuple[Plan, list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Single process, no group: the full ``[(W_l, b_l)]`` of a checkpoint (default: ``LATEST``)."""
    step = latest_step(root) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {root} (no LATEST file)")
    path = step_dir(root, step)
    plan = Plan.from_json((path / "plan.json").read_text())
    meta = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    sd = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in meta.items()}
    with warnings.catch_warnings():   # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(sd, checkpoint_id=path, no_dist=True)
    per_rank = [{k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(f"rank{r}.")}
                for r in range(plan.world_size)]
    return plan, assemble(plan, per_rank), step
