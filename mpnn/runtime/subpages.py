"""Long chapters on the site as an overview page and sub-pages (one notebook, one run, several pages).

A chapter is one executed notebook with one run context and one manifest; a reader in Jupyter runs
it whole. On the site a long chapter reads better in parts. The notebook's metadata names them::

    "mpnn": {"pages": [{"title": "The document's experiments", "from": "The dataset family and its spectrum"},
                       {"title": "Its next checks", "from": "Beyond linear: a ReLU and a tanh hidden layer"}]}

``from`` is the text of the level-2 or level-3 heading where the page starts. :func:`split`
turns the executed, decorated notebook into

* the chapter's own page (``book/<chapter>``): everything before the first named heading -- the
  title, the source, the verdict and the verdicts at a glance box -- and a list of the parts;
* one page per part (``book/<chapter>-<slug>``), in the notebook's order, titled by ``title``.

Every page keeps the whole notebook's glued values (a hidden cell holds those of the cells it does
not show), so figure numbers and measured numbers resolve on every page, and the glance box's
links point to the page that holds each section. :func:`site_tree` writes the tree jupyter-book
builds (``_build/site``) with the split chapters and their entries in ``_toc.yml``; the executed
notebooks in ``_build/src`` stay whole.
"""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import yaml

from .site import GLANCE_KEY, heading_id, sections

HEADING = re.compile(r"^(#{2,3})\s+(.*?)\s*#*\s*$")


def declared_pages(nb) -> list[dict]:
    """The notebook's ``mpnn.pages`` (``[{"title", "from"}]``), checked: each has both keys."""
    pages = nb.metadata.get("mpnn", {}).get("pages", [])
    for p in pages:
        if not (isinstance(p, dict) and p.get("title") and p.get("from")):
            raise ValueError(f"notebook metadata mpnn.pages: every entry needs a 'title' and a 'from' heading, got {p!r}")
    return pages


def page_name(chapter: str, title: str) -> str:
    """``<chapter>-<slug of title>`` (a flat name: the pages sit beside the chapter's own)."""
    slug = heading_id(re.sub("[’']", "", title))
    return f"{chapter}-{slug}"


def _title(nb) -> str:
    first = nb.cells[0].source.strip().splitlines()[0] if nb.cells and nb.cells[0].cell_type == "markdown" else ""
    return re.sub(r"^#\s+", "", first).strip()


def _start_of(nb, heading: str) -> int:
    """Index of the cell that starts with ``heading``; a markdown cell holding it further down is
    cut in two there first."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or cell.metadata.get(GLANCE_KEY):
            continue
        lines = cell.source.splitlines()
        for j, line in enumerate(lines):
            m = HEADING.match(line)
            if m and m.group(2).strip() == heading.strip():
                if j and "\n".join(lines[:j]).strip():
                    import nbformat
                    rest = nbformat.v4.new_markdown_cell("\n".join(lines[j:]))
                    cell.source = "\n".join(lines[:j]).rstrip()
                    nb.cells.insert(i + 1, rest)
                    return i + 1
                return i
    raise ValueError(f"notebook metadata mpnn.pages: no level-2 or level-3 heading {heading!r} in the notebook; "
                     f"'from' must be a heading's exact text")


def _glue_outputs(cells) -> list:
    """The glued values of ``cells`` (outputs carrying myst-nb's ``scrapbook`` metadata)."""
    return [copy.deepcopy(o) for c in cells if c.cell_type == "code"
            for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})]


def _carrier(outputs: list):
    """A hidden code cell that only carries glued values to a page that does not show their cells."""
    import nbformat
    cell = nbformat.v4.new_code_cell("# glued values of the chapter's other pages")
    cell.metadata["tags"] = ["remove-cell"]
    cell.outputs = outputs
    return cell


