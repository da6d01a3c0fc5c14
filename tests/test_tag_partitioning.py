"""mpnn.experiments.tag_partitioning: split, routers (train.fit), mini-batch recipe, tables, explorer."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as st

from mpnn import tagnet
from mpnn.experiments import tag_partitioning as tp
from mpnn.tagnet.stacked_nets import StackedNets

from test_tagnet import data as images


def G(seed):
    return torch.Generator().manual_seed(seed)


def separable(n=400, seed=1):
    """Images whose first 20 pixels reveal a random tag."""
    g = G(seed)
    X = torch.rand(n, 784, generator=g) * 0.5
    tags = torch.randint(0, 2, (n,), generator=g)
    X[:, :20] += tags[:, None].float() * 0.5
    return X, tags, g


def test_split_is_a_permutation_cut_in_two():
    tr, va = tp.split_indices(60000, 48000, seed=5)
    assert len(tr) == 48000 and len(va) == 12000
    assert torch.equal(torch.cat([tr, va]).sort().values, torch.arange(60000))
    assert torch.equal(torch.cat([tr, va]), torch.randperm(60000, generator=G(5)))
    (tr2, va2), = tp.seed_splits([5], 100, 30, "cpu")
    assert torch.equal(tr2, tr[:100]) and torch.equal(va2, va[:30])
    with pytest.raises(ValueError, match="n_train"):
        tp.split_indices(10, 11)


def naive_router(X, tags, seed, *, epochs, batch, lr):
    """One router alone: momentum SGD on its own samples, epoch orders from randperm(seed)."""
    W = (torch.randn(2, X.shape[1], generator=G(seed)) * 0.01).requires_grad_()
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=lr, momentum=0.9)
    order = G(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=order)
        for s in range(0, len(X), batch):
            idx = perm[s:s + batch]
            loss = F.cross_entropy(X[idx] @ W.T + b, tags[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return W.detach(), b.detach()


def test_stacked_routers_match_separate_training():
    X, tags, g = separable()
    idxs = [torch.randperm(400, generator=g)[:256] for _ in range(3)]
    routers = tp.train_routers(X, tags, idxs, seeds=[5, 6, 7], epochs=2, batch=64, lr=0.05)
    for router, idx, s in zip(routers, idxs, (5, 6, 7)):
        W, b = naive_router(X[idx], tags[idx], s, epochs=2, batch=64, lr=0.05)
        assert torch.allclose(router.gate.weight, W, atol=1e-5)
        assert torch.allclose(router.gate.bias, b, atol=1e-5)
    with pytest.raises(ValueError, match="same number"):
        tp.train_routers(X, tags, [idxs[0], idxs[1][:10]], seeds=[0, 1])
    with pytest.raises(ValueError, match="one seed per"):
        tp.train_routers(X, tags, idxs, seeds=[0])


def test_router_learns_a_separable_tag():
    X, tags, _ = separable(300, seed=0)
    router, = tp.train_routers(X, tags, [torch.arange(300)], seeds=[0], epochs=10, lr=0.05)
    assert float((tp.route_by([router], X)[0] == tags).float().mean()) > 0.95


def test_minibatch_sgd_is_clipped_sgd_on_the_summed_loss():
    X, y = images(100)
    model = tagnet.TagNet(generator=G(0))
    ref = tagnet.TagNet(generator=G(0))
    tp.minibatch_sgd(model, X, y, batch=32, lr=0.01, clip=0.5, seed=3)
    params = list(ref.parameters())
    perm = torch.randperm(100, generator=G(3))
    for s in range(0, 100, 32):
        idx = perm[s:s + 32]
        loss = F.cross_entropy(ref(X[idx], tags=y[idx] % 2), y[idx], reduction="sum")
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(0.01 * (g.clamp(-0.5, 0.5) if p.dim() > 1 else g))
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert all(not p._backward_hooks for p in model.parameters())     # the clamp hooks are gone


def test_field_of_view_counts_the_window_taps():
    X, _ = images(50)
    view, n_seen, share = tp.field_of_view(X)
    assert n_seen == 18 * 18                                     # rows and columns 0-17
    seen = view[view["neurons seeing the pixel"] > 0]
    cols = seen.groupby("partition").col.agg(["min", "max"])
    assert cols.loc["tag 0 (even) partition"].tolist() == [0, 9]
    assert cols.loc["tag 1 (odd) partition"].tolist() == [6, 17]
    # every neuron of a half contributes its valid taps: 128 neurons x 25 taps minus those off the image
    layer = tagnet.TagNet().hidden
    for part, units in zip(("tag 0 (even) partition", "tag 1 (odd) partition"), tagnet.partition_groups().values()):
        assert view[view.partition == part]["neurons seeing the pixel"].sum() == int(layer.valid[units].sum())
    ink = X[:50].mean(0).view(28, 28)
    assert share == pytest.approx(float(ink[:18, :18].sum() / ink.sum()), rel=1e-5)


def test_local_networks_follow_the_variants():
    models, meta = tp.local_networks([11, 12, 13], n_seeds=3, variant_seeds=2)
    assert len(models) == 3 + 2 * (len(tp.VARIANTS) - 1)
    assert tp.models_of(meta, tp.FAITHFUL) == [0, 1, 2]
    centred = tp.models_of(meta, tp.CENTRED)
    assert [meta[m]["seed"] for m in centred] == [0, 1]
    assert torch.equal(models[centred[1]].hidden.index, tagnet.TagNet(offset=6).hidden.index)
    same_seed = tagnet.TagNet(generator=G(12))
    assert torch.equal(models[1].hidden.weight, same_seed.hidden.weight)


def test_even_digit_curve_records_accuracy_on_even_validation_digits():
    X, Y = images(200)
    splits = [(torch.arange(100), torch.arange(100, 200))]
    models, meta = tp.local_networks([1], n_seeds=1, variant_seeds=1)
    nets = StackedNets(models)
    curve = tp.EvenDigitCurve(nets, X, Y, splits, meta, n_curve=60, n_train=100)
    curve(50)
    assert len(curve.rows) == len(tp.CURVE_VARIANTS)
    idx = torch.arange(100, 160)
    idx = idx[Y[idx] % 2 == 0]
    m = tp.models_of(meta, "no partition, blocked")[0]
    with torch.no_grad():
        expected = float((models[m](X[idx], tags=Y[idx] % 2).argmax(-1) == Y[idx]).float().mean())
    row = next(r for r in curve.rows if r["variant"] == "no partition, blocked")
    assert row["accuracy"] == pytest.approx(expected) and row["epoch"] == 0.5


def test_faithful_table_against_hand_computation():
    accs = {"train": [0.80, 0.82, 0.84], "validation": [0.81, 0.83, 0.85], "test": [0.835, 0.836, 0.84]}
    results = pd.DataFrame([{"variant": tp.FAITHFUL, "routing": tp.ORACLE, "split": s, "seed": i, "accuracy": a}
                            for s, vals in accs.items() for i, a in enumerate(vals)]
                           + [{"variant": "other", "routing": tp.ORACLE, "split": "test", "seed": 0, "accuracy": 0.1}])
    table, test = tp.faithful_table(results)
    t = table.set_index("split")
    vals = np.array(accs["train"]) * 100
    # the interval of an accuracy: Student t on the logit scale, mapped back (bounded by 0 and 100)
    z = np.log(vals / (100 - vals))
    half_z = st.t.ppf(0.975, 2) * z.std(ddof=1) / np.sqrt(3)
    lo, hi = (100 / (1 + np.exp(-(z.mean() + s * half_z))) for s in (-1, 1))
    assert t.loc["train", "this book, mean"] == round(82.0, 2)
    assert t.loc["train", "CI half-width (pp)"] == round((hi - lo) / 2, 2)
    assert t.loc["train", "95% CI"] == f"{lo:.2f}-{hi:.2f}"
    assert t.loc["train", "difference (pp)"] == round(82.0 - 83.65, 2)
    assert bool(t.loc["train", "document inside the CI"]) == (lo <= 83.65 <= hi)
    assert np.allclose(test, [83.5, 83.6, 84.0])


def test_forgetting_measures_the_last_odd_block():
    Y = torch.tensor([0, 2, 4, 1, 3, 5, 7, 9, 6, 8])
    train_idx = torch.arange(8)                    # 3 even, 5 odd: the last odd block starts at 8 + 3
    rows = [{"variant": v, "seed": s, "step": step, "accuracy": acc + s * 0.01}
            for v in tp.CURVE_VARIANTS for s in (0, 1)
            for step, acc in ((0, 0.1), (10, 0.9), (12, 0.7), (16, 0.4))]
    end_even, drop, checkpoint = tp.forgetting(pd.DataFrame(rows), Y, train_idx, epochs=2, n_train=8)
    assert checkpoint == 10
    assert end_even[tp.FAITHFUL] == pytest.approx([0.4, 0.41])
    assert drop[tp.FAITHFUL] == pytest.approx([0.5, 0.5])
    blocks = tp.odd_blocks(Y, train_idx, epochs=2, n_train=8)
    assert blocks.start.tolist() == [3 / 8, 1 + 3 / 8] and blocks.end.tolist() == [1.0, 2.0]


def test_confusion_per_tag_pools_the_seeds():
    X, Y = images(80)
    models = [tagnet.TagNet(generator=G(s)) for s in (1, 2)]
    conf, own, cross = tp.confusion_per_tag(StackedNets(models), [0, 1], X, Y)
    with torch.no_grad():
        preds = [m(X, tags=Y % 2).argmax(-1) for m in models]
        other = [m(X, tags=1 - Y % 2).argmax(-1) for m in models]
    for t in (0, 1, 6):
        counts = sum(torch.bincount(p[Y == t], minlength=10) for p in preds).float()
        got = conf[conf["true digit"] == t].sort_values("predicted digit").share.to_numpy()
        assert np.allclose(got, (counts / counts.sum().clamp_min(1)).numpy())
    assert torch.allclose(own, torch.stack([(p == Y).float().mean() for p in preds]))
    assert torch.allclose(cross, torch.stack([(p == Y).float().mean() for p in other]))


def test_gate_split_and_activation_maps():
    X, Y = images(90)
    moe = tagnet.TwoExpertMoE(generator=G(4))
    share, agree, load = tp.gate_split(StackedNets([moe]), X, Y)
    expert = moe.expert(X)
    assert load[0] == pytest.approx(float((expert == 1).float().mean()))
    parity_agreement = float((expert == Y % 2).float().mean())
    assert agree[0] == pytest.approx(max(parity_agreement, 1 - parity_agreement))
    assert share[share.digit == 3]["share to expert 1"].item() == pytest.approx(float((expert[Y == 3] == 1).float().mean()))
    net = tagnet.TagNet(generator=G(1))
    maps = tp.activation_maps(StackedNets([net]), 0, X, Y)
    with torch.no_grad():
        a = net.activations(X[Y == 5]) * net.switch.table[1]
    five = maps[maps.digit == 5]
    assert np.allclose(five.activation.to_numpy(), a.mean(0).numpy(), atol=1e-6)
    assert five[(five.x == 3) & (five.y == 2)].activation.item() == pytest.approx(float(a.mean(0)[2 * 16 + 3]), abs=1e-6)


def test_explorer_picks_and_describes_images():
    X, Y = images(60)
    net, moe = tagnet.TagNet(generator=G(1)), tagnet.TwoExpertMoE(generator=G(2))
    router, = tp.train_routers(X, Y % 2, [torch.arange(60)], seeds=[0], epochs=1)
    ex = tp.DigitExplorer(X, Y, net, router, moe)
    sevens = (Y == 7).nonzero().flatten()
    assert ex.image_of(1, 7) == int(sevens[1]) and ex.image_of(len(sevens), 7) == int(sevens[0])
    assert ex.image_of(5, -1) == 5
    info = ex.describe(int(sevens[0]))
    with torch.no_grad():
        assert info["prediction (true tag)"] == int(net(X[sevens[:1]], tags=torch.tensor([1])).argmax())
    assert info["true tag"] == 1 and info["MoE expert"] == int(moe.expert(X[sevens[:1]]))
    html = ex.render(index=0, digit=7, hidden_map="router")
    assert "<img" in html and "<svg" in html and "<table" in html
    assert ex.first_of_each_digit().count("<tr") == 1 + len(Y.unique())


def test_per_seed_within_and_paired_gain():
    rows = [{"variant": v, "routing": tp.ORACLE, "split": "test", "seed": s, "accuracy": a}
            for v, accs in ((tp.FAITHFUL, (0.84, 0.83, 0.85)), (tp.CENTRED, (0.90, 0.91, 0.89)))
            for s, a in reversed(list(enumerate(accs)))]
    results = pd.DataFrame(rows)
    assert np.allclose(tp.per_seed(results, tp.FAITHFUL), [84.0, 83.0, 85.0])         # ordered by seed
    faithful = tp.per_seed(results, tp.FAITHFUL)
    assert tp.within(faithful, 84.0, 5.0) == "supported"          # interval inside 79-89
    assert tp.within(faithful, 95.0, 2.0) == "not supported"      # interval wholly below 93
    assert tp.within(faithful, 84.0, 0.5) == "inconclusive"       # interval wider than the band
    verdict, txt, d = tp.gain(tp.per_seed(results, tp.CENTRED), faithful, above=0)
    assert np.allclose(d, [6.0, 8.0, 4.0]) and verdict == "supported" and "6.00 pp" in txt
    assert tp.gain(faithful, tp.per_seed(results, tp.CENTRED), above=0)[0] == "not supported"
    assert tp.gain([1.0, 2.0, 0.0], [0.5, 0.5, 0.5], above=0)[0] == "inconclusive"
    assert "seeds would decide it" in tp.decide_note(np.array([0.5, 1.5, -0.5, 1.0]), 0.0)


def test_claims_are_the_arguments_of_run_claim():
    import inspect

    from mpnn.runtime.repro import Run
    accs = {tp.FAITHFUL: (0.837, 0.836, 0.838), tp.CENTRED: (0.90, 0.91, 0.89),
            "no partition, interleaved": (0.86, 0.85, 0.87)}
    rows = [{"variant": v, "routing": r, "split": "test", "seed": s,
             "accuracy": a - (0.05 + 0.01 * s if r != tp.ORACLE else 0)}    # the router costs 5-7 pp
            for v, vals in accs.items() for r in (tp.ORACLE, "learned parity router", "all neurons active")
            for s, a in enumerate(vals)]
    rows += [{"variant": tp.FAITHFUL, "routing": tp.ORACLE, "split": split, "seed": s, "accuracy": a}
             for split, vals in (("train", (0.83, 0.84, 0.84)), ("validation", (0.82, 0.83, 0.82)))
             for s, a in enumerate(vals)]
    results = pd.DataFrame(rows)
    own, cross = torch.tensor([0.95, 0.94, 0.96]), torch.tensor([0.20, 0.25, 0.22])
    end_even = {tp.FAITHFUL: [0.8, 0.82, 0.81], "no partition, blocked": [0.6, 0.65, 0.62]}
    claims = [tp.claim_faithful_test_accuracy(results, 2.0), tp.claim_faithful_train_validation(results, 2.0),
              tp.claim_pathways_specialise(own, cross), tp.claim_label_leak(results, torch.tensor([0.9, 0.91, 0.92])),
              tp.claim_no_partition_baseline(results), tp.claim_window_centred(results, 324, 0.8),
              tp.claim_shared_output_interference(end_even),
              tp.claim_learned_gate_parity([0.6, 0.55, 0.62], [0.5, 0.4, 0.45], extra_epochs=2, epochs=10)]
    keys = set(inspect.signature(Run.claim).parameters) - {"self"}
    assert all(set(c) <= keys and {"id", "kind", "document", "criterion", "measured", "verdict", "expected"} <= set(c)
               for c in claims)
    decide = lambda v: v() if callable(v) else v
    got = {c["id"]: decide(c["verdict"]) for c in claims}
    assert got["faithful-test-accuracy"] == "supported" and got["pathways-specialise"] == "supported"
    assert got["label-leak"] == "mixed" and got["no-partition-baseline"] == "supported"
    assert got["window-centred"] == "supported" and got["shared-output-interference"] == "supported"
    assert got["learned-gate-parity"] == "not supported"
    assert "difference from the reported value +0.01 pp" in claims[0]["measured"]()
