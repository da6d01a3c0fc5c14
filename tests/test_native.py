"""mpnn.infra.native: measured choices, loud failures, a cache keyed on the CPU and private to the user."""
import os
import warnings

import pytest

from mpnn.infra import native
@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_CHOICES", {})
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setattr(native, "_WARNED", set())
    return tmp_path


class FakeClock:
    """A clock the candidates advance by their stated cost: the choice is tested, not this CPU."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def costing(self, seconds):
        def run():
            self.now += seconds
        return run


def test_choose_takes_the_faster_path_and_remembers_it_on_disk(cache, monkeypatch):
    from mpnn.infra import clock as timer
    clock = FakeClock()
    monkeypatch.setattr(timer.time, "perf_counter", clock)
    _sleeper = clock.costing
    assert native.choose("demo", {"n": 1}, {"compiled": _sleeper(0.004), "torch": _sleeper(0.0005)}) == "torch"
    assert native.choose("demo", {"n": 2}, {"compiled": _sleeper(0.0005), "torch": _sleeper(0.004)}) == "compiled"
    # a compiled path must beat torch's by the margin (5% by default): a near tie goes to torch
    assert native.choose("demo", {"n": 3}, {"compiled": _sleeper(0.0039), "torch": _sleeper(0.004)}) == "torch"
    assert native.choose("demo", {"n": 4}, {"compiled-a": _sleeper(0.003), "compiled-b": _sleeper(0.002),
                                            "torch-x": _sleeper(0.004), "torch-y": _sleeper(0.0021)},
                         margin=0.9) == "torch-y"
    report = native.report()["choices"]
    assert [c["chosen"] for c in report] == ["torch", "compiled", "torch", "torch-y"]
    assert all(set(c["seconds"]) == {"compiled", "torch"} for c in report[:3])
    monkeypatch.setattr(native, "_CHOICES", {})                    # a new process reads the stored choice
    calls = []
    assert native.choose("demo", {"n": 1}, {"compiled": lambda: calls.append(1), "torch": lambda: None}) == "torch"
    assert not calls and native.report()["choices"][0]["source"] == "cache"
    with native.forced("demo", "compiled"):
        assert native.choose("demo", {"n": 1}, {"compiled": None, "torch": None}) == "compiled"
    with native.fresh_choices():          # the benchmark run measures again and stores what it finds
        assert native.choose("demo", {"n": 1}, {"compiled": _sleeper(0.0001), "torch": _sleeper(0.004)}) == "compiled"
    monkeypatch.setattr(native, "_CHOICES", {})
    assert native.choose("demo", {"n": 1}, {"compiled": None, "torch": None}) == "compiled"   # stored


def test_the_cache_key_is_the_cpu_not_the_host_name(cache, monkeypatch):
    sig = native.cpu_signature()
    monkeypatch.setattr(native.platform, "node", lambda: "another-host")
    assert native.cpu_signature() == sig and native.platform.machine() in sig


def test_a_cache_others_can_write_is_refused(cache):
    folder = native.cache_dir()
    os.chmod(folder, 0o777)
    try:
        with pytest.raises(PermissionError, match="writable by other users"):
            native.cache_dir()
    finally:
        os.chmod(folder, 0o700)


BROKEN = 'extern "C" int mpnn_broken( { return 0; }'


def test_a_failed_build_warns_once_with_the_compilers_message(cache, monkeypatch):
    if native.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    monkeypatch.setenv("MPNN_FUSED", "1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert native.load("broken", BROKEN, "mpnn_broken", []) is None
        assert native.load("broken", BROKEN, "mpnn_other", []) is None
    messages = [str(w.message) for w in seen if "broken" in str(w.message)]
    assert len(messages) == 1 and "error" in messages[0]


def test_required_kernels_fail_loudly(cache, monkeypatch):
    monkeypatch.setenv("MPNN_FUSED", "require")
    monkeypatch.setattr(native, "compiler", lambda: None)
    with pytest.raises(native.KernelBuildError, match="no C\\+\\+ compiler"):
        native.load("anything", "int x;", "x", [])
    if native.shutil.which("g++") or native.shutil.which("c++"):
        monkeypatch.undo()
        monkeypatch.setenv("MPNN_CACHE_DIR", str(cache))
        monkeypatch.setenv("MPNN_FUSED", "require")
        monkeypatch.setattr(native, "_LOADED", {})
        with pytest.raises(native.KernelBuildError, match="failed to build"):
            native.load("broken", BROKEN, "mpnn_broken", [])


def test_kernel_sources_ship_as_files():
    for name in ("moe.cpp", "stage1.cpp", "tag_steps.cpp"):
        assert 'extern "C"' in native.source(name)


def test_a_made_choice_never_runs_the_set_up_for_measuring(cache, monkeypatch):
    from mpnn.infra import clock as timer
    clock = FakeClock()
    monkeypatch.setattr(timer.time, "perf_counter", clock)
    built = []

    def candidates():
        built.append(1)
        return {"compiled": clock.costing(0.001), "torch": clock.costing(0.002)}
    names = ["compiled", "torch"]
    assert native.choose("lazy", {"n": 1}, candidates, names=names) == "compiled" and len(built) == 1
    for _ in range(3):
        assert native.choose("lazy", {"n": 1}, candidates, names=names) == "compiled"
    assert len(built) == 1
    with native.forced("lazy", "not-a-candidate"):      # a forced path that is not offered is ignored
        assert native.choose("lazy", {"n": 1}, candidates, names=names) == "compiled"


def test_measuring_a_choice_draws_nothing_from_the_callers_generator(cache):
    import torch
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    native.choose("rng-demo", {"n": 1}, {"compiled": lambda: torch.randn(100), "torch": lambda: torch.randn(100)})
    assert torch.equal(torch.rand(3), expected)     # a run that finds the choice cached draws the same numbers


def test_a_candidate_far_slower_at_first_call_is_not_timed_further(cache, monkeypatch):
    from mpnn.infra import clock as timer
    clock = FakeClock()
    monkeypatch.setattr(timer.time, "perf_counter", clock)
    calls = {"compiled": 0, "torch-fast": 0, "torch-slow": 0}

    def counting(name, seconds):
        def run():
            calls[name] += 1
            clock.now += seconds
        return run
    chosen = native.choose("screen", {"n": 1}, {"compiled": counting("compiled", 0.006),
                                                 "torch-fast": counting("torch-fast", 0.004),
                                                 "torch-slow": counting("torch-slow", 0.050)}, repeats=5)
    assert chosen == "torch-fast" and calls["torch-slow"] == 1        # screened out after its first call
    assert calls["compiled"] > 1 and calls["torch-fast"] > 1
