"""The folder tree is the architecture: three floors, and the rules between them.

* mechanisms -- ``mpnn/*.py`` and the mechanism folders (``tagnet``, ``early_exit``, ``moe``, ``deploy``,
  ``data``), standing on ``mpnn/infra`` (paths, determinism, the one timer, compiled kernels, the
  training loop): the ideas, importable alone;
* experiments -- ``mpnn/experiments/<chapter>.py``: one module per chapter, named like its notebook;
* runtime -- ``mpnn/runtime``: runner, run record, plots, widgets, statistics, benchmarks, timing.

Notebooks tell the story: no function or class in a code cell longer than
:data:`NOTEBOOK_FUNCTION_LINES` lines, and no chart built by hand (figures come from
``mpnn.runtime.plots`` builders or the chapter's experiment module). No import cycle, function-local
imports included; the runtime names no chapter.
"""
import ast
import json
from pathlib import Path

import pytest

from mpnn.infra import paths
from mpnn.runtime import notebooks

PACKAGE = paths.ROOT / "mpnn"
NOTEBOOK_FUNCTION_LINES = 6     # stated in CONTRIBUTING.md ("Notebook anatomy")
NOT_MECHANISMS = ("experiments", "runtime", "benchmarks")
MECHANISMS = sorted(p for p in PACKAGE.rglob("*.py")
                    if p.relative_to(PACKAGE).parts[0] not in NOT_MECHANISMS
                    and p.name != "__main__.py" and "__pycache__" not in p.parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``mpnn...`` module a file imports, anywhere in it (relative imports resolved)."""
    package = ".".join(path.relative_to(paths.ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m == "mpnn" or m.startswith("mpnn.")}


@pytest.mark.parametrize("path", MECHANISMS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_mechanisms_import_no_experiment_and_no_runtime(path):
    bad = sorted(m for m in imported_modules(path)
                 if m.startswith(("mpnn.experiments", "mpnn.runtime", "mpnn.benchmarks")))
    assert not bad, f"{path.relative_to(paths.ROOT)} is a mechanism but imports {bad}"


def _experiment_units() -> dict[str, list[Path]]:
    """Chapter name -> the files of its experiment code: ``<chapter>.py``, or a package
    ``<chapter>/`` (one module per section of the notebook) for a long chapter."""
    units = {p.stem: [p] for p in (PACKAGE / "experiments").glob("*.py") if p.name != "__init__.py"}
    units |= {p.name: sorted(p.glob("*.py")) for p in (PACKAGE / "experiments").iterdir()
              if p.is_dir() and (p / "__init__.py").exists()}
    return units


def test_every_chapter_has_its_experiment_module_and_nothing_else_is_there():
    chapters = set(notebooks.chapters())
    modules = set(_experiment_units())
    assert modules <= chapters, f"experiment modules not named after a chapter: {sorted(modules - chapters)}"
    assert chapters <= modules, f"chapters without mpnn/experiments/<chapter>.py: {sorted(chapters - modules)}"


@pytest.mark.parametrize("chapter", sorted(_experiment_units()))
def test_an_experiment_imports_no_other_chapter(chapter):
    others = sorted({m for path in _experiment_units()[chapter] for m in imported_modules(path)
                     if m.startswith("mpnn.experiments.") and m.split(".")[2] != chapter})
    assert not others, f"{chapter} imports other chapters' code {others}: move what they share into a mechanism"


@pytest.mark.parametrize("path", [p for files in _experiment_units().values() for p in files],
                         ids=lambda p: f"{p.parent.name}.{p.stem}")
def test_no_experiment_module_is_over_400_lines(path):
    """A chapter's code stays in sections a reader can hold: no experiment module over 400 lines
    (a long chapter is a package, one module per section of its notebook)."""
    assert len(path.read_text().splitlines()) <= 400


def test_benchmark_files_are_named_after_chapters():
    chapters = set(notebooks.chapters())
    names = {p.stem for p in (PACKAGE / "benchmarks").glob("*.py") if p.name != "__init__.py"}
    assert names <= chapters, f"benchmark modules not named after a chapter: {sorted(names - chapters)}"


def _code_cells(chapter):
    nb = json.loads((paths.BOOK / f"{chapter}.ipynb").read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            yield i, "".join(cell["source"])


def _parse(source):
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


@pytest.mark.parametrize("chapter", notebooks.chapters())
def test_notebook_cells_hold_no_long_functions(chapter):
    long = []
    for i, source in _code_cells(chapter):
        for node in ast.walk(_parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                n = node.end_lineno - node.lineno + 1
                if n > NOTEBOOK_FUNCTION_LINES:
                    long.append(f"cell {i}: {node.name} ({n} lines)")
    assert not long, (f"{chapter}: functions longer than {NOTEBOOK_FUNCTION_LINES} lines belong in "
                      f"mpnn/experiments/{chapter}.py: {long}")


@pytest.mark.parametrize("chapter", notebooks.chapters())
def test_notebook_figures_come_from_builders(chapter):
    hand_made = [i for i, source in _code_cells(chapter)
                 if "altair" in {a.name.split(".")[0] for n in ast.walk(_parse(source))
                                 if isinstance(n, (ast.Import, ast.ImportFrom))
                                 for a in ([ast.alias(n.module or "")] if isinstance(n, ast.ImportFrom) else n.names)}]
    assert not hand_made, (f"{chapter}: cells {hand_made} import altair; draw figures with mpnn.runtime.plots "
                           f"builders or a figure function of mpnn/experiments/{chapter}.py")


@pytest.mark.parametrize("chapter", notebooks.chapters())
def test_notebooks_leave_the_thread_count_to_the_run_context(chapter):
    setting = [i for i, source in _code_cells(chapter) if "set_num_threads" in source]
    assert not setting, (f"{chapter}: cells {setting} set torch's thread count; declare it in the notebook "
                         f"metadata instead ('mpnn': {{'threads': N}}), the run context applies it")


# What must be folded on the site (CONTRIBUTING "Code one click away"): set-up (the parameters cell,
# the cell calling start_run), helpers (a top-level def/class), plotting and explorers, and the claims
# table (run.finish). Other cells are decided by their author.
import re  # noqa: E402  (the folding rule below)

FOLDED = re.compile(r"plots\.show|widgets\.explorer|show_images|run\.finish\(|start_run\(|^def |^class ", re.M)


@pytest.mark.parametrize("chapter", notebooks.chapters())
def test_setup_helper_and_plotting_cells_fold_their_code(chapter):
    nb = json.loads((paths.BOOK / f"{chapter}.ipynb").read_text())
    unfolded = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
                and "hide-input" not in cell.get("metadata", {}).get("tags", [])
                and ("parameters" in cell.get("metadata", {}).get("tags", [])
                     or FOLDED.search("".join(cell["source"])))]
    assert not unfolded, (f"{chapter}: code cells {unfolded} are set-up, helper, plotting or claims cells; "
                          f"tag them 'hide-input' (CONTRIBUTING.md, 'Code one click away')")


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, function-local imports included (an import of
    ``a.b`` names module ``a.b`` where it exists, else its package ``a``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(paths.ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    def resolve(m):
        while m and m not in modules:
            m = m.rpartition(".")[0]
        return m

    graph = {}
    for name, path in modules.items():
        package = ".".join(path.relative_to(paths.ROOT).with_suffix("").parts[:-1])
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # "from pkg import sub" imports the submodule; "from pkg import name" the package
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else resolve(base)
                            for a in node.names}
        graph[name] = {t for t in targets if t and t.startswith("mpnn") and t not in (name, "mpnn")}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_the_packages_modules():
    """A cycle, even through an import inside a function, means two modules are one: split out what
    they share (as :mod:`mpnn.deploy.rank_work` holds what every rank computes)."""
    graph = import_graph()
    assert {"mpnn.deploy.rank_work", "mpnn.runtime.site"} <= set(graph)       # the graph is the package
    assert import_cycles(graph) == []


def _figure_calls(source: str):
    """The ``plots.show(...)`` / ``plots.show_images(...)`` calls of a code cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError:          # a cell magic: not Python
        return []
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("show", "show_images") and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "plots"]


