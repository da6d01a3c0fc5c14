"""The benchmark harness: registration, timing, ratios and the JSON it writes."""
import json
import time

import pandas as pd
import pytest
import torch

from mpnn.runtime import bench


def test_time_callable_measures_sleep():
    t = bench.time_callable(lambda: time.sleep(0.01), repeats=3, warmup=1)
    assert 0.009 < t["median_s"] < 0.2 and t["repeats"] == 3


def test_variants_are_timed_in_interleaved_rounds():
    order = []
    out = bench.time_variants({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=0)
    assert order == ["a", "b", "b", "a", "a", "b"] and set(out) == {"a", "b"} and out["a"]["repeats"] == 3


def test_run_case_reports_ratios_against_first_variant(monkeypatch):
    monkeypatch.setattr(bench, "REGISTRY", {})

    # the timer is replaced by the seconds each variant states: the bookkeeping is tested, not this CPU
    monkeypatch.setattr(bench, "time_variants", lambda fns, **kw: {
        v: {"median_s": fn(), "min_s": fn(), "max_s": fn(), "repeats": kw.get("repeats")} for v, fn in fns.items()})

    @bench.case("demo/sleep", group="demo", params={"n": [1, 2]})
    def demo(n, quick):
        return ({"fast": lambda: 0.002 * n, "slow": lambda: 0.006 * n},
                {"flops": {"fast": 1e6 * n}, "size": 10 * n})

    rows = bench.run_case(bench.REGISTRY["demo/sleep"], quick=True)
    assert [(r["n"], r["variant"]) for r in rows] == [(1, "fast"), (1, "slow"), (2, "fast"), (2, "slow")]
    slow = [r for r in rows if r["variant"] == "slow"]
    assert all(abs(r["ratio_to_fast"] - 3.0) < 1e-9 for r in slow)
    assert rows[0]["ratio_to_fast"] == 1.0 and rows[2]["size"] == 20
    assert rows[2]["flops"] == 2e6 and rows[2]["gflops"] == 2e6 / rows[2]["median_s"] / 1e9
    assert "gflops" not in rows[3]                              # no flops stated for "slow"


def test_duplicate_names_and_empty_cases_are_rejected(monkeypatch):
    monkeypatch.setattr(bench, "REGISTRY", {})
    bench.case("x", group="g")(lambda quick: {})
    with pytest.raises(ValueError, match="no variants"):
        bench.run_case(bench.REGISTRY["x"], quick=True)


def test_write_results_is_json(tmp_path):
    path = bench.write_results({"results": [], "reference": {"gflops": 1.0}}, tmp_path / "r.json")
    assert json.loads(path.read_text())["reference"]["gflops"] == 1.0


def test_dense_reference_counts_two_n_cubed_flops_per_product(monkeypatch):
    calls = []

    def fake_time(fn, repeats, warmup, min_time):
        out = fn()
        calls.append(out.shape)
        return {"median_s": 0.25, "min_s": 0.2, "max_s": 0.3, "repeats": repeats}

    monkeypatch.setattr(bench, "time_callable", fake_time)
    ref = bench.dense_mm_gflops(128, repeats=2)
    assert calls == [(128, 128)] and ref["n"] == 128
    assert ref["gflops"] == 2 * 128 ** 3 / 0.25 / 1e9          # 0.016777216 GFLOP/s


def test_performance_page_checks_what_it_reads(tmp_path, monkeypatch):
    from mpnn.experiments import performance as E
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m mpnn run performance"):
        E.load_results(quick=True, only="", threads=1)
    results = {"settings": {"quick": True, "only": None, "threads": 1}, "cases": ["a", "b", "c"],
               "reference_before": {"gflops": 50.0}, "reference": {"gflops": 40.0},
               "results": [{"case": "a", "median_s": 0.1}, {"case": "b", "median_s": 0.0}]}
    bench.write_results(results)
    with pytest.raises(ValueError, match="threads"):
        E.load_results(quick=True, only="", threads=2)
    got = E.load_results(quick=True, only="", threads=1)
    rows = E.results_frame(got)
    assert E.missing_cases(got, rows) == ["b", "c"]            # b has no positive median, c no row
    assert E.reference_drift(got) == 1.25


def test_machine_limit_table_divides_by_the_same_runs_reference():
    from mpnn.experiments import performance as E
    run = lambda quick, g: {"quick": quick, "reference": {"gflops": g},
                            "results": [{"case": "c", "variant": "v", "n": 4, "median_s": 0.5, "flops": 1e9, "gflops": 2.0},
                                        {"case": "c", "variant": "w", "n": 4, "median_s": 0.5}]}
    results = run(False, 8.0) | {"quick_run": run(True, 4.0)}
    table = E.limit_table(results)
    assert list(table["sizes"]) == ["default sizes", "quick sizes"]          # w states no FLOPs: left out
    assert list(table["fraction of torch.mm"]) == [0.25, 0.5] and list(table["setting"]) == ["n=4", "n=4"]
    assert E.figure_machine_limit(table).to_dict()["layer"][1]["mark"]["type"] == "rule"


def test_native_reference_counts_two_n_cubed_flops_and_is_a_correct_product(monkeypatch):
    from mpnn.moe import fused
    if not fused.usable(torch.zeros(1)):
        pytest.skip("no C++ compiler")
    a, b = torch.randn(70, 70), torch.randn(1, 70, 70)
    c = fused._grouped_nn(a, b, torch.tensor([0, 70]), torch.tensor([70], dtype=torch.int32), "native")
    assert torch.allclose(c, a @ b[0], atol=1e-4)                             # the timed product is a real GEMM
    monkeypatch.setattr(bench, "time_callable", lambda fn, repeats, warmup, min_time: {"median_s": 0.5})
    assert bench.native_mm_gflops(100)["gflops"] == 2 * 100 ** 3 / 0.5 / 1e9
    from mpnn.experiments import performance as E
    results = {"reference": {"gflops": 4.0}, "reference_native": {"gflops": 10.0}}
    assert E.native_over_torch(results) == 2.5 and E.native_over_torch({"reference": {"gflops": 1.0}}) is None
    table = pd.DataFrame({"case": ["c"], "setting": ["n=4"], "variant": ["v"], "sizes": ["default sizes"],
                          "gflops": [2.0], "fraction of torch.mm": [0.5]})
    spec = E.figure_machine_limit(table, results).to_dict()
    rules = spec["datasets"][spec["layer"][1]["data"]["name"]]
    assert [r["x"] for r in rules] == [1.0, 2.5]                              # torch.mm and the book's GEMM


def test_steady_allocator_is_accepted_by_glibc():
    import platform
    import sys
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert bench.steady_allocator() is True                     # mallopt accepted both thresholds


def test_book_variant_is_held_against_the_fastest_torch_only_variant():
    from mpnn.runtime import bench
    rows = [{"case": "c", "group": "g", "k": 1, "variant": v, "median_s": s, "role": role}
            for v, s, role in [("book", 1.0, "book"), ("t1", 2.0, "torch-only"), ("t2", 0.8, "torch-only"),
                               ("dense", 0.1, "")]]
    rows += [{"case": "c", "group": "g", "k": 2, "variant": "book", "median_s": 1.0, "role": "book"},
             {"case": "c", "group": "g", "k": 2, "variant": "t1", "median_s": 4.0, "role": "torch-only"}]
    out = {r["k"]: r for r in bench.book_vs_torch(rows)}
    assert out[1]["fastest_torch_variant"] == "t2" and abs(out[1]["book_over_torch"] - 1.25) < 1e-12
    assert out[2]["fastest_torch_variant"] == "t1" and abs(out[2]["book_over_torch"] - 0.25) < 1e-12
