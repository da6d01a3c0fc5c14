"""mpnn.tagnet: the stacked per-sample trainer against the autograd loop and a numpy step."""
import copy

import numpy as np
import pytest
import torch

from mpnn import tagnet


def data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randint(0, 256, (n, 784), generator=g, dtype=torch.uint8).float() / 255
    X[:, 400:] = 0                       # sparse-ish like MNIST
    y = torch.randint(0, 10, (n,), generator=g)
    return X, y


def params_close(a, b, atol=2e-5):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=atol), name


@pytest.mark.parametrize("kind", ["local", "full", "unpartitioned", "moe"])
def test_stacked_matches_autograd_reference(kind):
    X, y = data(60)
    lr = 0.01 if kind == "moe" else 0.05        # keep the gate's argmax away from ties
    g = torch.Generator().manual_seed(3)
    if kind == "moe":
        model = tagnet.TwoExpertMoE(generator=g)
    else:
        model = tagnet.TagNet(connectivity="full" if kind == "full" else "local",
                              partitioned=kind != "unpartitioned", generator=g)
    ref = copy.deepcopy(model)
    eng = tagnet.StackedSGD([model], X, y, lr=lr)
    eng.fit(torch.arange(len(X))[:, None], progress=False)
    tagnet.reference_sgd(ref, X, y, lr=lr)
    params_close(ref, eng.export()[0])


def test_lockstep_models_equal_separate_runs():
    X, y = data()
    models = [tagnet.TagNet(generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    sched = torch.stack([torch.arange(60), torch.arange(60, 120)], 1)
    eng = tagnet.StackedSGD(models, X, y)
    eng.fit(sched, progress=False)
    for i, m in enumerate(models):
        solo = tagnet.StackedSGD([m], X, y)
        solo.fit(sched[:, i:i + 1], progress=False)
        params_close(eng.export()[i], solo.export()[0], atol=1e-6)


def test_inactive_partition_receives_no_update():
    X, y = data()
    even = (y % 2 == 0).nonzero().flatten()
    model = tagnet.TagNet(generator=torch.Generator().manual_seed(0))
    eng = tagnet.StackedSGD([model], X, y)
    eng.fit(even[:, None], progress=False)
    out = eng.export()[0]
    odd_units = torch.tensor(tagnet.partition_groups()[1])
    even_units = torch.tensor(tagnet.partition_groups()[0])
    assert torch.equal(out.hidden.weight[odd_units], model.hidden.weight[odd_units])
    assert torch.equal(out.hidden.bias[odd_units], model.hidden.bias[odd_units])
    assert torch.equal(out.out.weight[:, odd_units], model.out.weight[:, odd_units])
    assert not torch.equal(out.hidden.weight[even_units], model.hidden.weight[even_units])
    assert not torch.equal(out.out.bias, model.out.bias)        # the shared output always learns


def numpy_step(W1, b1, W2, b2, x, y, mask, lr, clip, slope=0.01):
    """Eq. (2) of mpnn.tagnet for a fully connected hidden layer, in float64 numpy."""
    pre = W1 @ x + b1
    a = np.where(pre > 0, pre, slope * pre) * mask
    z = W2 @ a + b2
    p = np.exp(z - z.max()); p /= p.sum()
    e = np.eye(len(b2))[y] - p
    d = (W2.T @ e) * np.where(pre > 0, 1.0, slope) * mask
    return (W1 + lr * np.clip(np.outer(d, x), -clip, clip), b1 + lr * d,
            W2 + lr * np.clip(np.outer(e, a), -clip, clip), b2 + lr * e)


def test_clipping_against_numpy_step():
    X, y = data(4)
    model = tagnet.TagNet(connectivity="full", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                  # large output weights -> hidden errors beyond the clip
        model.out.weight.mul_(400)
        model.hidden.weight.mul_(10)
    args = [p.detach().double().numpy() for p in
            (model.hidden.weight, model.hidden.bias, model.out.weight, model.out.bias)]
    mask = model.switch.table[int(y[0]) % 2].double().numpy()
    ref = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=5.0)
    eng = tagnet.StackedSGD([model], X, y, lr=0.01, clip=5.0)
    eng.step(torch.tensor([0]))
    got = [eng.W1[0], eng.b1[0], eng.W2[0], eng.b2[0]]
    raw = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=np.inf)
    assert not np.allclose(raw[0], ref[0])        # the case really clips
    assert not np.allclose(raw[2], ref[2])
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-4)


