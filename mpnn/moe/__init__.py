"""Mixture-of-experts: width sparsity as a learned switch over stacked experts.

An MoE layer is the switch of :mod:`mpnn.switch` applied to experts ``f_1..f_E``:
``y(x) = sum_i m_i(x) f_i(x)`` with a sparse, learned mask ``m`` (Scardapane et al. 2024, sec. 3).
Only experts with ``m_i(x) != 0`` are evaluated for ``x``. The package, one idea per module:

* :mod:`~mpnn.moe.experts` -- E MLP experts with stacked weights (one batched matmul);
* :mod:`~mpnn.moe.losses` -- balancing losses: Switch auxiliary loss, z-loss, CV^2;
* :mod:`~mpnn.moe.gates` -- token-choice gates: top-k (optionally Gumbel), Switch, noisy top-k;
* :mod:`~mpnn.moe.dispatch` -- capacity, dispatch plans and the token-choice / expert-choice /
  soft-MoE dispatch onto the experts' buffers;
* :mod:`~mpnn.moe.layers` -- the layers (``forward`` returns ``(y, RoutingStats)``) and :func:`make_moe`;
* :mod:`~mpnn.moe.stacked` -- R independently initialised replicas of a layer run as one module;
* :mod:`~mpnn.moe.statistics` -- routing entropy and class/expert tables;
* :mod:`~mpnn.moe.transformer` -- MoE layers as a transformer block's MLP, and a global (per-image) router.

The names below are the package's API (``from mpnn import moe; moe.make_moe(...)``).
"""
from .dispatch import (DispatchPlan, capacity, dispatch_expert_choice, dispatch_soft, dispatch_token_choice,
                       plan_dispatch, sorted_assignments)
from .experts import Experts
from .gates import (NoisyTopKGate, Routing, TopKGate, gumbel_noise, route_noisy_top_k, route_top_k,
                    select_top_k, switch_gate)
from .layers import KINDS, DenseMLP, ExpertChoiceMoE, RoutingStats, SoftMoE, TokenChoiceMoE, make_moe
from .losses import cv_squared, switch_aux_loss, z_loss
from .stacked import StackedMoE
from .statistics import class_expert_joint, class_expert_nmi, expert_digit_table, routing_entropy
from .transformer import GlobalRouter, PathMoE, TokenMoE, aux_loss, routing_stats

__all__ = [
    "Experts", "cv_squared", "switch_aux_loss", "z_loss",
    "Routing", "TopKGate", "switch_gate", "NoisyTopKGate", "gumbel_noise", "select_top_k", "route_top_k",
    "route_noisy_top_k", "capacity", "DispatchPlan", "plan_dispatch", "sorted_assignments", "dispatch_token_choice",
    "dispatch_expert_choice", "dispatch_soft", "RoutingStats", "TokenChoiceMoE", "ExpertChoiceMoE", "SoftMoE",
    "DenseMLP", "KINDS", "make_moe", "StackedMoE", "routing_entropy", "class_expert_joint",
    "expert_digit_table", "class_expert_nmi", "TokenMoE", "GlobalRouter", "PathMoE", "routing_stats", "aux_loss",
]
