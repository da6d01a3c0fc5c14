"""mpnn.towers: grouped conv towers against separate networks, the stacked tower MLP against autograd."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpnn import towers as T
KERNELS = ((9, 27), (7, 21), (5, 15))


def conv_towers(outputs=(30, 1000), channels=16):
    return T.ConvTowers(channels=channels, outputs=outputs, kernels=KERNELS, input_hw=(28, 84))


def naive_tower(model, i):
    """Tower ``i`` of a ConvTowers as a plain, ungrouped network with copied weights."""
    ch = slice(i * model.channels, (i + 1) * model.channels)
    c = model.channels
    convs = [nn.Conv2d(1 if j == 0 else c, c, k) for j, k in enumerate(KERNELS)]
    with torch.no_grad():
        for naive, grouped in zip(convs, model.convs):
            naive.weight.copy_(grouped.weight[ch]); naive.bias.copy_(grouped.bias[ch])
    head = model.heads[i]
    return lambda x: head(F.relu(convs[2](F.relu(convs[1](F.relu(convs[0](x)))))).flatten(1))


def test_feature_size_of_valid_convolutions():
    # 28 - 8 - 6 - 4 = 10 and 84 - 26 - 20 - 14 = 24, the paper's 10 x 24 feature maps
    assert conv_towers().feature_hw == (10, 24)
    assert conv_towers().heads[0].in_features == 16 * 240
    with pytest.raises(ValueError, match="do not fit"):
        T.ConvTowers(channels=2, outputs=(3,), kernels=KERNELS, input_hw=(16, 84))


def test_grouped_towers_equal_separate_towers_and_are_independent():
    torch.manual_seed(0)
    model = conv_towers()
    T.init_normal(model, [1, 2], init_std=0.05)
    x = torch.rand(2, 1, 28, 84)
    out = model(x)
    assert out.shape == (2, 1030)
    assert torch.allclose(out[:, :30], naive_tower(model, 0)(x), atol=1e-5)
    assert torch.allclose(out[:, 30:], naive_tower(model, 1)(x), atol=1e-5)
    # the first tower's loss sends no gradient into the second tower
    out[:, :30].pow(2).sum().backward()
    for p, sl in model.tower_parameters(1):
        assert p.grad is None or torch.all(p.grad[sl] == 0)


def test_independent_seeds_per_tower():
    a, b = conv_towers(), conv_towers()
    T.init_normal(a, [1, 2]); T.init_normal(b, [1, 3])
    for (pa, sl), (pb, _) in zip(a.tower_parameters(0), b.tower_parameters(0)):
        assert torch.equal(pa[sl], pb[sl])
    assert not torch.equal(a.heads[1].weight, b.heads[1].weight)
    assert float(a.convs[0].weight.detach().std()) == pytest.approx(0.01, rel=0.2)
    with pytest.raises(ValueError, match="one seed per tower"):
        T.init_normal(a, [1])


# ----------------------------------------------------------------------------- TowerMLP

SPLIT = ((3, slice(0, 4)), (3, slice(4, 9)))
DENSE = ((6, slice(0, 9)),)


def naive_mlp_run(model, r):
    """Run ``r`` of a batched TowerMLP as plain nn.Linear layers (one pair per tower), weights copied."""
    towers = []
    with torch.no_grad():
        for (h, osl), hsl, W2 in zip(model.towers, model.hidden_slices, model.W2):
            l1 = nn.Linear(model.W1.shape[2], h).to(model.W1.dtype)
            l2 = nn.Linear(h, osl.stop - osl.start).to(model.W1.dtype)
            l1.weight.copy_(model.W1[r, hsl]); l1.bias.copy_(model.b1[r, hsl])
            l2.weight.copy_(W2[r]); l2.bias.copy_(model.b2[r, osl])
            towers.append((l1, l2))
    forward = lambda x: torch.cat([l2(F.relu(l1(x))) for l1, l2 in towers], 1)
    params = [p for pair in towers for layer in pair for p in layer.parameters()]
    return forward, params


def test_tower_slices_and_layout_checks():
    assert T.tower_slices(SPLIT) == [slice(0, 3), slice(3, 6)]
    with pytest.raises(ValueError, match="consecutive output slices"):
        T.init_tower_mlp(((2, slice(0, 3)), (2, slice(4, 9))), 5, [0])
    with pytest.raises(ValueError, match="at least one tower"):
        T.init_tower_mlp((), 5, [0])


@pytest.mark.parametrize("towers", [DENSE, SPLIT], ids=["dense", "split"])
def test_tower_mlp_sgd_equals_autograd_per_run(towers):
    """Three batched SGD steps == the same steps on separate nn.Linear towers with torch.optim.SGD."""
    g = torch.Generator().manual_seed(0)
    R, B, D, lr = 3, 5, 12, 0.01
    model = T.init_tower_mlp(towers, D, [4, 5, 6], out_std=0.5, dtype=torch.float64)
    naive = [naive_mlp_run(model, r) for r in range(R)]
    opts = [torch.optim.SGD(params, lr=lr) for _, params in naive]
    for step in range(3):
        x = torch.randn(R, B, D, generator=g, dtype=torch.float64)
        y = torch.randn(R, B, 9, generator=g, dtype=torch.float64)
        losses = model.sgd_step(x, y, lr)
        for r, ((f, _), opt) in enumerate(zip(naive, opts)):
            loss = (f(x[r]) - y[r]).pow(2).sum(1).mean()
            assert float(losses[r]) == pytest.approx(loss.item(), rel=1e-12)
            opt.zero_grad(); loss.backward(); opt.step()
    x = torch.randn(4, D, generator=g, dtype=torch.float64)
    out = model.forward(x)[1]
    for r, (f, _) in enumerate(naive):
        assert torch.allclose(out[r], f(x), atol=1e-12)


def test_init_draws_he_first_layer_and_scaled_read_out():
    model = T.init_tower_mlp(((200, slice(0, 50)), (200, slice(50, 100))), 300, [0, 1], out_std=0.5)
    assert float(model.W1.std()) == pytest.approx((2 / 300) ** 0.5, rel=0.02)
    assert float(model.W2[1].std()) == pytest.approx(0.5 / 200 ** 0.5, rel=0.02)
    assert torch.equal(model.b1, torch.zeros(2, 400)) and torch.equal(model.b2, torch.zeros(2, 100))
    again = T.init_tower_mlp(((200, slice(0, 50)), (200, slice(50, 100))), 300, [5, 1], out_std=0.5)
    assert torch.equal(model.W1[1], again.W1[1]) and not torch.equal(model.W1[0], again.W1[0])   # one generator per run


def test_split_towers_do_not_share_parameters():
    """Training a split model on the first outputs only leaves the second tower untouched."""
    model = T.init_tower_mlp(SPLIT, 10, [1, 2])
    before = [model.W1[:, 3:].clone(), model.W2[1].clone(), model.b2[:, 4:].clone()]
    x = torch.randn(2, 6, 10)
    y = torch.zeros(2, 6, 9)
    y[..., :4] = 1.0
    _, out = model.forward(x)
    y[..., 4:] = out[..., 4:]                          # zero error on the second tower's outputs
    model.sgd_step(x, y, 0.1)
    assert torch.equal(model.W1[:, 3:], before[0]) and torch.equal(model.W2[1], before[1])
    assert torch.equal(model.b2[:, 4:], before[2])
    assert not torch.equal(model.W2[0], T.init_tower_mlp(SPLIT, 10, [1, 2]).W2[0])
