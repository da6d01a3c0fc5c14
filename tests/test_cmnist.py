"""CMNIST construction and the dense / split convolutional models."""
import os

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from mpnn import cmnist as C
from mpnn.data import cmnist as data_cmnist


def synthetic(n_images=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n_images,), generator=g)
    return images, labels


def test_compose_index_recipe():
    images, labels = synthetic(31)
    cm = data_cmnist.compose(images, labels)
    n = 10                                                   # 31 // 3
    assert cm.images.shape == (n, 28, 84) and cm.digits.shape == (n, 3)
    for i in (0, 4, 9):
        assert torch.equal(cm.images[i], torch.cat([images[i], images[n + i], images[2 * n + i]], 1))
        assert cm.digits[i].tolist() == [labels[i], labels[n + i], labels[2 * n + i]]
    with pytest.raises(ValueError, match="n must be between"):
        data_cmnist.compose(images, labels, 11)


def test_targets_hand_computed():
    digits = torch.tensor([[3, 0, 7], [9, 9, 1]])
    comp = data_cmnist.compositional_targets(digits)
    assert comp.shape == (2, 30) and comp.sum(1).tolist() == [3, 3]
    assert comp[0, [3, 10, 27]].tolist() == [1, 1, 1]
    non = data_cmnist.noncompositional_targets(digits)
    assert non.shape == (2, 1000)
    assert non.argmax(1).tolist() == [307, 991] and non.max(1).values.tolist() == [10, 10]
    assert non.pow(2).sum(1).tolist() == [100, 100]


def naive_tower(model, i):
    """The split model's tower ``i`` as a plain, ungrouped network with copied weights."""
    ch = slice(i * model.channels, (i + 1) * model.channels)
    c = model.channels
    convs = [nn.Conv2d(1, c, C.KERNELS[0]), nn.Conv2d(c, c, C.KERNELS[1]), nn.Conv2d(c, c, C.KERNELS[2])]
    with torch.no_grad():
        for naive, grouped in zip(convs, (model.conv1, model.conv2, model.conv3)):
            naive.weight.copy_(grouped.weight[ch]); naive.bias.copy_(grouped.bias[ch])
    head = model.heads[i]
    return lambda x: head(F.relu(convs[2](F.relu(convs[1](F.relu(convs[0](x)))))).flatten(1))


def test_grouped_towers_equal_separate_towers_and_are_independent():
    torch.manual_seed(0)
    model = C.make_model("split")
    C.init_normal(model, [1, 2], init_std=0.05)
    x = torch.rand(2, 1, 28, 84)
    out = model(x)
    assert out.shape == (2, 1030)
    assert torch.allclose(out[:, :30], naive_tower(model, 0)(x), atol=1e-5)
    assert torch.allclose(out[:, 30:], naive_tower(model, 1)(x), atol=1e-5)
    # the compositional loss sends no gradient into the non-compositional tower
    out[:, :30].pow(2).sum().backward()
    for p, sl in model.tower_parameters(1):
        assert p.grad is None or torch.all(p.grad[sl] == 0)


def test_independent_seeds_per_tower():
    a, b = C.make_model("split"), C.make_model("split")
    C.init_normal(a, [1, 2]); C.init_normal(b, [1, 3])
    for (pa, sl), (pb, _) in zip(a.tower_parameters(0), b.tower_parameters(0)):
        assert torch.equal(pa[sl], pb[sl])
    assert not torch.equal(a.heads[1].weight, b.heads[1].weight)
    assert float(a.conv1.weight.detach().std()) == pytest.approx(0.01, rel=0.2)


def test_metrics_hand_computed():
    digits = torch.tensor([[1, 2, 3], [4, 5, 6]])
    comp, non = data_cmnist.compositional_targets(digits), data_cmnist.noncompositional_targets(digits)
    perfect = C._metrics(torch.cat([comp, non], 1), comp, non, digits)
    assert perfect["comp_error"] == 0 and perfect["noncomp_error"] == 0
    assert perfect["digit_acc"] == 2 and perfect["number_acc_comp"] == 2 and perfect["number_acc_noncomp"] == 2
    zero = C._metrics(torch.zeros(2, 1030), comp, non, digits)
    assert float(zero["comp_error"]) == pytest.approx(2.0) and float(zero["noncomp_error"]) == pytest.approx(2.0)
    # one digit wrong in image 0: per-digit 2/3 + 1, whole number 1 of 2
    wrong = comp.clone(); wrong[0, 0] = 2.0                  # first digit read as 0, not 1
    m = C._metrics(torch.cat([wrong, non], 1), comp, non, digits)
    assert float(m["digit_acc"]) == pytest.approx(2 / 3 + 1) and float(m["number_acc_comp"]) == 1


def test_training_is_deterministic_and_learns_on_tiny_data():
    images, labels = synthetic(12)
    cm = data_cmnist.compose(images, labels)
    runs = [C.train_cmnist("dense", cm, cm, seeds=[0, 1], epochs=2, lr=2e-3, batch_size=2, init_std=0.01)
            for _ in range(2)]
    h1, h2 = runs[0][1].rows, runs[1][1].rows
    assert h1 == h2
    train_err = [r["comp_error"] for r in h1 if r["split"] == "train"]
    assert train_err[-1] < train_err[0]
    with pytest.raises(ValueError, match="need 3 seeds"):
        C.train_cmnist("split", cm, cm, seeds=[0, 1], epochs=1)


@pytest.mark.skipif(not os.environ.get("MPNN_DATA_DIR") and not os.path.isdir("data/mnist"),
                    reason="MNIST not available (set MPNN_DATA_DIR)")
