"""Timing claims that hold on a shared machine: measured interleaved, recorded, and replayable.

A timing claim ("wall time follows FLOPs", "fewer messages win") is a *ratio measured in one run*:
the variants are called in turn (a, b, a, b, ...) so that a drifting machine load hits all of them
alike, and the median of the repeats is kept (:func:`mpnn.infra.clock.interleaved_samples`, the book's one timer).

A chapter decides such a claim with a module-level function of its experiment module
(``mpnn.experiments.<chapter>``) that takes only
torch-saveable inputs (models, tensors, numbers) and returns a dict with at least
``{"verdict": str, "measured": str}`` (a verdict of :mod:`mpnn.runtime.verdicts`, or
``"passed": bool`` for a criterion without an undecided zone), and calls it through :func:`measure`::

    res = timing.measure("early_exits", "wall-time-follows-flops", early_exits.wall_time_claim,
                         model=model, x=x, thresholds=[0.1, 0.2])
    run.claim("wall-time-follows-flops", ..., measured=res["measured"], verdict=res["verdict"], expected=...)

:func:`measure` runs the function and saves the function's name, its inputs and its result under
``_build/timing/<chapter>/<claim>.pt``. ``python -m mpnn timing --repeats 5 --load 1`` replays every
recorded claim several times in a row while other processes keep CPU cores busy
(:func:`replay_all`): the evidence that a claim asserted by `make test` does not hang on a quiet machine.
In a book run the runner executes the cells tagged ``timing`` alone (no other chapter computing).
"""
from __future__ import annotations

import importlib
import json
import math
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..infra import paths


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(median, low, high)``: the sample median and its distribution-free confidence interval.

    The interval is ``[x_(k), x_(n+1-k)]`` of the sorted values, with ``k`` the largest integer such that
    ``P(Binomial(n, 1/2) <= k - 1) <= (1 - confidence) / 2``: it covers the true median with probability at
    least ``confidence`` whatever the distribution (no normality assumed: timings have long right tails).
    It is scipy's ``quantile_test(x, p=0.5).confidence_interval`` (the same order statistics; the
    tests hold it to a binomial reference). With too few values for that (n < 6 at 95%, where
    scipy gives no interval) it is the range ``[min, max]``.
    """
    from scipy import stats
    x = sorted(float(v) for v in values)
    n = len(x)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    med = x[n // 2] if n % 2 else 0.5 * (x[n // 2 - 1] + x[n // 2])
    ci = stats.quantile_test(x, p=0.5).confidence_interval(confidence_level=confidence)
    if math.isnan(ci.low) or math.isnan(ci.high):
        return med, x[0], x[-1]
    return med, float(ci.low), float(ci.high)


def paired_speedup(slow: Sequence[float], fast: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median and distribution-free CI of the per-round ratios ``slow_i / fast_i`` (same round, same load)."""
    if len(slow) != len(fast):
        raise ValueError(f"need one time of each per round, got {len(slow)} and {len(fast)}")
    return median_ci([a / b for a, b in zip(slow, fast)], confidence)


def timing_dir() -> Path:
    return paths.build_dir() / "timing"


def _qualified_name(fn: Callable) -> str:
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in fn.__qualname__ or fn.__module__ == "__main__":
        raise ValueError(f"a timing claim must be a module-level function of an importable module, e.g. in mpnn "
                         f"(got {name}): the replay imports it by name")
    return name


def _resolve(name: str) -> Callable:
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def measure(chapter: str, claim: str, fn: Callable[..., dict], **inputs) -> dict:
    """Run the timing claim ``fn(**inputs)``, save what a replay needs, return its result dict."""
    name = _qualified_name(fn)
    result = _normalised(name, fn(**inputs))
    target = timing_dir() / chapter / f"{claim}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".pt.tmp")
    torch.save({"chapter": chapter, "claim": claim, "fn": name, "inputs": inputs, "result": result}, tmp)
    tmp.replace(target)
    return result


def measure_from(run, claim: str, fn: Callable[..., dict], *, needs: str = "default", **inputs) -> dict:
    """:func:`measure` (recorded for the replays) where ``run`` reaches the profile ``needs`` at which
    the claim is decided; below it the same function runs unrecorded, for the figures only."""
    if run.context.reaches(needs):
        return measure(run.chapter, claim, fn, **inputs)
    return _normalised(_qualified_name(fn), fn(**inputs))


def _normalised(name: str, result) -> dict:
    """The result with its ``verdict`` (from ``passed`` where the function gives a bool)."""
    from .verdicts import as_verdict
    if not isinstance(result, dict) or "measured" not in result or not ({"verdict", "passed"} & set(result)):
        raise TypeError(f"{name} must return a dict with 'measured' and 'verdict' (or 'passed'), got {result!r}")
    return result | {"verdict": as_verdict(result["verdict"] if "verdict" in result else result["passed"])}


def recorded() -> list[Path]:
    """Every recorded timing claim, sorted by chapter and claim."""
    return sorted(timing_dir().glob("*/*.pt"))


def _spin(stop) -> None:  # keeps one core busy until ``stop`` is set
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def replay_all(repeats: int = 5, load: int = 1, only: str | None = None, progress: bool = True) -> list[dict]:
    """Replay each recorded timing claim ``repeats`` times in a row with ``load`` busy processes.

    Returns one row per replay (chapter, claim, repetition, verdict, the recorded verdict, passed:
    whether they agree, measured) and writes them to
    ``_build/timing/robustness.json``. Raises ``FileNotFoundError`` when nothing was recorded yet.
    """
    files = [f for f in recorded() if only is None or only in f"{f.parent.name}/{f.stem}"]
    if not files:
        raise FileNotFoundError(f"no recorded timing claims under {timing_dir()}"
                                + (f" matching {only!r}" if only else "")
                                + ": run the chapters first (`python -m mpnn run --profile default`)")
    from tqdm.auto import tqdm
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    spinners = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(load)]
    rows: list[dict] = []
    try:
        for p in spinners:
            p.start()
        time.sleep(0.5 if load else 0.0)
        for f in tqdm(files, desc="timing claims", disable=not progress):
            spec = torch.load(f, weights_only=False)
            fn = _resolve(spec["fn"])
            recorded_verdict = _normalised(spec["fn"], spec["result"])["verdict"]
            for i in range(repeats):
                res = _normalised(spec["fn"], fn(**spec["inputs"]))
                rows.append({"chapter": spec["chapter"], "claim": spec["claim"], "repetition": i + 1,
                             "load_processes": load, "verdict": res["verdict"], "recorded": recorded_verdict,
                             "passed": res["verdict"] == recorded_verdict, "measured": res["measured"]})
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    out = timing_dir() / "robustness.json"
    out.write_text(json.dumps({"repeats": repeats, "load_processes": load, "rows": rows}, indent=2))
    return rows
