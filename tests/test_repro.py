"""Seeding, determinism, devices, confidence intervals and claims."""
import json

import numpy as np
import pytest
import torch

from mpnn import paths
from mpnn import determinism
from mpnn.runtime import repro, stats


def _train_once(seed):
    determinism.seed_everything(seed)
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
    s = determinism.spawn_seeds(0, 10)
    assert s == determinism.spawn_seeds(0, 10) and len(set(s)) == 10
    assert s[:3] == determinism.spawn_seeds(0, 3)          # child i does not depend on n
    assert set(s).isdisjoint(determinism.spawn_seeds(1, 10))


def test_seed_validation():
    with pytest.raises(ValueError, match="non-negative int"):
        determinism.seed_everything(-1)


def test_resolve_device():
    assert determinism.resolve_device("cpu").type == "cpu"
    assert determinism.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        determinism.resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            determinism.resolve_device("cuda")


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
    run = repro.Run(repro.RunContext(chapter="demo", profile="smoke", parameters={"seed": 1}), torch.device("cpu"))
    run.claim("holds", document="x > 0", measured="x = 1", passed=True)
    run.claim("untested", document="y", measured="-", passed=None, note="needs the full profile")
    run.claim("too-small", document="w", measured="-", passed=lambda: 1 / 0, needs="default")  # never evaluated
    run.claim("broken", document="z = 2", measured="z = 3", passed=False)
    with pytest.raises(ValueError, match="twice"):
        run.claim("holds", document="", measured="", passed=True)
    with pytest.raises(AssertionError, match=r"(?s)1 claim\(s\) did not reproduce.*broken"):
        run.finish(display=False)
    manifest = json.loads((tmp_path / "manifests" / "demo.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["parameters"] == {"seed": 1}
    assert [c["outcome"] for c in manifest["claims"]] == ["reproduced", "not tested", "not tested", "FAILED"]
    assert manifest["claims"][2]["note"] == "needs the default profile" and manifest["context"]["profile"] == "smoke"
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
    with determinism.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with determinism.cpu_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with determinism.cpu_threads(None):
        assert torch.get_num_threads() == before


def test_a_claim_is_decided_from_the_profile_it_needs_up():
    def outcome(profile, needs, passed=lambda: True):
        run = repro.Run(repro.RunContext(chapter="demo", profile=profile), torch.device("cpu"))
        return run.claim("c", document="d", measured="m", passed=passed, needs=needs).outcome
    assert outcome("smoke", "default") == "not tested" and outcome("default", "default") == "reproduced"
    assert outcome("full", "default") == "reproduced" and outcome("default", "full") == "not tested"
    assert outcome("interactive", "default") == "reproduced"       # the parameters cell is the default profile
    assert outcome("default", "smoke", passed=False) == "FAILED"
    with pytest.raises(ValueError, match="needs='huge'"):
        outcome("default", "huge")
    with pytest.raises(ValueError, match="unknown profile"):
        repro.RunContext(chapter="demo", profile="medium")


def test_start_run_takes_the_runner_context_without_parsing_the_notebook():
    context = repro.RunContext(chapter="not-a-notebook", profile="smoke", render="static", threads=1,
                               parameters={"seed": 4, "device": "cpu"})
    before = torch.get_num_threads()
    try:
        run = repro.start_run("not-a-notebook", {"mpnn_context": context.as_parameter()})
        assert run.profile == "smoke" and run.parameters["seed"] == 4 and torch.get_num_threads() == 1
        assert repro.current() == context
        with pytest.raises(ValueError, match="context of chapter"):
            repro.start_run("datasets", {"mpnn_context": context.as_parameter()})
    finally:
        torch.set_num_threads(before)
        repro._current = repro.RunContext(chapter="scratch")


# ---------------------------------------------------------------- the site's view of the claims

def _claim(**kw):
    base = {"id": "c", "document": "d", "measured": "m", "passed": True, "note": "", "needs": "smoke",
            "outcome": "reproduced"}
    return base | kw


def test_outcome_badges_and_the_deciding_number():
    from mpnn.runtime import site
    assert site.outcome(_claim()) == "reproduced"
    assert site.outcome(_claim(passed=False, outcome="FAILED")) == "not reproduced"
    assert site.outcome(_claim(differs=True)) == "differs from the document"
    assert site.badge_text(_claim(passed=None, needs="default")) == "not tested: default profile"
    assert site.badge_text(_claim(passed=None, needs="full", note="needs the full profile (GPU): big")) \
        == "not tested: full profile (GPU)"
    assert site.badge_text(_claim(passed=None, note="a projection from assumptions")) == "projection, not tested"
    m = "at T* ([0.2, 0.3]): 0.254 of the FLOPs (95% CI 0.226-0.283, 6 seeds); other 1.0 (95% CI 0-2)"
    assert site.headline(_claim(measured=m)) == "at T* ([0.2, 0.3]): 0.254 of the FLOPs (95% CI 0.226-0.283)"
    assert site.headline(_claim(measured="top-1: NMI(digit; expert) 0.409 (95% CI 0.383-0.435, n=16)")) \
        == "top-1: NMI(digit; expert) 0.409 (95% CI 0.383-0.435)"           # "; " inside brackets is no clause
    assert site.headline(_claim(measured="4/4 files match; all good")) == "4/4 files match"
    assert site.headline(_claim(headline="0.25x")) == "0.25x"


def _executed(tmp_path, cells):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=cells)
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, path)
    return path


