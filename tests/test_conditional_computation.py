"""The conditional-computation chapter's recipe (mpnn.experiments.conditional_computation) against a
naive training loop, seed-by-seed training against the vectorised replicas, and hand-made tables."""
import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mpnn import moe
from mpnn.experiments import conditional_computation as cc
from mpnn.runtime import repro


def _data(n=96, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _replicas(kind, n=3, **kw):
    models = []
    for s in range(n):
        torch.manual_seed(100 + s)
        models.append(moe.make_moe(kind, 6, 5, 3, 4, **kw))
    return models


def _naive_fit(model, x, y, xt, *, epochs, batch_size, lr, seed, log_every):
    """The recipe written out: seeded permutations, Adam on CE + aux, windows of CE and expert load."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    steps = epochs * -(-len(y) // batch_size)
    history, losses, load, step = [], [], None, 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for b in range(0, len(y), batch_size):
            idx = perm[b:b + batch_size]
            logits, routed = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            (loss + routed.aux_loss).backward()
            opt.step()
            step += 1
            losses.append(loss.detach())
            if routed.assignment is not None:
                load = routed.assignment.sum(0) if load is None else load + routed.assignment.sum(0)
            if step % log_every == 0 or step == steps:
                rec = {"step": step, "loss": float(torch.stack(losses).mean())}
                if load is not None:
                    rec["share"] = load / load.sum()
                history.append(rec)
                losses, load = [], None
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(xt[b:b + batch_size])[0].argmax(-1) for b in range(0, len(xt), batch_size)])
    return history, preds


@pytest.mark.parametrize("kind,kw", [("dense", {}), ("switch", {"alpha": 0.1}), ("soft", {"slots_per_expert": 2})])
def test_fit_classifier_is_the_naive_recipe(kind, kw):
    x, y = _data()
    xt, _ = _data(40, seed=1)
    model = _replicas(kind, n=1, **kw)[0]
    reference = copy.deepcopy(model)
    got = cc.fit_classifier(model, (x, y), (xt, torch.zeros(40, dtype=torch.long)), epochs=2, batch_size=20,
                            lr=1e-2, seed=4, log_every=3)
    history, preds = _naive_fit(reference, x, y, xt, epochs=2, batch_size=20, lr=1e-2, seed=4, log_every=3)
    assert [h["step"] for h in got.history] == [3, 6, 9, 10]          # 5 steps per epoch, windows of 3
    assert [h["epoch"] for h in got.history] == [0.6, 1.2, 1.8, 2.0]
    for a, b in zip(got.history, history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert ("share" in a) == ("share" in b) == (kind != "dense")
        if "share" in a:
            assert torch.allclose(a["share"], b["share"], atol=1e-6)
    assert torch.equal(got.predictions, preds)
    assert got.accuracy == pytest.approx(float((preds == 0).float().mean()))
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_fit_classifier_is_deterministic_and_restores_threads():
    x, y = torch.rand(256, 784), torch.randint(0, 10, (256,))
    threads = torch.get_num_threads()
    params = []
    for _ in range(2):
        torch.manual_seed(0)
        model = moe.make_moe("switch", 784, 8, 10, 4, alpha=0.1)
        cc.fit_classifier(model, (x, y), (x, y), epochs=1, batch_size=64, lr=1e-3, seed=3, log_every=2)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("kind,kw", [("dense", {}), ("switch", {"alpha": 0.1}),
                                     ("top2", {"alpha": 0.1, "capacity_factor": 1.0}),
                                     ("expert_choice", {"capacity_factor": 1.0}), ("soft", {"slots_per_expert": 2})])
def test_fit_replicas_equals_fit_classifier_seed_by_seed(kind, kw):
    x, y = _data()
    xt, yt = _data(40, seed=1)
    seeds = [11, 12, 13]
    models = _replicas(kind, **kw)
    loop = [copy.deepcopy(m) for m in models]
    ref = [cc.fit_classifier(m, (x, y), (xt, yt), epochs=2, batch_size=32, lr=1e-2, seed=s, log_every=2)
           for m, s in zip(loop, seeds)]
    got = cc.fit_replicas(models, (x, y), (xt, yt), seeds=seeds, epochs=2, batch_size=32, lr=1e-2, log_every=2)
    for a, b, ma, mb in zip(ref, got, loop, models):
        for p, q in zip(ma.parameters(), mb.parameters()):            # written back into the modules
            assert torch.allclose(p, q, atol=1e-5)
        # two code paths (stacked replicas, one model at a time): an argmax may flip on a near tie
        assert int((a.predictions != b.predictions).sum()) <= 1 and abs(a.accuracy - b.accuracy) <= 1 / 40 + 1e-9
        assert a.dropped == pytest.approx(b.dropped, abs=1e-6)
        assert len(a.history) == len(b.history)
        for ha, hb in zip(a.history, b.history):
            assert ha["step"] == hb["step"] and ha["loss"] == pytest.approx(hb["loss"], rel=1e-5)
            if "share" in ha:
                assert torch.allclose(ha["share"], hb["share"], atol=1e-5)
        if a.assignment is not None:     # hard routing up to a near-tie flip; soft MoE's weights to rounding
            if kind == "soft":
                assert torch.allclose(a.assignment, b.assignment, rtol=0, atol=1e-6)
            else:
                assert int((a.assignment != b.assignment).any(-1).sum()) <= 1
    assert not models[0].training


def test_capacity_drops_are_logged():
    # top-1 with c = 0.5: each expert holds ceil(0.5 * 32 / 4) = 4 of a batch's 32 tokens, so at
    # least 1 - 4 * 4 / 32 = 50% of the assignments are dropped in every step
    x, y = _data()
    result = cc.fit_classifier(_replicas("top1", n=1, capacity_factor=0.5)[0], (x, y), (x, y), epochs=1,
                               batch_size=32, lr=1e-2, seed=0, log_every=10)
    assert 0.5 <= result.dropped < 1.0
    with pytest.raises(ValueError, match="one seed per model"):
        cc.fit_replicas(_replicas("dense", n=2), (x, y), (x, y), seeds=[1], epochs=1)


def test_routing_log_windows_by_hand():
    log = cc.RoutingLog()
    for step in range(7):
        routed = moe.RoutingStats(torch.zeros(()), torch.tensor([[1.0, 0.0], [0.0, 1.0], [float(step), 0.0]]),
                                  torch.tensor(0.1 * step))
        log.record(torch.tensor(float(step)), routed)
    assert log.windows(3) == [(0, 3), (3, 6), (6, 7)]
    history = log.history(3, steps_per_epoch=4)
    assert [h["loss"] for h in history] == [1.0, 4.0, 6.0]              # means of 0-2, 3-5, 6
    assert [h["epoch"] for h in history] == [0.75, 1.5, 1.75]
    # steps 0-2: each step loads (1 + step, 1): expert 0 gets 1 + 2 + 3 = 6, expert 1 gets 3
    assert history[0]["share"].tolist() == pytest.approx([6 / 9, 3 / 9])
    assert float(log.mean_dropped()) == pytest.approx(0.3)


def test_predict_in_groups_stacked_equals_each_replica():
    models = _replicas("expert_choice", capacity_factor=1.0)
    x = _data(50)[0]
    stacked = moe.StackedMoE(models).eval()
    preds, assignment = cc.predict_in_groups(stacked, x, 16)
    for r, m in enumerate(models):
        p, a = cc.predict_in_groups(m.eval(), x, 16)
        assert torch.equal(preds[r], p) and torch.equal(assignment[r], a)
        manual = torch.cat([m(x[b:b + 16])[0].argmax(-1) for b in range(0, 50, 16)])
        assert torch.equal(p, manual)


def test_predictions_in_order_maps_back_to_the_original_index():
    m = _replicas("expert_choice", n=1, capacity_factor=1.0)[0]
    x = _data(40)[0]
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    got = cc.predictions_in_order(m, x, order, 10)
    for b in range(0, 40, 10):
        idx = order[b:b + 10]
        assert torch.equal(got[idx], m(x[idx])[0].argmax(-1))
    dense = _replicas("dense", n=1)[0]                                  # a per-image function: order-free
    assert torch.equal(cc.predictions_in_order(dense, x, order, 10), dense(x)[0].argmax(-1))


def test_prepare_mnist_subsets_and_standardises(monkeypatch):
    images = torch.arange(20 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).view(20, 28, 28)
    labels = torch.arange(20) % 10
    from mpnn.data import mnist
    monkeypatch.setattr(mnist, "load_mnist", lambda split, root=None: (images, labels))
    (x, y), (xt, yt) = cc.prepare_mnist(5, None, seed=3)
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:5]
    assert torch.equal(y, labels[idx]) and x.shape == (5, 784) and len(yt) == 20
    expected = (images[idx].reshape(5, -1).double() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x.double(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="n_train must be in 1..20"):
        cc.prepare_mnist(21, None)


def test_variants_and_paired_differences():
    kind, hidden, kw = cc.variant_spec("top-1 capacity=1.25", hidden=32, n_experts=8, alpha=0.1, soft_slots=16)
    assert (kind, hidden, kw) == ("switch", 32, {"alpha": 0.1, "capacity_factor": 1.25})
    assert cc.variant_spec("dense E·h", hidden=32, n_experts=8, alpha=0.1, soft_slots=16)[1] == 256
    with pytest.raises(ValueError, match="unknown variant"):
        cc.variant_spec("top-3", hidden=32, n_experts=8, alpha=0.1, soft_slots=16)
    study = cc.Study(None, None, [0, 1, 2], hidden=4, n_experts=2, alpha=0.1, soft_slots=1, epochs=1,
                     batch_size=8, lr=1e-3, log_every=1)
    fake = lambda acc: cc.FitResult(acc, [], None, torch.zeros(1), 0.0, 0.0)
    study.results = {("a", 0): fake(0.9), ("a", 1): fake(0.8), ("a", 2): fake(0.7),
                     ("b", 0): fake(0.5), ("b", 2): fake(0.6)}
    assert study.seeds_of("a") == [0, 1, 2]
    assert study.paired("a", "b") == pytest.approx([0.4, 0.1])          # seed 1 has no partner
    assert study.balance_variant(0.1) == "top-1" and study.balance_variant(0.0) == "top-1 alpha=0.0"


def test_capacity_curves_put_dropped_and_accuracy_side_by_side():
    summary = pd.DataFrame({"capacity factor": [1.0, 2.0, float("inf")], "mean": [0.8, 0.9, 0.95],
                            "low": [0.7, 0.85, 0.9], "high": [0.9, 0.95, 1.0], "n": [3, 3, 3],
                            "dropped while training": [0.2, 0.05, 0.0]})
    curves = cc.capacity_curves(summary)
    dropped = curves[curves.quantity == "share of assignments dropped"]
    assert dropped["mean"].tolist() == [0.2, 0.05] and dropped["low"].tolist() == [0.2, 0.05]
    assert curves[curves.quantity != "share of assignments dropped"]["high"].tolist() == [0.9, 0.95]


def test_routing_frame_counts_top_k_reach():
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [0.0, 1.0, 2.0]])
    labels = torch.tensor([7, 7, 1])
    top1 = cc.routing_frame(scores, labels, 7, 1)
    assert top1["share"].tolist() == [0.5, 0.5, 0.0]
    assert cc.routing_frame(scores, labels, 7, 2)["share"].tolist() == [0.5, 1.0, 0.5]
    assert len(cc.routing_overview(scores, labels, ks=(1, 2))) == 10 * 2 * 3


def test_framework_and_gumbel_checks_hold():
    torch.manual_seed(0)
    x = torch.randn(32, 20)
    check = cc.framework_check(x, n_experts=4, hidden=6)
    assert check["same_selection"] and check["straight_through"] and check["framework_gap"] < 1e-5
    z, table = cc.gumbel_max_check(x[:1], n_experts=4, tau=1.0, draws=4000, seed=0)
    assert z < 4.5 and len(table) == 8
    freq = table[table.source != "softmax(s)"]["probability"]
    assert freq.sum() == pytest.approx(1.0)


# ---------------------------------------------------------------- the transformer part

def _vit_setup():
    return cc.ViTSetup(patch=7, dim=8, depth=2, heads=2, n_experts=4, moe_block=1, routed_blocks=(0, 1))


def test_vit_variants_put_moe_layers_where_asked_and_count_their_flops():
    setup = _vit_setup()
    n, d, h, E = 16, 8, 16, 4
    expert = 2 * (d * h + h * d)
    expected = {"dense": n * expert, "top-1": n * (expert + 2 * d * E),
                "expert choice": E * (n // E) * expert + n * 2 * d * E,
                "soft MoE": E * (n // E) * expert + 2 * E * (n // E) * (2 * d + d) * n,
                "layer-wise top-1": 2 * n * (expert + 2 * d * E), "global path": 2 * n * expert + 2 * d * E}
    for v, flops in expected.items():
        m = cc.build_vit(v, setup)
        layers = cc.moe_layers(m)
        assert len(layers) == (2 if v in cc.ROUTING_VARIANTS else 1), v
        assert cc.mlp_mflops(m) == pytest.approx(flops / 1e6), v
    with pytest.raises(ValueError, match="n_experts"):
        cc.ViTSetup(n_experts=3)


def test_global_path_sends_every_token_of_an_image_to_one_expert():
    torch.manual_seed(0)
    m = cc.build_vit("global path", _vit_setup()).eval()
    x = torch.randn(6, 1, 28, 28)
    preds, layers = cc.vit_routing(m, x, batch_size=4)
    assert preds.shape == (6,) and len(layers) == 2
    for a in layers:
        assert a.shape == (6, 16, 4)
        assert torch.equal((a.sum(1) > 0).sum(-1), torch.ones(6, dtype=torch.long))
    assert torch.equal(layers[0], layers[1])
    # agreement of the two layers' experts: identical paths -> 1, independent (a balanced 2x2 design) -> 0
    e0 = torch.nn.functional.one_hot(torch.tensor([[0, 1, 0, 1]]), 4).float()
    e1 = torch.nn.functional.one_hot(torch.tensor([[2, 3, 2, 3]]), 4).float()
    e2 = torch.nn.functional.one_hot(torch.tensor([[0, 0, 1, 1]]), 4).float()
    assert cc.layer_agreement(cc.ViTResult(0.0, torch.zeros(0), [e0, e1], preds, 0.0)) == pytest.approx(1.0)
    assert cc.layer_agreement(cc.ViTResult(0.0, torch.zeros(0), [e0, e2], preds, 0.0)) == pytest.approx(0.0, abs=1e-9)


def test_position_and_digit_frames_are_shares():
    # 2 images of 4 tokens, 2 experts: token j of image 0 on expert j % 2, image 1 all on expert 1
    a0 = torch.tensor([[[1., 0.], [0., 1.], [1., 0.], [0., 1.]], [[0., 1.]] * 4])
    study = cc.ViTStudy(None, (None, torch.tensor([3, 5])), [0], _vit_setup(), 1, 1, 0.0)
    study.results[("top-1", 0)] = cc.ViTResult(1.0, torch.zeros(0), [a0], torch.zeros(2), 0.0)
    pos = cc.position_frame(study, ["top-1"])
    share = pos.pivot_table(index=["row", "column"], columns="expert", values="share")
    assert share.values.tolist() == [[0.5, 0.5], [0.0, 1.0], [0.5, 0.5], [0.0, 1.0]]
    dig = cc.digit_frame(study, ["top-1"]).set_index(["digit", "expert"])["share"]
    assert dig[(3, 0)] == pytest.approx(0.5) and dig[(5, 1)] == pytest.approx(1.0) and dig[(5, 0)] == 0.0


def test_claim_helpers_decide_on_the_interval():
    # t interval of (0.01, 0.02, 0.03): mean 0.02, half-width t_{0.975,2} * 0.01 / sqrt(3) = 0.02484
    text, verdict = cc.diff_claim([0.01, 0.02, 0.03], above=0, refuted_below=0.005)
    assert text == "+2.00 points (95% CI -0.48 to +4.48), n=3; about 4 seeds would decide it (3 measured)"
    assert verdict == "inconclusive"
    assert cc.diff_claim([0.010, 0.011, 0.012], above=0)[1] == "supported"
    assert cc.diff_claim([-0.002, -0.001, 0.0, 0.001], above=0, refuted_below=0.005)[1] == "not supported"
    assert cc.diff_claim([-0.05, -0.04, -0.045], above=-0.02)[1] == "not supported"
    # bounded: the interval never leaves [0, 1], even for values on the bound
    text, verdict = cc.level_claim([0.0, 0.02, 0.05, 0.01], below=0.6)
    low, high = (float(x) for x in text.split("CI ")[1].split(")")[0].split("-"))
    assert 0 <= low <= high <= 1 and verdict == "supported"
    assert cc.level_claim([0.96, 0.97, 0.98], above=0.9)[1] == "supported"
    assert cc.level_claim([2.9, 3.1, 3.3], above=2, bounds=(1, 4))[1] == "supported"
    assert cc.ci_text([0.5, 0.5]) == "0.50 (95% CI 0.50-0.50)"


def test_claim_functions_give_the_arguments_of_run_claim():
    gain = [0.010, 0.012, 0.011]
    mf = pd.Series({"dense h": 0.05, "dense 2h": 0.1, "dense E·h": 0.4, "top-1": 0.06, "top-2": 0.112})
    ent = {0.0: [0.20, 0.25, 0.30], 0.01: [0.50, 0.60, 0.55], 0.1: [0.95, 0.97, 0.96]}
    spec = pd.DataFrame({"variant": ["top-1"] * 3, "nmi": [0.30, 0.32, 0.31]})
    changed = pd.DataFrame({"variant": ["top-1", "top-2", "expert choice c=1", "soft MoE"] * 2,
                            "predictions changed": [0.0, 0.0, 0.10, 0.20, 0.0, 0.0, 0.12, 0.25]})
    layers = pd.DataFrame({"variant": "layer-wise top-1", "layer": [0, 0, 0, 1, 1, 1],
                           "NMI position": [0.30, 0.32, 0.31, 0.02, 0.03, 0.02],
                           "NMI digit": [0.01, 0.02, 0.01, 0.20, 0.22, 0.21]})
    per_seed = pd.DataFrame({"variant": "top-1", "NMI digit": [0.10, 0.12, 0.11], "NMI position": [0.3, 0.3, 0.3],
                             "routing entropy": [0.97, 0.98, 0.99]})
    paths = pd.DataFrame({"variant": "layer-wise top-1", "experts per image": [3.5, 3.6, 3.4],
                          "layer agreement": [0.05, 0.06, 0.04]})
    claims = [cc.claim_mask_framework({"same_selection": True, "framework_gap": 1e-7, "straight_through": True}),
              cc.claim_gumbel_softmax(1.2, 8, 5000), cc.claim_moe_beats_equal_compute(gain, 8, 0.005),
              cc.claim_top1_vs_equal_compute(gain, 8, 0.005), cc.claim_moe_near_big_dense(gain, mf, 0.02),
              cc.claim_top1_near_big_dense(gain, mf, 0.02), cc.claim_collapse_without_balancing(ent, 8),
              cc.claim_balancing_prevents_collapse(ent), cc.claim_switch_alpha_one_layer(ent),
              cc.claim_experts_specialise(spec), cc.claim_batch_dependent_routing(changed, 2),
              cc.claim_vit_one_moe_block({"top-1": gain}, 4, 0.005), cc.claim_vit_moe_every_block(gain, 0.005),
              cc.claim_vit_routing_position_then_digit(layers), cc.claim_vit_top1_routes_by_digit(per_seed),
              cc.claim_vit_load_balanced(per_seed, 0.01), cc.claim_global_vs_layerwise(gain),
              cc.claim_layerwise_routing_differs(paths, 4)]
    run = repro.Run(repro.RunContext(chapter="conditional_computation", profile="default"), torch.device("cpu"))
    recorded = [run.claim(**c) for c in claims]
    assert len({c.id for c in recorded}) == 18
    assert [c.verdict for c in recorded] == ["supported"] * 8 + ["not supported"] + ["supported"] * 9
    assert recorded[4].measured.endswith("at 28% of its active FLOPs") and "(alpha=0: 0.25" in recorded[7].measured
    assert cc.changed_range(changed)[1]["soft MoE"] == 0.25
