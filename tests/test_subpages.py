"""A long chapter on the site: an overview page and its parts, from one executed notebook."""
from __future__ import annotations

import nbformat
import pytest
import yaml

from mpnn.runtime import site, subpages


def glued(key: str, value: str):
    """An output as myst-nb's ``glue`` writes it."""
    return nbformat.v4.new_output("display_data", data={"text/plain": repr(value)},
                                  metadata={"scrapbook": {"name": key, "mime_prefix": ""}})


def chapter_notebook(pages=None):
    title = nbformat.v4.new_markdown_cell("# A chapter\n\n**Source:** a paper.\n\n**Verdict.** It holds.")
    box = nbformat.v4.new_markdown_cell('<div class="mpnn-glance"><a href="#training">see</a> '
                                        '<a href="#results">see</a> <a href="#set-up">see</a></div>')
    box.metadata[site.GLANCE_KEY] = True
    setup = nbformat.v4.new_markdown_cell("## Set-up\n\nThe data.")
    code0 = nbformat.v4.new_code_cell("x = 1")
    code0.outputs = [glued("n_train", "60000")]
    training = nbformat.v4.new_markdown_cell("Some words.\n\n## Training\n\nAs in {glue}`n_train`.")
    code1 = nbformat.v4.new_code_cell("y = 2")
    code1.outputs = [glued("acc", "0.97"), nbformat.v4.new_output("stream", name="stdout", text="shown\n")]
    results = nbformat.v4.new_markdown_cell("## Results\n\nAccuracy {glue}`acc`, fig {glue}`fig-curve`.")
    code2 = nbformat.v4.new_code_cell("z = 3")
    code2.outputs = [glued("fig-curve", "Figure 1")]
    nb = nbformat.v4.new_notebook(cells=[title, box, setup, code0, training, code1, results, code2])
    nb.metadata["mpnn"] = {"pages": pages if pages is not None else
                           [{"title": "How it's trained", "from": "Training"}, {"title": "Results", "from": "Results"}]}
    return nb


def glue_keys(nb) -> set[str]:
    return {o["metadata"]["scrapbook"]["name"] for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}


def test_a_chapter_becomes_its_own_page_and_its_parts_in_order():
    pages = subpages.split(chapter_notebook(), "demo")
    assert list(pages) == ["demo", "demo-how-its-trained", "demo-results"]
    first, trained, results = pages.values()
    assert first.cells[0].source.startswith("# A chapter")
    assert "## Set-up" in first.cells[2].source and not any("## Training" in c.source for c in first.cells)
    assert "demo-how-its-trained.ipynb" in first.cells[-2].source          # the list of parts
    assert trained.cells[0].source.startswith("# How it's trained") and "Part 1 of 2 of [A chapter](demo.ipynb)" \
        in trained.cells[0].source
    assert trained.cells[1].source.startswith("## Training")               # the cell was cut at its heading
    assert any(c.source == "Some words." for c in first.cells)
    assert "pages" not in trained.metadata["mpnn"]


def test_every_page_carries_every_glued_value_once_and_shows_only_its_own_outputs():
    nb = chapter_notebook()
    pages = subpages.split(nb, "demo")
    for page in pages.values():
        assert glue_keys(page) == {"n_train", "acc", "fig-curve"}
        carriers = [c for c in page.cells if "remove-cell" in c.metadata.get("tags", [])]
        assert len(carriers) == 1
        assert all("scrapbook" in o["metadata"] for o in carriers[0].outputs)
    shown = [o for c in pages["demo-how-its-trained"].cells if c.cell_type == "code"
             and "remove-cell" not in c.metadata.get("tags", []) for o in c.outputs]
    assert any(o.get("text") == "shown\n" for o in shown)
    assert nb.cells[4].source.startswith("Some words.\n\n## Training")     # the input is left whole


def test_the_glance_box_links_to_the_part_that_holds_each_section():
    box = subpages.split(chapter_notebook(), "demo")["demo"].cells[1].source
    assert 'href="demo-how-its-trained.html#training"' in box
    assert 'href="demo-results.html#results"' in box
    assert 'href="#set-up"' in box                                          # still on the chapter's page


def test_a_chapter_without_pages_stays_whole():
    nb = chapter_notebook(pages=[])
    assert subpages.split(nb, "demo") == {"demo": nb}


@pytest.mark.parametrize("pages, message", [
    ([{"title": "X", "from": "No such heading"}], "no level-2 or level-3 heading"),
    ([{"title": "X"}], "needs a 'title' and a 'from'"),
    ([{"title": "B", "from": "Results"}, {"title": "A", "from": "Training"}], "in the notebook's order"),
])
def test_bad_page_metadata_is_named(pages, message):
    with pytest.raises(ValueError, match=message):
        subpages.split(chapter_notebook(pages), "demo")


def test_the_site_tree_lists_the_parts_first_in_the_table_of_contents(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "site"
    (src / "book").mkdir(parents=True)
    (src / "_figures").mkdir()
    (src / "_figures" / "a.svg").write_text("<svg/>")
    (src / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "book/intro", "parts": [
        {"caption": "C", "chapters": [{"file": "book/demo", "sections": [{"file": "book/other"}]},
                                      {"file": "book/plain"}]}]}))
    (src / "book" / "intro.md").write_text("# Intro\n")
    nbformat.write(chapter_notebook(), src / "book" / "demo.ipynb")
    nbformat.write(chapter_notebook(pages=[]), src / "book" / "plain.ipynb")
    parts = subpages.site_tree(src, dest)
    assert parts == {"demo": ["demo-how-its-trained", "demo-results"]}
    toc = yaml.safe_load((dest / "_toc.yml").read_text())
    assert toc["parts"][0]["chapters"][0]["sections"] == [
        {"file": "book/demo-how-its-trained"}, {"file": "book/demo-results"}, {"file": "book/other"}]
    assert "sections" not in toc["parts"][0]["chapters"][1]
    assert sorted(p.name for p in (dest / "book").iterdir()) == [
        "demo-how-its-trained.ipynb", "demo-results.ipynb", "demo.ipynb", "intro.md", "plain.ipynb"]
    assert (dest / "_figures" / "a.svg").exists()
    assert len(nbformat.read(src / "book" / "demo.ipynb", as_version=4).cells) == 8     # the source stays whole


def test_every_chapter_names_headings_that_exist_in_order():
    from mpnn.infra import paths
    from mpnn.runtime import notebooks
    for chapter in notebooks.chapters():
        nb = nbformat.read(paths.BOOK / f"{chapter}.ipynb", as_version=4)
        pages = subpages.split(nb, chapter)        # raises on a heading that is not there, or out of order
        assert len(pages) == len(subpages.declared_pages(nb)) + 1
