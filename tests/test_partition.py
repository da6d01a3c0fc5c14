"""Stacked isolated training equals per-neuron training, and neurons never share gradients."""
import math

import pytest
import torch

from mpnn import partition as P
def _data(n=120, d=4, units=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g) < 0.5).double()
    a = torch.randint(0, units, (n,), generator=g)
    W0 = 0.1 * torch.randn(units, d, generator=g, dtype=torch.float64)
    b0 = 0.1 * torch.randn(units, generator=g, dtype=torch.float64)
    return x, y, a, W0, b0


@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_vectorised_equals_per_neuron_loop(loss):
    x, y, a, W0, b0 = _data()
    kw = dict(steps=60, lr=0.3, l2=1e-2, loss=loss, W0=W0, b0=b0)
    fast = P.train_isolated(x, y, a, 5, **kw)
    slow = P.train_loop(x, y, a, 5, **kw)
    assert torch.allclose(fast.W, slow.W, atol=1e-6, rtol=0)
    assert torch.allclose(fast.b, slow.b, atol=1e-6, rtol=0)
    # the mask path (overlap-capable) agrees with the gather path on a disjoint assignment
    mask = P.train_isolated(x, y, torch.nn.functional.one_hot(a, 5), 5, **kw)
    assert torch.allclose(mask.W, fast.W, atol=1e-12)
    assert torch.allclose(mask.final_loss, fast.final_loss, atol=1e-12)


def test_overlapping_mask_equals_loop():
    x, y, _, W0, b0 = _data(units=3)
    g = torch.Generator().manual_seed(3)
    m = (torch.rand(x.shape[0], 3, generator=g) < 0.5).long()
    kw = dict(steps=40, lr=0.3, l2=1e-3, W0=W0, b0=b0)
    fast, slow = P.train_isolated(x, y, m, 3, **kw), P.train_loop(x, y, m, 3, **kw)
    assert torch.allclose(fast.W, slow.W, atol=1e-6) and torch.allclose(fast.b, slow.b, atol=1e-6)


def test_changing_one_neurons_data_changes_no_other_neuron():
    x, y, a, W0, b0 = _data()
    base = P.train_isolated(x, y, a, 5, steps=80, W0=W0, b0=b0)
    x2, y2 = x.clone(), y.clone()
    rows = a == 2
    x2[rows] = 5 * torch.randn(int(rows.sum()), x.shape[1], dtype=x.dtype)
    y2[rows] = 1 - y2[rows]
    new = P.train_isolated(x2, y2, a, 5, steps=80, W0=W0, b0=b0)
    others = torch.arange(5) != 2
    assert torch.equal(new.W[others], base.W[others]) and torch.equal(new.b[others], base.b[others])
    assert (new.W[2] - base.W[2]).abs().max() > 1e-3          # neuron 2 itself did change
    # moving samples between neurons 0 and 1 leaves 2, 3, 4 untouched too
    a3 = a.clone()
    a3[(a == 0).nonzero()[:3, 0]] = 1
    moved = P.train_isolated(x, y, a3, 5, steps=80, W0=W0, b0=b0)
    assert torch.equal(moved.W[2:], base.W[2:])


def test_single_step_matches_hand_computed_gradient():
    # one neuron, two samples, zero init: z = 0, sigmoid = 1/2, grad_w = mean((1/2 - y) x)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = P.train_isolated(x, y, torch.zeros(2, dtype=torch.long), 1, steps=1, lr=1.0, l2=0.0)
    expected = -0.5 * ((0.5 - 1.0) * x[0] + (0.5 - 0.0) * x[1])
    assert torch.allclose(out.W[0], expected) and abs(float(out.b[0])) < 1e-15
    # final loss: mean log-loss at the new weights
    z = x @ out.W[0]
    ref = float((torch.nn.functional.softplus(z) - y * z).mean())
    assert math.isclose(float(out.final_loss[0]), ref, rel_tol=1e-12)


