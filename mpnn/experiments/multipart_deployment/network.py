"""Network conditions: ranks in network namespaces, shaped links, emulated latency, and the price of synchronising."""
from __future__ import annotations

import time

import altair as alt
import numpy as np
import pandas as pd

from mpnn.deploy.cost import critical_fraction
from mpnn.deploy.plan import make_plan
from mpnn.runtime import verdicts

from .equivalence import _summarise_launch
from .plans import plans_for


def network_conditions(rates_mbps, delays_ms, base_delay_ms: float, delay_rate_mbps: float) -> list[dict]:
    """The emulated links: every rate at ``base_delay_ms``, then every delay at ``delay_rate_mbps``
    (rate 0 = an unshaped veth). ``rate_bps`` is inf for the unshaped link."""
    conds = [{"rate_mbps": r, "delay_ms": base_delay_ms} for r in rates_mbps]
    conds += [{"rate_mbps": delay_rate_mbps, "delay_ms": d} for d in delays_ms if d != base_delay_ms]
    for c in conds:
        c["rate_bps"] = None if not c["rate_mbps"] else float(c["rate_mbps"]) * 1e6
        c["delay_s"] = float(c["delay_ms"]) * 1e-3
        c["link"] = ("unshaped veth" if not c["rate_mbps"] else
                     (f"{c['rate_mbps'] / 1000:g} Gb/s" if c["rate_mbps"] >= 1000 else f"{c['rate_mbps']:g} Mb/s"))
        c["name"] = f"{c['link']}, {c['delay_ms']:g} ms"
    return conds


def _condition_rows(plans, conds, parts, batch_size) -> pd.DataFrame:
    from mpnn.deploy.cost import exchange_rounds
    rows = []
    for ci, cond in enumerate(conds):
        single = {r["round"]: r["t1"] - r["t0"] for r in parts[0]["conditions"][ci][len(plans)]}
        meta = {k: cond[k] for k in ("name", "link", "rate_mbps", "delay_ms")}
        for rnd, t in single.items():
            rows.append({**meta, "condition": ci, "strategy": "single process", "ranks": 1, "round": rnd,
                         "step_s": t, "single_s": t, "f_crit": 1.0, "rounds": 0, "bytes_max_rank": 0,
                         "messages_max_rank": 0, "comm_s": 0.0})
        for i, plan in enumerate(plans):
            per = _summarise_launch(plan, [{"rows": p["conditions"][ci][i]} for p in parts[:plan.world_size]], batch_size)
            for rnd, row in enumerate(per):
                rows.append({**meta, "condition": ci, "strategy": plan.strategy, "ranks": plan.world_size,
                             "round": rnd, "step_s": row["step_s"], "single_s": single[rnd],
                             "f_crit": critical_fraction(plan), "rounds": exchange_rounds(plan),
                             "bytes_max_rank": row["bytes_max_rank"], "messages_max_rank": row["messages_max_rank"],
                             "comm_s": row["comm_s"]})
    df = pd.DataFrame(rows)
    df["ratio_to_single"] = df.step_s / df.single_s
    df["samples_per_s"] = batch_size / df.step_s
    return df


def _sync_rows(parts, sync_rates_mbps) -> pd.DataFrame:
    raw = pd.DataFrame([dict(r, rank=k) for k, p in enumerate(parts) for r in p["rows"]])
    g = raw.groupby(["condition", "round", "k"]).agg(t0=("t0", "min"), ts=("ts", "max"), t1=("t1", "max"),
                                                     steps=("steps", "first"), shard_bytes=("shard_bytes", "max"))
    g = g.reset_index()
    g["per_step_s"] = (g.t1 - g.t0) / g.steps
    g["sync_s"] = g.t1 - g.ts
    g["rate_mbps"] = g.condition.map(dict(enumerate(sync_rates_mbps)))
    return g[["rate_mbps", "round", "k", "steps", "per_step_s", "sync_s", "shard_bytes"]]


