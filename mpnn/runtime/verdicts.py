"""What a claim is and how it is judged: the book's one vocabulary, and every view of it.

Every claim a chapter records has

* a **kind**: ``claim`` (the source document's own claim or result), ``next check`` (an experiment
  or check the document lists), ``open question`` (one it asks), ``extension`` (the book's own
  addition or control) or ``book`` (the book's own checks: data integrity, run health, benchmarks);
* a **criterion**, written in the chapter before the number is seen;
* the **measurement**;
* a **verdict** on the document's statement (:data:`VERDICTS`): ``supported``, ``mixed`` (say
  which part holds), ``not supported``, ``inconclusive`` (the interval straddles the criterion: say
  how many seeds would decide it) or ``not testable here`` (a GPU's scale, root, or a projection);
* the verdict the chapter **expects**. The regression check is ``verdict == expected``: a change of
  verdict in either direction fails the build, so a negative finding is protected exactly like a
  positive one. A **timing** claim (a time measured on the machine that runs the book) may also come
  out ``inconclusive`` on another machine, where the interval lands across the threshold; it may
  never flip between ``supported`` and ``not supported`` (:func:`accepted`). Its prose is generated
  from the verdict the run gives.

This module owns the words and colours of verdicts and every HTML view built from the manifests:
the at a glance table under a chapter's title, the full claims table at a chapter's end, the
findings page and the introduction's counts. :mod:`mpnn.runtime.site` places them on the pages.
"""
from __future__ import annotations

import html as _html
import math
from typing import Iterable

KINDS = ("claim", "next check", "open question", "extension", "book")
KIND_GROUPS = {          # how the findings page and the counts group the kinds
    "claim": "the documents' claims",
    "next check": "the documents' next checks and open questions",
    "open question": "the documents' next checks and open questions",
    "extension": "the book's extensions and checks",
    "book": "the book's extensions and checks",
}
GROUPS = tuple(dict.fromkeys(KIND_GROUPS.values()))
VERDICTS = ("supported", "mixed", "not supported", "inconclusive", "not testable here")
UNDECIDED = "not testable here"
COLORS = {"supported": "#2e7d32", "mixed": "#b26a00", "not supported": "#c62828",
          "inconclusive": "#5e548e", "not testable here": "#757575"}
MISMATCH = "verdict changed"     # the badge of a claim whose verdict is not the expected one


def _esc(text) -> str:
    """HTML text on one line (a blank line would end MyST's raw HTML block)."""
    return _html.escape(" ".join(str(text).split()), quote=False).replace('"', "&quot;")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(map(repr, KINDS))}")
    return kind


def check_verdict(verdict: str, what: str = "verdict") -> str:
    if verdict not in VERDICTS:
        raise ValueError(f"{what}={verdict!r}: use one of {', '.join(map(repr, VERDICTS))}")
    return verdict


def as_verdict(value) -> str:
    """A verdict from what a chapter computed: a verdict string, or a bool (True: ``supported``,
    False: ``not supported``) for a criterion with no undecided zone (an exact check)."""
    if isinstance(value, str):
        return check_verdict(value)
    if value is None:
        return UNDECIDED
    return "supported" if bool(value) else "not supported"


def from_interval(low: float, high: float, *, above: float | None = None, below: float | None = None,
                  refuted_below: float | None = None, refuted_above: float | None = None) -> str:
    """The verdict on "the quantity lies above ``above``" (or below ``below``) from its interval.

    ``supported`` when the whole interval lies on the claim's side of the threshold; ``not
    supported`` when it lies wholly on the other side of ``refuted_below`` (``refuted_above``),
    which defaults to the threshold itself (a margin makes "no gain worth having" a refutation);
    ``inconclusive`` when it straddles."""
    if (above is None) == (below is None):
        raise ValueError("give exactly one of above= or below=")
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "inconclusive"
    if above is not None:
        refute = above if refuted_below is None else refuted_below
        return "supported" if low > above else "not supported" if high < refute else "inconclusive"
    refute = below if refuted_above is None else refuted_above
    return "supported" if high < below else "not supported" if low > refute else "inconclusive"


def combine(parts: dict[str, str]) -> str:
    """The verdict on a statement made of parts: all supported -> supported, none -> not supported,
    some -> mixed (name the parts in the measurement); any part inconclusive and none supported ->
    inconclusive."""
    values = [check_verdict(v) for v in parts.values()]
    if not values:
        raise ValueError("combine() needs at least one part")
    if all(v == "supported" for v in values):
        return "supported"
    if all(v == UNDECIDED for v in values):
        return UNDECIDED
    if any(v in ("supported", "mixed") for v in values):
        return "mixed"
    if any(v == "inconclusive" for v in values):
        return "inconclusive"
    return "not supported"


# ---------------------------------------------------------------- one claim, as the pages show it

def verdict_of(claim: dict) -> str:
    return claim.get("verdict") or UNDECIDED


