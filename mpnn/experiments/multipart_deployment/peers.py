"""PyTorch's own engines (tensor and pipeline parallelism) side by side with the book's engine."""
from __future__ import annotations

import altair as alt
import pandas as pd
import torch

from mpnn.deploy.engine import assemble
from mpnn.deploy.launch import launch
from mpnn.deploy.plan import make_plan
from mpnn.runtime import verdicts

from .equivalence import max_difference, reference

PEERS = {  # configuration -> (split, engine, label)
    "engine-count": ("neuron-wise", "book", "book engine (isend/irecv, count plan)"),
    "tp-colwise": ("neuron-wise", "pytorch", "PyTorch TP: ColwiseParallel every layer"),
    "tp-megatron": ("neuron-wise", "pytorch", "PyTorch TP: Colwise/Rowwise pairs"),
    "engine-layer": ("layer", "book", "book engine (isend/irecv, layer plan)"),
    "pp": ("layer", "pytorch", "PyTorch pipeline: GPipe, M micro-batches"),
    "pp-m1": ("layer", "pytorch", "PyTorch pipeline: one micro-batch"),
}


def _peer_plans(sizes, P):
    from mpnn.deploy.peers import tp_plan
    return [tp_plan(sizes, P)] + ([make_plan("layer", sizes, P)] if P <= len(sizes) - 1 else [])


def peers_equivalence(sizes, world_sizes, seed, *, data, batch_size, lr, k_steps, microbatches,
                      timeout_s=300.0, backend="gloo") -> pd.DataFrame:
    """One group of ``max(world_sizes)`` ranks, float64: for every P, the book's engine on the
    tensor-parallel blocks (:func:`mpnn.deploy.peers.tp_plan`) and on the layer plan, PyTorch tensor
    parallelism (both plans) and the pipeline; max ``|distributed - single process|`` of the logits, the
    gradients and the parameters after ``k_steps`` SGD steps."""
    world_sizes = [P for P in world_sizes if P <= len(sizes) - 1]
    plans = [p for P in world_sizes for p in _peer_plans(sizes, P)]
    job = {"kind": "multi", "sizes": list(sizes), "world_sizes": world_sizes, "seed": seed, "data": data,
           "batch": batch_size, "lr": lr, "k_steps": k_steps, "microbatches": microbatches, "dtype": "float64",
           "backend": backend, "plans": [p.to_dict() for p in plans],
           "jobs": [{"kind": "equivalence"}, {"kind": "peers_equivalence"}]}
    res = launch(job, max(world_sizes), timeout_s=timeout_s)
    logits, grads, final = reference(sizes, seed, data, batch_size, lr, k_steps)
    rows = []
    for i, plan in enumerate(plans):
        P = plan.world_size
        per = [r["parts"][0]["plans"][i] for r in res.results[:P]]
        rows.append({"configuration": "engine-" + plan.strategy, "ranks": P,
                     "logits": float((per[plan.head]["logits"] - logits).abs().max()),
                     "gradients": max_difference(assemble(plan, [p["grads"] for p in per]), grads),
                     f"params after {k_steps} steps": max_difference(assemble(plan, [p["final"] for p in per]), final)})
    for P in world_sizes:
        for name in ("tp-colwise", "tp-megatron", "pp", "pp-m1"):
            per = [r["parts"][1]["peers"][(name, P)] for r in res.results[:P]]
            merged = {k: v for p in per for k, v in p["grads"].items()}, {k: v for p in per for k, v in p["final"].items()}
            got = [[m.get(l, (torch.full_like(w, float("nan")), torch.full_like(b, float("nan"))))
                    for l, (w, b) in enumerate(grads, 1)] for m in merged]
            out = next(p["logits"] for p in per if p["logits"] is not None)
            rows.append({"configuration": name, "ranks": P, "logits": float((out - logits).abs().max()),
                         "gradients": max_difference(got[0], grads),
                         f"params after {k_steps} steps": max_difference(got[1], final)})
    df = pd.DataFrame(rows)
    df.insert(1, "split", df.configuration.map(lambda c: PEERS[c][0]))
    return df.sort_values(["split", "ranks", "configuration"], kind="stable").reset_index(drop=True)


