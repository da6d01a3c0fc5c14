"""Balancing losses of MoE routers, on (T, E) routing tensors or (R, T, E) for R replicas at once.

Every function reduces over the token axis (-2) and the expert axis (-1) and keeps the leading
(replica) axes: a (T, E) input gives a scalar, an (R, T, E) input one loss per replica.
"""
from __future__ import annotations

import torch


def cv_squared(v: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation over the last axis, population variance / mean^2
    (Shazeer et al. 2017): (..., E) -> (...)."""
    v = v.float()
    return v.var(dim=-1, unbiased=False) / (v.mean(-1) ** 2 + eps)


def switch_aux_loss(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``E * sum_i f_i P_i`` (Fedus et al. 2022, eq. 4), before the factor alpha: (..., T, E) -> (...).

    probs: router softmax; mask: hard assignments (k ones per token). ``f_i`` = share of the T*k
    assignments that go to expert i (a constant), ``P_i`` = mean of ``probs`` over the tokens.
    Equals 1 under perfectly uniform routing.
    """
    n_experts = probs.shape[-1]
    mask = mask.detach()
    f = mask.sum(-2) / mask.sum((-2, -1)).clamp_min(1).unsqueeze(-1)
    return n_experts * (f * probs.mean(-2)).sum(-1)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss ``mean_x logsumexp_i(s_i(x))^2`` (Zoph et al. 2022, eq. 5): (..., T, E) -> (...)."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean(-1)
