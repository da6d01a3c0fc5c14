"""The reproducibility report: where this build's numbers come from, read from every chapter's manifest.

Per chapter: profile, status, device, duration, threads and the compiled kernels it loaded; the
machine (CPU model, ISA extensions, torch's CPU kernels) and the package versions; every claim with
its kind, criterion, verdict and expected verdict. The verdict counts come from the same code as the
findings page (:func:`mpnn.runtime.site.findings_rows`, :func:`mpnn.runtime.verdicts.count_table`).
A claim that does not state its kind, criterion or verdict is reported as lacking it, never dropped
silently.
"""
from __future__ import annotations

import json

import altair as alt
import pandas as pd

from mpnn.infra import paths
from mpnn.runtime import cli, notebooks, site, verdicts

SELF = "reproducibility"
EXEMPT_NOTES = ("full profile", "projection", "needs root")   # left untested by design: a GPU's scale, a stated
# projection, or an experiment that needs root (network namespaces) on a machine without it
REQUIRED = ("kind", "criterion", "verdict")                   # what every claim of a manifest must state


def load_manifests() -> tuple[dict[str, dict], list[str]]:
    """``({chapter: manifest}, [chapters without a readable manifest])`` for every chapter but this
    report (a manifest that is not valid JSON counts as missing)."""
    expected = [c for c in notebooks.chapters() if c != SELF]
    found = {}
    for chapter in expected:
        path = paths.manifest_dir() / f"{chapter}.json"
        try:
            found[chapter] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return found, [c for c in expected if c not in found]


def load_book_run() -> dict | None:
    """The runner's record of this run (``_build/run.json``), or None when chapters ran one by one."""
    path = cli.run_record_path()
    return json.loads(path.read_text()) if path.exists() else None


def status(chapter: str, book_run: dict | None, manifest: dict | None = None) -> str:
    """``ok`` / ``failed`` as the runner recorded it in this run; otherwise how the chapter ran."""
    recorded = ((book_run or {}).get("chapters", {}).get(chapter) or {}).get("status")
    if recorded:
        return recorded
    render = ((manifest or {}).get("context") or {}).get("render")
    return "run on its own" if render == "static" else "interactive"


def _claims(manifest: dict) -> list[dict]:
    return [c for c in manifest.get("claims", []) if isinstance(c, dict)]


def lacking(claim: dict) -> list[str]:
    """Which of kind, criterion and verdict a claim does not state (or states outside the vocabulary)."""
    out = [f for f in REQUIRED if not claim.get(f)]
    if claim.get("kind") and claim["kind"] not in verdicts.KINDS:
        out.append("kind")
    if claim.get("verdict") and claim["verdict"] not in verdicts.VERDICTS:
        out.append("verdict")
    return sorted(set(out), key=REQUIRED.index)


def _kernels(machine: dict) -> str:
    """The compiled kernels a chapter's process loaded (names only, never the compiler's path)."""
    info = machine.get("compiled_kernels")
    if not isinstance(info, dict):
        return "not recorded"
    if "error" in info:
        return "unknown"
    if not info.get("enabled", True):
        return "disabled"
    loaded = sorted({k.split(":")[0] for k, ok in (info.get("loaded") or {}).items() if ok})
    return ", ".join(loaded) if loaded else "none"


def overview_table(manifests: dict[str, dict], book_run: dict | None) -> pd.DataFrame:
    """One row per chapter: how it ran (profile, status, device, threads, duration, compiled kernels)
    and its claims: how many, their verdicts, how many lack a verdict, how many changed verdict."""
    rows = []
    for c, m in manifests.items():
        claims, machine = _claims(m), m.get("machine") or {}
        n = verdicts.counts(x for x in claims if x.get("verdict"))
        rows.append({"chapter": c, "profile": m.get("profile"), "status": status(c, book_run, m),
                     "device": m.get("device_description", m.get("device")),
                     "threads": machine.get("torch_threads", (m.get("context") or {}).get("threads")),
                     "duration (s)": m.get("duration_s"), "started (UTC)": str(m.get("started", ""))[:19],
                     "compiled kernels loaded": _kernels(machine), "claims": len(claims)}
                    | {v: n[v] for v in verdicts.VERDICTS}
                    | {"no verdict": sum(bool(lacking(x)) for x in claims),
                       verdicts.MISMATCH: sum(not verdicts.matches(x) for x in claims),
                       "git commit": str(m.get("git_commit", ""))[:12]})
    return pd.DataFrame(rows)


MACHINE_FIELDS = {"cpu_model": "CPU", "machine": "architecture", "cpu_count": "cores",
                  "isa_flags": "ISA extensions", "torch_cpu_capability": "torch CPU kernels",
                  "mkl": "MKL", "mkldnn": "oneDNN", "python": "python"}


