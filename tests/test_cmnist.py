"""mpnn.data.cmnist: the CMNIST construction and its targets."""
import os

import pytest
import torch

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
    assert cm.numbers[4] == 100 * labels[4] + 10 * labels[n + 4] + labels[2 * n + 4]
    with pytest.raises(ValueError, match="n must be between"):
        data_cmnist.compose(images, labels, 11)


def test_inputs_are_unit_scaled_images_with_a_channel():
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    images[0, 0, 0], images[1, 5, 7] = 255, 51
    cm = data_cmnist.compose(images, torch.zeros(3, dtype=torch.long))      # one image of 28 x 84
    x = cm.inputs()
    assert x.shape == (1, 1, 28, 84) and x.dtype == torch.float32
    assert x[0, 0, 0, 0] == 1.0 and x[0, 0, 5, 28 + 7] == pytest.approx(0.2) and x.sum() == pytest.approx(1.2)


def test_targets_hand_computed():
    digits = torch.tensor([[3, 0, 7], [9, 9, 1]])
    comp = data_cmnist.compositional_targets(digits)
    assert comp.shape == (2, 30) and comp.sum(1).tolist() == [3, 3]
    assert comp[0, [3, 10, 27]].tolist() == [1, 1, 1]
    non = data_cmnist.noncompositional_targets(digits)
    assert non.shape == (2, 1000)
    assert non.argmax(1).tolist() == [307, 991] and non.max(1).values.tolist() == [10, 10]
    assert non.pow(2).sum(1).tolist() == [100, 100]


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


def test_noncompositional_scale_and_compositional_share():
    d = torch.tensor([[1, 2, 3]])
    t = data_cmnist.noncompositional_targets(d, scale=3.0)
    assert t[0, 123] == 3.0 and t.sum() == 3.0
    assert torch.equal(data_cmnist.noncompositional_targets(d), data_cmnist.noncompositional_targets(d, 10.0))
    assert data_cmnist.compositional_share(0.0) == 1.0 and data_cmnist.compositional_share(10.0) == 3 / 103
    with pytest.raises(ValueError, match="scale"):
        data_cmnist.compositional_share(-1.0)
