"""What the site adds to the executed chapters: results first, figures to take away, the findings page.

Everything here is generated from the run's own records, so it is never out of date:

* :func:`decorate` rewrites an executed notebook (``_build/src/book/<chapter>.ipynb``) in place:
  an **at a glance** box right after the title and source, built from the chapter's manifest (one
  line per claim: outcome badge, the number that decides it, a link to the section that shows it),
  and, under each chart, links to its SVG, PNG and Vega-Lite JSON. The runner calls it after a
  chapter ran, ``python -m mpnn build`` again before building (idempotent).
* :func:`claims_html` is the readable full claims table ``run.finish()`` shows at the end.
* :func:`findings_markdown` / :func:`intro_counts` fill the findings page and the introduction's
  counts from every manifest (markers ``<!-- mpnn:findings -->`` and ``<!-- mpnn:counts -->``).
* :data:`CSS` / :data:`JS` are the site's own stylesheet and script (sorting and filtering tables).
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Iterable

from .. import paths

GLANCE_KEY = "mpnn_glance"        # metadata of the inserted markdown cell
LINKS_CLASS = "mpnn-figure-links"

# Which source document each chapter reproduces (the findings page groups by it).
DOCUMENTS = {
    "switch_network": "000 switch-based multi-part network",
    "tag_partitioning": "001 tag partitioning",
    "specialization": "002 specialization of neural modules",
    "conditional_computation": "003 conditional computation",
    "early_exits": "003 conditional computation",
    "token_selection": "003 conditional computation",
    "multipart_deployment": "004 multi-part deployment",
}

OUTCOMES = ("reproduced", "differs from the document", "not reproduced", "not tested")
_DIFFERS = re.compile(r"differs from the document|unlike the document|contrary to the document|"
                      r"against the document|the document's .{0,40} does not hold", re.I)


# ---------------------------------------------------------------- one claim

def outcome(claim: dict) -> str:
    """The claim's badge: reproduced / differs from the document / not reproduced / not tested."""
    if claim.get("passed") is False or claim.get("outcome") == "FAILED":
        return "not reproduced"
    if claim.get("passed") is None:
        return "not tested"
    if claim.get("differs") or _DIFFERS.search(f"{claim.get('measured', '')} {claim.get('note', '')}"):
        return "differs from the document"
    return "reproduced"


def badge_text(claim: dict) -> str:
    """The badge's words; a claim not tested says what would test it."""
    kind = outcome(claim)
    if kind != "not tested":
        return kind
    note = (claim.get("note") or "").lower()
    if "projection" in note:
        return "projection, not tested"
    if "needs root" in note:
        return "not tested: needs root"
    if "gpu" in note:
        return f"not tested: {claim.get('needs', 'full')} profile (GPU)"
    return f"not tested: {claim.get('needs', 'default')} profile"


_CI = re.compile(r"\(95% CI [^),]*")


def _clause_start(text: str) -> int:
    """Where the last clause of ``text`` starts (after its last "; " outside brackets)."""
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch in "(["
        depth -= ch in ")]"
        if depth == 0 and text.startswith("; ", i):
            start = i + 2
    return start


def headline(claim: dict, limit: int = 90) -> str:
    """The one number that decides the claim: its ``headline`` if given, else the measured value
    in front of the first 95% interval (with it), else the first clause of ``measured``."""
    if claim.get("headline"):
        return claim["headline"]
    text = " ".join(str(claim.get("measured", "")).split())
    m = _CI.search(text)
    if m:
        before = text[:m.start()].rstrip()
        start = _clause_start(before)
        segment = f"{before[start:]} {m.group(0)})"
        if len(segment) > limit and ": " in before[start:]:
            segment = f"{before[start:].rsplit(': ', 1)[1]} {m.group(0)})"
        return segment if len(segment) <= limit else segment[:limit - 1] + "…"
    depth, cut = 0, len(text)
    for i, ch in enumerate(text):
        depth += ch in "(["
        depth -= ch in ")]"
        if depth == 0 and text.startswith("; ", i):
            cut = i
            break
    first = text[:cut]
    return first if len(first) <= limit else first[:limit - 1] + "…"


# ---------------------------------------------------------------- sections of a notebook

_STOP = set("the a an of and or to in on at is are be by for with from that this it its as not no than "
            "into one two more less can do does per each".split())


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP and len(w) > 2}


