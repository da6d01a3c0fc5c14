"""Numbers in the prose come from the run being read.

A chapter never types a measured number into a markdown cell. It computes the sentence's number
and hands it to the page in one of two ways:

* :func:`glue` (myst-nb's glue, text only): ``text.glue("ee_gap_pp", gap * 100, ".2f")`` in a code
  cell, ``{glue}`ee_gap_pp` pp`` in the markdown; the site shows the number of this run.
* :func:`markdown`: a hidden code cell whose output is a markdown paragraph written with f-strings,
  for a paragraph whose *words* depend on the run too ("faster" or "slower", which kernel won).

Numbers from the source documents or the original code, and method constants, stay literal and
are listed in the notebook's metadata ``mpnn.typed_numbers`` with where they come from;
``tests/test_prose.py`` fails on any other number typed into a markdown cell.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["glue", "markdown", "typed_numbers", "NUMBER"]


class _Plain(str):
    """A string whose repr is itself, so that myst-nb's ``{glue}`` role shows it without quotes."""

    def __repr__(self) -> str:
        return str(self)


def glue(name: str, value: Any, fmt: str = "") -> str:
    """Make ``value`` (formatted with ``fmt``) available to the markdown as ``{glue}`name```.

    Returns the text, so the same string can go into a claim's measurement."""
    text = format(value, fmt) if fmt else str(value)
    try:
        from myst_nb import glue as _glue
    except ImportError:        # outside the book's environment the number is still returned
        return text
    _glue(name, _Plain(text), display=False)
    return text


def markdown(text: str):
    """Show ``text`` as a markdown paragraph (its numbers and words computed by the caller)."""
    from IPython.display import Markdown, display
    display(Markdown(text))


# A measured-looking number: a decimal, a percentage, a ratio (1.3x / 1.3×) or a time with its unit.
NUMBER = re.compile(r"(?<![\w.\-/])[-−+]?(?:\d[\d,]*\.\d+|\d+(?:[.,]\d+)?\s?(?:%|×|x(?![\w])|ms\b|µs\b|us\b|ns\b|s\b|min\b|pp\b))")
_SKIP = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|```.*?```|`[^`\n]*`|<!--.*?-->|\]\([^)]*\)|https?://\S+|"
                   r"arXiv[: ]\s*\d{4}\.\d{4,5}(?:v\d+)?|\b\d{4}\.\d{4,5}\b", re.S)


def typed_numbers(markdown_text: str) -> list[str]:
    """Every measured-looking number typed into ``markdown_text`` (outside math, code, glue roles,
    links and arXiv identifiers)."""
    return [m.group(0).strip() for m in NUMBER.finditer(_SKIP.sub(" ", markdown_text))]
