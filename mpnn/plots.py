"""Altair charts for the book: common builders, and one way to show and save a figure.

``show(chart, name)`` does two things:

* writes the figure files ``_build/figures/<chapter>/<name>.vl.json`` (the Vega-Lite spec) and
  ``.svg`` (rendered offline by vl-convert), so ``make figures`` regenerates every figure;
* displays the chart. In live Jupyter it is Altair's own renderer. In papermill runs for the site
  (``MPNN_RENDER=static``) it is a small HTML snippet calling ``vegaEmbed`` from the copies of
  vega / vega-lite / vega-embed that the site serves itself (``_static/vendor``), so pages work with
  no network. (Altair's own HTML templates load the libraries from a CDN, and its ``inline`` template
  clashes with Sphinx.)
"""
from __future__ import annotations

import json
import os
import re

import altair as alt
import pandas as pd

from . import paths

_chapter = "scratch"


def set_chapter(chapter: str) -> None:
    """Name the folder that figures of the current notebook are written to."""
    global _chapter
    _chapter = chapter


def site_mode() -> bool:
    return os.environ.get("MPNN_RENDER") == "static"


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    if not slug:
        raise ValueError(f"figure name {name!r} has no usable characters")
    return slug


def embed_html(spec: dict, element_id: str) -> str:
    """HTML that renders ``spec`` with the site's own vega-embed (no external requests)."""
    payload = json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")
    return (
        f'<div class="mpnn-chart" id="{element_id}"></div>\n'
        '<script type="text/javascript">\n'
        "(function () {\n"
        f"  var spec = {payload};\n"
        "  function render() {\n"
        f'    vegaEmbed("#{element_id}", spec, {{actions: false, renderer: "svg"}})\n'
        '      .then(function () { document.getElementById("' + element_id + '").dataset.rendered = "1"; })\n'
        "      .catch(function (err) { console.error(err); });\n"
        "  }\n"
        '  if (window.vegaEmbed) { render(); } else { window.addEventListener("load", render); }\n'
        "})();\n"
        "</script>"
    )


def save(chart: alt.TopLevelMixin, name: str, svg: bool = True) -> dict:
    """Write ``<name>.vl.json`` (and ``<name>.svg``) under the chapter's figure folder; return the spec."""
    spec = chart.to_dict()
    folder = paths.figure_dir(_chapter)
    folder.mkdir(parents=True, exist_ok=True)
    slug = _slug(name)
    (folder / f"{slug}.vl.json").write_text(json.dumps(spec, indent=1))
    if svg and os.environ.get("MPNN_SVG", "1") != "0":
        import vl_convert as vlc
        (folder / f"{slug}.svg").write_text(vlc.vegalite_to_svg(spec))
    return spec


def show(chart: alt.TopLevelMixin, name: str) -> None:
    """Save the figure files and display the chart (see the module docstring)."""
    from IPython.display import display
    spec = save(chart, name)
    if site_mode():
        html = embed_html(spec, f"mpnn-{_slug(_chapter)}-{_slug(name)}")
        display({"text/html": html, "text/plain": f"<chart {name}>"}, raw=True)
    else:
        display(chart)


# ---------------------------------------------------------------- builders

def line_ci(df: pd.DataFrame, x: str, color: str | None = None, *, y: str = "mean",
            low: str = "low", high: str = "high", title: str = "", y_title: str | None = None,
            x_title: str | None = None, width: int = 420, height: int = 260,
            log_x: bool = False) -> alt.LayerChart:
    """Mean line with a shaded confidence band (columns as produced by :func:`mpnn.stats.summarise`)."""
    scale = alt.Scale(type="log") if log_x else alt.Undefined
    enc = {"x": alt.X(f"{x}:Q", title=x_title or x, scale=scale)}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    base = alt.Chart(df).encode(**enc)
    band = base.mark_area(opacity=0.25).encode(y=alt.Y(f"{low}:Q", title=y_title or y), y2=f"{high}:Q")
    line = base.mark_line(point=len(df) <= 60).encode(
        y=f"{y}:Q", tooltip=[c for c in df.columns if df[c].dtype != object or c in (x, color)])
    return (band + line).properties(title=title, width=width, height=height)


def bar_ci(df: pd.DataFrame, x: str, *, y: str = "mean", low: str = "low", high: str = "high",
           color: str | None = None, title: str = "", y_title: str | None = None,
           width: int = 420, height: int = 260, zero: bool = True) -> alt.LayerChart:
    """Bars of the mean with 95% CI error bars, one bar per category ``x``."""
    enc = {"x": alt.X(f"{x}:N", title=x, sort=None)}
    if color:
        enc["color"] = alt.Color(f"{color}:N")
    base = alt.Chart(df).encode(**enc)
    bars = base.mark_bar(opacity=0.8).encode(
        y=alt.Y(f"{y}:Q", title=y_title or y, scale=alt.Scale(zero=zero)),
        tooltip=list(df.columns))
    err = base.mark_errorbar(color="black").encode(y=f"{low}:Q", y2=f"{high}:Q")
    return (bars + err).properties(title=title, width=width, height=height)


def heatmap(df: pd.DataFrame, x: str, y: str, value: str, *, title: str = "", scheme: str = "viridis",
            width: int = 360, height: int = 260, annotate: bool = True, fmt: str = ".2f") -> alt.LayerChart:
    """A heatmap of ``value`` over categories ``x`` and ``y`` (long-form DataFrame)."""
    base = alt.Chart(df).encode(x=alt.X(f"{x}:O", title=x), y=alt.Y(f"{y}:O", title=y))
    rect = base.mark_rect().encode(color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme=scheme)),
                                   tooltip=[x, y, alt.Tooltip(f"{value}:Q", format=fmt)])
    chart = rect
    if annotate and len(df) <= 400:
        chart = rect + base.mark_text(fontSize=9).encode(
            text=alt.Text(f"{value}:Q", format=fmt),
            color=alt.condition(f"datum['{value}'] > {float(df[value].median())}",
                                alt.value("black"), alt.value("white")))
    return chart.properties(title=title, width=width, height=height)


def image_grid(images, *, columns: int = 10, scale: int = 2, pad: int = 2) -> bytes:
    """Greyscale images (N, H, W), values in [0, 255] or [0, 1], tiled into one PNG (bytes)."""
    import io

    import numpy as np
    from PIL import Image
    arr = np.asarray(images, dtype=float)
    if arr.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {arr.shape}")
    if arr.max() <= 1.0:
        arr = arr * 255.0
    n, h, w = arr.shape
    n_rows = (n + columns - 1) // columns
    canvas = np.full((n_rows * (h + pad) + pad, columns * (w + pad) + pad), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y0:y0 + h, x0:x0 + w] = 255 - arr[i].clip(0, 255).astype(np.uint8)  # ink dark on white
    img = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def show_images(images, name: str, **kwargs) -> None:
    """Save ``<name>.png`` (an :func:`image_grid`) in the chapter's figure folder and display it."""
    from IPython.display import Image, display
    png = image_grid(images, **kwargs)
    folder = paths.figure_dir(_chapter)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{_slug(name)}.png").write_bytes(png)
    display(Image(data=png))
