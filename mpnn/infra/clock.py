"""The book's one timer: interleaved rounds of wall-clock samples.

Every timing in the book (benchmarks, timing claims, the measured kernel choices of
:mod:`mpnn.infra.native`) calls :func:`interleaved_samples`. Each round calls every callable, in the
given order on even rounds and reversed on odd ones (a b, b a, ...), so that a drifting machine
load and any first-/second-call effect hit all of them alike, and round ``i`` of two callables
gives one paired ratio. A call shorter than ``min_time`` is looped inside its sample, so that timer
resolution does not dominate; samples are seconds per call. CUDA is synchronised around samples.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Hashable, Sequence

__all__ = ["interleaved_samples", "median"]


def _sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_samples(fns: dict[Hashable, Callable[[], Any]], *, repeats: int, warmup: int = 1,
                        min_time: float = 0.0, once: dict[Hashable, float] | None = None) -> dict[Hashable, list[float]]:
    """Seconds per call of every callable in ``fns``, one sample per round, ``repeats`` rounds.

    How many calls make a sample of ``min_time`` is read from the last warm-up call, or from
    ``once`` (seconds of one call each, measured by the caller), else from one extra call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    last = dict(once or {})
    for i in range(warmup):
        for k in names:
            _sync()
            t0 = time.perf_counter()
            fns[k]()
            _sync()
            if i == warmup - 1:
                last[k] = time.perf_counter() - t0
    inner = dict.fromkeys(names, 1)
    if min_time > 0:
        for k in names:
            if k not in last:
                _sync()
                t0 = time.perf_counter()
                fns[k]()
                _sync()
                last[k] = time.perf_counter() - t0
            inner[k] = max(1, int(min_time / max(last[k], 1e-7)))
    times: dict[Hashable, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            _sync()
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                fns[k]()
            _sync()
            times[k].append((time.perf_counter() - t0) / inner[k])
    return times


def median(values: Sequence[float]) -> float:
    """The sample median (the mean of the two middle values for an even count)."""
    v = sorted(values)
    if not v:
        raise ValueError("median of no values")
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2
