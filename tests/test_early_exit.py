"""Early-exit network: FLOP counts by hand, batched inference vs one sample at a time, sweeps vs inference."""
import math

import pytest
import torch

from mpnn.early_exit import (EarlyExitConfig, EarlyExitNet, count_flops, early_exit_predict, exit_costs,
                             exit_decisions, full_cost, images_to_tensor, normalised_entropy,
                             predicted_speedup, train_early_exit)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = EarlyExitNet(EarlyExitConfig(c1=4, c2=8, hidden=16)).eval()
    with torch.no_grad():  # sharpen exit 0 so that entropies spread over [0, 1]
        m.exits[0][-1].weight.mul_(20.0)
    return m


@pytest.fixture(scope="module")
def x():
    return torch.randn(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_flops_hand_counted():
    m = EarlyExitNet(EarlyExitConfig(c1=16, c2=32, hidden=128))
    conv1 = 2 * 28 * 28 * 16 * 1 * 25
    exit1 = 2 * (16 * 7 * 7) * 10
    conv2 = 2 * 10 * 10 * 32 * 16 * 25
    fc = 2 * 800 * 128
    head = 2 * 128 * 10
    assert exit_costs(m).tolist() == [conv1 + exit1, conv1 + exit1 + conv2 + fc + head]
    assert full_cost(m) == conv1 + conv2 + fc + head
    assert count_flops(torch.nn.Linear(3, 5), torch.zeros(2, 7, 3)) == 2 * 7 * 3 * 5  # per sample, 7 rows
    # all samples at exit 0 -> full / cost_0; all at the last exit -> slightly below 1 (the extra head)
    s = predicted_speedup(m, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    c0, c1 = conv1 + exit1, conv1 + exit1 + conv2 + fc + head
    full = conv1 + conv2 + fc + head
    assert torch.allclose(s, torch.tensor([full / c0, full / c1, full / (0.5 * c0 + 0.5 * c1)], dtype=torch.float64))


def test_entropy_closed_form():
    assert torch.allclose(normalised_entropy(torch.zeros(3, 10)), torch.ones(3))
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert torch.allclose(normalised_entropy(logits), torch.tensor([h]))


def test_batched_equals_one_sample_at_a_time(model, x):
    with torch.no_grad():
        H0 = normalised_entropy(model(x)[0])
    # A threshold in the widest gap between two middle entropies, never on a sample's own entropy:
    # batched and one-sample kernels may differ in the last bits, so a tie could go either way.
    Hs = H0.sort().values
    mid = Hs[len(Hs) // 4: 3 * len(Hs) // 4 + 1]
    gaps = mid[1:] - mid[:-1]
    i = int(gaps.argmax())
    T = float((mid[i] + mid[i + 1]) / 2)
    assert float(gaps[i]) > 1e-4  # the nearest sample is far from T compared with float error (~1e-7)
    res = early_exit_predict(model, x, T)
    n0 = int((H0 < T).sum())
    assert 0 < n0 < len(x)
    assert res.rows_per_stage == [len(x), len(x) - n0]
    for b in range(len(x)):
        alone = early_exit_predict(model, x[b:b + 1], T)
        assert alone.exit_index.item() == res.exit_index[b].item()
        assert torch.allclose(alone.logits[0], res.logits[b], atol=1e-5)
        # and the logits are those of the exit it left at, computed without skipping
        full = model(x[b:b + 1])[res.exit_index[b].item()][0]
        assert torch.allclose(full, res.logits[b], atol=1e-5)


def test_sweep_decisions_match_inference(model, x):
    with torch.no_grad():
        outs = model(x)
    ts = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.01])
    dec = exit_decisions(outs, ts)
    assert dec.shape == (5, len(x))
    for i, t in enumerate(ts.tolist()):
        assert torch.equal(dec[i], early_exit_predict(model, x, t).exit_index)
    assert (dec[0] == 1).all() and (dec[-1] == 0).all()  # T=0: nobody leaves early; T>1: everybody


def test_everyone_exits_early_skips_later_stages(model, x):
    res = early_exit_predict(model, x, 1.5)
    assert res.rows_per_stage == [len(x), 0]
    assert torch.allclose(res.logits, model(x)[0], atol=1e-6)


def test_exit_weights_route_gradients():
    torch.manual_seed(0)
    m = EarlyExitNet(EarlyExitConfig(c1=2, c2=4, hidden=8))
    before = m.exits[0][-1].weight.detach().clone()
    imgs = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    losses = train_early_exit(m, imgs, y, epochs=1, batch_size=32, exit_weights=(0.0, 1.0))
    assert len(losses) == 2
    assert torch.equal(m.exits[0][-1].weight, before)  # weight 0 on exit 0: its head is not trained
    train_early_exit(m, imgs, y, epochs=1, batch_size=32, exit_weights=(1.0, 0.0))
    assert not torch.equal(m.exits[0][-1].weight, before)


def test_bad_inputs():
    m = EarlyExitNet(EarlyExitConfig(c1=2, c2=4, hidden=8))
    with pytest.raises(ValueError, match="28, 28"):
        m(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="threshold"):
        early_exit_predict(m, torch.zeros(2, 1, 28, 28), -0.1)
    with pytest.raises(ValueError, match="one weight per exit"):
        train_early_exit(m, torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), exit_weights=(1.0,))
    with pytest.raises(ValueError, match="positive"):
        EarlyExitConfig(c1=0)
    assert images_to_tensor(torch.zeros(3, 28, 28, dtype=torch.uint8)).shape == (3, 1, 28, 28)
