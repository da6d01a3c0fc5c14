"""Altair charts for the book: common builders, and one way to show and save a figure.

``show(chart, name)`` does two things:

* writes the figure files ``_build/figures/<chapter>/<name>.vl.json`` (the Vega-Lite spec) and
  ``.svg`` (rendered offline by vl-convert), so ``make figures`` regenerates every figure;
* displays the chart. In live Jupyter it is Altair's own renderer. In papermill runs for the site
  (render mode ``static`` in the run's context) it is a small HTML snippet calling ``vegaEmbed`` from the copies of
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

from ..infra import paths
from . import repro

def _chapter() -> str:
    """The folder figures of the current run are written to (its chapter; ``scratch`` before ``start_run``)."""
    return repro.current().chapter


def site_mode() -> bool:
    """Is this run executed for the site (static render, no kernel behind the page)?"""
    return repro.current().render == "static"


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    if not slug:
        raise ValueError(f"figure name {name!r} has no usable characters")
    return slug


def _rounded(value, digits: int = 5):
    """``value`` with every float rounded to ``digits`` significant digits (nested lists and dicts)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if value == value and abs(value) != float("inf") else value
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def embed_html(spec: dict, element_id: str) -> str:
    """HTML that renders ``spec`` with the site's own vega-embed (no external requests). The page's
    copy of the data keeps 5 significant digits (far below a pixel; the figure's ``.vl.json`` file
    keeps every digit), which keeps the pages light."""
    spec = {**spec, "datasets": _rounded(spec["datasets"])} if "datasets" in spec else spec
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
    folder = paths.figure_dir(_chapter())
    folder.mkdir(parents=True, exist_ok=True)
    slug = _slug(name)
    (folder / f"{slug}.vl.json").write_text(json.dumps(spec, separators=(",", ":")))
    if svg and os.environ.get("MPNN_SVG", "1") != "0":
        import vl_convert as vlc
        (folder / f"{slug}.svg").write_text(vlc.vegalite_to_svg(spec))
    return spec


_NUMBERS: dict[str, dict[str, int]] = {}      # chapter -> figure name -> its number on the page


def figure_number(name: str) -> int:
    """The figure's number in its chapter, in the order first shown (a figure shown again keeps it).
    The prose refers to it as ``{glue}`fig-<name>``` ("Figure 3"), glued by :func:`show`."""
    numbers = _NUMBERS.setdefault(_chapter(), {})
    return numbers.setdefault(_slug(name), len(numbers) + 1)


def _caption(name: str, caption: str) -> tuple[int, str]:
    if not caption or not caption.strip():
        raise ValueError(f"figure {name!r}: give a caption that says what to look at")
    from . import text
    n = figure_number(name)
    text.glue(f"fig-{_slug(name)}", f"Figure {n}")
    return n, caption.strip()


def _figure_html(inner: str, name: str, n: int, caption: str) -> str:
    from html import escape
    return (f'<figure class="mpnn-figure" id="fig-{_slug(name)}">\n{inner}\n<figcaption><span class="mpnn-fig-no">'
            f'Figure {n}.</span> {escape(" ".join(caption.split()), quote=False)}</figcaption>\n</figure>')


def _show_caption(n: int, caption: str) -> None:
    from IPython.display import Markdown, display
    display(Markdown(f"**Figure {n}.** {caption}"))


def show(chart: alt.TopLevelMixin, name: str, *, caption: str) -> None:
    """Save the figure files and display the chart as a numbered figure with its caption (see the
    module docstring); ``caption`` says what to look at."""
    from IPython.display import display
    n, caption = _caption(name, caption)
    spec = save(chart, name)
    if site_mode():
        html = _figure_html(embed_html(spec, f"mpnn-{_slug(_chapter())}-{_slug(name)}"), name, n, caption)
        display({"text/html": html, "text/plain": f"<Figure {n}: {name}>"}, raw=True)
    else:
        display(chart)
        _show_caption(n, caption)


# ---------------------------------------------------------------- builders

