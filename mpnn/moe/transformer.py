"""MoE layers as the MLP of a transformer block, and a global (once per image) router.

A transformer block hands its MLP the normalised token states ``x`` (B, n, d) and adds the output to
the residual stream; :class:`TokenMoE` wraps any layer of :mod:`mpnn.moe.layers` for that place
(``mpnn.tokens.TokenViT(config, mlp_factory=...)`` takes it). Routing is per token, within each
image's n tokens for expert choice and soft MoE (the image is the routing group, so an image's
output does not depend on the rest of its batch).

Global routing (Scardapane et al. 2024, open question 3: decisions taken once for the whole input
instead of layer by layer): a :class:`GlobalRouter` scores each image once, from the mean of the
tokens entering the first MoE layer, ``p = softmax(W mean_j x_j + b)`` over E paths, and picks the
top-1 path ``e*``; every :class:`PathMoE` layer that shares the router then sends *all* tokens of the
image through its own expert ``e*``, weighted by ``p_{e*}`` (the Switch rule, so the router gets a
gradient), with the Switch auxiliary loss computed over images. Each token runs one expert per MoE
layer, the active compute of layer-wise top-1.

Both modules keep the :class:`~mpnn.moe.layers.RoutingStats` of their last call in ``last`` (the
block's interface is a tensor); :func:`routing_stats` collects them from a model after its forward.
"""
from __future__ import annotations

import torch
from torch import nn

from mpnn.switch import LearnedSwitch

from .dispatch import dispatch_token_choice
from .experts import Experts
from .gates import Routing, route_top_k
from .layers import RoutingStats


class TokenMoE(nn.Module):
    """A transformer MLP from an MoE layer: x (B, n, d) -> (B, n, d_out).

    ``layer``: any layer of :mod:`mpnn.moe.layers` (token choice, expert choice, soft MoE, dense).
    Token choice routes the B*n tokens one by one (dropless unless the layer has a capacity); expert
    choice and soft MoE route within each image (groups of n tokens). ``last.assignment`` is
    (B*n, E), image-major (token j of image b is row ``b*n + j``); None for a dense layer.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.last: RoutingStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"TokenMoE expects tokens (B, n, d), got shape {tuple(x.shape)}")
        y, self.last = self.layer(x)
        return y.reshape(*x.shape[:2], -1)


class GlobalRouter(nn.Module):
    """One top-1 decision per image over E paths from the image's mean token (see the module docstring).

    ``alpha``: weight of the Switch auxiliary loss over the batch's images; ``z_coef``: router z-loss.
    ``decide(x)`` stores the :class:`~mpnn.moe.gates.Routing` of images x (B, n, d) in ``current``, which
    the :class:`PathMoE` layers of the same forward pass read.
    """

    def __init__(self, d: int, n_experts: int, *, alpha: float = 0.01, z_coef: float = 1e-3):
        super().__init__()
        self.switch = LearnedSwitch(d, n_experts, mode="topk", k=1)
        self.alpha, self.z_coef = alpha, z_coef
        self.current: Routing | None = None

    @property
    def n_experts(self) -> int:
        return self.switch.n_units

    def decide(self, x: torch.Tensor) -> Routing:
        self.current = route_top_k(self.switch.scores(x.mean(1)), 1, normalize=False,
                                   alpha=self.alpha, z_coef=self.z_coef)
        return self.current


class PathMoE(nn.Module):
    """An MoE MLP that follows its image's global path: x (B, n, d) -> (B, n, d_out).

    ``y_bj = p_b f_{e_b}(x_bj)`` with ``(e_b, p_b)`` the router's decision for image b. The layer with
    ``decide=True`` (the first MoE layer) asks the shared ``router`` for the decision and carries its
    balancing loss; the others reuse ``router.current``. ``last.assignment`` is (B*n, E) like
    :class:`TokenMoE`'s (every token of an image on the image's expert).
    """

    def __init__(self, experts: Experts, router: GlobalRouter, *, decide: bool):
        super().__init__()
        if experts.n_experts != router.n_experts:
            raise ValueError(f"the router chooses among {router.n_experts} paths but there are "
                             f"{experts.n_experts} experts")
        self.experts, self.decide = experts, decide
        self._router = [router]            # a plain list: the router's parameters belong to the deciding layer
        if decide:
            self.router = router
        self.last: RoutingStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, d = x.shape
        router = self._router[0]
        r = router.decide(x) if self.decide else router.current
        if r is None or r.experts.shape[0] != B:
            raise RuntimeError("PathMoE: no routing decision for this batch; the layer built with decide=True "
                               "must run first in the forward pass")
        chosen = r.experts.repeat_interleave(n, dim=0)                    # (B*n, 1)
        weights = r.weights.repeat_interleave(n, dim=0)
        y, assignment, dropped = dispatch_token_choice(x.reshape(1, B * n, d), chosen[None], weights[None],
                                                       self.experts, None)
        aux = r.aux_loss if self.decide else x.new_zeros(())
        self.last = RoutingStats(aux, assignment[0].detach(), dropped[0])
        return y.view(B, n, -1)


def routing_stats(model: nn.Module) -> list[RoutingStats]:
    """The ``last`` stats of every :class:`TokenMoE` / :class:`PathMoE` in ``model``, in module order."""
    return [m.last for m in model.modules() if isinstance(m, (TokenMoE, PathMoE)) and m.last is not None]


def aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the balancing losses of the model's MoE layers in its last forward pass."""
    return sum((s.aux_loss for s in routing_stats(model)), 0.0)
