"""The chapter's experiments as functions returning tidy tables (the notebook only configures/plots).

* :func:`equivalence_and_traffic` -- one group that checks distributed against single-process
  logits, gradients and k-step parameters for every (strategy, P), and counts the bytes sent;
* :func:`step_times` -- one group that times every (strategy, P) and the single-process step,
  interleaved round by round; the timing claims :func:`fewer_messages_claim`,
  :func:`overhead_claim` and :func:`latency_model_claim` are decided on it in one run;
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

__all__ = ["assemble", "reference", "equivalence_and_traffic", "step_times", "fewer_messages_claim",
           "overhead_claim", "latency_model_claim", "decide_fewer_messages", "decide_overhead",
           "decide_latency_model", "fault_and_restart"]


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


def _plans(sizes, world_sizes, strategies) -> list[Plan]:
    """Every (P, strategy) plan; a layer-wise plan needs a layer per rank."""
    return [make_plan(s, sizes, P) for P in world_sizes for s in strategies
            if not (s == "layer" and P > len(sizes) - 1)]


def equivalence_and_traffic(sizes, world_sizes, strategies, seed, *, data, batch_size, lr, k_steps,
                            timeout_s=300.0, backend="gloo") -> tuple[pd.DataFrame, pd.DataFrame]:
    """One group of ``max(world_sizes)`` ranks (a plan on ``P`` ranks uses ranks ``0..P-1``) runs

    1. the equivalence job (float64): max |distributed - single process| of the logits, the
       gradients and the parameters after ``k_steps`` SGD steps, per (strategy, P);
    2. one float32 training step per plan: bytes and messages the engine sent (total, busiest rank),
       the volume model's bytes, and the socket bytes (``/proc/self/io``), per (strategy, P).

    Nothing here is timed (see :func:`step_times`).
    """
    plans = _plans(sizes, world_sizes, strategies)
    world = max(world_sizes)
    ref = reference(sizes, seed, data, batch_size, lr, k_steps)
    job = {"kind": "multi", "plans": [p.to_dict() for p in plans], "data": data, "batch": batch_size,
           "lr": lr, "backend": backend, "jobs": [
               {"kind": "equivalence", "seed": seed, "k_steps": k_steps, "dtype": "float64"},
               {"kind": "interleaved", "seed": seed, "warmup": 0, "repeats": 1, "dtype": "float32"}]}
    res = launch(job, world, timeout_s=timeout_s)
    eq_rows, traffic = [], []
    for i, plan in enumerate(plans):
        P = plan.world_size
        eq_part = [{"plans": [r["parts"][0]["plans"][i]]} for r in res.results[:P]]
        eq_rows += _equivalence_rows([plan], eq_part, P, ref, batch_size, k_steps)
        steps = [r["parts"][1]["rows"][i] for r in res.results[:P]]
        row = _summarise_launch(plan, [{"rows": s} for s in steps], batch_size)[0]
        traffic.append({"strategy": plan.strategy, "ranks": P, "f_crit": critical_fraction(plan),
                        **{k: v for k, v in row.items() if not k.endswith("_s")}})
    return pd.DataFrame(eq_rows), pd.DataFrame(traffic)


def step_times(sizes, world_sizes, strategies, *, seed=0, data, batch_size, lr, warmup, repeats,
               reference=True, timeout_s=300.0, backend="gloo") -> pd.DataFrame:
    """Step times of every (strategy, P) plan, and of one process, measured interleaved in one group.

    One group of ``max(world_sizes)`` ranks (one thread each) times, in each of ``repeats`` rounds
    (after ``warmup`` rounds), one training step of every configuration, in an order rotated each
    round (:func:`mpnn.deploy.worker.job_interleaved`); a step runs from a barrier to the end of the
    last rank of its plan. With ``reference`` the single-process ``nn.Sequential`` step is one of the
    configurations (``strategy = "single process"``, ``ranks = 1``) and every row gets
    ``single_s`` (the single-process step of the same round) and ``ratio_to_single``.
    Returns one row per configuration and round.
    """
    plans = _plans(sizes, world_sizes, strategies)
    job = {"kind": "interleaved", "plans": [p.to_dict() for p in plans], "seed": seed, "data": data,
           "batch": batch_size, "lr": lr, "warmup": warmup, "repeats": repeats, "reference": reference,
           "dtype": "float32", "backend": backend}
    res = launch(job, max(world_sizes), timeout_s=timeout_s)
    rows = []
    for i, plan in enumerate(plans):
        P = plan.world_size
        per = _summarise_launch(plan, [{"rows": r["rows"][i]} for r in res.results[:P]], batch_size)
        for rnd, row in enumerate(per):
            rows.append({"strategy": plan.strategy, "ranks": P, "round": rnd, "f_crit": critical_fraction(plan),
                         **row})
    df = pd.DataFrame(rows)
    if reference:
        single = pd.DataFrame([{"strategy": "single process", "ranks": 1, "round": r["round"],
                                "step_s": r["t1"] - r["t0"], "f_crit": 1.0, "bytes": 0, "comm_s": 0.0}
                               for r in res.results[0]["rows"][len(plans)]])
        by_round = single.set_index("round").step_s
        df = pd.concat([df, single], ignore_index=True)
        df["single_s"] = df["round"].map(by_round)
        df["ratio_to_single"] = df.step_s / df.single_s
    return df


def _medians(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Median and quartiles of ``col`` per (strategy, ranks)."""
    g = df.groupby(["strategy", "ranks"], sort=False)[col]
    return pd.DataFrame({"median": g.median(), "q25": g.quantile(0.25), "q75": g.quantile(0.75),
                         "n": g.size()}).reset_index()


