"""Training on the kept tokens (``how="gather_st"``): its forward against the masked training path and the
inference gather, its gradients against the masked path's with the dropped tokens' mask gradients removed
(a hook on the mask), and the budget bookkeeping (FLOPs, images seen, paired gaps) by hand."""
import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import mpnn.tokens as tokens
from mpnn.experiments import token_selection as ex
from mpnn.tokens import TokenViT, ViTConfig, keep_count, vit_flops

CONFIG = ViTConfig(patch=7, dim=16, depth=3, heads=2, select_after=1, scorer_hidden=8)


@pytest.fixture()
def pair():
    torch.manual_seed(0)
    model = TokenViT(CONFIG).train()
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4])
    return model, x, y


def _loss_and_grads(model, x, y, how, seed=7):
    model = copy.deepcopy(model)
    torch.manual_seed(seed)  # the same Gumbel noise for both paths
    logits = model(x, rho=0.5, how=how, noise=0.7)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gather_st_forward_equals_mask_and_backbone_gradients_equal(pair):
    model, x, y = pair
    lm, gm = _loss_and_grads(model, x, y, "mask")
    lg, gg = _loss_and_grads(model, x, y, "gather_st")
    assert torch.allclose(lm, lg, atol=1e-5)
    after = ("blocks.1.", "blocks.2.", "norm.", "head.")  # downstream of the selection: the scorer does not reach them
    for name, g in gm.items():
        if name.startswith(after):
            assert torch.allclose(g, gg[name], atol=1e-6), name
    assert any(gg[n].abs().sum() > 0 for n in gg if n.startswith("scorer")), "the scorer gets a gradient"


def test_scorer_gradient_is_the_masks_on_kept_tokens(pair, monkeypatch):
    """Reference: the masked path with d L / d m_j set to 0 for every dropped token (forward value 0)."""
    model, x, y = pair
    _, full = _loss_and_grads(model, x, y, "mask")
    original = tokens.select_mask

    def kept_only(*args, **kw):
        m = original(*args, **kw)
        keep = (m.detach() > 0.5).float()
        m.register_hook(lambda g: g * keep)
        return m
    monkeypatch.setattr(tokens, "select_mask", kept_only)
    _, ref = _loss_and_grads(model, x, y, "mask")
    monkeypatch.setattr(tokens, "select_mask", original)
    _, gg = _loss_and_grads(model, x, y, "gather_st")
    scorer = [n for n in ref if n.startswith("scorer")]
    assert ref.keys() == gg.keys()
    for name in ref:  # the scorer and the blocks before it (its gradient flows into them)
        assert torch.allclose(ref[name], gg[name], atol=1e-6), name
    assert any(not torch.allclose(full[n], gg[n], atol=1e-6) for n in scorer), \
        "the masked path also learns from the dropped tokens' mask gradients"


def test_gather_st_in_eval_mode_is_the_inference_gather(pair):
    model, x, _ = pair
    model.eval()
    with torch.no_grad():
        a = model(x, rho=0.5, how="gather_st")
        b = model(x, rho=0.5, how="gather")
        _, info = model(x, rho=0.5, how="gather_st", return_info=True)
    assert torch.allclose(a, b, atol=1e-5)
    assert info.tokens == [16, 8, 8] and info.kept.shape == (5, keep_count(16, 0.5))


def test_gather_st_rejects_merging(pair):
    model, x, _ = pair
    with pytest.raises(ValueError, match="merging"):
        model(x, rho=0.5, r=2, how="gather_st")


def test_training_flops_and_images_seen_by_hand():
    assert ex.training_flops(CONFIG, 0.5) == 3 * vit_flops(CONFIG, rho=0.5)
    # 10 images in batches of 4: steps see 4, 4, 2 per epoch
    assert [ex.images_seen(t, 10, 4) for t in range(7)] == [0, 4, 8, 10, 14, 18, 20]


def test_budget_arms_and_paired_gap():
    arms = ex.budget_arms(2, 3, 0.5)
    assert [(a.name, a.rho, a.epochs, a.eval_rho) for a in arms] == [
        (ex.ALL_TOKENS, 1.0, 2, 1.0), (ex.SAME_FLOPS, 0.5, 3, 0.5), (ex.SAME_STEPS, 0.5, 2, 0.5)]
    with pytest.raises(ValueError, match="budget_rho"):
        ex.budget_arms(2, 3, 1.0)
    final = pd.DataFrame({"seed": [1, 2, 1, 2], "arm": [ex.ALL_TOKENS] * 2 + [ex.SAME_FLOPS] * 2,
                          "accuracy": [0.8, 0.9, 0.85, 0.88]})
    gap = ex.paired_gap(final, ex.SAME_FLOPS)
    assert gap.loc[1] == pytest.approx(0.05) and gap.loc[2] == pytest.approx(-0.02)


def test_step_seconds_axis():
    curve = pd.DataFrame({"arm": [ex.ALL_TOKENS, ex.SAME_FLOPS], "step": [10, 10]})
    out = ex.with_step_seconds(curve, {"all": 0.02, "kept": 0.015})
    assert out["step seconds"].tolist() == pytest.approx([0.2, 0.15])


def test_train_step_claim_combines_the_two_models(pair):
    # structure and bookkeeping only: no assertion on how long anything takes
    model, x, y = pair
    large = TokenViT(ViTConfig(patch=4, dim=16, depth=3, heads=2, select_after=1, scorer_hidden=8))
    res = ex.train_step_claim(model, large, x, y, 0.5, repeats=2, large_repeats=2)
    for part, r in zip(res["parts"].values(), (res["small"], res["large"])):
        lo, hi = r["speedup_low"], r["speedup_high"]
        assert part == ("supported" if lo > res["min_speedup"] else "not supported" if hi < 1 else "inconclusive")
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["predicted"])
    assert res["large"]["predicted"] == pytest.approx(ex.training_flops(large.config) / ex.training_flops(large.config, 0.5))
    parts = set(res["parts"].values())
    assert res["verdict"] == ("supported" if parts == {"supported"} else "mixed" if "supported" in parts
                              else "inconclusive" if "inconclusive" in parts else "not supported")


def test_setting_grid_labels_every_setting_and_the_site_explorer_selects_one():
    import pandas as pd
    from mpnn.experiments import token_selection as ex
    table = pd.DataFrame([
        {"method": ex.SELECTION, "rho": 0.5, "r": 0, "accuracy": 0.89, "relative FLOPs": 0.65,
         "predicted speed-up": 1.54, "measured speed-up": 1.1},
        {"method": ex.RANDOM, "rho": 0.5, "r": 0, "accuracy": 0.7, "relative FLOPs": 0.65,
         "predicted speed-up": 1.54, "measured speed-up": float("nan")},
        {"method": ex.MERGING, "rho": 1.0, "r": 2, "accuracy": 0.88, "relative FLOPs": 0.76,
         "predicted speed-up": 1.3, "measured speed-up": 0.7}])
    grid = ex.setting_grid(table)
    assert sorted(grid["setting"]) == sorted(["ToMe, r=2", f"{ex.SELECTION}, rho=0.5", f"{ex.RANDOM}, rho=0.5"])
    merged = grid[grid["setting"] == "ToMe, r=2"].iloc[0]
    assert merged["summary"] == "ToMe, r=2: accuracy 0.8800, FLOPs 0.760 (predicted 1.30x), measured speed-up 0.70x"
    spec = ex.figure_setting_site(table).to_dict()
    assert spec["params"][0]["name"] == "p_setting" and spec["params"][0]["value"] == f"{ex.SELECTION}, rho=0.5"
