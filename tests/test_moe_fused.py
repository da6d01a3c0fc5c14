"""The compiled MoE path (mpnn.moe.fused) against independent references: a float64 per-assignment loop
for the expert MLPs, the torch routing and planning functions, and the pure-torch layer path."""
import pytest
import torch

from mpnn import moe
from mpnn.infra import native
from mpnn.moe import dispatch, fused, gates

pytestmark = pytest.mark.skipif(not fused.usable(torch.zeros(1)), reason="no C++ compiler")


@pytest.fixture(autouse=True)
def compiled_path():
    """These tests are about the compiled path: layers take it whatever this machine measures."""
    with native.forced("moe.token_choice", "compiled"):
        yield


def _reference(x, token, order, weights, counts, w1, b1, w2, b2):
    """y_t = sum_i w_i f_{e(i)}(x_{t_i}), one assignment at a time (float64 autograd)."""
    expert = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    n, k = weights.shape
    y = x.new_zeros(n, w2.shape[2])
    for i in range(token.numel()):
        e, t = int(expert[i]), int(token[i])
        h = (x[t] @ w1[e] + b1[e]).relu()
        y = y.index_add(0, token[i:i + 1], (weights[t, int(order[i]) // n] * (h @ w2[e] + b2[e]))[None])
    return y


def _problem(T, E, d, h, o, k, cap, seed):
    g = torch.Generator().manual_seed(seed)
    chosen = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    if E > 2:
        chosen[: T // 3, 0] = 0                    # a crowded expert (drops under a capacity)
        chosen[: T // 3, 1:] = torch.arange(1, k)  # keep the k choices distinct
    leaves = [torch.randn(T, d, generator=g, dtype=torch.float64), torch.rand(T, k, generator=g, dtype=torch.float64),
              torch.randn(E, d, h, generator=g, dtype=torch.float64), torch.randn(E, h, generator=g, dtype=torch.float64),
              torch.randn(E, h, o, generator=g, dtype=torch.float64), torch.randn(E, o, generator=g, dtype=torch.float64)]
    return chosen, fused.plan(chosen, 1, E, cap), leaves


@pytest.mark.parametrize("how", ["native", "grouped"])
@pytest.mark.parametrize("T,E,d,h,o,k,cap", [(37, 5, 12, 20, 7, 2, None), (64, 8, 16, 32, 16, 1, None),
                                             (50, 3, 64, 64, 64, 2, 20), (30, 6, 33, 17, 35, 1, 3),
                                             (41, 7, 48, 40, 32, 2, None)])
def test_sorted_expert_mlp_matches_float64_loop(how, T, E, d, h, o, k, cap):
    """Values and all six gradients, every GEMM engine, odd sizes (vector tails), empty experts, drops."""
    _, p, leaves = _problem(T, E, d, h, o, k, cap, seed=T + E)
    for t in leaves:
        t.requires_grad_(True)
    ref = _reference(leaves[0], p.token, p.order, leaves[1], p.counts, *leaves[2:])
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, leaves, g)
    ours = [t.detach().float().requires_grad_(True) for t in leaves]
    y = fused.sorted_expert_mlp(ours[0], ours[1], p, *ours[2:], how=how)
    grads = torch.autograd.grad(y, ours, g.float())
    assert torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.detach().abs().max()))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max())))
    if cap is not None:
        assert p.keep.sum() < p.keep.numel()           # the case does drop assignments


def test_native_gemm_rows_do_not_depend_on_the_batch():
    """Each row is accumulated in the same order whatever its block: a token alone equals it in a batch."""
    chosen, p, leaves = _problem(40, 4, 24, 40, 24, 2, None, seed=3)
    x, w, *params = [t.float() for t in leaves]
    y = fused.sorted_expert_mlp(x, w, p, *params, how="native")
    for t in (0, 17, 39):
        alone = fused.sorted_expert_mlp(x[t:t + 1], w[t:t + 1], fused.plan(chosen[t:t + 1], 1, 4, None), *params,
                                        how="native")
        assert torch.equal(alone[0], y[t])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("T,E,k", [(100, 8, 1), (100, 8, 2), (64, 32, 2), (50, 3, 2)])
