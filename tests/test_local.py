"""mpnn.tagnet.local: connectivity of the 16x16 grid over 28x28 inputs, forward against naive references."""
import math

import pytest
import torch

from mpnn.tagnet.local import LocallyConnected, window_index


def naive_window(x, y, grid=16, image=28, window=5, stride=1, offset=0):
    """Pixels (row, col) that neuron (x, y) sees, by direct enumeration."""
    h = window // 2
    cy, cx = y * stride + offset, x * stride + offset
    return {(r, c) for r in range(cy - h, cy + h + 1) for c in range(cx - h, cx + h + 1)
            if 0 <= r < image and 0 <= c < image}


def test_each_neuron_has_exactly_its_window():
    index, valid = window_index(16, 28, 5)
    assert index.shape == (256, 25)
    for y in range(16):
        for x in range(16):
            h = y * 16 + x
            got = {(int(p) // 28, int(p) % 28) for p, v in zip(index[h], valid[h]) if v}
            assert got == naive_window(x, y), (x, y)
    # skipped taps point at the pad slot
    assert (index[~valid] == 784).all()


def test_edge_counts_and_field_of_view():
    _, valid = window_index(16, 28, 5)
    counts = valid.sum(1).view(16, 16)
    assert counts[0, 0] == 9 and counts[0, 1] == 12 and counts[0, 2] == 15 and counts[5, 5] == 25
    layer = LocallyConnected()
    seen = layer.connectivity().any(0).view(28, 28)
    # only rows/columns 0-17 of the image are ever seen by the document's layout
    assert seen[:18, :18].all() and not seen[18:].any() and not seen[:, 18:].any()


def test_offset_and_stride_windows():
    index, valid = window_index(4, 28, 3, stride=2, offset=5)
    for y in range(4):
        for x in range(4):
            got = {(int(p) // 28, int(p) % 28) for p, v in zip(index[y * 4 + x], valid[y * 4 + x]) if v}
            assert got == naive_window(x, y, 4, 28, 3, 2, 5)


def test_forward_matches_dense_and_naive_loop():
    g = torch.Generator().manual_seed(0)
    layer = LocallyConnected(generator=g)
    with torch.no_grad():
        layer.bias.normal_(generator=g)
    x = torch.rand(3, 784, generator=g)
    out = layer(x)
    dense = layer.dense_weight()
    assert torch.allclose(out, x @ dense.T + layer.bias, atol=1e-5)
    # naive: neuron (x=3, y=0) sums its window pixels times its weights
    h, img = 3, x.view(3, 28, 28)
    ref = layer.bias[h].clone().expand(3).clone()
    k = 0
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            r, c = 0 + dy, 3 + dx
            if 0 <= r < 28 and 0 <= c < 28:
                ref = ref + layer.weight[h, k] * img[:, r, c]
            k += 1
    assert torch.allclose(out[:, h], ref, atol=1e-5)
    assert (dense != 0).sum() == layer.valid.sum()      # no weight outside a window


def test_init_he_normal_and_zero_on_skipped_taps():
    layer = LocallyConnected(generator=torch.Generator().manual_seed(1))
    w = layer.weight[layer.valid]
    assert (layer.weight[~layer.valid] == 0).all() and (layer.bias == 0).all()
    assert abs(float(w.std()) - math.sqrt(2 / 25)) < 0.02
    wide = LocallyConnected(fan_in=784, generator=torch.Generator().manual_seed(1))
    assert abs(float(wide.weight[wide.valid].std()) - math.sqrt(2 / 784)) < 0.004


def test_skipped_taps_get_no_gradient():
    layer = LocallyConnected()
    layer(torch.rand(2, 784)).sum().backward()
    assert (layer.weight.grad[~layer.valid] == 0).all()


def test_bad_input_errors():
    with pytest.raises(ValueError, match="odd"):
        window_index(16, 28, 4)
    with pytest.raises(ValueError, match="see no input"):
        window_index(16, 28, 5, offset=40)
    with pytest.raises(ValueError, match="flatten"):
        LocallyConnected()(torch.rand(2, 28, 28))
