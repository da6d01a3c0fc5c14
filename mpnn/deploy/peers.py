"""PyTorch's own engines for the two splits, run on the same network and the same plans.

What a user who outgrows one machine would reach for instead of :mod:`mpnn.deploy.engine`:

* **Tensor parallelism** (``torch.distributed.tensor``, ``parallelize_module``) for the neuron-wise
  split. A layer whose output neurons are split over ranks is ``ColwiseParallel``: rank ``r`` holds
  the rows ``W_l[S_l(r)]`` as the local shard of a ``DTensor`` with placement ``Shard(0)``. Two plans:

  - ``colwise``: every layer ``ColwiseParallel(output_layouts=Replicate())``: the book's ``count``
    ownership exactly (each rank owns a contiguous block of every layer's neurons); forward, one
    all-gather of the activations per layer; backward, one all-reduce of the input gradient per layer
    (the first layer's input needs none);
  - ``megatron``: ``ColwiseParallel`` and ``RowwiseParallel`` alternate (Megatron-LM's pairing): the
    odd layers' neurons are split, the even layers' *inputs* are split (rank ``r`` holds
    ``W_{l+1}[:, S_l(r)]``) and the pair ends in one all-reduce of partial sums; half the collectives.

  ``Shard(0)`` cuts a dimension as ``torch.chunk`` does: contiguous blocks of ``ceil(n / P)``
  (the last shorter, or absent). :func:`tp_plan` is the book's plan with exactly these blocks.
  What it cannot express: an uneven share (the book's ``percentage`` plan, rank 0 twice the others)
  and scattered neuron IDs (the ``ids`` plan). A dense MLP does not care which hidden unit is
  called what, so scattered IDs with equal counts can be relabelled into contiguous blocks once
  (permute ``W_l``'s rows and ``W_{l+1}``'s columns, and the logits back at the output); the
  metadata of the document (global IDs per server) then lives outside PyTorch, in that
  permutation. An uneven share has no placement in ``DTensor`` at all.

* **Pipeline parallelism** (``torch.distributed.pipelining``) for the layer split: rank ``r`` is
  stage ``r`` and holds the same layers as the book's ``layer`` plan (:func:`layer_ranks`); a batch
  runs as ``M`` micro-batches (``ScheduleGPipe``: all forwards, then all backwards), so stages work
  on different micro-batches at once. The last stage evaluates the loss (the book's engine sends
  the logits back to the head, rank 0: one boundary more).

Jobs (run by :mod:`mpnn.deploy.worker`): :func:`job_equivalence` (float64: logits, gradients and
parameters after ``k`` SGD steps of every peer) and :func:`job_interleaved` (the book's engine,
both tensor-parallel plans, the pipeline and one process, timed round by round in a rotated order,
with bytes written to sockets per step from ``/proc/self/io``).
"""
from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .engine import ShardedMLP, init_params, reference_model
from .plan import Plan, by_count, layer_wise

__all__ = ["chunk_counts", "tp_plan", "layer_ranks", "TP_STYLES", "TensorParallelMLP", "PipelineMLP",
           "job_equivalence", "job_interleaved", "pp_messages"]

TP_STYLES = ("colwise", "megatron")


def chunk_counts(n: int, P: int) -> list[int]:
    """Sizes of ``Shard(0)``'s blocks of ``n`` rows on ``P`` ranks (``torch.chunk``; zeros at the end)."""
    c = math.ceil(n / P)
    return [max(0, min(c, n - r * c)) for r in range(P)]


def tp_plan(sizes, P: int) -> Plan:
    """The book's ``count`` plan with ``DTensor``'s block sizes (the same ownership as ``colwise``)."""
    plan = by_count(sizes, [chunk_counts(n, P) for n in sizes[1:]])
    plan.strategy = "count"
    return plan


def layer_ranks(sizes, P: int) -> list[int]:
    """Stage (rank) of every layer: the book's ``layer`` plan."""
    return [int(o[0]) for o in layer_wise(sizes, P).owner]


def pp_messages(P: int, microbatches: int) -> int:
    """Point-to-point sends of the busiest stage per step: a middle stage sends an activation and
    a gradient per micro-batch, an end stage one of them."""
    return microbatches * (2 if P > 2 else 1)


def _mesh(group):
    from torch.distributed.device_mesh import DeviceMesh
    return DeviceMesh.from_group(group, "cpu")


