"""Where things live: the repository root, the book, and the generated ``_build`` tree."""
from __future__ import annotations

import os
from pathlib import Path


def _find_root() -> Path:
    here = Path(__file__).resolve().parents[2]
    if (here / "_toc.yml").exists():
        return here
    for candidate in [Path.cwd(), *Path.cwd().parents]:
        if (candidate / "_toc.yml").exists():
            return candidate
    return here


ROOT = _find_root()
BOOK = ROOT / "book"
PROFILES = BOOK / "profiles"
DATA = ROOT / "data"


def build_dir() -> Path:
    """The generated tree (``$MPNN_BUILD_DIR`` or ``<root>/_build``)."""
    return Path(os.environ.get("MPNN_BUILD_DIR", ROOT / "_build"))


def manifest_dir() -> Path:
    return build_dir() / "manifests"


def figure_dir(chapter: str) -> Path:
    return build_dir() / "figures" / chapter
