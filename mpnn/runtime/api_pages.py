"""The API reference: one site page per part of the package, written at build time from its modules.

A reader goes from a figure's function to its documentation and, through its ``[source]`` link
(:mod:`sphinx.ext.linkcode`), to its source: a plain page per module with an anchor on every line
(:func:`write_sources`). The pages are generated (``book/api-<part>.md`` in the tree jupyter-book builds) so
that they always list the modules the package has; ``book/api.md`` introduces them and the table of
contents lists them under it (:func:`mpnn.runtime.subpages.site_tree`).

Each module is documented once, on its part's page, with the members it defines (names it only
imports are documented where they are defined).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path

import mpnn

SKIP = ("mpnn.__main__",)


def modules() -> list[str]:
    """Every importable module of the package, packages first, in name order."""
    names = ["mpnn"]
    for info in pkgutil.walk_packages(mpnn.__path__, prefix="mpnn."):
        if info.name not in SKIP:
            names.append(info.name)
    return sorted(names)


def part_of(module: str) -> str:
    """The page a module is documented on: ``experiments-<chapter>`` for a chapter's code,
    ``runtime``, ``moe``... for the rest (one page per top-level module or package)."""
    parts = module.split(".")
    if module in ("mpnn", "mpnn.experiments"):
        return "package"
    if parts[1] == "experiments" and len(parts) > 2:
        return f"experiments-{parts[2]}"
    return parts[1]


def parts() -> dict[str, list[str]]:
    """``{part: [modules]}`` in the order pages appear: the package, the mechanisms and data, the
    chapters' experiments, then the benchmarks, the runtime and the infrastructure."""
    grouped: dict[str, list[str]] = {}
    for name in modules():
        grouped.setdefault(part_of(name), []).append(name)
    last = ("benchmarks", "runtime", "infra")
    rank = lambda p: (0 if p == "package" else 2 if p.startswith("experiments") else
                      3 + last.index(p) if p in last else 1, p)
    return {p: grouped[p] for p in sorted(grouped, key=rank)}


def page(part: str, names: list[str]) -> str:
    """A part's page: the package docstring, then each module with the members it defines."""
    title = (f"Experiments: {part.split('-', 1)[1].replace('_', ' ')}" if part.startswith("experiments-")
             else "The package" if part == "package" else f"`{names[0]}`")
    lines = [f"# {title}", ""]
    for name in names:
        is_package = hasattr(importlib.import_module(name), "__path__")
        lines += ["```{eval-rst}", f".. automodule:: {name}"]
        if not is_package:        # a package's __init__ re-exports: its members are documented where defined
            lines += ["   :members:", "   :ignore-module-all:"]
        lines += ["```", ""]
    return "\n".join(lines)


def write(book: Path) -> list[str]:
    """Write ``api-<part>.md`` for every part into ``book``; returns the page names in order."""
    names = []
    for part, members in parts().items():
        name = f"api-{part}"
        (book / f"{name}.md").write_text(page(part, members))
        names.append(name)
    return names


# ---------------------------------------------------------------- the source pages behind [source]

CODE_DIR = "code"        # served at /code/<module path>.py.html (the site's extra path)

_CODE_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{path}</title>
<style>
body {{ margin: 0; font-family: system-ui, sans-serif; background: #fff; color: #222; }}
header {{ padding: 0.8em 1em; border-bottom: 1px solid #ddd; }}
a {{ color: #0b5cad; }}
pre {{ margin: 0; padding: 0.8em 0; font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace;
      overflow-x: auto; counter-reset: line; }}
pre span {{ display: block; padding: 0 1em 0 0; }}
pre span::before {{ counter-increment: line; content: counter(line); display: inline-block; width: 3.2em;
                   margin-right: 1em; text-align: right; color: #888; user-select: none; }}
pre span:target {{ background: #fff3a0; }}
@media (prefers-color-scheme: dark) {{
  body {{ background: #121212; color: #e6e6e6; }} header {{ border-color: #444; }} a {{ color: #8ab4f8; }}
  pre span:target {{ background: #4a4420; }}
}}
</style></head>
<body><header><strong>{path}</strong> · the source of <a href="{api}">{module}</a> in the API reference</header>
<pre>{lines}</pre></body></html>
"""


def source_path(module: str) -> Path | None:
    """The ``.py`` file of a module of the package, or None."""
    spec = importlib.util.find_spec(module)
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None


def source_page(module: str) -> str:
    """Where a module's source page lives under ``code/``: ``mpnn/moe/layers.py.html``, a package's
    ``__init__`` as ``mpnn/moe.__init__.py.html``."""
    is_package = source_path(module).name == "__init__.py"
    return module.replace(".", "/") + (".__init__" if is_package else "") + ".py.html"


def source_url(module: str, fullname: str) -> str | None:
    """The ``[source]`` link of ``module.fullname`` from an API page: its source page at the line
    where it is defined (for :mod:`sphinx.ext.linkcode`)."""
    import inspect
    if not module.startswith("mpnn") or source_path(module) is None:
        return None
    obj = importlib.import_module(module)
    try:
        for attr in fullname.split("."):
            obj = getattr(obj, attr)
        obj = inspect.unwrap(obj)
        if getattr(obj, "__module__", module) != module:     # documented here, defined elsewhere
            return None
        line = inspect.getsourcelines(obj)[1]
    except (AttributeError, TypeError, OSError):
        line = None
    return f"../{CODE_DIR}/{source_page(module)}" + (f"#L{line}" if line else "")


def write_sources(target: Path) -> int:
    """Write a plain, line-anchored page of every module's source under ``target/code``; returns
    how many. (Sphinx's ``viewcode`` highlights the code instead, at about five times the bytes.)"""
    import html
    written = 0
    for module in modules():
        path = source_path(module)
        if path is None:
            continue
        page = source_page(module)
        out = target / CODE_DIR / page
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(f'<span id="L{i}">{html.escape(text)}</span>'
                        for i, text in enumerate(path.read_text().splitlines(), 1))
        depth = "../" * page.count("/")
        api = f"{depth}../book/api-{part_of(module)}.html#module-{module}"
        out.write_text(_CODE_PAGE.format(path=f"{module.replace('.', '/')}.py", module=module, api=api, lines=lines))
        written += 1
    return written
