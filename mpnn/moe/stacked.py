"""R independent replicas of one MoE layer evaluated (and trained) as one module."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import dispatch_expert_choice, dispatch_soft, dispatch_token_choice
from .experts import Experts
from .gates import NoisyTopKGate, route_noisy_top_k, route_top_k
from .layers import DenseMLP, ExpertChoiceMoE, RoutingStats, SoftMoE, TokenChoiceMoE


def _kind_of(models: list[nn.Module]) -> str:
    """The one layer kind of ``models`` (token-choice layers must also share their gate's class)."""
    if not models:
        raise ValueError("StackedMoE needs at least one model")
    kinds = {type(m) for m in models}
    if kinds == {TokenChoiceMoE}:
        kinds = {type(m.gate) for m in models}
    if len(kinds) != 1:
        raise ValueError(f"StackedMoE needs models of one kind, got {sorted(k.__name__ for k in kinds)}")
    if not isinstance(models[0], (DenseMLP, TokenChoiceMoE, ExpertChoiceMoE, SoftMoE)):
        raise TypeError(f"StackedMoE cannot stack {type(models[0]).__name__}")
    return type(models[0]).__name__


def _gate_config(m: TokenChoiceMoE) -> tuple:
    g = m.gate
    rule = ((g.k, g.w_importance, g.w_load) if isinstance(g, NoisyTopKGate) else
            (g.k, g.normalize, g.alpha, g.z_coef, g.switch.mode))
    return rule, m.capacity_factor, m.eval_capacity_factor


class StackedMoE(nn.Module):
    """R independent replicas of one layer, evaluated (and trained) as one module.

    ``models``: R modules of the same kind and shape, each initialised on its own (one seed each):
    :class:`~mpnn.moe.layers.DenseMLP`, :class:`~mpnn.moe.layers.TokenChoiceMoE` (top-k or noisy
    top-k gate), :class:`~mpnn.moe.layers.ExpertChoiceMoE` or :class:`~mpnn.moe.layers.SoftMoE`.
    Their parameters are copied into stacked tensors: the experts of replica r are experts
    ``r*E .. r*E+E-1`` of one :class:`~mpnn.moe.experts.Experts` of R*E experts, and the gate
    weights gain a leading replica dimension, so every step is a few batched matmuls whatever R is.

    ``forward`` maps x (R, T, d_in) -> ((R, T, d_out), stats): replica r sees only ``x[r]`` (its own
    batch; for expert choice and soft MoE, its own routing group) and its own parameters, and gives
    what ``models[r](x[r])`` gives (up to float summation order); ``stats`` holds each replica's
    balancing loss (R,) (the gradient of replica r's parameters is that of its own loss), assignment
    (R, T, E) and dropped share (R,). Token-choice buffers hold ``ceil(c k T / E)`` assignments per
    expert, as in one group of T tokens. :meth:`write_back` copies the parameters into the originals.
    """

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.kind = _kind_of(models)
        self._models = list(models)            # a plain list: not registered as submodules
        self.replicas = len(models)
        first = models[0]
        shapes = {tuple(m.experts.w1.shape) + tuple(m.experts.w2.shape) for m in models}
        if len(shapes) != 1:
            raise ValueError(f"the replicas' experts differ in shape: {sorted(shapes)}")
        ex = first.experts
        self.n_experts = ex.n_experts
        self.experts = Experts(self.replicas * self.n_experts, ex.d_in, ex.d_hidden, ex.d_out)
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                getattr(self.experts, name).copy_(torch.cat([getattr(m.experts, name).detach() for m in models]))
        if isinstance(first, TokenChoiceMoE):
            self._stack_token_choice(models)
        elif isinstance(first, ExpertChoiceMoE):
            if len({m.capacity_factor for m in models}) != 1:
                raise ValueError("the replicas' capacity factors differ")
            self.capacity_factor = first.capacity_factor
            self.gate_w = self._stack(lambda m: m.switch.gate.weight.t())
            self.gate_b = self._stack(lambda m: m.switch.gate.bias)
        elif isinstance(first, SoftMoE):
            if len({m.slots for m in models}) != 1:
                raise ValueError("the replicas' slot counts differ")
            self.slots = first.slots
            self.phi = self._stack(lambda m: m.phi)                           # (R, d, E*S)

    def _stack(self, get) -> nn.Parameter:
        return nn.Parameter(torch.stack([get(m).detach() for m in self._models]).clone())

    def _stack_token_choice(self, models: list[TokenChoiceMoE]) -> None:
        if len({_gate_config(m) for m in models}) != 1:
            raise ValueError("the replicas' gates or capacities differ")
        first, g = models[0], models[0].gate
        self.k = g.k
        self.noisy = isinstance(g, NoisyTopKGate)
        self.capacity_factor, self.eval_capacity_factor = first.capacity_factor, first.eval_capacity_factor
        self.gate_w = self._stack(lambda m: m.gate.switch.gate.weight.t())        # (R, d, E)
        self.gate_b = self._stack(lambda m: m.gate.switch.gate.bias)              # (R, E)
        if self.noisy:
            self.noise_w = self._stack(lambda m: m.gate.noise.weight.t())         # (R, d, E)
            self.w_importance, self.w_load = g.w_importance, g.w_load
        else:
            self.normalize, self.alpha, self.z_coef = g.normalize, g.alpha, g.z_coef
            self.gumbel = g.switch.mode == "gumbel"

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, RoutingStats]:
        """x (R, T, d_in) -> ((R, T, d_out), stats); ``eps`` (R, T, E) overrides a noisy gate's N(0, 1) noise."""
        if x.dim() != 3 or x.shape[0] != self.replicas:
            raise ValueError(f"expected x of shape ({self.replicas}, T, d), got {tuple(x.shape)}")
        zeros = x.new_zeros(self.replicas)
        if self.kind == "DenseMLP":
            return self.experts(x), RoutingStats(zeros, None, zeros)
        if self.kind == "TokenChoiceMoE":
            return self._token_choice(x, eps)
        if self.kind == "ExpertChoiceMoE":
            probs = torch.softmax(torch.baddbmm(self.gate_b.unsqueeze(1), x, self.gate_w), dim=-1)
            y, assignment = dispatch_expert_choice(x[:, None], probs[:, None], self.experts, self.capacity_factor)
        else:
            y, assignment = dispatch_soft(x[:, None], torch.bmm(x, self.phi)[:, None], self.experts, self.slots)
        return y[:, 0], RoutingStats(zeros, assignment[:, 0], zeros)

    def _token_choice(self, x: torch.Tensor, eps: torch.Tensor | None) -> tuple[torch.Tensor, RoutingStats]:
        logits = torch.baddbmm(self.gate_b.unsqueeze(1), x, self.gate_w)    # (R, T, E) clean scores
        if self.noisy:
            r = route_noisy_top_k(logits, F.softplus(torch.bmm(x, self.noise_w)), self.k,
                                  w_importance=self.w_importance, w_load=self.w_load,
                                  training=self.training, eps=eps)
        else:
            r = route_top_k(logits, self.k, normalize=self.normalize, gumbel=self.gumbel and self.training,
                            alpha=self.alpha, z_coef=self.z_coef)
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        y, assignment, dropped = dispatch_token_choice(x, r.experts, r.weights, self.experts, cf,
                                                       layer=(self, x))
        return y, RoutingStats(r.aux_loss, assignment.detach(), dropped)

    # ------------------------------------------------------------------ back to the replicas
    @torch.no_grad()
    def write_back(self) -> list[nn.Module]:
        """Copy the stacked parameters into the original modules; returns them."""
        E = self.n_experts
        for r, m in enumerate(self._models):
            for name in ("w1", "b1", "w2", "b2"):
                getattr(m.experts, name).copy_(getattr(self.experts, name)[r * E:(r + 1) * E])
            if self.kind == "TokenChoiceMoE":
                m.gate.switch.gate.weight.copy_(self.gate_w[r].t())
                m.gate.switch.gate.bias.copy_(self.gate_b[r])
                if self.noisy:
                    m.gate.noise.weight.copy_(self.noise_w[r].t())
            elif self.kind == "ExpertChoiceMoE":
                m.switch.gate.weight.copy_(self.gate_w[r].t())
                m.switch.gate.bias.copy_(self.gate_b[r])
            elif self.kind == "SoftMoE":
                m.phi.copy_(self.phi[r])
        return self._models
