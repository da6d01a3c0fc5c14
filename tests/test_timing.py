"""Timing claims: interleaved medians, recording, and replay under load."""
import json

import pytest

from mpnn.runtime import cli, timing


def test_time_interleaved_calls_in_turn_and_takes_the_median(monkeypatch):
    calls = []
    ticks = iter([0, 1, 10, 30, 100, 105, 200, 210, 300, 303, 400, 440])   # perf_counter readings
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks))
    out = timing.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4                          # warm-up, then a, b, a, b, a, b
    assert out == {"a": 3, "b": 20}                         # medians of (1, 5, 3) and (20, 10, 40)
    with pytest.raises(ValueError, match="repeats"):
        timing.time_interleaved({"a": lambda: None}, repeats=0)


def always_fast(x, limit):
    """A stand-in timing claim: passes when ``x`` is below ``limit``."""
    return {"passed": x < limit, "measured": f"{x} < {limit}", "x": x}


def test_measure_records_and_replay_repeats_under_load(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no recorded timing claims"):
        timing.replay_all(repeats=1, load=0)
    res = timing.measure("demo", "fast", always_fast, x=1, limit=2)
    assert res["passed"] and (tmp_path / "timing" / "demo" / "fast.pt").exists()
    timing.measure("demo", "slow", always_fast, x=3, limit=2)
    rows = timing.replay_all(repeats=2, load=1, progress=False)
    assert [(r["claim"], r["repetition"], r["passed"]) for r in rows] == [
        ("fast", 1, True), ("fast", 2, True), ("slow", 1, False), ("slow", 2, False)]
    saved = json.loads((tmp_path / "timing" / "robustness.json").read_text())
    assert saved["load_processes"] == 1 and len(saved["rows"]) == 4
    assert cli.main(["timing", "--repeats", "1", "--load", "0", "--only", "demo/fast"]) == 0
    assert cli.main(["timing", "--repeats", "1", "--load", "0"]) == 1      # the slow claim fails


def test_measure_refuses_what_cannot_be_replayed(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="module-level function"):
        timing.measure("demo", "lambda", lambda: {"passed": True, "measured": ""})
    with pytest.raises(TypeError, match="'passed' and 'measured'"):
        timing.measure("demo", "bad", timing.recorded)
    assert not list((tmp_path).rglob("*.pt"))              # nothing half written
