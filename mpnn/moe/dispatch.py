"""Dispatch: tokens to their experts, one grouped (or batched) matmul over all experts, outputs combined back.

Every function takes R independent routing problems at once (leading axis R: the replicas of
:class:`~mpnn.moe.stacked.StackedMoE`; R = 1 for one layer) over ``experts``, an
:class:`~mpnn.moe.experts.Experts` of R*E experts, experts ``r*E .. r*E+E-1`` belonging to problem r.

* token choice (:func:`plan_dispatch`, :func:`dispatch_token_choice`): assignments are stably sorted
  by expert (first choices of all tokens before second choices, then token order, as in GShard),
  each gets its position in the expert's buffer, assignments past the capacity
  ``C = ceil(c * k * T / E)`` are dropped (combine weight zero). ``capacity_factor=None`` is
  dropless. The kept assignments are then sorted by expert once (:func:`sorted_assignments`), every
  expert runs on its own contiguous rows (:meth:`~mpnn.moe.experts.Experts.forward_sorted`: one
  grouped matmul per layer, no padding to the largest load, as in MegaBlocks' dropless MoE) and
  one ``index_add`` sums the weighted rows back into their tokens;
* expert choice (:func:`dispatch_expert_choice`, Zhou et al. 2022): each expert takes its top
  ``C = ceil(c * T / E)`` tokens of a group by router probability;
* soft MoE (:func:`dispatch_soft`, Puigcerver et al. 2023): slots ``D^T X`` with
  ``D = softmax_tokens(X Phi)``, outputs ``Y = C Ỹ`` with ``C = softmax_slots(X Phi)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import fused
from .experts import Experts


def capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """Expert buffer size ``ceil(c * k * T / E)``, at least 1."""
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be positive (or None for dropless), got {capacity_factor}")
    return max(1, math.ceil(capacity_factor * k * n_tokens / n_experts - 1e-9))


@dataclass
class DispatchPlan:
    """Where each of the k*T assignments goes; assignment a = rank * T + token."""

    capacity: int
    position: torch.Tensor    # (k*T,) position in its expert's buffer (before dropping)
    keep: torch.Tensor        # (k*T,) bool, position < capacity
    slot: torch.Tensor        # (k*T,) expert * capacity + position, or E*capacity (padding) if dropped
    slot_token: torch.Tensor  # (E*capacity,) token held by each buffer slot, T for an empty slot
    load: torch.Tensor        # (E,) assignments requested per expert


def plan_dispatch(experts: torch.Tensor, n_experts: int, capacity_factor: float | None, *,
                  buffer: int | None = None) -> DispatchPlan:
    """Vectorised buffer positions for token-choice routing ``experts`` (T, k), see the module docstring.

    ``buffer`` sets the buffer size directly (overriding ``capacity_factor``): R routing problems
    flattened into one give every expert the capacity of one problem's T tokens.
    """
    n_tokens, k = experts.shape
    flat = experts.t().reshape(-1)                                      # (k*T,) rank-major priority
    token = torch.arange(n_tokens, device=experts.device).repeat(k)
    order = torch.argsort(flat, stable=True)
    load = torch.bincount(flat, minlength=n_experts)
    start = torch.cumsum(load, 0) - load
    position = torch.empty_like(flat)
    position[order] = torch.arange(flat.numel(), device=flat.device) - start[flat[order]]
    if buffer is not None:
        cap = int(buffer)
    else:
        cap = int(load.max()) if capacity_factor is None else capacity(n_tokens, n_experts, k, capacity_factor)
    keep = position < cap
    slot = torch.where(keep, flat * cap + position, torch.full_like(flat, n_experts * cap))
    slot_token = torch.full((n_experts * cap + 1,), n_tokens, dtype=torch.long, device=flat.device)
    slot_token[slot] = token          # dropped assignments all land in the discarded padding slot
    return DispatchPlan(cap, position, keep, slot, slot_token[:-1], load)


def sorted_assignments(routes: torch.Tensor, plan: DispatchPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept assignments sorted by expert (stably: the plan's priority order within an expert).

    ``routes`` (N, k) experts of each token. Returns ``order`` (M,) assignment ids ``a = rank*N + token``,
    ``token`` (M,) their tokens and ``counts`` (E,) kept assignments per expert: the rows of
    expert e are one contiguous slice, so the experts compute exactly their M rows (no padding).
    """
    n_tok = routes.shape[0]
    e_of = routes.t().reshape(-1)                                        # (k*N,) expert of each assignment
    kept = plan.keep.nonzero().squeeze(1)
    order = kept.index_select(0, torch.argsort(e_of.index_select(0, kept), stable=True))
    counts = torch.bincount(e_of.index_select(0, kept), minlength=plan.load.numel())
    return order, order % n_tok, counts


