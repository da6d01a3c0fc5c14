"""Faults: a rank killed mid-run and the restart from the shared checkpoint, under the book's launcher and under torchrun."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

from mpnn.deploy import checkpoint as ckpt
from mpnn.deploy.engine import assemble
from mpnn.deploy.launch import DeployError, launch, leftover, torchrun
from mpnn.deploy.plan import make_plan

from .equivalence import max_difference, reference


def fault_and_restart(sizes, world_size, *, strategy, seed, data, batch_size, lr, steps, kill_rank,
                      kill_step, shared_dir, timeout_s=180.0, grace_s=30.0, backend="gloo") -> dict:
    """Run ``steps`` SGD steps with a checkpoint after each; ``kill_rank`` dies (SIGKILL) before step
    ``kill_step``. Then a fresh group resumes from the shared checkpoint and finishes."""
    plan = make_plan(strategy, sizes, world_size)
    shared = Path(shared_dir)
    job = {"kind": "train", "plan": plan.to_dict(), "seed": seed, "data": data, "batch": batch_size,
           "lr": lr, "steps": steps, "ckpt_every": 1, "ckpt_dir": str(shared), "dtype": "float64",
           "backend": backend, "kill": {"rank": kill_rank, "step": kill_step}}
    t0 = time.perf_counter()
    try:
        launch(job, world_size, timeout_s=timeout_s, grace_s=grace_s)
        raise AssertionError("the run with a killed rank finished without an error")
    except DeployError as err:
        failure, outcomes = str(err), err.outcomes
    fail_wall = time.perf_counter() - t0
    resume_step = ckpt.latest_step(shared)
    res = launch({**job, "kill": None}, world_size, timeout_s=timeout_s)
    pids = [o.pid for o in outcomes] + [o.pid for o in res.outcomes]
    _, _, ref_final = reference(sizes, seed, data, batch_size, lr, steps)
    got = assemble(plan, [r["final"] for r in res.results])
    _, stored, last = ckpt.consolidate(shared)
    t_kill = outcomes[kill_rank].exit_s
    return {
        "leftover": leftover(pids), "error": failure, "fail_wall_s": fail_wall, "resume_step": resume_step, "last_step": last,
        "outcomes": pd.DataFrame([{"rank": o.rank, "pid": o.pid, "how it ended": o.describe().split(") ", 1)[1],
                                   "exit after start (s)": o.exit_s,
                                   "stopped after the kill (s)": o.exit_s - t_kill,
                                   "killed by launcher": o.killed_by_launcher} for o in outcomes]),
        "restart_start": sorted({r["start"] for r in res.results}),
        "max_diff_final": max_difference(got, ref_final), "max_diff_checkpoint": max_difference(stored, ref_final),
        "losses": res.results[plan.head]["losses"],
    }


def torchrun_equivalence(sizes, ranks, *, seed, data, batch_size, lr, k_steps, timeout_s=300.0,
                         backend="gloo") -> dict:
    """The count plan's equivalence job under ``torchrun`` (loopback, ``ranks`` processes): the
    command (temporary paths as ``$TMP``), the wall time and max ``|distributed - single process|``
    of the logits and of the parameters after ``k_steps`` steps."""
    plan = make_plan("count", sizes, ranks)
    job = {"kind": "equivalence", "plans": [plan.to_dict()], "seed": seed, "data": data, "batch": batch_size,
           "lr": lr, "k_steps": k_steps, "dtype": "float64", "backend": backend}
    results, cmd, wall = torchrun(job, ranks, timeout_s=timeout_s)
    ref_logits, _, ref_final = reference(sizes, seed, data, batch_size, lr, k_steps)
    per = [r["plans"][0] for r in results]
    diff = max(float((per[plan.head]["logits"] - ref_logits).abs().max()),
               max_difference(assemble(plan, [p["final"] for p in per]), ref_final))
    return {"command": " ".join(cmd[1:]).replace(tempfile.gettempdir(), "$TMP"), "wall_s": wall, "max_diff": diff}


def elastic_restart(sizes, *, nnodes, nproc_per_node, seed, data, batch_size, lr, steps, kill_rank, kill_step,
                    shared_dir, timeout_s=180.0) -> dict:
    """``nnodes`` torchrun launchers on 127.0.0.1 (one c10d rendezvous, ``nproc_per_node`` ranks each,
    ``--max-restarts 1``) train the count plan with a checkpoint after every step; ``kill_rank`` dies
    by SIGKILL before step ``kill_step`` of the first attempt; torchrun restarts every rank, which
    resumes from the last distributed checkpoint. Returns the attempts and resume steps of the
    final group, max ``|final - uninterrupted single process|``, the addresses the run listened on,
    the processes left behind and the wall time."""
    from mpnn.deploy.launch import torchrun_nodes
    world = nnodes * nproc_per_node
    plan = make_plan("count", sizes, world)
    job = {"kind": "train", "plan": plan.to_dict(), "seed": seed, "data": data, "batch": batch_size, "lr": lr,
           "steps": steps, "ckpt_every": 1, "ckpt_dir": str(shared_dir), "dtype": "float64",
           "kill": {"rank": kill_rank, "step": kill_step, "attempt": 0}, "op_timeout_s": 30}
    out = torchrun_nodes(job, nnodes, nproc_per_node, max_restarts=1, timeout_s=timeout_s)
    _, _, ref_final = reference(sizes, seed, data, batch_size, lr, steps)
    got = assemble(plan, [r["final"] for r in out["results"]])
    _, stored, last = ckpt.consolidate(shared_dir)
    return {"attempts": sorted({r["attempt"] for r in out["results"]}),
            "resumed_at": sorted({r["start"] for r in out["results"]}), "last_step": last,
            "max_diff": max(max_difference(got, ref_final), max_difference(stored, ref_final)),
            "listening": sorted({a for a, _ in out["listening"]}), "n_listening": len(out["listening"]),
            "leftover": out["leftover"], "wall_s": out["wall_s"],
            "command": " ".join(out["commands"][0][1:]).replace(tempfile.gettempdir(), "$TMP")}


def who_listens(world_size: int, timeout_s: float = 60.0) -> dict:
    """The single-host launcher's group, once connected: every listening TCP socket of the launcher
    (which hosts the store) and of each rank, from ``/proc/net/tcp*``."""
    import os
    res = launch({"kind": "listen"}, world_size, timeout_s=timeout_s)
    socks = {(pid, addr, port) for r in res.results for pid, addr, port in r["listening"]}
    return {"sockets": sorted(socks), "addresses": sorted({a for _, a, _ in socks}),
            "launcher_listens": any(pid == os.getpid() for pid, _, _ in socks),
            "leftover": leftover([o.pid for o in res.outcomes])}
