"""The text is the run: no measured number typed into a chapter's markdown, no process words.

Numbers the markdown may type (the documents' own, the original code's, method constants) are
listed in the notebook's metadata ``mpnn.typed_numbers`` with their source; every other number in
the prose comes from the run (myst-nb glue or generated markdown, :mod:`mpnn.runtime.text`).
"""
import json
import re
from pathlib import Path

import pytest

from mpnn.runtime import text

BOOK = Path(__file__).resolve().parents[1] / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PAGES = sorted(BOOK.glob("*.md"))

# Words about how the book was made, not about what it shows.
# ("CI" alone is a confidence interval: "95% CI 0.2-0.3" stays.)
PROCESS = re.compile(r"\bissues? \d+|\b(?:in|on)\s+CI\b(?![\s-]*(?:\d|of|lies|excludes|includes|above|below))|\bCI(?:'s|\s+(?:run|runs|machine|build|job|cores))\b|"
                     r"fresh[- ]clone|earlier version|previous version|\bdocument 00\d\b|\bthis session\b|"
                     r"\bdevelopment (?:run|machine)\b")


def _markdown(path: Path) -> list[str]:
    if path.suffix == ".md":
        return [path.read_text()]
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def _allowed(path: Path) -> dict:
    if path.suffix == ".md":
        return {}
    return json.loads(path.read_text()).get("metadata", {}).get("mpnn", {}).get("typed_numbers", {})


def test_the_number_finder_finds_measured_numbers_and_skips_the_rest():
    found = text.typed_numbers("gap 0.14 pp, 1.02× faster, 3x, 12 ms, 45%; arXiv:2403.07965, $a=0.5$, "
                               "`0.3`, {glue}`gap` pp, top-2, E=8, 10,000 images")
    assert found == ["0.14", "1.02", "3x", "12 ms", "45%"]


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=lambda p: p.name)
def test_no_hand_typed_measured_number_in_the_prose(path):
    allowed = _allowed(path)
    for number, source in allowed.items():
        assert isinstance(source, str) and source.strip(), f"{path.name}: typed number {number!r} needs its source"
    typed = [n for md in _markdown(path) for n in text.typed_numbers(md)]
    stray = sorted({n for n in typed if n not in allowed})
    assert not stray, (f"{path.name}: numbers typed into the markdown that the run should compute "
                       f"(glue them, or list a document's own number in metadata mpnn.typed_numbers "
                       f"with its source): {stray}")


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=lambda p: p.name)
def test_no_process_words_in_the_prose(path):
    hits = sorted({m.group(0) for md in _markdown(path) for m in PROCESS.finditer(md)})
    assert not hits, f"{path.name}: words about how the book was made: {hits}"