def line_ci(df: pd.DataFrame, x: str, color: str | None = None, *, y: str = "mean",
            low: str = "low", high: str = "high", title: str = "", y_title: str | None = None,
            x_title: str | None = None, width: int = 420, height: int = 260,
            log_x: bool = False, facet: str | None = None, columns: int = 3,
            independent_y: bool = False, zero: bool = True) -> alt.TopLevelMixin:
    """Mean line with a shaded confidence band (columns as produced by :func:`mpnn.runtime.stats.summarise`).

    ``facet`` draws one panel per value of that column (``columns`` per row; ``independent_y``
    gives every panel its own y scale).
    """
    scale = alt.Scale(type="log") if log_x else alt.Undefined
    enc = {"x": alt.X(f"{x}:Q", title=x_title or x, scale=scale)}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    base = alt.Chart(df).encode(**enc)
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y(f"{low}:Q", title=y_title or y, scale=alt.Scale(zero=zero)), y2=f"{high}:Q")
    line = base.mark_line(point=len(df) <= 60).encode(
        y=f"{y}:Q", tooltip=[c for c in df.columns if df[c].dtype != object or c in (x, color, facet)])
    chart = (band + line).properties(width=width, height=height)
    if facet:
        chart = chart.facet(facet=alt.Facet(f"{facet}:N", title=facet), columns=columns)
        if independent_y:
            chart = chart.resolve_scale(y="independent")
    return chart.properties(title=title)


def accuracy_vs_compute(df: pd.DataFrame, x: str, *, y: str = "mean", low: str | None = "low",
                        high: str | None = "high", color: str | None = None, order: str | None = None,
                        title: str = "", x_title: str | None = None, y_title: str = "accuracy",
                        log_x: bool = False, width: int = 420, height: int = 260,
                        zero: bool = False) -> alt.LayerChart:
    """The trade-off curve of conditional computation: accuracy (mean and 95% CI) against compute.

    One line per ``color`` series through its points, sorted by ``order`` (default ``x``); error
    bars from ``low``/``high`` when given. ``x`` is a cost (relative FLOPs, experts used, time).
    """
    scale = alt.Scale(type="log") if log_x else alt.Scale(zero=False)
    enc = {"x": alt.X(f"{x}:Q", title=x_title or x, scale=scale)}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    base = alt.Chart(df).encode(**enc)
    line = base.mark_line(point=True).encode(
        y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(zero=zero)),
        order=alt.Order(f"{order or x}:Q"),
        tooltip=[alt.Tooltip(c, format=".4f") if df[c].dtype.kind == "f" else c for c in df.columns])
    chart = line
    if low and high:
        chart = base.mark_errorbar().encode(
            y=alt.Y(f"{low}:Q", title=y_title, scale=alt.Scale(zero=zero)), y2=f"{high}:Q") + line
    return chart.properties(title=title, width=width, height=height)


def with_rules(chart: alt.TopLevelMixin, *, y: dict[str, float] | None = None,
               x: dict[str, float] | None = None, color: str = "gray") -> alt.LayerChart:
    """Layer labelled reference lines onto ``chart``: ``y={"document: 0.9": 0.9}`` draws a
    horizontal rule at 0.9 labelled with its key (``x=`` the vertical ones)."""
    layers = [chart]
    for axis, rules in (("y", y or {}), ("x", x or {})):
        if not rules:
            continue
        data = pd.DataFrame({"value": list(rules.values()), "label": list(rules.keys())})
        base = alt.Chart(data)
        rule = base.mark_rule(color=color, strokeDash=[5, 3]).encode(**{axis: "value:Q"})
        text = base.mark_text(align="left", dx=3, dy=-5 if axis == "y" else 0, color=color, fontSize=10,
                              **({"baseline": "top", "angle": 0} if axis == "x" else {})).encode(
            **{axis: "value:Q"}, text="label:N")
        layers += [rule, text]
    return alt.layer(*layers)


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
    err = base.mark_errorbar(color="black").encode(y=alt.Y(f"{low}:Q", title=y_title or y), y2=f"{high}:Q")
    return (bars + err).properties(title=title, width=width, height=height)


