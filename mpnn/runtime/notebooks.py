"""The book's chapters as data: which notebooks exist, their ``parameters`` cells and profiles.

A chapter's parameters are the flat literal assignments of its cell tagged ``parameters``; each
parameter's type is the type of its default. Values from profiles and the command line are
checked against those types *before* anything runs (papermill itself only warns about unknown
names and never checks types).
"""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..infra import paths

PROFILE_NAMES = ("smoke", "default", "full")


class ChapterError(ValueError):
    """A chapter, profile or parameter that does not exist or does not fit."""


def chapters() -> list[str]:
    """Chapter names in the order of ``_toc.yml`` (entries that are notebooks in ``book/``)."""
    return [name for name in toc_entries() if (paths.BOOK / f"{name}.ipynb").exists()]


def toc_entries() -> list[str]:
    """Stems of every file in ``_toc.yml``, in order."""
    toc = yaml.safe_load((paths.ROOT / "_toc.yml").read_text())
    return [Path(str(node[key])).stem for node in toc_nodes(toc) for key in ("root", "file") if key in node]


def toc_nodes(node) -> Iterator[dict]:
    """Every mapping of a ``_toc.yml`` tree (parts, chapters, sections), depth first, in order."""
    if isinstance(node, dict):
        yield node
        for value in list(node.values()):
            yield from toc_nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from toc_nodes(item)


def notebook_path(chapter: str) -> Path:
    valid = chapters()
    if chapter not in valid:
        raise ChapterError(f"unknown chapter {chapter!r}; valid chapters: {', '.join(valid)}")
    return paths.BOOK / f"{chapter}.ipynb"


def parameters_source(notebook: Path) -> str:
    nb = json.loads(Path(notebook).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    raise ChapterError(f"{notebook} has no code cell tagged 'parameters'")


SETTINGS = {"pause_for_timing": bool, "threads": int, "document": str, "typed_numbers": dict, "run_last": bool,
            "benchmarks": bool, "pages": list}   # a notebook's metadata "mpnn": {...}


def chapter_settings(chapter: str) -> dict[str, Any]:
    """What a chapter declares about how it must run, in its notebook metadata ``"mpnn"``.

    ``pause_for_timing`` (default true): may its kernel be suspended while another chapter's
    timing cell runs (false for processes with wall-clock timeouts). ``threads``: the CPU thread
    count its kernel needs whatever the runner would give it (e.g. 1 where per-sample kernels
    are tiny and the reduction order must not depend on the machine). ``document``: the source
    document the chapter reproduces (the findings page groups by it). ``typed_numbers``: the numbers
    its markdown may type, each with where it comes from (the document, the original code, a method
    constant; :mod:`mpnn.runtime.text`). ``run_last``: it reads the other chapters' manifests, so it
    starts after them. ``benchmarks``: it shows the benchmark harness's results, which the runner
    measures first, alone. ``pages``: the parts a long chapter is split into on the site, each a
    title and the heading it starts at (:mod:`mpnn.runtime.subpages`).
    """
    meta = json.loads(notebook_path(chapter).read_text()).get("metadata", {}).get("mpnn", {})
    for key, value in meta.items():
        if key not in SETTINGS or not isinstance(value, SETTINGS[key]):
            raise ChapterError(f"{chapter}: notebook metadata mpnn.{key}={value!r} is not one of "
                               + ", ".join(f"{k} ({t.__name__})" for k, t in SETTINGS.items()))
    return {"pause_for_timing": True, "threads": None, "run_last": False, "benchmarks": False} | meta


def declared_parameters(chapter: str) -> dict[str, Any]:
    """``{name: default}`` from the chapter's parameters cell (flat literals only)."""
    source = parameters_source(notebook_path(chapter))
    params: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                params[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError as exc:
                raise ChapterError(f"{chapter}: parameter {node.targets[0].id} is not a flat literal") from exc
        elif not isinstance(node, ast.Expr):  # docstrings/comments are fine
            raise ChapterError(f"{chapter}: the parameters cell may only hold `name = literal` lines")
    return params


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def check_value(chapter: str, name: str, value: Any, default: Any) -> Any:
    """Return ``value`` coerced to the default's type, or raise :class:`ChapterError`."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ChapterError(f"{chapter}: parameter {name!r} must be {_type_name(default)} "
                           f"(default {default!r}), got {value!r} ({_type_name(value)})")
    return value


def resolve_parameters(chapter: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validate ``overrides`` against the chapter's parameters cell; returns the checked overrides."""
    declared = declared_parameters(chapter)
    checked = {}
    for name, value in overrides.items():
        if name not in declared:
            choices = ", ".join(f"{k} ({_type_name(v)})" for k, v in declared.items())
            raise ChapterError(f"{chapter}: unknown parameter {name!r}; valid parameters: {choices}")
        checked[name] = check_value(chapter, name, value, declared[name])
    return checked


def load_profile(profile: str) -> dict[str, dict[str, Any]]:
    if profile not in PROFILE_NAMES:
        raise ChapterError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILE_NAMES)}")
    data = yaml.safe_load((paths.PROFILES / f"{profile}.yaml").read_text()) or {}
    valid = toc_entries()
    for chapter, block in data.items():
        if chapter not in toc_entries():
            raise ChapterError(f"profile {profile}: unknown chapter {chapter!r}; "
                               f"valid chapters: {', '.join(valid)}")
        if not isinstance(block, dict):
            raise ChapterError(f"profile {profile}: block of {chapter!r} must be a mapping")
    return {k: dict(v or {}) for k, v in data.items()}
