"""Token-choice gates: every token picks its k experts.

* :class:`TopKGate` -- ``m = softmax(s) * topk_mask(s, k)`` (optionally renormalised over the k kept
  scores, Shazeer et al. 2017 eq. 3-5), ``s = x W + b`` from a :class:`~mpnn.switch.LearnedSwitch`;
  ``noise="gumbel"`` selects with Gumbel-perturbed scores while training (the switch's Gumbel mode).
  Optional Switch-Transformer auxiliary loss ``alpha * E * sum_i f_i P_i`` and router z-loss
  ``z * mean_x logsumexp(s(x))^2`` (:mod:`mpnn.moe.losses`). :func:`switch_gate` is the top-1
  instance (``alpha = 0.01``, unnormalised ``p_i``).
* :class:`NoisyTopKGate` -- ``H = x W_g + eps * softplus(x W_noise)``, ``eps ~ N(0, 1)`` while training,
  ``m = softmax(KeepTopK(H, k))``; importance loss ``w_imp * CV(sum_x m(x))^2`` and load loss
  ``w_load * CV(sum_x P(x, .))^2`` with ``P(x, i) = Phi((x W_g)_i - kth_excluding(H, k, i)) / softplus((x W_noise)_i))``
  (Shazeer et al. 2017, eq. 6-10).

The routing rules themselves (:func:`route_top_k`, :func:`route_noisy_top_k`) take scores of shape
(T, E), or (R, T, E) for R replicas routed at once (:class:`~mpnn.moe.stacked.StackedMoE`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpnn.switch import LearnedSwitch, topk_mask

from . import fused
from .losses import cv_squared, switch_aux_loss, z_loss


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log u)``, ``u ~ U(0, 1)``, shaped like ``like``.

    Draws ``torch.rand`` exactly as :func:`mpnn.switch.gumbel_softmax` does, so with the same RNG state
    the top-k of ``s + g`` is the hard Gumbel-softmax mask (softmax and 1/tau keep the order).
    """
    u = torch.rand(like.shape, device=like.device, dtype=like.dtype)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


@dataclass
class Routing:
    """A token-choice routing decision for T tokens over E experts (leading replica axes allowed)."""

    logits: torch.Tensor    # (T, E) clean router scores s(x)
    experts: torch.Tensor   # (T, k) chosen experts, best first
    weights: torch.Tensor   # (T, k) combine weights m_i(x) of the chosen experts (differentiable)
    aux_loss: torch.Tensor  # () the gate's weighted balancing + z losses ((R,) for R replicas)

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


def select_top_k(logits: torch.Tensor, k: int, *, gumbel: bool = False) -> torch.Tensor:
    """The hard (T, E) top-k mask of the scores, Gumbel-perturbed if ``gumbel`` (a training draw)."""
    if gumbel:
        return topk_mask(logits.detach() + gumbel_noise(logits), k)
    return topk_mask(logits.detach(), k)


def route_top_k(logits: torch.Tensor, k: int, *, normalize: bool = True, gumbel: bool = False,
                alpha: float = 0.0, z_coef: float = 0.0) -> Routing:
    """Top-k softmax routing of scores ``logits`` (..., T, E), with the Switch and z losses.

    float32 scores on the CPU are routed in one compiled pass (:func:`mpnn.moe.fused.route_top_k`,
    same experts and weights); the softmax and the mask are then computed only for the losses.
    """
    if logits.dim() >= 2 and fused.routing_usable(logits):
        flat = logits.reshape(-1, logits.shape[-1])                      # rows route independently
        experts, weights = fused.route_top_k(
            flat, k, flat.detach() + gumbel_noise(flat) if gumbel else None, normalize=normalize)
        experts, weights = experts.view(*logits.shape[:-1], k), weights.view(*logits.shape[:-1], k)
        aux = logits.new_zeros(logits.shape[:-2])
        if alpha:
            sel = torch.zeros_like(logits).scatter_(-1, experts, 1.0)
            aux = aux + alpha * switch_aux_loss(torch.softmax(logits, dim=-1), sel)
        if z_coef:
            aux = aux + z_coef * z_loss(logits)
        return Routing(logits, experts, weights, aux)
    probs = torch.softmax(logits, dim=-1)
    sel = select_top_k(logits, k, gumbel=gumbel)
    experts = _ranked(sel, logits, k)                                    # (..., T, k)
    if normalize:
        weights = torch.softmax(logits.gather(-1, experts), dim=-1)      # softmax(KeepTopK(s))
    else:
        weights = probs.gather(-1, experts)
    aux = logits.new_zeros(logits.shape[:-2])
    if alpha:
        aux = aux + alpha * switch_aux_loss(probs, sel)
    if z_coef:
        aux = aux + z_coef * z_loss(logits)
    return Routing(logits, experts, weights, aux)