def test_route_matches_torch_routing(normalize, T, E, k):
    torch.manual_seed(T + E + k)
    logits = torch.randn(T, E, requires_grad=True)
    ref = gates.route_top_k(logits.double(), k, normalize=normalize)     # float64: the torch path
    experts, weights = fused.route_top_k(logits, k, normalize=normalize)
    assert torch.equal(experts, ref.experts)
    g = torch.randn(T, k, dtype=torch.float64)
    a, = torch.autograd.grad((weights.double() * g).sum(), logits)
    b, = torch.autograd.grad((ref.weights * g).sum(), logits)
    assert torch.allclose(weights.double(), ref.weights, atol=1e-6)
    assert torch.allclose(a.double(), b.double(), atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_route_backward_reads_a_non_contiguous_gradient_correctly(normalize):
    """The upstream gradient of the weights arrives transposed when the dispatch reads them
    expert-major (``weights.t()``): the backward must hold its contiguous copy while the kernel
    reads it (a temporary freed too early gave the gate gradients of 1e7 to 1e35)."""
    torch.manual_seed(3)
    T, E, k = 256, 8, 2
    logits = torch.randn(T, E, requires_grad=True)
    ref = gates.route_top_k(logits.double(), k, normalize=normalize)
    _, weights = fused.route_top_k(logits, k, normalize=normalize)
    g = torch.randn(k, T, dtype=torch.float64)                      # (k, T): its transpose is not contiguous
    for _ in range(5):                                               # the allocator reuses freed memory
        a, = torch.autograd.grad((weights.t().double() * g).sum(), logits, retain_graph=True)
        b, = torch.autograd.grad((ref.weights.t() * g).sum(), logits, retain_graph=True)
        assert torch.allclose(a.double(), b.double(), atol=1e-6)
        torch.randn(T, k).fill_(1e30)                                # fill freed memory with large values


def test_route_hand_case():
    """Top-2 of [1, 3, 2, 3]: the tie at 3 goes to the lower index; normalized weights softmax([3, 3])."""
    experts, weights = fused.route_top_k(torch.tensor([[1.0, 3.0, 2.0, 3.0]]), 2)
    assert experts.tolist() == [[1, 3]] and torch.allclose(weights, torch.tensor([[0.5, 0.5]]))
    # Gumbel-style selection by other scores, ordered by the clean logits
    experts, _ = fused.route_top_k(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2, torch.tensor([[9.0, 0.0, 0.0, 8.0]]))
    assert experts.tolist() == [[0, 3]]


@pytest.mark.parametrize("R,cap", [(1, None), (1, 4), (3, None), (3, 2)])
def test_plan_matches_torch_plan(R, cap):
    torch.manual_seed(R * 10 + (cap or 0))
    T, E, k = 24, 4, 2
    chosen = torch.stack([torch.randperm(E)[:k] for _ in range(R * T)])
    routes = (chosen.view(R, T, k) + E * torch.arange(R).view(R, 1, 1)).reshape(R * T, k)
    ref = dispatch.plan_dispatch(routes, R * E, None, buffer=cap)
    order, token, counts = dispatch.sorted_assignments(routes, ref)
    p = fused.plan(chosen, R, E, cap)
    assert torch.equal(p.keep, ref.keep) and torch.equal(p.order, order) and torch.equal(p.token, token)
    assert torch.equal(p.counts, counts) and p.starts.tolist() == [0, *torch.cumsum(counts, 0).tolist()]
    kept = ref.keep.view(k, R * T).t().float()
    assignment = torch.zeros(R * T, E).scatter_(-1, chosen, kept)
    assert torch.equal(p.assignment, assignment)
    assert torch.allclose(p.dropped, 1 - ref.keep.view(k, R, T).float().mean((0, 2)))


@pytest.mark.parametrize("kind,cf", [("top1", None), ("top2", None), ("switch", 1.0), ("top2", 1.25)])
def test_layer_fused_equals_torch_path(kind, cf):
    """A float32 layer (and its gradients) on the compiled path equals the pure-torch path."""
    torch.manual_seed(5)
    layer = moe.make_moe(kind, 16, 24, 12, 6, capacity_factor=cf, alpha=0.01, z_coef=1e-3).float()
    x = torch.randn(60, 16, requires_grad=True)

    def run():
        y, stats = layer(x)
        loss = y.square().mean() + stats.aux_loss
        return [y, stats.assignment, stats.dropped, *torch.autograd.grad(loss, [x, *layer.parameters()])]

    ours = run()
    with native.disabled():
        assert not fused.usable(x)
        ref = run()
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=2e-5, rtol=1e-4)


