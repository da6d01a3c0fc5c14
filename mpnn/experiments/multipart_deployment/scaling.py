"""Metadata and coordination from 2 to many servers: counted, measured and simulated."""
from __future__ import annotations

import os

import altair as alt
import numpy as np
import pandas as pd

from mpnn.runtime import verdicts


def metadata_table(sizes, Ps, strategies=("count", "ids")) -> pd.DataFrame:
    """:func:`mpnn.deploy.scaling.metadata_scaling` over ``Ps`` (no processes)."""
    from mpnn.deploy.scaling import metadata_scaling
    df = pd.DataFrame(metadata_scaling(sizes, Ps, strategies, repeats=1))
    df.attrs["max_full_split"] = min(sizes[1:-1]) if len(sizes) > 2 else sizes[-1]
    return df


def decide_metadata(meta: pd.DataFrame, *, low: float, high: float) -> dict:
    """Log-log slope of the count plan's total metadata entries over all servers against P, over
    the upper half of the P that split every layer but the output (P <= the narrowest hidden
    width, given as ``meta.attrs["max_full_split"]`` or all P); holds when it lies in [low, high]
    (quadratic growth: 2, linear: 1)."""
    c = meta[meta.strategy == "count"].sort_values("servers")
    c = c[c.servers <= meta.attrs.get("max_full_split", c.servers.max())]
    tail = c[c.servers >= c.servers.median()]
    slope = float(np.polyfit(np.log(tail.servers), np.log(tail.entries_total), 1)[0])
    slope_rank = float(np.polyfit(np.log(tail.servers), np.log(tail.entries_max), 1)[0])
    big = c.iloc[-1]
    passed = bool(low <= slope <= high)
    measured = (f"count plan, P = {int(tail.servers.min())}..{int(big.servers)}: metadata entries per server grow with slope "
                f"{slope_rank:.2f} (log-log), over all servers {slope:.2f} (claim in [{low:g}, {high:g}]); at P = {int(big.servers)}: "
                f"{int(big.entries_max)} entries ({big.meta_bytes_max / 1e3:.0f} kB JSON) on the busiest server, "
                f"{big.meta_bytes_total / 1e6:.1f} MB over all, built in {(big.plan_s + big.metadata_s) * 1e3:.0f} ms")
    return {"verdict": verdicts.as_verdict(passed), "measured": measured, "slope_total": slope, "slope_rank": slope_rank}


def coordination(Ps, *, warmup: int, repeats: int, pings: int, timeout_s: float = 300.0) -> dict:
    """Per-step coordination (barrier + scalar all-reduce) of groups of P = ``Ps`` ranks on
    127.0.0.1 (one group of ``max(Ps)`` processes, interleaved), and one-way small-message times."""
    from mpnn.deploy import netns
    res = netns.run_group({"kind": "coordination", "Ps": list(Ps), "warmup": warmup, "repeats": repeats,
                           "pings": pings}, max(Ps), net=None, timeout_s=timeout_s)
    raw = pd.DataFrame([dict(r, rank=k) for k, p in enumerate(res) for r in p["rows"]])
    per = raw.groupby(["P", "round"]).agg(barrier_s=("barrier_s", "max"), allreduce_s=("allreduce_s", "max")).reset_index()
    per["coordination_s"] = per.barrier_s + per.allreduce_s
    return {"rows": per, "one_way_s": list(res[0]["one_way_s"])}


def coordination_claim(Ps, *, warmup: int, repeats: int, pings: int, min_ratio: float, timeout_s: float = 300.0) -> dict:
    """Timed by :func:`coordination`; holds when the median per-step coordination at ``max(Ps)``
    exceeds ``min_ratio`` times that at ``min(Ps)`` (medians over interleaved rounds)."""
    co = coordination(Ps, warmup=warmup, repeats=repeats, pings=pings, timeout_s=timeout_s)
    med = co["rows"].groupby("P").coordination_s.median()
    ratio = float(med[max(Ps)] / med[min(Ps)])
    ow = np.median(co["one_way_s"])
    measured = (f"barrier + scalar all-reduce per step, median over {repeats} interleaved rounds: "
                + ", ".join(f"P={P}: {med[P] * 1e3:.2f} ms" for P in med.index)
                + f" ({ratio:.1f}x from P={min(Ps)} to {max(Ps)}; claim > {min_ratio:g}x); one-way small message "
                  f"{ow * 1e6:.0f} us (median of {len(co['one_way_s'])})")
    # supported: grows by more than min_ratio; not supported: does not grow at all
    verdict = "supported" if ratio > min_ratio else "not supported" if ratio < 1.0 else "inconclusive"
    return {"verdict": verdict, "measured": measured, "ratio": ratio, "rows": co["rows"],
            "one_way_s": co["one_way_s"], "median_s": {int(P): float(v) for P, v in med.items()}}


