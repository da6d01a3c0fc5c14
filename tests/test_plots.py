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
