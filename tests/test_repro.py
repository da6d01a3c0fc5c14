"""Seeding, determinism, devices, confidence intervals and claims."""
import json

import numpy as np
import pytest
import torch

from mpnn.infra import determinism
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


def _decide(run, id, verdict, expected, **kw):
    return run.claim(id, kind=kw.pop("kind", "claim"), document="d", criterion="c", measured="m",
                     verdict=verdict, expected=expected, **kw)


def test_run_records_verdicts_writes_manifest_and_fails_on_a_changed_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    run = repro.Run(repro.RunContext(chapter="demo", profile="smoke", parameters={"seed": 1}), torch.device("cpu"))
    _decide(run, "holds", True, "supported")
    _decide(run, "negative", "not supported", "not supported", kind="next check")   # a negative finding, as expected
    _decide(run, "too-small", lambda: 1 / 0, "supported", needs="default")           # never evaluated
    _decide(run, "improved", "supported", "not supported")        # a change in the good direction fails too
    with pytest.raises(ValueError, match="twice"):
        _decide(run, "holds", True, "supported")
    with pytest.raises(ValueError, match="kind="):
        _decide(run, "k", True, "supported", kind="result")
    with pytest.raises(ValueError, match="expected="):
        _decide(run, "e", True, "reproduced")
    with pytest.raises(ValueError, match="criterion"):
        run.claim("nc", kind="claim", document="d", criterion="", measured="m", verdict=True, expected="supported")
    with pytest.raises(AssertionError, match=r"(?s)1 verdict\(s\) changed.*improved.*expected 'not supported'"):
        run.finish(display=False)
    manifest = json.loads((tmp_path / "manifests" / "demo.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["parameters"] == {"seed": 1}
    assert [c["verdict"] for c in manifest["claims"]] == ["supported", "not supported", "not testable here",
                                                          "supported"]
    assert [c["matches"] for c in manifest["claims"]] == [True, True, True, False]
    assert manifest["claims"][2]["note"] == "needs the default profile" and manifest["context"]["profile"] == "smoke"
    assert "torch" in manifest["versions"] and manifest["duration_s"] >= 0
    assert manifest["machine"]["cpu_model"] and "torch_cpu_capability" in manifest["machine"]


def test_a_timing_claim_may_lose_its_decision_on_another_machine_but_never_flip(tmp_path, monkeypatch):
    from mpnn.runtime import verdicts as V
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    assert V.accepted("not supported", timing=True) == ("not supported", "inconclusive")
    assert V.accepted("supported") == ("supported",) and V.accepted("inconclusive", timing=True) == ("inconclusive",)
    run = repro.Run(repro.RunContext(chapter="demo", profile="smoke"), torch.device("cpu"))
    assert _decide(run, "slower-here", "inconclusive", "not supported", timing=True).matches
    assert _decide(run, "mixed-here", "inconclusive", "mixed", timing=True).matches
    assert not _decide(run, "not-timing", "inconclusive", "not supported").matches
    flipped = _decide(run, "flipped", "supported", "not supported", timing=True)
    assert not flipped.matches
    with pytest.raises(AssertionError, match=r"(?s)2 verdict\(s\) changed.*not-timing.*flipped.*"
                                             r"expected 'not supported, or inconclusive \(a time"):
        run.finish(display=False)
    manifest = json.loads((tmp_path / "manifests" / "demo.json").read_text())
    assert [c["timing"] for c in manifest["claims"]] == [True, True, False, True]
    assert "a time measured" in V.claims_table(manifest["claims"][:1])


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
    def verdict(profile, needs, value=lambda: True):
        run = repro.Run(repro.RunContext(chapter="demo", profile=profile), torch.device("cpu"))
        return _decide(run, "c", value, "supported", needs=needs).verdict
    assert verdict("smoke", "default") == "not testable here" and verdict("default", "default") == "supported"
    assert verdict("full", "default") == "supported" and verdict("default", "full") == "not testable here"
    assert verdict("interactive", "default") == "supported"       # the parameters cell is the default profile
    assert verdict("default", "smoke", value=False) == "not supported"
    with pytest.raises(ValueError, match="needs='huge'"):
        verdict("default", "huge")
    with pytest.raises(ValueError, match="unknown profile"):
        repro.RunContext(chapter="demo", profile="medium")


def test_verdicts_from_intervals_and_parts():
    from mpnn.runtime import verdicts as V
    assert V.from_interval(0.1, 0.3, above=0) == "supported"
    assert V.from_interval(-0.3, -0.1, above=0) == "not supported"
    assert V.from_interval(-0.3, 0.2, above=0) == "inconclusive"
    assert V.from_interval(-0.3, 0.004, above=0, refuted_below=0.005) == "not supported"   # no gain worth having
    assert V.from_interval(0.2, 0.4, below=0.5) == "supported" and V.from_interval(0.6, 0.7, below=0.5) == "not supported"
    assert V.from_interval(float("nan"), 1.0, above=0) == "inconclusive"
    with pytest.raises(ValueError):
        V.from_interval(0, 1, above=0, below=1)
    assert V.combine({"a": "supported", "b": "supported"}) == "supported"
    assert V.combine({"a": "supported", "b": "not supported"}) == "mixed"
    assert V.combine({"a": "inconclusive", "b": "not supported"}) == "inconclusive"
    assert V.combine({"a": "not supported", "b": "not supported"}) == "not supported"
    assert V.as_verdict(True) == "supported" and V.as_verdict(False) == "not supported"
    with pytest.raises(ValueError, match="verdict="):
        V.as_verdict("reproduced")


def test_bounded_intervals_stay_in_range_and_seeds_to_decide():
    x = [0.0, 0.02, 0.15, 0.01, 0.12]             # an entropy near its floor: the t interval goes below 0
    assert stats.mean_ci(x)[1] < 0
    m, lo, hi = stats.mean_ci(x, bounds=(0, np.log(8)))
    assert 0 < lo < m < hi < np.log(8) and m == pytest.approx(np.mean(x))
    m, lo, hi = stats.mean_ci([0.9, 1.0, 0.95, 1.0, 0.99], bounds=(0, 1))
    assert lo > 0 and hi < 1 and lo < m < hi
    with pytest.raises(ValueError, match="outside their stated range"):
        stats.mean_ci([0.5, 1.2], bounds=(0, 1))
    assert "95% CI" in stats.fmt_ci([0.2, 0.3, 0.25], bounds=(0, 1), scale=100)
    vals = [0.01, -0.02, 0.03, 0.0, 0.02]           # mean 0.008, straddles 0
    n = stats.seeds_to_decide(vals, 0.0)
    assert n > len(vals)
    sd, m = np.std(vals, ddof=1), np.mean(vals)
    from scipy import stats as st
    assert st.t.ppf(0.975, n - 1) * sd / np.sqrt(n) < m <= st.t.ppf(0.975, n - 2) * sd / np.sqrt(n - 1)


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
    base = {"id": "c", "kind": "claim", "document": "d", "criterion": "crit", "measured": "m",
            "verdict": "supported", "expected": "supported", "note": "", "needs": "smoke"}
    return base | kw


def test_badges_say_the_verdict_and_why_a_claim_was_not_tested():
    from mpnn.runtime import verdicts as V
    assert V.badge_text(_claim()) == "supported"
    assert V.badge_text(_claim(verdict="not supported", expected="not supported")) == "not supported"
    assert V.badge_text(_claim(verdict="supported", expected="not supported")) == "verdict changed: supported"
    assert V.badge_text(_claim(verdict="not testable here", needs="default")) == "not testable here: default profile"
    assert V.badge_text(_claim(verdict="not testable here", needs="full",
                               note="needs the full profile (GPU): big")) == "not testable here: full profile (GPU)"
    assert V.badge_text(_claim(verdict="not testable here", note="a projection")) == "not testable here: a projection"
    table = V.claims_table([_claim(measured="x" * 300)])
    assert "x" * 300 in table and "crit" in table            # whole texts, never cut


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
        _claim(id="t", kind="extension", document="x", measured="1.6x", section="Wall time",
               verdict="not testable here", needs="full")]}
    for _ in range(2):                                   # idempotent: decorating twice changes nothing more
        site.decorate(path, manifest=manifest)
    nb = nbformat.read(path, 4)
    assert nb.cells[0].source == "# Title\n\n*Source:* a paper."
    box = nb.cells[1].source
    assert nb.cells[1].metadata[site.GLANCE_KEY] is True and box.count('<tr id="claim-') == 2
    assert 'href="#accuracy-against-compute"' in box and 'href="#wall-time"' in box
    assert "the documents' claims</strong> (1): 1 supported" in box
    assert "not testable here: full profile" in box
    assert nb.cells[2].source == "**What it claims.** much."
    assert sum("mpnn-glance" in c.source for c in nb.cells if c.cell_type == "markdown") == 1
    html_out = nb.cells[5].outputs[0]["data"]["text/html"]
    assert html_out.count(site.LINKS_CLASS) == 1 and "../figures/demo/acc-curve.svg" in html_out
    assert "hide-input" in nb.cells[3].metadata["tags"]
    site.undecorate_cells(nb)                          # the title cell is whole again
    assert nb.cells[0].source.endswith("**What it claims.** much.") and len(nb.cells) == 5


