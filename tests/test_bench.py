"""The benchmark harness: registration, timing, ratios and the JSON it writes."""
import json
import time

import pytest

from mpnn.runtime import bench


def test_time_callable_measures_sleep():
    t = bench.time_callable(lambda: time.sleep(0.01), repeats=3, warmup=1)
    assert 0.009 < t["median_s"] < 0.2 and t["repeats"] == 3


def test_run_case_reports_ratios_against_first_variant(monkeypatch):
    monkeypatch.setattr(bench, "REGISTRY", {})

    @bench.case("demo/sleep", group="demo", params={"n": [1, 2]})
    def demo(n, quick):
        return ({"fast": lambda: time.sleep(0.002 * n), "slow": lambda: time.sleep(0.006 * n)},
                {"flops": 10 * n})

    rows = bench.run_case(bench.REGISTRY["demo/sleep"], quick=True)
    assert [(r["n"], r["variant"]) for r in rows] == [(1, "fast"), (1, "slow"), (2, "fast"), (2, "slow")]
    slow = [r for r in rows if r["variant"] == "slow"]
    assert all(2.0 < r["ratio_to_fast"] < 4.5 for r in slow)
    assert rows[0]["ratio_to_fast"] == 1.0 and rows[2]["flops"] == 20


def test_duplicate_names_and_empty_cases_are_rejected(monkeypatch):
    monkeypatch.setattr(bench, "REGISTRY", {})
    bench.case("x", group="g")(lambda quick: {})
    with pytest.raises(ValueError, match="no variants"):
        bench.run_case(bench.REGISTRY["x"], quick=True)


def test_write_results_is_json(tmp_path):
    path = bench.write_results({"results": [], "reference": {"gflops": 1.0}}, tmp_path / "r.json")
    assert json.loads(path.read_text())["reference"]["gflops"] == 1.0


def test_dense_reference_is_plausible():
    ref = bench.dense_mm_gflops(128, repeats=2)
    assert ref["gflops"] > 0.01 and ref["n"] == 128