def peers_step_times(sizes, world_sizes, *, seed=0, data, batch_size, lr, warmup, repeats, microbatches,
                     timeout_s=300.0, backend="gloo") -> tuple[pd.DataFrame, dict]:
    """Interleaved step times (one group, :func:`mpnn.deploy.peers.job_interleaved`): one row per
    (configuration, P, round) with ``step_s`` (barrier to the last rank's end), ``wire_bytes``
    (socket bytes of all ranks, ``/proc/self/io``) and ``ratio_to_single``; and the message /
    collective counts per configuration."""
    world_sizes = [P for P in world_sizes if P <= len(sizes) - 1]
    job = {"kind": "peers_interleaved", "sizes": list(sizes), "world_sizes": world_sizes, "seed": seed,
           "data": data, "batch": batch_size, "lr": lr, "warmup": warmup, "repeats": repeats,
           "microbatches": microbatches, "backend": backend}
    res = launch(job, max(world_sizes), timeout_s=timeout_s)
    rows = []
    for (name, P), _ in res.results[0]["rows"].items():
        per = [r["rows"][(name, P)] for r in res.results[:P]]
        for rnd in range(len(per[0])):
            steps = [p[rnd] for p in per]
            wire = [s["wire_bytes"] for s in steps]
            rows.append({"configuration": name, "ranks": P, "round": rnd,
                         "step_s": max(s["t1"] for s in steps) - min(s["t0"] for s in steps),
                         "wire_bytes": None if None in wire else sum(wire)})
    df = pd.DataFrame(rows)
    single = df[df.configuration == "single"].set_index("round").step_s
    df["ratio_to_single"] = df.step_s / df["round"].map(single)
    counts = {f"{k[0]}@{k[1]}": v for k, v in res.results[0]["counts"].items()}
    return df, counts


def _transfers(name: str, P: int, counts: dict, microbatches: int) -> str:
    from mpnn.deploy.peers import pp_messages
    c = counts.get(f"{name}@{P}", {})
    if name.startswith("engine"):
        return f"{c.get('messages', 0)} isend (rank 0)"
    if name.startswith("pp"):
        return f"{pp_messages(P, 1 if name == 'pp-m1' else microbatches)} isend (busiest stage)"
    return ", ".join(f"{v} {k.replace('_into_tensor', '')}" for k, v in sorted(c.items()))


