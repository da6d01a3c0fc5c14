"""The one training loop against hand-written loops and closed forms."""
import math

import pytest
import torch
import torch.nn.functional as F

from mpnn.infra.train import fit, permutations


def _data(n=50, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def test_fit_equals_a_hand_written_sgd_loop():
    x, y = _data()
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1).double()
    ref = torch.nn.Linear(3, 1).double()
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hist = fit(model, lambda b, step: F.mse_loss(model(b[0]).squeeze(-1), b[1]), (x, y), opt,
               epochs=3, batch_size=16, seed=7)
    # the reference: the same orders, written out
    g = torch.Generator().manual_seed(7)
    ref_losses = []
    with torch.no_grad():
        for _ in range(3):
            perm = torch.randperm(50, generator=g)
            for b in range(math.ceil(50 / 16)):
                idx = perm[b * 16:(b + 1) * 16]
                err = ref(x[idx]).squeeze(-1) - y[idx]
                ref_losses.append(float((err ** 2).mean()))
                # gradient of the mean squared error, by hand
                gw = 2 * (err[:, None] * x[idx]).mean(0)
                gb = 2 * err.mean()
                ref.weight -= 0.05 * gw[None]
                ref.bias -= 0.05 * gb
    assert hist.steps == 12 and hist.steps_per_epoch == 4
    torch.testing.assert_close(model.weight, ref.weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.bias, ref.bias, rtol=0, atol=1e-12)
    torch.testing.assert_close(hist.loss, torch.tensor(ref_losses), rtol=1e-6, atol=0)
    assert hist.epoch_loss().shape == (3,) and float(hist.epoch_loss()[0]) == pytest.approx(sum(ref_losses[:4]) / 4, rel=1e-6)


class Stacked(torch.nn.Module):
    """R independent linear regressions in one (R, d) weight."""

    def __init__(self, weights):
        super().__init__()
        self.w = torch.nn.Parameter(weights.clone())

    def forward(self, x):                       # (R, B, d) -> (R, B)
        return torch.einsum("rbd,rd->rb", x, self.w)


def test_replicas_train_exactly_like_separate_runs():
    x, y = _data()
    w0 = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seeds = [11, 12, 13]
    stacked = Stacked(w0)
    opt = torch.optim.SGD(stacked.parameters(), lr=0.1)
    hist = fit(stacked, lambda b, step: ((stacked(b[0]) - b[1]) ** 2).mean(1), (x, y), opt,
               epochs=2, batch_size=8, seed=seeds)
    assert hist.loss.shape == (2 * 7, 3)
    for r, s in enumerate(seeds):
        one = Stacked(w0[r:r + 1])
        opt1 = torch.optim.SGD(one.parameters(), lr=0.1)
        h1 = fit(one, lambda b, step, one=one: ((one(b[0][None]) - b[1][None]) ** 2).mean(), (x, y), opt1,
                 epochs=2, batch_size=8, seed=s)
        torch.testing.assert_close(stacked.w[r], one.w[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(hist.loss[:, r], h1.loss, rtol=1e-6, atol=0)


def test_schedule_evaluate_and_step_argument():
    x, y = _data(n=20)
    model = torch.nn.Linear(3, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    seen_steps, lrs = [], []

    def loss_fn(batch, step):
        seen_steps.append(step)
        lrs.append(opt.param_groups[0]["lr"])
        return F.mse_loss(model(batch[0]).squeeze(-1), batch[1]) * 0   # no movement: only the bookkeeping

    hist = fit(model, loss_fn, (x, y), opt, epochs=4, batch_size=10, seed=0,
               schedule=lambda t: 0.5 ** t, evaluate=lambda epoch: {"grad_mode": torch.is_grad_enabled(),
                                                                    "training": model.training},
               eval_every=3)
    assert seen_steps == list(range(8))
    assert lrs == [0.5 ** t for t in range(8)]
    assert [e["epoch"] for e in hist.evals] == [3, 4]                 # every 3rd epoch and the last
    assert all(not e["grad_mode"] and not e["training"] for e in hist.evals)
    assert not model.training


def test_permutations_are_seeded_and_per_replica():
    a = list(permutations(10, 3, 2))
    b = list(permutations(10, [3, 4], 2))
    assert torch.equal(a[0], b[0][0]) and torch.equal(a[1], b[1][0]) and not torch.equal(b[0][0], b[0][1])
    assert all(sorted(p.tolist()) == list(range(10)) for p in a)


def test_bad_input_is_named():
    x, y = _data(n=10)
    model = torch.nn.Linear(3, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="disagree"):
        fit(model, lambda b, s: b[0].sum(), (x, y[:5]), opt, epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="epochs >= 1"):
        fit(model, lambda b, s: b[0].sum(), (x, y), opt, epochs=0, batch_size=4)
    with pytest.raises(ValueError, match="one loss per replica"):
        fit(model, lambda b, s: model(b[0][0]).sum(), (x, y), opt, epochs=1, batch_size=4, seed=[1, 2])
