"""The document's promises, decided on the chapter's measurements."""
from __future__ import annotations

import pandas as pd

from mpnn.deploy.plan import Plan
from mpnn.runtime import verdicts


def decide_scalability(plans: list[Plan], overhead: dict, *, max_memory_excess: float = 1.1,
                       refuted_above: float = 1.5) -> dict:
    """"Scalable deployment across servers", in two parts.

    *memory*: for every even neuron-wise plan (``count``), the busiest rank stores at most
    ``max_memory_excess`` times ``N / P`` parameters (exact counts); *time*: the even neuron-wise
    split on the smallest P (one core per rank) takes less time per step than one process (median
    per-round ratio below 1), not supported above ``refuted_above``, inconclusive between."""
    count = [p for p in plans if p.strategy == "count"]
    excess = {p.world_size: max(p.params_per_rank()) * p.world_size / sum(p.params_per_rank()) for p in count}
    memory = verdicts.as_verdict(all(e <= max_memory_excess for e in excess.values()))
    r = pd.DataFrame(overhead["ratios"])
    r = r[r.strategy == "count"].set_index("ranks")
    P0 = int(r.index.min())
    t = float(r.loc[P0, "median"])
    time_v = "supported" if t < 1.0 else "not supported" if t > refuted_above else "inconclusive"
    per_rank = {P: max(p.params_per_rank()) for P, p in ((p.world_size, p) for p in count)}
    measured = ("memory: parameters on the busiest rank of the even neuron-wise split "
                + ", ".join(f"P={P}: {n:,}" for P, n in sorted(per_rank.items()))
                + f" (at most {max(excess.values()):.3f} x N/P); time: that split on P={P0} takes {t:.1f}x the "
                  f"single-process step of the same round (median, quartiles {r.loc[P0, 'q25']:.1f}-{r.loc[P0, 'q75']:.1f})")
    return {"verdict": verdicts.combine({"memory": memory, "time": time_v}), "measured": measured,
            "memory": memory, "time": time_v, "excess": excess, "time_ratio": t, "P0": P0}


def decide_remote_invocation(eq_max: float, overhead: dict, *, tolerance: float = 1e-6,
                             acceptable: float = 1.5) -> dict:
    """"Remote invocation keeps the network's accuracy, at an acceptable overhead", in two parts.

    *accuracy*: every strategy and P equal one process to ``tolerance`` (float64); *overhead*: the
    cheapest split's median step is below ``acceptable`` times the single-process step of the same
    round (supported), above it not supported (a median of per-round ratios, as in
    :func:`decide_overhead`)."""
    accuracy = verdicts.as_verdict(eq_max <= tolerance)
    r = pd.DataFrame(overhead["ratios"])
    lo = r.loc[r["median"].idxmin()]
    cost = verdicts.as_verdict(float(lo["median"]) < acceptable)
    measured = (f"accuracy: largest |distributed - single process| {eq_max:.1e}; overhead: the cheapest split "
                f"({lo.strategy}, P={int(lo.ranks)}) takes {lo['median']:.1f}x the single-process step "
                f"(median per-round ratio; every split {lo['median']:.1f}x to {r['median'].max():.1f}x), "
                f"communication {overhead['comm_share']:.0%} of a split step")
    return {"verdict": verdicts.combine({"accuracy": accuracy, "overhead": cost}), "measured": measured,
            "accuracy": accuracy, "overhead": cost}


def verdict_time_words(overhead: dict, scalability: dict) -> dict[str, str]:
    """The verdict paragraph's words on time, from this run's :func:`decide_overhead` and
    :func:`decide_scalability` (another machine may decide them differently)."""
    over = {"supported": "on one host every split is slower than not splitting, because per-message latency "
                         "dominates a small network",
            "not supported": "on this host some split is faster than not splitting",
            }.get(overhead["verdict"], "on this host it is not decided whether every split is slower than not "
                                       "splitting")
    scal = {"supported": "and for time at this scale", "not supported": "but not for time at this scale",
            }.get(scalability["time"], "while for time it is not decided at this scale")
    return {"mpd_overhead_words": over, "mpd_scalability_time_words": scal}
