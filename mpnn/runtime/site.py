"""What the site adds to the executed chapters: results first, figures to take away, the findings page.

Everything here is generated from the run's own records, so it is never out of date:

* :func:`decorate` rewrites an executed notebook (``_build/src/book/<chapter>.ipynb``) in place:
  the **verdicts at a glance** box right after the title, source and verdict paragraph, built from
  the chapter's manifest by :mod:`mpnn.runtime.verdicts` (counts per kind, then every claim whole:
  verdict, statement, criterion, measurement, a link to the section that shows it), and, under
  each chart, links to its SVG, PNG and Vega-Lite JSON. The runner calls it after a chapter ran,
  ``python -m mpnn build`` again before building (idempotent).
* :func:`findings_html` / :func:`intro_counts` fill the findings page and the introduction's
  counts from every manifest (markers ``<!-- mpnn:findings -->`` and ``<!-- mpnn:counts -->``).
* ``static/`` holds the site's own stylesheet and script (sorting and filtering tables, themes).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..infra import paths
from . import verdicts

GLANCE_KEY = "mpnn_glance"        # metadata of the inserted markdown cell
LINKS_CLASS = "mpnn-figure-links"

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

def verdict_section(nb) -> dict | None:
    """The section holding the claims cell: the last heading before the cell calling ``run.finish``."""
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


def glance_html(manifest: dict, secs: list[dict]) -> str:
    """The verdict box under a chapter's title (:func:`mpnn.runtime.verdicts.glance`), each claim
    linking to the section that shows it (:func:`section_for`)."""
    links = {}
    for c in manifest.get("claims", []):
        sec = section_for(c, secs)
        if sec is not None:
            links[c["id"]] = sec["id"]
    return verdicts.glance(manifest, links)


# ---------------------------------------------------------------- rewriting an executed notebook

def _split_title(source: str) -> tuple[str, str]:
    """The first markdown cell as (title, source and verdict paragraphs, the rest)."""
    paras = re.split(r"\n\s*\n", source.strip(), maxsplit=3)
    keep = 1
    if len(paras) > keep and re.match(r"^[*_]*source", paras[keep].strip(), re.I):
        keep += 1
    if len(paras) > keep and re.match(r"^[*_]*verdict", paras[keep].strip(), re.I):
        keep += 1
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
        box = nbformat.v4.new_markdown_cell(glance_html(manifest, sections(nb)))
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


def documents() -> dict[str, str]:
    """Chapter -> the source document it reproduces, in book order (notebook metadata
    ``mpnn.document``; chapters without one reproduce no document)."""
    from .notebooks import chapter_settings, chapters
    return {c: d for c in chapters() if (d := chapter_settings(c).get("document"))}


def findings_rows(manifests: dict[str, dict]) -> list[dict]:
    """One row per claim of the chapters that reproduce a document, in book order."""
    return verdicts.findings_rows(manifests, documents())


def intro_counts(manifests: dict[str, dict]) -> str:
    return verdicts.intro_sentence(findings_rows(manifests))


def findings_html(manifests: dict[str, dict]) -> str:
    return verdicts.findings_html(findings_rows(manifests))


def fill_markers(text: str, manifests: dict[str, dict]) -> str:
    """Replace ``<!-- mpnn:counts -->`` and ``<!-- mpnn:findings -->`` in a page's markdown."""
    if "<!-- mpnn:counts -->" in text:
        text = text.replace("<!-- mpnn:counts -->", intro_counts(manifests))
    if "<!-- mpnn:findings -->" in text:
        text = text.replace("<!-- mpnn:findings -->", findings_html(manifests))
    return text


# ---------------------------------------------------------------- figure files served by the site

def compact_png(png: bytes) -> bytes:
    """A chart's PNG with a 256-colour palette (a chart has few colours; measured here: 9.3 MB of
    figure PNGs became 0.8 MB). Unchanged where Pillow is missing."""
    try:
        import io

        from PIL import Image
    except ImportError:
        return png
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGBA").quantize(256, method=Image.Quantize.FASTOCTREE).save(
        out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def stage_figures(target: Path) -> int:
    """Copy ``_build/figures`` to ``target/figures`` (served at ``/figures/...``), adding a PNG
    rendered from each Vega-Lite spec that has none (or an older one), at the chart's own size
    (scale 1: the column's width; the SVG is there for print); returns PNGs written."""
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
                png.write_bytes(compact_png(vlc.vegalite_to_png(json.loads(spec_path.read_text()), scale=1)))
                written += 1
            except Exception as exc:   # a figure that cannot be rendered must not stop the site
                print(f"warning: no PNG for {spec_path}: {exc}")
        svg = png.with_suffix(".svg")
        if not svg.exists():
            import vl_convert as vlc
            svg.write_text(vlc.vegalite_to_svg(json.loads(spec_path.read_text())))
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return written


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


STATIC = Path(__file__).with_name("static")     # the site's own stylesheet and script


def write_assets(vendor: Path) -> None:
    import shutil
    vendor.mkdir(parents=True, exist_ok=True)
    for name in ("mpnn-site.css", "mpnn-site.js"):
        shutil.copyfile(STATIC / name, vendor / name)


def prune(html: Path) -> int:
    """Lighten a built site; returns the bytes removed.

    * the theme's JavaScript/CSS source maps (a debugging aid for the theme's authors) and its
      translation catalogues (read when the site is built, never by a browser) are deleted;
    * the notebook a page's download button offers (``_sources/book/<page>.ipynb``) becomes the
      chapter's notebook to run, as committed (outputs stripped): a part page offers its whole
      chapter, and the executed copy's outputs are on the page already."""
    import shutil
    html = Path(html)
    before = size_mb(html)
    for path in html.glob("_static/**/*.map"):
        path.unlink()
    if (html / "_static" / "locales").is_dir():
        shutil.rmtree(html / "_static" / "locales")
    for page in html.glob("_sources/book/*.ipynb"):
        chapter = page.stem if (paths.BOOK / f"{page.stem}.ipynb").exists() else page.stem.split("-", 1)[0]
        if (paths.BOOK / f"{chapter}.ipynb").exists():
            shutil.copyfile(paths.BOOK / f"{chapter}.ipynb", page)
    return round((before - size_mb(html)) * 1e6)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