# ---------------------------------------------------------------------- timing claims
# Module-level functions of picklable inputs, decided in one run (recorded by mpnn.runtime.timing.measure
# and replayed under load by `python -m mpnn timing`).

def fewer_messages_claim(sizes, world_sizes, *, data, batch_size, lr, warmup, repeats, min_ratio,
                         seed=0, timeout_s=300.0, backend="gloo") -> dict:
    """Layer-wise (few messages) against neuron-wise ``count`` (many messages) for every P, timed
    interleaved in one run (:func:`step_times`) and decided by :func:`decide_fewer_messages`."""
    df = step_times(sizes, world_sizes, ["count", "layer"], seed=seed, data=data, batch_size=batch_size,
                    lr=lr, warmup=warmup, repeats=repeats, reference=False, timeout_s=timeout_s, backend=backend)
    return decide_fewer_messages(df, min_ratio)


def decide_fewer_messages(df: pd.DataFrame, min_ratio: float) -> dict:
    """Per round, ``count step / layer step``; holds when the median of these per-round ratios
    exceeds ``min_ratio`` for every P with a layer-wise plan."""
    df = df[df.strategy.isin(["count", "layer"])]
    wide = df.pivot_table(index=["ranks", "round"], columns="strategy", values="step_s").dropna()
    ratio = (wide["count"] / wide["layer"]).groupby("ranks")
    med, q25, q75 = ratio.median(), ratio.quantile(0.25), ratio.quantile(0.75)
    steps = df.groupby(["strategy", "ranks"]).step_s.median()
    Ps = [int(P) for P in med.index]
    passed = bool(all(med[P] > min_ratio for P in Ps))
    measured = "median per-round ratio neuron-wise (count) / layer-wise step: " + ", ".join(
        f"P={P}: {med[P]:.2f}x (quartiles {q25[P]:.2f}-{q75[P]:.2f}; {steps[('layer', P)] * 1e3:.1f} vs "
        f"{steps[('count', P)] * 1e3:.1f} ms)" for P in Ps) + f"; claim: > {min_ratio:g}x for every P"
    return {"passed": passed, "measured": measured, "min_ratio": float(min_ratio), "rounds": int(df["round"].nunique()),
            "ratio_median": {P: float(med[P]) for P in Ps}, "ratio_q25": {P: float(q25[P]) for P in Ps},
            "ratio_q75": {P: float(q75[P]) for P in Ps},
            "layer_ms": {P: float(steps[("layer", P)] * 1e3) for P in Ps},
            "count_ms": {P: float(steps[("count", P)] * 1e3) for P in Ps}}


def overhead_claim(sizes, world_sizes, strategies, *, data, batch_size, lr, warmup, repeats, min_ratio,
                   seed=0, timeout_s=300.0, backend="gloo") -> dict:
    """Every split slower than one process, timed interleaved in one run (:func:`step_times`) and
    decided by :func:`decide_overhead`."""
    df = step_times(sizes, world_sizes, strategies, seed=seed, data=data, batch_size=batch_size, lr=lr,
                    warmup=warmup, repeats=repeats, reference=True, timeout_s=timeout_s, backend=backend)
    return decide_overhead(df, min_ratio)


