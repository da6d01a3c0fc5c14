"""Timing claims: interleaved medians, recording, and replay under load."""
import json
import os

import pytest
import torch

from mpnn.runtime import cli, timing
from mpnn.infra.clock import interleaved_samples
from mpnn.runtime.timing import median_ci, paired_speedup


def test_the_one_timer_alternates_the_order_loops_short_calls_and_takes_the_median(monkeypatch):
    from mpnn.infra import clock
    calls = []
    ticks = iter([0, 0, 0, 0,                                              # the warm-up calls, timed
                  0, 1, 10, 30, 100, 105, 200, 210, 300, 303, 400, 440])   # perf_counter readings
    monkeypatch.setattr(clock.time, "perf_counter", lambda: next(ticks))
    out = clock.interleaved_samples({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]   # warm-up, then a b, b a, a b
    assert out == {"a": [1, 10, 3], "b": [20, 5, 40]}
    assert clock.median(out["a"]) == 3 and clock.median([1, 2, 3, 10]) == 2.5
    with pytest.raises(ValueError, match="repeats"):
        clock.interleaved_samples({"a": lambda: None}, repeats=0)
    monkeypatch.undo()
    n = []
    out = clock.interleaved_samples({"short": lambda: n.append(1)}, repeats=2, warmup=0, min_time=0.001)
    assert len(n) > 3 and all(t < 0.001 for t in out["short"])     # looped to min_time, seconds per call


def always_fast(x, limit):
    """A stand-in timing claim: supported when ``x`` is below ``limit``."""
    return {"passed": x < limit, "measured": f"{x} < {limit}", "x": x}


def drifting(limit):
    """A stand-in whose measurement changes between the recording and the replays ($MPNN_TEST_X)."""
    x = float(os.environ.get("MPNN_TEST_X", "0"))
    return {"verdict": "supported" if x < limit else "inconclusive", "measured": f"{x} vs {limit}"}


def test_measure_records_and_replay_repeats_under_load(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no recorded timing claims"):
        timing.replay_all(repeats=1, load=0)
    res = timing.measure("demo", "fast", always_fast, x=1, limit=2)
    assert res["verdict"] == "supported" and (tmp_path / "timing" / "demo" / "fast.pt").exists()
    timing.measure("demo", "slow", always_fast, x=3, limit=2)        # a negative finding, replayed as such
    monkeypatch.setenv("MPNN_TEST_X", "1")
    timing.measure("demo", "zdrift", drifting, limit=2)
    monkeypatch.setenv("MPNN_TEST_X", "3")                           # the replays measure another number
    rows = timing.replay_all(repeats=2, load=1, progress=False)
    assert [(r["claim"], r["repetition"], r["verdict"], r["passed"]) for r in rows] == [
        ("fast", 1, "supported", True), ("fast", 2, "supported", True),
        ("slow", 1, "not supported", True), ("slow", 2, "not supported", True),
        ("zdrift", 1, "inconclusive", False), ("zdrift", 2, "inconclusive", False)]
    saved = json.loads((tmp_path / "timing" / "robustness.json").read_text())
    assert saved["load_processes"] == 1 and len(saved["rows"]) == 6
    assert cli.main(["timing", "--repeats", "1", "--load", "0", "--only", "demo/slow"]) == 0
    assert cli.main(["timing", "--repeats", "1", "--load", "0"]) == 1      # the drifting verdict fails


def test_measure_refuses_what_cannot_be_replayed(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="module-level function"):
        timing.measure("demo", "lambda", lambda: {"passed": True, "measured": ""})
    with pytest.raises(TypeError, match="'measured' and 'verdict'"):
        timing.measure("demo", "bad", timing.recorded)
    assert not list((tmp_path).rglob("*.pt"))              # nothing half written


def _median_ci_reference(values, confidence=0.95):
    from scipy import stats as st
    x = sorted(values)
    n = len(x)
    ks = [k for k in range(1, n + 1) if st.binom.cdf(k - 1, n, 0.5) <= (1 - confidence) / 2]
    k = max(ks) if ks else 1
    return float(torch.tensor(x).median()) if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2, x[k - 1], x[n - k]


def test_median_ci_hand_cases_and_binomial_reference():
    # n = 15: P(B <= 3) = 576/32768 = 0.018 <= 0.025 < P(B <= 4) = 0.059, so the interval is [x_(4), x_(12)]
    assert median_ci(list(range(1, 16))) == (8, 4, 12)
    assert median_ci([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 1.0, 5.0)   # n = 5 < 6: the range
    assert median_ci([1.0, 2.0, 3.0, 10.0]) == (2.5, 1.0, 10.0)
    g = torch.Generator().manual_seed(0)
    for n in range(1, 41):
        v = torch.rand(n, generator=g).tolist()
        m, lo, hi = median_ci(v)
        rm, rlo, rhi = _median_ci_reference(v)
        assert m == pytest.approx(rm) and lo == rlo and hi == rhi
    with pytest.raises(ValueError):
        median_ci([])


def test_paired_speedup_uses_per_round_ratios():
    slow, fast = [2.0, 4.0, 6.0, 100.0, 2.0, 2.0], [1.0, 2.0, 3.0, 50.0, 1.0, 1.0]
    assert paired_speedup(slow, fast)[0] == 2.0   # a loaded round slows both calls: its ratio is unchanged
    with pytest.raises(ValueError, match="per round"):
        paired_speedup([1.0], [1.0, 2.0])


def test_interleaved_samples_alternates_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    t = interleaved_samples(fns, repeats=4, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc" + "cba"
    assert {k: len(v) for k, v in t.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(v >= 0 for vs in t.values() for v in vs)


def test_measure_from_records_only_where_the_claim_is_decided(tmp_path, monkeypatch):
    from mpnn.runtime import repro
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    smoke = repro.Run(repro.RunContext(chapter="demo", profile="smoke"), torch.device("cpu"))
    res = timing.measure_from(smoke, "fast", always_fast, x=1, limit=2)
    assert res["verdict"] == "supported" and not (tmp_path / "timing").exists()
    default = repro.Run(repro.RunContext(chapter="demo", profile="default"), torch.device("cpu"))
    timing.measure_from(default, "fast", always_fast, x=1, limit=2)
    assert (tmp_path / "timing" / "demo" / "fast.pt").exists()