def simulation(sim_Ps, coord: dict, *, sizes, batch_size: int, compute_s: float = 0.0, beta_Bps: float = 125e6,
               seed: int = 0) -> pd.DataFrame:
    """:func:`mpnn.deploy.scaling.simulate` for the chapter's network, calibrated on the measurement:
    the one-way times of the 2-rank ping-pongs (back to back, so the ranks are awake) get a constant
    ``shift`` per message so that the simulated coordination at the smallest measured P equals the
    measured median there (a step boundary also pays for waking the ranks); a mean-width float32
    slice per message, ``beta_Bps`` per link. The ``shift`` (seconds) is in ``attrs``."""
    from mpnn.deploy.scaling import SimAssumptions, simulate
    a = SimAssumptions(layers=len(sizes) - 1, payload_bytes=batch_size * 4 * float(np.mean(sizes[1:])), beta_Bps=beta_Bps,
                       compute_s=compute_s)
    raw = np.asarray(coord["one_way_s"], dtype=float)
    P0 = min(coord["median_s"])
    msgs = 3 * max(1, int(np.ceil(np.log2(P0))))          # barrier + all-reduce: 3 message rounds per log2 P
    shift = max(0.0, (coord["median_s"][P0] - simulate([P0], raw, a, seed=seed)[0]["coordination_s"]) / msgs)
    df = pd.DataFrame(simulate(sim_Ps, raw + shift, a, seed=seed))
    df.attrs["shift"], df.attrs["calibrated_at"] = float(shift), int(P0)
    return df


def figure_scaling(meta: pd.DataFrame, coord: pd.DataFrame, sim: pd.DataFrame) -> alt.HConcatChart:
    """Left: metadata entries (busiest server, all servers) against P. Right: per-step coordination,
    measured (points, P <= 8) and simulated (line, to hundreds of servers)."""
    m = meta.melt(["strategy", "servers"], ["entries_max", "entries_total"], var_name="which", value_name="entries")
    m["which"] = m.strategy + ": " + m.which.map({"entries_max": "busiest server", "entries_total": "all servers"})
    left = alt.Chart(m).mark_line(point=True).encode(
        x=alt.X("servers:Q", scale=alt.Scale(type="log"), title="servers P"),
        y=alt.Y("entries:Q", scale=alt.Scale(type="log"), title="metadata entries"),
        color=alt.Color("which:N", title=None, legend=alt.Legend(orient="bottom", columns=2, labelLimit=300)),
        tooltip=["which", "servers", "entries"]).properties(width=250, height=240, title="Metadata size")
    measured = coord.groupby("P").coordination_s.median().reset_index().assign(ms=lambda d: d.coordination_s * 1e3,
                                                                               source=f"measured (127.0.0.1, {os.cpu_count()} cores)")
    simulated = sim.assign(ms=sim.coordination_s * 1e3, P=sim.servers, source="simulated (one core per server)")
    both = pd.concat([measured[["P", "ms", "source"]], simulated[["P", "ms", "source"]]])
    right = alt.Chart(both).mark_line(point=True).encode(
        x=alt.X("P:Q", scale=alt.Scale(type="log"), title="servers P"),
        y=alt.Y("ms:Q", scale=alt.Scale(type="log"), title="ms per step (barrier + all-reduce)"),
        color=alt.Color("source:N", title=None, legend=alt.Legend(orient="bottom", columns=1, labelLimit=300)),
        tooltip=["source", "P", alt.Tooltip("ms:Q", format=".2f")],
    ).properties(width=250, height=240, title="Per-step coordination")
    return alt.hconcat(left, right).resolve_scale(color="independent")


def simulation_summary(sim: pd.DataFrame, coord: dict, at: int) -> str:
    """The projection at ``at`` servers, and the simulation against the measurement at the largest measured P."""
    row = sim.set_index("servers").loc[at]
    Pm = max(coord["median_s"])
    sm = sim.set_index("servers").coordination_s
    near = sm.loc[sm.index[sm.index <= Pm].max()]
    return (f"projection (one-way message times bootstrapped from {len(coord['one_way_s'])} measured pings, plus "
            f"{sim.attrs.get('shift', 0.0) * 1e3:.2f} ms each to match the measured P = {sim.attrs.get('calibrated_at', 2)} step boundary; one core per "
            f"server, no payload contention): at P = {at} a step's barrier + all-reduce takes {row.coordination_s * 1e3:.1f} ms, "
            f"{row.coordination_share:.0%} of a {row.step_s * 1e3:.0f} ms step whose exchanges take {row.exchange_s * 1e3:.0f} ms; "
            f"at P = {Pm} the simulation gives {near * 1e3:.2f} ms against {coord['median_s'][Pm] * 1e3:.2f} ms measured on "
            f"{Pm} processes on {os.cpu_count()} shared cores")