def machine_table(manifests: dict[str, dict]) -> pd.DataFrame:
    """The machines the chapters ran on: one row per distinct description, with the chapters it ran."""
    groups: dict[tuple, list[str]] = {}
    for c, m in manifests.items():
        machine = m.get("machine") or {}
        values = tuple(", ".join(v) if isinstance(v := machine.get(f), list) else
                       ("not recorded" if v is None else str(v)) for f in MACHINE_FIELDS)
        groups.setdefault(values, []).append(c)
    return pd.DataFrame([{"chapters": ", ".join(cs), **dict(zip(MACHINE_FIELDS.values(), values))}
                         for values, cs in groups.items()])


def versions_table(manifests: dict[str, dict]) -> pd.DataFrame:
    """Package versions: one row per package, one column per distinct set of versions (named by the
    chapters that ran with it; ``every chapter`` when they all did)."""
    sets: dict[tuple, list[str]] = {}
    for c, m in manifests.items():
        sets.setdefault(tuple(sorted((m.get("versions") or {}).items())), []).append(c)
    columns = {("every chapter" if len(sets) == 1 else ", ".join(cs)): dict(v) for v, cs in sets.items()}
    frame = pd.DataFrame(columns).fillna("not recorded")
    frame.index.name = "package"
    return frame


def verdict_rows(manifests: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """The findings page's rows (the chapters that reproduce a document, :func:`site.findings_rows`),
    and the same rows for the book's own pages (each page standing for its document)."""
    documents = site.documents()
    own = {c: f"the {c} page" for c in manifests if c not in documents}
    return site.findings_rows(manifests), verdicts.findings_rows(manifests, own)


def claims_table(manifests: dict[str, dict]) -> pd.DataFrame:
    """Every claim of every chapter: kind, verdict, expected verdict, statement, criterion, measurement."""
    columns = ["chapter", "claim", "kind", "verdict", "expected", "as expected", "the statement", "criterion",
               "this build measured", "note", "lacks"]
    return pd.DataFrame([{"chapter": c, "claim": x.get("id", "?"), "kind": x.get("kind", ""),
                          "verdict": x.get("verdict") or "none recorded", "expected": verdicts.expected_text(x) if x.get("expected") else "",
                          "as expected": verdicts.matches(x), "the statement": x.get("document", ""),
                          "criterion": x.get("criterion", ""), "this build measured": x.get("measured", ""),
                          "note": x.get("note", "") or "", "lacks": ", ".join(lacking(x))}
                         for c, m in manifests.items() for x in _claims(m)], columns=columns)


def parameters_table(manifests: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"chapter": c, "parameter": k, "value": json.dumps(v)}
                         for c, m in manifests.items() for k, v in (m.get("parameters") or {}).items()],
                        columns=["chapter", "parameter", "value"])


def folded_by_chapter(frame: pd.DataFrame, summary) -> str:
    """``frame``'s rows as one folded table per chapter (HTML ``<details>``; the page stays a few
    screens long), each titled by ``summary(chapter, rows)``."""
    import html
    if not len(frame):
        return "<p>none recorded</p>"
    parts = []
    for chapter, rows in frame.groupby("chapter", sort=False):
        table = rows.drop(columns="chapter").to_html(index=False, escape=True, border=0,
                                                     classes="mpnn-report-table")
        parts.append(f"<details class=\"mpnn-report-chapter\"><summary><strong>{html.escape(chapter)}</strong>: "
                     f"{html.escape(summary(chapter, rows))}</summary>"
                     f"<div class=\"mpnn-table-wrap\">{table}</div></details>")
    return "\n".join(parts)


def claims_summary(chapter: str, rows: pd.DataFrame) -> str:
    """"17 claims (supported 12, ...); every verdict as expected" for one chapter's rows."""
    counts = verdicts.counts_text({"verdict": v} for v in rows["verdict"])
    off = int((~rows["as expected"].astype(bool)).sum())
    return (f"{len(rows)} claims ({counts}); "
            + ("every verdict as expected" if not off else f"{off} not as expected"))


def undecided(claims: pd.DataFrame) -> pd.DataFrame:
    """Claims left "not testable here" whose note names none of the exemptions (a GPU's scale through
    the full profile, a projection, needs root)."""
    exempt = claims["note"].str.contains("|".join(EXEMPT_NOTES), case=False)
    return claims[(claims["verdict"] == verdicts.UNDECIDED) & ~exempt]