def decide_network(df: pd.DataFrame, *, max_error: float, min_ratio: float) -> dict:
    """Fit :func:`mpnn.deploy.cost.fit_conditions` to the median step of every (condition, plan);
    holds when its median relative error is below ``max_error`` and every split is more than
    ``min_ratio`` times slower than one process (median per-round ratio) under every condition."""
    from mpnn.deploy.cost import fit_conditions
    split = df[df.strategy != "single process"]
    pts = split.groupby(["condition", "name", "strategy", "ranks"], sort=False).agg(
        step_s=("step_s", "median"), ratio=("ratio_to_single", "median"), single_s=("single_s", "median"),
        f_crit=("f_crit", "first"), msgs=("messages_max_rank", "first"), nbytes=("bytes_max_rank", "first"),
        rounds=("rounds", "first"), rate_mbps=("rate_mbps", "first"), delay_ms=("delay_ms", "first"),
        throughput=("samples_per_s", "median")).reset_index()
    rate = np.where(pts.rate_mbps > 0, pts.rate_mbps * 1e6, np.inf)
    fit = fit_conditions(pts.step_s, pts.single_s, pts.f_crit, pts.msgs, pts.nbytes, rate, pts.delay_ms * 1e-3, pts.rounds)
    pts["predicted_s"] = fit.predict(pts.single_s, pts.f_crit, pts.msgs, pts.nbytes, rate, pts.delay_ms * 1e-3, pts.rounds)
    pts["rel_err"] = fit.rel_err
    med_err = float(np.median(fit.rel_err))
    lo = pts.loc[pts.ratio.idxmin()]
    single_tp = float((df[df.strategy == "single process"].samples_per_s).median())
    passed = bool(med_err < max_error and pts.ratio.min() > min_ratio)
    beta0 = f"{fit.beta0_Bps / 1e6:.0f} MB/s" if np.isfinite(fit.beta0_Bps) else "inf"
    measured = (f"{len(pts)} (condition, split) medians over {df['round'].nunique()} interleaved rounds: fitted "
                f"c = {fit.c:.2f}, alpha = {fit.alpha_s * 1e6:.0f} us/message, software beta0 = {beta0}, link "
                f"multiplier kappa = {fit.kappa:.2f}, latency multiplier gamma = {fit.gamma:.2f}; relative error median "
                f"{med_err:.0%}, max {fit.rel_err.max():.0%} (claim < {max_error:.0%}); every split slower than one "
                f"process: smallest median ratio {lo.ratio:.1f}x ({lo.strategy}, P={int(lo.ranks)}, {lo['name']}; "
                f"claim > {min_ratio:g}x)")
    return {"verdict": verdicts.as_verdict(passed), "measured": measured, "c": fit.c, "alpha_s": fit.alpha_s,
            "beta0_Bps": fit.beta0_Bps,
            "kappa": fit.kappa, "gamma": fit.gamma, "median_rel_err": med_err, "min_ratio": float(pts.ratio.min()),
            "single_samples_per_s": single_tp, "points": pts.to_dict("records")}


def decide_latency_share(df: pd.DataFrame, *, delay_ms: float, min_share: float) -> dict:
    """At the largest emulated latency: the share of each split's median step that the latency
    ``d R`` accounts for; holds when it exceeds ``min_share`` for every split."""
    at = df[(df.delay_ms == delay_ms) & (df.strategy != "single process")]
    med = at.groupby(["strategy", "ranks"]).agg(step_s=("step_s", "median"), rounds=("rounds", "first")).reset_index()
    med["share"] = med.rounds * delay_ms * 1e-3 / med.step_s
    passed = bool(med.share.min() > min_share)
    measured = (f"at {delay_ms:g} ms emulated latency the delays ({', '.join(f'{r.strategy} P={r.ranks}: {r.rounds} x {delay_ms:g} ms' for r in med.itertuples())}) "
                f"are {med.share.min():.0%}-{med.share.max():.0%} of the median step ({med.step_s.min() * 1e3:.0f}-{med.step_s.max() * 1e3:.0f} ms); "
                f"claim: > {min_share:.0%} for every split")
    return {"verdict": verdicts.as_verdict(passed), "measured": measured, "shares": med.to_dict("records")}


