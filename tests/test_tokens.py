"""Token selection and merging: the mechanism (hand-computed cases, naive references, FLOPs by hand) and the
chapter's experiment (the training recipe against a hand-written loop, its schedules in closed form, the
seed sweep, the patch maps against naive loops, timing bookkeeping)."""
import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mpnn.experiments import token_selection as ex
from mpnn.tokens import (Attention, TokenViT, ViTConfig, bipartite_soft_matching, evaluate_settings, keep_count,
                         merge_wavg, parse_setting, patchify, select_mask, token_schedule, vit_flops)

SMALL = ViTConfig(patch=7, dim=8, depth=2, heads=2, mlp_ratio=2.0, select_after=1, scorer_hidden=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TokenViT(ViTConfig(patch=4, dim=16, depth=3, heads=2, select_after=1, scorer_hidden=8)).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def test_patchify_hand_case():
    img = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 28, 28)
    p = patchify(img, 7)
    assert p.shape == (1, 16, 49)
    assert torch.equal(p[0, 0], img[0, :7, :7].flatten())
    assert torch.equal(p[0, 5], img[0, 7:14, 7:14].flatten())   # row 1, column 1 of the 4x4 grid
    assert torch.equal(p[0, 3], img[0, 0:7, 21:28].flatten())


def test_keep_count():
    assert [keep_count(49, r) for r in (1.0, 0.5, 0.25, 0.01)] == [49, 25, 12, 1]
    with pytest.raises(ValueError, match="rho"):
        keep_count(49, 0.0)


def test_select_mask_keeps_topk_with_softmax_gradient():
    s = torch.tensor([[0.1, 2.0, -1.0, 1.5, 0.3]], requires_grad=True)
    m = select_mask(s, 2, gumbel=False)
    assert m.tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0]]
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0]])
    (m * w).sum().backward()
    s2 = s.detach().clone().requires_grad_(True)
    (torch.softmax(s2, -1) * w).sum().backward()
    assert torch.allclose(s.grad, s2.grad)   # straight-through: gradient of the soft distribution
    # with Gumbel noise: still exactly k ones per row
    mg = select_mask(torch.randn(4, 49), 12, gumbel=True)
    hard = (mg > 0.5).float()   # hard + soft - sg(soft) equals hard up to rounding
    assert torch.allclose(mg, hard, atol=1e-6) and torch.equal(hard.sum(-1), torch.full((4,), 12.0))


def test_tome_hand_case():
    # tokens t0..t3; A = {t0, t2}, B = {t1, t3}. t0 is nearly parallel to t1, t2 is orthogonal to both.
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]]])
    merge = bipartite_soft_matching(x, r=1)
    y, size = merge_wavg(merge, x, torch.ones(1, 4, 1))
    expected = torch.tensor([[[0.0, 1.0], [1.0, 0.05], [-1.0, 0.0]]])  # [t2, (t0+t1)/2, t3]
    assert torch.allclose(y, expected)
    assert size.flatten().tolist() == [1.0, 2.0, 1.0]
    # merging the result again with sizes: the size-weighted mean of all three of t0, t1 and t2's partner
    y2, size2 = merge_wavg(bipartite_soft_matching(y, r=1), y, size)
    # A = {t2, t3'}; here A = [t2, t3] at positions 0, 2; B = [(t0+t1)/2]; t3 is more similar? cos(t3,B)<0
    # so t2 (cos ~0.05) merges into B: (1*t2 + 2*B)/3
    assert torch.allclose(y2[0, -1], (expected[0, 0] + 2 * expected[0, 1]) / 3)
    assert size2[0, -1].item() == 3.0


