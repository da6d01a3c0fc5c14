"""mpnn.moe (experts, losses, gates, dispatch, layers, stacked replicas, statistics) against plain
per-token / per-expert reference implementations and hand-computed cases."""
import math

import pytest
import torch
from scipy.stats import norm

from mpnn import moe
from mpnn.switch import LearnedSwitch, topk_mask


@pytest.fixture(autouse=True)
def float64():
    """Reference comparisons in double precision; restored so other test files keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _experts(e=4, d=5, h=6, o=3, seed=0):
    torch.manual_seed(seed)
    return moe.Experts(e, d, h, o)


def _ref_expert(ex, e, x):  # one token, written out
    h = torch.relu(x @ ex.w1[e] + ex.b1[e])
    return h @ ex.w2[e] + ex.b2[e]


def _ref_token_choice(layer, x, eps=None):
    """Per-token loop: route, enforce capacity in priority order (rank-major, then token), combine."""
    gate, ex = layer.gate, layer.experts
    T, E, k = x.shape[0], ex.n_experts, gate.k
    W, b = gate.switch.gate.weight, gate.switch.gate.bias
    choices, weights = [], []
    for t in range(T):
        s = x[t] @ W.T + b
        if isinstance(gate, moe.NoisyTopKGate):
            s = s + (eps[t] * torch.nn.functional.softplus(x[t] @ gate.noise.weight.T) if gate.training else 0)
        order = sorted(range(E), key=lambda i: (-float(s[i]), i))[:k]
        if isinstance(gate, moe.NoisyTopKGate) or gate.normalize:
            w = torch.softmax(s[order], 0)
        else:
            w = torch.softmax(s, 0)[order]
        choices.append(order)
        weights.append(w)
    cap = None
    if layer.capacity_factor is not None:
        cap = max(1, math.ceil(layer.capacity_factor * k * T / E - 1e-9))
    used = [0] * E
    keep = [[False] * k for _ in range(T)]
    for r in range(k):
        for t in range(T):
            e = choices[t][r]
            if cap is None or used[e] < cap:
                keep[t][r] = True
                used[e] += 1
    ys = []
    for t in range(T):
        y = torch.zeros(ex.d_out)
        for r in range(k):
            if keep[t][r]:
                y = y + weights[t][r] * _ref_expert(ex, choices[t][r], x[t])
        ys.append(y)
    return torch.stack(ys), keep


# ---------------------------------------------------------------- experts and arithmetic

def test_experts_batched_equals_loop():
    ex = _experts()
    buf = torch.randn(4, 7, 5)
    out = ex(buf)
    for e in range(4):
        for c in range(7):
            assert torch.allclose(out[e, c], _ref_expert(ex, e, buf[e, c]))
    assert ex.flops_per_token() == 2 * (5 * 6 + 6 * 3)


def test_capacity_arithmetic():
    assert moe.capacity(10, 4, 2, 1.0) == 5          # ceil(1.0 * 2 * 10 / 4)
    assert moe.capacity(10, 4, 1, 1.25) == 4         # ceil(3.125)
    assert moe.capacity(8, 4, 1, 1.0) == 2           # exact, no float round-up
    assert moe.capacity(3, 8, 1, 0.1) == 1           # never 0
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.capacity(8, 4, 1, 0.0)


def test_plan_dispatch_hand_case():
    experts = torch.tensor([[0, 1], [0, 2], [0, 1]])  # T=3 tokens, k=2
    plan = moe.plan_dispatch(experts, 3, capacity_factor=1.0)  # C = ceil(2 * 3 / 3) = 2
    assert plan.capacity == 2
    # assignment order: rank 0 of tokens 0,1,2 then rank 1 of tokens 0,1,2
    assert plan.position.tolist() == [0, 1, 2, 0, 0, 1]
    assert plan.keep.tolist() == [True, True, False, True, True, True]
    assert plan.load.tolist() == [3, 2, 1]
    assert plan.slot_token.tolist() == [0, 1, 0, 2, 1, 3]   # expert 2's second slot is empty (T=3)
    dropless = moe.plan_dispatch(experts, 3, capacity_factor=None)
    assert dropless.capacity == 3 and bool(dropless.keep.all())


# ---------------------------------------------------------------- balancing losses

def test_cv_squared_hand():
    assert moe.cv_squared(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx((2 / 3) / 4)
    assert moe.cv_squared(torch.tensor([5.0, 5.0])).item() == pytest.approx(0.0)
    assert moe.cv_squared(torch.tensor([7.0])).item() == 0.0                  # one expert: no spread
    rows = moe.cv_squared(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))  # one value per replica
    assert rows.tolist() == pytest.approx([(2 / 3) / 4, 0.0])


def test_switch_aux_loss_hand():
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # f = (1, 0), P = (0.7, 0.3): 2 * (1 * 0.7 + 0 * 0.3)
    assert moe.switch_aux_loss(probs, mask).item() == pytest.approx(1.4)
    uniform = torch.full((4, 4), 0.25)
    assert moe.switch_aux_loss(uniform, torch.eye(4)).item() == pytest.approx(1.0)
    both = moe.switch_aux_loss(torch.stack([probs, probs.flip(-1)]), torch.stack([mask, mask]))
    assert both.tolist() == pytest.approx([1.4, 2 * 0.3])                     # per replica


def test_z_loss_hand():
    assert moe.z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert moe.z_loss(logits).item() == pytest.approx(math.log(4) ** 2)
    assert moe.z_loss(torch.zeros(2, 3, 4)).tolist() == pytest.approx([math.log(4) ** 2] * 2)


def test_gate_aux_matches_formula():
    torch.manual_seed(1)
    g = moe.switch_gate(5, 4, alpha=0.01, z_coef=1e-3)
    x = torch.randn(9, 5)
    r = g(x)
    logits = x @ g.switch.gate.weight.T + g.switch.gate.bias
    p = torch.softmax(logits, -1)
    f = torch.bincount(logits.argmax(-1), minlength=4).double() / 9
    expected = 0.01 * 4 * (f * p.mean(0)).sum() + 1e-3 * (torch.logsumexp(logits, -1) ** 2).mean()
    assert r.aux_loss.item() == pytest.approx(expected.item())


# ---------------------------------------------------------------- gates and dispatch vs per-token reference

@pytest.mark.parametrize("k,normalize,cf", [(1, False, None), (1, True, 1.0), (2, True, None),
                                            (2, True, 1.0), (2, False, 0.5), (3, True, 1.25)])
def test_token_choice_matches_reference(k, normalize, cf):
    ex = _experts()
    torch.manual_seed(2)
    layer = moe.TokenChoiceMoE(moe.TopKGate(5, 4, k=k, normalize=normalize), ex, capacity_factor=cf)
    x = torch.randn(13, 5)
    y, routed = layer(x)
    y_ref, keep = _ref_token_choice(layer, x)
    assert torch.allclose(y, y_ref)
    dropped = 1 - sum(map(sum, keep)) / (13 * k)
    assert float(routed.dropped) == pytest.approx(dropped)
    if cf is None:
        assert float(routed.dropped) == 0
    # the assignment mask marks exactly the kept assignments
    assert torch.allclose(routed.assignment.sum(1), torch.tensor([float(sum(r)) for r in keep]))
    assert float(routed.aux_loss) == 0.0                                       # alpha = z_coef = 0


def test_token_choice_gradients_match_reference():
    ex = _experts()
    torch.manual_seed(3)
    layer = moe.TokenChoiceMoE(moe.TopKGate(5, 4, k=2), ex, capacity_factor=0.75)
    x = torch.randn(11, 5, requires_grad=True)
    target = torch.randn(11, 3)
    params = [x, ex.w1, ex.b1, ex.w2, ex.b2, layer.gate.switch.gate.weight]
    g_vec = torch.autograd.grad(((layer(x)[0] - target) ** 2).sum(), params)
    g_ref = torch.autograd.grad(((_ref_token_choice(layer, x)[0] - target) ** 2).sum(), params)
    for a, b in zip(g_vec, g_ref):
        assert torch.allclose(a, b)
    assert g_vec[-1].abs().sum() > 0          # the router learns through the combine weights


def test_leading_dims_are_tokens():
    ex = _experts()
    layer = moe.TokenChoiceMoE(moe.TopKGate(5, 4, k=2), ex)
    x = torch.randn(2, 6, 5)
    assert torch.allclose(layer(x)[0], layer(x.reshape(12, 5))[0].reshape(2, 6, 3))


def test_noisy_topk_matches_reference():
    ex = _experts()
    torch.manual_seed(4)
    gate = moe.NoisyTopKGate(5, 4, k=2)
    for p in gate.parameters():                # the paper starts at zero; perturb to test the algebra
        torch.nn.init.normal_(p)
    layer = moe.TokenChoiceMoE(gate, ex)
    x, eps = torch.randn(10, 5), torch.randn(10, 4)
    gate.forward = (lambda f: (lambda inp: f(inp, eps)))(gate.forward)
    y, routed = layer(x)
    y_ref, _ = _ref_token_choice(layer, x, eps)
    assert torch.allclose(y, y_ref)
    # importance and load losses written out per token
    W, b, Wn = gate.switch.gate.weight, gate.switch.gate.bias, gate.noise.weight
    clean = x @ W.T + b
    std = torch.nn.functional.softplus(x @ Wn.T)
    noisy = clean + eps * std
    gates = torch.zeros(10, 4)
    load = torch.zeros(4)
    for t in range(10):
        top = sorted(range(4), key=lambda i: -float(noisy[t, i]))[:2]
        gates[t, top] = torch.softmax(noisy[t, top], 0)
        for i in range(4):
            others = sorted((float(noisy[t, j]) for j in range(4) if j != i), reverse=True)
            kth_excluding = others[2 - 1]
            load[i] += norm.cdf((float(clean[t, i]) - kth_excluding) / float(std[t, i]))
    cv2 = lambda v: float(v.var(unbiased=False) / v.mean() ** 2)
    expected = 0.1 * cv2(gates.sum(0)) + 0.1 * cv2(load)
    assert routed.aux_loss.item() == pytest.approx(expected, rel=1e-6)


def test_noisy_gate_is_clean_at_eval_and_rejects_k_equal_e():
    gate = moe.NoisyTopKGate(5, 4, k=1).eval()
    torch.nn.init.normal_(gate.switch.gate.weight)
    x = torch.randn(6, 5)
    r = gate(x)
    assert torch.equal(r.experts[:, 0], (x @ gate.switch.gate.weight.T).argmax(-1))
    with pytest.raises(ValueError, match="k < n_experts"):
        moe.NoisyTopKGate(5, 4, k=4)


def test_gate_selection_is_the_switch_mask():
    torch.manual_seed(5)
    x = torch.randn(8, 5)
    gate = moe.TopKGate(5, 6, k=2)
    sw = LearnedSwitch(5, 6, mode="topk", k=2)
    sw.load_state_dict(gate.switch.state_dict())
    assert torch.allclose(gate(x).mask(), sw(x).detach())   # ST value is hard + soft - soft


def test_gumbel_gate_selects_top_k_of_perturbed_scores():
    torch.manual_seed(5)
    x = torch.randn(8, 5)
    gate = moe.TopKGate(5, 6, k=2, noise="gumbel", tau=0.5)
    torch.manual_seed(9)
    r = gate(x)
    torch.manual_seed(9)
    u = torch.rand(8, 6)
    s = x @ gate.switch.gate.weight.T + gate.switch.gate.bias
    y = torch.softmax((s - torch.log(-torch.log(u))) / 0.5, -1)       # Gumbel-softmax sample
    for t in range(8):
        assert set(r.experts[t].tolist()) == set(y[t].topk(2).indices.tolist())
    gate.eval()
    assert torch.equal(gate(x).mask(), topk_mask(s, 2))           # deterministic at eval


def test_gumbel_gate_agrees_with_switch_gumbel_mode():
    torch.manual_seed(5)
    x = torch.randn(8, 5)
    gate = moe.TopKGate(5, 6, k=1, noise="gumbel", tau=0.5)
    sw = LearnedSwitch(5, 6, mode="gumbel", k=1, tau=0.5)
    sw.load_state_dict(gate.switch.state_dict())
    torch.manual_seed(9)
    m_switch = sw(x).detach()
    torch.manual_seed(9)
    assert torch.allclose(gate(x).mask(), m_switch)


def test_expert_choice_matches_reference():
    ex = _experts()
    torch.manual_seed(6)
    layer = moe.ExpertChoiceMoE(5, ex, capacity_factor=1.5)
    x = torch.randn(3, 8, 5)                                  # 3 groups of 8 tokens
    y, routed = layer(x)
    C = math.ceil(1.5 * 8 / 4)
    for g in range(3):
        p = torch.softmax(x[g] @ layer.switch.gate.weight.T + layer.switch.gate.bias, -1)
        ref = torch.zeros(8, 3)
        for e in range(4):
            chosen = sorted(range(8), key=lambda t: -float(p[t, e]))[:C]
            for t in chosen:
                ref[t] += p[t, e] * _ref_expert(ex, e, x[g, t])
        assert torch.allclose(y[g], ref)
    assert routed.assignment.sum().item() == 3 * 4 * C       # every expert is exactly full
    assert routed.assignment.shape == (24, 4) and float(routed.aux_loss) == 0.0


def test_soft_moe_matches_reference():
    ex = _experts()
    torch.manual_seed(7)
    layer = moe.SoftMoE(5, ex, slots_per_expert=2)
    x = torch.randn(2, 6, 5)
    y, routed = layer(x)
    for g in range(2):
        logits = x[g] @ layer.phi                            # (T, E*S)
        for t in range(6):
            out = torch.zeros(3)
            denom = sum(math.exp(float(v)) for v in logits[t])
            for j in range(8):
                col = torch.softmax(logits[:, j], 0)          # dispatch weights of slot j
                slot = sum(col[u] * x[g, u] for u in range(6))
                out = out + math.exp(float(logits[t, j])) / denom * _ref_expert(ex, j // 2, slot)
            assert torch.allclose(y[g, t], out)
    assert torch.allclose(routed.assignment.sum(1), torch.ones(12))
    # experts on E*S slots for T tokens, plus dispatch and combine 2 E S (2 d_in + d_out), per token
    assert layer.active_flops_per_token(6) == 8 / 6 * ex.flops_per_token() + 2 * 8 * (2 * 5 + 3)


def test_make_moe_returns_the_routing_statistics():
    for kind in moe.KINDS[:-1]:                                  # every MoE kind; "dense" below
        layer = moe.make_moe(kind, 5, 6, 3, 4, capacity_factor=1.0 if kind != "soft" else None)
        out, routed = layer(torch.randn(2, 8, 5) if kind in ("expert_choice", "soft") else torch.randn(16, 5))
        assert out.shape[-1] == 3
        assert routed.assignment.shape == (16, 4)
        assert (float(routed.aux_loss) > 0) == (kind in ("top1", "top2", "switch", "noisy_top2"))
        assert not any(name in vars(layer) for name in ("aux_loss", "assignment", "dropped"))   # nothing left behind
    dense = moe.make_moe("dense", 5, 6, 3, 4)
    x = torch.randn(7, 5)
    y, routed = dense(x)
    assert torch.allclose(y, _ref_expert(dense.experts, 0, x))
    assert routed.assignment is None and float(routed.aux_loss) == 0.0
    with pytest.raises(ValueError, match="unknown MoE kind"):
        moe.make_moe("top9", 5, 6, 3, 4)
    with pytest.raises(ValueError, match="k must be between"):
        moe.TopKGate(5, 4, k=5)
    with pytest.raises(ValueError, match="gate routes to 3 experts"):
        moe.TokenChoiceMoE(moe.TopKGate(5, 3), _experts())


def test_routing_entropy_and_digit_table():
    assert moe.routing_entropy(torch.tensor([1.0, 1, 1, 1])) == pytest.approx(1.0)
    assert moe.routing_entropy(torch.tensor([1.0, 0, 0, 0])) == pytest.approx(0.0)
    assert moe.routing_entropy(torch.tensor([1.0, 1, 0, 0])) == pytest.approx(0.5)   # log 2 / log 4
    a = torch.tensor([[1.0, 0], [1, 0], [0, 1]])
    table = moe.expert_digit_table(a, torch.tensor([0, 1, 1]), n_classes=2)
    assert table.tolist() == [[1.0, 0.0], [0.5, 0.5]]


def test_class_expert_nmi_hand():
    labels = torch.tensor([0, 0, 1, 1])
    identifies = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])   # expert = class
    ignores = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])      # expert independent of the class
    assert moe.class_expert_nmi(identifies, labels, n_classes=2) == pytest.approx(1.0)
    assert moe.class_expert_nmi(ignores, labels, n_classes=2) == pytest.approx(0.0, abs=1e-12)
    # p(c, e) = [[1/2, 0], [1/4, 1/4]]: I = H(e) - H(e|c) = h(1/4) - 1/2 h(1/2) (nats), H(c) = log 2
    h = lambda p: -p * math.log(p) - (1 - p) * math.log(1 - p)
    half = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]])
    assert moe.class_expert_nmi(half, labels, n_classes=2) == pytest.approx((h(0.25) - 0.5 * h(0.5)) / math.log(2))


# ---------------------------------------------------------------- replicas in one pass vs one by one

def _replicas(kind, n=3, **kw):
    models = []
    for s in range(n):
        torch.manual_seed(100 + s)
        m = moe.make_moe(kind, 6, 5, 3, 4, **kw)
        if kind == "noisy_top2":                   # the paper starts at zero; perturb to test the algebra
            for p in m.gate.parameters():
                torch.nn.init.normal_(p)
        models.append(m)
    return models


STACKABLE = [("dense", {}), ("switch", {"alpha": 0.1}), ("top2", {"alpha": 0.1, "capacity_factor": 1.0}),
             ("top1", {"capacity_factor": 0.5, "z_coef": 0.0}), ("noisy_top2", {"alpha": 0.1}),
             ("expert_choice", {"capacity_factor": 1.5}), ("soft", {"slots_per_expert": 2})]


@pytest.mark.parametrize("kind,kw", STACKABLE)
def test_stacked_forward_equals_each_replica(kind, kw):
    models = _replicas(kind, **kw)
    stacked = moe.StackedMoE(models)
    torch.manual_seed(8)
    x, eps = torch.randn(3, 10, 6), torch.randn(3, 10, 4)
    refs, routed = [], []
    for r, m in enumerate(models):
        if kind == "noisy_top2":                   # the layer draws eps itself: give both the same eps
            m.gate.forward = (lambda f, e: (lambda inp: f(inp, e)))(m.gate.forward, eps[r])
        y_r, routed_r = m(x[r])
        refs.append(y_r)
        routed.append(routed_r)
    y, stats = stacked(x, eps=eps)
    assert torch.allclose(y, torch.stack(refs), atol=1e-12)
    assert stats.aux_loss.tolist() == pytest.approx([float(r.aux_loss) for r in routed], rel=1e-6, abs=1e-12)
    if kind == "dense":
        assert stats.assignment is None
    else:
        assert torch.equal(stats.assignment, torch.stack([r.assignment for r in routed]))
        assert stats.dropped.tolist() == pytest.approx([float(r.dropped) for r in routed])
    # gradients of the summed replica losses are each replica's own gradients
    target = torch.randn(3, 10, 3)
    ((y - target) ** 2).sum().backward()
    for r, m in enumerate(models):
        ((refs[r] - target[r]) ** 2).sum().backward()
        assert torch.allclose(stacked.experts.w1.grad[r * m.experts.n_experts:(r + 1) * m.experts.n_experts],
                              m.experts.w1.grad, atol=1e-12)


def test_stacked_capacity_is_per_replica_group():
    # c * k * T / E = 1.25 * 1 * 16 / 4 = 5 exactly: each replica's experts hold 5 of its 16 tokens
    models = _replicas("top1", capacity_factor=1.25)
    stacked = moe.StackedMoE(models).train()
    x = torch.randn(3, 16, 6)
    _, stats = stacked(x)
    per_expert = stats.assignment.sum(1)                    # (R, E) kept assignments
    assert per_expert.max() <= 5
    for r, m in enumerate(models):
        _, keep = _ref_token_choice(m, x[r])
        assert stats.assignment[r].sum().item() == sum(map(sum, keep))
        assert torch.equal(stats.assignment[r], m(x[r])[1].assignment)


def test_stacked_write_back_copies_into_the_replicas():
    models = _replicas("noisy_top2", alpha=0.1)
    stacked = moe.StackedMoE(models)
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(1.0)
    before = [[p.clone() for p in m.parameters()] for m in models]
    stacked.write_back()
    for m, old in zip(models, before):
        for p, q in zip(m.parameters(), old):
            assert torch.allclose(p, q + 1.0)


def test_routing_ties_do_not_change_the_layer_equation():
    # a zero router scores every expert equally: whichever expert the tie-break picks, the output must
    # be the masked sum over the experts actually chosen (no test may depend on which one)
    ex = _experts()
    gate = moe.TopKGate(5, 4, k=2)
    torch.nn.init.zeros_(gate.switch.gate.weight)
    torch.nn.init.zeros_(gate.switch.gate.bias)
    layer = moe.TokenChoiceMoE(gate, ex)
    x = torch.randn(7, 5)
    y, _ = layer(x)
    chosen = gate(x).experts
    assert all(len(set(row.tolist())) == 2 for row in chosen)      # two distinct experts each
    ref = torch.stack([sum(0.5 * _ref_expert(ex, int(e), x[t]) for e in chosen[t]) for t in range(7)])
    assert torch.allclose(y, ref)                                    # equal scores: weights 1/2 each


def test_stacked_refuses_mixed_replicas():
    with pytest.raises(ValueError, match="one kind"):
        moe.StackedMoE(_replicas("switch", n=1) + _replicas("expert_choice", n=1))
    with pytest.raises(ValueError, match="differ"):
        moe.StackedMoE([moe.make_moe("switch", 6, 5, 3, 4, capacity_factor=1.0),
                        moe.make_moe("switch", 6, 5, 3, 4, capacity_factor=2.0)])
    with pytest.raises(ValueError, match="expected x of shape"):
        moe.StackedMoE(_replicas("dense", n=2))(torch.randn(3, 4, 6))


@pytest.mark.parametrize("k", [1, 2])
def test_dropless_collapsed_router_matches_reference(k):
    # replica 0's router sends every token to experts 0 (and 1), far more than a typical expert's
    # load; outputs and gradients must be the per-token reference's
    models = []
    for s in range(3):
        torch.manual_seed(200 + s)
        models.append(moe.make_moe("top2" if k == 2 else "top1", 6, 5, 3, 8, z_coef=0.0))
    with torch.no_grad():
        models[0].gate.switch.gate.bias.copy_(torch.tensor([50.0, 40.0] + [0.0] * 6))
    stacked = moe.StackedMoE(models)
    x = torch.randn(3, 24, 6)
    y, stats = stacked(x)
    assert stats.assignment[0, :, 0].sum() == 24                     # the collapsed replica
    refs = [_ref_token_choice(m, x[r])[0] for r, m in enumerate(models)]
    assert torch.allclose(y, torch.stack(refs), atol=1e-12)
    assert torch.allclose(models[0](x[0])[0], refs[0], atol=1e-12)   # one layer takes the same path
    y.square().sum().backward()
    for r, m in enumerate(models):
        refs[r].square().sum().backward()
        for name in ("w1", "b1", "w2", "b2"):
            got = getattr(stacked.experts, name).grad[r * 8:(r + 1) * 8]
            assert torch.allclose(got, getattr(m.experts, name).grad, atol=1e-12), name


# ---------------------------------------------------------------- grouped (sorted, dropless) kernels

@pytest.mark.parametrize("dims", [(8, 4, 4), (5, 6, 3)])            # aligned rows, and padded ones
def test_forward_sorted_grouped_equals_expert_loop(dims):
    """float32 rows sorted by expert through grouped matmuls = f_e per slice, values and gradients."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(3)
    ex, counts = moe.Experts(4, *dims), torch.tensor([3, 0, 5, 2])   # an expert with no rows
    x = torch.randn(10, dims[0], requires_grad=True)
    g = torch.randn(10, dims[2])
    got = ex.forward_sorted(x, counts)
    (got * g).sum().backward()
    grads = [t.grad.clone() for t in (x, *ex.parameters())]
    x.grad = None
    ex.zero_grad()
    ref = torch.cat([ex.forward_one(e, part) for e, part in enumerate(x.split([3, 0, 5, 2]))])
    (ref * g).sum().backward()
    assert torch.allclose(got, ref, atol=1e-6)
    for a, b in zip(grads, [t.grad for t in (x, *ex.parameters())]):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="counts sum"):
        ex.forward_sorted(x, torch.tensor([3, 0, 5, 1]))