def route_noisy_top_k(clean: torch.Tensor, std: torch.Tensor, k: int, *, w_importance: float,
                      w_load: float, training: bool, eps: torch.Tensor | None = None) -> Routing:
    """Noisy top-k routing (Shazeer et al. 2017, eq. 6-10) of clean scores and noise scales (..., T, E).

    ``eps`` (..., T, E) overrides the N(0, 1) noise; noise and the load loss apply in training only.
    """
    if training:
        eps = torch.randn_like(clean) if eps is None else eps
        noisy = clean + eps * std
    else:
        noisy = clean
    top = noisy.topk(k + 1, dim=-1).values                               # (..., T, k+1)
    experts = noisy.detach().topk(k, dim=-1).indices                     # (..., T, k)
    weights = torch.softmax(noisy.gather(-1, experts), dim=-1)
    sel = torch.zeros_like(clean).scatter_(-1, experts, 1.0)
    gates = torch.zeros_like(clean).scatter(-1, experts, weights)        # (..., T, E)
    aux = clean.new_zeros(clean.shape[:-2]) + w_importance * cv_squared(gates.sum(-2))
    if training and w_load:
        # P(x, i): chance that expert i stays in the top k when only its own noise is redrawn
        threshold = torch.where(sel.bool(), top[..., k:k + 1], top[..., k - 1:k])
        p_in = torch.distributions.Normal(0.0, 1.0).cdf((clean - threshold) / std)
        aux = aux + w_load * cv_squared(p_in.sum(-2))
    return Routing(clean, experts, weights, aux)


class TopKGate(nn.Module):
    """Top-k softmax gate on a :class:`~mpnn.switch.LearnedSwitch` (see the module docstring).

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

    @property
    def gumbel(self) -> bool:
        """Does this gate draw Gumbel noise now (Gumbel mode, training)?"""
        return self.switch.mode == "gumbel" and self.training

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """The hard (T, E) mask; equals the forward value of ``self.switch`` on the same input and RNG."""
        return select_top_k(logits, self.k, gumbel=self.gumbel)

    def forward(self, x: torch.Tensor) -> Routing:  # x (T, d)
        return route_top_k(self.switch.scores(x), self.k, normalize=self.normalize, gumbel=self.gumbel,
                           alpha=self.alpha, z_coef=self.z_coef)

    def extra_repr(self) -> str:
        return f"k={self.k}, normalize={self.normalize}, alpha={self.alpha}, z_coef={self.z_coef}"


def switch_gate(in_features: int, n_experts: int, *, alpha: float = 0.01, z_coef: float = 1e-3) -> TopKGate:
    """Switch-Transformer router: top-1, raw ``p_i`` as weight, aux loss ``alpha*E*sum f_i P_i``, z-loss."""
    return TopKGate(in_features, n_experts, k=1, normalize=False, alpha=alpha, z_coef=z_coef)


class NoisyTopKGate(nn.Module):
    """Noisy top-k gating with importance and load losses (Shazeer et al. 2017, see the module docstring).

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
        return route_noisy_top_k(self.switch.scores(x), F.softplus(self.noise(x)), self.k,
                                 w_importance=self.w_importance, w_load=self.w_load,
                                 training=self.training, eps=eps)

    def extra_repr(self) -> str:
        return f"k={self.k}, w_importance={self.w_importance}, w_load={self.w_load}"