def accepted(expected: str, timing: bool = False) -> tuple[str, ...]:
    """The verdicts that keep a claim's regression check green: the expected one, and for a timing
    claim also ``inconclusive`` (the same code on a slower or noisier CPU may not decide); a flip
    between ``supported`` and ``not supported`` always fails."""
    check_verdict(expected, "expected")
    if timing and expected not in ("inconclusive", UNDECIDED):
        return (expected, "inconclusive")
    return (expected,)


def matches(claim: dict) -> bool:
    """Did the run give the verdict the chapter expects? An untestable run matches anything."""
    v = verdict_of(claim)
    return v == UNDECIDED or v in accepted(claim.get("expected", v), bool(claim.get("timing")))


def expected_text(claim: dict) -> str:
    """The expected verdict in words ("supported, or inconclusive on another machine")."""
    options = accepted(claim.get("expected", UNDECIDED), bool(claim.get("timing")))
    return options[0] + (f", or {options[1]} (a time measured on this machine)" if len(options) > 1 else "")


def why_untested(claim: dict) -> str:
    note = (claim.get("note") or "").lower()
    if "projection" in note:
        return "a projection"
    if "needs root" in note:
        return "needs root"
    if "gpu" in note or claim.get("needs") == "full":
        return "full profile (GPU)"
    return f"{claim.get('needs', 'default')} profile"


def badge_text(claim: dict) -> str:
    v = verdict_of(claim)
    if not matches(claim):
        return f"{MISMATCH}: {v}"
    if v == UNDECIDED:
        return f"{v}: {why_untested(claim)}"
    return v


def badge(claim: dict) -> str:
    v = verdict_of(claim) if matches(claim) else "mismatch"
    return (f'<span class="mpnn-badge mpnn-v-{v.replace(" ", "-")}">{_esc(badge_text(claim))}</span>')


def counts(claims: Iterable[dict]) -> dict[str, int]:
    claims = list(claims)
    return {v: sum(verdict_of(c) == v for c in claims) for v in VERDICTS}


def counts_text(claims: Iterable[dict]) -> str:
    n = counts(claims)
    return ", ".join(f"{k} {v}" for v, k in n.items() if k) or "none"


def claims_table(claims: Iterable[dict], *, links: dict[str, str] | None = None, kinds: bool = True,
                 folded: bool = False) -> str:
    """One row per claim: verdict, kind, the statement, the criterion and the measurement, whole
    (wrapping, never cut). ``links`` maps claim ids to the anchor of the section that shows them.
    ``folded`` puts the criterion and the measurement of each claim in a disclosure under its
    statement (the verdicts at a glance box: every verdict on one or two screens)."""
    links = links or {}
    rows = []
    for c in claims:
        cid = _esc(c.get("id", ""))
        target = links.get(c.get("id", ""))
        where = f' <a class="mpnn-claim-where" href="#{_esc(target)}">see the section</a>' if target else ""
        note = c.get("note") or ""
        note_html = f'<div class="mpnn-claim-note">{_esc(note)}</div>' if note else ""
        kind = f'<div class="mpnn-claim-kind">{_esc(c.get("kind", ""))}</div>' if kinds else ""
        timing = " · a time measured on the machine that built this page" if c.get("timing") else ""
        detail = (f'<div class="mpnn-claim-criterion"><em>criterion:</em> {_esc(c.get("criterion", ""))}</div>'
                  f'<div class="mpnn-claim-measured"><em>measured:</em> {_esc(c.get("measured", ""))}'
                  f'{"" if folded else where}</div>{note_html}<div class="mpnn-claim-id"><code>{cid}</code>{timing}</div>')
        if folded:
            detail = (f'<details class="mpnn-claim-more"><summary>criterion and measurement</summary>{detail}</details>')
        rows.append(
            f'<tr id="claim-{cid}"><td class="mpnn-claim-verdict">{badge(c)}{kind}</td><td>'
            f'<div class="mpnn-claim-doc">{_esc(c.get("document", ""))}{where if folded else ""}</div>'
            f'{detail}</td></tr>')
    return ('<div class="mpnn-table-wrap"><table class="mpnn-claims"><thead><tr><th>verdict</th>'
            '<th>statement, criterion and measurement</th></tr></thead><tbody>\n'
            + "\n".join(rows) + "\n</tbody></table></div>")


def glance(manifest: dict, links: dict[str, str] | None = None) -> str:
    """The box under a chapter's title: the verdict counts per group of kinds, then the claims
    table (the documents' claims first), each row linking to the section that shows it."""
    claims = manifest.get("claims", [])
    order = {g: i for i, g in enumerate(GROUPS)}
    ordered = sorted(claims, key=lambda c: order.get(KIND_GROUPS.get(c.get("kind"), GROUPS[-1]), 9))
    lines = []
    for group in GROUPS:
        members = [c for c in claims if KIND_GROUPS.get(c.get("kind")) == group]
        if members:
            lines.append(f"<li><strong>{_esc(group)}</strong> ({len(members)}): "
                         f"{_esc(counts_text(members))}</li>")
    profile = _esc(manifest.get("profile", "?"))
    return (f'<div class="mpnn-glance" data-chapter="{_esc(manifest.get("chapter", ""))}">\n'
            f'<p class="mpnn-glance-title"><strong>Verdicts at a glance</strong> '
            f'(this build: <code>{profile}</code> profile)</p>\n<ul class="mpnn-glance-counts">'
            + "".join(lines) + "</ul>\n"
            + f'<details class="mpnn-glance-details" open><summary>every claim (open one for its criterion and what this '
              f'run measured)</summary>\n{claims_table(ordered, links=links, folded=True)}\n</details>\n</div>')