def decide_peers(df: pd.DataFrame, counts: dict, *, microbatches: int, min_slower: float,
                 min_not_faster: float) -> dict:
    """Per round and P, ``PyTorch step / book-engine step`` of the same split; medians over rounds
    per P (reported), and over every (P, round) pooled (decided). Holds when, pooled over P, (a) the
    pipeline (``pp``) and (b) tensor parallelism with the book's own ownership (``tp-colwise``) are
    slower than the book's engine by more than ``min_slower``, and (c) the faster PyTorch
    tensor-parallel plan is not faster than the engine by more than ``1 / min_not_faster`` (its
    pooled median ratio exceeds ``min_not_faster``). Pooled, since at a P with more ranks than
    cores the ordering of the engines changes from run to run (the per-P medians show it)."""
    wide = df.pivot_table(index=["ranks", "round"], columns="configuration", values="step_s")
    q = lambda p: (lambda v: v.quantile(p))
    med = df.groupby(["configuration", "ranks"]).agg(step_s=("step_s", "median"), q25=("step_s", q(.25)),
                                                     q75=("step_s", q(.75)), wire_bytes=("wire_bytes", "median"),
                                                     ratio_to_single=("ratio_to_single", "median")).reset_index()
    Ps = sorted(int(P) for P in df[df.configuration != "single"].ranks.unique())
    tp_best = {P: min(("tp-colwise", "tp-megatron"), key=lambda c: wide.loc[P][c].median()) for P in Ps}
    stats, pooled_r = {}, {}
    for name, book in (("pp", "engine-layer"), ("pp-m1", "engine-layer"), ("tp-colwise", "engine-count"),
                       ("tp-megatron", "engine-count")):
        per_P = []
        for P in Ps:
            r = (wide.loc[P][name] / wide.loc[P][book]).dropna()
            stats[f"{name}@{P}"] = (float(r.median()), float(r.quantile(.25)), float(r.quantile(.75)))
            per_P.append(r)
        r = pd.concat(per_P)
        pooled_r[name] = (float(r.median()), float(r.quantile(.25)), float(r.quantile(.75)))
    m = lambda k: stats[k][0]   # noqa: E731
    tp_pooled = min(("tp-colwise", "tp-megatron"), key=lambda c: pooled_r[c][0])
    checks = {"pipeline slower": pooled_r["pp"][0] > min_slower,
              "same-plan TP slower": pooled_r["tp-colwise"][0] > min_slower,
              "best TP not faster": pooled_r[tp_pooled][0] > min_not_faster}
    fmt = lambda k: f"{m(k):.2f}x ({stats[k][1]:.2f}-{stats[k][2]:.2f})"   # noqa: E731
    fmt_pooled = lambda c: f"{pooled_r[c][0]:.2f}x ({pooled_r[c][1]:.2f}-{pooled_r[c][2]:.2f})"   # noqa: E731
    measured = ("median per-round ratio PyTorch step / book-engine step (quartiles), "
                + "; ".join(f"P={P}: pipeline M={microbatches} {fmt(f'pp@{P}')}, M=1 {fmt(f'pp-m1@{P}')}, "
                            f"TP colwise {fmt(f'tp-colwise@{P}')}, TP col/row pairs {fmt(f'tp-megatron@{P}')}"
                            for P in Ps)
                + f"; pooled over P: pipeline M={microbatches} {fmt_pooled('pp')}, TP colwise {fmt_pooled('tp-colwise')}, "
                  f"TP col/row pairs {fmt_pooled('tp-megatron')}; claim: pipeline and same-plan TP > {min_slower:g}x, "
                  f"faster TP plan > {min_not_faster:g}x pooled over P, {df['round'].nunique()} interleaved rounds")
    med["split"] = med.configuration.map(lambda c: PEERS[c][0] if c in PEERS else "single process")
    med["transfers per step"] = [_transfers(c, int(P), counts, microbatches) if c in PEERS else "-"
                                 for c, P in zip(med.configuration, med.ranks)]
    return {"verdict": verdicts.as_verdict(all(checks.values())), "checks": checks, "measured": measured,
            "min_slower": float(min_slower), "min_not_faster": float(min_not_faster),
            "rounds": int(df["round"].nunique()), "ratios": stats, "pooled": pooled_r, "tp_best": tp_best,
            "medians": med.to_dict("records"), "counts": counts}


def peers_claim(sizes, world_sizes, *, data, batch_size, lr, warmup, repeats, microbatches, min_slower,
                min_not_faster, seed=0, timeout_s=300.0, backend="gloo") -> dict:
    """The book's engine against PyTorch's, timed interleaved in one run (:func:`peers_step_times`),
    decided by :func:`decide_peers`."""
    df, counts = peers_step_times(sizes, world_sizes, seed=seed, data=data, batch_size=batch_size, lr=lr,
                                  warmup=warmup, repeats=repeats, microbatches=microbatches,
                                  timeout_s=timeout_s, backend=backend)
    return decide_peers(df, counts, microbatches=microbatches, min_slower=min_slower, min_not_faster=min_not_faster)


def peers_table(result: dict, eq: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, P, configuration): max difference to one process, socket kB per step,
    transfers per step, step ms (median, quartiles), ratio to one process and to the book's engine."""
    med = pd.DataFrame(result["medians"])
    book = {(r.split, r.ranks): r.step_s for r in med.itertuples() if r.configuration.startswith("engine")}
    eqmax = eq.set_index(["configuration", "ranks"]).drop(columns="split").max(axis=1)
    med = med[med.configuration != "single"]
    return pd.DataFrame({
        "split": med.split, "ranks": med.ranks, "engine": med.configuration.map(lambda c: PEERS[c][2]),
        "max |diff| to one process": [float(eqmax.get((c, P), float("nan"))) for c, P in zip(med.configuration, med.ranks)],
        "socket kB per step": med.wire_bytes / 1e3, "transfers per step": med["transfers per step"],
        "ms per step": med.step_s * 1e3, "quartiles (ms)": [f"{a * 1e3:.1f}-{b * 1e3:.1f}" for a, b in zip(med.q25, med.q75)],
        "x one process": med.ratio_to_single,
        "x book engine": [s / book[(sp, P)] for s, sp, P in zip(med.step_s, med.split, med.ranks)],
    }).sort_values(["split", "ranks"], kind="stable").reset_index(drop=True)