def dispatch_token_choice(x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, experts: Experts,
                          capacity_factor: float | None, layer: tuple | None = None):
    """``y_t = sum_j keep_tj w_tj f_{e_tj}(x_t)`` for token-choice routing of R groups of T tokens.

    x (R, T, d); ``chosen`` (R, T, k) experts of each token (0..E-1 within its group), ``weights``
    (R, T, k) their combine weights. Returns ``y`` (R, T, d_out), the (R, T, E) assignment mask of
    the experts that processed each token, and the (R,) share of assignments dropped.
    ``layer`` = (module, its input): the path is then chosen by timing the whole module (gate, dispatch
    and backward) on a copy, as it runs, rather than the dispatch alone (:func:`token_choice_path`).
    """
    R, T, d = x.shape
    k = chosen.shape[-1]
    E = experts.n_experts // R
    cap = None if capacity_factor is None else capacity(T, E, k, capacity_factor)
    path = token_choice_path(x, chosen, weights, experts, cap, layer)
    return _token_choice(path, x, chosen, weights, experts, cap)


TOKEN_CHOICE_PATHS = ("compiled", "compiled-grouped-gemm", "torch-grouped", "torch-loop")


def token_choice_path(x, chosen, weights, experts: Experts, cap, layer: tuple | None = None) -> str:
    """Which implementation serves this layer's shape on this machine: the compiled kernels (with
    the book's GEMM or torch's ``grouped_mm``) or torch alone (grouped matmuls, or a loop over the
    experts), measured once per shape class by :func:`mpnn.infra.native.choose` (forward, and backward
    when gradients are on). Without the compiled kernels the torch paths are compared alone.

    With ``layer`` = (module, input) each candidate runs a copy of the whole module on a copy of its
    input, the path forced: measured on this machine, the dispatch alone favoured the compiled path by
    10-20% against the same layer timed whole (its gate and the gate's backward around it)."""
    R, T, d = x.shape
    k = chosen.shape[-1]
    E = experts.n_experts // R
    training = torch.is_grad_enabled() and (x.requires_grad or experts.w1.requires_grad)
    compiled = fused.usable(x, weights, experts.w1, experts.b1, experts.w2, experts.b2)
    if not compiled and not (x.device.type == "cpu" and x.dtype == torch.float32):
        return "torch-loop" if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) else "torch-grouped"
    from mpnn.infra import native
    names = [p for p in TOKEN_CHOICE_PATHS if compiled or p.startswith("torch")]
    key = {"R": R, "E": E, "k": k, "tokens": 1 << max(0, (R * T - 1).bit_length()), "d": d,
           "h": experts.d_hidden, "out": experts.d_out, "capacity": cap is not None, "training": training, "compiled": compiled}

    if layer is not None:
        key["context"] = "layer"
        return native.choose("moe.token_choice", key, lambda: whole_layer_candidates(*layer, names, training),
                             names=names)

    def candidates():              # built only when the choice is measured (copies of the inputs)
        import copy
        probe = copy.deepcopy(experts)
        xs, ws = x.detach().clone(), weights.detach().clone()
        grad = {}      # a dense upstream gradient, as in training (y.sum() would hand back a stride-0 one)

        def candidate(path):
            def run():
                if training:
                    with torch.enable_grad():
                        xg, wg = xs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
                        y, _, _ = _token_choice(path, xg, chosen, wg, probe, cap)
                        y.backward(grad.setdefault("y", torch.randn_like(y)))
                    probe.zero_grad(set_to_none=True)
                else:
                    with torch.no_grad():
                        _token_choice(path, xs, chosen, ws, probe, cap)
            return run
        return {p: candidate(p) for p in names}
    # margin 0.9: the measurement isolates the expert MLP on fixed routing; in a whole layer (gate, its
    # backward) the compiled path measured up to 1.1x the torch path that it beat here in isolation
    return native.choose("moe.token_choice", key, candidates, names=names, margin=0.9)


def whole_layer_candidates(module: torch.nn.Module, x: torch.Tensor, names: list[str], training: bool) -> dict:
    """One zero-argument call per path: a copy of ``module`` on a copy of ``x``, the path forced,
    forward and (``training``) backward of a dense random upstream gradient, as in a training step."""
    import copy

    from mpnn.infra import native
    probe, xs, grad = copy.deepcopy(module), x.detach().clone(), {}

    def candidate(path):
        def run():
            with native.forced("moe.token_choice", path):
                if training:
                    with torch.enable_grad():
                        y = probe(xs)[0]
                        y.backward(grad.setdefault("y", torch.randn_like(y)))
                    probe.zero_grad(set_to_none=True)
                else:
                    with torch.no_grad():
                        probe(xs)
        return run
    return {p: candidate(p) for p in names}