def test_decorate_puts_the_glance_box_after_title_and_source_once(tmp_path):
    import nbformat
    from mpnn.runtime import site
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    chart = code("plots.show(c)")
    chart.outputs = [nbformat.v4.new_output("display_data", data={
        "text/html": '<div class="mpnn-chart" id="mpnn-demo-acc-curve"></div>', "text/plain": "<chart>"})]
    injected = code("mpnn_context = {}", metadata={"tags": ["injected-parameters"]})
    path = _executed(tmp_path, [md("# Title\n\n*Source:* a paper.\n\n**What it claims.** much."), injected,
                                md("## Accuracy against compute\n\nThe curve."), chart, md("## Wall time\n\nslow")])
    manifest = {"chapter": "demo", "profile": "default", "claims": [
        _claim(id="saves-compute", document="early exits save compute on accuracy",
               measured="0.25 of the FLOPs (95% CI 0.2-0.3)"),
        _claim(id="t", document="x", measured="1.6x", section="Wall time", passed=None, needs="full")]}
    for _ in range(2):                                   # idempotent: decorating twice changes nothing more
        site.decorate(path, manifest=manifest)
    nb = nbformat.read(path, 4)
    assert nb.cells[0].source == "# Title\n\n*Source:* a paper."
    box = nb.cells[1].source
    assert nb.cells[1].metadata[site.GLANCE_KEY] is True and box.count("<li>") == 2
    assert 'href="#accuracy-against-compute"' in box and 'href="#wall-time"' in box
    assert "1 reproduced, 1 not tested" in box and "not tested: full profile" in box
    assert nb.cells[2].source == "**What it claims.** much."
    assert sum("mpnn-glance" in c.source for c in nb.cells if c.cell_type == "markdown") == 1
    html_out = nb.cells[5].outputs[0]["data"]["text/html"]
    assert html_out.count(site.LINKS_CLASS) == 1 and "../figures/demo/acc-curve.svg" in html_out
    assert "hide-input" in nb.cells[3].metadata["tags"]
    site.undecorate_cells(nb)                          # the title cell is whole again
    assert nb.cells[0].source.endswith("**What it claims.** much.") and len(nb.cells) == 5


def test_findings_rows_counts_and_markers(monkeypatch):
    from mpnn.runtime import site
    manifests = {"switch_network": {"chapter": "switch_network", "profile": "default", "claims": [
        _claim(id="a"), _claim(id="b", passed=None, needs="full")]},
        "early_exits": {"chapter": "early_exits", "profile": "default", "claims": [_claim(id="c", differs=True)]},
        "datasets": {"chapter": "datasets", "profile": "default", "claims": [_claim(id="z")]}}   # no document
    rows = site.findings_rows(manifests)
    assert [r["claim"] for r in rows] == ["a", "b", "c"]          # book order, documents' chapters only
    assert site.counts(rows) == {"reproduced": 1, "differs from the document": 1, "not reproduced": 0,
                                 "not tested": 1}
    text = site.fill_markers("x <!-- mpnn:counts --> y", manifests)
    assert "3 claims" in text and "**1 reproduced**" in text and "[findings](findings)" in text
    page = site.fill_markers("<!-- mpnn:findings -->", manifests)
    assert page.count("<tr><td>") == 3 and "mpnn-findings-outcomes" in page
    assert "\n\n" not in page                                     # one raw HTML block for MyST