def test_schedule_blocked_and_interleaved():
    labels = torch.arange(60000) % 10
    tr, va = tagnet.split_indices(60000, 48000, seed=5)
    assert len(tr) == 48000 and len(va) == 12000
    assert len(torch.cat([tr, va]).unique()) == 60000
    blocked = tagnet.epoch_order(labels, tr, "blocked")
    n_even = int((labels[tr] % 2 == 0).sum())
    assert (labels[blocked[:n_even]] % 2 == 0).all() and (labels[blocked[n_even:]] % 2 == 1).all()
    assert torch.equal(blocked[:n_even], tr[labels[tr] % 2 == 0])     # order kept inside a block
    assert torch.equal(tagnet.epoch_order(labels, tr, "interleaved"), tr)
    sched = tagnet.make_schedule(labels, [tr, tr], ["blocked", "interleaved"], 2)
    assert sched.shape == (96000, 2) and torch.equal(sched[48000:, 0], blocked)


def test_partition_groups_are_column_halves():
    g = tagnet.partition_groups(16, 2)
    assert len(g[0]) == len(g[1]) == 128
    assert all(h % 16 < 8 for h in g[0]) and all(h % 16 >= 8 for h in g[1])
    sw = tagnet.parity_switch(False)
    assert (sw.table == 1).all()


def test_batched_inference_matches_module():
    X, y = data()
    models = [tagnet.TagNet(generator=torch.Generator().manual_seed(1)),
              tagnet.TagNet(connectivity="local", partitioned=False,
                            generator=torch.Generator().manual_seed(2))]
    eng = tagnet.StackedSGD(models, X, y)
    tags = y % 2
    logits = eng.logits(X, tags)
    for i, m in enumerate(models):
        assert torch.allclose(logits[i], m(X, tags=tags), atol=1e-5)
        assert torch.allclose(eng.logits(X, route="all")[i], m(X), atol=1e-5)
    moe = tagnet.TwoExpertMoE(generator=torch.Generator().manual_seed(4))
    e2 = tagnet.StackedSGD([moe], X, y)
    assert torch.allclose(e2.logits(X, route="gate")[0], moe(X), atol=1e-5)
    # a subset of the models gives exactly their rows of the full computation
    assert torch.allclose(eng.logits(X, tags, models=[1]), logits[1:], atol=1e-6)
    assert torch.equal(eng.accuracy(X, y, models=[1, 0]), eng.accuracy(X, y)[[1, 0]])
    with pytest.raises(ValueError, match="models must be indices"):
        eng.logits(X, tags, models=[2])


def test_fit_callback_runs_on_one_thread_and_restores_count():
    X, y = data(40)
    eng = tagnet.StackedSGD([tagnet.TagNet(generator=torch.Generator().manual_seed(0))], X, y)
    before, seen = torch.get_num_threads(), []
    eng.fit(torch.arange(40)[:, None], every=10, callback=lambda t: seen.append((t, torch.get_num_threads())),
            progress=False)
    assert seen == [(10, 1), (20, 1), (30, 1), (40, 1)]
    assert torch.get_num_threads() == before


def test_router_learns_a_separable_tag():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(300, 784, generator=g) * 0.5
    tags = torch.randint(0, 2, (300,), generator=g)
    X[:, :20] = tags[:, None].float()           # the first 20 pixels reveal the tag
    sw = tagnet.train_router(X, tags, epochs=10, lr=0.05)
    assert float((sw.scores(X).argmax(-1) == tags).float().mean()) > 0.95


