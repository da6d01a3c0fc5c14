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
