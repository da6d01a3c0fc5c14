"""Seeding, determinism, devices, confidence intervals and claims."""
import json

import numpy as np
import pytest
import torch

from mpnn import paths, repro, stats


def _train_once(seed):
    repro.seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), np.random.rand(), __import__("random").random()


def test_same_seed_same_numbers_different_seed_different_numbers():
    a, b = _train_once(7), _train_once(7)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    c = _train_once(8)
    assert not torch.equal(a[0], c[0])


def test_spawned_seeds_are_reproducible_and_distinct():
    s = repro.spawn_seeds(0, 10)
    assert s == repro.spawn_seeds(0, 10) and len(set(s)) == 10
    assert s[:3] == repro.spawn_seeds(0, 3)          # child i does not depend on n
    assert set(s).isdisjoint(repro.spawn_seeds(1, 10))


def test_seed_validation():
    with pytest.raises(ValueError, match="non-negative int"):
        repro.seed_everything(-1)


def test_resolve_device():
    assert repro.resolve_device("cpu").type == "cpu"
    assert repro.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        repro.resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            repro.resolve_device("cuda")


def test_mean_ci_matches_hand_computed_t_interval():
    # values 1..5: mean 3, s = sqrt(2.5), t_{0.975,4} = 2.776445
    m, lo, hi = stats.mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * np.sqrt(2.5) / np.sqrt(5)
    assert m == 3 and lo == pytest.approx(3 - half) and hi == pytest.approx(3 + half)
    assert stats.mean_ci([4.0]) == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError):
        stats.mean_ci([])


def test_summarise_groups():
    import pandas as pd
    df = pd.DataFrame({"model": ["a", "a", "b", "b"], "acc": [1.0, 3.0, 5.0, 5.0]})
    out = stats.summarise(df, "model", "acc").set_index("model")
    assert out.loc["a", "mean"] == 2.0 and out.loc["b", "low"] == 5.0 and out.loc["a", "n"] == 2


def test_run_records_claims_writes_manifest_and_fails_on_a_failed_claim(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("MPNN_PROFILE", "smoke")
    run = repro.Run(chapter="demo", parameters={"seed": 1}, device=torch.device("cpu"))
    run.claim("holds", document="x > 0", measured="x = 1", passed=True)
    run.claim("untested", document="y", measured="-", passed=None, note="needs the full profile")
    run.claim("broken", document="z = 2", measured="z = 3", passed=False)
    with pytest.raises(ValueError, match="twice"):
        run.claim("holds", document="", measured="", passed=True)
    with pytest.raises(AssertionError, match=r"(?s)1 claim\(s\) did not reproduce.*broken"):
        run.finish(display=False)
    manifest = json.loads((tmp_path / "manifests" / "demo.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["parameters"] == {"seed": 1}
    assert [c["outcome"] for c in manifest["claims"]] == ["reproduced", "not tested", "FAILED"]
    assert "torch" in manifest["versions"] and manifest["duration_s"] >= 0


def test_start_run_checks_parameter_types():
    namespace = {"seed": 0, "samples_per_digit": "ten", "device": "auto"}
    with pytest.raises(ValueError, match="samples_per_digit"):
        repro.start_run("datasets", namespace)
    with pytest.raises(NameError, match="run the parameters cell"):
        repro.start_run("datasets", {"seed": 0})
    run = repro.start_run("datasets", {"seed": 3, "samples_per_digit": 2, "device": "cpu"})
    assert run.parameters["seed"] == 3 and run.device.type == "cpu"


def test_cpu_threads_sets_and_restores():
    before = torch.get_num_threads()
    with repro.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with repro.cpu_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with repro.cpu_threads(None):
        assert torch.get_num_threads() == before
