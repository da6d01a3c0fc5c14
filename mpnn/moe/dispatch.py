"""Dispatch: tokens to per-expert buffers, one batched matmul over all experts, outputs combined back.

Every function takes R independent routing problems at once (leading axis R: the replicas of
:class:`~mpnn.moe.stacked.StackedMoE`; R = 1 for one layer) over ``experts``, an
:class:`~mpnn.moe.experts.Experts` of R*E experts, experts ``r*E .. r*E+E-1`` belonging to problem r.

* token choice (:func:`plan_dispatch`, :func:`dispatch_token_choice`): assignments are stably sorted
  by expert (first choices of all tokens before second choices, then token order, as in GShard),
  each gets its position in the expert's buffer, assignments past the capacity
  ``C = ceil(c * k * T / E)`` are dropped (combine weight zero). ``capacity_factor=None`` is
  dropless (``C`` = the largest expert load; a collapsed router's overflow runs in a second matmul);
* expert choice (:func:`dispatch_expert_choice`, Zhou et al. 2022): each expert takes its top
  ``C = ceil(c * T / E)`` tokens of a group by router probability;
* soft MoE (:func:`dispatch_soft`, Puigcerver et al. 2023): slots ``D^T X`` with
  ``D = softmax_tokens(X Phi)``, outputs ``Y = C Ỹ`` with ``C = softmax_slots(X Phi)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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


def _padded_outputs(flat: torch.Tensor, plan: DispatchPlan, experts: Experts) -> torch.Tensor:
    """Expert outputs of every assignment, (k*N, d_out), from one buffer of ``plan.capacity`` per expert.

    Empty slots hold token 0 and dropped assignments read slot 0: the caller weights both by 0.
    """
    n_tok, d = flat.shape
    n_slots = experts.n_experts * plan.capacity
    buf = flat.index_select(0, plan.slot_token.clamp_max(n_tok - 1))
    out = experts(buf.view(experts.n_experts, plan.capacity, d)).reshape(n_slots, -1)
    return out.index_select(0, plan.slot.clamp_max(n_slots - 1))


def _two_level_outputs(flat: torch.Tensor, routes: torch.Tensor, plan: DispatchPlan, experts: Experts,
                       split: int) -> torch.Tensor:
    """Dropless expert outputs of every assignment without padding every buffer to the largest load.

    Every expert runs its first ``split`` assignments in one batched matmul; only the experts with
    more (``load > split``) run the rest, in a second batched matmul on their own weights, padded
    to the largest overflow. Same outputs as one buffer of the largest load (a collapsed router
    sends a whole batch to one expert: that buffer would make every expert as large).
    Returns (k*N, d_out), one row per assignment in the plan's order.
    """
    n_tok, d = flat.shape
    n_exp = experts.n_experts
    e_of = routes.t().reshape(-1)                                        # (k*N,) expert of each assignment
    token = torch.arange(n_tok, device=flat.device).repeat(routes.shape[1])
    pos = plan.position
    heavy = (plan.load > split).nonzero().flatten()                      # experts that overflow
    over = plan.capacity - split
    rank_of = torch.full((n_exp,), -1, dtype=torch.long, device=flat.device)
    rank_of[heavy] = torch.arange(heavy.numel(), device=flat.device)
    first = pos < split
    n1 = n_exp * split
    slot = torch.where(first, e_of * split + pos, n1 + rank_of[e_of].clamp_min(0) * over + (pos - split))
    n_slots = n1 + heavy.numel() * over
    slot_token = torch.full((n_slots + 1,), n_tok, dtype=torch.long, device=flat.device)
    slot_token[slot] = token
    buf = flat.index_select(0, slot_token[:-1].clamp_max(n_tok - 1))
    out1 = experts(buf[:n1].view(n_exp, split, d)).reshape(n1, -1)
    out2 = experts.forward_some(heavy, buf[n1:].view(heavy.numel(), over, d))
    return torch.cat([out1, out2.reshape(-1, out1.shape[-1])]).index_select(0, slot)


def dispatch_token_choice(x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, experts: Experts,
                          capacity_factor: float | None):
    """``y_t = sum_j keep_tj w_tj f_{e_tj}(x_t)`` for token-choice routing of R groups of T tokens.

    x (R, T, d); ``chosen`` (R, T, k) experts of each token (0..E-1 within its group), ``weights``
    (R, T, k) their combine weights. Returns ``y`` (R, T, d_out), the (R, T, E) assignment mask of
    the experts that processed each token, and the (R,) share of assignments dropped.
    """
    R, T, d = x.shape
    k = chosen.shape[-1]
    E = experts.n_experts // R
    routes = (chosen + E * torch.arange(R, device=x.device).view(R, 1, 1)).reshape(R * T, k)
    plan = plan_dispatch(routes, R * E, None,
                         buffer=None if capacity_factor is None else capacity(T, E, k, capacity_factor))
    n_tok = R * T
    flat = x.reshape(n_tok, d)
    split = math.ceil(1.25 * k * T / E)                                  # buffer of a typical expert
    if capacity_factor is None and plan.capacity > 2 * split:
        per = _two_level_outputs(flat, routes, plan, experts, split)
    else:
        per = _padded_outputs(flat, plan, experts)                       # (k*R*T, d_out)
    w = weights.reshape(n_tok, k).t().reshape(-1) * plan.keep           # dropped -> 0
    y = (per * w.unsqueeze(-1)).view(k, n_tok, -1).sum(0)
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