def decide_sync(sync: pd.DataFrame, *, min_frequency_ratio: float, min_bandwidth_ratio: float) -> dict:
    """Per rate and interval ``k``: median per-step time, and the share of a block's time spent
    synchronising (``sync / (k steps + sync)``, both measured in the same block). Holds when, at
    every rate, syncing every step spends more than ``min_frequency_ratio`` times the share of
    syncing every ``max(k)`` steps, and one sync at the slowest link takes more than
    ``min_bandwidth_ratio`` times one at the fastest (medians over interleaved rounds)."""
    s = sync.assign(share=lambda d: d.sync_s / (d.per_step_s * d.steps))
    med = s.groupby(["rate_mbps", "k"]).agg(per_step_s=("per_step_s", "median"), sync_s=("sync_s", "median"),
                                            share=("share", "median"), shard_bytes=("shard_bytes", "max")).reset_index()
    ks = sorted(k for k in med.k.unique() if k)
    slow, fast = min(med.rate_mbps), max(med.rate_mbps)
    share = med[med.k > 0].pivot(index="rate_mbps", columns="k", values="share")
    freq = share[ks[0]] / share[ks[-1]]
    syncs = med[med.k > 0].groupby("rate_mbps").sync_s.median()
    bw_ratio = float(syncs[slow] / syncs[fast])
    shard = int(med.shard_bytes.max())
    passed = bool(freq.min() > min_frequency_ratio and bw_ratio > min_bandwidth_ratio)
    rate = lambda r: f"{r / 1000:g} Gb/s" if r >= 1000 else f"{r:g} Mb/s"   # noqa: E731
    measured = (f"shards of {shard / 1e3:.0f} kB per rank to the hub's file server over the shaped uplinks; share of the time "
                f"spent synchronising, every step vs every {ks[-1]} steps: "
                + ", ".join(f"{rate(r)}: {share.loc[r, ks[0]]:.0%} vs {share.loc[r, ks[-1]]:.0%}" for r in share.index)
                + f" ({freq.min():.1f}x or more; claim > {min_frequency_ratio:g}x); one sync takes {syncs[slow] * 1e3:.1f} ms at "
                  f"{rate(slow)} against {syncs[fast] * 1e3:.1f} ms at {rate(fast)} ({bw_ratio:.1f}x; claim > {min_bandwidth_ratio:g}x)")
    return {"verdict": verdicts.as_verdict(passed), "measured": measured, "frequency_ratio": float(freq.min()),
            "bandwidth_ratio": bw_ratio,
            "table": med.to_dict("records")}


def network_claim(sizes, world_sizes, strategies, *, conditions, sync_ranks, sync_every, sync_rates_mbps, data,
                  batch_size, lr, warmup, repeats, sync_repeats, max_error, min_ratio, min_latency_share,
                  min_frequency_ratio, min_bandwidth_ratio, seed=0, timeout_s=300.0) -> dict:
    """One group of ``max(world_sizes)`` ranks in network namespaces (:mod:`mpnn.deploy.netns`):
    every plan and the single process under every condition, then the synchronisation sweep.
    Decided by :func:`decide_network`, :func:`decide_latency_share` and :func:`decide_sync`.
    Without root: ``passed`` None and the reason (``skipped``), nothing measured."""
    from mpnn.deploy import netns
    ok, why = netns.available()
    if not ok:
        return network_skipped(why)
    plans = plans_for(sizes, world_sizes, strategies)
    W = max(world_sizes)
    job = {"kind": "multi", "data": data, "batch": batch_size, "lr": lr, "seed": seed, "dtype": "float32", "jobs": [
        {"kind": "conditions", "plans": [p.to_dict() for p in plans], "conditions": conditions, "warmup": warmup,
         "repeats": repeats, "reference": True},
        {"kind": "sync", "plan": make_plan("count", sizes, sync_ranks).to_dict(), "sync_every": list(sync_every),
         "sync_conditions": [{"rate_bps": r * 1e6} for r in sync_rates_mbps], "warmup": 1, "repeats": sync_repeats}]}
    t0 = time.perf_counter()
    with netns.Network(W) as net:
        res = netns.run_group(job, W, net=net, timeout_s=timeout_s, file_server=True)
    wall = time.perf_counter() - t0
    df = _condition_rows(plans, conditions, [r["parts"][0] for r in res], batch_size)
    sync = _sync_rows([r["parts"][1] for r in res], sync_rates_mbps)
    net_d = decide_network(df, max_error=max_error, min_ratio=min_ratio)
    lat_d = decide_latency_share(df, delay_ms=max(c["delay_ms"] for c in conditions), min_share=min_latency_share)
    sync_d = decide_sync(sync, min_frequency_ratio=min_frequency_ratio, min_bandwidth_ratio=min_bandwidth_ratio)
    return {"verdict": verdicts.combine({"model": net_d["verdict"], "latency": lat_d["verdict"], "sync": sync_d["verdict"]}),
            "measured": " | ".join(d["measured"] for d in (net_d, lat_d, sync_d)), "skipped": None,
            "network": net_d, "latency": lat_d, "sync": sync_d, "rows": df, "sync_rows": sync, "wall_s": wall}


