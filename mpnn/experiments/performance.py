"""The performance page: the benchmark harness's results (``_build/bench/results.json``) as tables and charts.

The page never runs the harness itself: ``python -m mpnn run performance`` (and so ``make book``,
``make test``, ``make bench``) runs it first, alone, with the page's parameters ``quick``, ``only``
and ``threads``; ``python -m mpnn bench`` writes the same file.
"""
from __future__ import annotations

import json

import altair as alt
import pandas as pd

from mpnn.runtime import bench

TIMING_COLUMNS = ("case", "group", "variant", "median_s", "min_s", "max_s", "repeats", "inner")


def load_results(*, quick: bool, only: str, threads: int) -> dict:
    """The harness results, checked to be the ones this page's parameters ask for."""
    path = bench.results_path()
    if not path.exists():
        raise FileNotFoundError(f"no benchmark results at {path}: run `python -m mpnn run performance` "
                                f"(it runs the harness first) or `python -m mpnn bench`")
    results = json.loads(path.read_text())
    asked = {"quick": quick, "only": only or None, "threads": threads}
    got = results.get("settings", {})
    if got != asked:
        raise ValueError(f"{path} was measured with {got}, this page asks for {asked}: rerun "
                         f"`python -m mpnn run performance` with the same parameters")
    return results


def results_frame(results: dict) -> pd.DataFrame:
    """One row per (case, sizes, variant); list-valued extras joined as text."""
    rows = pd.DataFrame(results["results"])
    return rows.map(lambda v: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v)


def case_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader needs for one group: case, its sizes, variant, median time, ratios."""
    frame = frame.dropna(axis=1, how="all").copy()
    frame["median_s"] = frame["median_s"].map(lambda s: f"{s * 1e3:.3f} ms")
    ratio_cols = [c for c in frame.columns if c.startswith("ratio_to_")]
    size_cols = [c for c in frame.columns if c not in (*TIMING_COLUMNS, *ratio_cols)]
    return frame[["case", *size_cols, "variant", "median_s", *ratio_cols]]


def missing_cases(results: dict, rows: pd.DataFrame) -> list[str]:
    """Cases the harness was asked to run that have no measurement with a positive median."""
    ok = set(rows.loc[rows["median_s"] > 0, "case"]) if len(rows) else set()
    return [c for c in results.get("cases", []) if c not in ok]


def reference_drift(results: dict) -> float:
    """max/min of the dense reference's GFLOP/s measured before and after the cases (1 = steady)."""
    a, b = results["reference_before"]["gflops"], results["reference"]["gflops"]
    return max(a, b) / min(a, b)


def figure_case(case: str, frame: pd.DataFrame) -> alt.Chart:
    """Median time of every variant (log scale), grouped by the case's swept size if it has one."""
    frame = frame.dropna(axis=1, how="all").copy()
    ratio = [c for c in frame.columns if c.startswith("ratio_to_") and frame[c].notna().any()][0]
    sizes = [c for c in frame.columns if c not in TIMING_COLUMNS and not c.startswith("ratio_to_")
             and frame[c].nunique() > 1 and pd.api.types.is_numeric_dtype(frame[c])]
    frame["time (ms)"] = frame["median_s"] * 1e3
    x = alt.X(f"{sizes[0]}:O") if sizes else alt.X("variant:N")
    return alt.Chart(frame).mark_bar().encode(
        x=x, xOffset="variant:N", y=alt.Y("time (ms):Q", scale=alt.Scale(type="log")), color="variant:N",
        tooltip=["variant", "time (ms)", ratio] + sizes).properties(title=case, width=260, height=180)


def figure_cases(rows: pd.DataFrame) -> list[alt.HConcatChart]:
    """Every case's chart, two per row."""
    charts = [figure_case(name, frame) for name, frame in rows.groupby("case", sort=False)]
    return [alt.hconcat(*charts[i:i + 2]).resolve_scale(color="independent") for i in range(0, len(charts), 2)]


def limit_table(results: dict) -> pd.DataFrame:
    """Achieved GFLOP/s of every variant that states its FLOPs, as a fraction of the dense
    ``torch.mm`` reference measured in the same run, for the run's sizes and (if present) the quick ones."""
    runs = [("quick sizes" if results["quick"] else "default sizes", results)]
    if "quick_run" in results:
        runs.append(("quick sizes", results["quick_run"]))
    frames = []
    for label, run in runs:
        rows = pd.DataFrame(run["results"])
        if "gflops" not in rows:
            continue
        rows = rows[rows["gflops"].notna()].copy()
        sizes = [c for c in rows.columns if c not in (*TIMING_COLUMNS, "flops", "gflops")
                 and not c.startswith("ratio_to_") and rows[c].map(lambda v: isinstance(v, (int, float))).all()
                 and c not in ("predicted_speedup", "padding", "active_gflop_fwd")]
        rows["setting"] = rows.apply(lambda r: ", ".join(f"{c}={r[c]:g}" for c in sizes
                                                         if pd.notna(r[c]) and c in r), axis=1)
        rows["sizes"] = label
        rows["fraction of torch.mm"] = rows["gflops"] / run["reference"]["gflops"]
        frames.append(rows[["case", "setting", "variant", "sizes", "gflops", "fraction of torch.mm"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["case", "setting", "variant", "sizes", "gflops", "fraction of torch.mm"])


def native_over_torch(results: dict) -> float | None:
    """GFLOP/s of the book's own GEMM on the reference product over torch.mm's, same run (None if absent)."""
    native = results.get("reference_native")
    return None if not native else native["gflops"] / results["reference"]["gflops"]


def figure_machine_limit(table: pd.DataFrame, results: dict | None = None) -> alt.LayerChart:
    """One chart: every kernel's achieved GFLOP/s as a fraction of the dense reference (1 = the first rule;
    the second rule, if ``results`` has it, is the book's own GEMM on the same product)."""
    table = table.assign(kernel=table["case"] + " [" + table["setting"] + "] " + table["variant"])
    points = alt.Chart(table).mark_point(filled=True, size=60).encode(
        x=alt.X("fraction of torch.mm:Q", scale=alt.Scale(type="log"), title="achieved GFLOP/s / torch.mm GFLOP/s"),
        y=alt.Y("kernel:N", sort=None, title=None), color=alt.Color("sizes:N", title="sizes"),
        shape="sizes:N", tooltip=["case", "setting", "variant", "sizes", alt.Tooltip("gflops:Q", format=".2f"),
                                  alt.Tooltip("fraction of torch.mm:Q", format=".2f")])
    rules = pd.DataFrame({"x": [1.0], "reference": ["torch.mm"]})
    native = native_over_torch(results) if results is not None else None
    if native is not None:
        rules = pd.concat([rules, pd.DataFrame({"x": [native], "reference": ["the book's GEMM (mpnn.moe.fused)"]})])
    rule = alt.Chart(rules).mark_rule(strokeDash=[5, 3], color="gray").encode(
        x="x:Q", tooltip=["reference", alt.Tooltip("x:Q", format=".2f")])
    return (points + rule).properties(width=420, height=max(120, 14 * table["kernel"].nunique()),
                                      title="how close each kernel gets to the machine (dense torch.mm = 1)")