def heatmap(df: pd.DataFrame, x: str, y: str, value: str, *, title: str = "", scheme: str = "viridis",
            width: int = 360, height: int = 260, annotate: bool = True, fmt: str = ".2f",
            domain: tuple[float, float] | None = None, facet: str | None = None,
            columns: int = 3) -> alt.TopLevelMixin:
    """A heatmap of ``value`` over categories ``x`` and ``y`` (long-form DataFrame).

    ``domain`` fixes the colour scale (shared by every panel); ``facet`` draws one panel per value
    of that column.
    """
    base = alt.Chart(df).encode(x=alt.X(f"{x}:O", title=x, sort=None), y=alt.Y(f"{y}:O", title=y, sort=None))
    color_scale = alt.Scale(scheme=scheme, domain=list(domain)) if domain else alt.Scale(scheme=scheme)
    tooltip = [x, y, alt.Tooltip(f"{value}:Q", format=fmt)] + ([facet] if facet else [])
    rect = base.mark_rect().encode(color=alt.Color(f"{value}:Q", scale=color_scale), tooltip=tooltip)
    chart = rect
    if annotate and len(df) <= 400:
        middle = (domain[0] + domain[1]) / 2 if domain else float(df[value].median())
        chart = rect + base.mark_text(fontSize=9).encode(
            text=alt.Text(f"{value}:Q", format=fmt),
            color=alt.condition(f"datum['{value}'] > {middle}", alt.value("black"), alt.value("white")))
    chart = chart.properties(width=width, height=height)
    if facet:
        chart = chart.facet(facet=alt.Facet(f"{facet}:N", title=facet), columns=columns)
    return chart.properties(title=title)


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


def show_images(images, name: str, *, caption: str, **kwargs) -> None:
    """Save ``<name>.png`` (an :func:`image_grid`) in the chapter's figure folder and display it as a
    numbered figure with its caption."""
    from html import escape

    from IPython.display import HTML, Image, display
    n, caption = _caption(name, caption)
    png = image_grid(images, **kwargs)
    folder = paths.figure_dir(_chapter())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{_slug(name)}.png").write_bytes(png)
    display(Image(data=png))          # the site keeps it as a file next to the page, not inline
    if site_mode():
        display(HTML(f'<p class="mpnn-figcaption" id="fig-{_slug(name)}"><span class="mpnn-fig-no">Figure {n}.</span> '
                     f'{escape(" ".join(caption.split()), quote=False)}</p>'))
    else:
        _show_caption(n, caption)


# ---------------------------------------------------------------- explorers without a kernel

BIND_KINDS = ("slider", "dropdown", "radio", "checkbox")