def test_bad_inputs():
    X, y = data(10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tagnet.StackedSGD([tagnet.TagNet()], X * 255, y)
    with pytest.raises(ValueError, match="share"):
        tagnet.StackedSGD([tagnet.TagNet(), tagnet.TagNet(connectivity="full")], X, y)
    with pytest.raises(ValueError, match="connectivity"):
        tagnet.TagNet(connectivity="conv")
    with pytest.raises(ValueError, match="blocked"):
        tagnet.epoch_order(y, torch.arange(10), "random")


def test_mixed_engine_equals_separate_runs_and_autograd():
    """One engine holding every kind of local model (blocked partitioned models whose tag blocks end
    at different steps, so some steps are mixed; another window layout; interleaved partitioned;
    unpartitioned blocked and interleaved) gives each model exactly its own solo run, and the solo
    runs agree with the plain autograd loop."""
    X, y = data(200, seed=1)
    g = torch.Generator().manual_seed(9)
    idx = [torch.randperm(200, generator=g)[:120] for _ in range(6)]
    models = [tagnet.TagNet(generator=torch.Generator().manual_seed(1)),
              tagnet.TagNet(generator=torch.Generator().manual_seed(2)),
              tagnet.TagNet(offset=6, generator=torch.Generator().manual_seed(3)),
              tagnet.TagNet(generator=torch.Generator().manual_seed(4)),
              tagnet.TagNet(partitioned=False, generator=torch.Generator().manual_seed(5)),
              tagnet.TagNet(partitioned=False, generator=torch.Generator().manual_seed(6))]
    orders = ["blocked", "blocked", "blocked", "interleaved", "blocked", "interleaved"]
    sched = tagnet.make_schedule(y, idx, orders, 1)
    n_even = [int((y[i] % 2 == 0).sum()) for i in idx[:3]]
    assert len(set(n_even)) > 1                       # the blocked models' even blocks end apart
    eng = tagnet.StackedSGD(models, X, y, lr=0.05)
    eng.fit(sched, progress=False)
    assert eng.n_p == 3                               # the three blocked partitioned models
    together = eng.export()
    for i, m in enumerate(models):
        solo = tagnet.StackedSGD([m], X, y, lr=0.05)
        solo.fit(sched[:, i:i + 1], progress=False)
        for p, q in zip(solo.export()[0].parameters(), together[i].parameters()):
            assert torch.equal(p, q)
        ref = copy.deepcopy(m)
        tagnet.reference_sgd(ref, X[sched[:, i]], y[sched[:, i]], lr=0.05)
        params_close(ref, together[i])


@pytest.mark.parametrize("kind", ["local", "full", "moe"])
def test_scripted_and_eager_steps_agree_bitwise(kind):
    X, y = data(80)
    if kind == "moe":
        models = [tagnet.TwoExpertMoE(generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    else:
        models = [tagnet.TagNet(connectivity=kind, partitioned=s == 0,
                                generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    sched = torch.stack([torch.arange(80), torch.arange(80).flip(0)], 1)
    out = []
    for eager in (False, True):
        eng = tagnet.StackedSGD(models, X, y, lr=0.02)
        eng.fit(sched, progress=False, eager=eager, plan_chunk=30)
        out.append(eng.export())
    for a, b in zip(*out):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)


def test_same_seed_same_numbers():
    X, y = data(100)
    runs = []
    for _ in range(2):
        models = [tagnet.TagNet(generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
        eng = tagnet.StackedSGD(models, X, y)
        eng.fit(tagnet.make_schedule(y, [torch.arange(100)] * 2, ["blocked", "interleaved"], 2),
                progress=False)
        runs.append(eng.accuracy(X, y))
    assert torch.equal(runs[0], runs[1])


def test_local_clipping_against_numpy_step():
    """Eq. (2) on the dense masked form of the local layer (clip applied to window taps only)."""
    X, y = data(3)
    model = tagnet.TagNet(generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.out.weight.mul_(400)
        model.hidden.weight.mul_(10)
    D = model.hidden.dense_weight().detach().double().numpy()
    conn = model.hidden.connectivity().numpy()
    args = [D] + [p.detach().double().numpy() for p in (model.hidden.bias, model.out.weight, model.out.bias)]
    mask = model.switch.table[int(y[0]) % 2].double().numpy()
    W1, b1, W2, b2 = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=5.0)
    raw = numpy_step(*args, X[0].double().numpy(), int(y[0]), mask, lr=0.01, clip=np.inf)
    assert not np.allclose(raw[0] * conn, W1 * conn) and not np.allclose(raw[2], W2)   # it clips
    eng = tagnet.StackedSGD([model], X, y, lr=0.01, clip=5.0)
    assert eng.fit(torch.tensor([[0]]), progress=False) == 1                        # one clamped step
    got = eng.export()[0]
    np.testing.assert_allclose(got.hidden.dense_weight().detach().numpy(), W1 * conn, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.hidden.bias.detach().numpy(), b1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.out.weight.detach().numpy(), W2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.out.bias.detach().numpy(), b2, rtol=1e-4, atol=1e-4)


def test_accuracies_match_module_forward():
    X, y = data(150)
    models = [tagnet.TagNet(generator=torch.Generator().manual_seed(1)),
              tagnet.TagNet(offset=6, partitioned=False, generator=torch.Generator().manual_seed(2))]
    eng = tagnet.StackedSGD(models, X, y)
    eng.fit(torch.stack([torch.arange(150), torch.arange(150)], 1), progress=False)
    trained = eng.export()
    router = torch.randint(0, 2, (2, 150), generator=torch.Generator().manual_seed(0))
    acc = eng.accuracies(X, y, {"oracle": "tag", "all": "all", "router": router}, chunk=64)
    for i, m in enumerate(trained):
        with torch.no_grad():
            ref = {"oracle": m(X, tags=y % 2), "all": m(X), "router": m(X, tags=router[i])}
        for name, logits in ref.items():
            assert float(acc[name][i]) == float((logits.argmax(-1) == y).float().mean()), name
    assert torch.equal(eng.accuracy(X, y), acc["oracle"])


def test_stacked_routers_match_separate_training():
    g = torch.Generator().manual_seed(1)
    X = torch.rand(400, 784, generator=g) * 0.5
    tags = torch.randint(0, 2, (400,), generator=g)
    X[:, :20] += tags[:, None].float() * 0.5
    idxs = [torch.randperm(400, generator=g)[:256] for _ in range(3)]
    stacked = tagnet.train_routers(X, tags, idxs, seeds=[5, 6, 7], epochs=2, batch=64, lr=0.05)
    for i, s in enumerate((5, 6, 7)):
        ref = tagnet.train_router(X[idxs[i]], tags[idxs[i]], epochs=2, batch=64, lr=0.05, seed=s)
        assert torch.allclose(stacked[i].gate.weight, ref.gate.weight, atol=1e-5)
        assert torch.allclose(stacked[i].gate.bias, ref.gate.bias, atol=1e-5)
    with pytest.raises(ValueError, match="same number"):
        tagnet.train_routers(X, tags, [idxs[0], idxs[1][:10]], seeds=[0, 1])


def test_correct_is_per_image_accuracy():
    X, y = data(90)
    eng = tagnet.StackedSGD([tagnet.TagNet(generator=torch.Generator().manual_seed(s)) for s in (0, 1)], X, y)
    hits = eng.correct(X, y, {"t": "tag", "a": "all"}, chunk=40)
    for i, m in enumerate(eng.export()):
        with torch.no_grad():
            assert torch.equal(hits["t"][i], m(X, tags=y % 2).argmax(-1) == y)
            assert torch.equal(hits["a"][i], m(X).argmax(-1) == y)