def test_load_cmnist_matches_recipe():
    from mpnn.data.mnist import load_mnist
    images, labels = load_mnist("test")
    cm = data_cmnist.load_cmnist("test")
    assert cm.images.shape == (3333, 28, 84)
    assert torch.equal(cm.images[5, :, 28:56], images[3333 + 5])
    assert cm.digits[100].tolist() == [labels[100], labels[3433], labels[6766]]
    assert data_cmnist.load_cmnist("test") is cm                 # cached


# ----------------------------------------------------------------- CPU scale: MLP towers

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


def test_mlp_towers_layout():
    assert C.mlp_towers("dense", 8) == ((8, slice(0, 1030)),)
    assert C.mlp_towers("split", 8) == ((4, slice(0, 30)), (4, slice(30, 1030)))
    with pytest.raises(ValueError, match="even hidden width"):
        C.mlp_towers("split", 7)
    with pytest.raises(ValueError, match="unknown CMNIST model"):
        C.mlp_towers("conv", 8)


@pytest.mark.parametrize("kind", ["dense", "split"])
def test_tower_mlp_sgd_equals_autograd_per_run(kind):
    """Three batched SGD steps == the same steps on separate nn.Linear towers with torch.optim.SGD."""
    g = torch.Generator().manual_seed(0)
    R, B, D, lr = 3, 5, 12, 0.01
    model = C.init_tower_mlp(kind, D, 6, [4, 5, 6], out_std=0.5, dtype=torch.float64)
    naive = [naive_mlp_run(model, r) for r in range(R)]
    opts = [torch.optim.SGD(params, lr=lr) for _, params in naive]
    for step in range(3):
        x = torch.randn(R, B, D, generator=g, dtype=torch.float64)
        digits = torch.randint(0, 10, (R * B, 3), generator=g)
        y = torch.cat([data_cmnist.compositional_targets(digits), data_cmnist.noncompositional_targets(digits)],
                      1).double().unflatten(0, (R, B))
        losses = model.sgd_step(x, y, lr)
        for r, ((f, _), opt) in enumerate(zip(naive, opts)):
            loss = (f(x[r]) - y[r]).pow(2).sum(1).mean()
            assert float(losses[r]) == pytest.approx(loss.item(), rel=1e-12)
            opt.zero_grad(); loss.backward(); opt.step()
    x = torch.randn(4, D, generator=g, dtype=torch.float64)
    out = model.forward(x)[1]
    for r, (f, _) in enumerate(naive):
        assert torch.allclose(out[r], f(x), atol=1e-12)


def test_split_towers_do_not_share_parameters():
    """Training a split model on compositional targets only leaves the non-compositional tower untouched."""
    model = C.init_tower_mlp("split", 10, 4, [1, 2])
    before = [model.W1[:, 2:].clone(), model.W2[1].clone(), model.b2[:, 30:].clone()]
    x = torch.randn(2, 6, 10)
    y = torch.zeros(2, 6, 1030)
    y[..., :30] = 1.0
    _, out = model.forward(x)
    y[..., 30:] = out[..., 30:]                          # zero error on the 1000 outputs
    model.sgd_step(x, y, 0.1)
    assert torch.equal(model.W1[:, 2:], before[0]) and torch.equal(model.W2[1], before[1])
    assert torch.equal(model.b2[:, 30:], before[2])
    assert not torch.equal(model.W2[0], C.init_tower_mlp("split", 10, 4, [1, 2]).W2[0])


def test_evaluate_runs_equals_per_run_metrics():
    model = C.init_tower_mlp("split", 7, 4, [3, 4], out_std=3.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 7, generator=g)
    digits = torch.randint(0, 10, (9, 3), generator=g)
    got = C.evaluate_runs(model, x, digits, batch_size=4)          # uneven batches
    comp, non = data_cmnist.compositional_targets(digits), data_cmnist.noncompositional_targets(digits)
    for r in range(2):
        ref = C._metrics(model.forward(x)[1][r], comp, non, digits)
        for k, v in ref.items():
            assert float(got[k][r]) == pytest.approx(float(v) / 9, rel=1e-5, abs=1e-7)


def test_pooled_inputs_hand_computed():
    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    images[0, :2, :2] = 255                                  # one 2x2 block of white in image 0
    cm = data_cmnist.compose(images, torch.zeros(6, dtype=torch.long))          # 2 images of 28 x 84
    xtr, xte = C.pooled_inputs(cm, cm)
    assert xtr.shape == (2, 14 * 42) and torch.equal(xtr, xte)
    raw = torch.zeros(2, 588)
    raw[0, 0] = 1.0                                          # the block pools to one pixel of value 1
    expected = (raw - raw.mean(0)) / raw.std()
    assert torch.allclose(xtr, expected)


def test_tower_mlp_training_is_deterministic_paired_and_learns():
    images, labels = synthetic(60, seed=3)
    cm = data_cmnist.compose(images, labels)
    x, _ = C.pooled_inputs(cm, cm)
    kw = dict(init_seeds=[1, 2], order_seeds=[7, 8], epochs=3, lr=0.01, batch_size=4, hidden=8,
              evals={"train": (x, cm.digits)})
    a, rows_a = C.train_tower_mlp("dense", x, cm.digits, **kw)
    b, rows_b = C.train_tower_mlp("dense", x, cm.digits, **kw)
    assert rows_a == rows_b and torch.equal(a.W1, b.W1)
    first = [r["comp_error"] for r in rows_a if r["epoch"] == 0]
    last = [r["comp_error"] for r in rows_a if r["epoch"] == 3]
    assert all(l < f - 0.05 for f, l in zip(first, last))          # 1.12 -> 1.00 and 1.17 -> 1.00
    with pytest.raises(ValueError, match="one init and one order seed"):
        C.train_tower_mlp("split", x, cm.digits, init_seeds=[1], order_seeds=[1, 2], epochs=1, lr=0.1)
