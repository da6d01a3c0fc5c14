"""Early-exit network: FLOP counts by hand, batched inference vs one sample at a time, sweeps vs inference."""
import math

import pytest
import torch

from mpnn.early_exit import (EarlyExitConfig, EarlyExitNet, choose_threshold, count_flops, early_exit_predict,
                             exit_costs, exit_decisions, exit_logits, full_cost, images_to_tensor,
                             normalised_entropy, predicted_speedup, speedup_sweep,
                             sweep_metrics, time_breakdown, train_early_exit, wall_time_claim)
from mpnn.runtime.timing import interleaved_samples, median_ci, paired_speedup


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
    # no sample's entropy sits on a positive threshold (float error ~1e-7 could send it either way); T = 0 is
    # safe by construction: the entropy is never negative and the test is H < T
    assert float((normalised_entropy(outs[0]).unsqueeze(1) - ts[1:]).abs().min()) > 1e-4
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


def test_exit_logits_and_sweep_metrics_match_inference(model, x):
    y = torch.arange(len(x)) % 10
    outs = exit_logits(model, x, batch_size=7)  # batches of 7: the concatenation must not reorder rows
    with torch.no_grad():
        direct = model(x)
    for a, b in zip(outs, direct):
        assert torch.allclose(a, b, atol=1e-6)
    ts = [0.0, 0.2, 0.5, 0.8, 1.01]
    m = sweep_metrics(outs, y, ts)
    for i, t in enumerate(ts):  # reference: the real skipping inference, one threshold at a time
        res = early_exit_predict(model, x, t)
        assert m["accuracy"][i].item() == pytest.approx((res.predictions == y).float().mean().item())
        assert m["exit_fractions"][i, 0].item() == pytest.approx((res.exit_index == 0).float().mean().item())
        assert m["exit_fractions"][i].sum().item() == pytest.approx(1.0)
    for e in range(2):
        assert m["exit_accuracy"][e].item() == pytest.approx((direct[e].argmax(-1) == y).float().mean().item())


def test_choose_threshold_hand_case():
    acc = torch.tensor([0.950, 0.949, 0.946, 0.9485, 0.930])
    assert choose_threshold(acc, 0.950, 0.002) == 3   # the largest index within 0.002, not the first gap
    assert choose_threshold(acc, 0.950, 0.0) == 0
    assert choose_threshold(acc, 0.990, 0.001) == 0   # none qualifies -> the smallest threshold


def _median_ci_reference(values, confidence=0.95):
    from scipy import stats as st
    x = sorted(values)
    n = len(x)
    ks = [k for k in range(1, n + 1) if st.binom.cdf(k - 1, n, 0.5) <= (1 - confidence) / 2]
    k = max(ks) if ks else 1
    return float(torch.tensor(x).median()) if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2, x[k - 1], x[n - k]


def test_median_ci_hand_cases_and_binomial_reference():
    # n = 15: P(B <= 3) = 576/32768 = 0.018 <= 0.025 < P(B <= 4) = 0.059, so the interval is [x_(4), x_(12)]
    assert median_ci(list(range(1, 16))) == (8, 4, 12)
    assert median_ci([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 1.0, 5.0)   # n = 5 < 6: the range
    assert median_ci([1.0, 2.0, 3.0, 10.0]) == (2.5, 1.0, 10.0)
    g = torch.Generator().manual_seed(0)
    for n in range(1, 41):
        v = torch.rand(n, generator=g).tolist()
        m, lo, hi = median_ci(v)
        rm, rlo, rhi = _median_ci_reference(v)
        assert m == pytest.approx(rm) and lo == rlo and hi == rhi
    with pytest.raises(ValueError):
        median_ci([])


def test_paired_speedup_uses_per_round_ratios():
    slow, fast = [2.0, 4.0, 6.0, 100.0, 2.0, 2.0], [1.0, 2.0, 3.0, 50.0, 1.0, 1.0]
    assert paired_speedup(slow, fast)[0] == 2.0   # a loaded round slows both calls: its ratio is unchanged
    with pytest.raises(ValueError, match="per round"):
        paired_speedup([1.0], [1.0, 2.0])


def test_interleaved_samples_alternates_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    t = interleaved_samples(fns, repeats=4, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc" + "cba"
    assert {k: len(v) for k, v in t.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(v >= 0 for vs in t.values() for v in vs)


def test_timing_claims_report_consistent_numbers(model, x):
    # structure and bookkeeping only: no assertion on how long anything takes
    T = 0.5
    res = wall_time_claim(model, x, T, repeats=3)
    q0 = (early_exit_predict(model, x, T).exit_index == 0).double().mean()
    assert res["predicted"] == pytest.approx(float(predicted_speedup(model, torch.stack([q0, 1 - q0]))))
    assert res["exit1_fraction"] == pytest.approx(float(q0))
    assert res["efficiency"] == pytest.approx(res["speedup"] / res["predicted"])
    assert res["speedup_low"] <= res["speedup"] <= res["speedup_high"]
    assert isinstance(res["passed"], bool) and isinstance(res["measured"], str) and len(res["ratios"]) == 3
    assert res["passed"] == (res["speedup_low"] > res["min_speedup"] and res["efficiency_high"] < res["max_efficiency"])
    rows = speedup_sweep(model, x, [0.0, T, 1.01], repeats=2)
    assert [r["threshold"] for r in rows] == [0.0, T, 1.01]
    assert [r["exit 1 fraction"] for r in rows] == pytest.approx([0.0, float(q0), 1.0])
    parts = time_breakdown(model, x, rows_left=[0, 5, 20], repeats=2)
    assert set(parts["parts"]) == {"block 1", "exit-1 head", "entropy + gather half the rows", "block 2 + exit-2 head"}
    assert set(parts["block2_rows"]) == {5, 20}


def test_training_matches_a_hand_written_loop():
    # reference: the documented objective sum_i w_i CE_i with plain (unfused) Adam on the same batches
    import copy
    import torch.nn.functional as F
    torch.manual_seed(0)
    m = EarlyExitNet(EarlyExitConfig(c1=2, c2=4, hidden=8))
    ref = copy.deepcopy(m)
    imgs = torch.randn(50, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.arange(50) % 10
    losses = train_early_exit(m, imgs, y, epochs=2, batch_size=16, lr=1e-2, exit_weights=(0.5, 1.0), seed=3)
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, foreach=False, fused=False)
    ref_losses = []
    for _ in range(2):
        order = torch.randperm(50, generator=g)
        for b in order.split(16):
            o1, o2 = ref(imgs[b])
            loss = 0.5 * F.cross_entropy(o1, y[b]) + F.cross_entropy(o2, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            ref_losses.append(loss.item())
    assert losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-5)
    for p, q in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
