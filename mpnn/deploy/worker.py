"""Worker processes: what each rank runs. Lives in ``mpnn`` so spawned processes can import it.

Two ways in, same jobs:

* ``python -m mpnn.deploy.worker JOB RANK WORLD PORT`` -- started by :func:`mpnn.deploy.launch.launch`,
  which hosts the ``TCPStore`` rendezvous on ``127.0.0.1:PORT``;
* ``torchrun ... -m mpnn.deploy.worker --torchrun JOB`` -- rank, world size and the rendezvous come
  from torchrun's environment (``env://``), so the same code runs across machines.

A job is a dict saved with ``torch.save`` (``job["kind"]`` in :data:`JOBS`); rank ``r`` writes
``result-{r}.pt`` next to the job file, or ``error-{r}.txt`` and exit status 1.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .engine import ShardedMLP, init_params, reference_model
from .plan import Plan
from .rank_work import DTYPES, batch, make_data, plan_models, timed_step

__all__ = ["JOBS", "main"]

# ---------------------------------------------------------------------- jobs

def job_equivalence(job: dict, rank: int, device) -> dict:
    """For each plan: one forward/backward (logits, local grads) and ``k`` SGD steps (local rows)."""
    dtype = DTYPES[job.get("dtype", "float64")]
    out = []
    for pd in job["plans"]:
        plan = Plan.from_dict(pd)
        params = init_params(plan.sizes, job["seed"], dtype)
        x, y = make_data(job["data"], plan.sizes[0], plan.sizes[-1])
        model = ShardedMLP(plan, rank, params=params, device=device, dtype=dtype, timeout_s=job["op_timeout_s"])
        xb, yb = batch(x, y, 0, job["batch"], job["seed"])
        model.zero_grad()
        loss = model.loss_and_backward(xb, yb)
        first = {"logits": None if model.last_logits is None else model.last_logits.cpu(),
                 "loss": None if loss is None else float(loss),
                 "grads": {k: v.cpu() for k, v in model.grads().items()}}
        first["stats"] = model.stats.as_dict()
        model.zero_grad()
        for step in range(job["k_steps"]):
            model.train_step(*batch(x, y, step, job["batch"], job["seed"]), lr=job["lr"])
        out.append({"strategy": plan.strategy, **first,
                    "final": {k: v.cpu() for k, v in model.shard_state().items()}})
    return {"plans": out}


def job_train(job: dict, rank: int, device) -> dict:
    """SGD for ``steps`` steps, a sharded checkpoint after every ``ckpt_every`` steps, resuming from
    the latest complete checkpoint in ``ckpt_dir``. ``kill`` = ``{"rank", "step"}`` makes that rank
    die by SIGKILL just before that step's forward (a crash, not a clean exit)."""
    from . import checkpoint as ckpt   # imported here: torch.distributed.checkpoint is slow to import
    dtype = DTYPES[job.get("dtype", "float64")]
    plan = Plan.from_dict(job["plan"])
    x, y = make_data(job["data"], plan.sizes[0], plan.sizes[-1])
    root = Path(job["ckpt_dir"])
    start = ckpt.latest_step(root)
    if start is None:
        model = ShardedMLP(plan, rank, params=init_params(plan.sizes, job["seed"], dtype), device=device,
                           dtype=dtype, timeout_s=job["op_timeout_s"])
        start = 0
    else:
        shards = ckpt.load_shards(root, start, plan, rank, device=device, dtype=dtype)
        model = ShardedMLP(plan, rank, shards=shards, device=device, dtype=dtype, timeout_s=job["op_timeout_s"])
    losses = []
    kill = job.get("kill") or {}
    for step in range(start, job["steps"]):
        if (kill.get("rank") == rank and kill.get("step") == step
                and int(kill.get("attempt", 0)) == int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))):
            os.kill(os.getpid(), 9)      # under torchrun: only in attempt ``kill["attempt"]`` (default the first)
        loss = model.train_step(*batch(x, y, step, job["batch"], job["seed"]), lr=job["lr"])
        if loss is not None:
            losses.append((step, float(loss)))
        if (step + 1) % job.get("ckpt_every", 1) == 0 or step + 1 == job["steps"]:
            ckpt.save_shards(root, step + 1, plan, model.shard_state())
    return {"start": start, "losses": losses, "final": {k: v.cpu() for k, v in model.shard_state().items()}}


def job_interleaved(job: dict, rank: int, device) -> dict:
    """Interleaved timing of several plans (and the single-process step) in one group.

    ``job["plans"]`` may have fewer ranks than the group: rank ``r`` takes part in the plans with
    ``world_size > r`` and waits in the next barrier otherwise (a blocking socket wait). Every
    round times each configuration once, in an order rotated by one each round, each step starting
    after a barrier of the whole group, so that a change in the machine's load hits every
    configuration alike. With ``reference``, rank 0 times the single-process ``nn.Sequential`` step
    as the last configuration (the other ranks wait). Returns, per configuration, one row per timed
    round (this rank's start and end times and traffic; an empty list where the rank takes no part).
    """
    plans, x, y, params, models = plan_models(job, rank, device)
    seed, lr, dtype = job["seed"], job["lr"], DTYPES[job.get("dtype", "float32")]
    ref = opt = None
    if job.get("reference") and rank == 0:
        ref = reference_model([(w.to(device), b.to(device)) for w, b in params])
        opt = torch.optim.SGD(ref.parameters(), lr=lr)
    n_cfg = len(plans) + (1 if job.get("reference") else 0)
    rows: list[list[dict]] = [[] for _ in range(n_cfg)]
    for i in range(job["warmup"] + job["repeats"]):
        xb, yb = batch(x, y, i, job["batch"], seed)
        for j in [(i + o) % n_cfg for o in range(n_cfg)]:
            dist.barrier()
            row = None
            if j < len(plans) and models[j] is not None:
                row = timed_step(models[j], xb, yb, lr, device)
            elif j == len(plans) and ref is not None:
                xr, yr = xb.to(device, dtype), yb.to(device)
                t0 = time.perf_counter()
                opt.zero_grad()
                F.cross_entropy(ref(xr), yr).backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                row = {"t0": t0, "t1": time.perf_counter()}
            if row is not None and i >= job["warmup"]:
                rows[j].append({"round": i - job["warmup"], **row})
    dist.barrier()
    return {"rows": rows}


