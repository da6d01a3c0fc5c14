"""Mixture-of-experts: width sparsity as a learned switch over stacked experts.

An MoE layer is the switch of :mod:`mpnn.switch` applied to experts ``f_1..f_E``:
``y(x) = sum_i m_i(x) f_i(x)`` with a sparse, learned mask ``m`` (Scardapane et al. 2024, sec. 3).
Only experts with ``m_i(x) != 0`` are evaluated for ``x``. Gates (how ``m`` is computed):

* :class:`TopKGate` -- ``m = softmax(s) * topk_mask(s, k)`` (optionally renormalised over the k kept
  scores, Shazeer et al. 2017 eq. 3-5), ``s = x W + b`` from a :class:`~mpnn.switch.LearnedSwitch`;
  ``noise="gumbel"`` selects with Gumbel-perturbed scores while training (the switch's Gumbel mode).
  Optional Switch-Transformer auxiliary loss (Fedus et al. 2022, eq. 4-6)
  ``alpha * E * sum_i f_i P_i`` (``f_i``: share of assignments to expert i, ``P_i``: mean router
  probability) and router z-loss (Zoph et al. 2022) ``z * mean_x logsumexp(s(x))^2``.
  :func:`SwitchGate` is the top-1 instance (``alpha = 0.01``, unnormalised ``p_i``).
* :class:`NoisyTopKGate` -- ``H = x W_g + eps * softplus(x W_noise)``, ``eps ~ N(0, 1)`` while training,
  ``m = softmax(KeepTopK(H, k))``; importance loss ``w_imp * CV(sum_x m(x))^2`` and load loss
  ``w_load * CV(sum_x P(x, .))^2`` with ``P(x, i) = Phi((x W_g)_i - kth_excluding(H, k, i)) / softplus((x W_noise)_i))``
  (Shazeer et al. 2017, eq. 6-10; CV^2 = population variance / mean^2).
* :class:`ExpertChoiceMoE` -- each expert takes its top ``C = ceil(c * T / E)`` tokens of a group
  by router probability (Zhou et al. 2022); a token may be taken by 0..E experts.
* :class:`SoftMoE` -- slots are convex mixtures of a group's tokens, ``slots = D^T X`` with
  ``D = softmax_tokens(X Phi)``, outputs ``Y = C Ỹ`` with ``C = softmax_slots(X Phi)`` (Puigcerver et al. 2023).

Dispatch for token-choice gates (:func:`plan_dispatch`) is vectorised: assignments are stably sorted by
expert (first choices of all tokens before second choices, then token order, as in GShard), each gets
its position in the expert's buffer, assignments past the capacity ``C = ceil(c * k * T / E)`` are
dropped (their combine weight is zero), and all experts run as one batched matmul over stacked weights
``(E, C, d)``. ``capacity_factor=None`` is dropless (``C`` = the largest expert load).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpnn import determinism
from mpnn.switch import LearnedSwitch, topk_mask

__all__ = [
    "Routing", "DispatchPlan", "Experts", "TopKGate", "SwitchGate", "NoisyTopKGate",
    "capacity", "plan_dispatch", "cv_squared", "switch_aux_loss", "z_loss",
    "TokenChoiceMoE", "ExpertChoiceMoE", "SoftMoE", "DenseMLP", "make_moe", "aux_loss",
    "prepare_mnist", "FitResult", "fit_classifier", "StackedMoE", "fit_replicas",
    "routing_entropy", "expert_digit_table",
]


# ---------------------------------------------------------------- experts

class Experts(nn.Module):
    """E two-layer MLPs ``f_e(x) = relu(x W1_e + b1_e) W2_e + b2_e`` with stacked weights.

    ``forward`` takes one buffer per expert, (E, C, d_in) -> (E, C, d_out), as two batched matmuls.
    Initialised like :class:`torch.nn.Linear` (uniform in +-1/sqrt(fan_in)), independently per expert.
    """

    def __init__(self, n_experts: int, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        if min(n_experts, d_in, d_hidden, d_out) < 1:
            raise ValueError(f"Experts needs positive sizes, got n_experts={n_experts}, "
                             f"d_in={d_in}, d_hidden={d_hidden}, d_out={d_out}")
        b1, b2 = 1 / math.sqrt(d_in), 1 / math.sqrt(d_hidden)
        self.w1 = nn.Parameter(torch.empty(n_experts, d_in, d_hidden).uniform_(-b1, b1))
        self.b1 = nn.Parameter(torch.empty(n_experts, d_hidden).uniform_(-b1, b1))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_hidden, d_out).uniform_(-b2, b2))
        self.b2 = nn.Parameter(torch.empty(n_experts, d_out).uniform_(-b2, b2))

    @property
    def n_experts(self) -> int:
        return self.w1.shape[0]

    @property
    def d_in(self) -> int:
        return self.w1.shape[1]

    @property
    def d_out(self) -> int:
        return self.w2.shape[2]

    def forward(self, buf: torch.Tensor) -> torch.Tensor:  # (E, C, d_in) -> (E, C, d_out)
        h = torch.baddbmm(self.b1.unsqueeze(1), buf, self.w1).relu()  # (E, C, d_hidden)
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)

    def forward_one(self, e: int, x: torch.Tensor) -> torch.Tensor:  # (n, d_in) -> (n, d_out)
        """Expert ``e`` alone (for references and the loop baseline)."""
        return (x @ self.w1[e] + self.b1[e]).relu() @ self.w2[e] + self.b2[e]

    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of one expert on one token."""
        _, d_in, h = self.w1.shape
        return 2 * (d_in * h + h * self.d_out)

    def extra_repr(self) -> str:
        e, d_in, h = self.w1.shape
        return f"n_experts={e}, d_in={d_in}, d_hidden={h}, d_out={self.d_out}"