def split(nb, chapter: str) -> dict[str, object]:
    """``{page name: notebook}`` for a chapter whose metadata declares pages (the chapter's own
    page under ``chapter``, then its parts in order); ``{chapter: nb}`` unchanged when it declares none."""
    import nbformat
    pages = declared_pages(nb)
    if not pages:
        return {chapter: nb}
    nb = copy.deepcopy(nb)
    starts = [_start_of(nb, p["from"]) for p in pages]
    if starts != sorted(set(starts)) or starts[0] == 0:
        raise ValueError(f"{chapter}: notebook metadata mpnn.pages must name headings in the notebook's order, "
                         f"after its title")
    bounds = [0, *starts, len(nb.cells)]
    names = [chapter] + [page_name(chapter, p["title"]) for p in pages]
    ranges = {name: (bounds[k], bounds[k + 1]) for k, name in enumerate(names)}
    where = {s["id"]: name for name, (a, b) in ranges.items()
             for s in sections(nbformat.v4.new_notebook(cells=nb.cells[a:b]))}
    out = {}
    for k, name in enumerate(names):
        a, b = ranges[name]
        cells = [copy.deepcopy(c) for c in nb.cells[a:b]]
        if k == 0:
            for c in cells:
                if c.cell_type == "markdown" and c.metadata.get(GLANCE_KEY) is True:
                    c.source = re.sub(r'href="#([^"]+)"', lambda m: _href(m.group(1), where, chapter), c.source)
            listing = "\n".join(f"{i}. [{p['title']}]({page_name(chapter, p['title'])}.ipynb)"
                                for i, p in enumerate(pages, 1))
            cells.append(nbformat.v4.new_markdown_cell(f"**This chapter's parts**\n\n{listing}"))
        else:
            cells.insert(0, nbformat.v4.new_markdown_cell(
                f"# {pages[k - 1]['title']}\n\n*Part {k} of {len(pages)} of [{_title(nb)}]({chapter}.ipynb), "
                f"whose first page holds the verdicts.*"))
        others = nb.cells[:a] + nb.cells[b:]
        glued = _glue_outputs(others)
        if glued:
            cells.append(_carrier(glued))
        page = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.metadata))
        page.metadata.get("mpnn", {}).pop("pages", None)
        out[name] = page
    return out


def _href(anchor: str, where: dict[str, str], chapter: str) -> str:
    page = where.get(anchor, chapter)
    return f'href="#{anchor}"' if page == chapter else f'href="{page}.html#{anchor}"'


def _with_parts(toc: dict, parts: dict[str, list[str]]) -> dict:
    """``_toc.yml`` with each split chapter's parts as its first sections."""
    from .notebooks import toc_nodes
    toc = copy.deepcopy(toc)
    for node in list(toc_nodes(toc)):
        stem = Path(str(node.get("file", ""))).name
        if stem in parts:
            node["sections"] = [{"file": f"book/{p}"} for p in parts[stem]] + node.get("sections", [])
    return toc


def site_tree(src: Path, dest: Path) -> dict[str, list[str]]:
    """Write the tree jupyter-book builds: ``src`` (``_build/src``, executed and decorated) with
    every chapter that declares pages split (:func:`split`) and ``_toc.yml`` listing the parts.
    Returns ``{chapter: [part page names]}``."""
    import nbformat
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in src.iterdir():
        if item.name == "book":
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copyfile(item, dest / item.name)
    (dest / "book").mkdir()
    parts: dict[str, list[str]] = {}
    for item in sorted((src / "book").iterdir()):
        if item.suffix != ".ipynb" or item.name.endswith(".partial.ipynb"):
            if item.is_file():
                shutil.copyfile(item, dest / "book" / item.name)
            continue
        pages = split(nbformat.read(item, as_version=4), item.stem)
        for name, page in pages.items():
            nbformat.write(page, dest / "book" / f"{name}.ipynb")
        if len(pages) > 1:
            parts[item.stem] = [n for n in pages if n != item.stem]
    (dest / "_code").mkdir(exist_ok=True)
    if (src / "book" / "api.md").exists():
        from . import api_pages
        parts["api"] = api_pages.write(dest / "book")
        api_pages.write_sources(dest / "_code")
    toc = yaml.safe_load((src / "_toc.yml").read_text())
    (dest / "_toc.yml").write_text(yaml.safe_dump(_with_parts(toc, parts), sort_keys=False))
    return parts