class TensorParallelMLP:
    """The network as ``nn.Sequential`` parallelised by ``parallelize_module`` over ``group``."""

    def __init__(self, params, group, style: str, lr: float):
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
        if style not in TP_STYLES:
            raise ValueError(f"unknown tensor-parallel style {style!r}; choose one of {TP_STYLES}")
        self.net = reference_model(params)
        idx = [i for i, m in enumerate(self.net) if isinstance(m, torch.nn.Linear)]
        if style == "colwise":
            tp = {str(i): ColwiseParallel(output_layouts=Replicate()) for i in idx}
        else:
            # the Colwise output stays a DTensor (use_local_output=False): with uneven blocks
            # (10 neurons on 3 ranks: 4, 4, 2) a local tensor would be re-wrapped as even shards
            tp = {str(i): (ColwiseParallel(use_local_output=False) if k % 2 == 0 else RowwiseParallel())
                  for k, i in enumerate(idx)}
            if len(idx) % 2:
                tp[str(idx[-1])] = ColwiseParallel(output_layouts=Replicate())
        parallelize_module(self.net, _mesh(group), tp)
        self.linears = [self.net[i] for i in idx]
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)

    def loss_and_backward(self, x, y):
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        return logits.detach(), loss.detach()

    def train_step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        _, loss = self.loss_and_backward(x, y)
        self.opt.step()
        return loss

    def full(self, grads: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Full ``[(W_l, b_l)]`` (or their gradients) on every rank (a collective)."""
        def f(t):
            t = t.grad if grads else t
            return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()
        return [(f(m.weight), f(m.bias)) for m in self.linears]


class PipelineMLP:
    """Rank ``rank``'s stage of the layer split, driven by a ``ScheduleGPipe`` of ``microbatches``."""

    def __init__(self, params, sizes, P: int, rank: int, group, microbatches: int, lr: float):
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
        owner = layer_ranks(sizes, P)
        self.layers = [l for l, r in enumerate(owner, start=1) if r == rank]
        mods = []
        for l in self.layers:
            w, b = params[l - 1]
            lin = torch.nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            mods += [lin] + ([torch.nn.ReLU()] if l < len(owner) else [])
        self.mod = torch.nn.Sequential(*mods)
        self.linears = [m for m in mods if isinstance(m, torch.nn.Linear)]
        self.first, self.last = rank == 0, rank == P - 1
        stage = PipelineStage(self.mod, rank, P, torch.device("cpu"), group=group)
        self.schedule = ScheduleGPipe(stage, n_microbatches=microbatches, loss_fn=F.cross_entropy)
        self.opt = torch.optim.SGD(self.mod.parameters(), lr=lr)

    def loss_and_backward(self, x, y):
        """One pipelined forward and backward of the batch (gradients scaled by 1/M: the batch mean)."""
        if self.first:
            return self.schedule.step(x), None
        if self.last:
            losses = []
            out = self.schedule.step(target=y, losses=losses)
            return out.detach(), torch.stack(losses).mean().detach()
        return self.schedule.step(), None

    def train_step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        self.loss_and_backward(x, y)
        self.opt.step()

    def local(self, grads: bool = False) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (W_l, b_l)}`` (or gradients) of this stage's layers."""
        g = (lambda t: t.grad) if grads else (lambda t: t)
        return {l: (g(m.weight).detach().clone(), g(m.bias).detach().clone()) for l, m in zip(self.layers, self.linears)}


def _groups(world_sizes, world: int) -> dict:
    """One process group per P (ranks 0..P-1); every rank must create every group."""
    return {P: (dist.group.WORLD if P == world else dist.new_group(list(range(P)))) for P in world_sizes}


def _batch(job, step, dtype):
    from .rank_work import batch, make_data
    x, y = make_data(job["data"], job["sizes"][0], job["sizes"][-1])
    xb, yb = batch(x, y, step, job["batch"], job["seed"])
    return xb.to(dtype), yb


def job_equivalence(job: dict, rank: int, device) -> dict:
    """Float64, per P in ``job["world_sizes"]`` and per peer (``tp-colwise``, ``tp-megatron``, ``pp``, ``pp-m1``):
    logits and gradients of batch 0 and the parameters after ``k_steps`` SGD steps."""
    sizes, dtype = job["sizes"], torch.float64
    groups = _groups(job["world_sizes"], dist.get_world_size())
    out = {}
    for P in job["world_sizes"]:
        if rank >= P:
            continue
        for name in [f"tp-{s}" for s in TP_STYLES] + ["pp", "pp-m1"]:
            params = init_params(sizes, job["seed"], dtype)
            if name.startswith("pp"):
                M = 1 if name == "pp-m1" else job["microbatches"]
                m = PipelineMLP(params, sizes, P, rank, groups[P], M, job["lr"])
            else:
                m = TensorParallelMLP(params, groups[P], name[3:], job["lr"])
            logits, _ = m.loss_and_backward(*_batch(job, 0, dtype))
            pp = name.startswith("pp")
            grads = m.local(grads=True) if pp else dict(enumerate(m.full(grads=True), 1))
            for step in range(job["k_steps"]):
                m.train_step(*_batch(job, step, dtype))
            final = m.local() if pp else dict(enumerate(m.full(), 1))
            keep = pp or rank == 0
            out[(name, P)] = {"logits": logits if (m.last if pp else rank == 0) else None,
                              "grads": grads if keep else {}, "final": final if keep else {}}
    return {"peers": out}


