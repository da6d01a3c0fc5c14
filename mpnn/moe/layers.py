"""MoE layers: a gate or router, stacked experts, and the routing statistics of every call.

Every layer's ``forward`` returns ``(y, stats)``: the output and a :class:`RoutingStats` (the
balancing loss to add to the task loss, which experts processed each token, the share of
assignments dropped). Nothing is left on the module between calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mpnn.switch import LearnedSwitch

from .dispatch import dispatch_expert_choice, dispatch_soft, dispatch_token_choice
from .experts import Experts
from .gates import NoisyTopKGate, TopKGate, switch_gate


@dataclass
class RoutingStats:
    """What one forward pass of an MoE layer routed.

    For R stacked replicas (:class:`~mpnn.moe.stacked.StackedMoE`) every field gains a leading
    replica axis: ``aux_loss`` (R,), ``assignment`` (R, T, E), ``dropped`` (R,).
    """

    aux_loss: torch.Tensor            # () balancing + z losses, weighted, to add to the task loss
    assignment: torch.Tensor | None   # (T, E) weight with which each expert processed each token; None: dense
    dropped: torch.Tensor             # () share of token-expert assignments dropped (over capacity)


def _groups(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """(T, d) -> (1, T, d); (G, T, d) kept: routing happens within each group of T tokens."""
    if x.dim() == 2:
        return x.unsqueeze(0), (x.shape[0],)
    if x.dim() == 3:
        return x, x.shape[:2]
    raise ValueError(f"expected tokens (T, d) or groups (G, T, d), got shape {tuple(x.shape)}")


class TokenChoiceMoE(nn.Module):
    """Each token picks experts with ``gate``; ``capacity_factor`` caps buffers (``None``: dropless).

    ``eval_capacity_factor`` applies in eval mode (default ``None``: dropless, so a token's output
    does not depend on the other tokens of its batch).
    forward: (..., d_in) -> ((..., d_out), stats); leading dimensions are flattened into T tokens;
    ``stats.assignment`` is the (T, E) binary mask of the experts that processed each token.
    """

    def __init__(self, gate: nn.Module, experts: Experts, *, capacity_factor: float | None = None,
                 eval_capacity_factor: float | None = None):
        super().__init__()
        if gate.n_experts != experts.n_experts:
            raise ValueError(f"gate routes to {gate.n_experts} experts but there are {experts.n_experts}")
        self.gate, self.experts = gate, experts
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.k = gate.k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        lead, d = x.shape[:-1], x.shape[-1]
        x = x.reshape(-1, d)                                             # (T, d)
        r = self.gate(x)
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        y, assignment, dropped = dispatch_token_choice(x[None], r.experts[None], r.weights[None],
                                                       self.experts, cf, layer=(self, x))
        return y[0].view(*lead, -1), RoutingStats(r.aux_loss, assignment[0].detach(), dropped[0])

    def active_flops_per_token(self) -> float:
        d, e = self.experts.d_in, self.experts.n_experts
        gate = 2 * d * e * (2 if isinstance(self.gate, NoisyTopKGate) else 1)
        return self.k * self.experts.flops_per_token() + gate


class ExpertChoiceMoE(nn.Module):
    """Expert-choice routing (Zhou et al. 2022): expert e processes its top-C tokens of each group.

    ``C = ceil(c * T / E)`` so on average each token gets ``c`` experts; the router is a
    :class:`~mpnn.switch.LearnedSwitch` in softmax mode; weights are the router probabilities.
    forward: (T, d) or (G, T, d) -> (same leading shape with d_out, stats with a (G*T, E) assignment).
    """

    def __init__(self, in_features: int, experts: Experts, *, capacity_factor: float = 1.0):
        super().__init__()
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive, got {capacity_factor}")
        self.switch = LearnedSwitch(in_features, experts.n_experts, mode="softmax")
        self.experts, self.capacity_factor = experts, capacity_factor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        xg, lead = _groups(x)
        y, assignment = dispatch_expert_choice(xg[None], self.switch(xg)[None], self.experts,
                                               self.capacity_factor)
        stats = RoutingStats(x.new_zeros(()), assignment.reshape(-1, self.experts.n_experts), x.new_zeros(()))
        return y.view(*lead, -1), stats

    def active_flops_per_token(self) -> float:
        return self.capacity_factor * self.experts.flops_per_token() + 2 * self.experts.d_in * self.experts.n_experts


class SoftMoE(nn.Module):
    """Soft MoE (Puigcerver et al. 2023): E*S slots, each a softmax-weighted mixture of a group's tokens.

    ``logits = X Phi`` (T, E*S); dispatch ``D = softmax over tokens``; slot inputs ``D^T X``; expert e
    processes its S slots; combine ``C = softmax over slots``; ``Y = C Ỹ``. Fully differentiable, no
    token is dropped, but every output depends on all tokens of its group.
    forward: (T, d) or (G, T, d) -> (same leading shape with d_out, stats with the (G*T, E) combine mass).
    """

    def __init__(self, in_features: int, experts: Experts, *, slots_per_expert: int = 1):
        super().__init__()
        if slots_per_expert < 1:
            raise ValueError(f"slots_per_expert must be >= 1, got {slots_per_expert}")
        self.experts, self.slots = experts, slots_per_expert
        n = experts.n_experts * slots_per_expert
        self.phi = nn.Parameter(torch.randn(in_features, n) / math.sqrt(in_features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        xg, lead = _groups(x)
        y, assignment = dispatch_soft(xg[None], (xg @ self.phi)[None], self.experts, self.slots)
        stats = RoutingStats(x.new_zeros(()), assignment.reshape(-1, self.experts.n_experts), x.new_zeros(()))
        return y.view(*lead, -1), stats

    def active_flops_per_token(self, tokens_per_group: int) -> float:
        """Experts on the slots plus dispatch and combine, ``2 E S (2 d_in + d_out)``, per token of a group."""
        n = self.experts.n_experts * self.slots
        d_in, d_out = self.experts.d_in, self.experts.d_out
        return n / tokens_per_group * self.experts.flops_per_token() + 2 * n * (2 * d_in + d_out)


class DenseMLP(nn.Module):
    """Dense baseline ``relu(x W1 + b1) W2 + b2``: one expert that every token uses.

    forward: (..., d_in) -> ((..., d_out), stats with no assignment and zero losses).
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.experts = Experts(1, d_in, d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        lead = x.shape[:-1]
        y = self.experts(x.reshape(1, -1, x.shape[-1])).view(*lead, -1)
        return y, RoutingStats(x.new_zeros(()), None, x.new_zeros(()))

    def active_flops_per_token(self) -> float:
        return self.experts.flops_per_token()


KINDS = ("top1", "top2", "switch", "noisy_top2", "expert_choice", "soft", "dense")


def make_moe(kind: str, d_in: int, d_hidden: int, d_out: int, n_experts: int, *,
             capacity_factor: float | None = None, alpha: float = 0.01, z_coef: float = 1e-3,
             slots_per_expert: int = 1, k: int | None = None) -> nn.Module:
    """Build a named MoE layer with ``n_experts`` MLP experts ``d_in -> d_hidden -> d_out``.

    kinds: ``dense`` (:class:`DenseMLP`, ``n_experts`` ignored), ``top1`` / ``top2`` (top-k softmax,
    renormalised, Switch aux loss with ``alpha``), ``switch`` (:func:`~mpnn.moe.gates.switch_gate`),
    ``noisy_top2`` (:class:`~mpnn.moe.gates.NoisyTopKGate`), ``expert_choice`` (capacity factor
    ``capacity_factor`` or 1), ``soft`` (``slots_per_expert``). ``k`` overrides top-k's k.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown MoE kind {kind!r}; choose one of {KINDS}")
    # the E experts are drawn first for every kind, "dense" included (and then unused), so a seed
    # gives the initialisations the book's results were produced with
    experts = Experts(n_experts, d_in, d_hidden, d_out)
    if kind == "dense":
        return DenseMLP(d_in, d_hidden, d_out)
    if kind in ("top1", "top2"):
        gate = TopKGate(d_in, n_experts, k=k or int(kind[-1]), alpha=alpha, z_coef=z_coef)
        return TokenChoiceMoE(gate, experts, capacity_factor=capacity_factor)
    if kind == "switch":
        return TokenChoiceMoE(switch_gate(d_in, n_experts, alpha=alpha, z_coef=z_coef), experts,
                              capacity_factor=capacity_factor)
    if kind == "noisy_top2":
        w = 0.1 if alpha > 0 else 0.0          # Shazeer et al.'s weights; alpha = 0 turns balancing off
        gate = NoisyTopKGate(d_in, n_experts, k=k or 2, w_importance=w, w_load=w)
        return TokenChoiceMoE(gate, experts, capacity_factor=capacity_factor)
    if kind == "expert_choice":
        return ExpertChoiceMoE(d_in, experts, capacity_factor=capacity_factor or 1.0)
    return SoftMoE(d_in, experts, slots_per_expert=slots_per_expert)