def heading_id(title: str) -> str:
    """The anchor Sphinx gives a heading (docutils ``make_id`` of its text without markup)."""
    from docutils.nodes import make_id
    text = re.sub(r"[`*_$\\]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", title)
    return make_id(text)


def sections(nb) -> list[dict]:
    """``[{"title", "id", "text"}]`` for every markdown heading below the title (level 2 and 3)."""
    out: list[dict] = []
    seen: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "markdown" or cell.metadata.get(GLANCE_KEY):
            continue
        for line in cell.source.splitlines():
            m = re.match(r"^(#{2,3})\s+(.*?)\s*#*\s*$", line)
            if m:
                sid = heading_id(m.group(2))
                if sid and sid not in seen:
                    seen.add(sid)
                    out.append({"title": m.group(2), "id": sid, "text": ""})
            elif out:
                out[-1]["text"] += line + "\n"
    return out


def section_for(claim: dict, secs: list[dict]) -> dict | None:
    """The section that shows a claim: its ``section`` if given, else the heading whose title
    (counted double) and text share most words with the claim's id and the document's words."""
    if claim.get("section"):
        wanted = heading_id(claim["section"])
        return next((s for s in secs if s["id"] == wanted or s["title"] == claim["section"]), None)
    key = _words(claim.get("id", "").replace("-", " ")) | _words(claim.get("document", ""))
    best, best_score = None, 0.0
    for s in secs:
        if re.search(r"document says|what we found|claims", s["title"], re.I):
            continue      # the verdict table and the summary are not where a result is shown
        score = 2 * len(key & _words(s["title"])) + len(key & _words(s["text"])) / 4
        if claim.get("id") and claim["id"] in s["text"]:
            score += 3
        if score > best_score:
            best, best_score = s, score
    return best


# ---------------------------------------------------------------- HTML

def _badge(claim: dict) -> str:
    kind = outcome(claim).replace(" ", "-")
    return f'<span class="mpnn-badge mpnn-{kind}">{html.escape(badge_text(claim))}</span>'


def verdict_section(nb) -> dict | None:
    """The section holding the claims table: the last heading before the cell calling ``run.finish``."""
    last = None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and not cell.metadata.get(GLANCE_KEY):
            for line in cell.source.splitlines():
                m = re.match(r"^(#{2,3})\s+(.*?)\s*#*\s*$", line)
                if m:
                    last = {"title": m.group(2), "id": heading_id(m.group(2)), "text": ""}
        elif cell.cell_type == "code" and "run.finish(" in cell.source:
            return last
    return last


def glance_html(manifest: dict, secs: list[dict], rows: set[str] | frozenset = frozenset(),
                verdict: dict | None = None) -> str:
    """The at a glance box: one line per claim (badge, document's words, deciding number, link).

    Each number links to the section that shows the claim (:func:`section_for`); failing that, to
    the claim's row of the full table when the page has it (``rows``: claim ids with a row), or to
    the table's section."""
    verdict = verdict or next((s for s in secs if re.search(r"document says|claims", s["title"], re.I)), None)
    claims = manifest.get("claims", [])
    counts = {k: sum(outcome(c) == k for c in claims) for k in OUTCOMES}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    lines = []
    for c in claims:
        sec = section_for(c, secs)
        if sec is None and c.get("id") in rows:
            sec = {"id": f"claim-{c['id']}", "title": "the claims table"}
        sec = sec or verdict or {"id": "", "title": "the claims table"}
        target, label = sec["id"], sec["title"]
        doc = html.escape(c.get("document", ""), quote=True)
        tip = html.escape(f"{c.get('measured', '')} (shown in: {label})", quote=True)
        lines.append(f'<li>{_badge(c)}<span class="mpnn-glance-doc" title="{doc}">{doc}</span>'
                     f'<a class="mpnn-glance-num" href="#{html.escape(target)}" title="{tip}">'
                     f'{html.escape(headline(c))}</a></li>')
    profile = manifest.get("profile", "?")
    return (f'<div class="mpnn-glance" data-chapter="{html.escape(manifest.get("chapter", ""))}">\n'
            f'<p class="mpnn-glance-title"><strong>At a glance</strong>: {len(claims)} claims, {summary} '
            f'(this build: <code>{html.escape(profile)}</code> profile; each number links to the section that shows it; the full table is at the end)</p>\n'
            f'<ul>\n' + "\n".join(lines) + "\n</ul>\n</div>")


