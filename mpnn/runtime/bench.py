"""Benchmark harness: warm-up, repetitions, medians, ratios, JSON.

A case is a function registered with :func:`case` in a module of :mod:`mpnn.benchmarks`. It takes
its size parameters and ``quick`` and returns ``{variant: callable}``; the first variant is the one
under test and every other variant is reported as a ratio against it
(``ratio = median(variant) / median(first)``, so ``ratio > 1`` means the first is faster).
Cases may also return ``(variants, extra)`` where ``extra`` is a dict of derived numbers stored
with the result. The extra ``flops`` is the useful work of one call: a number (every variant does
the same work) or ``{variant: flops}``; each row then gets ``flops`` and ``gflops`` (achieved
GFLOP/s = flops / median time / 1e9), which the Performance page divides by the dense reference.

The reference that all kernels are judged against is :func:`dense_mm_gflops`: the measured
GFLOP/s of a dense ``torch.mm`` on this machine. :func:`native_mm_gflops` measures the same product
on the book's own GEMM kernel (faster or slower than torch's BLAS depending on the CPU: the
Performance page says which, from the run). :func:`book_vs_torch` sets the path the book takes
against the fastest torch-only variant of the same computation.

Everything runs with a fixed number of CPU threads (``threads``, default 1): the book's kernels are
small, and on a shared machine multi-threaded timings of small ops are dominated by scheduling
(seen here: a loop of small matmuls 150x slower on 2 busy threads than on 1). Pass ``threads=N``
(``python -m mpnn bench --threads N``) to measure a multi-core setting.
"""
from __future__ import annotations

import ctypes
import importlib
import itertools
import json
import pkgutil
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..infra import native, paths
from ..infra.clock import interleaved_samples, median

REGISTRY: dict[str, "Case"] = {}


@dataclass
class Case:
    name: str
    group: str
    fn: Callable[..., Any]
    params: dict[str, list] = field(default_factory=dict)
    repeats: int = 5


def case(name: str, *, group: str, params: dict[str, list] | None = None, repeats: int = 5):
    """Register a benchmark case; ``params`` maps a parameter to the values to sweep."""
    def register(fn):
        if name in REGISTRY and REGISTRY[name].fn.__module__ != fn.__module__:
            raise ValueError(f"benchmark case {name!r} registered twice")
        REGISTRY[name] = Case(name, group, fn, dict(params or {}), repeats)
        return fn
    return register


def discover() -> dict[str, Case]:
    """Import every module of :mod:`mpnn.benchmarks` so their cases register."""
    from .. import benchmarks
    for module in pkgutil.iter_modules(benchmarks.__path__):
        importlib.import_module(f"{benchmarks.__name__}.{module.name}")
    return REGISTRY


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _summary(samples: list[float]) -> dict[str, float]:
    return {"median_s": median(samples), "min_s": min(samples), "max_s": max(samples), "repeats": len(samples)}


def time_callable(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1,
                  min_time: float = 0.0) -> dict[str, float]:
    """Median and spread of wall time over ``repeats`` samples after ``warmup`` calls (a call
    shorter than ``min_time`` is looped inside a sample; times are per call)."""
    return _summary(interleaved_samples({"fn": fn}, repeats=repeats, warmup=warmup, min_time=min_time)["fn"])


def time_variants(variants: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1,
                  min_time: float = 0.0) -> dict[str, dict[str, float]]:
    """:func:`time_callable` for every variant of a case, in interleaved rounds
    (:func:`mpnn.infra.clock.interleaved_samples`): a load that comes and goes slows every variant of a
    round alike, so the ratios between variants hold on a shared machine."""
    samples = interleaved_samples(variants, repeats=repeats, warmup=warmup, min_time=min_time)
    return {v: _summary(t) for v, t in samples.items()}


def steady_allocator() -> bool:
    """glibc only: never trim the heap and serve allocations below 1 GiB from it (``mallopt``), so that
    freed temporaries stay in the process. With glibc's dynamic thresholds, whether a call's tens of MB of
    temporaries are reused or unmapped and page-faulted in again depends on the process's history
    (measured: 0 or 21,000 minor faults per call of the same ToMe forward, 99 or 140 ms), which moved
    ratios by +-0.15 between runs. Process-wide; True if it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):          # not glibc
        return False


def dense_mm_gflops(n: int = 1024, repeats: int = 5, device: str = "cpu") -> dict[str, float]:
    """GFLOP/s of ``torch.mm`` on two n x n float32 matrices (2 n^3 FLOPs per product)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = time_callable(lambda: torch.mm(a, b), repeats=repeats, warmup=2, min_time=0.05)
    return {"n": n, "gflops": 2 * n ** 3 / t["median_s"] / 1e9, **t}


def native_mm_gflops(n: int = 1024, repeats: int = 5) -> dict[str, float] | None:
    """GFLOP/s of the book's own register-blocked GEMM (:mod:`mpnn.moe.fused`, the MoE's kernel) on the
    same n x n float32 product: a second yardstick, since torch's CPU BLAS does not reach the vector
    units' peak on every machine. None where the kernel cannot be built."""
    from ..moe import fused
    a, b = torch.randn(n, n), torch.randn(n, n)
    if not fused.usable(a):
        return None
    t = time_callable(lambda: fused.gemm(a, b), repeats=repeats, warmup=2, min_time=0.05)
    return {"n": n, "gflops": 2 * n ** 3 / t["median_s"] / 1e9, **t}