def _naive_tome(x, metric, size, r):
    """One sample at a time, with Python loops."""
    out_x, out_s = [], []
    for b in range(x.shape[0]):
        n = x.shape[1]
        A, Bset = list(range(0, n, 2)), list(range(1, n, 2))
        cos = lambda i, j, b=b: float(torch.nn.functional.cosine_similarity(metric[b, i], metric[b, j], dim=0))
        best = {}
        for i in A:
            sims = [cos(i, j) for j in Bset]
            jbest = max(range(len(Bset)), key=lambda t: (sims[t], -t))
            best[i] = (sims[jbest], Bset[jbest])
        order = sorted(A, key=lambda i: -best[i][0])
        rr = min(r, n // 2)
        merged, keep = order[:rr], order[rr:]
        bx = {j: x[b, j] * size[b, j] for j in Bset}
        bs = {j: size[b, j].clone() for j in Bset}
        for i in merged:
            j = best[i][1]
            bx[j] = bx[j] + x[b, i] * size[b, i]
            bs[j] = bs[j] + size[b, i]
        xs = [x[b, i] for i in keep] + [bx[j] / bs[j] for j in Bset]
        ss = [size[b, i] for i in keep] + [bs[j] for j in Bset]
        out_x.append(torch.stack(xs))
        out_s.append(torch.stack(ss))
    return torch.stack(out_x), torch.stack(out_s)


@pytest.mark.parametrize("n,r", [(7, 2), (8, 3), (9, 4), (6, 10)])
def test_tome_matches_naive(n, r):
    g = torch.Generator().manual_seed(n * 10 + r)
    x = torch.randn(3, n, 5, generator=g)
    metric = torch.randn(3, n, 4, generator=g)
    size = torch.randint(1, 4, (3, n, 1), generator=g).float()
    # the orderings (best match, merge order) are far from ties compared with float error
    mn = metric / metric.norm(dim=-1, keepdim=True)
    sim = mn[:, ::2] @ mn[:, 1::2].transpose(-1, -2)
    best = sim.max(-1).values.sort(-1).values
    assert float((best[:, 1:] - best[:, :-1]).min()) > 1e-4
    if sim.shape[-1] > 1:
        top2 = sim.topk(2, -1).values
        assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-4
    y, s = merge_wavg(bipartite_soft_matching(metric, r), x, size)
    yn, sn = _naive_tome(x, metric, size, r)
    assert y.shape == (3, n - min(r, n // 2), 5)
    assert torch.allclose(y, yn, atol=1e-6) and torch.equal(s, sn)


def test_proportional_attention_equals_duplicated_tokens():
    torch.manual_seed(0)
    att = Attention(8, 2)
    x = torch.randn(1, 3, 8)
    dup = torch.cat([x, x[:, 2:3]], dim=1)          # token 2 twice
    out_dup, _ = att(dup)
    out_size, _ = att(x, size=torch.tensor([[[1.0], [1.0], [2.0]]]))
    assert torch.allclose(out_dup[:, :3], out_size, atol=1e-6)


def test_masked_forward_equals_gathered_and_keeps_topk(model, x):
    for rho in (0.25, 0.5, 0.9):
        a = model(x, rho=rho, how="mask")
        b, info = model(x, rho=rho, how="gather", return_info=True)
        assert torch.allclose(a, b, atol=1e-5)
        k = keep_count(49, rho)
        with torch.no_grad():  # the scorer's top-k after block 0, recomputed by hand
            h = model.embed(patchify(x, 4)) + model.pos
            h = model.blocks[0](h)[0]
            scores = model.scorer(h).squeeze(-1)
            top = scores.topk(k, dim=-1).indices.sort(-1).values
        ranked = scores.sort(-1, descending=True).values  # the k-th and (k+1)-th scores are not (nearly) tied
        assert float((ranked[:, k - 1] - ranked[:, k]).min()) > 1e-4
        assert torch.equal(info.kept, top)
        assert info.tokens == [49, k, k]


def test_merging_bookkeeping(model, x):
    assert torch.allclose(model(x, r=0), model(x))
    logits, info = model(x, r=5, return_info=True)
    assert info.tokens == token_schedule(model.config, r=5) == [49, 44, 39]
    assert info.source.shape == (6, 34, 49)
    assert torch.equal(info.source.sum(1), torch.ones(6, 49))   # every patch in exactly one final token
    _, info2 = model(x, rho=0.5, r=3, return_info=True)
    assert info2.tokens == [49, 25, 22]


def test_gradient_reaches_scorer_only_through_the_mask(model, x):
    m = TokenViT(model.config)
    m.load_state_dict(model.state_dict())
    m.train()
    m(x, rho=0.5).sum().backward()
    assert m.scorer[-1].weight.grad.abs().sum() > 0
    m.zero_grad()
    m(x, rho=1.0).sum().backward()
    assert m.scorer[-1].weight.grad is None or m.scorer[-1].weight.grad.abs().sum() == 0


def test_flops_hand_counted():
    # N = 16 tokens of 49 pixels, d = 8, MLP 16, 2 blocks, scorer hidden 4, 10 classes
    embed, head = 2 * 16 * 49 * 8, 2 * 8 * 10
    block16 = 2 * 16 * 8 * 24 + 4 * 256 * 8 + 2 * 16 * 64 + 4 * 16 * 8 * 16
    assert vit_flops(SMALL) == embed + head + 2 * block16 == 61856
    block8 = 2 * 8 * 8 * 24 + 4 * 64 * 8 + 2 * 8 * 64 + 4 * 8 * 8 * 16
    scorer = 2 * 16 * (8 * 4 + 4)
    assert vit_flops(SMALL, rho=0.5) == embed + head + block16 + scorer + block8 == 48672
    # ToMe r = 3: block 1 has 16 tokens -> 13 after attention; block 2: 13 -> 10
    b1 = 2 * 16 * 8 * 24 + 4 * 256 * 8 + 2 * 16 * 64 + 2 * 8 * 8 * 4 + 4 * 13 * 8 * 16
    b2 = 2 * 13 * 8 * 24 + 4 * 169 * 8 + 2 * 13 * 64 + 2 * 7 * 6 * 4 + 4 * 10 * 8 * 16
    assert vit_flops(SMALL, r=3) == embed + head + b1 + b2 == 53776


def test_bad_inputs(model, x):
    with pytest.raises(ValueError, match="divide 28"):
        ViTConfig(patch=5)
    with pytest.raises(ValueError, match="how"):
        model(x, how="drop")
    with pytest.raises(ValueError, match="merging"):
        model(x, rho=0.5, r=2, how="mask")
    with pytest.raises(ValueError, match="r "):
        model(x, r=-1)


def test_select_mask_noise_scale_is_sigma_times_gumbel():
    # noise=sigma keeps the top-k of s + sigma * g, with g drawn exactly as mpnn.switch.gumbel_softmax draws it
    s = torch.randn(3, 10, generator=torch.Generator().manual_seed(1), requires_grad=True)
    sigma, tau, k = 0.3, 0.7, 4
    torch.manual_seed(5)
    m = select_mask(s, k, tau=tau, noise=sigma)
    torch.manual_seed(5)
    u = torch.rand(3, 10)
    g = -torch.log(-torch.log(u))
    z = s.detach() + sigma * g
    expected = torch.zeros(3, 10).scatter_(1, z.topk(k, dim=-1).indices, 1.0)
    assert torch.allclose(m, expected, atol=1e-6)
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(2))
    (m * w).sum().backward()
    s2 = s.detach().clone().requires_grad_(True)
    (torch.softmax((s2 + sigma * g) / tau, -1) * w).sum().backward()
    assert torch.allclose(s.grad, s2.grad, atol=1e-6)
    # noise 0: the plain top-k of the scores, whatever the generator state
    m0 = select_mask(s.detach(), k, noise=0.0)
    assert torch.allclose(m0, torch.zeros(3, 10).scatter_(1, s.detach().topk(k, dim=-1).indices, 1.0), atol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        select_mask(s, k, noise=-1.0)


def test_prefix_then_from_prefix_equals_forward(model, x):
    with torch.no_grad():
        h = model.prefix(x)
        for rho in (1.0, 0.5, 0.25):
            assert torch.allclose(model.from_prefix(h, rho=rho), model(x, rho=rho, how="gather"), atol=1e-6)
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert torch.allclose(model.from_prefix(h, rho=0.5, selector="random", generator=g1),
                              model(x, rho=0.5, selector="random", generator=g2), atol=1e-6)


def test_evaluate_settings_matches_one_setting_at_a_time(model):
    xs = torch.randn(25, 1, 28, 28, generator=torch.Generator().manual_seed(8))
    ys = torch.arange(25) % 10
    settings = [dict(rho=1.0), dict(rho=0.5), dict(rho=0.25, selector="random"), dict(r=3), dict(rho=0.5, r=2)]
    got = evaluate_settings(model, xs, ys, settings, batch_size=10, seed=7)
    for j, kw in enumerate(settings):  # reference: plain forward passes, each setting on its own
        gen = torch.Generator().manual_seed(7 + j)
        with torch.no_grad():
            pred = torch.cat([model(xb, how="gather", generator=gen, **kw).argmax(-1) for xb in xs.split(10)])
        assert got[j] == pytest.approx((pred == ys).float().mean().item())
    with pytest.raises(ValueError, match="setting"):
        evaluate_settings(model, xs, ys, [dict(rho=0.5, tau=2.0)])
    assert parse_setting({}) == (1.0, 0, "learned") and parse_setting(dict(rho=0.25, r=2)) == (0.25, 2, "learned")


# ---------------------------------------------------------------- the chapter's experiment

def test_train_schedule_full_tokens_then_annealed_noise():
    torch.manual_seed(0)
    model = TokenViT(SMALL)
    calls = []
    forward = model.forward

    def spy(x, **kw):
        calls.append((kw["rho"], kw["noise"]))
        return forward(x, **kw)

    model.forward = spy
    images = torch.randn(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10
    # 40 images, batch 4 -> 10 steps; the first 4 on all tokens, then rho cycles and noise goes 1 -> 0
    ex.train(model, images, labels, epochs=1, batch_size=4, lr=1e-3, train_rhos=(1.0, 0.5), noise=(1.0, 0.0),
             full_tokens_fraction=0.4)
    assert [c[0] for c in calls] == [1.0] * 4 + [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]
    assert [round(c[1], 6) for c in calls[4:]] == [round(1 - i / 5, 6) for i in range(6)]
    with pytest.raises(ValueError, match="full_tokens_fraction"):
        ex.train(model, images, labels, epochs=1, batch_size=4, lr=1e-3, full_tokens_fraction=1.0)
    with pytest.raises(ValueError, match="noise"):
        ex.selection_schedule(10, (1.0,), (1.0, -0.5), 0.0)


def test_warmup_cosine_closed_form():
    f = ex.warmup_cosine(40)                    # warm-up over 40 // 20 = 2 steps
    assert f(0) == pytest.approx(0.5 * 0.5 * 2)  # (0 + 1) / 2 of the way up, cos(0) = 1
    assert f(1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 40)))
    assert f(20) == pytest.approx(0.5) and f(40) == pytest.approx(0.0) and f(45) == pytest.approx(0.0)
    assert ex.warmup_cosine(10)(0) == pytest.approx(1.0)   # fewer than 20 steps: one warm-up step


def test_training_matches_a_hand_written_loop():
    # reference: the warm-up + cosine factor and the (rho, noise) plan written out step by step (with torch's fused
    # AdamW as the recipe uses it: the unfused kernel differs in the last bits, which Adam amplifies to ~lr on
    # parameters whose gradient is close to 0)
    torch.manual_seed(0)
    model = TokenViT(SMALL)
    ref = copy.deepcopy(model)
    images = torch.randn(30, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(30) % 10
    torch.manual_seed(9)                        # the Gumbel noise comes from the global generator
    history = ex.train(model, images, labels, epochs=2, batch_size=8, lr=3e-3, train_rhos=(1.0, 0.5), tau=0.8,
                       noise=(1.0, 0.2), full_tokens_fraction=0.25, seed=4)
    total, warm, n_full = 8, 1, 2
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.05, fused=True)
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(9)
    ref.train()
    losses, step = [], 0
    for _ in range(2):
        for b in torch.randperm(30, generator=g).split(8):
            rho = 1.0 if step < n_full else (1.0, 0.5)[step % 2]
            noise = 1.0 if step < n_full else 1.0 - 0.8 * (step - n_full) / (total - n_full - 1)
            for group in opt.param_groups:
                group["lr"] = 3e-3 * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(ref(images[b], rho=rho, tau=0.8, noise=noise), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
    assert history.loss.tolist() == pytest.approx(losses, rel=1e-4, abs=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_settings_and_flops_table():
    settings = ex.inference_settings([1.0, 0.5], [0, 2], rho_claim=0.5)
    assert settings == [(ex.SELECTION, dict(rho=1.0)), (ex.SELECTION, dict(rho=0.5)),
                        (ex.RANDOM, dict(rho=0.5, selector="random")), (ex.MERGING, dict(r=2))]
    assert ex.timed_settings(settings) == [dict(rho=0.5), dict(r=2)]
    table = ex.flops_table(SMALL, settings)
    assert table["relative FLOPs"].tolist() == pytest.approx([1.0, 48672 / 61856, vit_flops(SMALL, r=2) / 61856])
    assert table["tokens per block"].tolist()[1] == [16, 8]
    with pytest.raises(ValueError, match="rho_claim"):
        ex.inference_settings([1.0, 0.5], [0, 2], rho_claim=0.25)


def _hand_sweep():
    return pd.DataFrame([{"seed": s, "method": m, "rho": rho, "r": r, "accuracy": acc, "relative FLOPs": fl,
                          "predicted speed-up": 1 / fl}
                         for s, base in ((1, 0.90), (2, 0.94))
                         for m, rho, r, acc, fl in ((ex.SELECTION, 1.0, 0, base, 1.0), (ex.SELECTION, 0.5, 0, base - 0.01, 0.6),
                                                    (ex.RANDOM, 0.5, 0, base - 0.2, 0.6), (ex.MERGING, 1.0, 2, base - 0.02, 0.8))])


def test_per_seed_verdict_and_explorer_view():
    sweep = _hand_sweep()
    assert ex.per_seed(sweep, ex.SELECTION, rho=0.5).to_dict() == pytest.approx({1: 0.89, 2: 0.93})
    assert ex.drop_within_margin(pd.Series([0.004, 0.005, 0.006]), 0.01)[0] == "supported"
    assert ex.drop_within_margin(pd.Series([0.019, 0.02, 0.021]), 0.01)[0] == "not supported"
    verdict, text = ex.drop_within_margin(pd.Series([0.001, 0.03]), 0.01)
    assert verdict == "inconclusive" and "per seed 0.10 to 3.00" in text and "seeds would decide" in text
    speed = ex.speedup_table(pd.DataFrame({"rho": [0.5, 1.0], "r": [0, 2], "measured speed-up": [1.2, 0.6],
                                           "predicted speed-up": [1.5, 1.2]}))
    assert speed["method"].tolist() == [ex.SELECTION, ex.MERGING]
    assert speed["measured / predicted"].tolist() == pytest.approx([0.8, 0.5])
    table = ex.setting_table(sweep, speed)
    html = ex.setting_summary(table, 0.5, 2)
    lines = html.split("<br>")
    assert len(lines) == 3 and "accuracy 0.9100" in lines[0] and "measured speed-up 1.20x" in lines[0]
    assert "accuracy 0.7200" in lines[1] and "measured" not in lines[1]      # random: not timed
    assert lines[2].startswith("ToMe, r=2") and "measured speed-up 0.60x" in lines[2]
    assert ex.setting_summary(table, 0.25, 5) == ""
    pareto = ex.pareto_table(sweep)
    assert set(pareto["method"]) == {ex.SELECTION, ex.MERGING}
    assert pareto[pareto["relative FLOPs"] == 0.6]["mean"].item() == pytest.approx(0.91)


def test_patch_maps_against_naive_loops(model, x):
    values = torch.arange(2 * 49, dtype=torch.float32).reshape(2, 49)
    img = ex.patch_map(values, 4)
    for b, i, j in [(0, 0, 0), (0, 5, 27), (1, 27, 3), (1, 13, 14)]:
        assert img[b, i, j] == values[b, (i // 4) * 7 + j // 4]
    digits = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = ex.kept_patch_rows(model, x, digits, [0.5])
    _, info = model(x, rho=0.5, return_info=True)
    ink = digits.float() / 255
    assert torch.equal(rows[:6], ink) and rows.max() <= 1.0
    for b in range(6):
        kept = set(info.kept[b].tolist())
        for p in range(49):
            i, j = 4 * (p // 7), 4 * (p % 7)
            factor, tint = (1.0, 0.12) if p in kept else (0.15, 0.0)
            expected = (ink[b, i:i + 4, j:j + 4] * factor + tint).clamp(max=1.0)
            assert torch.allclose(rows[6 + b, i:i + 4, j:j + 4], expected, atol=1e-6)
    freq = ex.keep_frequency(model, x, 0.25, batch_size=4)
    naive = torch.zeros(49)
    for b in range(6):
        _, one = model(x[b:b + 1], rho=0.25, return_info=True)
        naive[one.kept[0]] += 1 / 6
    assert torch.allclose(torch.tensor(freq["kept"].values), naive, atol=1e-6)
    assert freq[(freq.row == 2) & (freq.column == 3)]["kept"].item() == pytest.approx(float(naive[2 * 7 + 3]))


def test_merged_size_map_against_naive_loop(model, x):
    size_map = ex.merged_size_map(model, x, r=5)
    _, info = model(x, r=5, return_info=True)
    sizes = torch.zeros(6, 49)
    for b in range(6):
        for t in range(info.source.shape[1]):
            members = info.source[b, t].nonzero().flatten()
            sizes[b, members] = len(members)
    expected = ex.patch_map(sizes / sizes.max(), 4)
    assert torch.allclose(size_map, expected, atol=1e-6)


def test_run_seeds_reproduces_training_and_evaluation():
    g = torch.Generator().manual_seed(0)
    data = ex.Splits(torch.randn(48, 1, 28, 28, generator=g), torch.arange(48) % 10,
                     torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 10, torch.zeros(20, 28, 28))
    settings = ex.inference_settings([1.0, 0.5], [0, 2], rho_claim=0.5)
    runs = ex.run_seeds(data, SMALL, [3, 4], settings, epochs=1, batch_size=16, lr=1e-3, train_rhos=(1.0, 0.5),
                        full_tokens_fraction=0.3, noise=(1.0, 0.0), device="cpu")
    assert len(runs.sweep) == 2 * len(settings)
    from mpnn.infra import determinism
    determinism.seed_everything(4)
    again = TokenViT(SMALL)
    ex.train(again, data.X, data.Y, epochs=1, batch_size=16, lr=1e-3, train_rhos=(1.0, 0.5),
             full_tokens_fraction=0.3, noise=(1.0, 0.0), seed=4)
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), runs.models[1].parameters()))
    accs = evaluate_settings(again, data.XT, data.YT, [kw for _, kw in settings])
    assert runs.sweep[runs.sweep.seed == 4]["accuracy"].tolist() == accs
    assert runs.sweep["relative FLOPs"].tolist()[:4] == pytest.approx([1.0, 48672 / 61856, 48672 / 61856,
                                                                        vit_flops(SMALL, r=2) / 61856])


def test_latency_claim_reports_consistent_numbers(model, x):
    # structure and bookkeeping only: no assertion on how long anything takes
    res = ex.latency_claim(model, x, 0.5, repeats=3)
    assert res["predicted"] == pytest.approx(vit_flops(model.config) / vit_flops(model.config, rho=0.5))
    assert res["efficiency"] == pytest.approx(res["speedup"] / res["predicted"])
    assert res["speedup_low"] <= res["speedup"] <= res["speedup_high"]
    lo, hi = res["speedup_low"], res["speedup_high"]
    assert res["verdict"] == ("supported" if lo > res["min_speedup"] else "not supported" if hi < 1 else "inconclusive")
    assert len(res["ratios"]) == 3
    merged = ex.latency_claim(model, x, r=2, repeats=3)
    assert merged["predicted"] == pytest.approx(vit_flops(model.config) / vit_flops(model.config, r=2))
    assert merged["measured"].startswith("ToMe r=2")
    rows = ex.latency_sweep(model, x, [dict(rho=0.5), dict(r=4)], repeats=2)
    assert list(zip(rows["rho"], rows["r"])) == [(0.5, 0), (1.0, 4)]
    assert rows["predicted speed-up"].iloc[1] == pytest.approx(vit_flops(model.config) / vit_flops(model.config, r=4))


def _reference_forward(model, x, rho=1.0, r=0):
    """Inference forward written out with the explicit softmax attention (the training path's formula, in float64)
    and the naive one-sample-at-a-time ToMe of ``_naive_tome``: the reference of the fused inference path."""
    m = copy.deepcopy(model).double()
    c = m.config
    h = m.embed(patchify(x.double(), c.patch)) + m.pos
    size = torch.ones_like(h[..., :1])
    for i, block in enumerate(m.blocks):
        if i == c.select_after and keep_count(c.n_tokens, rho) < h.shape[1]:
            kept = m.scorer(h).squeeze(-1).topk(keep_count(c.n_tokens, rho), dim=-1).indices.sort(-1).values
            h = h.gather(1, kept.unsqueeze(-1).expand(-1, -1, c.dim))
            size = size.gather(1, kept.unsqueeze(-1))
        att = block.attn
        B, n, d = h.shape
        q, k, v = att.qkv(block.norm1(h)).reshape(B, n, 3, c.heads, d // c.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * att.scale + size.log().reshape(B, 1, 1, n)
        h = h + att.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(B, n, d))
        if min(r, n // 2) > 0:
            h, size = _naive_tome(h, k.mean(1), size, r)
        h = h + block.mlp(block.norm2(h))
    h = m.norm(h)
    return m.head((h * size).sum(1) / size.sum(1))


@pytest.mark.parametrize("rho,r", [(1.0, 0), (0.5, 0), (0.25, 0), (1.0, 4), (1.0, 8), (0.5, 3)])
def test_fused_inference_matches_reference(model, x, rho, r):
    with torch.no_grad():
        got = model(x, rho=rho, r=r)
        ref = _reference_forward(model, x, rho, r)
    assert torch.allclose(got.double(), ref, atol=1e-4)


def test_merge_modes_match_scatter_reduce():
    # ToMe's merge(x, mode): B rows reduced with their merged A rows, written with scatter_reduce as in ToMe
    g = torch.Generator().manual_seed(5)
    metric, x = torch.randn(4, 9, 3, generator=g), torch.randn(4, 9, 6, generator=g)
    r = 3
    mn = metric / metric.norm(dim=-1, keepdim=True)
    best, best_idx = (mn[:, ::2] @ mn[:, 1::2].transpose(-1, -2)).max(-1)
    order = best.argsort(dim=-1, descending=True, stable=True).unsqueeze(-1)
    unm, src = order[:, r:], order[:, :r]
    dst = best_idx.unsqueeze(-1).gather(1, src)
    a, b = x[:, ::2], x[:, 1::2]
    merge = bipartite_soft_matching(metric, r)
    for mode in ("sum", "mean", "amax", "amin", "prod"):
        bb = b.scatter_reduce(1, dst.expand(-1, -1, 6), a.gather(1, src.expand(-1, -1, 6)), reduce=mode)
        expected = torch.cat([a.gather(1, unm.expand(-1, -1, 6)), bb], dim=1)
        assert torch.allclose(merge(x, mode), expected, atol=1e-6), mode
    with pytest.raises(ValueError, match="merge mode"):
        merge(x, "median")


def test_fused_attention_matches_explicit_with_sizes():
    torch.manual_seed(1)
    att = Attention(8, 2).eval()
    x, size = torch.randn(3, 5, 8), torch.rand(3, 5, 1) + 0.5
    out, keys = att(x, size=size)
    att.train()
    ref, ref_keys = att(x, size=size)
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(keys, ref_keys, atol=1e-7)
    assert Attention.forward(att.eval(), x, need_keys=False)[1] is None


@pytest.mark.parametrize("n", [1, 3, 8, 12, 15, 16, 17, 49])
def test_short_row_softmax_matches_torch(n):
    from mpnn.tokens import _softmax_
    a = 10 * torch.randn(7, n, n, generator=torch.Generator().manual_seed(n))
    expected = torch.softmax(a, dim=-1)
    assert torch.allclose(_softmax_(a.clone()), expected, atol=1e-6)
    with torch.no_grad():  # the attention's fused path on few tokens equals its explicit softmax
        att = Attention(8, 2).eval()
        x, size = torch.randn(3, n, 8), torch.rand(3, n, 1) + 0.5
        out, keys = att(x, size=size)
        ref, ref_keys = att.train()(x, size=size)
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(keys, ref_keys, atol=1e-7)


@pytest.mark.parametrize("n,r", [(49, 8), (41, 4), (7, 2), (9, 4), (6, 10)])
def test_wavg_direct_path_equals_packed_merge(n, r):
    # merge_wavg on bipartite_soft_matching's row indices against the generic path (one merge of [s x, s])
    g = torch.Generator().manual_seed(n + r)
    metric, x = torch.randn(5, n, 4, generator=g), torch.randn(5, n, 6, generator=g)
    size = torch.randint(1, 5, (5, n, 1), generator=g).float()
    merge = bipartite_soft_matching(metric, r)
    assert hasattr(merge, "rows")
    for s in (None, size):
        got, got_s = merge_wavg(merge, x, s)
        ref, ref_s = merge_wavg(lambda t, mode="sum": merge(t, mode), x, s)
        assert torch.equal(got, ref) and torch.equal(got_s, ref_s)


@pytest.mark.parametrize("shape", [(3, 5, 1), (3, 5, 2), (4, 7, 3), (2, 25, 24), (2, 13, 17)])
def test_row_max_equals_amax(shape):
    from mpnn.tokens import _row_max
    s = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert torch.equal(_row_max(s), s.amax(-1))
    s[0, 1, shape[-1] // 2] = float("nan")
    assert torch.equal(_row_max(s).isnan(), s.amax(-1).isnan())