def _io_written() -> int | None:
    from .rank_work import io_written as f
    return f()


def _collectives(model: TensorParallelMLP, x, y) -> dict:
    """Collective calls of one training step, by kind (``CommDebugMode``; not timed)."""
    from torch.distributed.tensor.debug import CommDebugMode
    with CommDebugMode() as mode:
        model.train_step(x, y)
    return {str(k).split(".")[-1]: int(v) for k, v in mode.get_comm_counts().items()}


def job_interleaved(job: dict, rank: int, device) -> dict:
    """Step times and socket bytes of every configuration, interleaved round by round.

    Configurations, per P: the book's engine on :func:`tp_plan` (``engine-count``), the two
    tensor-parallel plans (``tp-colwise``, ``tp-megatron``), the book's engine on the ``layer``
    plan (``engine-layer``) and the pipeline with ``microbatches`` micro-batches (``pp``) and with
    one (``pp-m1``, which isolates the framework from the micro-batching); then one process
    (``single``, rank 0).
    Every round runs each once, in an order rotated by one each round, each after a barrier of the
    whole group. Returns, per configuration, this rank's rows ``{round, t0, t1, wire_bytes}``, the
    engine's message counts and the tensor-parallel collective counts.
    """
    from .rank_work import make_data, batch
    sizes, dtype, lr = job["sizes"], torch.float32, job["lr"]
    world = dist.get_world_size()
    groups = _groups(job["world_sizes"], world)
    params = init_params(sizes, job["seed"], dtype)
    x, y = make_data(job["data"], sizes[0], sizes[-1])
    cfgs, models = [], []
    for P in job["world_sizes"]:
        for name in ("engine-count", "tp-colwise", "tp-megatron", "engine-layer", "pp", "pp-m1"):
            cfgs.append((name, P))
            if rank >= P:
                models.append(None)
            elif name.startswith("engine"):
                plan = tp_plan(sizes, P) if name == "engine-count" else layer_wise(sizes, P)
                models.append(ShardedMLP(plan, rank, params=params, dtype=dtype, timeout_s=job["op_timeout_s"]))
            elif name.startswith("pp"):
                M = 1 if name == "pp-m1" else job["microbatches"]
                models.append(PipelineMLP(params, sizes, P, rank, groups[P], M, lr))
            else:
                models.append(TensorParallelMLP(params, groups[P], name[3:], lr))
    cfgs.append(("single", 1))
    ref = reference_model(params) if rank == 0 else None
    opt = torch.optim.SGD(ref.parameters(), lr=lr) if ref is not None else None
    models.append(ref)
    rows = {c: [] for c in cfgs}
    counts = {}
    xb0, yb0 = batch(x, y, 0, job["batch"], job["seed"])
    for c, m in zip(cfgs, models):       # not timed: what each step sends, by the engine's own count
        dist.barrier()
        if isinstance(m, TensorParallelMLP):
            counts[c] = _collectives(m, xb0, yb0)
        elif isinstance(m, ShardedMLP):
            m.stats.reset()
            m.train_step(xb0, yb0, lr)
            s = m.stats.as_dict()
            counts[c] = {"messages": s["messages"]["forward"] + s["messages"]["backward"],
                         "bytes": s["bytes_sent"]["forward"] + s["bytes_sent"]["backward"]}
        elif isinstance(m, PipelineMLP):
            m.train_step(xb0, yb0)
    n = len(cfgs)
    for i in range(job["warmup"] + job["repeats"]):
        xb, yb = batch(x, y, i, job["batch"], job["seed"])
        for j in [(i + o) % n for o in range(n)]:
            m = models[j]
            dist.barrier()
            if m is None:
                continue
            io0, t0 = _io_written(), time.perf_counter()
            if isinstance(m, ShardedMLP):
                m.train_step(xb, yb, lr)
            elif cfgs[j][0] == "single":
                opt.zero_grad()
                F.cross_entropy(m(xb), yb).backward()
                opt.step()
            else:
                m.train_step(xb, yb)
            t1, io1 = time.perf_counter(), _io_written()
            if i >= job["warmup"]:
                rows[cfgs[j]].append({"round": i - job["warmup"], "t0": t0, "t1": t1,
                                      "wire_bytes": None if io0 is None else io1 - io0})
    dist.barrier()
    return {"rows": rows, "counts": counts}