def test_findings_rows_counts_and_markers(monkeypatch):
    from mpnn.runtime import site, verdicts
    manifests = {"switch_network": {"chapter": "switch_network", "profile": "default", "claims": [
        _claim(id="a"), _claim(id="b", kind="extension", verdict="not testable here", needs="full")]},
        "early_exits": {"chapter": "early_exits", "profile": "default", "claims": [
            _claim(id="c", verdict="not supported", expected="not supported")]},
        "datasets": {"chapter": "datasets", "profile": "default", "claims": [_claim(id="z", kind="book")]}}
    rows = site.findings_rows(manifests)
    assert [r["claim"] for r in rows] == ["a", "b", "c"]          # book order, documents' chapters only
    assert verdicts.counts(r["raw"] for r in rows) == {"supported": 1, "mixed": 0, "not supported": 1,
                                                       "inconclusive": 0, "not testable here": 1}
    text = site.fill_markers("x <!-- mpnn:counts --> y", manifests)
    assert "the documents' claims: 2 (1 supported, 1 not supported)" in text and "[findings](findings.md)" in text
    assert "the book's extensions and checks: 1" in text
    page = site.fill_markers("<!-- mpnn:findings -->", manifests)
    assert page.count('<tr><td><a href=') == 3 and "mpnn-counts" in page
    assert "\n\n" not in page                                     # one raw HTML block for MyST
