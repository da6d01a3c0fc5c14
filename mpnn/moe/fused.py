"""The expert MLPs of a token-choice MoE over rows sorted by expert, with fused glue (C++, :mod:`mpnn.infra.native`).

For M kept assignments sorted by expert (expert e owns rows ``s_e .. s_{e+1}-1``), assignment i of
token ``t_i`` with combine weight ``w_i``:

* forward  ``X_i = x_{t_i}``, ``H_i = relu(X_i W1_e + b1_e)``, ``O_i = H_i W2_e + b2_e``,
  ``y_t = sum_{i: t_i = t} w_i O_i``;
* backward ``dO_i = w_i dy_{t_i}``, ``dw_i = <dy_{t_i}, O_i>``, ``db2_e = sum_{i in e} dO_i``,
  ``dH = (dO W2_e^T) * [H > 0]``, ``db1_e = sum_{i in e} dH_i``, ``dW2_e = H_e^T dO_e``,
  ``dW1_e = X_e^T dH_e``, ``dx_t = sum_{i: t_i = t} dH_i W1_e^T``.

The matrix products are per-expert GEMMs; the glue (gather, bias, ReLU, weighting, scatter-add, bias
and weight gradients) is done in single passes by the C++ kernels below instead of about twenty
torch operations with their intermediate tensors. Two engines run the GEMMs:

* ``"native"``: a register-blocked C++ GEMM (8 rows x 32 columns of
  accumulators, GCC vector extensions, 256 x 256 panels of B read in place from the L2 cache, B
  transposed once per expert for the input gradients) -- no library call per expert and per operation;
* ``"grouped"``: :func:`torch.nn.functional.grouped_mm` (the BLAS library), kept for comparison.

Every kernel visits the rows in a fixed order, so results do not depend on the thread count.
:func:`usable` is False (callers run the pure-torch path in :mod:`mpnn.moe.experts`) without a
compiler, with ``MPNN_FUSED=0``, or for anything but contiguous float32 on the CPU.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpnn.infra import native
SOURCE = native.source("moe.cpp")      # mpnn/kernels/moe.cpp

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


_MEMO: dict[str, tuple | None] = {}


def _memo(key: str, load):
    """``load()``'s kernels, looked up once; None while ``native.enabled()`` is False (checked every call)."""
    if not native.enabled():
        return None
    if key not in _MEMO:
        _MEMO[key] = load()
    return _MEMO[key]


def _kernels():
    """The GEMM and glue kernels, or None."""
    return _memo("mlp", _load_mlp)


def _load_mlp():
    gemm = native.load("moe", SOURCE, "mpnn_moe_gemm", [_I32, _I64, _P, _I64, _I64, _P, _P, _P, _I32, _P])
    glue = native.load("moe", SOURCE, "mpnn_moe_glue",
                       [_I32, _I64, _I64, _I64, _P, _I64, _P, _P, _I64, _P, _P, _P, _P])
    back = native.load("moe", SOURCE, "mpnn_moe_glue_backward",
                       [_I32, _I64, _I64, _I64, _P, _I64, _P, _P, _I64, _P, _P, _P, _P, _P, _P])
    return None if gemm is None or glue is None or back is None else (gemm, glue, back)


def usable(*tensors: torch.Tensor) -> bool:
    """Can the fused path serve these tensors (float32 on the CPU, a compiler, not disabled)?"""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and _kernels() is not None and _routing_kernels() is not None)


def engine(rows: int, n_experts: int, d_in: int, d_hidden: int, d_out: int) -> str:
    """The GEMM engine when a caller names none: ``"native"``. Layers do not rely on it: the
    token-choice dispatcher measures the compiled path with either engine against torch's own
    paths on this machine and shape (:func:`mpnn.moe.dispatch.token_choice_path`)."""
    return "native"