def claims_html(claims: Iterable[dict]) -> str:
    """The full claims table at the end of a chapter: one row per claim, no paragraph-sized cells
    (the document's words and the measurement stacked in one cell, the note folded)."""
    rows = []
    for c in claims:
        note = c.get("note") or ""
        note_html = (f'<details><summary>note</summary>{html.escape(note)}</details>' if note else "")
        rows.append(f'<tr id="claim-{html.escape(c.get("id", ""))}"><td class="mpnn-claim-id"><code>'
                    f'{html.escape(c.get("id", ""))}</code><br>{_badge(c)}</td><td>'
                    f'<div class="mpnn-claim-doc">{html.escape(c.get("document", ""))}</div>'
                    f'<div class="mpnn-claim-measured"><em>measured:</em> {html.escape(c.get("measured", ""))}</div>'
                    f'{note_html}</td></tr>')
    return ('<table class="mpnn-claims"><thead><tr><th>claim</th><th>the document says / this book measured</th>'
            '</tr></thead><tbody>\n' + "\n".join(rows) + "\n</tbody></table>")


# ---------------------------------------------------------------- rewriting an executed notebook

def _split_title(source: str) -> tuple[str, str]:
    """The first markdown cell as (title and source paragraph, the rest)."""
    paras = re.split(r"\n\s*\n", source.strip(), maxsplit=2)
    keep = 1
    if len(paras) > 1 and re.match(r"^[*_]*source", paras[1].strip(), re.I):
        keep = 2
    head = "\n\n".join(paras[:keep])
    return head, source.strip()[len(head):].strip()


def figure_links(chapter: str, slug: str) -> str:
    base = f"../figures/{chapter}/{slug}"
    return (f'<p class="{LINKS_CLASS}">Figure files: <a href="{base}.svg" download>SVG</a> · '
            f'<a href="{base}.png" download>PNG</a> · <a href="{base}.vl.json" download>Vega-Lite JSON</a></p>')


_CHART_ID = re.compile(r'class="mpnn-chart" id="mpnn-([A-Za-z0-9_.-]+)"')


def _add_figure_links(nb, chapter: str) -> int:
    added = 0
    prefix = f"{chapter}-"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            text = data.get("text/html")
            if not text:
                continue
            text = "".join(text) if isinstance(text, list) else text
            if LINKS_CLASS in text:
                continue
            m = _CHART_ID.search(text)
            if m and m.group(1).startswith(prefix):
                data["text/html"] = text + "\n" + figure_links(chapter, m.group(1)[len(prefix):])
                added += 1
    return added


def decorate(notebook: Path, chapter: str | None = None, manifest: dict | None = None) -> bool:
    """Insert (or refresh) the at a glance box and the figure links of ``chapter`` (default: the
    notebook's stem) in an executed notebook, in place; returns whether it changed."""
    import nbformat
    notebook = Path(notebook)
    chapter = chapter or notebook.stem
    if manifest is None:
        path = paths.manifest_dir() / f"{chapter}.json"
        manifest = json.loads(path.read_text()) if path.exists() else None
    nb = nbformat.read(notebook, as_version=4)
    undecorate_cells(nb)
    changed = _add_figure_links(nb, chapter) > 0
    for cell in nb.cells:     # papermill's injected parameters (the run context) are set-up too
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]
            changed = True
    if manifest and manifest.get("claims") and nb.cells and nb.cells[0].cell_type == "markdown":
        first = nb.cells[0]
        head, rest = _split_title(first.source)
        shown = "".join("".join(o.get("data", {}).get("text/html", "")) for c in nb.cells
                        if c.cell_type == "code" for o in c.get("outputs", []))
        rows = set(re.findall(r'<tr id="claim-([^"]+)"', shown))
        box = nbformat.v4.new_markdown_cell(glance_html(manifest, sections(nb), rows, verdict_section(nb)))
        box.metadata[GLANCE_KEY] = True
        cells = [box]
        if rest:
            tail = nbformat.v4.new_markdown_cell(rest)
            tail.metadata[GLANCE_KEY] = "rest"     # rejoined with the title when decorated again
            cells.append(tail)
        first.source = head
        nb.cells = [first, *cells, *nb.cells[1:]]
        changed = True
    nbformat.write(nb, notebook)
    return changed