def job_multi(job: dict, rank: int, device) -> dict:
    """Several jobs in one group, one after the other (``job["jobs"]``, each updating ``job``)."""
    common = {k: v for k, v in job.items() if k not in ("kind", "jobs")}
    return {"parts": [JOBS[j["kind"]]({**common, **j}, rank, device) for j in job["jobs"]]}


def job_fail(job: dict, rank: int, device) -> dict:
    """Fault hook: after a barrier, rank ``job['rank']`` raises (``mode='raise'``) or stops
    responding (``mode='hang'``, sleeps); every other rank waits for a message from it."""
    dist.barrier()
    if rank == job["rank"]:
        if job.get("mode") == "hang":
            time.sleep(3600)
        raise RuntimeError("injected failure")
    buf = torch.zeros(1)
    dist.irecv(buf, src=job["rank"]).wait(timedelta(seconds=float(job["op_timeout_s"])))
    return {}


def job_listen(job: dict, rank: int, device) -> dict:
    """Who may connect: every TCP socket in LISTEN state of this rank and of its parent (the launcher,
    which hosts the store), read from ``/proc/net/tcp*`` once the whole group is connected."""
    from .launch import listening
    dist.barrier()
    out = listening([os.getpid(), os.getppid()])
    dist.barrier()
    return {"listening": out, "parent": os.getppid()}


def job_peers_equivalence(job: dict, rank: int, device) -> dict:
    """:func:`mpnn.deploy.peers.job_equivalence` (imported here: the PyTorch engines are slow to import)."""
    from . import peers
    return peers.job_equivalence(job, rank, device)


def job_peers_interleaved(job: dict, rank: int, device) -> dict:
    """:func:`mpnn.deploy.peers.job_interleaved`."""
    from . import peers
    return peers.job_interleaved(job, rank, device)


JOBS = {"equivalence": job_equivalence, "train": job_train, "interleaved": job_interleaved,
        "fail": job_fail, "multi": job_multi, "listen": job_listen,
        "peers_equivalence": job_peers_equivalence, "peers_interleaved": job_peers_interleaved}


# ---------------------------------------------------------------------- process entry

def _device(job: dict, local_rank: int) -> torch.device:
    if job.get("backend") == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def run_rank(job_path: str, rank: int, world_size: int, store=None) -> int:
    """Join the group, run the job, write the result or the error; always destroy the group."""
    job = torch.load(job_path, weights_only=False)
    outdir = Path(job_path).parent
    torch.set_num_threads(int(job.get("threads", 1)))
    timeout = timedelta(seconds=float(job.get("op_timeout_s", 60)))
    status = 0
    try:
        backend = job.get("backend", "gloo")
        kw = {"store": store} if store is not None else {"init_method": "env://"}
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout, **kw)
        device = _device(job, int(os.environ.get("LOCAL_RANK", rank)))
        result = JOBS[job["kind"]](job, rank, device)
        result["rank"], result["pid"] = rank, os.getpid()
        result["attempt"] = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        tmp = outdir / f".result-{rank}.pt"
        torch.save(result, tmp)
        os.replace(tmp, outdir / f"result-{rank}.pt")
    except BaseException as exc:  # noqa: BLE001 -- any failure must reach the launcher as text
        status = 1
        (outdir / f"error-{rank}.txt").write_text(
            f"rank {rank} stopped: {type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 -- a dead peer must not keep this rank alive
                pass
    return status


def _torchrun_store(job_path: str):
    """Under torchrun with ``MPNN_STORE=host:port`` (set by :func:`mpnn.deploy.launch.torchrun_nodes`):
    join the launcher's loopback-bound store as a client instead of letting rank 0 host one on every
    interface (``env://``). Keys live under this rendezvous round's ``MASTER_PORT`` (a fresh port
    that torchrun picks and shares each round), so a restarted group never reads a dead one's keys."""
    spec = os.environ.get("MPNN_STORE")
    if not spec:
        return None
    host, port = spec.rsplit(":", 1)
    job = torch.load(job_path, weights_only=False)
    base = dist.TCPStore(host, int(port), world_size=None, is_master=False,
                         timeout=timedelta(seconds=float(job.get("op_timeout_s", 60))))
    return dist.PrefixStore(f"mpnn/{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}", base)


def main(argv: list[str]) -> None:
    # A rank the launcher has to stop prints where it was stuck into its log.
    faulthandler.register(signal.SIGTERM, chain=True)
    if argv and argv[0] == "--torchrun":
        status = run_rank(argv[1], int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), _torchrun_store(argv[1]))
    else:
        job_path, rank, world_size, port = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
        host = argv[4] if len(argv) > 4 else "127.0.0.1"
        job = torch.load(job_path, weights_only=False)
        store = dist.TCPStore(host, port, world_size=None, is_master=False,
                              timeout=timedelta(seconds=float(job.get("op_timeout_s", 60))))
        status = run_rank(job_path, rank, world_size, store)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)   # skip interpreter teardown: nothing may keep a failed rank alive


if __name__ == "__main__":
    main(sys.argv[1:])
