"""Latency (the timing cell) and predicted against measured speed-up: the timing claims' measurement at
inference, the speed-up of every setting, and its figure."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
import torch

from mpnn.infra import determinism
from mpnn.infra.clock import interleaved_samples, median
from mpnn.runtime import verdicts
from mpnn.runtime.timing import paired_speedup
from mpnn.tokens import TokenViT, keep_count, parse_setting, vit_flops

from .data import MERGING, RANDOM, REDUCTION, SELECTION


def timed_settings(settings: Sequence[tuple[str, dict]]) -> list[dict]:
    """The settings whose latency is measured: every reduced setting except the random control."""
    return [kw for m, kw in settings if m != RANDOM and (kw.get("rho", 1.0) < 1 or kw.get("r", 0) > 0)]


def latency_claim(model: TokenViT, x: torch.Tensor, rho: float = 1.0, r: int = 0, repeats: int = 31,
                  min_speedup: float = 1.05) -> dict:
    """Timing claim: keeping ``rho`` of the tokens (or merging ``r`` per block, ToMe) lowers the latency.

    ``repeats`` rounds of the all-token model and the reduced one on ``x``, interleaved
    (:func:`mpnn.infra.clock.interleaved_samples`), on one CPU thread. The speed-up is the median of the
    per-round ratios with its distribution-free 95% CI (:func:`mpnn.runtime.timing.median_ci`); the efficiency
    is speed-up / FLOP-predicted speed-up. ``verdict`` on "the reduced model is faster": supported when the
    speed-up CI lies above ``min_speedup`` (a saving beyond timing noise), not supported when it lies below 1
    (no saving), inconclusive otherwise.
    """
    model.eval()
    predicted = vit_flops(model.config) / vit_flops(model.config, rho=rho, r=r)
    with determinism.cpu_threads(1, x.device), torch.no_grad():
        t = interleaved_samples({"all": lambda: model(x), "fewer": lambda: model(x, rho=rho, r=r)}, repeats=repeats)
    sp, lo, hi = paired_speedup(t["all"], t["fewer"])
    eff, eff_lo, eff_hi = sp / predicted, lo / predicted, hi / predicted
    verdict = verdicts.from_interval(lo, hi, above=min_speedup, refuted_below=1.0)
    n = model.config.n_tokens
    what = f"ToMe r={r}" if r else f"rho={rho:g} ({keep_count(n, rho)} of {n} tokens)"
    measured = (f"{what} on {len(x)} images: measured speed-up {sp:.2f}x (95% CI "
                f"{lo:.2f}-{hi:.2f}, median of {repeats} interleaved rounds, 1 thread) against {predicted:.2f}x "
                f"predicted by FLOPs: {eff:.2f} (95% CI {eff_lo:.2f}-{eff_hi:.2f}) of the prediction")
    return {"verdict": verdict, "measured": measured, "speedup": sp, "speedup_low": lo, "speedup_high": hi,
            "predicted": predicted, "efficiency": eff, "efficiency_low": eff_lo, "efficiency_high": eff_hi,
            "all_ms": 1e3 * median(t["all"]), "fewer_ms": 1e3 * median(t["fewer"]),
            "ratios": [a / b for a, b in zip(t["all"], t["fewer"])], "min_speedup": min_speedup, "repeats": repeats}


def latency_sweep(model: TokenViT, x: torch.Tensor, settings: Sequence[dict], repeats: int = 5) -> pd.DataFrame:
    """Measured and FLOP-predicted speed-up of every setting against all tokens on ``x``, one CPU thread
    (each round times all of them, order alternating; median of the per-round ratios with a 95% CI)."""
    parsed = [parse_setting(kw) for kw in settings]
    model.eval()
    with determinism.cpu_threads(1, x.device), torch.no_grad():
        fns = {"all": lambda: model(x)}
        for j, (rho, r, sel) in enumerate(parsed):
            fns[j] = (lambda rho=rho, r=r, sel=sel: model(x, rho=rho, r=r, selector=sel))
        t = interleaved_samples(fns, repeats=repeats)
    rows = []
    for j, (rho, r, sel) in enumerate(parsed):
        sp, lo, hi = paired_speedup(t["all"], t[j])
        rows.append({"rho": rho, "r": r, "selector": sel, "measured speed-up": sp, "low": lo, "high": hi,
                     "predicted speed-up": vit_flops(model.config) / vit_flops(model.config, rho=rho, r=r),
                     "latency (ms)": 1e3 * median(t[j]), "all-token latency (ms)": 1e3 * median(t["all"])})
    return pd.DataFrame(rows)


def speedup_table(speed: pd.DataFrame) -> pd.DataFrame:
    """:func:`latency_sweep`'s table with the method of every row and measured / predicted speed-up."""
    speed = speed.assign(method=np.where(speed["r"] > 0, MERGING, SELECTION))
    speed["measured / predicted"] = speed["measured speed-up"] / speed["predicted speed-up"]
    return speed


def figure_measured_vs_predicted(speed: pd.DataFrame) -> alt.LayerChart:
    """Measured speed-up (95% CI) against the FLOP-predicted one per setting, with the diagonal (equal)."""
    diagonal = alt.Chart(pd.DataFrame({"x": [1, speed["predicted speed-up"].max()]})).mark_line(
        strokeDash=[4, 4], color="grey").encode(x="x:Q", y="x:Q")
    points = alt.Chart(speed).encode(x=alt.X("predicted speed-up:Q", title="predicted speed-up (FLOPs)"),
                                     color=alt.Color("method:N", title=REDUCTION))
    bars = points.mark_errorbar().encode(y=alt.Y("low:Q", title="measured speed-up"), y2="high:Q")
    marks = points.mark_point(filled=True).encode(y="measured speed-up:Q", tooltip=[
        "method", "rho", "r", "predicted speed-up", alt.Tooltip("measured speed-up:Q", format=".2f")])
    return (diagonal + bars + marks).properties(title="Measured vs FLOP-predicted speed-up (dashed: equal)",
                                                width=400, height=280)