def test_sorted_assignments_hand_case():
    experts = torch.tensor([[0, 2], [2, 1], [0, 1]])            # T=3, k=2 -> assignments rank-major
    plan = moe.plan_dispatch(experts, 3, capacity_factor=1.0)   # C=2: expert 2's are kept, none dropped
    order, token, counts = moe.sorted_assignments(experts, plan)
    assert counts.tolist() == [2, 2, 2]
    assert order.tolist() == [0, 2, 4, 5, 1, 3]                # by expert, then priority
    assert token.tolist() == [0, 2, 1, 2, 1, 0]
    capped = moe.plan_dispatch(torch.tensor([[0], [0], [0], [1]]), 2, capacity_factor=1.0)   # C=2
    order, token, counts = moe.sorted_assignments(torch.tensor([[0], [0], [0], [1]]), capped)
    assert counts.tolist() == [2, 1] and token.tolist() == [0, 1, 3]   # token 2 dropped


@pytest.mark.parametrize("k,cf", [(1, None), (2, None), (2, 1.0)])
def test_token_choice_float32_grouped_matches_float64_reference(k, cf):
    """The float32 grouped-matmul path against the float64 per-token reference (same routing)."""
    torch.manual_seed(11)
    layer = moe.TokenChoiceMoE(moe.TopKGate(8, 4, k=k), moe.Experts(4, 8, 12, 4), capacity_factor=cf)
    x = torch.randn(40, 8)
    ref, _ = _ref_token_choice(layer, x)
    y32, _ = layer.float()(x.float())
    assert torch.allclose(y32.double(), ref, atol=1e-5)


def test_stacked_float32_grouped_matches_each_replica():
    torch.set_default_dtype(torch.float32)
    models = []
    for s in range(3):
        torch.manual_seed(300 + s)
        models.append(moe.make_moe("top2", 8, 8, 10, 4, z_coef=0.0))      # d_out=10: padded rows
    stacked = moe.StackedMoE(models)
    x = torch.randn(3, 16, 8)
    y, _ = stacked(x)
    for r, m in enumerate(models):
        assert torch.allclose(y[r], m(x[r])[0], atol=1e-5)
