"""The routing abstraction: rule tables (row-wise and vectorised), tags, learned gates."""
import numpy as np
import pytest
import torch

from mpnn.switch import LearnedSwitch, RuleSwitch, TagSwitch, gumbel_softmax, straight_through, topk_mask


def _switch():
    return RuleSwitch([({"age": "young", "inc": ["low", "mild"]}, 0), ({"age": "old"}, [1, 2]),
                       ({"inc": "low"}, 2)], n_units=3)


def _rows(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return [{"age": rng.choice(["young", "mid", "old"]), "inc": rng.choice(["low", "mild", "high"])}
            for _ in range(n)]


def test_rule_table_first_match_by_hand():
    s = _switch()
    rows = [{"age": "young", "inc": "low"}, {"age": "old", "inc": "low"}, {"age": "mid", "inc": "low"},
            {"age": "mid", "inc": "high"}]
    expected = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.float32)
    assert torch.equal(s.route(rows), expected)
    assert s.assignment(rows).tolist() == [0, 1, 2, -1]


@pytest.mark.parametrize("default", [None, [1]])
def test_vectorised_routing_equals_row_by_row(default):
    s = RuleSwitch([(r.when, r.units) for r in _switch().rules], n_units=3, default=default)
    rows = _rows()
    cols = {k: [r[k] for r in rows] for k in ("age", "inc")}
    assert torch.equal(s.route_columns(cols), s.route(rows))
    assert torch.equal(s.assign_columns(cols), s.assignment(rows))


def test_relabel_swaps_units_and_printing():
    s = _switch().relabel([2, 0, 1])
    assert [r.units for r in s.rules] == [(2,), (0, 1), (1,)]
    text = repr(s)
    assert "if age = young and inc = ['low', 'mild'] -> units [2]" in text
    assert list(s.to_frame()["units"]) == [[2], [0, 1], [1]] and "<table" in s._repr_html_()


def test_bad_rules_and_columns_are_explained():
    with pytest.raises(ValueError, match="unknown unit"):
        RuleSwitch([({"a": 1}, 5)], n_units=3)
    with pytest.raises(KeyError, match="needs column 'inc'"):
        _switch().route_columns({"age": ["young"]})


def test_tag_switch_and_primitives():
    t = TagSwitch({0: [0, 1], 1: [2]}, n_units=3)
    assert t(torch.tensor([1, 0])).tolist() == [[0, 0, 1], [1, 1, 0]]
    s = torch.tensor([[0.1, 0.9, 0.5], [3.0, -1.0, 2.0]])
    assert topk_mask(s, 2).tolist() == [[0, 1, 1], [1, 0, 1]]
    soft = torch.tensor([0.2, 0.8], requires_grad=True)
    out = straight_through(torch.tensor([0.0, 1.0]), soft)
    out.sum().backward()
    assert torch.allclose(out, torch.tensor([0.0, 1.0])) and soft.grad.tolist() == [1.0, 1.0]
    g = gumbel_softmax(torch.zeros(4, 3), hard=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g.sum(-1), torch.ones(4)) and set(g.flatten().tolist()) == {0.0, 1.0}
    # Gumbel-max: with a seeded uniform u, the hard sample is argmax(logits - log(-log u))
    logits = torch.tensor([[0.0, 1.0, -1.0]]).repeat(4, 1)
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3))
    hard = gumbel_softmax(logits, tau=0.5, hard=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(hard.argmax(-1), (logits - torch.log(-torch.log(u))).argmax(-1))
    soft = gumbel_softmax(logits, tau=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(soft, torch.softmax((logits - torch.log(-torch.log(u))) / 0.5, -1))
    gate = LearnedSwitch(4, 3, mode="topk", k=1)
    assert torch.allclose(gate(torch.randn(5, 4)).sum(-1), torch.ones(5))