def figure_network(df: pd.DataFrame) -> alt.HConcatChart:
    """Median step (ms) and throughput against the link, one line per split, single process dashed."""
    med = df.groupby(["condition", "name", "strategy", "ranks"], sort=False).agg(
        ms=("step_s", lambda v: 1e3 * v.median()), q25=("step_s", lambda v: 1e3 * v.quantile(0.25)),
        q75=("step_s", lambda v: 1e3 * v.quantile(0.75)), samples_per_s=("samples_per_s", "median")).reset_index()
    med["split"] = np.where(med.strategy == "single process", "single process", med.strategy + " P=" + med.ranks.astype(str))
    order = list(dict.fromkeys(med.name))
    x = alt.X("name:N", sort=order, title="emulated link (uplink rate, one-way latency)")
    base = alt.Chart(med).encode(x=x, color=alt.Color("split:N", title="configuration",
                                                      legend=alt.Legend(orient="bottom", columns=5)))
    ms = (base.mark_line(point=True).encode(y=alt.Y("ms:Q", scale=alt.Scale(type="log"), title="ms per step (median)"),
                                            tooltip=["name", "split", alt.Tooltip("ms:Q", format=".1f")])
          + base.mark_rule().encode(y="q25:Q", y2="q75:Q")).properties(width=250, height=240, title="Step time")
    tp = base.mark_line(point=True).encode(y=alt.Y("samples_per_s:Q", scale=alt.Scale(type="log"),
                                                   title="training samples per second (median)"),
                                           tooltip=["name", "split", alt.Tooltip("samples_per_s:Q", format=".0f")]
                                           ).properties(width=250, height=240, title="Throughput")
    return alt.hconcat(ms, tp)


def figure_network_fit(net: dict) -> alt.LayerChart:
    """The across-conditions model against the measured medians (log-log), with the diagonal."""
    pts = pd.DataFrame(net["points"]).assign(measured_ms=lambda d: d.step_s * 1e3, predicted_ms=lambda d: d.predicted_s * 1e3,
                                             split=lambda d: d.strategy + " P=" + d.ranks.astype(str))
    lim = [float(min(pts.measured_ms.min(), pts.predicted_ms.min())) * 0.8, float(max(pts.measured_ms.max(), pts.predicted_ms.max())) * 1.2]
    diag = alt.Chart(pd.DataFrame({"x": lim})).mark_line(color="gray", strokeDash=[3, 3]).encode(x="x:Q", y="x:Q")
    sc = alt.Scale(type="log", domain=lim)
    p = alt.Chart(pts).mark_point(filled=True, size=60).encode(
        x=alt.X("measured_ms:Q", scale=sc, title="measured ms per step (median)"),
        y=alt.Y("predicted_ms:Q", scale=sc, title="model ms per step"),
        color=alt.Color("split:N", title="configuration"), shape=alt.Shape("name:N", title="emulated link"),
        tooltip=["name", "split", alt.Tooltip("measured_ms:Q", format=".1f"), alt.Tooltip("predicted_ms:Q", format=".1f")])
    return (diag + p).properties(width=380, height=320, title="Latency model across emulated links")


def figure_sync(sync: pd.DataFrame) -> alt.Chart:
    """Median ms per training step against the synchronisation interval k, one line per link rate."""
    med = sync.groupby(["rate_mbps", "k"]).per_step_s.median().reset_index()
    med["ms"] = med.per_step_s * 1e3
    med["interval"] = np.where(med.k == 0, "never", "every " + med.k.astype(str))
    med["link"] = med.rate_mbps.map(lambda r: f"{r / 1000:g} Gb/s" if r >= 1000 else f"{r:g} Mb/s")
    order = [f"every {k}" for k in sorted(k for k in med.k.unique() if k)] + ["never"]
    return alt.Chart(med).mark_line(point=True).encode(
        x=alt.X("interval:N", sort=order, title="synchronisation to the shared store", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("ms:Q", title="ms per training step (median)"), color=alt.Color("link:N", title="uplink"),
        tooltip=["link", "interval", alt.Tooltip("ms:Q", format=".1f")],
    ).properties(width=380, height=260, title="Parameter synchronisation overhead")


def network_available() -> tuple[bool, str]:
    """:func:`mpnn.deploy.netns.available`: ``(True, "")`` or ``(False, "needs root: ...")``."""
    from mpnn.deploy import netns
    return netns.available()


def network_skipped(why: str) -> dict:
    """What :func:`network_claim` stands for without root: every decision undecided, with the reason."""
    part = {"verdict": "not testable here", "measured": why}
    return {"verdict": "not testable here", "measured": why, "skipped": why, "network": part, "latency": part,
            "sync": part}


def sync_table(sync: dict):
    """:func:`decide_sync`'s medians per (uplink, interval) as a styled table (ms)."""
    t = pd.DataFrame(sync["table"])
    t = t.assign(**{"ms per step": t.per_step_s * 1e3, "ms per sync": t.sync_s * 1e3, "time synchronising": t.share,
                    "interval": np.where(t.k == 0, "never", "every " + t.k.astype(str) + " steps")})
    return (t[["rate_mbps", "interval", "ms per step", "ms per sync", "time synchronising", "shard_bytes"]]
            .rename(columns={"rate_mbps": "uplink (Mb/s)", "shard_bytes": "bytes per rank"})
            .style.format({"ms per step": "{:.1f}", "ms per sync": "{:.1f}", "time synchronising": "{:.0%}"})
            .hide(axis="index"))