def decide_overhead(df: pd.DataFrame, min_ratio: float) -> dict:
    """Holds when, for every (strategy, P), the median over rounds of ``distributed step /
    single-process step of the same round`` exceeds ``min_ratio``."""
    split = df[df.strategy != "single process"]
    r = _medians(split, "ratio_to_single")
    lo = r.loc[r["median"].idxmin()]
    comm_share = float((split.comm_s / split.step_s).median())
    passed = bool(r["median"].min() > min_ratio)
    measured = (f"median ratio to the single-process step of the same round, over {df['round'].nunique()} rounds: "
                f"{r['median'].min():.1f}x ({lo.strategy}, P={int(lo.ranks)}; quartiles {lo.q25:.1f}-{lo.q75:.1f}) "
                f"to {r['median'].max():.1f}x; single process {df[df.strategy == 'single process'].step_s.median() * 1e3:.2f} ms; "
                f"communication is {comm_share:.0%} of a split step (median); claim: every split > {min_ratio:g}x")
    return {"passed": passed, "measured": measured, "min_ratio": float(min_ratio), "rounds": int(df["round"].nunique()),
            "ratios": r.to_dict("records"), "comm_share": comm_share,
            "steps": _medians(df, "step_s").to_dict("records")}


def latency_model_claim(sizes, world_sizes, strategies, *, data, batch_size, lr, warmup, repeats, max_error,
                        seed=0, timeout_s=300.0, backend="gloo") -> dict:
    """The latency model ``T = c T_1 f_crit + alpha M + V / beta`` (:mod:`mpnn.deploy.cost`) fitted
    to the median step of every (strategy, P), ``T_1`` the median single-process step, all measured
    interleaved in one run; the claim holds when the median relative error is below ``max_error``."""
    df = step_times(sizes, world_sizes, strategies, seed=seed, data=data, batch_size=batch_size, lr=lr,
                    warmup=warmup, repeats=repeats, reference=True, timeout_s=timeout_s, backend=backend)
    return decide_latency_model(df, max_error)


def decide_latency_model(df: pd.DataFrame, max_error: float) -> dict:
    """Fit the latency model to the median step of every (strategy, P) (``T_1`` = the median
    single-process step); holds when the median relative error is below ``max_error``."""
    from .cost import fit_latency
    split = df[df.strategy != "single process"]
    t1 = float(df[df.strategy == "single process"].step_s.median())
    pts = split.groupby(["strategy", "ranks"], sort=False).agg(
        step_s=("step_s", "median"), q25=("step_s", lambda v: v.quantile(0.25)),
        q75=("step_s", lambda v: v.quantile(0.75)), comm_s=("comm_s", "median"), f_crit=("f_crit", "first"),
        messages_max_rank=("messages_max_rank", "first"), bytes_max_rank=("bytes_max_rank", "first")).reset_index()
    fit = fit_latency(pts.step_s, np.full(len(pts), t1), pts.f_crit, pts.messages_max_rank, pts.bytes_max_rank)
    pts["predicted_s"] = fit.predict(t1, pts.f_crit, pts.messages_max_rank, pts.bytes_max_rank)
    pts["rel_err"] = fit.rel_err
    med_err = float(np.median(fit.rel_err))
    beta = (f"{fit.beta_Bps / 1e6:.1f} MB/s" if np.isfinite(fit.beta_Bps)
            else "not identifiable (payloads of tens of kB cost nothing next to the per-message latency)")
    passed = bool(med_err < max_error)
    measured = (f"fitted to the median step of {len(pts)} (strategy, P) over {df['round'].nunique()} interleaved rounds: "
                f"c = {fit.c:.2f}, alpha = {fit.alpha_s * 1e6:.0f} us per message, beta {beta}; "
                f"relative error median {med_err:.0%}, max {fit.rel_err.max():.0%}; claim: median < {max_error:.0%}")
    return {"passed": passed, "measured": measured, "max_error": float(max_error), "rounds": int(df["round"].nunique()),
            "c": fit.c, "alpha_s": fit.alpha_s, "beta_Bps": fit.beta_Bps, "median_rel_err": med_err,
            "t_single_s": t1, "points": pts.to_dict("records")}


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