def _control(grid: pd.DataFrame, column: str, spec) -> dict:
    """One control of :func:`bound`, validated: its column's values, kind, label and default."""
    if column not in grid.columns:
        raise ValueError(f"control {column!r} is not a column of the grid; columns: {', '.join(map(str, grid.columns))}")
    spec = {"kind": spec} if isinstance(spec, str) else dict(spec)
    unknown = set(spec) - {"kind", "name", "value", "step"}
    if unknown:
        raise ValueError(f"control {column!r}: unknown key(s) {sorted(unknown)}; use kind, name, value, step")
    kind = spec.get("kind", "dropdown")
    if kind not in BIND_KINDS:
        raise ValueError(f"control {column!r}: kind {kind!r} is not one of {', '.join(BIND_KINDS)}")
    values = sorted(pd.unique(grid[column]).tolist())
    if grid[column].isna().any():
        raise ValueError(f"control {column!r}: the grid has missing values in it; drop or fill them first")
    numeric = pd.api.types.is_numeric_dtype(grid[column]) and not pd.api.types.is_bool_dtype(grid[column])
    if kind == "slider" and not numeric:
        raise ValueError(f"control {column!r}: a slider needs a numeric column (got {grid[column].dtype}); "
                         f"use kind='dropdown' or 'radio'")
    if kind == "checkbox" and set(values) - {True, False}:
        raise ValueError(f"control {column!r}: a checkbox needs a True/False column, got values {values[:5]}")
    values = [v.item() if hasattr(v, "item") else v for v in values]   # numpy scalars -> JSON-able
    value = spec.get("value", values[len(values) // 2] if kind == "slider" else values[0])
    if value not in values:
        raise ValueError(f"control {column!r}: default {value!r} is not in the grid; values: {values}")
    param = "p_" + re.sub(r"[^A-Za-z0-9_]", "_", str(column))
    return {"column": column, "kind": kind, "name": spec.get("name", str(column)), "values": values,
            "value": value, "step": spec.get("step"), "param": param}


def _nearest(values: list, param: str) -> str:
    """A Vega expression: the grid value nearest to the slider's ``param`` (values sorted)."""
    expr = repr(values[-1])
    for lo, hi in zip(reversed(values[:-1]), reversed(values[1:])):
        expr = f"({param} < {repr((lo + hi) / 2)} ? {repr(lo)} : {expr})"
    return expr


def _binding(c: dict):
    if c["kind"] == "slider":
        gaps = [b - a for a, b in zip(c["values"], c["values"][1:])]
        step = c["step"] or (min(gaps) if gaps else 1)
        return alt.binding_range(min=c["values"][0], max=c["values"][-1], step=step, name=f"{c['name']} ")
    if c["kind"] == "checkbox":
        return alt.binding_checkbox(name=f"{c['name']} ")
    factory = alt.binding_select if c["kind"] == "dropdown" else alt.binding_radio
    return factory(options=c["values"], name=f"{c['name']} ")


def bound_filter(grid: pd.DataFrame, controls: dict) -> str:
    """The Vega expression keeping the grid rows that every control of ``controls`` selects
    (sliders snap to the nearest value in the grid); see :func:`bound`."""
    parts = []
    for column, spec in controls.items():
        c = _control(grid, column, spec)
        field = f"datum[{json.dumps(str(column))}]"
        target = _nearest(c["values"], c["param"]) if c["kind"] == "slider" else c["param"]
        parts.append(f"{field} == {target}")
    return " && ".join(parts) or "true"


def bound(chart: alt.TopLevelMixin, grid: pd.DataFrame, controls: dict, *, filter: bool = True) -> alt.TopLevelMixin:
    """An explorer that works on the static site: ``chart`` redrawn in the browser by bound controls.

    ``grid`` is the precomputed tidy DataFrame (one row per setting and mark, < 5,000 rows) that
    ``chart`` was built on (any builder of this module, a layer, a facet). ``controls`` maps a
    grid column to its control: ``"slider"`` (numeric; snaps to the nearest grid value),
    ``"dropdown"``, ``"radio"``, ``"checkbox"`` (True/False), or a dict ``{"kind":, "name": label,
    "value": default, "step": slider step}``. Each becomes a Vega-Lite parameter bound to an HTML
    input (``alt.param(bind=...)``) named ``p_<column>``; with ``filter=True`` the chart keeps only
    the rows every control selects. With ``filter=False`` the parameters are only declared, for a
    chart that filters some layers itself (``transform_filter(plots.bound_filter(grid, controls))``),
    e.g. a highlighted operating point on a full curve (:func:`operating_point`).
    Show it with :func:`show` (or ``widgets.explorer(..., site_view=...)``).
    """
    specs = [_control(grid, column, spec) for column, spec in controls.items()]
    if not specs:
        raise ValueError("bound() needs at least one control")
    params = [alt.param(name=c["param"], value=c["value"], bind=_binding(c)) for c in specs]
    out = chart.add_params(*params)
    if filter:
        out = out.transform_filter(bound_filter(grid, controls))
    return out


def operating_point(grid: pd.DataFrame, x: str, y: str, controls: dict, *, color: str | None = None,
                    title: str = "", x_title: str | None = None, y_title: str | None = None,
                    width: int = 420, height: int = 260, label: str | None = None,
                    zero: bool = False) -> alt.TopLevelMixin:
    """A trade-off curve (``y`` against ``x`` over every grid row) with the point the controls
    select highlighted, e.g. an early-exit threshold slider moving the operating point along the
    accuracy/FLOPs curve. ``label`` (a column) is written next to the selected point."""
    enc = {"x": alt.X(f"{x}:Q", title=x_title or x, scale=alt.Scale(zero=zero)),
           "y": alt.Y(f"{y}:Q", title=y_title or y, scale=alt.Scale(zero=zero))}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    base = alt.Chart(grid).encode(**enc)
    tooltip = [alt.Tooltip(c, format=".4f") if grid[c].dtype.kind == "f" else c for c in grid.columns]
    curve = base.mark_line(point=True, opacity=0.6).encode(order=alt.Order(f"{x}:Q"), tooltip=tooltip)
    keep = bound_filter(grid, controls)
    point = base.mark_point(size=220, filled=True, color="crimson", opacity=0.9).encode(
        tooltip=tooltip).transform_filter(keep)
    layers = [curve, point]
    if label:   # the selected setting in words, above the plot
        layers.append(alt.Chart(grid).mark_text(align="left", baseline="bottom", fontWeight="bold").encode(
            x=alt.value(0), y=alt.value(-6), text=alt.Text(f"{label}:N")).transform_filter(keep))
    chart = alt.layer(*layers).properties(title=alt.TitleParams(title, offset=22 if label else 4),
                                          width=width, height=height)
    return bound(chart, grid, controls, filter=False)