def _p(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _grouped_nn(a, w, starts, offs, how):
    """``C_e = A_e W_e`` for rows sorted by group: (M, K) x (E, K, N) -> (M, N)."""
    if how == "native":
        c = a.new_empty(a.shape[0], w.shape[-1])
        _kernels()[0](0, w.shape[0], _p(starts), w.shape[1], w.shape[2], _p(a), _p(w), None, 0, _p(c))
        return c
    return F.grouped_mm(a, w, offs=offs)


def gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (float32, 2-D) on the book's register-blocked GEMM as one group: the second
    yardstick the benchmarks hold against ``torch.mm`` (needs :func:`usable`)."""
    return _grouped_nn(a, b.unsqueeze(0), torch.tensor([0, a.shape[0]]), None, "native")


def _grouped_nt(a, w, starts, offs, how):
    """``C_e = A_e W_e^T`` for rows sorted by group: (M, N) x (E, K, N) -> (M, K)."""
    if how == "native":
        c = a.new_empty(a.shape[0], w.shape[1])
        _kernels()[0](2, w.shape[0], _p(starts), w.shape[2], w.shape[1], _p(a), _p(w), None, 0, _p(c))
        return c
    return F.grouped_mm(a, w.transpose(1, 2), offs=offs)


def _grouped_tn(a, b, starts, offs, n_groups, how):
    """``C_e = A_e^T B_e``: (M, K), (M, N) -> (E, K, N)."""
    if how == "native":
        c = a.new_empty(n_groups, a.shape[1], b.shape[1])
        _kernels()[0](1, n_groups, _p(starts), a.shape[1], b.shape[1], _p(a), _p(b), None, 0, _p(c))
        return c
    return F.grouped_mm(a.t(), b, offs=offs)


# The expert MLPs as torch.library custom ops: ``mpnn::expert_mlp`` (forward, with the intermediates
# the backward needs as extra outputs) and ``mpnn::expert_mlp_backward``; autograd is registered on the
# first, fake (meta) implementations on both, and tests run ``torch.library.opcheck`` on them.

@torch.library.custom_op("mpnn::expert_mlp", mutates_args=())
def expert_mlp_op(x: torch.Tensor, order: torch.Tensor, token: torch.Tensor, weights: torch.Tensor,
                  w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, starts: torch.Tensor,
                  ends: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, xs, hid, out)``: the layer's output (T, o), and the gathered rows (M, d), hidden
    activations (M, h) and expert outputs (M, o) of the M kept assignments (module docstring)."""
    gemm, glue, _ = _kernels()
    T, d = x.shape
    M, k, E, h, o = token.shape[0], weights.shape[1], w1.shape[0], w1.shape[2], w2.shape[2]
    xs = x.new_empty(M, d)
    glue(0, T, M, E, _p(starts), d, _p(token), None, k, None, _p(x), None, _p(xs))
    if how == "native":
        hid = x.new_empty(M, h)
        gemm(0, E, _p(starts), d, h, _p(xs), _p(w1), _p(b1), 1, _p(hid))
        out = x.new_empty(M, o)
        gemm(0, E, _p(starts), h, o, _p(hid), _p(w2), _p(b2), 0, _p(out))
        bias2 = None
    else:
        hid = F.grouped_mm(xs, w1, offs=ends)
        glue(1, T, M, E, _p(starts), h, None, None, k, None, None, _p(b1), _p(hid))
        out = F.grouped_mm(hid, w2, offs=ends)
        bias2 = b2
    y = x.new_empty(T, o)
    glue(2, T, M, E, _p(starts), o, _p(token), _p(order), k, _p(weights), _p(out), _p(bias2), _p(y))
    return y, xs, hid, out


@expert_mlp_op.register_fake
def _(x, order, token, weights, w1, b1, w2, b2, starts, ends, how):
    M = token.shape[0]
    return x.new_empty(x.shape[0], w2.shape[2]), x.new_empty(M, x.shape[1]), x.new_empty(M, w1.shape[2]), \
        x.new_empty(M, w2.shape[2])


@torch.library.custom_op("mpnn::expert_mlp_backward", mutates_args=())
def expert_mlp_backward_op(dy: torch.Tensor, order: torch.Tensor, token: torch.Tensor, weights: torch.Tensor,
                           w1: torch.Tensor, w2: torch.Tensor, xs: torch.Tensor, hid: torch.Tensor, out: torch.Tensor,
                           starts: torch.Tensor, ends: torch.Tensor, how: str
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweights, dw1, db1, dw2, db2)`` of :func:`expert_mlp_op`'s ``y`` (module docstring)."""
    _, _, back = _kernels()
    dy = dy.contiguous()
    T, k = weights.shape
    M, E, d, h, o = token.shape[0], w1.shape[0], w1.shape[1], w1.shape[2], w2.shape[2]
    dout, dweights, db2 = dy.new_empty(M, o), dy.new_empty(T, k), dy.new_empty(E, o)
    back(0, T, M, E, _p(starts), o, _p(token), _p(order), k, _p(weights), _p(dy), _p(out), _p(dout),
         _p(dweights), _p(db2))
    dhid = _grouped_nt(dout, w2, starts, ends, how)
    db1 = dy.new_empty(E, h)
    back(1, T, M, E, _p(starts), h, None, None, k, None, _p(hid), None, _p(dhid), None, _p(db1))
    dw2 = _grouped_tn(hid, dout, starts, ends, E, how)
    dw1 = _grouped_tn(xs, dhid, starts, ends, E, how)
    dxs = _grouped_nt(dhid, w1, starts, ends, how)
    dx = dy.new_empty(T, d)
    back(2, T, M, E, _p(starts), d, _p(token), None, k, None, _p(dxs), None, _p(dx), None, None)
    return dx, dweights, dw1, db1, dw2, db2


@expert_mlp_backward_op.register_fake
def _(dy, order, token, weights, w1, w2, xs, hid, out, starts, ends, how):
    E, d, h = w1.shape
    o = w2.shape[2]
    return (dy.new_empty(dy.shape[0], d), dy.new_empty(weights.shape), dy.new_empty(E, d, h), dy.new_empty(E, h),
            dy.new_empty(E, h, o), dy.new_empty(E, o))


def _setup_context(ctx, inputs, output):
    x, order, token, weights, w1, b1, w2, b2, starts, ends, how = inputs
    _, xs, hid, out = output
    ctx.save_for_backward(order, token, weights, w1, w2, xs, hid, out, starts, ends)
    ctx.how = how


def _backward(ctx, dy, _dxs, _dhid, _dout):
    order, token, weights, w1, w2, xs, hid, out, starts, ends = ctx.saved_tensors
    dx, dweights, dw1, db1, dw2, db2 = expert_mlp_backward_op(dy, order, token, weights, w1, w2, xs, hid, out,
                                                              starts, ends, ctx.how)
    return dx, None, None, dweights, dw1, db1, dw2, db2, None, None, None


expert_mlp_op.register_autograd(_backward, setup_context=_setup_context)


@dataclass
class Plan:
    """A token-choice dispatch plan (see :func:`plan`)."""

    keep: torch.Tensor        # (k*N,) bool, assignment a = rank * N + token kept (within capacity)
    counts: torch.Tensor      # (R*E,) kept assignments per expert
    starts: torch.Tensor      # (R*E+1,) int64 first sorted row of each expert
    ends: torch.Tensor        # (R*E,) int32 end of each expert's rows (grouped_mm's offsets)
    order: torch.Tensor       # (M,) the kept assignments sorted by expert
    token: torch.Tensor       # (M,) their tokens
    assignment: torch.Tensor  # (N, E) 1.0 where token t was processed by its local expert e
    dropped: torch.Tensor     # (R,) share of each problem's assignments dropped


def plan(routes: torch.Tensor, n_problems: int, n_experts: int, cap: int | None) -> Plan:
    """The dispatch plan of ``n_problems`` problems of T tokens, ``routes`` (R*T, k) local expert ids
    < ``n_experts``, in one pass: the same keep/order/token/counts as
    :func:`~mpnn.moe.dispatch.plan_dispatch` + :func:`~mpnn.moe.dispatch.sorted_assignments` on the
    global ids ``r*E + e``. ``cap`` the buffer per expert, None: dropless."""
    routes = routes.contiguous()
    N, k = routes.shape
    G = n_problems * n_experts
    keep = torch.empty(k * N, dtype=torch.bool)
    counts, starts = torch.empty(G, dtype=torch.long), torch.empty(G + 1, dtype=torch.long)
    ends = torch.empty(G, dtype=torch.int32)
    order, token = torch.empty(k * N, dtype=torch.long), torch.empty(k * N, dtype=torch.long)
    assignment = torch.empty(N, n_experts, dtype=torch.float32)
    dropped = torch.empty(n_problems, dtype=torch.float32)
    M = _routing_kernels()[2](n_problems, N // n_problems, k, n_experts, -1 if cap is None else int(cap),
                              _p(routes), _p(keep), _p(counts), _p(starts), _p(ends), _p(order), _p(token),
                              _p(assignment), _p(dropped))
    return Plan(keep, counts, starts, ends, order[:M], token[:M], assignment, dropped)


def sorted_expert_mlp(x: torch.Tensor, weights: torch.Tensor, p: Plan, w1: torch.Tensor, b1: torch.Tensor,
                      w2: torch.Tensor, b2: torch.Tensor, how: str | None = None) -> torch.Tensor:
    """``y_t = sum_j keep_tj weights_tj f_{e_tj}(x_t)`` (T, d_out) for the kept assignments of plan ``p``.

    x (T, d_in) tokens, ``weights`` (T, k) combine weights; ``w1`` (E, d_in, h), ``b1`` (E, h), ``w2``
    (E, h, d_out), ``b2`` (E, d_out) with E the plan's global experts. Differentiable in x, weights and
    the four parameters. ``how``: ``"native"`` or ``"grouped"`` GEMMs (default :func:`engine`'s
    choice). Callers check :func:`usable` first.
    """
    E, d, h = w1.shape
    if x.shape[1] != d or weights.shape[0] != x.shape[0] or p.counts.numel() != E:
        raise ValueError(f"sorted_expert_mlp: x {tuple(x.shape)}, weights {tuple(weights.shape)} and a plan "
                         f"over {p.counts.numel()} experts do not fit w1 {tuple(w1.shape)}")
    how = how or engine(p.token.shape[0], E, d, h, w2.shape[2])
    if how not in ("native", "grouped"):
        raise ValueError(f"how must be 'native' or 'grouped', got {how!r}")
    if how == "grouped" and (d % 4 or h % 4 or w2.shape[2] % 4):
        how = "native"                        # grouped_mm needs 16-byte rows; the native GEMM does not
    return expert_mlp_op(x.contiguous(), p.order, p.token, weights.contiguous(), w1.contiguous(),
                         b1.contiguous(), w2.contiguous(), b2.contiguous(), p.starts, p.ends, how)[0]

def _routing_kernels():
    """The routing and planning kernels, or None."""
    return _memo("routing", _load_routing)


def _load_routing():
    route = native.load("moe", SOURCE, "mpnn_moe_route", [_I64, _I64, _I64, _I32, _P, _P, _P, _P, _P])
    back = native.load("moe", SOURCE, "mpnn_moe_route_backward", [_I64, _I64, _I64, _I32, _P, _P, _P, _P, _P])
    plan = native.load("moe", SOURCE, "mpnn_moe_plan",
                       [_I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _P], _I64)
    return None if route is None or back is None or plan is None else (route, back, plan)


class _TopKRoute(torch.autograd.Function):
    """Top-k routing of (T, E) scores in one pass: the chosen experts (T, k) and their differentiable
    combine weights (T, k), see ``mpnn_moe_route`` in :data:`SOURCE`."""

    @staticmethod
    def forward(ctx, logits, sel, k, normalize):
        T, E = logits.shape
        experts = torch.empty(T, k, dtype=torch.long)
        weights, probs = logits.new_empty(T, k), logits.new_empty(T, E)
        _routing_kernels()[0](T, E, k, int(normalize), _p(sel), _p(logits), _p(experts), _p(weights), _p(probs))
        ctx.save_for_backward(experts, weights, probs)
        ctx.normalize = normalize
        ctx.mark_non_differentiable(experts)
        return experts, weights

    @staticmethod
    def backward(ctx, _, grad):
        experts, weights, probs = ctx.saved_tensors
        T, E = probs.shape
        out = probs.new_empty(T, E)
        grad = grad.contiguous()      # held here: a temporary's memory would be freed before the kernel reads it
        _routing_kernels()[1](T, E, experts.shape[1], int(ctx.normalize), _p(experts), _p(weights), _p(probs),
                              _p(grad), _p(out))
        return out, None, None, None


def routing_usable(logits: torch.Tensor) -> bool:
    """Can :func:`route_top_k` serve these scores (float32 on the CPU, a compiler)?"""
    return (logits.device.type == "cpu" and logits.dtype == torch.float32
            and _routing_kernels() is not None)


def route_top_k(logits: torch.Tensor, k: int, sel: torch.Tensor | None = None, *,
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The k experts of each token (T, k), best clean score first, and their combine weights (T, k):
    ``softmax`` over the k chosen logits (``normalize``) or their ``softmax(logits)`` probabilities.
    ``sel`` (T, E): the scores to select by (default the logits; the logits plus Gumbel noise in a
    Gumbel gate). Equals :func:`mpnn.moe.gates.route_top_k`'s experts and weights; ties are broken
    towards the lower expert index."""
    logits = logits.contiguous()
    sel = logits.detach() if sel is None else sel.detach().contiguous()
    return _TopKRoute.apply(logits, sel, int(k), bool(normalize))

