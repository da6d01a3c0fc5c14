"""The reproducibility report: every chapter's manifest and the runner's record, as tables and checks."""
from __future__ import annotations

import json

import altair as alt
import pandas as pd

from mpnn import paths
from mpnn.runtime import cli, notebooks

EXEMPT_NOTES = ("full profile", "projection", "needs root")   # not tested by design: a GPU's scale, a stated
# projection, or an experiment that needs root (network namespaces) on a machine without it


def load_manifests() -> tuple[dict[str, dict], list[str]]:
    """``({chapter: manifest}, [chapters without a manifest])`` for every chapter but this report."""
    expected = [c for c in notebooks.chapters() if c != "reproducibility"]
    found = {}
    for chapter in expected:
        path = paths.manifest_dir() / f"{chapter}.json"
        if path.exists():
            found[chapter] = json.loads(path.read_text())
    return found, [c for c in expected if c not in found]


def load_book_run() -> dict | None:
    """The runner's record of this run (``_build/run.json``), or None when chapters ran one by one."""
    path = cli.run_record_path()
    return json.loads(path.read_text()) if path.exists() else None


def status(chapter: str, book_run: dict | None) -> str:
    """``ok`` / ``failed`` as the runner recorded it, ``interactive`` when no runner ran the chapter."""
    return ((book_run or {}).get("chapters", {}).get(chapter) or {}).get("status", "interactive")


def overview_table(manifests: dict[str, dict], book_run: dict | None) -> pd.DataFrame:
    """One row per chapter: profile, status, device, duration and its claim outcomes."""
    def count(m, outcome):
        return sum(x["outcome"] == outcome for x in m.get("claims", []))
    return pd.DataFrame([{
        "chapter": c, "profile": m.get("profile"), "status": status(c, book_run),
        "device": m.get("device_description", m.get("device")), "duration (s)": m.get("duration_s"),
        "claims": len(m.get("claims", [])), "reproduced": count(m, "reproduced"),
        "not tested": count(m, "not tested"), "failed": count(m, "FAILED"),
        "git commit": m.get("git_commit", "")[:12]} for c, m in manifests.items()])


def claims_table(manifests: dict[str, dict]) -> pd.DataFrame:
    """Every claim of every chapter: what the document says, what was measured, the outcome."""
    return pd.DataFrame([{"chapter": c, "claim": x["id"], "the document says": x["document"],
                          "this book measured": x["measured"], "outcome": x["outcome"], "note": x.get("note", "")}
                         for c, m in manifests.items() for x in m.get("claims", [])],
                        columns=["chapter", "claim", "the document says", "this book measured", "outcome", "note"])


def parameters_table(manifests: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"chapter": c, "parameter": k, "value": json.dumps(v)}
                         for c, m in manifests.items() for k, v in (m.get("parameters") or {}).items()])


def undecided(claims: pd.DataFrame) -> pd.DataFrame:
    """Claims left "not tested" whose note names none of the exemptions (GPU scale, projection, needs root)."""
    exempt = claims["note"].str.contains("|".join(EXEMPT_NOTES), case=False)
    return claims[(claims["outcome"] == "not tested") & ~exempt]


def book_run_summary(book_run: dict | None) -> str:
    if not book_run:
        return "no book run recorded (chapters were run one by one or interactively)"
    own = sum(c["duration_s"] for c in book_run["chapters"].values()) / 60
    bench = f", {book_run['bench_s']:.0f} s of benchmarks before them" if book_run.get("bench_s") else ""
    return (f"this run: profile {book_run['profile']}, {book_run['jobs']} chapters side by side on "
            f"{book_run['cpu_count']} cores ({book_run['threads_per_chapter']} thread(s) each): "
            f"{book_run['wall_s'] / 60:.1f} min for every chapter but this report{bench}, of which "
            f"{book_run['timing_cells_alone_s']:.0f} s in timing cells running alone; "
            f"the chapters' own times add up to {own:.1f} min")


def figure_durations(overview: pd.DataFrame) -> alt.Chart:
    return alt.Chart(overview).mark_bar().encode(
        x=alt.X("duration (s):Q"), y=alt.Y("chapter:N", sort=None), color="profile:N",
        tooltip=list(overview.columns)).properties(width=420, height=24 * len(overview),
                                                   title="execution time per chapter")
