"""mpnn.tagnet: the tag-partitioned network, its autograd per-sample loop and the document's order."""
import numpy as np
import pytest
import torch

from mpnn import tagnet
def data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randint(0, 256, (n, 784), generator=g, dtype=torch.uint8).float() / 255
    X[:, 400:] = 0                       # sparse-ish like MNIST
    return X, torch.randint(0, 10, (n,), generator=g)


def numpy_step(W1, b1, W2, b2, x, y, mask, lr, clip, slope=0.01):
    """Eq. (2) of mpnn.tagnet for a fully connected hidden layer, in float64 numpy."""
    pre = W1 @ x + b1
    a = np.where(pre > 0, pre, slope * pre) * mask
    z = W2 @ a + b2
    p = np.exp(z - z.max())
    p /= p.sum()
    e = np.eye(len(b2))[y] - p
    d = (W2.T @ e) * np.where(pre > 0, 1.0, slope) * mask
    return (W1 + lr * np.clip(np.outer(d, x), -clip, clip), b1 + lr * d,
            W2 + lr * np.clip(np.outer(e, a), -clip, clip), b2 + lr * e)


def test_partition_groups_are_column_halves():
    g = tagnet.partition_groups(16, 2)
    assert len(g[0]) == len(g[1]) == 128
    assert all(h % 16 < 8 for h in g[0]) and all(h % 16 >= 8 for h in g[1])
    assert tagnet.partition_groups(16, 4)[3] == [y * 16 + x for y in range(16) for x in range(12, 16)]
    assert (tagnet.parity_switch(False).table == 1).all()
    with pytest.raises(ValueError, match="n_tags"):
        tagnet.partition_groups(4, 5)


def test_forward_is_eq_1_against_a_dense_computation():
    X, y = data(20)
    model = tagnet.TagNet(generator=torch.Generator().manual_seed(1))
    tags = y % 2
    D = model.hidden.dense_weight()
    pre = X @ D.T + model.hidden.bias
    a = torch.where(pre > 0, pre, 0.01 * pre) * model.switch.table[tags]
    expected = a @ model.out.weight.T + model.out.bias
    assert torch.allclose(model(X, tags=tags), expected, atol=1e-5)
    # the inactive half contributes nothing: zeroing its output weights changes no logit
    with torch.no_grad():
        model.out.weight[:, tagnet.partition_groups()[1]] = 0
    assert torch.allclose(model(X[tags == 0], tags=tags[tags == 0]), expected[tags == 0], atol=1e-5)


def test_reference_sgd_is_one_numpy_step_with_clipping():
    X, y = data(1)
    model = tagnet.TagNet(connectivity="full", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                  # large output weights -> hidden errors beyond the clip
        model.out.weight.mul_(400)
        model.hidden.weight.mul_(10)
    args = [p.detach().double().numpy() for p in
            (model.hidden.weight, model.hidden.bias, model.out.weight, model.out.bias)]
    mask = model.switch.table[int(y[0]) % 2].double().numpy()
    ref = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=5.0)
    raw = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=np.inf)
    assert not np.allclose(raw[0], ref[0]) and not np.allclose(raw[2], ref[2])     # the case clips
    tagnet.reference_sgd(model, X, y, lr=0.01, clip=5.0)
    got = [model.hidden.weight, model.hidden.bias, model.out.weight, model.out.bias]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.detach().numpy(), r, rtol=1e-4, atol=1e-4)


def test_epoch_order_and_schedule():
    labels = torch.arange(100) % 10
    tr = torch.randperm(100, generator=torch.Generator().manual_seed(5))[:60]
    blocked = tagnet.epoch_order(labels, tr, "blocked")
    n_even = int((labels[tr] % 2 == 0).sum())
    assert torch.equal(blocked[:n_even], tr[labels[tr] % 2 == 0])          # order kept inside a block
    assert torch.equal(blocked[n_even:], tr[labels[tr] % 2 == 1])
    assert torch.equal(tagnet.epoch_order(labels, tr, "interleaved"), tr)
    sched = tagnet.make_schedule(labels, [tr, tr], ["blocked", "interleaved"], 2)
    assert sched.shape == (120, 2)
    assert torch.equal(sched[:, 0], torch.cat([blocked, blocked]))         # the Go code never reshuffles
    assert torch.equal(sched[:, 1], torch.cat([tr, tr]))
    with pytest.raises(ValueError, match="blocked"):
        tagnet.epoch_order(labels, tr, "random")
    with pytest.raises(ValueError, match="same number"):
        tagnet.make_schedule(labels, [tr, tr[:10]], ["blocked", "blocked"], 1)


def test_moe_routes_by_its_gate():
    X, _ = data(30)
    moe = tagnet.TwoExpertMoE(generator=torch.Generator().manual_seed(4))
    expert = moe.expert(X)
    assert torch.equal(expert, (X @ moe.gate.gate.weight.T + moe.gate.gate.bias).argmax(-1))
    mask = moe.groups[expert]
    with torch.no_grad():
        expected = moe.out(moe.activations(X) * mask)
        assert torch.allclose(moe(X), expected, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="connectivity"):
        tagnet.TagNet(connectivity="conv")