def _token_choice(path: str, x, chosen, weights, experts: Experts, cap):
    R, T, d = x.shape
    k = chosen.shape[-1]
    E = experts.n_experts // R
    n_tok = R * T
    if path.startswith("compiled"):
        p = fused.plan(chosen.reshape(n_tok, k), R, E, cap)                # one compiled pass, same plan
        y = fused.sorted_expert_mlp(x.reshape(n_tok, d), weights.reshape(n_tok, k), p,
                                    experts.w1, experts.b1, experts.w2, experts.b2,
                                    how="native" if path == "compiled" else "grouped")
        return y.view(R, T, -1), p.assignment.view(R, T, E), p.dropped
    routes = (chosen + E * torch.arange(R, device=x.device).view(R, 1, 1)).reshape(n_tok, k)
    plan = plan_dispatch(routes, R * E, None, buffer=cap)
    order, token, counts = sorted_assignments(routes, plan)
    rows = x.reshape(n_tok, d).index_select(0, token)
    per = experts._forward_grouped(rows, counts) if path == "torch-grouped" else experts._forward_slices(rows, counts)
    w = weights.reshape(n_tok, k).t().reshape(-1).index_select(0, order)
    y = per.new_zeros(n_tok, per.shape[-1]).index_add(0, token, per * w.unsqueeze(-1))
    kept = plan.keep.view(k, n_tok).t().to(x.dtype)
    assignment = torch.zeros(n_tok, E, device=x.device, dtype=x.dtype).scatter_(
        -1, chosen.reshape(n_tok, k), kept)
    dropped = 1.0 - plan.keep.view(k, R, T).float().mean((0, 2))
    return y.view(R, T, -1), assignment.view(R, T, E), dropped


def dispatch_expert_choice(x: torch.Tensor, probs: torch.Tensor, experts: Experts, capacity_factor: float):
    """Expert choice: expert e of problem r takes its top-C tokens of every group, ``y_t = sum_e p_te f_e(x_t)``
    over the experts that took token t.

    x (R, G, T, d) (G groups of T tokens), probs (R, G, T, E). Returns y (R, G, T, d_out) and the
    (R, G, T, E) assignment mask.
    """
    R, G, T, d = x.shape
    E = probs.shape[-1]
    cap = min(T, capacity(T, E, 1, capacity_factor))
    weight, token = probs.transpose(-1, -2).topk(cap, dim=-1)           # (R, G, E, C)
    flat_token = token + T * torch.arange(R * G, device=x.device).view(R, G, 1, 1)   # into R*G*T
    buf = x.reshape(R * G * T, d)[flat_token].transpose(1, 2).reshape(R * E, G * cap, d)
    out = experts(buf).view(R, E, G, cap, -1).transpose(1, 2) * weight.unsqueeze(-1)   # (R, G, E, C, d_out)
    y = out.new_zeros(R * G * T, out.shape[-1]).index_add(0, flat_token.reshape(-1),
                                                          out.reshape(-1, out.shape[-1]))
    assignment = torch.zeros(R, G, E, T, device=x.device, dtype=x.dtype).scatter_(-1, token, 1.0)
    return y.view(R, G, T, -1), assignment.transpose(-1, -2)


def dispatch_soft(x: torch.Tensor, logits: torch.Tensor, experts: Experts, slots_per_expert: int):
    """Soft MoE: ``Y = softmax_slots(L) f(softmax_tokens(L)^T X)`` with ``L = X Phi``, per group.

    x (R, G, T, d), logits (R, G, T, E*S). Returns y (R, G, T, d_out) and the (R, G, T, E) combine
    mass of each expert (rows sum to 1).
    """
    R, G, T, d = x.shape
    S = slots_per_expert
    E = logits.shape[-1] // S
    dispatch, combine = torch.softmax(logits, dim=-2), torch.softmax(logits, dim=-1)
    slots = dispatch.transpose(-1, -2) @ x                               # (R, G, E*S, d)
    buf = slots.view(R, G, E, S, d).transpose(1, 2).reshape(R * E, G * S, d)
    out = experts(buf).view(R, E, G, S, -1).transpose(1, 2).reshape(R, G, E * S, -1)
    assignment = combine.detach().view(R, G, T, E, S).sum(-1)
    return combine @ out, assignment