# ---------------------------------------------------------------- the findings page and the counts

def findings_rows(manifests: dict[str, dict], documents: dict[str, str]) -> list[dict]:
    """One row per claim of the chapters that reproduce a document (``documents``: chapter ->
    document), in the given chapter order."""
    rows = []
    for chapter, document in documents.items():
        m = manifests.get(chapter)
        for c in (m or {}).get("claims", []):
            rows.append({"chapter": chapter, "document": document, "claim": c["id"],
                         "kind": c.get("kind", ""), "group": KIND_GROUPS.get(c.get("kind"), ""),
                         "verdict": verdict_of(c), "profile": m.get("profile", ""), "raw": c})
    return rows


def count_table(rows: list[dict]) -> str:
    """Verdicts per document and group of kinds, as an HTML table (the same counts everywhere)."""
    docs = list(dict.fromkeys(r["document"] for r in rows))
    head = "".join(f"<th>{_esc(v)}</th>" for v in VERDICTS)
    body = []
    for group in GROUPS:
        in_group = [r for r in rows if r["group"] == group]
        if not in_group:
            continue
        body.append(f'<tr class="mpnn-count-group"><th colspan="{len(VERDICTS) + 2}">{_esc(group)}</th></tr>')
        for d in docs + ["all documents"]:
            sel = [r["raw"] for r in in_group if d == "all documents" or r["document"] == d]
            if not sel:
                continue
            n = counts(sel)
            cells = "".join(f"<td>{n[v] or ''}</td>" for v in VERDICTS)
            body.append(f"<tr><td>{_esc(d)}</td><td>{len(sel)}</td>{cells}</tr>")
    return (f'<div class="mpnn-table-wrap"><table class="mpnn-counts"><thead><tr><th>document</th><th>all</th>{head}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def intro_sentence(rows: list[dict]) -> str:
    if not rows:
        return ("*No chapter has run yet in this build: the [findings](findings.md) page lists every "
                "claim once they have.*")
    parts = []
    for group in GROUPS:
        sel = [r["raw"] for r in rows if r["group"] == group]
        if sel:
            parts.append(f"{group}: {len(sel)} ({counts_text(sel)})")
    profiles = ", ".join(sorted({r["profile"] for r in rows}))
    return (f"**Verdicts of this build** ({profiles} profile): " + "; ".join(parts)
            + ". The [findings](findings.md) page lists every one, per document and per verdict.")


def findings_html(rows: list[dict]) -> str:
    """The findings page's generated part: the count table and the filterable table of every claim."""
    if not rows:
        return "<p><em>No chapter has run yet: run <code>python -m mpnn run</code>, then build.</em></p>"
    docs = list(dict.fromkeys(r["document"] for r in rows))
    opt = lambda values: "".join(f'<option value="{_esc(v)}">{_esc(v)}</option>' for v in values)
    parts = [count_table(rows),
             '<div class="mpnn-filter" data-table="mpnn-findings-table">'
             '<input type="search" class="mpnn-filter-text" placeholder="filter: any words" aria-label="filter">'
             f'<select class="mpnn-filter-col" data-col="1" aria-label="document"><option value="">every document</option>{opt(docs)}</select>'
             f'<select class="mpnn-filter-col" data-col="2" aria-label="kind"><option value="">every kind</option>{opt(KINDS)}</select>'
             f'<select class="mpnn-filter-col" data-col="4" aria-label="verdict"><option value="">every verdict</option>{opt(VERDICTS)}</select>'
             '<span class="mpnn-filter-count"></span></div>']
    body = []
    for r in rows:
        c = r["raw"]
        body.append(
            f'<tr><td><a href="{r["chapter"]}.html#claim-{_esc(r["claim"])}">{_esc(r["chapter"])}</a></td>'
            f'<td>{_esc(r["document"])}</td><td data-value="{_esc(r["kind"])}">{_esc(r["kind"])}</td>'
            f'<td>{_esc(c.get("document", ""))}<details class="mpnn-claim-more"><summary>measured</summary>'
            f'<div class="mpnn-claim-measured">{_esc(c.get("measured", ""))}</div></details></td>'
            f'<td data-value="{_esc(r["verdict"])}">{badge(c)}</td></tr>')
    parts.append('<div class="mpnn-table-wrap mpnn-findings-scroll"><table id="mpnn-findings-table" class="mpnn-findings mpnn-sortable"><thead><tr>'
                 '<th>chapter</th><th>document</th><th>kind</th><th>the statement and what this run measured</th>'
                 '<th>verdict</th></tr></thead><tbody>' + "".join(body) + "</tbody></table></div>")
    return "\n".join(parts)
