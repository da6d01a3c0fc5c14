"""The performance page: the benchmark harness's results (``_build/bench/results.json``) as tables and charts.

The page never runs the harness itself: ``python -m mpnn run performance`` (and so ``make book``,
``make test``, ``make bench``) runs it first, alone, with the page's parameters ``quick``, ``only``
and ``threads``; ``python -m mpnn bench`` writes the same file.
"""
from __future__ import annotations

import json
import math

import altair as alt
import pandas as pd

from mpnn.runtime import bench

TIMING_COLUMNS = ("case", "group", "variant", "median_s", "min_s", "max_s", "repeats")


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


PARAMETER_WORDS = {"k": "experts per token k", "n_experts": "experts", "kind": "kind of layer",
                   "replicas": "models trained together", "exit_fraction": "share of the batch leaving early",
                   "world_size": "ranks", "rho": "share of tokens kept", "r": "tokens merged per block",
                   "n": "samples"}


def parameter_words(name: str) -> str:
    """A swept parameter's name as words, for an axis title."""
    return PARAMETER_WORDS.get(name, name.replace("_", " "))


def figure_case(case: str, frame: pd.DataFrame, parameters: list[str] | None = None) -> alt.Chart:
    """Median time of every variant (log scale, bars from a power of ten below the fastest), grouped by
    the case's swept sizes (``parameters``: the case's parameter names; default: none)."""
    frame = frame.dropna(axis=1, how="all").copy()
    ratio = [c for c in frame.columns if c.startswith("ratio_to_") and frame[c].notna().any()][0]
    sizes = [c for c in (parameters or []) if c in frame.columns and frame[c].nunique() > 1]
    frame["time (ms)"] = frame["median_s"] * 1e3
    if sizes:
        frame["setting"] = frame[sizes].apply(lambda r: ", ".join(f"{v:g}" if pd.api.types.is_number(v) else str(v)
                                                                  for v in r), axis=1)
        x = alt.X("setting:O", sort=None, title=", ".join(parameter_words(c) for c in sizes),
                  axis=alt.Axis(labelAngle=0 if frame["setting"].nunique() <= 4 else -40))
    else:
        x = alt.X("variant:N", title=None, axis=alt.Axis(labels=False, ticks=False))
    floor = 10.0 ** math.floor(math.log10(frame["time (ms)"].min()))
    top = 10.0 ** math.ceil(math.log10(frame["time (ms)"].max()))
    order = list(dict.fromkeys(frame["variant"]))           # the book's variant first, as the harness ran them
    return alt.Chart(frame).mark_bar().encode(
        x=x, xOffset=alt.XOffset("variant:N", sort=order),
        y=alt.Y("time (ms):Q", scale=alt.Scale(type="log", domain=[floor, top]), title="median time per call (ms)"),
        y2=alt.datum(floor),
        color=alt.Color("variant:N", sort=order, title="variant",
                        legend=alt.Legend(orient="bottom", columns=1, labelLimit=240)),
        tooltip=["variant", alt.Tooltip("time (ms):Q", format=".3g"), alt.Tooltip(f"{ratio}:Q", format=".2f")] + sizes,
    ).properties(title=case, width=250, height=180)