def book_run_summary(book_run: dict | None) -> str:
    """This run as the runner recorded it (markdown), or why there is no such record."""
    if not book_run or not book_run.get("chapters"):
        return ("The runner recorded no run of several chapters together: the chapters of this build "
                "were executed one by one or interactively, so the table above is all there is.")
    own = sum(c["duration_s"] for c in book_run["chapters"].values()) / 60
    bench = (f", after {book_run['bench_s']:.0f} s of benchmarks run alone before them"
             if book_run.get("bench_s") else "")
    return (f"In this run ({book_run['profile']} profile) the runner executed {len(book_run['chapters'])} "
            f"chapters, {book_run['jobs']} at a time on {book_run['cpu_count']} cores "
            f"({book_run['threads_per_chapter']} thread(s) each), in {book_run['wall_s'] / 60:.1f} min of wall "
            f"time{bench}; {book_run['timing_cells_alone_s']:.0f} s of it went to timing cells running alone. "
            f"The chapters' own durations add up to {own:.1f} min.")


def figure_durations(overview: pd.DataFrame) -> alt.Chart:
    """One bar per chapter: how long it took to execute in this build, coloured by its profile."""
    return alt.Chart(overview).mark_bar().encode(
        x=alt.X("duration (s):Q", title="duration in seconds"), y=alt.Y("chapter:N", sort=None),
        color=alt.Color("profile:N", title="profile"),
        tooltip=["chapter", "profile", "status", "duration (s)", "claims"]).properties(
        width=420, height=24 * len(overview), title="execution time per chapter")


# ------------------------------------------------------------------ claims: each returns the arguments of ``run.claim``

def _names(frame: pd.DataFrame) -> str:
    return ", ".join(frame["chapter"] + "/" + frame["claim"])


def claim_all_chapters_ran(manifests: dict[str, dict], missing: list[str], book_run: dict | None,
                           require_all_chapters: bool) -> dict:
    """Every chapter of the book executes."""
    failed = [c for c in manifests if status(c, book_run, manifests[c]) == "failed"]
    return dict(id="all-chapters-ran", kind="book", document="every chapter of the book executes",
                criterion="supported if every chapter but this report has a manifest and none is recorded as failed "
                          "by the runner (a missing manifest counts only when the report requires every chapter)",
                measured=f"{len(manifests) - len(failed)}/{len(manifests) + len(missing)} chapters executed without "
                         f"error" + (f"; no manifest: {', '.join(missing)}" if missing else "")
                         + (f"; failed: {', '.join(failed)}" if failed else ""),
                verdict=(not failed) and (not missing or not require_all_chapters), expected="supported")


def claim_claims_complete(claims: pd.DataFrame) -> dict:
    """Every claim of every chapter states its kind, its criterion and its verdict."""
    incomplete = claims[claims["lacks"] != ""]
    return dict(id="claims-complete", kind="book",
                document="every claim of every chapter states its kind, its criterion and its verdict",
                criterion="supported if no claim of any manifest lacks its kind, criterion or verdict, or gives one "
                          "outside the vocabulary",
                measured=f"{len(claims)} claims, {len(incomplete)} lacking one"
                         + (f" ({_names(incomplete)})" if len(incomplete) else ""),
                verdict=len(claims) > 0 and len(incomplete) == 0, expected="supported")


def claim_verdicts_as_expected(claims: pd.DataFrame) -> dict:
    """Every claim's verdict is the one its chapter expects."""
    changed = claims[~claims["as expected"].astype(bool)]
    return dict(id="verdicts-as-expected", kind="book", document="every claim's verdict is the one its chapter expects",
                criterion="supported if for every claim of every manifest the verdict equals the expected verdict "
                          "(a claim this build could not test matches any)",
                measured=f"{len(claims)} claims, {len(changed)} with a changed verdict"
                         + (f" ({_names(changed)})" if len(changed) else ""),
                verdict=len(claims) > 0 and len(changed) == 0, expected="supported")


def claim_every_claim_decided(claims: pd.DataFrame, manifests: dict[str, dict]) -> dict:
    """At the default profile every claim is decided, except the exempt ones (measured and verdict lazy)."""
    left = undecided(claims)
    profiles_run = sorted({str(m.get("profile")) for m in manifests.values()})
    return dict(id="every-claim-decided", kind="book",
                document="at the default profile every claim is decided, except those that need a GPU's scale or "
                         "root, and projections",
                criterion="supported if every manifest ran at the default or full profile and no claim is 'not "
                          "testable here' unless its note names the full profile (a GPU's scale), a projection or root",
                measured=lambda: (f"{len(claims)} claims at profile {', '.join(profiles_run)}: "
                                  f"{int((claims['verdict'] == verdicts.UNDECIDED).sum())} not testable here, of which "
                                  f"{len(left)} neither GPU-scale, a projection nor needing root"
                                  + (f" ({_names(left)})" if len(left) else "")),
                verdict=lambda: bool(profiles_run) and set(profiles_run) <= {"default", "full"} and len(left) == 0,
                expected="supported", needs="default")
