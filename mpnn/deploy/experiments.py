"""The chapter's experiments as functions returning tidy tables (the notebook only configures/plots).

* :func:`distributed_runs` -- per number of ranks, one group that checks distributed against
  single-process logits, gradients and k-step parameters, then times every strategy and the
  single-process step under the same thread budget;
* :func:`fault_and_restart` -- kill a rank mid-run, then resume from the shared checkpoint.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .cost import critical_fraction, volume
from .engine import init_params, reference_model
from .launch import DeployError, launch, leftover
from .plan import Plan, make_plan
from .worker import batch, make_data

__all__ = ["assemble", "reference", "distributed_runs", "fault_and_restart"]


def assemble(plan: Plan, per_rank: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Full ``[(W_l, b_l)]`` from each rank's ``{"L{l}.weight", "L{l}.bias"}`` rows."""
    out = []
    for l in range(1, plan.n_layers + 1):
        some = next(d[f"L{l}.weight"] for d in per_rank if f"L{l}.weight" in d)
        w = torch.empty(plan.sizes[l], plan.sizes[l - 1], dtype=some.dtype)
        b = torch.empty(plan.sizes[l], dtype=some.dtype)
        for r, d in enumerate(per_rank):
            if f"L{l}.weight" in d:
                ids = plan.local(l, r)
                w[ids], b[ids] = d[f"L{l}.weight"], d[f"L{l}.bias"]
        out.append((w, b))
    return out


def reference(sizes, seed, data, batch_size, lr, steps, dtype=torch.float64):
    """Single process (``nn.Sequential`` + ``torch.optim.SGD``): logits and grads of step 0 and the
    parameters after ``steps`` steps, on the same batches as the workers."""
    x, y = make_data(data, sizes[0], sizes[-1])
    net = reference_model(init_params(sizes, seed, dtype))
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    xb, yb = batch(x, y, 0, batch_size, seed)
    logits = net(xb.to(dtype))
    F.cross_entropy(logits, yb).backward()
    grads = [(m.weight.grad.clone(), m.bias.grad.clone()) for m in lin]
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for step in range(steps):
        opt.zero_grad()
        xb, yb = batch(x, y, step, batch_size, seed)
        F.cross_entropy(net(xb.to(dtype)), yb).backward()
        opt.step()
    return logits.detach(), grads, [(m.weight.detach(), m.bias.detach()) for m in lin]


def _maxdiff(a, b) -> float:
    return max(float((x - y).abs().max()) for (x, xb), (y, yb) in zip(a, b) for x, y in ((x, y), (xb, yb)))


def _equivalence_rows(plans, results, P, reference_out, batch_size, k_steps) -> list[dict]:
    logits, grads, final = reference_out
    rows = []
    for i, plan in enumerate(plans):
        per = [r["plans"][i] for r in results]
        rows.append({"strategy": plan.strategy, "ranks": P,
                     "logits": float((per[plan.head]["logits"] - logits).abs().max()),
                     "gradients": _maxdiff(assemble(plan, [p["grads"] for p in per]), grads),
                     f"params after {k_steps} steps": _maxdiff(assemble(plan, [p["final"] for p in per]), final),
                     "bytes match model": [p["stats"]["bytes_sent"]["forward"] for p in per]
                     == volume(plan, batch_size, 8)["fwd_bytes"]})
    return rows


def _summarise_launch(plan: Plan, per_rank: list[dict], batch_size: int) -> list[dict]:
    """Per timed step: latency (max end - min start over ranks), forward latency, bytes, messages."""
    rows = []
    n = len(per_rank[0]["rows"])
    vol = volume(plan, batch_size, 4)
    for i in range(n):
        steps = [pr["rows"][i] for pr in per_rank]
        t0 = min(s["t0"] for s in steps)
        head = steps[plan.head]
        wire = [s["wire_bytes"] for s in steps]
        rows.append({
            "step_s": max(s["t1"] for s in steps) - t0,
            "forward_s": head["t_fwd"] - t0,
            "comm_s": max(s["comm_s"]["forward"] + s["comm_s"]["backward"] for s in steps),
            "bytes": sum(s["bytes_sent"]["forward"] + s["bytes_sent"]["backward"] for s in steps),
            "bytes_max_rank": max(s["bytes_sent"]["forward"] + s["bytes_sent"]["backward"] for s in steps),
            "messages_max_rank": max(s["messages"]["forward"] + s["messages"]["backward"] for s in steps),
            "model_bytes": sum(vol["fwd_bytes"]) + sum(vol["bwd_bytes"]),
            "wire_bytes": None if None in wire else sum(wire),
        })
    return rows


def distributed_runs(sizes, world_sizes, strategies, seeds, *, data, batch_size, lr, k_steps, warmup,
                     repeats, timeout_s=300.0, backend="gloo", progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One group per number of ranks ``P`` (every strategy inside it), running

    1. the equivalence job (float64, seed ``seeds[0]``): max |distributed - single process| of the
       logits, the gradients and the parameters after ``k_steps`` SGD steps, per strategy;
    2. the timing job (float32) for every seed: medians of the step time and traffic per strategy,
       and the single-process ``nn.Sequential`` step on rank 0 while the others wait
       (``strategy = "single process"``); ``ratio_to_single`` compares within the same seed and group.
    """
    ref = reference(sizes, seeds[0], data, batch_size, lr, k_steps)
    eq_rows, tm_rows = [], []
    for P in world_sizes:
        plans = [make_plan(s, sizes, P) for s in strategies if not (s == "layer" and P > len(sizes) - 1)]
        job = {"kind": "multi", "plans": [p.to_dict() for p in plans], "data": data, "batch": batch_size,
               "lr": lr, "backend": backend, "jobs": [
                   {"kind": "equivalence", "seed": seeds[0], "k_steps": k_steps, "dtype": "float64"},
                   {"kind": "bench", "seeds": list(seeds), "warmup": warmup, "repeats": repeats,
                    "dtype": "float32", "reference": True}]}
        res = launch(job, P, timeout_s=timeout_s)
        eq_part = [r["parts"][0] for r in res.results]
        bench = [r["parts"][1] for r in res.results]
        eq_rows += _equivalence_rows(plans, eq_part, P, ref, batch_size, k_steps)
        for seed in seeds:
            st = pd.DataFrame([{"step_s": r["t1"] - r["t0"], "forward_s": r["t_fwd"] - r["t0"]}
                               for r in bench[0]["reference"][seed]]).median()
            single = float(st["step_s"])
            tm_rows.append({"strategy": "single process", "ranks": P, "seed": seed, **st.to_dict(),
                            "bytes": 0, "model_bytes": 0, "comm_s": 0.0, "f_crit": 1.0, "t_single": single})
            for j, entry in enumerate(bench[0]["plans"]):
                if entry["seed"] != seed:
                    continue
                plan = plans[j % len(plans)]
                per = pd.DataFrame(_summarise_launch(plan, [b["plans"][j] for b in bench], batch_size))
                tm_rows.append({"strategy": plan.strategy, "ranks": P, "seed": seed,
                                **per.median(numeric_only=True).to_dict(), "f_crit": critical_fraction(plan),
                                "t_single": single})
        if progress is not None:
            progress.update(1)
    tm = pd.DataFrame(tm_rows)
    tm["ratio_to_single"] = tm["step_s"] / tm["t_single"]
    return pd.DataFrame(eq_rows), tm


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
        "max_diff_final": _maxdiff(got, ref_final), "max_diff_checkpoint": _maxdiff(stored, ref_final),
        "losses": res.results[plan.head]["losses"],
    }