def test_converges_to_least_squares_for_linear_neurons():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    a = torch.arange(200) % 2
    y = torch.where(a == 0, x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3,
                    x @ torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64) - 1.0)
    out = P.train_isolated(x, y, a, 2, steps=2000, lr=0.2, l2=0.0, loss="squared")
    for i in range(2):
        X1 = torch.cat([x[a == i], torch.ones(int((a == i).sum()), 1, dtype=x.dtype)], 1)
        sol = torch.linalg.lstsq(X1, y[a == i]).solution
        assert torch.allclose(out.W[i], sol[:3], atol=1e-8) and abs(float(out.b[i] - sol[3])) < 1e-8


def test_unrouted_samples_and_empty_neurons():
    x, y, a, _, _ = _data()
    a2 = a.clone()
    a2[a == 4] = -1                                            # neuron 4 gets nothing
    out = P.train_isolated(x, y, a2, 5, steps=20)
    assert torch.equal(out.W[4], torch.zeros(4, dtype=x.dtype)) and float(out.n_samples[4]) == 0
    ref = P.train_isolated(x[a != 4], y[a != 4], a[a != 4], 5, steps=20)
    assert torch.allclose(out.W, ref.W, atol=1e-12)


def test_bad_input_errors():
    x, y, a, _, _ = _data()
    with pytest.raises(ValueError, match="unit indices outside"):
        P.train_isolated(x, y, a + 10, 5)
    with pytest.raises(ValueError, match="loss must be"):
        P.train_isolated(x, y, a, 5, loss="hinge")
    with pytest.raises(ValueError, match="mask must be"):
        P.train_isolated(x, y, torch.ones(x.shape[0], 3), 5)


def test_routed_and_group_means_and_specialization_index():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    net = P.Neurons(W, torch.zeros(2))
    x = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    assert torch.allclose(net.routed(x, torch.tensor([0, 1])), torch.sigmoid(torch.tensor([2.0, 3.0])))
    vals = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    gm = P.group_means(vals, torch.tensor([0, 0, 2]), 3)       # (units, groups)
    assert torch.allclose(gm[:, 0], torch.tensor([2.0, 1.0])) and torch.isnan(gm[:, 1]).all()
    assert torch.allclose(gm[:, 2], torch.tensor([5.0, 4.0]))
    A = torch.tensor([[0.9, 0.5, 0.1], [0.6, 0.8, 0.3], [0.3, 0.2, 0.7]])  # (neurons, groups)
    si = P.specialization_index(A, torch.tensor([0, 1, 2]))
    hand = ((0.9 - 0.45) + (0.8 - 0.35) + (0.7 - 0.2)) / 3
    assert math.isclose(float(si), hand, rel_tol=1e-6)
    swapped = P.specialization_index(A, torch.tensor([1, 0, -1]))  # group 2 unrouted: left out
    assert math.isclose(float(swapped), ((0.6 - 0.6) + (0.5 - 0.5)) / 2, abs_tol=1e-6)


def test_group_means_keeps_leading_dimensions_and_matches_a_naive_loop():
    g = torch.Generator().manual_seed(4)
    values = torch.rand(3, 40, 2, generator=g, dtype=torch.float64)     # (replicas, samples, units)
    groups = torch.randint(0, 4, (3, 40), generator=g)
    groups[1][groups[1] == 2] = 3                                      # replica 1 has no sample of group 2
    out = P.group_means(values, groups, 4)                             # (replicas, units, groups)
    for r in range(3):
        for k in range(4):
            rows = groups[r] == k
            if rows.any():
                assert torch.allclose(out[r, :, k], values[r][rows].mean(0), atol=1e-12)
            else:
                assert torch.isnan(out[r, :, k]).all()
    with pytest.raises(ValueError, match="disagree"):
        P.group_means(values, groups[:, :10], 4)
