"""Sphinx extension for the book's site: nothing on a page may come from outside the site.

* drops sphinx-thebe's scripts (live code cells are disabled in ``_config.yml``; jupyter-book 1
  still adds them, twice, which raises "Identifier 'THEBE_JS_URL' has already been declared");
* removes any other duplicated script entry;
* warns (an error under ``-W``) about a ``<script src>`` or stylesheet that points off-site.
"""
from __future__ import annotations

import re

_EXTERNAL = re.compile(r'<(?:script|link)\b[^>]*(?:src|href)="(https?:)?//[^"]*"', re.I)


def _is_thebe(script) -> bool:
    name = str(getattr(script, "filename", "") or "")
    body = str(getattr(script, "attributes", {}).get("body", "") or "")
    return "sphinx-thebe" in name or "THEBE_JS_URL" in body


def _clean_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = (str(getattr(script, "filename", "") or ""),
               str(getattr(script, "attributes", {}).get("body", "") or ""))
        if _is_thebe(script) or key in seen:
            continue
        seen.add(key)
        kept.append(script)
    context["script_files"] = kept


def _check_offline(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    from pathlib import Path
    from sphinx.util import logging
    log = logging.getLogger(__name__)
    for page in Path(app.outdir).rglob("*.html"):
        for match in _EXTERNAL.finditer(page.read_text(errors="replace")):
            log.warning(f"{page.relative_to(app.outdir)} loads an external resource: {match.group(0)[:160]}")


def setup(app):
    app.connect("html-page-context", _clean_scripts, priority=900)
    app.connect("build-finished", _check_offline)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