def undecorate_cells(nb) -> None:
    """Rejoin the title cell with its rest (the inverse of the split :func:`decorate` makes)."""
    cells = []
    for c in nb.cells:
        if c.metadata.get(GLANCE_KEY) == "rest" and cells:
            cells[-1].source = cells[-1].source + "\n\n" + c.source
            continue
        if c.metadata.get(GLANCE_KEY):
            continue
        cells.append(c)
    nb.cells = cells


# ---------------------------------------------------------------- the findings page and the counts

def load_manifests() -> dict[str, dict]:
    """Every chapter's manifest, keyed by chapter (those that exist)."""
    out = {}
    for path in sorted(paths.manifest_dir().glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return out


def findings_rows(manifests: dict[str, dict]) -> list[dict]:
    """One row per claim of the five documents (chapters in :data:`DOCUMENTS`), in book order."""
    from .notebooks import toc_entries
    order = [c for c in toc_entries() if c in DOCUMENTS]
    rows = []
    for chapter in order:
        m = manifests.get(chapter)
        for c in (m or {}).get("claims", []):
            rows.append({"chapter": chapter, "document": DOCUMENTS[chapter], "claim": c["id"],
                         "says": c.get("document", ""), "measured": c.get("measured", ""),
                         "headline": headline(c), "outcome": outcome(c), "badge": badge_text(c),
                         "profile": m.get("profile", ""), "section": (c.get("section") or ""), "raw": c})
    return rows


def counts(rows: list[dict]) -> dict[str, int]:
    return {k: sum(r["outcome"] == k for r in rows) for k in OUTCOMES}


def intro_counts(manifests: dict[str, dict]) -> str:
    """The introduction's sentence about the findings, from the manifests."""
    rows = findings_rows(manifests)
    if not rows:
        return ("*No chapter has run yet in this build: the [findings](findings) page lists every "
                "claim once they have.*")
    n = counts(rows)
    parts = [f"**{v} {k}**" for k, v in n.items() if v]
    profiles = sorted({r["profile"] for r in rows})
    return (f"**Findings at a glance.** This build checked {len(rows)} claims of the five documents "
            f"({', '.join(profiles)} profile): " + ", ".join(parts)
            + ". The [findings](findings) page lists every one of them, sortable and filterable, "
              "with a chart of outcomes per document.")


_COLORS = {"reproduced": "#2e7d32", "differs from the document": "#e08e0b",
           "not reproduced": "#c62828", "not tested": "#9e9e9e"}


def outcomes_chart(rows: list[dict]):
    """Stacked bars: claims per document, coloured by outcome."""
    import altair as alt
    import pandas as pd
    df = (pd.DataFrame([{"document": r["document"], "outcome": r["outcome"]} for r in rows])
          .value_counts().rename("claims").reset_index())
    present = [o for o in OUTCOMES if o in set(df["outcome"])]
    return alt.Chart(df).mark_bar().encode(
        y=alt.Y("document:N", title=None, sort="ascending"),
        x=alt.X("claims:Q", title="claims"),
        color=alt.Color("outcome:N", sort=present,
                        scale=alt.Scale(domain=present, range=[_COLORS[o] for o in present])),
        order=alt.Order("outcome:N"),
        tooltip=["document", "outcome", "claims"]).properties(
        width=330, height=28 * df["document"].nunique(), title="Claims per source document, by outcome")


def findings_html(manifests: dict[str, dict]) -> str:
    """The findings page's generated part: counts, the chart, the sortable filterable table."""
    from .plots import embed_html
    rows = findings_rows(manifests)
    if not rows:
        return "<p><em>No chapter has run yet: run <code>python -m mpnn run</code>, then build.</em></p>"
    n = counts(rows)
    profiles = ", ".join(sorted({r["profile"] for r in rows}))
    parts = [f'<p class="mpnn-findings-counts"><strong>{len(rows)} claims</strong> ({html.escape(profiles)} profile): '
             + ", ".join(f"{v} {k}" for k, v in n.items() if v) + ".</p>",
             embed_html(outcomes_chart(rows).to_dict(), "mpnn-findings-outcomes")]
    docs = sorted({r["document"] for r in rows})
    options = "".join(f'<option value="{html.escape(d)}">{html.escape(d)}</option>' for d in docs)
    outs = "".join(f'<option value="{html.escape(o)}">{html.escape(o)}</option>' for o in OUTCOMES)
    parts.append('<div class="mpnn-filter" data-table="mpnn-findings-table">'
                 '<input type="search" class="mpnn-filter-text" placeholder="filter: any words" aria-label="filter">'
                 f'<select class="mpnn-filter-col" data-col="1" aria-label="document"><option value="">every document</option>{options}</select>'
                 f'<select class="mpnn-filter-col" data-col="4" aria-label="outcome"><option value="">every outcome</option>{outs}</select>'
                 '<span class="mpnn-filter-count"></span></div>')
    body = []
    for r in rows:
        anchor = heading_id(r["section"]) if r["section"] else f"claim-{r['claim']}"
        body.append(
            f'<tr><td><a href="{r["chapter"]}.html#{html.escape(anchor)}">{html.escape(r["chapter"])}</a></td>'
            f'<td>{html.escape(r["document"])}</td>'
            f'<td><code>{html.escape(r["claim"])}</code><br>{html.escape(r["says"])}</td>'
            f'<td title="{html.escape(r["measured"], quote=True)}">{html.escape(r["headline"])}</td>'
            f'<td data-value="{html.escape(r["outcome"])}">{_badge(r["raw"])}</td></tr>')
    parts.append('<table id="mpnn-findings-table" class="mpnn-findings mpnn-sortable"><thead><tr>'
                 '<th>chapter</th><th>document</th><th>the document says</th><th>measured</th><th>outcome</th>'
                 '</tr></thead><tbody>' + "".join(body) + "</tbody></table>")
    return "\n".join(parts)


def fill_markers(text: str, manifests: dict[str, dict]) -> str:
    """Replace ``<!-- mpnn:counts -->`` and ``<!-- mpnn:findings -->`` in a page's markdown."""
    if "<!-- mpnn:counts -->" in text:
        text = text.replace("<!-- mpnn:counts -->", intro_counts(manifests))
    if "<!-- mpnn:findings -->" in text:
        text = text.replace("<!-- mpnn:findings -->", findings_html(manifests))
    return text


# ---------------------------------------------------------------- figure files served by the site

def stage_figures(target: Path) -> int:
    """Copy ``_build/figures`` to ``target/figures`` (served at ``/figures/...``), adding a PNG
    rendered from each Vega-Lite spec that has none (or an older one); returns PNGs written."""
    import shutil
    source = paths.build_dir() / "figures"
    dest = target / "figures"
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    if not source.is_dir():
        return 0
    for spec_path in sorted(source.rglob("*.vl.json")):
        png = spec_path.with_name(spec_path.name[:-len(".vl.json")] + ".png")
        if not png.exists() or png.stat().st_mtime < spec_path.stat().st_mtime:
            import vl_convert as vlc
            try:
                png.write_bytes(vlc.vegalite_to_png(json.loads(spec_path.read_text()), scale=2))
                written += 1
            except Exception as exc:   # a figure that cannot be rendered must not stop the site
                print(f"warning: no PNG for {spec_path}: {exc}")
        svg = png.with_suffix(".svg")
        if not svg.exists():
            import vl_convert as vlc
            svg.write_text(vlc.vegalite_to_svg(json.loads(spec_path.read_text())))
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return written


CSS = """
.mpnn-glance { border: 1px solid #c8d3e0; border-left: 5px solid #3b6ea8; background: #f5f8fc;
  border-radius: 4px; padding: 0.5em 0.9em; margin: 0.8em 0 1.2em; font-size: 0.92em; }
.mpnn-glance-title { margin: 0 0 0.3em; }
.mpnn-glance ul { list-style: none; padding-left: 0; margin: 0; display: grid; column-gap: 0.6em;
  grid-template-columns: auto minmax(0, 1fr) minmax(0, 1.35fr); align-items: baseline; }
.mpnn-glance li { display: contents; }
.mpnn-glance li > * { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; line-height: 1.9; }
.mpnn-glance-doc { color: #333; }
.mpnn-glance-num { font-variant-numeric: tabular-nums; font-weight: 600; text-decoration: none; }
.mpnn-glance-num:hover { text-decoration: underline; }
.mpnn-badge { display: inline-block; min-width: 6.5em; text-align: center; border-radius: 3px;
  padding: 0 0.45em; font-size: 0.82em; color: #fff; line-height: 1.6; margin-right: 0.3em; }
.mpnn-reproduced { background: #2e7d32; }
.mpnn-differs-from-the-document { background: #e08e0b; }
.mpnn-not-reproduced { background: #c62828; }
.mpnn-not-tested { background: #757575; }
table.mpnn-claims { width: 100%; table-layout: fixed; border-collapse: collapse; font-size: 0.9em; }
table.mpnn-claims td, table.mpnn-claims th { border-top: 1px solid #ddd; padding: 0.35em 0.5em; vertical-align: top; text-align: left; }
table.mpnn-claims td.mpnn-claim-id { width: 24%; word-break: break-word; }
table.mpnn-claims th:first-child { width: 24%; }
.mpnn-claim-doc { font-weight: 600; }
.mpnn-claim-measured { color: #333; }
table.mpnn-claims details summary { cursor: pointer; color: #666; font-size: 0.9em; }
.mpnn-figure-links { font-size: 0.82em; color: #666; margin: 0.1em 0 1em; }
.mpnn-filter { display: flex; gap: 0.5em; flex-wrap: wrap; align-items: center; margin: 0.8em 0 0.4em; }
.mpnn-filter input, .mpnn-filter select { font-size: 0.9em; padding: 0.15em 0.3em; }
table.mpnn-findings { width: 100%; border-collapse: collapse; font-size: 0.86em; }
table.mpnn-findings th { cursor: pointer; user-select: none; border-bottom: 2px solid #999; text-align: left; }
table.mpnn-findings th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.mpnn-findings th[aria-sort="descending"]::after { content: " \\25BC"; }
table.mpnn-findings td { border-top: 1px solid #ddd; padding: 0.3em 0.4em; vertical-align: top; }
.vega-bindings { font-size: 0.9em; margin-top: 0.3em; }
.vega-bindings .vega-bind { margin-right: 1em; display: inline-block; }
"""

JS = r"""
(function () {
  function cellText(row, i) {
    var c = row.cells[i]; if (!c) return "";
    return c.dataset.value || c.textContent.trim();
  }
  function sortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, i) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellText(a, i), y = cellText(b, i);
          var nx = parseFloat(x), ny = parseFloat(y);
          var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
          return asc ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  function filterable(box) {
    var table = document.getElementById(box.dataset.table); if (!table) return;
    var text = box.querySelector(".mpnn-filter-text");
    var cols = box.querySelectorAll(".mpnn-filter-col");
    var count = box.querySelector(".mpnn-filter-count");
    function apply() {
      var words = (text.value || "").toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0, rows = table.tBodies[0].rows;
      Array.prototype.forEach.call(rows, function (row) {
        var all = row.textContent.toLowerCase();
        var ok = words.every(function (w) { return all.indexOf(w) >= 0; });
        Array.prototype.forEach.call(cols, function (s) {
          if (s.value && cellText(row, +s.dataset.col) !== s.value) ok = false;
        });
        row.style.display = ok ? "" : "none"; if (ok) shown++;
      });
      count.textContent = shown + " of " + rows.length + " claims";
    }
    text.addEventListener("input", apply);
    Array.prototype.forEach.call(cols, function (s) { s.addEventListener("change", apply); });
    apply();
  }
  function init() {
    document.querySelectorAll("table.mpnn-sortable").forEach(sortable);
    document.querySelectorAll(".mpnn-filter").forEach(filterable);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
"""


def stage_site(src: Path) -> dict[str, Any]:
    """Prepare ``src`` (``_build/src``) for the site build from the run's records: decorate every
    executed chapter, fill the introduction's counts and the findings page, stage the figure files
    (``src/_figures``, the site's extra path) and the site's CSS/JS (``src/_vendor``)."""
    manifests = load_manifests()
    decorated = [nb.stem for nb in sorted((src / "book").glob("*.ipynb"))
                 if not nb.name.endswith(".partial.ipynb") and decorate(nb)]
    for page in (src / "book").glob("*.md"):
        text = page.read_text()
        filled = fill_markers(text, manifests)
        if filled != text:
            page.write_text(filled)
    pngs = stage_figures(src / "_figures")
    write_assets(src / "_vendor")
    return {"decorated": decorated, "pngs": pngs}


def write_assets(vendor: Path) -> None:
    vendor.mkdir(parents=True, exist_ok=True)
    (vendor / "mpnn-site.css").write_text(CSS)
    (vendor / "mpnn-site.js").write_text(JS)