# ---------------------------------------------------------------- balancing losses

def cv_squared(v: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation, population variance / mean^2 (Shazeer et al. 2017)."""
    v = v.float()
    return v.var(unbiased=False) / (v.mean() ** 2 + eps) if v.numel() > 1 else v.new_zeros(())


def switch_aux_loss(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``E * sum_i f_i P_i`` (Fedus et al. 2022, eq. 4), before the factor alpha.

    probs (T, E) router softmax; mask (T, E) hard assignments (k ones per row).
    ``f_i`` = share of the T*k assignments that go to expert i (a constant), ``P_i`` = mean of ``probs``.
    Equals 1 under perfectly uniform routing.
    """
    n_experts = probs.shape[-1]
    f = mask.detach().sum(0) / mask.detach().sum().clamp_min(1)
    return n_experts * (f * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss ``mean_x logsumexp_i(s_i(x))^2`` (Zoph et al. 2022, eq. 5)."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


# ---------------------------------------------------------------- token-choice gates

def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log u)``, ``u ~ U(0, 1)``, shaped like ``like``.

    Draws ``torch.rand`` exactly as :func:`mpnn.switch.gumbel_softmax` does, so with the same RNG state
    the top-k of ``s + g`` is the hard Gumbel-softmax mask (softmax and 1/tau keep the order).
    """
    u = torch.rand(like.shape, device=like.device, dtype=like.dtype)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


@dataclass
class Routing:
    """A token-choice routing decision for T tokens over E experts."""

    logits: torch.Tensor   # (T, E) clean router scores s(x)
    experts: torch.Tensor  # (T, k) chosen experts, best first
    weights: torch.Tensor  # (T, k) combine weights m_i(x) of the chosen experts (differentiable)
    aux_loss: torch.Tensor  # () the gate's weighted balancing + z losses

    @property
    def n_experts(self) -> int:
        return self.logits.shape[-1]

    def mask(self) -> torch.Tensor:
        """Binary (T, E) mask of chosen experts."""
        return torch.zeros_like(self.logits).scatter_(-1, self.experts, 1.0)

    def combine(self) -> torch.Tensor:
        """Dense (T, E) combine weights m(x) (zeros off the chosen experts)."""
        return torch.zeros_like(self.logits).scatter(-1, self.experts, self.weights)


def _ranked(selection: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (T, k) of the ones of a binary ``selection``, ordered by ``scores`` (best first)."""
    return scores.detach().masked_fill(selection == 0, float("-inf")).topk(k, dim=-1).indices


class TopKGate(nn.Module):
    """Top-k softmax gate on a :class:`~mpnn.switch.LearnedSwitch` (see module docstring).

    noise: ``None`` (deterministic top-k) or ``"gumbel"`` (select the top-k of Gumbel-perturbed scores
    while training, exactly the switch's Gumbel mode; deterministic at eval).
    normalize: combine weights renormalised over the k kept experts (``softmax(KeepTopK(s))``);
    ``False`` keeps the raw ``p_i`` as in the Switch Transformer.
    """

    def __init__(self, in_features: int, n_experts: int, *, k: int = 1, normalize: bool = True,
                 noise: str | None = None, tau: float = 1.0, alpha: float = 0.0, z_coef: float = 0.0):
        super().__init__()
        if noise not in (None, "gumbel"):
            raise ValueError(f"noise must be None or 'gumbel', got {noise!r}")
        if alpha < 0 or z_coef < 0:
            raise ValueError(f"loss weights must be >= 0, got alpha={alpha}, z_coef={z_coef}")
        self.switch = LearnedSwitch(in_features, n_experts, mode="gumbel" if noise else "topk",
                                    k=k, tau=tau)
        self.k, self.normalize, self.alpha, self.z_coef = k, normalize, alpha, z_coef

    @property
    def n_experts(self) -> int:
        return self.switch.n_units

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """The hard (T, E) mask; equals the forward value of ``self.switch`` on the same input and RNG."""
        if self.switch.mode == "gumbel" and self.training:
            return topk_mask(logits.detach() + gumbel_noise(logits), self.k)
        return topk_mask(logits.detach(), self.k)

    def forward(self, x: torch.Tensor) -> Routing:  # x (T, d)
        logits = self.switch.scores(x)                                   # (T, E)
        probs = torch.softmax(logits, dim=-1)
        sel = self.select(logits)
        experts = _ranked(sel, logits, self.k)                           # (T, k)
        if self.normalize:
            weights = torch.softmax(logits.gather(-1, experts), dim=-1)  # softmax(KeepTopK(s))
        else:
            weights = probs.gather(-1, experts)
        aux = logits.new_zeros(())
        if self.alpha:
            aux = aux + self.alpha * switch_aux_loss(probs, sel)
        if self.z_coef:
            aux = aux + self.z_coef * z_loss(logits)
        return Routing(logits, experts, weights, aux)

    def extra_repr(self) -> str:
        return f"k={self.k}, normalize={self.normalize}, alpha={self.alpha}, z_coef={self.z_coef}"


def SwitchGate(in_features: int, n_experts: int, *, alpha: float = 0.01, z_coef: float = 1e-3) -> TopKGate:
    """Switch-Transformer router: top-1, raw ``p_i`` as weight, aux loss ``alpha*E*sum f_i P_i``, z-loss."""
    return TopKGate(in_features, n_experts, k=1, normalize=False, alpha=alpha, z_coef=z_coef)


class NoisyTopKGate(nn.Module):
    """Noisy top-k gating with importance and load losses (Shazeer et al. 2017, see module docstring).

    ``W_g`` (the switch) and ``W_noise`` start at zero, as in the paper.
    """

    def __init__(self, in_features: int, n_experts: int, *, k: int = 2,
                 w_importance: float = 0.1, w_load: float = 0.1):
        super().__init__()
        if not 1 <= k < n_experts:
            raise ValueError(f"noisy top-k needs 1 <= k < n_experts={n_experts} (the load estimator "
                             f"compares with the (k+1)-th score), got k={k}")
        self.switch = LearnedSwitch(in_features, n_experts, mode="topk", k=k)
        self.noise = nn.Linear(in_features, n_experts, bias=False)
        for p in (self.switch.gate.weight, self.switch.gate.bias, self.noise.weight):
            nn.init.zeros_(p)
        self.k, self.w_importance, self.w_load = k, w_importance, w_load

    @property
    def n_experts(self) -> int:
        return self.switch.n_units

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> Routing:
        """x (T, d); ``eps`` (T, E) overrides the N(0, 1) noise (used in training only)."""
        clean = self.switch.scores(x)                                    # (T, E)
        std = F.softplus(self.noise(x))                                  # (T, E)
        if self.training:
            eps = torch.randn_like(clean) if eps is None else eps
            noisy = clean + eps * std
        else:
            noisy = clean
        top = noisy.topk(self.k + 1, dim=-1).values                      # (T, k+1)
        experts = noisy.detach().topk(self.k, dim=-1).indices             # (T, k)
        weights = torch.softmax(noisy.gather(-1, experts), dim=-1)
        sel = torch.zeros_like(clean).scatter_(-1, experts, 1.0)
        gates = torch.zeros_like(clean).scatter(-1, experts, weights)   # (T, E)
        aux = self.w_importance * cv_squared(gates.sum(0))
        if self.training and self.w_load:
            # P(x, i): chance that expert i stays in the top k when only its own noise is redrawn
            threshold = torch.where(sel.bool(), top[:, self.k:self.k + 1], top[:, self.k - 1:self.k])
            p_in = torch.distributions.Normal(0.0, 1.0).cdf((clean - threshold) / std)
            aux = aux + self.w_load * cv_squared(p_in.sum(0))
        return Routing(clean, experts, weights, aux)

    def extra_repr(self) -> str:
        return f"k={self.k}, w_importance={self.w_importance}, w_load={self.w_load}"


# ---------------------------------------------------------------- token-choice dispatch

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
    """Vectorised buffer positions for token-choice routing ``experts`` (T, k), see module docstring.

    ``buffer`` sets the buffer size directly (overriding ``capacity_factor``); :class:`StackedMoE`
    uses it to give every replica's experts the capacity of one group of tokens.
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


def _store_stats(layer: nn.Module, assignment: torch.Tensor, aux: torch.Tensor, dropped: float) -> None:
    layer.aux_loss = aux                       # () added to the task loss by :func:`aux_loss`
    layer.assignment = assignment.detach()     # (T, E) which experts processed each token (weights)
    layer.dropped = dropped                    # share of token-expert assignments dropped


class TokenChoiceMoE(nn.Module):
    """Each token picks experts with ``gate``; ``capacity_factor`` caps buffers (``None``: dropless).

    ``eval_capacity_factor`` applies in eval mode (default ``None``: dropless, so a token's output
    does not depend on the other tokens of its batch).

    forward: (..., d_in) -> (..., d_out); leading dimensions are flattened into T tokens.
    After a call, ``aux_loss``, ``assignment`` (T, E) binary processed mask and ``dropped`` are set.
    """

    def __init__(self, gate: nn.Module, experts: Experts, *, capacity_factor: float | None = None,
                 eval_capacity_factor: float | None = None):
        super().__init__()
        if gate.n_experts != experts.n_experts:
            raise ValueError(f"gate routes to {gate.n_experts} experts but there are {experts.n_experts}")
        self.gate, self.experts = gate, experts
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.k = gate.k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, d = x.shape[:-1], x.shape[-1]
        x = x.reshape(-1, d)                                             # (T, d)
        n_tokens, n_experts = x.shape[0], self.experts.n_experts
        r = self.gate(x)
        plan = plan_dispatch(r.experts, n_experts,
                             self.capacity_factor if self.training else self.eval_capacity_factor)
        # empty slots hold token 0 and dropped assignments read slot 0: both get weight 0 below
        n_slots = n_experts * plan.capacity
        buf = x.index_select(0, plan.slot_token.clamp_max(n_tokens - 1))   # (E*C, d)
        out = self.experts(buf.view(n_experts, plan.capacity, d)).reshape(n_slots, -1)  # (E*C, d_out)
        per = out.index_select(0, plan.slot.clamp_max(n_slots - 1))       # (k*T, d_out)
        w = r.weights.t().reshape(-1) * plan.keep                         # (k*T,) dropped -> 0
        y = (per * w.unsqueeze(-1)).view(self.k, n_tokens, -1).sum(0)     # (T, d_out)
        kept = plan.keep.view(self.k, n_tokens).t().to(x.dtype)          # (T, k)
        assignment = torch.zeros(n_tokens, n_experts, device=x.device).scatter_(-1, r.experts, kept)
        _store_stats(self, assignment, r.aux_loss, 1.0 - float(plan.keep.float().mean()))
        self.routing = r
        return y.view(*lead, -1)

    def active_flops_per_token(self) -> float:
        d, e = self.experts.d_in, self.experts.n_experts
        gate = 2 * d * e * (2 if isinstance(self.gate, NoisyTopKGate) else 1)
        return self.k * self.experts.flops_per_token() + gate


# ---------------------------------------------------------------- expert choice and soft MoE

def _groups(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """(T, d) -> (1, T, d); (G, T, d) kept: routing happens within each group of T tokens."""
    if x.dim() == 2:
        return x.unsqueeze(0), (x.shape[0],)
    if x.dim() == 3:
        return x, x.shape[:2]
    raise ValueError(f"expected tokens (T, d) or groups (G, T, d), got shape {tuple(x.shape)}")


class ExpertChoiceMoE(nn.Module):
    """Expert-choice routing (Zhou et al. 2022): expert e processes its top-C tokens of each group.

    ``C = ceil(c * T / E)`` so on average each token gets ``c`` experts; the router is a
    :class:`~mpnn.switch.LearnedSwitch` in softmax mode; weights are the router probabilities.
    forward: (T, d) or (G, T, d) -> same leading shape with d_out.
    """

    def __init__(self, in_features: int, experts: Experts, *, capacity_factor: float = 1.0):
        super().__init__()
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive, got {capacity_factor}")
        self.switch = LearnedSwitch(in_features, experts.n_experts, mode="softmax")
        self.experts, self.capacity_factor = experts, capacity_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg, lead = _groups(x)
        g, t, d = xg.shape
        e = self.experts.n_experts
        cap = min(t, capacity(t, e, 1, self.capacity_factor))
        probs = self.switch(xg)                                          # (G, T, E)
        weight, token = probs.transpose(1, 2).topk(cap, dim=-1)          # (G, E, C)
        flat_token = (token + t * torch.arange(g, device=x.device).view(g, 1, 1))  # index into G*T
        buf = xg.reshape(g * t, d)[flat_token].permute(1, 0, 2, 3).reshape(e, g * cap, d)
        out = self.experts(buf).view(e, g, cap, -1).permute(1, 0, 2, 3)  # (G, E, C, d_out)
        out = out * weight.unsqueeze(-1)
        y = out.new_zeros(g * t, out.shape[-1]).index_add(0, flat_token.reshape(-1),
                                                          out.reshape(-1, out.shape[-1]))
        assignment = torch.zeros(g, e, t, device=x.device).scatter_(-1, token, 1.0)
        assignment = assignment.transpose(1, 2).reshape(g * t, e)
        _store_stats(self, assignment, x.new_zeros(()), 0.0)
        self.probs = probs.detach()
        return y.view(*lead, -1)

    def active_flops_per_token(self) -> float:
        return self.capacity_factor * self.experts.flops_per_token() + 2 * self.experts.d_in * self.experts.n_experts


class SoftMoE(nn.Module):
    """Soft MoE (Puigcerver et al. 2023): E*S slots, each a softmax-weighted mixture of a group's tokens.

    ``logits = X Phi`` (T, E*S); dispatch ``D = softmax over tokens``; slot inputs ``D^T X``; expert e
    processes its S slots; combine ``C = softmax over slots``; ``Y = C Ỹ``. Fully differentiable, no
    token is dropped, but every output depends on all tokens of its group.
    """

    def __init__(self, in_features: int, experts: Experts, *, slots_per_expert: int = 1):
        super().__init__()
        if slots_per_expert < 1:
            raise ValueError(f"slots_per_expert must be >= 1, got {slots_per_expert}")
        self.experts, self.slots = experts, slots_per_expert
        n = experts.n_experts * slots_per_expert
        self.phi = nn.Parameter(torch.randn(in_features, n) / math.sqrt(in_features))
        self._tokens_per_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg, lead = _groups(x)
        g, t, d = xg.shape
        e, s = self.experts.n_experts, self.slots
        logits = xg @ self.phi                                           # (G, T, E*S)
        dispatch = torch.softmax(logits, dim=1)                          # over tokens
        combine = torch.softmax(logits, dim=2)                           # over slots
        slots = dispatch.transpose(1, 2) @ xg                            # (G, E*S, d)
        buf = slots.view(g, e, s, d).permute(1, 0, 2, 3).reshape(e, g * s, d)
        out = self.experts(buf).view(e, g, s, -1).permute(1, 0, 2, 3).reshape(g, e * s, -1)
        y = combine @ out                                                # (G, T, d_out)
        assignment = combine.detach().view(g * t, e, s).sum(-1)          # (G*T, E) rows sum to 1
        _store_stats(self, assignment, x.new_zeros(()), 0.0)
        self._tokens_per_group = t
        return y.view(*lead, -1)

    def active_flops_per_token(self, tokens_per_group: int | None = None) -> float:
        t = tokens_per_group or self._tokens_per_group
        if t is None:
            raise ValueError("pass tokens_per_group (or run forward once) to count Soft MoE FLOPs")
        n = self.experts.n_experts * self.slots
        d_in, d_out = self.experts.d_in, self.experts.d_out
        return n / t * self.experts.flops_per_token() + 2 * n * (2 * d_in + d_out)


# ---------------------------------------------------------------- helpers

KINDS = ("top1", "top2", "switch", "noisy_top2", "expert_choice", "soft", "dense")


def make_moe(kind: str, d_in: int, d_hidden: int, d_out: int, n_experts: int, *,
             capacity_factor: float | None = None, alpha: float = 0.01, z_coef: float = 1e-3,
             slots_per_expert: int = 1, k: int | None = None) -> nn.Module:
    """Build a named MoE layer with ``n_experts`` MLP experts ``d_in -> d_hidden -> d_out``.

    kinds: ``dense`` (:class:`DenseMLP`, ``n_experts`` ignored), ``top1`` / ``top2`` (top-k softmax, renormalised, Switch aux loss with ``alpha``),
    ``switch`` (:func:`SwitchGate`), ``noisy_top2`` (:class:`NoisyTopKGate`), ``expert_choice``
    (capacity factor ``capacity_factor`` or 1), ``soft`` (``slots_per_expert``). ``k`` overrides top-k's k.
    """
    experts = Experts(n_experts, d_in, d_hidden, d_out)
    if kind in ("top1", "top2"):
        kk = k or int(kind[-1])
        gate = TopKGate(d_in, n_experts, k=kk, alpha=alpha, z_coef=z_coef)
        return TokenChoiceMoE(gate, experts, capacity_factor=capacity_factor)
    if kind == "switch":
        return TokenChoiceMoE(SwitchGate(d_in, n_experts, alpha=alpha, z_coef=z_coef), experts,
                              capacity_factor=capacity_factor)
    if kind == "dense":
        return DenseMLP(d_in, d_hidden, d_out)
    if kind == "noisy_top2":
        w = 0.1 if alpha > 0 else 0.0          # Shazeer et al.'s weights; alpha = 0 turns balancing off
        gate = NoisyTopKGate(d_in, n_experts, k=k or 2, w_importance=w, w_load=w)
        return TokenChoiceMoE(gate, experts, capacity_factor=capacity_factor)
    if kind == "expert_choice":
        return ExpertChoiceMoE(d_in, experts, capacity_factor=capacity_factor or 1.0)
    if kind == "soft":
        return SoftMoE(d_in, experts, slots_per_expert=slots_per_expert)
    raise ValueError(f"unknown MoE kind {kind!r}; choose one of {KINDS}")


def aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the ``aux_loss`` left by every MoE layer's last forward (0.0 when there is none)."""
    losses = [m.aux_loss for m in model.modules() if isinstance(m.__dict__.get("aux_loss"), torch.Tensor)]
    return torch.stack(losses).sum() if losses else 0.0


class DenseMLP(nn.Module):
    """Dense baseline ``relu(x W1 + b1) W2 + b2``: one expert that every token uses, (..., d_in) -> (..., d_out)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.experts = Experts(1, d_in, d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.experts(x.reshape(1, -1, x.shape[-1])).view(*lead, -1)

    def active_flops_per_token(self) -> float:
        return self.experts.flops_per_token()


# ---------------------------------------------------------------- MNIST experiments

def prepare_mnist(n_train: int | None = None, n_test: int | None = None, *, seed: int = 0,
                  device: str | torch.device = "cpu", root=None):
    """Flattened, standardised MNIST ``((x_train, y_train), (x_test, y_test))``, x (N, 784) float32.

    ``n_train`` / ``n_test`` take a seeded random subset (``None``: all 60,000 / 10,000 images).
    """
    from mpnn.data.mnist import load_mnist
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_mnist(split, root=root)
        if n is not None:
            if not 1 <= n <= len(labels):
                raise ValueError(f"n_{split} must be in 1..{len(labels)}, got {n}")
            idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
            images, labels = images[idx], labels[idx]
        x = (images.reshape(len(labels), -1).float() / 255.0 - 0.1307) / 0.3081
        out.append((x.to(device), labels.to(device)))
    return tuple(out)


@dataclass
class FitResult:
    accuracy: float                   # test accuracy
    history: list                     # dicts: step, epoch, loss, share (E,) of processed assignments
    assignment: torch.Tensor | None   # (N_test, E) experts that processed each test image
    predictions: torch.Tensor         # (N_test,)
    dropped: float                    # mean share of assignments dropped while training
    seconds: float


def fit_classifier(model: nn.Module, train, test, *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                   seed: int = 0, log_every: int = 50, progress: bool = True, desc: str = "",
                   cpu_threads: int | None = 1) -> FitResult:
    """Adam on cross-entropy + the MoE auxiliary losses; logs expert shares every ``log_every`` steps.

    On CPU, training runs on ``cpu_threads`` threads (restored afterwards): these models are small,
    so one thread is fastest (no intra-op synchronisation, which is very slow on a busy machine)
    and the numbers do not depend on the machine's core count. ``None`` leaves torch's setting.

    A batch is also the routing group of expert-choice and soft MoE layers; the test set is evaluated
    in groups of ``batch_size`` images in a fixed order.
    """
    (x, y), (xt, yt) = train, test
    with determinism.cpu_threads(cpu_threads, x.device):
        return _fit(model, x, y, xt, yt, epochs, batch_size, lr, seed, log_every, progress, desc)


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over each parameter: several times faster on a CPU than
    the per-op implementation for the experts' many weights)."""
    return torch.optim.Adam(list(params), lr=lr, fused=True)


def _fit(model, x, y, xt, yt, epochs, batch_size, lr, seed, log_every, progress, desc) -> FitResult:
    import time
    from tqdm.auto import tqdm
    gen = torch.Generator().manual_seed(seed)
    opt = _adam(model.parameters(), lr)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    history, window, window_loss, drops, step = [], None, [], [], 0
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=gen).to(x.device)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            (loss + aux_loss(model)).backward()
            opt.step()
            step += 1
            window_loss.append(loss.detach())
            a = getattr(model, "assignment", None)
            if a is not None:
                window = a.sum(0) if window is None else window + a.sum(0)
                drops.append(model.dropped)
            if step % log_every == 0 or step == epochs * steps_per_epoch:
                rec = {"step": step, "epoch": step / steps_per_epoch,
                       "loss": float(torch.stack(window_loss).mean())}
                if window is not None:
                    rec["share"] = (window / window.sum()).cpu()
                history.append(rec)
                window, window_loss = None, []
            bar.update()
    bar.close()
    model.eval()
    preds, assigns = [], []
    with torch.no_grad():
        for b in range(0, len(yt), batch_size):
            preds.append(model(xt[b:b + batch_size]).argmax(-1))
            if getattr(model, "assignment", None) is not None:
                assigns.append(model.assignment)
    preds = torch.cat(preds)
    return FitResult(float((preds == yt).float().mean()), history,
                     torch.cat(assigns).cpu() if assigns else None, preds.cpu(),
                     float(sum(drops) / len(drops)) if drops else 0.0, time.perf_counter() - start)


