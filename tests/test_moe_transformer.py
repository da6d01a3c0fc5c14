"""MoE layers as a transformer's MLP (mpnn.moe.transformer) and the ViT hook, against naive references."""
import torch
import torch.nn.functional as F

from mpnn import moe
from mpnn.tokens import TokenViT, ViTConfig

D, H, E, N_TOK = 8, 6, 4, 16


def _expert(experts, e, x):
    return (x @ experts.w1[e] + experts.b1[e]).relu() @ experts.w2[e] + experts.b2[e]


def test_token_moe_top1_matches_a_token_loop():
    torch.manual_seed(0)
    layer = moe.TokenMoE(moe.make_moe("switch", D, H, D, E, alpha=0.01))
    x = torch.randn(3, 5, D)
    y = layer(x)
    gate = layer.layer.gate.switch.gate
    ref = torch.empty_like(y)
    for b in range(3):
        for j in range(5):
            s = x[b, j] @ gate.weight.t() + gate.bias
            e = int(s.argmax())
            ref[b, j] = torch.softmax(s, -1)[e] * _expert(layer.layer.experts, e, x[b, j])
    assert torch.allclose(y, ref, atol=1e-5)
    assert layer.last.assignment.shape == (15, E)
    assert torch.equal(layer.last.assignment.sum(1), torch.ones(15))
    assert float(layer.last.aux_loss) > 0


def test_expert_choice_and_soft_route_within_each_image():
    torch.manual_seed(1)
    x = torch.randn(4, N_TOK, D)
    for kind, kw in (("expert_choice", {"capacity_factor": 1.0}), ("soft", {"slots_per_expert": N_TOK // E})):
        layer = moe.TokenMoE(moe.make_moe(kind, D, H, D, E, **kw))
        y = layer(x)
        alone = torch.cat([layer(x[b:b + 1]) for b in range(4)])
        assert torch.allclose(y, alone, atol=1e-5), kind
    # expert choice: every expert takes exactly n/E tokens of every image
    ec = moe.TokenMoE(moe.make_moe("expert_choice", D, H, D, E, capacity_factor=1.0))
    ec(x)
    assert torch.equal(ec.last.assignment.view(4, N_TOK, E).sum(1), torch.full((4, E), N_TOK / E))


def test_global_path_matches_a_per_image_reference():
    torch.manual_seed(2)
    router = moe.GlobalRouter(D, E, alpha=0.1, z_coef=0.0)
    first = moe.PathMoE(moe.Experts(E, D, H, D), router, decide=True)
    second = moe.PathMoE(moe.Experts(E, D, H, D), router, decide=False)
    x = torch.randn(5, 7, D)
    y1 = first(x)
    y2 = second(x + 1.0)                         # the decision stays the one taken on the first layer's input
    w, b = router.switch.gate.weight, router.switch.gate.bias
    probs = torch.softmax(x.mean(1) @ w.t() + b, -1)
    path = probs.argmax(-1)
    for i in range(5):
        e = int(path[i])
        assert torch.allclose(y1[i], probs[i, e] * _expert(first.experts, e, x[i]), atol=1e-5)
        assert torch.allclose(y2[i], probs[i, e] * _expert(second.experts, e, x[i] + 1.0), atol=1e-5)
    onehot = F.one_hot(path, E).float().repeat_interleave(7, 0)
    assert torch.equal(first.last.assignment, onehot) and torch.equal(second.last.assignment, onehot)
    # Switch auxiliary loss over images: alpha * E * sum_i f_i P_i
    f = F.one_hot(path, E).float().mean(0)
    assert torch.allclose(first.last.aux_loss, 0.1 * E * (f * probs.mean(0)).sum(), atol=1e-6)
    assert float(second.last.aux_loss) == 0.0
    # the router's parameters are registered once (in the deciding layer)
    both = torch.nn.ModuleList([first, second])
    assert sum(p.numel() for p in both.parameters()) == 2 * sum(p.numel() for p in first.experts.parameters()) + D * E + E


def test_path_moe_needs_a_decision_first():
    router = moe.GlobalRouter(D, E)
    second = moe.PathMoE(moe.Experts(E, D, H, D), router, decide=False)
    try:
        second(torch.randn(2, 3, D))
    except RuntimeError as err:
        assert "decide=True" in str(err)
    else:
        raise AssertionError("expected a RuntimeError")


def test_vit_mlp_factory_keeps_the_default_and_replaces_a_block():
    c = ViTConfig(patch=7, dim=D, depth=2, heads=2, select_after=0)
    x = torch.randn(3, 1, 28, 28)
    torch.manual_seed(3)
    plain = TokenViT(c).eval()
    torch.manual_seed(3)
    same = TokenViT(c, lambda i: None).eval()
    assert torch.equal(plain(x), same(x))
    torch.manual_seed(3)
    routed = TokenViT(c, lambda i: moe.TokenMoE(moe.make_moe("switch", D, H, D, E)) if i == 1 else None).eval()
    assert isinstance(routed.blocks[1].mlp, moe.TokenMoE) and not isinstance(routed.blocks[0].mlp, moe.TokenMoE)
    # the replaced block's MLP really runs: block 1 = x + attn, then + TokenMoE(norm2(.))
    blk = routed.blocks[1]
    h = routed.embed(torch.flatten(x.reshape(3, 4, 7, 4, 7).permute(0, 1, 3, 2, 4), 3).reshape(3, 16, 49)) + routed.pos
    h = routed.blocks[0](h)[0]
    a = h + blk.attn(blk.norm1(h))[0]
    out = a + blk.mlp(blk.norm2(a))
    ref = routed.head(routed.norm(out).mean(1))
    assert torch.allclose(routed(x), ref, atol=1e-5)
    stats = moe.routing_stats(routed)
    assert len(stats) == 1 and stats[0].assignment.shape == (3 * 16, E)
