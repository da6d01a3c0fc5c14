"""The API reference pages and the source pages their [source] links open."""
from __future__ import annotations

import inspect
import re

from mpnn.runtime import api_pages, sphinx_api


def test_every_module_is_documented_on_exactly_one_page():
    pages = api_pages.parts()
    listed = [m for members in pages.values() for m in members]
    assert sorted(listed) == api_pages.modules() and len(set(listed)) == len(listed)
    assert "mpnn.moe.layers" in pages["moe"]
    assert "mpnn.experiments.switch_network.claims" in pages["experiments-switch_network"]
    assert list(pages)[0] == "package" and list(pages)[-1] == "infra"
    assert "mpnn.__main__" not in listed


def test_a_page_documents_a_modules_own_members_and_a_packages_docstring_only():
    text = api_pages.page("moe", ["mpnn.moe", "mpnn.moe.layers"])
    assert text.startswith("# `mpnn.moe`")
    blocks = re.findall(r"```\{eval-rst\}\n(.*?)```", text, re.S)
    assert blocks[0].strip() == ".. automodule:: mpnn.moe"
    assert ":members:" in blocks[1] and ":ignore-module-all:" in blocks[1]
    assert api_pages.page("experiments-token_selection", ["mpnn.experiments.token_selection"]).startswith(
        "# Experiments: token selection")


def test_a_source_link_lands_on_the_line_that_defines_the_object():
    from mpnn.moe import layers
    url = api_pages.source_url("mpnn.moe.layers", "make_moe")
    line = inspect.getsourcelines(layers.make_moe)[1]
    assert url == f"../code/mpnn/moe/layers.py.html#L{line}"
    assert api_pages.source_url("mpnn.moe", "make_moe") is None          # re-exported: linked where defined
    assert api_pages.source_url("torch.nn", "Linear") is None


def test_the_source_pages_hold_every_line_with_its_anchor(tmp_path):
    assert api_pages.write_sources(tmp_path) == sum(api_pages.source_path(m) is not None for m in api_pages.modules())
    page = (tmp_path / "code" / "mpnn" / "moe" / "layers.py.html").read_text()
    source = (api_pages.source_path("mpnn.moe.layers")).read_text().splitlines()
    assert page.count('<span id="L') == len(source)
    assert f'<span id="L{len(source)}">' in page
    assert 'href="../../../book/api-moe.html#module-mpnn.moe.layers"' in page
    assert (tmp_path / "code" / "mpnn" / "moe.__init__.py.html").exists()
    assert "&lt;" in (tmp_path / "code" / "mpnn" / "runtime" / "api_pages.py.html").read_text()   # escaped


def test_a_reference_finds_the_object_where_it_is_defined_or_nearest():
    assert sphinx_api.defined_name("mpnn.moe.make_moe") == "mpnn.moe.layers.make_moe"
    assert sphinx_api.defined_name("mpnn.moe.no_such_thing") is None
    names = ["mpnn.a.x.f", "mpnn.b.f", "mpnn.a.y.g"]
    assert sphinx_api.nearest("f", names, "mpnn.a.x") == "mpnn.a.x.f"
    assert sphinx_api.nearest("f", names, "mpnn.c") is None                  # two equally near: ambiguous
    assert sphinx_api.nearest("g", names, "mpnn.b") == "mpnn.a.y.g"
    assert sphinx_api.exists("layers", "mpnn.moe.dispatch")                  # a sibling module
    assert not sphinx_api.exists("no_such_name", "mpnn.moe.dispatch")


def test_the_sphinx_extension_registers_its_resolvers():
    """The site build loads it as an extension: it must connect the reference resolver and give
    linkcode its function."""
    calls = []

    class App:
        def connect(self, event, fn):
            calls.append(event)

    assert sphinx_api.setup(App())["parallel_read_safe"]
    assert calls == ["config-inited", "missing-reference"]

    class Config:
        pass
    config = Config()
    sphinx_api._configure(None, config)
    assert config.linkcode_resolve("py", {"module": "mpnn.moe.layers", "fullname": "make_moe"}).startswith(
        "../code/mpnn/moe/layers.py.html#L")
