"""The chart builders produce the Vega-Lite the book relies on (checked in the spec, not by eye)."""
import pandas as pd
import pytest

from mpnn.runtime import plots, stats


def _summary():
    runs = pd.DataFrame({"flops": [0.5, 0.5, 1.0, 1.0] * 2, "method": ["a"] * 4 + ["b"] * 4,
                         "acc": [0.90, 0.92, 0.95, 0.97, 0.80, 0.84, 0.93, 0.95]})
    return stats.summarise(runs, ["method", "flops"], "acc")


def _layers(spec):
    return spec.get("layer") or spec["spec"]["layer"]


def test_accuracy_vs_compute_has_intervals_and_one_line_per_series():
    df = _summary()
    spec = plots.accuracy_vs_compute(df, "flops", color="method", title="t").to_dict()
    marks = [l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"] for l in _layers(spec)]
    assert marks == ["errorbar", "line"]
    err = _layers(spec)[0]["encoding"]
    assert err["y"]["field"] == "low" and err["y2"]["field"] == "high"
    data = pd.DataFrame(list(spec["datasets"].values())[0])
    a = data[(data.method == "a") & (data.flops == 0.5)].iloc[0]
    assert a["mean"] == pytest.approx(0.91) and a["low"] < 0.91 < a["high"]   # the t interval, not the points
    no_ci = plots.accuracy_vs_compute(df, "flops", low=None, high=None).to_dict()
    assert "layer" not in no_ci and no_ci["mark"]["type"] == "line"


def test_line_ci_facets_and_independent_scales():
    df = _summary()
    spec = plots.line_ci(df, "flops", facet="method", columns=2, independent_y=True).to_dict()
    assert spec["facet"]["field"] == "method" and spec["columns"] == 2
    assert spec["resolve"]["scale"]["y"] == "independent"
    assert [l["mark"]["type"] for l in spec["spec"]["layer"]] == ["area", "line"]


def test_heatmap_domain_and_facet():
    df = pd.DataFrame({"x": [0, 1, 0, 1], "y": [0, 0, 1, 1], "v": [0.1, 0.9, 0.4, 0.6], "k": [1, 1, 2, 2]})
    spec = plots.heatmap(df, "x", "y", "v", domain=(0, 1), facet="k").to_dict()
    rect, text = spec["spec"]["layer"]
    assert rect["encoding"]["color"]["scale"]["domain"] == [0, 1] and spec["facet"]["field"] == "k"
    assert "> 0.5" in text["encoding"]["color"]["condition"]["test"]        # text colour flips mid-domain


def test_with_rules_draws_labelled_reference_lines():
    base = plots.line_ci(_summary(), "flops", color="method")
    spec = plots.with_rules(base, y={"document: 0.9": 0.9}, x={"dense": 1.0}).to_dict()
    rules = [l for l in spec["layer"] if l.get("mark", {}).get("type") == "rule"]
    assert [r["encoding"].get("y", r["encoding"].get("x"))["field"] for r in rules] == ["value", "value"]
    values = sorted(v["value"] for d in spec["datasets"].values() for v in d if "label" in v)
    assert values == [0.9, 1.0]


def test_controls_view_redraws_on_change_and_reports_errors():
    W = pytest.importorskip("ipywidgets")
    from mpnn.runtime import widgets
    calls = []

    def render(n):
        calls.append(n)
        if n < 0:
            raise ValueError("n must be >= 0")
        return f"<b>{n}</b>"

    slider = W.IntSlider(value=1, min=-1, max=3)
    view = widgets.controls_view({"n": slider}, render)
    slider.value = 2
    slider.value = -1                      # an error is shown, not raised
    assert calls == [1, 2, -1] and isinstance(view, W.VBox)


# ---------------------------------------------------------------- explorers without a kernel

def _grid():
    t = [0.0, 0.01, 0.05, 0.2, 1.01]
    return pd.DataFrame({"t": t * 2, "s": ["a"] * 5 + ["b"] * 5, "mean": [float(i) for i in range(10)],
                         "flops": [0.1, 0.2, 0.3, 0.4, 0.5] * 2})


def _svg_at(spec, **values):
    """The SVG Vega renders for ``spec`` with its parameters set to ``values`` (as a moved control would)."""
    import copy
    vlc = pytest.importorskip("vl_convert")
    spec = copy.deepcopy(spec)
    for p in spec["params"]:
        if p["name"] in values:
            p["value"] = values[p["name"]]
    return vlc.vegalite_to_svg(spec)


def test_bound_declares_bound_parameters_and_validates():
    g = _grid()
    spec = plots.bound(plots.bar_ci(g, "flops", low="mean", high="mean"), g,
                       {"t": {"kind": "slider", "name": "threshold"}, "s": "radio"}).to_dict()
    t, s = spec["params"]
    assert t["bind"] == {"input": "range", "min": 0.0, "max": 1.01, "step": 0.01, "name": "threshold "}
    assert t["value"] == 0.05 and s["bind"]["options"] == ["a", "b"] and s["value"] == "a"
    with pytest.raises(ValueError, match="not a column"):
        plots.bound(plots.bar_ci(g, "flops"), g, {"nope": "slider"})
    with pytest.raises(ValueError, match="slider needs a numeric"):
        plots.bound(plots.bar_ci(g, "flops"), g, {"s": "slider"})
    with pytest.raises(ValueError, match="not in the grid"):
        plots.bound(plots.bar_ci(g, "flops"), g, {"s": {"kind": "dropdown", "value": "c"}})


def test_bound_chart_in_the_browser_equals_the_chart_of_the_filtered_rows():
    """Moving a control redraws exactly what the builder draws from the rows it selects
    (pandas filter as the reference); a slider between grid values snaps to the nearest one."""
    g = _grid()
    draw = lambda df: plots.bar_ci(df, "flops", low="mean", high="mean", title="x")   # noqa: E731
    spec = plots.bound(draw(g), g, {"t": "slider", "s": "dropdown"}).to_dict()
    vlc = pytest.importorskip("vl_convert")
    ref = lambda t, s: vlc.vegalite_to_svg(draw(g[(g.t == t) & (g.s == s)]).to_dict())   # noqa: E731
    assert _svg_at(spec, p_t=0.2, p_s="b") == ref(0.2, "b")
    assert _svg_at(spec, p_t=0.04, p_s="a") == ref(0.05, "a")          # 0.04 is nearest 0.05
    assert _svg_at(spec, p_t=0.02, p_s="a") == ref(0.01, "a")          # 0.02 is nearest 0.01
    assert _svg_at(spec, p_t=0.2, p_s="b") != _svg_at(spec, p_t=0.2, p_s="a")


def test_operating_point_moves_along_the_full_curve():
    g = _grid()
    spec = plots.operating_point(g, "flops", "mean", {"t": "slider"}, color="s", label="t").to_dict()
    curve, point, text = spec["layer"]
    assert "transform" not in curve and point["transform"] == text["transform"]   # the curve keeps every row
    assert _svg_at(spec, p_t=0.0) != _svg_at(spec, p_t=1.0)
    assert _svg_at(spec, p_t=0.9) == _svg_at(spec, p_t=1.01)               # both snap to 1.01


def test_explorer_shows_the_bound_chart_in_the_site_and_the_widget_in_jupyter(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell   # noqa: F401  (display needs IPython)
    from mpnn.runtime import repro, widgets
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("MPNN_SVG", "0")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: shown.append(a[0]))
    g = _grid()
    site = plots.bound(plots.bar_ci(g, "flops", low="mean", high="mean"), g, {"s": "radio"})
    monkeypatch.setattr(repro, "_current", repro.RunContext(chapter="demo", render="static"))
    widgets.explorer(lambda: "widget", "<p>static</p>", name="ex", site_view=site)
    assert (tmp_path / "figures" / "demo" / "ex-site.vl.json").exists()
    assert not (tmp_path / "figures" / "demo" / "ex-static.vl.json").exists()
    assert any("p_s" in str(v) for v in shown)                      # the embedded spec has the parameter
    shown.clear()
    widgets.explorer(lambda: "widget", "<p>static</p>", name="ex2")   # no site view: the static picture
    assert any("static picture" in str(getattr(v, "data", v)) or "static" in str(getattr(v, "data", v)) for v in shown)
    monkeypatch.setattr(repro, "_current", repro.RunContext(chapter="demo", render="live"))
    shown.clear()
    widgets.explorer(lambda: "widget", None, site_view=site)
    assert shown == ["widget"]
    with pytest.raises(ValueError, match="site_view"):
        widgets.explorer(lambda: "widget")


def test_figures_are_numbered_per_chapter_and_carry_their_caption(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell   # noqa: F401  (display needs IPython)
    from mpnn.runtime import repro, text
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("MPNN_SVG", "0")
    shown, glued = [], {}
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: shown.append(a[0]))
    monkeypatch.setattr(text, "glue", lambda name, value, fmt="": glued.setdefault(name, value))
    monkeypatch.setattr(plots, "_NUMBERS", {})
    monkeypatch.setattr(repro, "_current", repro.RunContext(chapter="demo", render="static"))
    chart = plots.bar_ci(_grid(), "flops", low="mean", high="mean")
    plots.show(chart, "first", caption="Look at the bars.")
    plots.show(chart, "second", caption="Look at <the> gap.")
    plots.show(chart, "first", caption="Shown again.")                 # keeps its number
    html = [v["text/html"] for v in shown]
    assert 'id="fig-first"' in html[0] and "Figure 1.</span> Look at the bars." in html[0]
    assert "Figure 2.</span> Look at &lt;the&gt; gap." in html[1] and "Figure 1." in html[2]
    assert glued == {"fig-first": "Figure 1", "fig-second": "Figure 2"}
    with pytest.raises(ValueError, match="caption"):
        plots.show(chart, "third", caption=" ")
    monkeypatch.setattr(repro, "_current", repro.RunContext(chapter="other", render="live"))
    shown.clear()
    plots.show_images(torch_digits(), "digits", caption="Ten digits.")
    assert "Figure 1." in shown[-1].data                                 # numbering starts again per chapter


def torch_digits():
    import torch
    return torch.zeros(10, 28, 28, dtype=torch.uint8)


def test_site_pngs_keep_their_size_and_shrink():
    import io

    from PIL import Image

    from mpnn.runtime import site
    vlc = pytest.importorskip("vl_convert")
    png = vlc.vegalite_to_png(plots.bar_ci(_grid(), "flops", low="mean", high="mean").to_dict(), scale=1)
    small = site.compact_png(png)
    assert len(small) <= len(png) and Image.open(io.BytesIO(small)).size == Image.open(io.BytesIO(png)).size
