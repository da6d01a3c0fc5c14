"""Wall time (the timing cell): the timing claims' measurement, the speed-up at every threshold and the time
of each part of the network, all on one CPU thread."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from mpnn.early_exit import (
    EarlyExitNet,
    compiled_stage1_wins,
    early_exit_predict,
    exit_fractions,
    fused_stage1,
    normalised_entropy,
    predicted_speedup,
    stage1_kernel,
)
from mpnn.infra import determinism, native
from mpnn.infra.clock import interleaved_samples, median
from mpnn.runtime import verdicts
from mpnn.runtime.timing import paired_speedup


MIN_SPEEDUP = 1.0      # the torch path's speed-up must lie above this: skipping is faster at all
MAX_EFFICIENCY = 0.8   # ... and its measured / predicted speed-up below this: the FLOPs overstate the gain
REFUTED_EFFICIENCY = 1.0   # above this the time saving is at least what the FLOPs predict


def timing_sentence(wall: dict) -> str:
    """The verdict paragraph's words on wall time, from this run's :func:`wall_time_claim` (another CPU
    may decide its parts differently, so the sentence is generated, never typed)."""
    over, kernel = wall["parts"]["overstated"], wall["parts"]["kernel"]
    first = {"supported": "with the always-run block as a torch matrix product the FLOP count overstates the "
                          "wall-time gain",
             "not supported": "with the always-run block as a torch matrix product the wall-time gain matches what "
                              "the FLOP count predicts",
             }.get(over, "whether the FLOP count overstates the wall-time gain with the always-run block as a torch "
                         "matrix product is not decided on this machine")
    second = {"supported": "a compiled kernel for that block turns more of it into time",
              "not supported": "a compiled kernel for that block turns less of it into time",
              "inconclusive": "a compiled kernel for that block is not measurably better at turning it into time",
              }.get(kernel, "the compiled kernel for that block could not be built on this machine")
    return f"{first}, and {second}"


def wall_time_claim(model: EarlyExitNet, x: torch.Tensor, threshold: float, repeats: int = 31,
                    max_efficiency: float = MAX_EFFICIENCY, min_speedup: float = MIN_SPEEDUP) -> dict:
    """Timing claims: whether a FLOP saving becomes a time saving depends on how the always-run part runs.

    At ``threshold`` the plain network and the skipping inference are timed with block 1 (and exit 1) as
    the torch path (one GEMM over 6x6 windows per chunk, :func:`mpnn.early_exit.fused_stage1` under
    :func:`mpnn.infra.native.disabled`) and as the compiled per-image loop (:mod:`mpnn.early_exit.stage1_kernel`, forced with
    :func:`mpnn.infra.native.forced` whatever the book's measured choice of path is on this machine), all four
    interleaved (:func:`mpnn.infra.clock.interleaved_samples`), one CPU thread. Each path's speed-up is
    the median of its per-round ratios with a distribution-free 95% CI (:func:`mpnn.runtime.timing.median_ci`);
    efficiency = measured / FLOP-predicted speed-up. Three parts, each a verdict on its interval
    (:func:`mpnn.runtime.verdicts.from_interval`):

    * ``faster``: the torch path's speed-up CI lies above ``min_speedup`` (below it: not supported);
    * ``overstated``: the torch path's efficiency CI lies below ``max_efficiency`` (above
      :data:`REFUTED_EFFICIENCY`: not supported);
    * ``kernel``: the compiled path's speed-up CI lies above the torch path's (wholly below the torch
      path's lower end: not supported). Where the kernel cannot serve (no C++ compiler, another layout) it
      is not measured and this part is "not testable here".

    ``verdict`` (what a replay compares) combines the parts; ``measured`` has one text per part in ``said``.
    """
    model.eval()
    compiled = stage1_kernel.usable(x, model.stages[0][0], model.exits[0][-1])

    def torch_path(fn):
        def call():
            with native.disabled():
                return fn()
        return call

    def compiled_path(fn):     # the kernel on purpose, whatever the measured choice of the book's path is
        def call():
            with native.forced("early_exit.stage1", "compiled"):
                return fn()
        return call

    with determinism.cpu_threads(1, x.device), torch.no_grad():
        q = exit_fractions(model, x, threshold)
        predicted = float(predicted_speedup(model, q))
        fns = {("torch", "plain"): torch_path(lambda: model.forward_full(x)),
               ("torch", "early_exit"): torch_path(lambda: early_exit_predict(model, x, threshold))}
        if compiled:
            fns.update({("compiled", "plain"): compiled_path(lambda: model.forward_full(x)),
                        ("compiled", "early_exit"): compiled_path(lambda: early_exit_predict(model, x, threshold))})
        t = interleaved_samples(fns, repeats=repeats)
    paths = {}
    for path in ("torch", "compiled") if compiled else ("torch",):
        sp, lo, hi = paired_speedup(t[(path, "plain")], t[(path, "early_exit")])
        paths[path] = {"speedup": sp, "speedup_low": lo, "speedup_high": hi, "efficiency": sp / predicted,
                       "efficiency_low": lo / predicted, "efficiency_high": hi / predicted,
                       "plain_ms": 1e3 * median(t[(path, "plain")]), "early_exit_ms": 1e3 * median(t[(path, "early_exit")]),
                       "ratios": [a / b for a, b in zip(t[(path, "plain")], t[(path, "early_exit")])]}
    tp = paths["torch"]
    parts = {"faster": verdicts.from_interval(tp["speedup_low"], tp["speedup_high"], above=min_speedup),
             "overstated": verdicts.from_interval(tp["efficiency_low"], tp["efficiency_high"], below=max_efficiency,
                                                  refuted_above=REFUTED_EFFICIENCY)}
    if compiled:
        cp = paths["compiled"]
        parts["kernel"] = verdicts.from_interval(cp["speedup_low"], cp["speedup_high"], above=tp["speedup_high"],
                                                 refuted_below=tp["speedup_low"])
    else:
        parts["kernel"] = verdicts.UNDECIDED

    setting = (f"T={threshold:g} on {len(x)} images ({float(q[0]):.1%} leave at exit 1), FLOPs predict "
               f"{predicted:.2f}x; median of {repeats} interleaved rounds, 1 thread")

    def speed(r):
        return f"{r['speedup']:.2f}x (95% CI {r['speedup_low']:.2f}-{r['speedup_high']:.2f})"

    def efficiency(r):
        return f"{r['efficiency']:.2f} (95% CI {r['efficiency_low']:.2f}-{r['efficiency_high']:.2f})"

    said = {"faster": f"{setting}: with block 1 as a torch GEMM the speed-up over the plain network is {speed(tp)}",
            "overstated": f"{setting}: with block 1 as a torch GEMM measured / predicted speed-up = {efficiency(tp)}",
            "kernel": (f"{setting}: with block 1 as the compiled kernel {speed(paths['compiled'])}, "
                       f"{efficiency(paths['compiled'])} of the prediction; as a torch GEMM {speed(tp)}"
                       if compiled else "the compiled kernel cannot serve here (no C++ compiler or another layout)")}
    measured = "; ".join(f"{k}: {v}" for k, v in parts.items()) + ". " + " | ".join(said.values())
    return {"verdict": verdicts.combine({k: v for k, v in parts.items() if v != verdicts.UNDECIDED}),
            "parts": parts, "said": said, "measured": measured, "predicted": predicted,
            "exit1_fraction": float(q[0]), "paths": paths, "min_speedup": min_speedup,
            "max_efficiency": max_efficiency, "repeats": repeats}


def speedup_sweep(model: EarlyExitNet, x: torch.Tensor, thresholds: Sequence[float], repeats: int = 5) -> pd.DataFrame:
    """Measured and FLOP-predicted speed-up at every threshold on ``x``, one CPU thread.

    Every round times the plain network and the skipping inference at each threshold (order alternating);
    each threshold's speed-up is the median of its per-round ratios to the plain network, with a 95% CI.
    """
    model.eval()
    with determinism.cpu_threads(1, x.device), torch.no_grad():
        fns = {"plain": lambda: model.forward_full(x)}
        for i, t in enumerate(thresholds):
            fns[i] = (lambda t=t: early_exit_predict(model, x, t))
        times = interleaved_samples(fns, repeats=repeats)
        rows = []
        for i, t in enumerate(thresholds):
            q = exit_fractions(model, x, t)
            sp, lo, hi = paired_speedup(times["plain"], times[i])
            rows.append({"threshold": t, "exit 1 fraction": float(q[0]),
                         "predicted speed-up": float(predicted_speedup(model, q)), "measured speed-up": sp,
                         "low": lo, "high": hi, "plain time (ms)": 1e3 * median(times["plain"]),
                         "early-exit time (ms)": 1e3 * median(times[i])})
    return pd.DataFrame(rows)


def rows_reaching_block2(speed: pd.DataFrame, batch: int) -> list[int]:
    """Rows that reach block 2 at every threshold of :func:`speedup_sweep`'s table, on a batch of ``batch``."""
    return [int(round((1 - q) * batch)) for q in speed["exit 1 fraction"]]


def time_breakdown(model: EarlyExitNet, x: torch.Tensor, rows_left: Sequence[int], repeats: int = 5) -> dict:
    """Median wall time (s) of each part of the network on ``x`` (one thread), and of block 2 + exit-2 head
    on the first ``n`` rows for every ``n`` in ``rows_left`` (``{"parts": {...}, "block2_rows": {n: s},
    "block1_compiled": bool}``).

    Block 1 is the fused kernel both inference paths run (:func:`mpnn.early_exit.fused_stage1`, on the path
    the book takes on this machine: ``block1_compiled`` says whether that is the compiled loop); the exit-1
    head, the entropy and the gather are timed alone as modules (in ``early_exit_predict`` they run fused
    with block 1, chunk by chunk, :func:`mpnn.early_exit.fused_exit1`)."""
    model.eval()
    with determinism.cpu_threads(1, x.device), torch.no_grad():
        h1, logits1 = fused_stage1(model, x)  # channels-last, as the inference paths hand it to block 2
        keep = torch.rand(len(x), generator=torch.Generator().manual_seed(0)).to(x.device) < 0.5
        parts = interleaved_samples({
            "block 1": lambda: fused_stage1(model, x, with_exit=False),
            "exit-1 head": lambda: model.exits[0](h1),
            "entropy + gather half the rows": lambda: (normalised_entropy(logits1), h1[keep]),
            "block 2 + exit-2 head": lambda: model.exits[1](model.stages[1](h1)),
        }, repeats=repeats)
        rows = sorted({int(n) for n in rows_left if int(n) > 0})
        block2 = interleaved_samples({n: (lambda n=n: model.exits[1](model.stages[1](h1[:n]))) for n in rows},
                                     repeats=repeats) if rows else {}
        block1_compiled = compiled_stage1_wins(model, x)
    return {"parts": {k: median(v) for k, v in parts.items()}, "block2_rows": {n: median(v) for n, v in block2.items()},
            "block1_compiled": block1_compiled}
