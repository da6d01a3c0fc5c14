"""Sphinx extension for the API pages: a docstring's reference finds the object where it is documented.

Docstrings name objects as a reader of the code does: by the name a package re-exports
(``:class:`mpnn.moe.StackedMoE```), by a short name from a sibling module
(``:func:`latency_claim```), or a private helper (``:func:`_fused```). On a ``missing-reference``:

* a re-exported name resolves to the object in the module that defines it;
* a short or partial name resolves to the documented object whose full name ends with it, the one
  nearest the referring module when several do;
* a name that exists in the code but has no entry of its own (a private helper, a constant, a
  function without a docstring, a module named as a function) is shown as code, unlinked.

Anything else stays a warning, an error under the site build's ``-W``. It also gives
:mod:`sphinx.ext.linkcode` its resolver: each ``[source]`` link opens the module's source page
(:func:`mpnn.runtime.api_pages.source_url`).
"""
from __future__ import annotations

import importlib


_MISSING = object()


def lookup(name: str):
    """The object a dotted name reaches by importing its longest module prefix, or ``_MISSING``."""
    bits = name.split(".")
    for cut in range(len(bits), 0, -1):
        try:
            obj = importlib.import_module(".".join(bits[:cut]))
        except ImportError:
            continue
        try:
            for attr in bits[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return _MISSING
        return obj
    return _MISSING


def defined_name(target: str) -> str | None:
    """``module.qualname`` of the object ``target`` names (following a package's re-export), or None."""
    obj = lookup(target)
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if obj is not _MISSING and module and qualname else None


def nearest(target: str, names, module: str) -> str | None:
    """The documented name ending in ``.target`` that shares the longest prefix with ``module``."""
    found = [n for n in names if n == target or n.endswith("." + target)]
    if not found:
        return None
    def shared(name: str) -> int:
        a, b = name.split("."), module.split(".")
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n
    best = max(shared(n) for n in found)
    top = [n for n in found if shared(n) == best]
    return top[0] if len(top) == 1 else None


def _resolve(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode
    target = node["reftarget"].lstrip("~.")
    objects = env.get_domain("py").objects
    name = None
    if target.startswith("mpnn."):
        real = defined_name(target)
        name = real if real in objects else None
    if name is None:
        name = nearest(target, objects, node.get("py:module") or "")
    if name is not None:
        entry = objects[name]
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name)
    if exists(target, node.get("py:module") or "", node.get("py:class") or ""):
        return contnode
    return None


def exists(target: str, module: str, cls: str = "") -> bool:
    """Whether ``target`` names an object of the code, read from ``module`` (and class ``cls``)
    or any package above it."""
    scopes = [f"{module}.{cls}"] if cls else []
    parts = module.split(".")
    scopes += [".".join(parts[:k]) for k in range(len(parts), 0, -1)]
    return any(lookup(f"{scope}.{target}" if scope else target) is not _MISSING for scope in ["", *scopes])


def _linkcode(domain: str, info: dict) -> str | None:
    from .api_pages import source_url
    return source_url(info["module"], info["fullname"]) if domain == "py" and info.get("module") else None


def _configure(app, config):
    config.linkcode_resolve = _linkcode     # every [source] link goes to the module's source page


def setup(app):
    app.connect("config-inited", _configure)
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
