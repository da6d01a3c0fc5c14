"""Metadata and coordination as the number of servers grows (the multi-part deployment document, next check 3).

What grows with the number of servers ``P`` in the multi-part engine:

* **the plan and its metadata** (:func:`metadata_scaling`, no processes): the plan is one owner
  vector per layer, stored as run-length ranges; rank ``r``'s metadata (:meth:`Plan.metadata`)
  lists its local ranges, the remote ranges it reads and their owners, and its receivers. For an
  even neuron-wise split every rank reads every other rank's slice of every layer it consumes, so
  one rank's metadata has ``Theta(L P)`` entries and all servers together ``Theta(L P^2)``;
  :func:`metadata_entries_naive` counts them from the owner vectors alone (the tests' reference);
* **per-step bookkeeping** (:func:`lookup_seconds`): the lookups an engine step does (local
  neurons, producers, consumers of every layer), timed in one process;
* **per-step coordination** (:func:`job_coordination`, in processes): one barrier and one scalar
  ``all_reduce`` (the step boundary and the loss) of a group of ``P`` ranks, and the one-way time
  of a small message (half a ping-pong), measured for ``P = 2..P_max`` in one group;
* **a calibrated simulation** (:func:`simulate`) to hundreds of servers, with its assumptions in
  :class:`SimAssumptions`: a dissemination barrier (``ceil(log2 P)`` rounds, each as slow as the
  slowest of ``P`` one-way messages), the all-reduce as two such passes, and the engine's exchanges
  (each rank sends its slice to ``P - 1`` consumers one after the other), with one-way message times
  drawn from the measured distribution (bootstrap), one core per server.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np

from .plan import Plan, make_plan

__all__ = ["metadata_entries_naive", "metadata_scaling", "lookup_seconds", "job_coordination", "JOBS",
           "SimAssumptions", "simulate", "fit_log_linear"]


def metadata_entries_naive(owner: list[list[int]], head: int = 0) -> list[int]:
    """Metadata entries per rank from the owner lists alone (a plain loop; the tests' reference):
    for every layer, one entry per contiguous local range, one per contiguous remote range read
    (layers whose next layer the rank owns part of, or the output on the head), one per receiver."""
    P = 1 + max(max(o) for o in owner)
    L = len(owner)
    out = [0] * P
    owners = [set(o) for o in owner]

    def runs(o, r):
        n, prev = 0, False
        for v in o:
            cur = v == r
            n += cur and not prev
            prev = cur
        return n
    for r in range(P):
        for l in range(L):
            consumers = {head} if l == L - 1 else owners[l + 1]
            if r in owners[l]:
                out[r] += runs(owner[l], r) + len(consumers - {r})
            if r in consumers:
                out[r] += sum(runs(owner[l], p) for p in owners[l] if p != r)
    return out


def _entries(meta: dict) -> int:
    n = sum(len(v) for v in meta["local"].values()) + sum(len(v) for v in meta["send_to"].values())
    return n + sum(len(rs) for per in meta["remote"].values() for rs in per.values())


def metadata_scaling(sizes, Ps, strategies=("count", "ids"), repeats: int = 3) -> list[dict]:
    """Per (strategy, P): seconds to build the plan and every rank's metadata (best of ``repeats``),
    the plan's JSON bytes, metadata entries and JSON bytes per rank (max) and over all ranks."""
    rows = []
    for s in strategies:
        for P in Ps:
            best_plan = best_meta = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                plan = make_plan(s, sizes, int(P))
                t1 = time.perf_counter()
                metas = [plan.metadata(r) for r in range(plan.world_size)]
                t2 = time.perf_counter()
                best_plan, best_meta = min(best_plan, t1 - t0), min(best_meta, t2 - t1)
            mbytes = [len(json.dumps(m)) for m in metas]
            entries = [_entries(m) for m in metas]
            rows.append({"strategy": s, "servers": int(P), "plan_s": best_plan, "metadata_s": best_meta,
                         "plan_bytes": len(plan.to_json()), "entries_max": max(entries),
                         "entries_total": sum(entries), "meta_bytes_max": max(mbytes),
                         "meta_bytes_total": sum(mbytes)})
    return rows


def lookup_seconds(plan: Plan, repeats: int = 20) -> float:
    """Seconds per step of the engine's metadata lookups on the busiest rank (median of ``repeats``):
    for every layer, forward and backward, ``local`` of every producer, ``producers`` and ``consumers``."""
    times = []
    for _ in range(repeats):
        worst = 0.0
        for r in range(plan.world_size):
            t0 = time.perf_counter()
            for _phase in range(2):
                for l in range(1, plan.n_layers + 1):
                    plan.local(l, r)
                    for p in plan.producers(l):
                        plan.local(l, p)
                    plan.consumers(l)
            worst = max(worst, time.perf_counter() - t0)
        times.append(worst)
    return float(np.median(times))


def job_coordination(job: dict, rank: int, device) -> dict:
    """In a group of ``W`` ranks: per round and ``P`` in ``job["Ps"]`` (rotated order), ranks
    ``0..P-1`` time one barrier and one scalar ``all_reduce`` of their own group; and ranks 0 and 1
    time ``job["pings"]`` ping-pongs of a 4-byte message. Rows of this rank's times."""
    import torch
    import torch.distributed as dist
    Ps = list(job["Ps"])
    groups = {P: dist.new_group(list(range(P))) for P in Ps}
    one = torch.ones(1)
    rows = []
    for i in range(job["warmup"] + job["repeats"]):
        for j in [(i + o) % len(Ps) for o in range(len(Ps))]:
            P = Ps[j]
            dist.barrier()
            if rank < P:
                t0 = time.perf_counter()
                dist.barrier(group=groups[P])
                t1 = time.perf_counter()
                dist.all_reduce(one, group=groups[P])
                t2 = time.perf_counter()
                if i >= job["warmup"]:
                    rows.append({"round": i - job["warmup"], "P": P, "barrier_s": t1 - t0, "allreduce_s": t2 - t1})
    pings = []
    dist.barrier()
    buf = torch.zeros(1)
    for _ in range(job["pings"]):
        if rank == 0:
            t0 = time.perf_counter()
            dist.send(buf, 1)
            dist.recv(buf, 1)
            pings.append((time.perf_counter() - t0) / 2)
        elif rank == 1:
            dist.recv(buf, 0)
            dist.send(buf, 0)
    dist.barrier()
    return {"rows": rows, "one_way_s": pings}


JOBS = {"coordination": job_coordination}


@dataclass
class SimAssumptions:
    """What the simulation assumes (stated in the chapter)."""

    layers: int = 4                 # exchanges per pass: one per layer
    payload_bytes: float = 0.0      # bytes of one rank's slice of one layer (0: latency only)
    beta_Bps: float = 125e6         # link bandwidth per server (1 Gb/s)
    compute_s: float = 0.0          # compute of a step on one server (divided by P)
    draws: int = 64                 # Monte Carlo steps per P


def simulate(Ps, one_way_s, assumptions: SimAssumptions = SimAssumptions(), seed: int = 0) -> list[dict]:
    """Monte Carlo per-step times for ``P`` servers (see module doc): one-way message times drawn
    from ``one_way_s`` (bootstrap). Returns per ``P`` the mean barrier, all-reduce (coordination)
    and exchange seconds and the coordination share of the step."""
    rng = np.random.default_rng(seed)
    samples = np.asarray(one_way_s, dtype=float)
    a = assumptions
    rows = []
    for P in Ps:
        P = int(P)
        rounds = max(1, math.ceil(math.log2(P)))

        def slowest(n_rounds, P=P):    # each round lasts as long as its slowest message
            return rng.choice(samples, size=(a.draws, n_rounds, P)).max(axis=2).sum(axis=1)
        barrier = slowest(rounds)
        allreduce = slowest(2 * rounds)
        # each rank sends P-1 messages one after the other; an exchange waits for the slowest rank
        exchange = np.zeros(a.draws)
        for _ in range(2 * a.layers):       # one exchange at a time keeps memory at draws * P^2
            per_msg = rng.choice(samples, size=(a.draws, P, P - 1)) + a.payload_bytes / P / a.beta_Bps
            exchange += per_msg.sum(axis=2).max(axis=1)
        step = a.compute_s / P + exchange + barrier + allreduce
        rows.append({"servers": P, "barrier_s": float(barrier.mean()), "allreduce_s": float(allreduce.mean()),
                     "coordination_s": float((barrier + allreduce).mean()), "exchange_s": float(exchange.mean()),
                     "step_s": float(step.mean()),
                     "coordination_share": float(((barrier + allreduce) / step).mean())})
    return rows


def fit_log_linear(P, t) -> tuple[float, float]:
    """Least-squares ``t = a + b ceil(log2 P)``: returns ``(a, b)``."""
    x = np.ceil(np.log2(np.asarray(P, dtype=float)))
    A = np.column_stack([np.ones_like(x), x])
    (a, b), *_ = np.linalg.lstsq(A, np.asarray(t, dtype=float), rcond=None)
    return float(a), float(b)