def run_case(c: Case, quick: bool) -> list[dict[str, Any]]:
    rows = []
    names = list(c.params)
    grid = list(itertools.product(*[c.params[k] for k in names])) or [()]
    for values in grid:
        kwargs = dict(zip(names, values))
        out = c.fn(**kwargs, quick=quick)
        variants, extra = (out if isinstance(out, tuple) else (out, {}))
        if not variants:
            raise ValueError(f"benchmark {c.name} returned no variants")
        # quick sizes: sub-millisecond calls looped to 5 ms per sample and 5 samples (with 2 unlooped
        # samples, MoE ratios at T=512 moved by +-40% from run to run on this shared machine)
        timings = time_variants(variants, repeats=5 if quick else c.repeats, warmup=1,
                                min_time=0.005 if quick else 0.02)
        first = next(iter(timings))
        roles = extra.pop("book_vs_torch", None)
        if roles and ({roles["book"], *roles["torch"]} - set(variants)):
            raise ValueError(f"benchmark {c.name}: book_vs_torch names unknown variants")
        flops = extra.pop("flops", None)
        if isinstance(flops, dict) and set(flops) - set(variants):
            raise ValueError(f"benchmark {c.name}: flops given for unknown variants {sorted(set(flops) - set(variants))}")
        for variant, t in timings.items():
            row = {"case": c.name, "group": c.group, **kwargs, "variant": variant, **t,
                   "ratio_to_" + first: t["median_s"] / timings[first]["median_s"], **extra}
            f = flops.get(variant) if isinstance(flops, dict) else flops
            if f is not None:
                row |= {"flops": float(f), "gflops": float(f) / t["median_s"] / 1e9}
            if roles:
                row["role"] = "book" if variant == roles["book"] else "torch-only" if variant in roles["torch"] else ""
            rows.append(row)
    return rows


def book_vs_torch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case and setting that names its roles (``extra["book_vs_torch"] = {"book": variant,
    "torch": [variants]}``): the book's variant (the path the book takes, compiled or not, as chosen
    on this machine) against the fastest torch-only variant of the same computation."""
    groups: dict[tuple, list[dict]] = {}
    skip = {"variant", "median_s", "min_s", "max_s", "repeats", "flops", "gflops", "role"}
    for r in rows:
        if r.get("role"):
            key = tuple(sorted((k, json.dumps(v, default=str)) for k, v in r.items()
                               if k not in skip and not k.startswith("ratio_to_")))
            groups.setdefault(key, []).append(r)
    out = []
    for members in groups.values():
        book = next((r for r in members if r["role"] == "book"), None)
        torch_rows = [r for r in members if r["role"] == "torch-only"]
        if book is None or not torch_rows:
            continue
        best = min(torch_rows, key=lambda r: r["median_s"])
        setting = {k: v for k, v in book.items() if k not in skip and not k.startswith("ratio_to_")
                   and k not in ("group",) and not isinstance(v, (dict, list))}
        out.append({**setting, "book_variant": book["variant"], "book_s": book["median_s"],
                    "fastest_torch_variant": best["variant"], "torch_s": best["median_s"],
                    "book_over_torch": book["median_s"] / best["median_s"]})
    return out


def run_all(quick: bool = False, only: str | None = None, progress: bool = True,
            threads: int = 1) -> dict[str, Any]:
    """Run every registered case (or those whose name contains ``only``) on ``threads`` CPU threads.

    The dense reference is measured before and after the cases: if the machine's speed changed
    meanwhile (another job started), the two disagree and the ratios of that run are suspect.
    """
    from ..infra.determinism import cpu_threads
    from .repro import git_commit
    cases = [c for c in discover().values() if only is None or only in c.name]
    if only is not None and not cases:
        raise ValueError(f"no benchmark case matches {only!r}; cases: {', '.join(sorted(REGISTRY))}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    from tqdm.auto import tqdm
    rows = []
    n = 512 if quick else 1024
    start = time.time()
    steady = steady_allocator()
    with cpu_threads(threads), native.fresh_choices():   # the machine to itself: measure the choices anew
        before = dense_mm_gflops(n)
        for c in tqdm(cases, desc="benchmarks", disable=not progress):
            rows.extend(run_case(c, quick))
        reference = dense_mm_gflops(n)
        reference_native = native_mm_gflops(n)
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": threads,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "git_commit": git_commit(),
        "settings": {"quick": quick, "only": only, "threads": threads},
        "steady_allocator": steady,
        "quick": quick,
        "cases": [c.name for c in cases],
        "seconds": round(time.time() - start, 1),
        "reference_before": before,
        "reference": reference,
        "reference_native": reference_native,
        "results": rows,
        "book_vs_torch": book_vs_torch(rows),
        "kernel_choices": _kernel_choices(),
    }


def _kernel_choices() -> list[dict[str, Any]]:
    """The compiled-or-torch choices the harness's process made, with every candidate's seconds."""
    from ..infra import native
    return native.report()["choices"]


def results_path() -> Path:
    return paths.build_dir() / "bench" / "results.json"


def write_results(results: dict[str, Any], path: Path | None = None) -> Path:
    path = path or results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(path)
    return path