@pytest.mark.parametrize("chapter", notebooks.chapters())
def test_every_figure_is_numbered_with_a_caption(chapter):
    """A figure says what to look at: every figure a chapter shows has a caption (plots.show numbers it)."""
    nb = json.loads((paths.ROOT / "book" / f"{chapter}.ipynb").read_text())
    missing = [ast.unparse(call)[:80] for cell in nb["cells"] if cell["cell_type"] == "code"
               for call in _figure_calls("".join(cell["source"]))
               if not any(k.arg == "caption" for k in call.keywords)]
    assert not missing, f"{chapter}: figures without caption=: {missing}"


def test_the_runtime_names_no_chapter():
    """What is special about a chapter (it runs last, it shows the benchmarks, its document) is in its
    notebook metadata ``mpnn``, never a chapter name in the runtime's code."""
    names = set(notebooks.chapters())

    def keys(tree):     # "datasets" as a Vega-Lite spec's key is not the chapter
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript):
                yield node.slice
            elif isinstance(node, ast.Compare):
                yield node.left
            elif isinstance(node, ast.Dict):
                yield from node.keys
    found = []
    for p in (PACKAGE / "runtime").glob("*.py"):
        tree = ast.parse(p.read_text())
        skip = {id(k) for k in keys(tree)}
        found += [(p.name, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and node.value in names and id(node) not in skip]
    assert not found, found
    assert [c for c in names if notebooks.chapter_settings(c)["run_last"]] == ["reproducibility"]
    assert [c for c in names if notebooks.chapter_settings(c)["benchmarks"]] == ["performance"]


def test_infrastructure_imports_no_idea():
    """``mpnn.infra`` is the ground floor: it imports no mechanism, experiment or runtime module."""
    graph = import_graph()
    above = {m: sorted(t for t in targets if not t.startswith("mpnn.infra"))
             for m, targets in graph.items() if m.startswith("mpnn.infra")}
    assert not any(above.values()), above


@pytest.mark.parametrize("chapter", notebooks.chapters())
def test_every_cell_has_its_own_id(chapter):
    """nbformat 4.5 cells carry ids (a missing one is a warning today and an error in future nbformat)."""
    ids = [c.get("id") for c in json.loads((paths.ROOT / "book" / f"{chapter}.ipynb").read_text())["cells"]]
    assert all(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("chapter", notebooks.chapters())
def test_a_claims_cell_never_shows_a_claims_repr(chapter):
    """``run.claim`` returns the claim: as a cell's last line it would print ``Claim(id=...)`` on the
    page. A claims cell ends with ``run.finish()`` or a semicolon."""
    for i, source in _code_cells(chapter):
        lines = [line for line in source.rstrip().splitlines() if line.strip()]
        if lines and "run.claim(" in source and "run.finish(" not in lines[-1]:
            assert lines[-1].rstrip().endswith(";"), f"{chapter} cell {i}: end the claims with `;` or run.finish()"
