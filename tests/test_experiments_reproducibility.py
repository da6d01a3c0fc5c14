"""The reproducibility report reads every manifest, old ones included, and counts as the findings page does."""
import json

from mpnn.experiments import reproducibility as E
from mpnn.runtime import site, verdicts


def _claim(**kw):
    return {"id": "c", "kind": "claim", "document": "d", "criterion": "k", "measured": "m",
            "verdict": "supported", "expected": "supported", "note": "", "needs": "smoke"} | kw


def _manifests():
    machine = {"cpu_model": "cpu", "isa_flags": ["avx2"], "python": "3.11", "torch_cpu_capability": "AVX2",
               "torch_threads": 1, "compiled_kernels": {"compiler": "/usr/bin/g++", "enabled": True,
                                                        "loaded": {"moe_fused:gemm": True, "other:x": False}}}
    new = {"chapter": "switch_network", "profile": "default", "machine": machine, "versions": {"torch": "2"},
           "context": {"render": "static"}, "duration_s": 3.0,
           "claims": [_claim(id="a"), _claim(id="b", verdict="not testable here", note="needs the full profile (GPU): x"),
                      _claim(id="c", verdict="not testable here", note="needs the default profile"),
                      _claim(id="d", verdict="mixed", expected="supported")]}
    old = {"chapter": "datasets", "profile": "default", "versions": {"torch": "1"},
           "claims": [{"id": "x", "document": "d", "measured": "m", "outcome": "reproduced", "note": ""}]}
    return {"switch_network": new, "datasets": old}


def test_old_manifests_are_reported_not_dropped():
    claims = E.claims_table(_manifests())
    old = claims[claims["chapter"] == "datasets"].iloc[0]
    assert old["lacks"] == "kind, criterion, verdict" and old["verdict"] == "none recorded"
    assert E.lacking(_claim(kind="result")) == ["kind"] and E.lacking(_claim()) == []
    overview = E.overview_table(_manifests(), None).set_index("chapter")
    assert overview.loc["datasets", "no verdict"] == 1 and overview.loc["switch_network", verdicts.MISMATCH] == 1
    assert overview.loc["switch_network", "compiled kernels loaded"] == "moe_fused"      # names, never a path
    assert overview.loc["datasets", "compiled kernels loaded"] == "not recorded"
    assert overview.loc["switch_network", "status"] == "run on its own"


def test_undecided_claims_need_an_exemption_in_their_note():
    left = E.undecided(E.claims_table(_manifests()))
    assert list(left["claim"]) == ["c"]                     # b names the full profile (GPU): exempt


def test_machine_and_versions_group_identical_chapters():
    machines = E.machine_table(_manifests())
    assert len(machines) == 2 and "not recorded" in machines.iloc[1].tolist()
    assert "/usr/bin" not in json.dumps(machines.to_dict())
    versions = E.versions_table(_manifests())
    assert list(versions.columns) == ["switch_network", "datasets"] and versions.loc["torch"].tolist() == ["2", "1"]
    assert list(E.versions_table({"a": {"versions": {"x": "1"}}}).columns) == ["every chapter"]


def test_verdict_counts_are_the_findings_pages():
    documents, own = E.verdict_rows(_manifests())
    assert documents == site.findings_rows(_manifests())
    assert [r["document"] for r in own] == ["the datasets page"]
    assert "supported" in verdicts.count_table(documents)


def test_report_claims_read_the_manifests():
    manifests = _manifests()
    claims = E.claims_table(manifests)
    ran = E.claim_all_chapters_ran(manifests, ["token_selection"], None, True)
    assert ran["id"] == "all-chapters-ran" and ran["verdict"] is False
    assert ran["measured"] == "2/3 chapters executed without error; no manifest: token_selection"
    assert E.claim_all_chapters_ran(manifests, ["token_selection"], None, False)["verdict"] is True
    complete = E.claim_claims_complete(claims)
    assert complete["verdict"] is False and complete["measured"] == "5 claims, 1 lacking one (datasets/x)"
    assert E.claim_verdicts_as_expected(claims)["measured"].startswith("5 claims, ")
    decided = E.claim_every_claim_decided(claims, manifests)     # read only at the default profile
    assert decided["needs"] == "default" and callable(decided["measured"]) and decided["verdict"]() is False
    assert decided["measured"]().endswith("of which 1 neither GPU-scale, a projection nor needing root "
                                          "(switch_network/c)")