# ---------------------------------------------------------------- replicas trained in one pass

def _rows_cv_squared(v: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """:func:`cv_squared` of each row of ``v`` (R, E) -> (R,)."""
    v = v.float()
    return v.var(dim=-1, unbiased=False) / (v.mean(-1) ** 2 + eps)


class StackedMoE(nn.Module):
    """R independent replicas of one layer, evaluated (and trained) as one module.

    ``models``: R modules of the same kind and shape, each initialised on its own (one seed each):
    :class:`DenseMLP`, :class:`TokenChoiceMoE` (:class:`TopKGate` or :class:`NoisyTopKGate`),
    :class:`ExpertChoiceMoE` or :class:`SoftMoE`. Their parameters are copied into stacked tensors:
    the experts of replica r are experts ``r*E .. r*E+E-1`` of one :class:`Experts` of R*E experts,
    and the gate weights gain a leading replica dimension, so every step is a few batched matmuls
    whatever R is. ``forward`` maps x (R, T, d_in) -> (R, T, d_out): replica r sees only ``x[r]``
    (its own batch; for expert choice and soft MoE, its own routing group) and its own parameters,
    and gives what ``models[r](x[r])`` gives (up to float summation order). Routing of replica r is
    replica r's alone: token-choice assignments go to global experts ``r*E + e``, and the buffer of
    every expert holds ``ceil(c k T / E)`` assignments as in one group of T tokens.

    After a call: ``aux_loss`` (the sum of the replicas' balancing losses: the gradient of replica r's
    parameters is that of its own loss), ``assignment`` (R, T, E) and ``dropped`` (R,).
    :meth:`write_back` copies the parameters into the original modules.
    """

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("StackedMoE needs at least one model")
        first = models[0]
        kinds = {type(m) for m in models}
        if len(kinds) == 1 and isinstance(first, TokenChoiceMoE) and len({type(m.gate) for m in models}) != 1:
            kinds = {type(m.gate) for m in models}
        if len(kinds) != 1:
            raise ValueError(f"StackedMoE needs models of one kind, got {sorted(k.__name__ for k in kinds)}")
        if not isinstance(first, (DenseMLP, TokenChoiceMoE, ExpertChoiceMoE, SoftMoE)):
            raise TypeError(f"StackedMoE cannot stack {type(first).__name__}")
        self._models = list(models)            # a plain list: not registered as submodules
        self.kind = type(first).__name__
        self.replicas = len(models)
        ex = [m.experts for m in models]
        shapes = {tuple(e.w1.shape) + tuple(e.w2.shape) for e in ex}
        if len(shapes) != 1:
            raise ValueError(f"the replicas' experts differ in shape: {sorted(shapes)}")
        self.n_experts = first.experts.n_experts
        self.experts = Experts(self.replicas * self.n_experts, ex[0].d_in, ex[0].w1.shape[2], ex[0].d_out)
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                getattr(self.experts, name).copy_(torch.cat([getattr(e, name).detach() for e in ex]))

        def stack(get):
            return nn.Parameter(torch.stack([get(m).detach() for m in models]).clone())

        if isinstance(first, TokenChoiceMoE):
            g = first.gate
            self.k = g.k
            self.noisy = isinstance(g, NoisyTopKGate)
            self.capacity_factor, self.eval_capacity_factor = first.capacity_factor, first.eval_capacity_factor
            config = lambda m: ((m.gate.k, m.gate.w_importance, m.gate.w_load) if self.noisy else
                                (m.gate.k, m.gate.normalize, m.gate.alpha, m.gate.z_coef, m.gate.switch.mode),
                                m.capacity_factor, m.eval_capacity_factor)
            if len({config(m) for m in models}) != 1:
                raise ValueError("the replicas' gates or capacities differ")
            self.gate_w = stack(lambda m: m.gate.switch.gate.weight.t())      # (R, d, E)
            self.gate_b = stack(lambda m: m.gate.switch.gate.bias)            # (R, E)
            if self.noisy:
                self.noise_w = stack(lambda m: m.gate.noise.weight.t())       # (R, d, E)
                self.w_importance, self.w_load = g.w_importance, g.w_load
            else:
                self.normalize, self.alpha, self.z_coef = g.normalize, g.alpha, g.z_coef
                self.gumbel = g.switch.mode == "gumbel"
        elif isinstance(first, ExpertChoiceMoE):
            if len({m.capacity_factor for m in models}) != 1:
                raise ValueError("the replicas' capacity factors differ")
            self.capacity_factor = first.capacity_factor
            self.gate_w = stack(lambda m: m.switch.gate.weight.t())
            self.gate_b = stack(lambda m: m.switch.gate.bias)
        elif isinstance(first, SoftMoE):
            if len({m.slots for m in models}) != 1:
                raise ValueError("the replicas' slot counts differ")
            self.slots = first.slots
            self.phi = stack(lambda m: m.phi)                                 # (R, d, E*S)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """x (R, T, d_in) -> (R, T, d_out); ``eps`` (R, T, E) overrides a noisy gate's N(0, 1) noise."""
        if x.dim() != 3 or x.shape[0] != self.replicas:
            raise ValueError(f"expected x of shape ({self.replicas}, T, d), got {tuple(x.shape)}")
        if self.kind == "DenseMLP":
            self.assignment, self.aux_loss, self.dropped = None, x.new_zeros(()), None
            return self.experts(x)
        if self.kind == "TokenChoiceMoE":
            return self._token_choice(x, eps)
        if self.kind == "ExpertChoiceMoE":
            return self._expert_choice(x)
        return self._soft(x)

    def _token_choice(self, x, eps):
        R, T, d = x.shape
        E, k = self.n_experts, self.k
        logits = torch.baddbmm(self.gate_b.unsqueeze(1), x, self.gate_w)    # (R, T, E) clean scores
        aux = x.new_zeros(())
        if self.noisy:
            std = F.softplus(torch.bmm(x, self.noise_w))
            if self.training:
                eps = torch.randn_like(logits) if eps is None else eps
                noisy = logits + eps * std
            else:
                noisy = logits
            top = noisy.topk(k + 1, dim=-1).values
            experts = noisy.detach().topk(k, dim=-1).indices                 # (R, T, k)
            weights = torch.softmax(noisy.gather(-1, experts), dim=-1)
            sel = torch.zeros_like(logits).scatter_(-1, experts, 1.0)
            gates = torch.zeros_like(logits).scatter(-1, experts, weights)
            aux = aux + self.w_importance * _rows_cv_squared(gates.sum(1)).sum()
            if self.training and self.w_load:
                threshold = torch.where(sel.bool(), top[..., k:k + 1], top[..., k - 1:k])
                p_in = torch.distributions.Normal(0.0, 1.0).cdf((logits - threshold) / std)
                aux = aux + self.w_load * _rows_cv_squared(p_in.sum(1)).sum()
        else:
            probs = torch.softmax(logits, dim=-1)
            noise = gumbel_noise(logits) if (self.gumbel and self.training) else 0.0
            sel = topk_mask(logits.detach() + noise, k)
            experts = _ranked(sel, logits, k)
            weights = (torch.softmax(logits.gather(-1, experts), dim=-1) if self.normalize
                       else probs.gather(-1, experts))
            if self.alpha:
                f = sel.sum(1) / sel.sum((1, 2)).clamp_min(1).unsqueeze(-1)      # (R, E)
                aux = aux + self.alpha * (E * (f * probs.mean(1)).sum(-1)).sum()
            if self.z_coef:
                aux = aux + self.z_coef * torch.logsumexp(logits.float(), -1).pow(2).mean(-1).sum()
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        glob = (experts + E * torch.arange(R, device=x.device).view(R, 1, 1)).reshape(R * T, k)
        plan = plan_dispatch(glob, R * E, None, buffer=None if cf is None else capacity(T, E, k, cf))
        n_tok = R * T
        flat = x.reshape(n_tok, d)
        split = math.ceil(1.25 * k * T / E)                                  # buffer of a typical expert
        if cf is None and plan.capacity > 2 * split:
            per = self._two_level_experts(flat, glob, plan, split)
        else:
            n_slots = R * E * plan.capacity
            buf = flat.index_select(0, plan.slot_token.clamp_max(n_tok - 1))
            out = self.experts(buf.view(R * E, plan.capacity, d)).reshape(n_slots, -1)
            per = out.index_select(0, plan.slot.clamp_max(n_slots - 1))      # (k*R*T, d_out)
        w = weights.reshape(n_tok, k).t().reshape(-1) * plan.keep
        y = (per * w.unsqueeze(-1)).view(k, n_tok, -1).sum(0)
        kept = plan.keep.view(k, n_tok).t().to(x.dtype)
        assignment = torch.zeros(n_tok, E, device=x.device, dtype=x.dtype).scatter_(
            -1, experts.reshape(n_tok, k), kept)
        self.aux_loss, self.assignment = aux, assignment.view(R, T, E).detach()
        self.dropped = 1.0 - plan.keep.view(k, R, T).float().mean((0, 2))    # (R,)
        return y.view(R, T, -1)

    def _two_level_experts(self, flat, glob, plan, split: int) -> torch.Tensor:
        """Dropless expert outputs of every assignment without padding every buffer to the largest load.

        Every expert runs its first ``split`` assignments in one batched matmul; only the experts with
        more (``load > split``) run the rest, in a second batched matmul on their own weights, padded
        to the largest overflow. Same outputs as one buffer of the largest load (a collapsed router
        sends a whole batch to one expert: that buffer would make every expert as large).
        Returns (k*N, d_out), one row per assignment in the plan's order.
        """
        n_tok, d = flat.shape
        n_exp = self.experts.n_experts
        e_of = glob.t().reshape(-1)                                           # (k*N,) expert of each assignment
        token = torch.arange(n_tok, device=flat.device).repeat(glob.shape[1])
        pos = plan.position
        heavy = (plan.load > split).nonzero().flatten()                       # experts that overflow
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
        ex = self.experts
        out1 = ex(buf[:n1].view(n_exp, split, d)).reshape(n1, -1)
        b2 = buf[n1:].view(heavy.numel(), over, d)
        h = torch.baddbmm(ex.b1.index_select(0, heavy).unsqueeze(1), b2, ex.w1.index_select(0, heavy)).relu()
        out2 = torch.baddbmm(ex.b2.index_select(0, heavy).unsqueeze(1), h, ex.w2.index_select(0, heavy))
        return torch.cat([out1, out2.reshape(-1, out1.shape[-1])]).index_select(0, slot)

    def _expert_choice(self, x):
        R, T, d = x.shape
        E = self.n_experts
        cap = min(T, capacity(T, E, 1, self.capacity_factor))
        probs = torch.softmax(torch.baddbmm(self.gate_b.unsqueeze(1), x, self.gate_w), dim=-1)
        weight, token = probs.transpose(1, 2).topk(cap, dim=-1)             # (R, E, C)
        flat_token = token + T * torch.arange(R, device=x.device).view(R, 1, 1)
        buf = x.reshape(R * T, d)[flat_token].reshape(R * E, cap, d)
        out = self.experts(buf).view(R, E, cap, -1) * weight.unsqueeze(-1)
        y = out.new_zeros(R * T, out.shape[-1]).index_add(0, flat_token.reshape(-1),
                                                          out.reshape(-1, out.shape[-1]))
        assignment = torch.zeros(R, E, T, device=x.device, dtype=x.dtype).scatter_(-1, token, 1.0)
        self.aux_loss, self.assignment = x.new_zeros(()), assignment.transpose(1, 2)
        self.dropped = torch.zeros(R)
        return y.view(R, T, -1)

    def _soft(self, x):
        R, T, d = x.shape
        E, S = self.n_experts, self.slots
        logits = torch.bmm(x, self.phi)                                     # (R, T, E*S)
        dispatch, combine = torch.softmax(logits, dim=1), torch.softmax(logits, dim=2)
        slots = dispatch.transpose(1, 2) @ x                                # (R, E*S, d)
        out = self.experts(slots.reshape(R * E, S, d)).reshape(R, E * S, -1)
        self.aux_loss = x.new_zeros(())
        self.assignment = combine.detach().view(R, T, E, S).sum(-1)
        self.dropped = torch.zeros(R)
        return combine @ out

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


def fit_replicas(models: list[nn.Module], train, test, *, seeds: list[int], epochs: int, batch_size: int = 128,
                 lr: float = 1e-3, log_every: int = 50, progress: bool = True, desc: str = "",
                 cpu_threads: int | None = 1) -> list[FitResult]:
    """:func:`fit_classifier` for R independent models at once (one :class:`StackedMoE` pass).

    Replica r trains exactly as ``fit_classifier(models[r], train, test, seed=seeds[r], ...)`` would:
    its own batch order (a generator seeded with ``seeds[r]``), its own Adam state (Adam is
    elementwise, and the summed loss gives each replica the gradient of its own loss), its own
    routing; only the random noise of noisy / Gumbel gates is drawn differently. The results agree
    with the loop up to float summation order (see ``tests/test_moe.py``). The trained parameters are
    written back into ``models`` (left in eval mode); ``seconds`` is the pass's time divided by R.
    """
    if len(seeds) != len(models):
        raise ValueError(f"one seed per model: got {len(seeds)} seeds for {len(models)} models")
    (x, y), (xt, yt) = train, test
    stacked = StackedMoE(models).to(x.device)
    with determinism.cpu_threads(cpu_threads, x.device):
        out = _fit_stacked(stacked, x, y, xt, yt, [int(s) for s in seeds], epochs, batch_size, lr, log_every,
                           progress, desc)
    stacked.write_back()
    for m in models:
        m.eval()
    return out


def _fit_stacked(model, x, y, xt, yt, seeds, epochs, batch_size, lr, log_every, progress, desc) -> list[FitResult]:
    import time
    from tqdm.auto import tqdm
    R = model.replicas
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    opt = _adam(model.parameters(), lr)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    histories = [[] for _ in range(R)]
    window, window_loss, drops, step = None, [], [], 0
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
    model.train()
    for epoch in range(epochs):
        perm = torch.stack([torch.randperm(len(y), generator=g) for g in gens]).to(x.device)   # (R, N)
        for b in range(steps_per_epoch):
            idx = perm[:, b * batch_size:(b + 1) * batch_size]                                  # (R, B)
            flat = idx.reshape(-1)
            logits = model(x.index_select(0, flat).view(R, -1, x.shape[-1]))
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.index_select(0, flat),
                                 reduction="none").view(R, -1).mean(1)                         # (R,)
            opt.zero_grad(set_to_none=True)
            (ce.sum() + model.aux_loss).backward()
            opt.step()
            step += 1
            window_loss.append(ce.detach())
            if model.assignment is not None:
                a = model.assignment.sum(1)                                                   # (R, E)
                window = a if window is None else window + a
                drops.append(model.dropped)
            if step % log_every == 0 or step == epochs * steps_per_epoch:
                loss = torch.stack(window_loss).mean(0)
                for r in range(R):
                    rec = {"step": step, "epoch": step / steps_per_epoch, "loss": float(loss[r])}
                    if window is not None:
                        rec["share"] = (window[r] / window[r].sum()).cpu()
                    histories[r].append(rec)
                window, window_loss = None, []
            bar.update()
    bar.close()
    model.eval()
    preds, assigns = [], []
    with torch.no_grad():
        for b in range(0, len(yt), batch_size):
            xb = xt[b:b + batch_size]
            preds.append(model(xb.unsqueeze(0).expand(R, *xb.shape)).argmax(-1))              # (R, b)
            if model.assignment is not None:
                assigns.append(model.assignment)
    preds = torch.cat(preds, 1)
    seconds = (time.perf_counter() - start) / R
    dropped = torch.stack(drops).mean(0) if drops else torch.zeros(R)
    return [FitResult(float((preds[r] == yt).float().mean()), histories[r],
                      torch.cat([a[r] for a in assigns]).cpu() if assigns else None, preds[r].cpu(),
                      float(dropped[r]), seconds) for r in range(R)]


def routing_entropy(share: torch.Tensor) -> float:
    """Entropy of the expert shares over log E: 1 = perfectly balanced, 0 = one expert takes all."""
    p = share.double().clamp_min(0)
    p = p / p.sum()
    h = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return float(h / math.log(len(p)))


def expert_digit_table(assignment: torch.Tensor, labels: torch.Tensor, n_classes: int = 10):
    """(classes, E): share of each class's assignment mass that goes to each expert (rows sum to 1)."""
    onehot = F.one_hot(labels.long().cpu(), n_classes).double()       # (N, classes)
    table = onehot.t() @ assignment.double()                            # (classes, E)
    return table / table.sum(1, keepdim=True).clamp_min(1e-12)