def figure_cases(rows: pd.DataFrame, parameters: dict[str, list[str]] | None = None
                 ) -> list[tuple[list[str], alt.HConcatChart]]:
    """Every case's chart, two per row: ``(the row's case names, the row's chart)``; ``parameters``
    names each case's swept sizes (:func:`case_parameters`)."""
    cases = list(rows.groupby("case", sort=False))
    charts = [figure_case(name, frame, (parameters or {}).get(name)) for name, frame in cases]
    return [([name for name, _ in cases[i:i + 2]],
             alt.hconcat(*charts[i:i + 2]).resolve_scale(color="independent", xOffset="independent"))
            for i in range(0, len(charts), 2)]


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
        rows["setting"] = rows.apply(lambda r, sizes=sizes: ", ".join(f"{c}={r[c]:g}" for c in sizes
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
    # (a field name with a dot reads as a nested field in Vega-Lite: the chart's copy names it "fraction")
    table = table.assign(kernel=table["case"] + ": " + table["variant"] + " [" + table["setting"] + "]",
                         fraction=table["fraction of torch.mm"])
    points = alt.Chart(table.drop(columns="fraction of torch.mm")).mark_point(filled=True, size=60).encode(
        x=alt.X("fraction:Q", scale=alt.Scale(type="log"), title="achieved GFLOP/s / torch.mm GFLOP/s"),
        y=alt.Y("kernel:N", sort=None, title=None, axis=alt.Axis(labelLimit=260)),
        color=alt.Color("sizes:N", title="sizes"),
        shape=alt.Shape("sizes:N", title="sizes"),
        tooltip=["case", "setting", "variant", "sizes", alt.Tooltip("gflops:Q", title="GFLOP/s", format=".2f"),
                 alt.Tooltip("fraction:Q", title="fraction of torch.mm", format=".2f")])
    rules = pd.DataFrame({"x": [1.0], "reference": ["torch.mm"]})
    native = native_over_torch(results) if results is not None else None
    if native is not None:
        rules = pd.concat([rules, pd.DataFrame({"x": [native], "reference": ["the book's GEMM (mpnn.moe.fused)"]})])
    rule = alt.Chart(rules).mark_rule(strokeDash=[5, 3], color="gray").encode(
        x="x:Q", tooltip=["reference", alt.Tooltip("x:Q", format=".2f")])
    return (points + rule).properties(width=320, height=max(120, 14 * table["kernel"].nunique()),
                                      title="how close each kernel gets to the machine (dense torch.mm = 1)")


def first_variants(rows: pd.DataFrame) -> dict[str, str]:
    """Case -> its first variant (the book's implementation; every ratio is to it)."""
    return {case: frame["variant"].iloc[0] for case, frame in rows.groupby("case", sort=False)}


def case_parameters() -> dict[str, list[str]]:
    """Case -> the names of the sizes it sweeps, as the benchmark modules register them."""
    return {name: list(c.params) for name, c in bench.discover().items()}


def comparisons(rows: pd.DataFrame, parameters: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One row per (case, sizes, other variant): how many times the book's variant is faster than it
    (``speedup`` = the other's median time / the book's; below 1 the other variant is faster).
    ``parameters`` names each case's swept sizes (default: every column that varies within the case)."""
    out = []
    for case, frame in rows.groupby("case", sort=False):
        first = frame["variant"].iloc[0]
        ratio = "ratio_to_" + first
        names = (parameters or {}).get(case)
        if names is None:
            names = [c for c in frame.columns if c not in (*TIMING_COLUMNS, "flops", "gflops")
                     and not c.startswith("ratio_to_") and frame[c].nunique() > 1]
        for _, r in frame[frame["variant"] != first].iterrows():
            setting = ", ".join(f"{k}={r[k]:g}" if isinstance(r[k], (int, float)) else f"{k}={r[k]}"
                                for k in names if k in r and pd.notna(r[k]))
            out.append({"case": case, "setting": setting, "book's variant": first,
                        "other variant": r["variant"], "speedup": float(r[ratio])})
    return pd.DataFrame(out, columns=["case", "setting", "book's variant", "other variant", "speedup"])


def _x(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def comparisons_text(table: pd.DataFrame) -> str:
    """What the ratios say, in words written from this run: how often the book's variant wins, by how
    much at most, and where another variant is faster."""
    if not len(table):
        return "No case timed more than one variant in this run."
    faster = table[table["speedup"] > 1]
    best = table.loc[table["speedup"].idxmax()]
    text = (f"In {len(faster)} of the {len(table)} comparisons this run made, the book's variant is the faster "
            f"one; the largest gap is {_x(best['speedup'])}, in `{best['case']}` "
            f"({best['setting'] or 'one size'}) against `{best['other variant']}`.")
    slower = table[table["speedup"] <= 1].sort_values("speedup")
    if len(slower):
        listed = "; ".join(f"`{r['other variant']}` in `{r['case']}`{f' ({r.setting})' if r.setting else ''} "
                           f"takes {r.speedup:.2f} of its time" for _, r in slower.head(6).iterrows())
        more = f" (and {len(slower) - 6} more)" if len(slower) > 6 else ""
        text += f" In the other {len(slower)}, the other variant is as fast or faster: {listed}{more}."
    return text


def yardstick_text(results: dict, cpu: str, capability: str) -> str:
    """The two yardsticks of the machine-limit chart, compared in words written from this run."""
    ref = results["reference"]
    text = (f"On this machine ({cpu}; torch's CPU kernels for {capability}), the dense `torch.mm` of two "
            f"{ref['n']} x {ref['n']} float32 matrices ran at {ref['gflops']:.1f} GFLOP/s on "
            f"{results['machine']['threads']} thread(s).")
    ratio = native_over_torch(results)
    if ratio is None:
        return text + " The book's own GEMM could not be built here (no C++ compiler), so it has no rule."
    native = results["reference_native"]["gflops"]
    if ratio >= 1.1:
        verdict = (f"{ratio:.2f} times as fast as torch's CPU BLAS: here `torch.mm` is a practical yardstick, not "
                   f"the machine's peak, and kernels built on the book's GEMM can sit above 1")
    elif ratio <= 1 / 1.1:
        verdict = (f"only {ratio:.2f} of torch's speed: here torch's CPU BLAS is the nearer measure of what "
                   f"the machine can do")
    else:
        verdict = f"about as fast as torch's CPU BLAS ({ratio:.2f} of its speed)"
    return text + f" The book's GEMM ran the same product at {native:.1f} GFLOP/s, {verdict}."


def limit_text(table: pd.DataFrame) -> str:
    """Where the kernels sit on the machine-limit chart, per size set, in words written from this run."""
    if not len(table):
        return "No case states its FLOPs, so no kernel is placed against the machine."
    parts = []
    for sizes, frame in table.groupby("sizes", sort=False):
        top = frame.loc[frame["fraction of torch.mm"].idxmax()]
        above = int((frame["fraction of torch.mm"] >= 1).sum())
        parts.append(f"at the {sizes}, the median kernel reaches {frame['fraction of torch.mm'].median():.2f} of "
                     f"`torch.mm`'s rate, {above} of {len(frame)} reach or pass it, and the highest is "
                     f"`{top['variant']}` in `{top['case']}` ({top['fraction of torch.mm']:.2f})")
    return "In this run, " + "; ".join(parts) + "."


# ---------------------------------------------------------------- which kernel ran, and why



def choices_table(results: dict) -> pd.DataFrame:
    """The compiled-or-torch choices measured at first use (:func:`mpnn.infra.native.choose`): the kind of
    computation, its shape class, the path taken and every candidate's median seconds."""
    rows = []
    for c in results.get("kernel_choices", []):
        seconds = c.get("seconds", {})
        fastest = min(seconds.values()) if seconds else float("nan")
        rows.append({"computation": c["kind"], "shape": ", ".join(f"{k}={v}" for k, v in c.get("key", {}).items()),
                     "path taken": c["chosen"],
                     "candidates (ms)": ", ".join(f"{n} {1e3 * t:.2f}" for n, t in seconds.items()),
                     "taken / fastest": seconds.get(c["chosen"], float("nan")) / fastest if seconds else float("nan")})
    return pd.DataFrame(rows, columns=["computation", "shape", "path taken", "candidates (ms)", "taken / fastest"])


def book_vs_torch_table(results: dict) -> pd.DataFrame:
    """Per benchmark setting with a compiled path: the book's variant against the fastest torch-only
    variant of the same computation (``book / torch`` > 1: the book's path is slower)."""
    sizes = [("default", results)] + ([("quick", results["quick_run"])] if results.get("quick_run") else [])
    rows = []
    for label, res in sizes:
        for r in res.get("book_vs_torch", []):
            setting = ", ".join(f"{k}={v}" for k, v in r.items() if k not in (
                "case", "book_variant", "book_s", "fastest_torch_variant", "torch_s", "book_over_torch")
                and not isinstance(v, float))
            rows.append({"sizes": label, "case": r["case"], "setting": setting, "book variant": r["book_variant"],
                         "fastest torch-only variant": r["fastest_torch_variant"],
                         "book / torch": r["book_over_torch"]})
    return pd.DataFrame(rows, columns=["sizes", "case", "setting", "book variant", "fastest torch-only variant",
                                       "book / torch"])


def choices_text(choices: pd.DataFrame, versus: pd.DataFrame, cpu: str) -> str:
    """What ran on this machine and why, in words from the run."""
    if not len(choices) and not len(versus):
        return "No case of this run has a compiled path to choose (no C++ compiler, or kernels off)."
    taken = choices["path taken"].str.startswith("compiled").sum() if len(choices) else 0
    parts = [f"On this machine ({cpu}) the book measured its compiled path against torch's own paths for "
             f"{len(choices)} kinds of computation and shape, and took the compiled one for {taken} of them."]
    if len(versus):
        worst = versus.loc[versus["book / torch"].idxmax()]
        parts.append(f"Against the fastest torch-only variant of the same computation, the book's path takes "
                     f"{versus['book / torch'].min():.2f}x to {versus['book / torch'].max():.2f}x its time "
                     f"(the slowest: {worst['case']}, {worst['setting']}, {worst['sizes']} sizes).")
    return " ".join(parts)


# ------------------------------------------------------------------ claims: each returns the arguments of ``run.claim``

def claim_results_current(results: dict, built_at: str) -> dict:
    """The page shows benchmarks of the code it documents (``built_at``: the commit the page is built at)."""
    return dict(id="results-current", kind="book", document="the page shows benchmarks of the code it documents",
                criterion="supported if the results were measured at the git commit the page is built at (uncommitted "
                          "changes mark both as dirty); not supported otherwise",
                measured=f"results measured at commit {results['git_commit'][:12]}, page built at {built_at[:12]}",
                verdict=results["git_commit"] == built_at, expected="supported", section="Every case")


def claim_cases_ran(results: dict, rows: pd.DataFrame) -> dict:
    """Every registered benchmark case runs."""
    missing = missing_cases(results, rows)
    return dict(id="cases-ran", kind="book", document="every registered benchmark case runs",
                criterion="supported if every case the harness was asked to run has a measurement with a positive "
                          "median time",
                measured=f"{len(results['cases']) - len(missing)}/{len(results['cases'])} cases measured"
                         + (f" (missing: {', '.join(missing)})" if missing else ""),
                verdict=not missing, expected="supported", section="Every case")


def claim_reference_steady(results: dict) -> dict:
    """The dense torch.mm reference held its speed while the cases ran."""
    drift = reference_drift(results)
    return dict(id="reference-steady", timing=True, kind="book",
                document="kernels are judged against a dense torch.mm on this machine, measured "
                "before and after the cases (the ratios hold only if the machine's speed did not change meanwhile)",
                criterion="the dense torch.mm's GFLOP/s measured before and after the cases, larger over smaller: "
                          "supported below 1.5 (steady), not supported above 3 (the machine's speed changed), "
                          "inconclusive between (a shared machine's load came and went)",
                measured=f"{results['reference_before']['gflops']:.1f} then {results['reference']['gflops']:.1f} "
                         f"GFLOP/s (ratio {drift:.2f})",
                verdict="supported" if drift < 1.5 else "not supported" if drift > 3.0 else "inconclusive",
                expected="supported", section="How close each kernel gets to the machine")