def test_stacked_fused_equals_torch_path():
    torch.manual_seed(6)
    models = [moe.make_moe("top2", 8, 8, 10, 4, alpha=0.1).float() for _ in range(3)]
    stacked = moe.StackedMoE(models)
    x = torch.randn(3, 16, 8)
    y, routed = stacked(x)
    with native.disabled():
        y_ref, routed_ref = stacked(x)
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(routed.aux_loss, routed_ref.aux_loss)


def test_bad_plan_shape_is_named():
    _, p, leaves = _problem(10, 3, 8, 8, 8, 1, None, seed=1)
    x, w, w1, b1, w2, b2 = [t.float() for t in leaves]
    with pytest.raises(ValueError, match="do not fit"):
        fused.sorted_expert_mlp(x[:, :4], w, p, w1, b1, w2, b2)
    with pytest.raises(ValueError, match="how must be"):
        fused.sorted_expert_mlp(x, w, p, w1, b1, w2, b2, how="blas")


@pytest.mark.parametrize("mode", ["nn", "nt", "tn"])
def test_native_gemm_tiles_large_products(mode):
    """Reductions and widths past one 256 x 256 panel (and an empty group) against torch.mm per group."""
    torch.manual_seed(7)
    counts = torch.tensor([19, 0, 13])
    ends = torch.cumsum(counts, 0)
    starts = torch.cat([ends.new_zeros(1), ends])
    K, N = 300, 270
    groups = [(int(s), int(e)) for s, e in zip(starts[:-1], starts[1:])]
    if mode == "tn":
        a, b = torch.randn(32, K), torch.randn(32, N)
        c = fused._grouped_tn(a, b, starts, ends.int(), 3, "native")
        ref = torch.stack([a[s:e].double().t() @ b[s:e].double() for s, e in groups])
    else:
        a = torch.randn(32, K)
        w = torch.randn(3, K, N) if mode == "nn" else torch.randn(3, N, K)
        c = (fused._grouped_nn if mode == "nn" else fused._grouped_nt)(a, w, starts, ends.int(), "native")
        ref = torch.cat([a[s:e].double() @ (w[g].double() if mode == "nn" else w[g].double().t())
                         for g, (s, e) in enumerate(groups)])
    assert torch.allclose(c.double(), ref, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("how", ["native", "grouped"])
def test_the_expert_mlp_ops_pass_opcheck(how):
    """``mpnn::expert_mlp`` and its backward as registered torch.library ops: schema, fake
    (meta) implementations, autograd registration and tracing (``torch.library.opcheck``)."""
    torch.manual_seed(3)
    T, k, E, d, h, o = 24, 2, 4, 8, 12, 8
    routes = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
    p = fused.plan(routes, 1, E, None)
    x = torch.randn(T, d, requires_grad=True)
    weights = torch.rand(T, k, requires_grad=True)
    w1, b1 = torch.randn(E, d, h, requires_grad=True), torch.randn(E, h, requires_grad=True)
    w2, b2 = torch.randn(E, h, o, requires_grad=True), torch.randn(E, o, requires_grad=True)
    args = (x, p.order, p.token, weights, w1, b1, w2, b2, p.starts, p.ends, how)
    torch.library.opcheck(fused.expert_mlp_op, args)
    y, xs, hid, out = fused.expert_mlp_op(*args)
    dy = torch.randn_like(y)
    torch.library.opcheck(fused.expert_mlp_backward_op,
                          (dy, p.order, p.token, weights.detach(), w1.detach(), w2.detach(), xs.detach(),
                           hid.detach(), out.detach(), p.starts, p.ends, how))


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (37, 19, 53), (128, 256, 64)])
def test_the_yardstick_gemm_is_a_matrix_product(m, k, n):
    g = torch.Generator().manual_seed(m + k + n)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    ref = (a.double() @ b.double()).float()
    torch.testing.assert_close(fused.gemm(a, b), ref, rtol=1e-5, atol=1e-5 * k ** 0.5)
