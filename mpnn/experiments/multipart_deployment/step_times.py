"""Step times of every split on one host, interleaved; the timing claims decided on them, and their tables and figures."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from mpnn.deploy.cost import critical_fraction, fit_latency
from mpnn.deploy.launch import launch
from mpnn.runtime import plots

from .equivalence import _summarise_launch
from .plans import plans_for


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
    plans = plans_for(sizes, world_sizes, strategies)
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
    # supported: layer-wise faster by more than min_ratio at every P; not supported: not faster at some P
    verdict = "supported" if passed else "not supported" if any(med[P] < 1.0 for P in Ps) else "inconclusive"
    measured = "median per-round ratio neuron-wise (count) / layer-wise step: " + ", ".join(
        f"P={P}: {med[P]:.2f}x (quartiles {q25[P]:.2f}-{q75[P]:.2f}; {steps[('layer', P)] * 1e3:.1f} vs "
        f"{steps[('count', P)] * 1e3:.1f} ms)" for P in Ps) + f"; claim: > {min_ratio:g}x for every P"
    return {"verdict": verdict, "measured": measured, "min_ratio": float(min_ratio), "rounds": int(df["round"].nunique()),
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
    # supported: every split slower by more than min_ratio; not supported: some split faster than one process
    verdict = "supported" if passed else "not supported" if r["median"].min() < 1.0 else "inconclusive"
    measured = (f"median ratio to the single-process step of the same round, over {df['round'].nunique()} rounds: "
                f"{r['median'].min():.1f}x ({lo.strategy}, P={int(lo.ranks)}; quartiles {lo.q25:.1f}-{lo.q75:.1f}) "
                f"to {r['median'].max():.1f}x; single process {df[df.strategy == 'single process'].step_s.median() * 1e3:.2f} ms; "
                f"communication is {comm_share:.0%} of a split step (median); claim: every split > {min_ratio:g}x")
    return {"verdict": verdict, "measured": measured, "min_ratio": float(min_ratio), "rounds": int(df["round"].nunique()),
            "ratios": r.to_dict("records"), "comm_share": comm_share,
            "steps": _medians(df, "step_s").to_dict("records")}


def latency_model_claim(sizes, world_sizes, strategies, *, data, batch_size, lr, warmup, repeats, max_error,
                        seed=0, timeout_s=300.0, backend="gloo") -> dict:
    """The latency model fitted to step times measured interleaved in one run (:func:`step_times`),
    decided by :func:`decide_latency_model`."""
    df = step_times(sizes, world_sizes, strategies, seed=seed, data=data, batch_size=batch_size, lr=lr,
                    warmup=warmup, repeats=repeats, reference=True, timeout_s=timeout_s, backend=backend)
    return decide_latency_model(df, max_error)


def decide_latency_model(df: pd.DataFrame, max_error: float) -> dict:
    """Fit the latency model to the median step of every (strategy, P) (``T_1`` = the median
    single-process step); holds when the median relative error is below ``max_error``."""
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
    # supported: median error below max_error; not supported: above twice max_error
    verdict = "supported" if med_err < max_error else "not supported" if med_err > 2 * max_error else "inconclusive"
    measured = (f"fitted to the median step of {len(pts)} (strategy, P) over {df['round'].nunique()} interleaved rounds: "
                f"c = {fit.c:.2f}, alpha = {fit.alpha_s * 1e6:.0f} us per message, beta {beta}; "
                f"relative error median {med_err:.0%}, max {fit.rel_err.max():.0%}; claim: median < {max_error:.0%}")
    return {"verdict": verdict, "measured": measured, "max_error": float(max_error), "rounds": int(df["round"].nunique()),
            "c": fit.c, "alpha_s": fit.alpha_s, "beta_Bps": fit.beta_Bps, "median_rel_err": med_err,
            "t_single_s": t1, "points": pts.to_dict("records")}


def decide_all(df: pd.DataFrame, *, min_ratio_messages: float, min_ratio_overhead: float,
               max_latency_error: float) -> tuple[dict, dict, dict]:
    """The three timing decisions on one shared :func:`step_times` run (figures only: nothing recorded)."""
    return (decide_fewer_messages(df, min_ratio_messages), decide_overhead(df, min_ratio_overhead),
            decide_latency_model(df, max_latency_error))


def ratio_table(overhead: dict) -> pd.DataFrame:
    """Distributed / single-process step of the same round per (strategy, P): median and quartiles."""
    return pd.DataFrame(overhead["ratios"]).rename(columns={"median": "ratio (median)", "q25": "lower quartile",
                                                            "q75": "upper quartile", "n": "rounds"})


def step_ms_table(overhead: dict, world_sizes) -> pd.DataFrame:
    """Median and quartiles of the step (ms) per (strategy, P); the single-process step as a flat
    line over every P."""
    steps = pd.DataFrame(overhead["steps"])
    single_ms = float(steps[steps.strategy == "single process"]["median"].iloc[0]) * 1e3
    split = steps[steps.strategy != "single process"].assign(
        **{c: lambda d, c=c: d[c] * 1e3 for c in ("median", "q25", "q75")})
    return pd.concat([split, pd.DataFrame({"strategy": "single process", "ranks": list(world_sizes),
                                           "median": single_ms, "q25": single_ms, "q75": single_ms})])


def figure_cost_vs_ranks(step_ms: pd.DataFrame, traffic: pd.DataFrame, world_sizes) -> alt.HConcatChart:
    """Left: ms per step against P (median, quartile band). Right: bytes per step, measured
    (points) and the volume model (dashed)."""
    ranks_axis = alt.Axis(values=sorted(set(world_sizes)), format="d")
    times = plots.line_ci(step_ms, "ranks", "strategy", y="median", low="q25", high="q75",
                          title="Time per training step", width=250, height=240,
                          y_title="ms per step (median, quartiles over rounds)", x_title="number of ranks P")
    for i in range(len(times.layer)):
        times.layer[i] = times.layer[i].encode(x=alt.X("ranks:Q", title="number of ranks P", axis=ranks_axis,
                                                       scale=alt.Scale(domain=[min(world_sizes), max(world_sizes)])))
    nw = traffic[["strategy", "ranks", "bytes", "model_bytes"]]
    pts = alt.Chart(nw).mark_point(size=80, filled=True).encode(
        x=alt.X("ranks:Q", title="number of ranks P", axis=ranks_axis),
        y=alt.Y("bytes:Q", title="bytes sent per step (all ranks)"),
        color=alt.Color("strategy:N", title="strategy"), tooltip=list(nw.columns))
    lines = alt.Chart(nw).mark_line(strokeDash=[4, 3]).encode(x="ranks:Q", y="model_bytes:Q", color="strategy:N")
    volume_chart = (lines + pts).properties(title="Bytes per step: measured and model",
                                            width=250, height=240)
    return alt.hconcat(times.resolve_scale(y="shared"), volume_chart).configure_legend(orient="bottom")


def figure_time_breakdown(latency: dict) -> alt.Chart:
    """Stacked bars per (strategy, P): the median step split into compute and the busiest rank's
    waiting time on transfers (communication)."""
    brk = pd.DataFrame(latency["points"])
    brk = brk.assign(compute=(brk.step_s - brk.comm_s).clip(lower=0) * 1e3, communication=brk.comm_s * 1e3)
    long = brk[["strategy", "ranks", "compute", "communication"]].melt(["strategy", "ranks"], var_name="part",
                                                                       value_name="ms")
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("ranks:O", title="ranks P", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("ms:Q", title="ms per step (median over rounds)"), color=alt.Color("part:N", title="part of the step"),
        column=alt.Column("strategy:N", title=None),
        tooltip=["strategy", "ranks", "part", alt.Tooltip("ms:Q", format=".2f")],
    ).properties(width=110, height=220, title="Where a step's time goes (busiest rank's waiting time = communication)")


def figure_latency_model(latency: dict) -> alt.LayerChart:
    """Model against measured ms per step, one point per (strategy, P), with the diagonal."""
    fit_rows = pd.DataFrame(latency["points"]).assign(measured_ms=lambda d: d.step_s * 1e3,
                                                      predicted_ms=lambda d: d.predicted_s * 1e3)
    lim = [0, float(max(fit_rows.measured_ms.max(), fit_rows.predicted_ms.max())) * 1.05]
    diag = alt.Chart(pd.DataFrame({"x": lim})).mark_line(color="gray", strokeDash=[3, 3]).encode(x="x:Q", y="x:Q")
    pts = alt.Chart(fit_rows).mark_point(filled=True, size=60).encode(
        x=alt.X("measured_ms:Q", title="measured ms per step (median)"), y=alt.Y("predicted_ms:Q", title="model ms per step"),
        color=alt.Color("strategy:N", title="strategy"), shape=alt.Shape("ranks:N", title="ranks P"),
        tooltip=["strategy", "ranks", alt.Tooltip("measured_ms:Q", title="measured ms", format=".2f"),
                 alt.Tooltip("predicted_ms:Q", title="model ms", format=".2f"),
                 alt.Tooltip("rel_err:Q", title="relative error", format=".0%")])
    return (diag + pts).properties(title="Latency model against the measurements", width=360, height=300)


def single_step_s(overhead: dict) -> float:
    """The median single-process step of :func:`overhead_claim`'s run (seconds)."""
    steps = pd.DataFrame(overhead["steps"])
    return float(steps[steps.strategy == "single process"]["median"].iloc[0])