def figure_peers(table: pd.DataFrame) -> alt.VConcatChart:
    """Top: ms per step against P per engine (quartile bars). Bottom: socket kB per step. One panel per split."""
    t = table.assign(lo=lambda d: d["quartiles (ms)"].str.split("-").str[0].astype(float),
                     hi=lambda d: d["quartiles (ms)"].str.split("-").str[1].astype(float))
    legend = alt.Legend(orient="bottom", columns=2, labelLimit=300)
    base = alt.Chart(t).encode(x=alt.X("ranks:O", title="ranks P", axis=alt.Axis(labelAngle=0)),
                               color=alt.Color("engine:N", title="engine", legend=legend), xOffset="engine:N")
    times = (base.mark_bar().encode(y=alt.Y("ms per step:Q", title="ms per step (median over rounds)"),
                                    tooltip=["engine", "ranks", alt.Tooltip("ms per step:Q", format=".1f"),
                                             "quartiles (ms)", alt.Tooltip("x book engine:Q", format=".2f")])
             + base.mark_rule(color="black").encode(y="lo:Q", y2="hi:Q"))
    kb = base.mark_bar().encode(y=alt.Y("socket kB per step:Q", title="kB written to sockets per step"),
                                tooltip=["engine", "ranks", alt.Tooltip("socket kB per step:Q", format=".0f"), "transfers per step"])
    split = alt.Column("split:N", title=None, header=alt.Header(labelExpr="datum.value + ' split'"))
    return alt.vconcat(
        times.properties(width=260, height=200).facet(column=split).properties(
            title="Step time: the book's engine against PyTorch's"),
        kb.properties(width=260, height=200).facet(column=split).properties(
            title="Bytes on the wire per training step (all ranks)"))


def better_engine_projection(result: dict, proj: dict) -> pd.DataFrame:
    """The many-server projection (:func:`projection`, at the fewest servers that hold the model)
    with, per split, the measured traffic of whichever engine was faster at the largest P here:
    its communication term is the model's (the book's engine pattern) times the measured ratio of
    socket bytes, faster engine / book engine (1 when the book's engine is the faster one)."""
    med = pd.DataFrame(result["medians"])
    P = int(med[med.configuration != "single"].ranks.max())
    at = med[med.ranks == P].set_index("configuration")
    at_need, need = proj["at_need"], proj["need"]
    comm = {"neuron-wise": float(at_need["neuron_comm_s"][0]),
            "layer": float(at_need["layer_wise_s"][0] - at_need["single_s"])}
    compute = {"neuron-wise": float(at_need["neuron_wise_s"][0]) - comm["neuron-wise"], "layer": float(at_need["single_s"])}
    rows = []
    for split, book in (("neuron-wise", "engine-count"), ("layer", "engine-layer")):
        cands = [c for c in at.index if c in PEERS and PEERS[c][0] == split]
        best = min(cands, key=lambda c: at.loc[c, "step_s"])
        factor = float(at.loc[best, "wire_bytes"] / at.loc[book, "wire_bytes"])
        rows.append({"split": split, "faster here (P = %d)" % P: PEERS[best][2],
                     "its socket bytes / book engine's": factor, "servers": need,
                     "projected s per step (model)": compute[split] + comm[split],
                     "projected s per step (faster engine's bytes)": compute[split] + comm[split] * factor,
                     "communication share": comm[split] * factor / (compute[split] + comm[split] * factor)})
    return pd.DataFrame(rows)
